"""Issue 11 ("hardening") end to end, where the behaviour is Discord-visible: refusals before any
fetch, the mention path's cooldown and public refusals, buttons bound to their guild, and the
image form during shutdown."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from bot.segmind.fake import FakeSegmind, Fault
from harness.bot_process import BotProcess, ledger, messages_with_video, wait_until
from harness.discord_emulator import DiscordEmulator, InteractionHandle, StoredMessage
from tests.e2e.helpers import final_for, private_answer
from tests.imaging import encode_image

JOB_TIMEOUT = 40.0


def _image(emu: DiscordEmulator) -> str:
    return emu.add_cdn_file("picture.png", encode_image("png", 400, 300))


async def _answer_text(emu: DiscordEmulator, handle: InteractionHandle) -> str:
    """The bot's private answer to an interaction, however it was sent (callback or follow-up)."""
    record = await emu.wait_for(
        lambda r: (
            r.params.get("interaction_token") == handle.token
            and r.method in ("POST", "PATCH")
            and r.status in (200, 204)
            and bool((r.json or {}).get("content") or (r.json or {}).get("data", {}).get("content"))
        ),
        timeout=15,
    )
    body = record.json or {}
    return str(body.get("content") or body.get("data", {}).get("content"))


# ------------------------------------------------------------------------------ item 2


