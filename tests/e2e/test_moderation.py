"""Moderators' rules end to end: banned words, allowed channels and the gallery, against the
emulator and the fake with the real bot process — one process for the whole module (each test
leaves the guild's rules as it found them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot.segmind.fake import FakeSegmind
from harness.bot_process import FAKE_KEY, BotProcess, db_rows, wait_until
from harness.discord_emulator import DiscordEmulator, InteractionHandle, RequestRecord
from tests.e2e.helpers import content_of, final_for, private_answer

pytestmark = pytest.mark.asyncio(loop_scope="module")
module_fixture = pytest_asyncio.fixture(scope="module", loop_scope="module")
POSTS = "POST /channels/{channel_id}/messages"


@module_fixture
async def emu() -> AsyncIterator[DiscordEmulator]:
    async with DiscordEmulator() as emulator:
        yield emulator


@module_fixture
async def fake() -> AsyncIterator[FakeSegmind]:
    segmind = FakeSegmind(api_key=FAKE_KEY, queue_seconds=0.1, processing_seconds=0.3)
    await segmind.start(host="127.0.0.1", port=0)
    yield segmind
    await segmind.stop()


@module_fixture
async def bot(
    emu: DiscordEmulator, fake: FakeSegmind, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[BotProcess]:
    workdir: Path = tmp_path_factory.mktemp("moderation")
    process = BotProcess(emu, fake, workdir, {"VEO_USER_LIMIT": "50"})
    await process.start()
    await emu.wait_for_command("veo")
    yield process
    code = await process.stop()
    assert code == 0, f"the bot did not shut down cleanly ({code}):\n{process.tail()}"
    emu.assert_no_violations()


async def _admin(emu: DiscordEmulator, command: str, options: dict[str, object]) -> str:
    handle = await emu.dispatch_slash_command(command, options, user=emu.moderator)
    callback = await handle.wait_for_callback()
    data = (callback.json or {}).get("data", {})
    if data.get("content"):  # answered directly
        assert data["flags"] & 64
        return str(data["content"])
    return (await private_answer(emu, handle.token)).content


async def _channel(emu: DiscordEmulator, name: str) -> int:
    channel = emu.guild.add_text_channel(name)
    await emu.announce_channel_create(channel.id)
    return channel.id


def _posts_in(emu: DiscordEmulator, channel_id: int) -> list[RequestRecord]:
    return [r for r in emu.requests(POSTS) if r.params.get("channel_id") == str(channel_id)]


def _job_count(bot: BotProcess) -> int:
    return int(db_rows(bot.workdir, "SELECT COUNT(*) FROM jobs")[0][0])  # type: ignore[arg-type]


async def test_a_banned_word_in_full_width_letters_is_refused_before_any_fetch_or_submit(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    log_channel = await _channel(emu, "veo-log")
    await _admin(emu, "veo-admin limits log-channel", {"channel": emu.guild.channels[log_channel]})
    added = await _admin(emu, "veo-admin banned-words add", {"entry": "Forbidden *Fruit*"})
    assert "Forbidden \\*Fruit\\*" in added  # shown escaped: no markdown of the moderator's
    again = await _admin(emu, "veo-admin banned-words add", {"entry": "f.o.r.b.i.d.d.e.n fruit"})
    assert "already banned" in again
    submits, jobs = len(fake.submits), _job_count(bot)

    image = emu.add_cdn_file("apple.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    prompt = "a still life: ＦＯＲＢＩＤＤＥＮ\u200b FRUIT on a table"  # full-width + zero-width
    handle = await emu.dispatch_slash_command(
        "veo", {"prompt": prompt, "image": image}, user=emu.member
    )
    await handle.wait_for_callback()
    answer = await private_answer(emu, handle.token)
    assert answer.ephemeral
    assert "banned word or phrase “Forbidden \\*Fruit\\*”" in answer.content, answer.content
    assert "nothing was charged" in answer.content
    assert handle.original_message().deleted  # no public trace of the attempt

    # One line for the moderators, naming the member and the rule, pinging nobody.
    line = await emu.wait_for(
        lambda r: r.route == POSTS and r.params.get("channel_id") == str(log_channel)
    )
    assert content_of(line).startswith(f"🚫 <@{emu.member.id}>"), content_of(line)
    assert "Forbidden \\*Fruit\\*" in content_of(line)
    assert line.json["allowed_mentions"]["parse"] == []
    # Nothing was fetched, reserved or sent to Segmind.
    assert not [r for r in emu.cdn_requests if "apple.png" in r], emu.cdn_requests
    assert (len(fake.submits), _job_count(bot)) == (submits, jobs)

    # A mention is refused in public without naming the word; the member learns it by DM.
    ask = await emu.post_user_message(
        emu.channel.id,
        f"{emu.bot_user.mention} forbidden-fruit please",
        emu.member,
        attachments=[image],
    )
    await bot.wait_for_log(f"user {emu.member.id} in guild {emu.guild.id}: prompt stopped", count=2)
    await wait_until(
        lambda: any(
            m.message_reference
            and m.message_reference.get("message_id") == str(ask.id)
            and "does not allow" in m.content
            for m in emu.channel_messages(emu.channel.id)
        ),
        what="the public refusal of the mention",
    )
    public = [m for m in emu.channel_messages(emu.channel.id) if "does not allow" in m.content]
    assert "Forbidden" not in public[-1].content
    dm = emu.dm_channel(emu.member)
    await wait_until(
        lambda: any("Forbidden" in m.content for m in emu.channel_messages(dm.id)),
        what="the DM naming the banned entry",
    )
    assert (len(fake.submits), _job_count(bot)) == (submits, jobs)

    listing = await _admin(emu, "veo-admin banned-words list", {})
    assert "Forbidden \\*Fruit\\*" in listing
    assert "Banned words: 1" in await _admin(emu, "veo-admin limits show", {})
    removed = await _admin(emu, "veo-admin banned-words remove", {"entry": "FORBIDDEN FRUIT"})
    assert "no longer banned" in removed
    audit = await _admin(emu, "veo-admin audit", {})
    assert "**banned_word.add**" in audit and "**banned_word.remove**" in audit
    await _admin(emu, "veo-admin limits log-channel", {})


async def test_outside_the_allowed_channels_commands_are_refused_privately_and_mentions_ignored(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    here = await _channel(emu, "veo-here")
    refused = await emu.dispatch_slash_command(
        "veo-admin channels allow", {"channel": emu.guild.channels[here]}, user=emu.member
    )
    callback = await refused.wait_for_callback()
    assert "Manage Server" in (callback.json or {})["data"]["content"]
    saved = await _admin(emu, "veo-admin channels allow", {"channel": emu.guild.channels[here]})
    assert f"works only in <#{here}>" in saved
    submits = len(fake.submits)

    handle = await emu.dispatch_slash_command("veo", {"prompt": "a lighthouse"}, user=emu.member)
    callback = await handle.wait_for_callback()
    data = (callback.json or {})["data"]
    assert data["flags"] & 64  # privately, straight away: no public placeholder at all
    assert f"I only make videos in <#{here}>" in data["content"]
    assert handle.callback_type == 4  # answered at once, never a public "thinking…"
    assert handle.original_message().ephemeral

    before = len(_posts_in(emu, emu.channel.id))
    ask = await emu.post_user_message(
        emu.channel.id, f"{emu.bot_user.mention} animate this", emu.member
    )
    await bot.wait_for_log(f"message {ask.id}: mention in channel {emu.channel.id} ignored")
    assert len(_posts_in(emu, emu.channel.id)) == before  # not a word in that channel

    # Moderators' commands work everywhere; the listed channel works for members.
    assert f"<#{here}>" in await _admin(emu, "veo-admin channels list", {})
    assert f"Channels: <#{here}>" in await _admin(emu, "veo-admin limits show", {})
    made = await emu.dispatch_slash_command(
        "veo", {"prompt": "a lighthouse"}, user=emu.member, channel_id=here
    )
    await made.wait_for_callback()
    assert "ready" in content_of(await final_for(emu, made.token))
    assert len(fake.submits) == submits + 1

    cleared = await _admin(emu, "veo-admin channels remove", {"channel": emu.guild.channels[here]})
    assert "every channel" in cleared
    audit = await _admin(emu, "veo-admin audit", {})
    assert "**channel.allow**" in audit and "**channel.remove**" in audit


async def _video(emu: DiscordEmulator, prompt: str) -> InteractionHandle:
    handle = await emu.dispatch_slash_command("veo", {"prompt": prompt}, user=emu.member)
    await handle.wait_for_callback()
    assert "ready" in content_of(await final_for(emu, handle.token))
    return handle


async def test_a_gallery_announcement_appears_on_delivery_and_goes_away_with_delete(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    gallery = await _channel(emu, "veo-gallery")
    saved = await _admin(emu, "veo-admin gallery", {"channel": emu.guild.channels[gallery]})
    assert f"<#{gallery}>" in saved
    assert f"Gallery: <#{gallery}>" in await _admin(emu, "veo-admin limits show", {})

    handle = await _video(emu, "@everyone a *cat* dancing")
    video = handle.original_message()
    post = await emu.wait_for(
        lambda r: r.route == POSTS and r.params.get("channel_id") == str(gallery)
    )
    text = content_of(post)
    link = f"https://discord.com/channels/{emu.guild.id}/{emu.channel.id}/{video.id}"
    assert link in text  # a link to the video…
    assert not emu.message(int(post.response["id"])).attachments  # …not a second upload
    assert f"<@{emu.member.id}>" in text  # the requester, shown by name
    assert "\\*cat\\*" in text and "@everyone" not in text  # escaped, pings nobody
    assert post.json["allowed_mentions"]["parse"] == []
    announcement = emu.message(int(post.response["id"]))

    await emu.dispatch_component(f"veo:delete:{_job_id(video)}", video, user=emu.member)
    await wait_until(lambda: video.deleted and announcement.deleted, what="both to be deleted")

    # A gallery the bot cannot post in never costs the member their video.
    emu.deny_channel(gallery)
    await emu.announce_channel_update(gallery)
    second = await _video(emu, "a quiet harbour")
    await bot.wait_for_log("cannot post in the gallery channel")
    assert not second.original_message().deleted

    # Again goes through the same rules: a word banned since is refused, privately.
    await _admin(emu, "veo-admin banned-words add", {"entry": "harbour"})
    submits = len(fake.submits)
    video = second.original_message()
    again = await emu.dispatch_component(f"veo:again:{_job_id(video)}", video, user=emu.member)
    await again.wait_for_callback()
    refusal = await private_answer(emu, again.token)
    assert "“harbour”" in refusal.content and refusal.ephemeral
    assert len(fake.submits) == submits
    await _admin(emu, "veo-admin banned-words remove", {"entry": "harbour"})

    await _admin(emu, "veo-admin gallery", {})
    assert "Gallery: none" in await _admin(emu, "veo-admin limits show", {})
    assert "**gallery.set**" in await _admin(emu, "veo-admin audit", {})


def _job_id(message: object) -> int:
    """The job a video message's buttons name."""
    for row in getattr(message, "components", []):
        for component in row.get("components", []):
            custom_id = str(component.get("custom_id", ""))
            if custom_id.startswith("veo:delete:"):
                return int(custom_id.rsplit(":", 1)[1])
    raise AssertionError("the video has no Delete button")
