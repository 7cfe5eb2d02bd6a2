"""Image to video end to end: `/veo image:`, the "Animate with Veo" menu and `@Veo …` replies.

The real bot process against the Discord emulator (which serves the images from its CDN with
HEAD/Range) and the Segmind fake. Without `bot_env`, the bot runs WITHOUT the Message Content
intent, as it does by default.

What the emulator does with the intent (see its README): a message that mentions the bot
arrives with its content; the `referenced_message` inside it follows the same rule, so a
replied-to image from someone else arrives without attachments. `GET /channels/{id}/messages/
{id}` answers with the full message whatever the intents — so in the emulator the bot's fetch
finds the image. On real Discord the intent also guards REST reads (per Discord's docs; not seen
on the wire here): there the fetch would come back without attachments too and the member gets
the one-line hint that points to the context menu, as tested for a reply to a text message.
"""

from __future__ import annotations

from typing import Any

import pytest

from bot.segmind.fake import FakeSegmind
from harness.bot_process import BotProcess, db_write, messages_with_video
from harness.discord_emulator import DiscordEmulator, RequestRecord, StoredMessage
from tests.imaging import GIF_HEAD, encode_image

MB = 1024 * 1024
INTENT_ON = {"DISCORD_MESSAGE_CONTENT_INTENT": "true"}
FINAL_HEADS = ("✅", "❌")


def _content(record: RequestRecord) -> str:
    body: Any = record.json
    return body.get("content", "") if isinstance(body, dict) else ""


def _is_final(record: RequestRecord) -> bool:
    return record.status == 200 and _content(record).startswith(FINAL_HEADS)


async def _final_for_interaction(emu: DiscordEmulator, token: str) -> RequestRecord:
    return await emu.wait_for(
        lambda r: (
            r.params.get("interaction_token") == token and r.method == "PATCH" and _is_final(r)
        ),
        timeout=30,
    )


async def _private_answer(emu: DiscordEmulator, token: str) -> str:
    """The ephemeral follow-up a refusal ends in."""
    record = await emu.wait_for(
        lambda r: (
            r.params.get("interaction_token") == token
            and r.route == "POST /webhooks/{application_id}/{interaction_token}"
            and r.status == 200
        ),
        timeout=15,
    )
    message = emu.message(int(record.response["id"]))
    assert message.ephemeral
    return message.content


async def _bot_reply_to(emu: DiscordEmulator, message: StoredMessage) -> StoredMessage:
    """The bot's reply (placeholder or answer) to a member's message."""
    record = await emu.wait_for(
        lambda r: (
            r.route == "POST /channels/{channel_id}/messages"
            and r.status == 200
            and str((r.json or {}).get("message_reference", {}).get("message_id"))
            == str(message.id)
        ),
        timeout=15,
    )
    return emu.message(int(record.response["id"]))


async def _channel_final(emu: DiscordEmulator, placeholder: StoredMessage) -> RequestRecord:
    """The bot-token edit that turns a mention's placeholder into the video (or failure)."""
    return await emu.wait_for(
        lambda r: (
            r.route == "PATCH /channels/{channel_id}/messages/{message_id}"
            and r.params.get("message_id") == str(placeholder.id)
            and _is_final(r)
        ),
        timeout=30,
    )


async def _refusal_edit(emu: DiscordEmulator, placeholder: StoredMessage) -> str:
    record = await emu.wait_for(
        lambda r: (
            r.route == "PATCH /channels/{channel_id}/messages/{message_id}"
            and r.params.get("message_id") == str(placeholder.id)
            and r.status == 200
        ),
        timeout=15,
    )
    return _content(record)


def _thumbnail(record: RequestRecord) -> str:
    embeds = (record.json or {}).get("embeds") or []
    assert embeds, "the final message shows the source image"
    return str(embeds[0]["thumbnail"]["url"])


