"""Money truth end to end (issue 12, items 4 and 5): the real bot process against the Discord
emulator and the Segmind fake.

- A submit whose answer is lost after Segmind created (and billed) the job is found again in
  Segmind's history: delivered once, one submit, charged once.
- A job resumed after Segmind's one-hour retention (the bot was down; the fake's clock moved)
  is delivered from its history row's `generation_url`, not refunded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.segmind.fake import FakeSegmind, Fault
from harness.bot_process import (
    BotProcess,
    job_states,
    ledger,
    messages_with_video,
    video_uploads,
)
from harness.discord_emulator import DiscordEmulator
from tests.e2e.helpers import edits_for, final_for

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