@pytest.mark.bot_env({"VEO_USER_LIMIT": "1"})
async def test_hardening_02_a_member_over_the_limit_is_refused_before_the_image_is_fetched(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    first = await emu.dispatch_slash_command("veo", {"prompt": "a calm sea"}, user=emu.member)
    await first.wait_for_callback()
    assert "ready" in str((await final_for(emu, first.token)).json["content"])
    await bot.settled(1)

    url = _image(emu)
    again = await emu.dispatch_slash_command(
        "veo", {"prompt": "the sea from this picture", "image": url}, user=emu.member
    )
    await again.wait_for_callback()
    answer = await private_answer(emu, again.token)
    assert "You have used 1 of 1 videos" in answer.content
    assert emu.cdn_requests == []  # the refusal came before any fetch of the image
    assert len(fake.submits) == 1


# ------------------------------------------------------------------------------ item 8


async def _block(emu: DiscordEmulator, reason: str) -> None:
    handle = await emu.dispatch_slash_command(
        "veo-admin block", {"user": emu.member, "reason": reason}, user=emu.moderator
    )
    callback = await handle.wait_for_callback()
    if not (callback.json or {}).get("data", {}).get("content"):
        await private_answer(emu, handle.token)


def _replies_to(emu: DiscordEmulator, message: StoredMessage) -> list[object]:
    return [
        r
        for r in emu.timeline
        if r.route == "POST /channels/{channel_id}/messages"
        and str((r.json or {}).get("message_reference", {}).get("message_id")) == str(message.id)
    ]


async def test_hardening_08_mentions_are_throttled_and_a_public_refusal_keeps_the_reason_private(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    await _block(emu, "secret moderator note")
    ask = await emu.post_user_message(
        emu.channel.id,
        "make it move",
        emu.member,
        attachments=[_image(emu)],
        mentions=[emu.bot_user],
    )
    await emu.wait_for(lambda r: bool(_replies_to(emu, ask)), timeout=15)
    (reply,) = _replies_to(emu, ask)
    placeholder = emu.message(int(reply.response["id"]))  # type: ignore[attr-defined]
    await emu.wait_for(
        lambda r: (
            r.route == "PATCH /channels/{channel_id}/messages/{message_id}"
            and r.params.get("message_id") == str(placeholder.id)
            and r.status == 200
        ),
        timeout=15,
    )
    # In the channel: refused, but the moderator's reason is not for everyone to read.
    assert "not allowed" in placeholder.content
    assert "secret moderator note" not in placeholder.content
    assert emu.cdn_requests == []  # refused before the image was fetched (item 2)

    # More mentions right away: no more public replies, however many come.
    burst = [
        await emu.post_user_message(
            emu.channel.id, f"again {n}", emu.member, mentions=[emu.bot_user]
        )
        for n in range(3)
    ]
    await bot.wait_for_log("ignored (cooldown", count=3, timeout=15)
    assert all(_replies_to(emu, m) == [] for m in burst)
    assert fake.submits == []


# ------------------------------------------------------------------------------ item 9


def _bot_message_with_buttons(
    emu: DiscordEmulator, channel_id: int, custom_ids: list[str]
) -> StoredMessage:
    """A message of the bot's carrying these buttons, as a forged or stale one would."""
    found = emu.world.channel(channel_id)
    assert found is not None
    channel, guild = found
    row: dict[str, Any] = {
        "type": 1,
        "components": [
            {"type": 2, "style": 2, "label": f"b{n}", "custom_id": custom_id}
            for n, custom_id in enumerate(custom_ids)
        ],
    }
    return emu._new_message(
        channel, guild, emu.bot_user, {"content": "old buttons", "components": [row]}, []
    )


async def test_hardening_09_a_button_naming_no_job_here_is_no_longer_valid(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    handle = await emu.dispatch_slash_command("veo", {"prompt": "a paper boat"}, user=emu.member)
    await handle.wait_for_callback()
    await bot.wait_for_log("job 1 delivered", timeout=JOB_TIMEOUT)
    (video,) = messages_with_video(emu, 1)

    # Job 1's buttons on a message in another guild, pressed by that guild's owner (who may
    # delete anything there and start videos).
    other = await emu.join_guild("Elsewhere", owner=emu.owner)
    (elsewhere,) = other.channels.values()
    foreign = _bot_message_with_buttons(
        emu, elsewhere.id, ["veo:again:1", "veo:delete:1", "veo:edit:1"]
    )
    for custom_id in ("veo:again:1", "veo:delete:1", "veo:edit:1"):
        press = await emu.dispatch_component(custom_id, foreign, user=emu.owner)
        assert await _answer_text(emu, press) == "This button is no longer valid."
        assert press.modal is None

    # Ids that name no job at all: not digits, or past SQLite's 64-bit integer.
    bad = ["veo:delete:1x", "veo:cancel:", f"veo:delete:{2**63}", "veo:again:99999999999999999999"]
    here = _bot_message_with_buttons(emu, emu.channel.id, bad)
    for custom_id in bad:
        press = await emu.dispatch_component(custom_id, here, user=emu.moderator)
        assert await _answer_text(emu, press) == "This button is no longer valid."

    assert not foreign.deleted and not here.deleted and not video.deleted
    assert len(fake.submits) == 1  # nothing was started


# ----------------------------------------------------------------------------- item 13


async def test_hardening_13_the_image_form_is_refused_during_shutdown(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    await emu.wait_for_command("Animate with Veo")
    post = await emu.post_user_message(emu.channel.id, "", emu.owner, attachments=[_image(emu)])
    opened = await emu.dispatch_context_menu("Animate with Veo", post, user=emu.member)
    await opened.wait_for_callback()
    assert opened.callback_type == 9

    # A submit on the wire keeps the bot draining after SIGTERM; held past the drain's cap, so
    # the window lasts the whole cap (SUBMIT_DRAIN_SECONDS) however slow the machine is.
    fake.inject("submit", Fault(delay=30.0))
    busy = await emu.dispatch_slash_command("veo", {"prompt": "in flight"}, user=emu.owner)
    await busy.wait_for_callback()
    await wait_until(lambda: bool(fake.submits), what="the submit to reach Segmind")
    assert bot.proc is not None
    bot.proc.send_signal(signal.SIGTERM)
    await bot.wait_for_log("shutting down")

    submit = await emu.dispatch_modal_submit(
        "veo-animate", {"prompt": "the sun sinks", "aspect": ["image"]}
    )
    assert "restarting" in await _answer_text(emu, submit)
    assert await bot.proc.wait() == 0
    assert len(fake.submits) == 1
    assert emu.cdn_requests == []  # the form's image was never looked at


# ------------------------------------------------------------------------------ item 7

WEBHOOK_EDIT = "PATCH /webhooks/{application_id}/{interaction_token}/messages/{message_id}"
WEBHOOK_READ = "GET /webhooks/{application_id}/{interaction_token}/messages/{message_id}"


async def test_hardening_07_a_video_that_may_have_landed_is_not_refunded(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    """Every upload's connection is cut, and the bot cannot read back its own placeholder
    (404): it cannot tell whether the video is there, so the member keeps no refund and is
    told, in a new message, that it may have arrived."""
    drops = emu.hold_requests(WEBHOOK_EDIT, when=lambda r: bool(r.files), times=4)
    drops.drop()  # decided in advance: each upload is cut as soon as its body arrived
    emu.inject_error(WEBHOOK_READ, 404, 10008, "Unknown Message", times=10)
    handle = await emu.dispatch_slash_command("veo", {"prompt": "a paper boat"}, user=emu.member)
    await handle.wait_for_callback()
    await bot.wait_for_log("job 1 failed", timeout=JOB_TIMEOUT + 30)

    record = await emu.wait_for(
        lambda r: (
            r.route == "POST /channels/{channel_id}/messages"
            and r.status == 200
            and "may already be" in str((r.json or {}).get("content", ""))
        ),
        timeout=15,
    )
    notice = emu.message(int(record.response["id"]))
    assert emu.member in notice.mentions  # the requester is pinged: it is about their video
    assert "job 1" in notice.content and "does not count" not in notice.content
    assert len(drops.held) == 4  # every attempt was made
    assert "NOT refunded" in "\n".join(bot.lines)
    assert ledger(bot.workdir) == {1: "charged"}
