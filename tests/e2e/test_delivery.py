"""Delivery that always fits: attach, re-encode under the guild's limit, or link with the reason —
through the real bot process, with the emulator enforcing Discord's upload limits (413/40005)."""

from __future__ import annotations

import io

import aiohttp
import pytest

from bot.segmind.fake import FakeSegmind, probe
from harness.bot_process import BotProcess
from harness.discord_emulator import DiscordEmulator, RequestRecord

MIB = 1024 * 1024
MANY = {"VEO_USER_CONCURRENCY": "10", "VEO_USER_LIMIT": "10"}


def _content(record: RequestRecord) -> str:
    body = record.json
    return body.get("content", "") if isinstance(body, dict) else ""


async def _final(emu: DiscordEmulator, token: str, timeout: float = 60.0) -> RequestRecord:  # noqa: ASYNC109
    def final(r: RequestRecord) -> bool:
        head = _content(r).split("\n", 1)[0]
        return (
            r.params.get("interaction_token") == token
            and r.method == "PATCH"
            and r.status == 200
            and ("ready" in head or head.startswith("❌"))
        )

    return await emu.wait_for(final, timeout=timeout)


def _edits(emu: DiscordEmulator, token: str) -> list[str]:
    return [
        _content(r)
        for r in emu.timeline
        if r.params.get("interaction_token") == token and r.method == "PATCH"
    ]


async def _served(fake: FakeSegmind) -> bytes:
    job = next(iter(fake.jobs.values()))
    url = f"{fake.base_url}/_fake/outputs/{job.request_id}.mp4"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return await response.read()


async def _stop_and_list_work_dir(bot: BotProcess) -> list[str]:
    """Stop the bot cleanly, then list its work dir: whatever is left was leaked."""
    assert await bot.stop() == 0, bot.tail()
    return sorted(p.name for p in (bot.workdir / "work").iterdir())


@pytest.mark.bot_env(MANY)
async def test_15mb_in_a_10mib_guild_is_reencoded_to_fit_even_across_a_crash(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    assert emu.guild.premium_tier == 0  # 10 MiB per file
    handle = await emu.dispatch_slash_command(
        "veo",
        {"prompt": "television static [fake:bitrateMB=15]", "duration": 8, "audio": True},
        user=emu.member,
    )
    await handle.wait_for_callback()

    # Crash in the middle of the re-encode: the download (and maybe a partial encode) stay behind.
    await bot.wait_for_log("re-encoding", timeout=60)
    await bot.kill()
    assert "job-1.mp4" in {p.name for p in (bot.workdir / "work").iterdir()}

    # The next start cleans the work dir and finishes the paid job: download, encode, deliver.
    await bot.start()
    final = await _final(emu, handle.token)
    source = await _served(fake)
    assert len(source) > 15 * MIB

    assert len(final.files) == 1
    video = final.files[0]
    assert video.size <= 10 * MIB
    assert video.size > 8 * MIB  # the budget was used, not thrown away
    before, after = probe(io.BytesIO(source)), probe(io.BytesIO(video.data))
    assert after["video_codec"] == "h264"
    assert after["audio"] and after["audio_codec"] == "aac"
    assert abs(after["duration"] - before["duration"]) < 0.1
    assert (after["width"], after["height"]) == (before["width"], before["height"])
    assert "Re-encoded to fit this server's 10 MB upload limit" in _content(final)
    assert any("Re-encoding" in text for text in _edits(emu, handle.token))
    assert len(fake.submits) == 1  # the crash never re-bought the video

    assert await _stop_and_list_work_dir(bot) == []


@pytest.mark.bot_env(MANY)
async def test_15mb_in_a_boosted_guild_is_attached_unchanged(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    boosted = await emu.join_guild("Boosted", owner=emu.owner, premium_tier=2)  # 50 MiB/file
    boosted.add_member(emu.member)
    channel = next(iter(boosted.channels.values()))
    handle = await emu.dispatch_slash_command(
        "veo",
        {"prompt": "static again [fake:bitrateMB=15]", "duration": 8, "audio": True},
        user=emu.member,
        channel_id=channel.id,
    )
    await handle.wait_for_callback()
    assert handle.payload["attachment_size_limit"] == 50 * MIB
    final = await _final(emu, handle.token)
    assert len(final.files) == 1
    assert final.files[0].data == await _served(fake)
    assert "Re-encoded" not in _content(final)
    assert not any("Re-encoding" in text for text in _edits(emu, handle.token))
    assert await _stop_and_list_work_dir(bot) == []


@pytest.mark.bot_env(MANY)
async def test_a_video_that_cannot_fit_is_linked_with_the_reason(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    emu.guild.upload_limit = 100 * 1024  # far below any watchable 8 s video
    handle = await emu.dispatch_slash_command(
        "veo", {"prompt": "static, tiny server [fake:bitrateMB=1]"}, user=emu.member
    )
    await handle.wait_for_callback()
    final = await _final(emu, handle.token)
    assert not final.files
    content = _content(final)
    assert "over this server's 100 KB upload limit" in content
    assert "watchable" in content
    assert "7 days" in content
    job = next(iter(fake.jobs.values()))
    assert f"/_fake/outputs/{job.request_id}.mp4>" in content
    assert await _stop_and_list_work_dir(bot) == []


@pytest.mark.bot_env(MANY)
async def test_item10_a_delivery_retry_sends_the_encode_it_already_made(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    # The first upload of the re-encoded file is cut off on the wire (Discord never applied
    # it); the retry must not spend the cores on the same encode again.
    hold = emu.hold_requests(
        "PATCH /webhooks/{application_id}/{interaction_token}/messages/{message_id}",
        when=lambda r: bool(r.files),
    )
    handle = await emu.dispatch_slash_command(
        "veo",
        {"prompt": "static once more [fake:bitrateMB=15]", "duration": 8, "audio": True},
        user=emu.member,
    )
    await handle.wait_for_callback()
    await hold.arrived(timeout=60)
    hold.drop()
    final = await _final(emu, handle.token)
    assert "ready" in _content(final) and final.files and final.files[0].size <= 10 * MIB
    await bot.wait_for_log("job 1: reusing the re-encode of an earlier attempt")
    assert sum("is over the" in line and "re-encoding" in line for line in bot.lines) == 1
    assert "delivery attempt 1 failed" in bot.tail(200)
    await bot.settled(1)
    assert await _stop_and_list_work_dir(bot) == []