def _image_post(emu: DiscordEmulator, kind: str, width: int, height: int) -> str:
    return emu.add_cdn_file(
        f"picture.{kind.replace('jpeg', 'jpg')}", encode_image(kind, width, height)
    )


# ------------------------------------------------------------------------------- /veo image:


async def test_slash_image_follows_the_image_shape_and_is_shown_and_stored(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    url = _image_post(emu, "jpeg", 360, 640)  # 9:16
    handle = await emu.dispatch_slash_command(
        "veo", {"prompt": "the waves crash", "image": url, "duration": 4}, user=emu.member
    )
    await handle.wait_for_callback()
    assert handle.callback_type == 5
    final = await _final_for_interaction(emu, handle.token)
    assert "ready" in _content(final)
    assert len(fake.submits) == 1
    body = fake.submits[0]
    assert body["image_url"] == url
    assert body["aspect_ratio"] == "9:16"  # no aspect chosen: follows the picture
    assert _thumbnail(final) == url
    assert "from image" in _content(final)
    assert final.files and final.files[0].filename.endswith(".mp4")

    # Stored with the job: the moderators' job list links the image.
    admin = await emu.dispatch_slash_command("veo-admin jobs", {}, user=emu.owner)
    listing = await _private_answer(emu, admin.token)
    assert url in listing


async def test_slash_image_keeps_an_aspect_the_member_chose(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    url = _image_post(emu, "webp", 640, 360)
    handle = await emu.dispatch_slash_command(
        "veo", {"prompt": "a train", "image": url, "aspect": "1:1"}, user=emu.member
    )
    await handle.wait_for_callback()
    await _final_for_interaction(emu, handle.token)
    assert fake.submits[0]["aspect_ratio"] == "1:1"
    assert fake.submits[0]["image_url"] == url


@pytest.mark.parametrize(
    ("filename", "data", "named"),
    [
        ("spin.gif", GIF_HEAD, "image/gif"),
        ("notes.txt", b"not a picture at all\n" * 10, "text/plain"),
        # A PNG by name whose bytes are not: caught by the magic bytes, not the label.
        ("fake.png", b"<html>nope</html>" * 10, ""),
    ],
)
async def test_slash_refuses_what_veo_cannot_animate(
    emu: DiscordEmulator,
    fake: FakeSegmind,
    bot: BotProcess,
    filename: str,
    data: bytes,
    named: str,
) -> None:
    url = emu.add_cdn_file(filename, data)
    handle = await emu.dispatch_slash_command(
        "veo", {"prompt": "move", "image": url}, user=emu.member
    )
    await handle.wait_for_callback()
    text = await _private_answer(emu, handle.token)
    assert "PNG, JPEG or WebP" in text
    assert named in text
    assert fake.submits == []
    await bot.wait_for_log("image refused")


@pytest.mark.bot_env({"VEO_MAX_IMAGE_BYTES": str(MB), "VEO_USER_LIMIT": "1"})
async def test_oversized_image_is_refused_before_segmind_and_costs_nothing(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    big = emu.add_cdn_file("big.png", encode_image("png", 640, 480) + b"\0" * (MB * 3 // 2))
    handle = await emu.dispatch_slash_command(
        "veo", {"prompt": "too big", "image": big}, user=emu.member
    )
    await handle.wait_for_callback()
    text = await _private_answer(emu, handle.token)
    assert "1.5 MB" in text and "up to 1.0 MB" in text
    assert fake.submits == []
    # The placeholder was removed, nothing stays in the channel.
    assert handle.original_message().deleted

    # The member's only video of the window is still there: nothing was charged.
    small = emu.add_cdn_file("small.png", encode_image("png", 32, 32))
    again = await emu.dispatch_slash_command(
        "veo", {"prompt": "small enough", "image": small}, user=emu.member
    )
    await again.wait_for_callback()
    final = await _final_for_interaction(emu, again.token)
    assert "ready" in _content(final)
    assert [s["image_url"] for s in fake.submits] == [small]
    assert fake.submits[0]["aspect_ratio"] == "1:1"


# ------------------------------------------------------------------------ "Animate with Veo"


async def test_menu_opens_a_prefilled_modal_and_follows_the_image(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    await emu.wait_for_command("Animate with Veo")
    url = _image_post(emu, "png", 400, 300)  # 4:3
    post = await emu.post_user_message(
        emu.channel.id, "sunset over the sea", emu.owner, attachments=[url]
    )
    opened = await emu.dispatch_context_menu("Animate with Veo", post, user=emu.member)
    await opened.wait_for_callback()
    assert opened.callback_type == 9 and opened.modal is not None
    assert "sunset over the sea" in str(opened.modal)

    submit = await emu.dispatch_modal_submit(
        "veo-animate", {"prompt": "the sun sinks slowly", "aspect": ["image"]}
    )
    await submit.wait_for_callback()
    assert submit.callback_type == 5  # deferred publicly at once
    final = await _final_for_interaction(emu, submit.token)
    assert "ready" in _content(final)
    body = fake.submits[0]
    assert body["prompt"] == "the sun sinks slowly"
    assert body["aspect_ratio"] == "4:3"
    assert body["image_url"] == post.attachments[0].url
    assert _thumbnail(final) == post.attachments[0].url
    assert not submit.original_message().ephemeral


async def test_menu_aspect_choice_wins_over_the_image(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    await emu.wait_for_command("Animate with Veo")
    post = await emu.post_user_message(
        emu.channel.id, "", emu.owner, attachments=[_image_post(emu, "jpeg", 300, 400)]
    )
    opened = await emu.dispatch_context_menu("Animate with Veo", post, user=emu.member)
    await opened.wait_for_callback()
    submit = await emu.dispatch_modal_submit(
        "veo-animate", {"prompt": "a slow zoom", "aspect": ["16:9"]}
    )
    await submit.wait_for_callback()
    await _final_for_interaction(emu, submit.token)
    assert fake.submits[0]["aspect_ratio"] == "16:9"


async def test_menu_on_a_message_without_an_image_says_so_privately(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    await emu.wait_for_command("Animate with Veo")
    text_file = emu.add_cdn_file("notes.txt", b"hello")
    post = await emu.post_user_message(
        emu.channel.id, "just words", emu.owner, attachments=[text_file]
    )
    handle = await emu.dispatch_context_menu("Animate with Veo", post, user=emu.member)
    callback = await handle.wait_for_callback()
    assert handle.callback_type == 4
    data = (callback.json or {})["data"]
    assert data["flags"] & 64
    assert "no image" in data["content"]
    assert fake.submits == []


async def test_menu_refuses_a_gif_after_the_modal(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    await emu.wait_for_command("Animate with Veo")
    gif = emu.add_cdn_file("spin.gif", GIF_HEAD)
    post = await emu.post_user_message(emu.channel.id, "look", emu.owner, attachments=[gif])
    opened = await emu.dispatch_context_menu("Animate with Veo", post, user=emu.member)
    await opened.wait_for_callback()
    submit = await emu.dispatch_modal_submit("veo-animate", {"prompt": "spin", "aspect": []})
    await submit.wait_for_callback()
    text = await _private_answer(emu, submit.token)
    assert "image/gif" in text
    assert fake.submits == []


# -------------------------------------------------------------------------- @Veo mentions


@pytest.mark.bot_env(INTENT_ON)
async def test_reply_with_a_mention_animates_the_replied_image(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    picture = await emu.post_user_message(
        emu.channel.id, "", emu.owner, attachments=[_image_post(emu, "jpeg", 360, 640)]
    )
    ask = await emu.post_user_message(
        emu.channel.id,
        f"{emu.bot_user.mention} make the waves crash",
        emu.member,
        reference=picture,
    )
    placeholder = await _bot_reply_to(emu, ask)
    assert emu.member not in placeholder.mentions  # the placeholder pings nobody
    final = await _channel_final(emu, placeholder)
    assert "ready" in _content(final)
    assert final.files and final.files[0].filename.endswith(".mp4")
    image_url = picture.attachments[0].url
    assert _thumbnail(final) == image_url
    body = fake.submits[0]
    assert body["prompt"] == "make the waves crash"
    assert body["image_url"] == image_url
    assert body["aspect_ratio"] == "9:16"
    # With the intent the gateway copy was complete: no fetch was needed.
    assert not emu.requests(route="GET /channels/{channel_id}/messages/{message_id}")
    # No interaction token: every edit of that placeholder went through the channel.
    assert f"<@{emu.member.id}>" in _content(final)
    assert emu.message(placeholder.id).attachments


async def test_a_message_with_its_own_image_and_a_mention(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    ask = await emu.post_user_message(
        emu.channel.id,
        f"{emu.bot_user.mention} the cat blinks",
        emu.member,
        attachments=[_image_post(emu, "webp", 300, 300)],
    )
    placeholder = await _bot_reply_to(emu, ask)
    final = await _channel_final(emu, placeholder)
    body = fake.submits[0]
    assert body["prompt"] == "the cat blinks"
    assert body["image_url"] == ask.attachments[0].url
    assert body["aspect_ratio"] == "1:1"
    assert _thumbnail(final) == ask.attachments[0].url


async def test_without_the_intent_the_replied_message_is_fetched(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    picture = await emu.post_user_message(
        emu.channel.id, "", emu.owner, attachments=[_image_post(emu, "png", 640, 360)]
    )
    ask = await emu.post_user_message(
        emu.channel.id, "slow pan right", emu.member, reference=picture, mentions=[emu.bot_user]
    )
    # What the bot was sent: the mention's content, but the replied-to image stripped.
    frame = await emu.wait_for_gateway(
        lambda f: f.event == "MESSAGE_CREATE" and f.data["id"] == str(ask.id)
    )
    assert frame.data["content"]
    assert frame.data["referenced_message"]["attachments"] == []

    fetch = await emu.wait_for_request("GET /channels/{channel_id}/messages/{message_id}")
    assert fetch.params["message_id"] == str(picture.id)
    placeholder = await _bot_reply_to(emu, ask)
    final = await _channel_final(emu, placeholder)
    assert "ready" in _content(final)
    assert fake.submits[0]["image_url"] == picture.attachments[0].url
    assert fake.submits[0]["aspect_ratio"] == "16:9"
    assert fake.submits[0]["prompt"] == "slow pan right"


@pytest.mark.parametrize(
    "intent",
    [
        pytest.param(False, id="no-intent"),
        pytest.param(True, id="intent", marks=pytest.mark.bot_env(INTENT_ON)),
    ],
)
async def test_reply_to_a_message_without_an_image_gets_the_hint(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess, intent: bool
) -> None:
    words = await emu.post_user_message(emu.channel.id, "no picture here", emu.owner)
    ask = await emu.post_user_message(
        emu.channel.id, "animate it", emu.member, reference=words, mentions=[emu.bot_user]
    )
    hint = await _bot_reply_to(emu, ask)
    assert "Animate with Veo" in hint.content
    assert ("DISCORD_MESSAGE_CONTENT_INTENT" in hint.content) is not intent
    assert "\n" not in hint.content
    assert hint.mentions == []
    fetched = emu.requests(route="GET /channels/{channel_id}/messages/{message_id}")
    assert bool(fetched) is not intent  # only without the intent is it worth fetching
    assert fake.submits == []


@pytest.mark.bot_env({"VEO_MAX_IMAGE_BYTES": str(MB)})
async def test_mention_with_an_oversized_image_is_refused_in_the_placeholder(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    big = emu.add_cdn_file("big.jpg", encode_image("jpeg", 64, 64) + b"\0" * (MB * 2))
    ask = await emu.post_user_message(
        emu.channel.id, "zoom in", emu.member, attachments=[big], mentions=[emu.bot_user]
    )
    placeholder = await _bot_reply_to(emu, ask)
    text = await _refusal_edit(emu, placeholder)
    assert "2.0 MB" in text and "up to 1.0 MB" in text
    assert fake.submits == []
    assert emu.message(placeholder.id).mentions == []


# ----------------------------------------------------------------- only images on Discord


async def test_item1_again_checks_the_stored_image_url_again(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    """Again replays the stored `image_url`: one that is not on the allow-list (a row written
    before the rule, or tampered with) is refused, and Segmind never sees it."""
    url = _image_post(emu, "png", 640, 360)
    handle = await emu.dispatch_slash_command(
        "veo", {"prompt": "the leaves fall", "image": url, "duration": 4}, user=emu.member
    )
    await handle.wait_for_callback()
    assert "ready" in _content(await _final_for_interaction(emu, handle.token))
    await bot.settled(1)
    (video,) = messages_with_video(emu, 1)

    internal = "http://169.254.169.254/latest/meta-data/iam/"
    db_write(
        bot.workdir,
        "UPDATE jobs SET image_url = ?, params = json_set(params, '$.image_url', ?) WHERE id = 1",
        (internal, internal),
    )
    again = await emu.dispatch_component("veo:again:1", video, user=emu.member)
    await again.wait_for_callback()
    assert (
        await _private_answer(emu, again.token) == "I can only animate images uploaded to Discord."
    )
    assert [s.get("image_url") for s in fake.submits] == [url]
    await bot.wait_for_log("not on the image host allow-list")


# -------------------------------------------------------------------- forwarded messages


async def test_item12_menu_on_a_forwarded_message_animates_the_forwarded_image(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    await emu.wait_for_command("Animate with Veo")
    original = await emu.post_user_message(
        emu.channel.id, "", emu.owner, attachments=[_image_post(emu, "png", 400, 300)]
    )
    forward = await emu.forward_message(original, author=emu.owner)
    assert forward.snapshot is not None
    opened = await emu.dispatch_context_menu("Animate with Veo", forward, user=emu.member)
    await opened.wait_for_callback()
    assert opened.callback_type == 9, "a forward is not 'a message without an image'"
    submit = await emu.dispatch_modal_submit(
        "veo-animate", {"prompt": "the page turns", "aspect": ["image"]}
    )
    await submit.wait_for_callback()
    final = await _final_for_interaction(emu, submit.token)
    assert "ready" in _content(final)
    image_url = forward.snapshot.attachments[0].url
    assert fake.submits[0]["image_url"] == image_url
    assert fake.submits[0]["aspect_ratio"] == "4:3"
    assert _thumbnail(final) == image_url


@pytest.mark.parametrize(
    "intent",
    [
        pytest.param(False, id="no-intent"),
        pytest.param(True, id="intent", marks=pytest.mark.bot_env(INTENT_ON)),
    ],
)
async def test_item12_a_mention_replying_to_a_forward_animates_the_forwarded_image(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess, intent: bool
) -> None:
    original = await emu.post_user_message(
        emu.channel.id, "", emu.owner, attachments=[_image_post(emu, "jpeg", 360, 640)]
    )
    forward = await emu.forward_message(original, author=emu.owner)
    assert forward.snapshot is not None
    ask = await emu.post_user_message(
        emu.channel.id, "the rain starts", emu.member, reference=forward, mentions=[emu.bot_user]
    )
    placeholder = await _bot_reply_to(emu, ask)
    final = await _channel_final(emu, placeholder)
    assert "ready" in _content(final)
    assert fake.submits[0]["image_url"] == forward.snapshot.attachments[0].url
    assert fake.submits[0]["prompt"] == "the rain starts"
    assert fake.submits[0]["aspect_ratio"] == "9:16"
