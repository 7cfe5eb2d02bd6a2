"""Money truth end to end (issue 12, items 4 and 5): the real bot process against the Discord
emulator and the Segmind fake.

- A submit whose answer is lost after Segmind created (and billed) the job is found again in
  Segmind's history: delivered once, one submit, charged once.
- A job resumed after Segmind's one-hour retention (the bot was down; the fake's clock moved)
  is delivered from its history row's `generation_url`, not refunded.
- A lost answer that matches several requests is not guessed: refunded, and each candidate
  posted once to the log channel and listed by `/veo-admin discrepancies`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.params import VeoParams
from bot.segmind.client import SegmindClient
from bot.segmind.fake import FakeSegmind, Fault
from harness.bot_process import (
    FAKE_KEY,
    BotProcess,
    job_states,
    ledger,
    messages_with_video,
    video_uploads,
)
from harness.discord_emulator import DiscordEmulator, RequestRecord
from tests.e2e.helpers import content_of, edits_for, final_for, private_answer

JOB_TIMEOUT = 40.0


@pytest.fixture
async def proc(
    emu: DiscordEmulator, fake: FakeSegmind, tmp_path: Path
) -> AsyncIterator[BotProcess]:
    """A bot the test may kill and start again on the same database."""
    process = BotProcess(emu, fake, tmp_path, {"VEO_RECOVERY_INTERVAL_SECONDS": "0.2"})
    await process.start()
    await emu.wait_for_command("veo")
    yield process
    await process.stop()
    emu.assert_no_violations()


def delivered_once(emu: DiscordEmulator, fake: FakeSegmind, workdir: Path) -> None:
    assert job_states(workdir) == {1: "delivered"}
    assert len(video_uploads(emu, 1)) == 1  # Discord accepted exactly one upload of it
    assert len(messages_with_video(emu, 1)) == 1
    assert sum(r.route == "submit" for r in fake.requests) == 1  # never sent twice
    assert len(fake.submits) == 1
    assert ledger(workdir) == {1: "charged"}  # the member pays for it once


async def test_a_submit_whose_answer_is_lost_is_delivered_once(
    emu: DiscordEmulator, fake: FakeSegmind, proc: BotProcess, tmp_path: Path
) -> None:
    fake.inject("submit", Fault(drop=True))  # the job is created and billed, the answer lost
    handle = await emu.dispatch_slash_command("veo", {"prompt": "a lost answer"}, user=emu.member)
    await handle.wait_for_callback()
    final = await final_for(emu, handle.token, timeout=JOB_TIMEOUT)
    await proc.settled(1)

    assert final.files, "the video is in the placeholder"
    shown = [str((r.json or {}).get("content", "")) for r in edits_for(emu, handle.token)]
    assert any("Segmind's answer was lost; looking it up" in text for text in shown)
    delivered_once(emu, fake, tmp_path)
    request_id = next(iter(fake.jobs))
    assert f"found as Segmind request {request_id}" in "\n".join(proc.lines)


async def test_a_job_resumed_past_the_retention_is_delivered_from_the_history(
    emu: DiscordEmulator, fake: FakeSegmind, proc: BotProcess, tmp_path: Path
) -> None:
    handle = await emu.dispatch_slash_command(
        "veo", {"prompt": "kept too long [fake:slow=2]"}, user=emu.member
    )
    await handle.wait_for_callback()
    await emu.wait_for(
        lambda r: (
            r.params.get("interaction_token") == handle.token
            and "Generating" in str((r.json or {}).get("content", ""))
        ),
        timeout=JOB_TIMEOUT,
    )
    await proc.kill()
    fake.advance(2 * 3600)  # down for two hours: status and result answer 404 by now
    await proc.start()
    final = await final_for(emu, handle.token, timeout=JOB_TIMEOUT)
    await proc.settled(1)

    assert final.files
    delivered_once(emu, fake, tmp_path)
    assert any(r.route == "history-row" for r in fake.requests)
    assert "delivering from the history's video" in "\n".join(proc.lines)


async def _admin(emu: DiscordEmulator, command: str, options: dict[str, object]) -> str:
    handle = await emu.dispatch_slash_command(command, options, user=emu.moderator)
    callback = await handle.wait_for_callback()
    data = (callback.json or {}).get("data", {})
    if data.get("content"):  # answered directly
        return str(data["content"])
    return (await private_answer(emu, handle.token)).content


async def test_a_lost_answer_matching_several_requests_is_refunded_and_told_to_moderators(
    emu: DiscordEmulator, fake: FakeSegmind, proc: BotProcess, tmp_path: Path
) -> None:
    log_channel = emu.guild.add_text_channel("veo-log")
    await emu.announce_channel_create(log_channel.id)
    await _admin(emu, "veo-admin limits log-channel", {"channel": log_channel})
    # The same prompt and seed, sent by another app on the same account a moment before.
    async with SegmindClient(FAKE_KEY, fake.base_url) as other:
        twin = await other.submit(VeoParams(prompt="twins", seed=4242, generate_audio=True))
    fake.inject("submit", Fault(drop=True))
    handle = await emu.dispatch_slash_command(
        "veo", {"prompt": "twins", "seed": 4242}, user=emu.member
    )
    await handle.wait_for_callback()
    final = await final_for(emu, handle.token, timeout=JOB_TIMEOUT)
    await proc.settled(1)

    assert "did not guess which is yours" in content_of(final) and not final.files
    assert job_states(tmp_path) == {1: "unknown"} and ledger(tmp_path) == {1: "released"}
    assert sum(r.route == "submit" for r in fake.requests) == 2  # the twin's and ours, once
    ours = next(rid for rid in fake.jobs if rid != twin.request_id)

    def to_moderators(r: RequestRecord) -> bool:
        return r.params.get("channel_id") == str(log_channel.id) and "several" in content_of(r)

    await emu.wait_for(lambda r: to_moderators(r) and ours in content_of(r))
    await emu.wait_for(lambda r: to_moderators(r) and twin.request_id in content_of(r))
    posted = [
        content_of(r)
        for r in emu.requests("POST /channels/{channel_id}/messages")
        if to_moderators(r)
    ]
    assert len(posted) == 2  # one per candidate request, each posted once
    assert any(twin.request_id in text for text in posted)
    assert any(ours in text for text in posted)
    listing = await _admin(emu, "veo-admin discrepancies", {})
    assert twin.request_id in listing and ours in listing and "job 1" in listing
