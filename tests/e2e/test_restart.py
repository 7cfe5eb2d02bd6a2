"""No job lost: the real bot process killed (SIGKILL) at each stage of a job and started again on
the same database and work dir; the 15-minute token; deleted messages; lost channel access;
SIGTERM within 10 s.

Each check that matters for money: every job delivered exactly once (Discord accepted exactly one
request carrying its video, and exactly one message shows it), Segmind saw exactly one submit per
job, and the ledger adds up (charged == delivered, nothing left reserved).
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bot.segmind.fake import FakeSegmind, Fault
from harness.bot_process import (
    BotProcess,
    job_states,
    ledger,
    messages_with_video,
    video_uploads,
    wait_until,
)
from harness.discord_emulator import DiscordEmulator, RequestRecord

WEBHOOK_EDIT = "PATCH /webhooks/{application_id}/{interaction_token}/messages/{message_id}"
CHANNEL_EDIT = "PATCH /channels/{channel_id}/messages/{message_id}"
CHANNEL_POST = "POST /channels/{channel_id}/messages"
JOB_TIMEOUT = 40.0


@pytest.fixture
async def proc(
    emu: DiscordEmulator, fake: FakeSegmind, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[BotProcess]:
    """A bot process the test starts, kills and restarts itself (same DB, same work dir)."""
    marker = request.node.get_closest_marker("bot_env")
    env = {
        "VEO_USER_CONCURRENCY": "5",
        "VEO_USER_LIMIT": "20",
        "VEO_RECOVERY_INTERVAL_SECONDS": "0.2",  # the fake's history rows land in 1 s
        **(marker.args[0] if marker else {}),
    }
    process = BotProcess(emu, fake, tmp_path, env)
    await process.start()
    await emu.wait_for_command("veo")
    yield process
    await process.stop()
    emu.assert_no_violations()


def _edited_with(token: str, fragment: str) -> Callable[[RequestRecord], bool]:
    def predicate(r: RequestRecord) -> bool:
        return (
            r.params.get("interaction_token") == token
            and r.method == "PATCH"
            and fragment in str((r.json or {}).get("content", ""))
        )

    return predicate


async def _restart(proc: BotProcess) -> None:
    await proc.kill()
    await proc.start()


async def _all_settled(proc: BotProcess, count: int) -> None:
    await proc.wait_for_log(
        r"job \d+ (delivered|failed|expired|unknown|cancelled)\b",
        count=count,
        regex=True,
        timeout=JOB_TIMEOUT,
    )


def assert_exactly_once(emu: DiscordEmulator, fake: FakeSegmind, workdir: Path, jobs: int) -> None:
    states = job_states(workdir)
    assert sorted(states) == list(range(1, jobs + 1))
    assert set(states.values()) == {"delivered"}, states
    for job_id in states:
        assert len(video_uploads(emu, job_id)) == 1, f"job {job_id} uploaded more than once"
        assert len(messages_with_video(emu, job_id)) == 1, f"job {job_id} shown more than once"
    assert len(fake.submits) == jobs
    assert len({s["prompt"] for s in fake.submits}) == jobs  # one submit per job
    assert set(ledger(workdir).values()) == {"charged"}


# --------------------------------------------------------------------- SIGKILL at each stage


@pytest.mark.bot_env({"VEO_MAX_CONCURRENT_JOBS": "1"})
async def test_kill_while_queued_keeps_the_queue_in_order(
    emu: DiscordEmulator, fake: FakeSegmind, proc: BotProcess, tmp_path: Path
) -> None:
    first = await emu.dispatch_slash_command(
        "veo", {"prompt": "first [fake:slow=2]"}, user=emu.member
    )
    await first.wait_for_callback()
    second = await emu.dispatch_slash_command("veo", {"prompt": "second"}, user=emu.moderator)
    await second.wait_for_callback()
    third = await emu.dispatch_slash_command("veo", {"prompt": "third"}, user=emu.owner)
    await third.wait_for_callback()
    # Second and third wait in the bot's own queue, behind the slow first one (submitted).
    await emu.wait_for(_edited_with(first.token, "Generating"), timeout=JOB_TIMEOUT)
    await emu.wait_for(_edited_with(third.token, "2nd in line"), timeout=JOB_TIMEOUT)
    assert job_states(tmp_path)[3] == "queued"
    await _restart(proc)
    await _all_settled(proc, 3)
    assert_exactly_once(emu, fake, tmp_path, jobs=3)
    assert [s["prompt"] for s in fake.submits] == ["first [fake:slow=2]", "second", "third"]


async def test_kill_while_generating(
    emu: DiscordEmulator, fake: FakeSegmind, proc: BotProcess, tmp_path: Path
) -> None:
    handle = await emu.dispatch_slash_command(
        "veo", {"prompt": "a slow one [fake:slow=2]"}, user=emu.member
    )
    await handle.wait_for_callback()
    await emu.wait_for(_edited_with(handle.token, "Generating"), timeout=JOB_TIMEOUT)
    assert job_states(tmp_path)[1] == "submitted"
    await _restart(proc)
    await _all_settled(proc, 1)
    assert_exactly_once(emu, fake, tmp_path, jobs=1)


async def test_kill_while_downloading(
    emu: DiscordEmulator, fake: FakeSegmind, proc: BotProcess, tmp_path: Path
) -> None:
    fake.inject("output", Fault(delay=60.0))  # holds the first download only
    handle = await emu.dispatch_slash_command("veo", {"prompt": "download me"}, user=emu.member)
    await handle.wait_for_callback()
    await wait_until(
        lambda: any(r.route == "output" for r in fake.requests), what="the download to start"
    )
    assert job_states(tmp_path)[1] == "completed"
    await _restart(proc)
    await _all_settled(proc, 1)
    assert_exactly_once(emu, fake, tmp_path, jobs=1)
    assert sum(r.route == "output" for r in fake.requests) == 2  # fetched again, not resubmitted


@pytest.mark.parametrize("landed", [True, False], ids=["upload-landed", "upload-lost"])
async def test_kill_while_uploading(
    emu: DiscordEmulator, fake: FakeSegmind, proc: BotProcess, tmp_path: Path, landed: bool
) -> None:
    """The video is on the wire when the bot dies. Landed: Discord applied it, the bot never saw
    the answer — the restart must find it and not upload again. Lost: it must upload again."""
    hold = emu.hold_requests(WEBHOOK_EDIT, when=lambda r: bool(r.files))
    handle = await emu.dispatch_slash_command("veo", {"prompt": "upload me"}, user=emu.member)
    await handle.wait_for_callback()
    await hold.arrived(timeout=JOB_TIMEOUT)
    assert job_states(tmp_path)[1] == "delivering"
    await proc.kill()
    if landed:
        hold.release()
        await emu.wait_for(lambda r: r.status == 200 and bool(r.files))
    else:
        hold.drop()
    await proc.start()
    await _all_settled(proc, 1)
    assert_exactly_once(emu, fake, tmp_path, jobs=1)
    if landed:
        assert "already delivered before the restart" in "\n".join(proc.lines)


# ------------------------------------------------------------ the crash windows with no redo


async def test_kill_while_the_submit_is_on_the_wire_is_found_not_resubmitted(
    emu: DiscordEmulator, fake: FakeSegmind, proc: BotProcess, tmp_path: Path
) -> None:
    fake.inject("submit", Fault(delay=60.0))  # Segmind creates (and bills) the job, answers late
    handle = await emu.dispatch_slash_command("veo", {"prompt": "in flight"}, user=emu.member)
    await handle.wait_for_callback()
    await wait_until(lambda: len(fake.submits) == 1, what="the submit to reach Segmind")
    assert job_states(tmp_path)[1] == "submitting"
    await _restart(proc)
    # The next start looks the request up in Segmind's history instead of writing it off.
    await emu.wait_for(_edited_with(handle.token, "looking it up"), timeout=JOB_TIMEOUT)
    await _all_settled(proc, 1)
    assert_exactly_once(emu, fake, tmp_path, jobs=1)
    assert sum(r.route == "submit" for r in fake.requests) == 1


# -------------------------------------------------------------- delivery after the token died


async def test_after_fifteen_minutes_the_video_goes_by_channel_edit(
    emu: DiscordEmulator, fake: FakeSegmind, proc: BotProcess, tmp_path: Path
) -> None:
    handle = await emu.dispatch_slash_command(
        "veo", {"prompt": "a long wait [fake:slow=2]"}, user=emu.member
    )
    await handle.wait_for_callback()
    await emu.wait_for(_edited_with(handle.token, "Generating"), timeout=JOB_TIMEOUT)
    emu.advance(15 * 60 + 5)  # Discord's clock: the interaction token is dead (401/50027)
    await _all_settled(proc, 1)
    assert emu.requests(WEBHOOK_EDIT, status=401)
    edit = next(r for r in video_uploads(emu, 1))
    assert edit.route == CHANNEL_EDIT  # type: ignore[attr-defined]
    assert edit.auth == "Bot"  # type: ignore[attr-defined]
    assert edit.params["message_id"] == str(handle.original_message_id)  # type: ignore[attr-defined]
    assert_exactly_once(emu, fake, tmp_path, jobs=1)


async def test_deleted_placeholder_gets_a_new_message_in_the_channel(
    emu: DiscordEmulator, fake: FakeSegmind, proc: BotProcess, tmp_path: Path
) -> None:
    handle = await emu.dispatch_slash_command(
        "veo", {"prompt": "gone [fake:slow=1]"}, user=emu.member
    )
    await handle.wait_for_callback()
    await emu.wait_for(_edited_with(handle.token, "Generating"), timeout=JOB_TIMEOUT)
    assert handle.original_message_id is not None
    await emu.delete_message(emu.channel.id, handle.original_message_id)
    await _all_settled(proc, 1)
    post = next(r for r in video_uploads(emu, 1))
    assert post.route == CHANNEL_POST  # type: ignore[attr-defined]
    assert post.json["nonce"] == "veo-1"  # type: ignore[attr-defined]
    assert f"<@{emu.member.id}>" in post.json["content"]  # type: ignore[attr-defined]
    assert_exactly_once(emu, fake, tmp_path, jobs=1)


async def test_lost_channel_access_sends_the_video_by_dm(
    emu: DiscordEmulator, fake: FakeSegmind, proc: BotProcess, tmp_path: Path
) -> None:
    handle = await emu.dispatch_slash_command(
        "veo", {"prompt": "private [fake:slow=1]"}, user=emu.member
    )
    await handle.wait_for_callback()
    await emu.wait_for(_edited_with(handle.token, "Generating"), timeout=JOB_TIMEOUT)
    emu.advance(15 * 60 + 5)  # token dead, and then the bot loses the channel
    emu.deny_channel(emu.channel.id, code=50001)
    await _all_settled(proc, 1)
    (dm_post,) = video_uploads(emu, 1)
    dm = emu.dm_channel(emu.member)
    assert dm_post.params["channel_id"] == str(dm.id)  # type: ignore[attr-defined]
    assert (job_states(tmp_path)[1], ledger(tmp_path)[1]) == ("delivered", "charged")


async def test_restart_after_a_channel_post_landed_does_not_post_again(
    emu: DiscordEmulator, fake: FakeSegmind, proc: BotProcess, tmp_path: Path
) -> None:
    """The new-message route, killed after Discord created the message: the restart finds it
    (write-ahead route + channel history), it does not rely on the nonce window alone."""
    hold = emu.hold_requests(CHANNEL_POST, when=lambda r: bool(r.files))
    handle = await emu.dispatch_slash_command(
        "veo", {"prompt": "posted [fake:slow=1]"}, user=emu.member
    )
    await handle.wait_for_callback()
    await emu.wait_for(_edited_with(handle.token, "Generating"), timeout=JOB_TIMEOUT)
    assert handle.original_message_id is not None
    await emu.delete_message(emu.channel.id, handle.original_message_id)
    await hold.arrived(timeout=JOB_TIMEOUT)
    await proc.kill()
    hold.release()
    await emu.wait_for(lambda r: r.route == CHANNEL_POST and r.status == 200)
    emu.advance(600)  # past Discord's nonce window: only the bot's own check can save it
    await proc.start()
    await _all_settled(proc, 1)
    assert_exactly_once(emu, fake, tmp_path, jobs=1)


async def test_emulator_deduplicates_a_post_by_nonce() -> None:
    """The emulator models Discord's nonce + enforce_nonce dedupe that the bot relies on."""
    import aiohttp

    async with DiscordEmulator() as emu, aiohttp.ClientSession() as session:
        url = f"{emu.api_base}/channels/{emu.channel.id}/messages"
        headers = {"Authorization": f"Bot {emu.token}"}
        body = {"content": "hi", "nonce": "veo-7", "enforce_nonce": True}
        ids = []
        for _ in range(2):
            async with session.post(url, json=body, headers=headers) as response:
                ids.append((await response.json())["id"])
        assert ids[0] == ids[1]
        emu.advance(301)
        async with session.post(url, json=body, headers=headers) as response:
            assert (await response.json())["id"] != ids[0]
        async with session.post(url, json={**body, "nonce": "veo-8"}, headers=headers) as r:
            assert (await r.json())["id"] != ids[0]


# ------------------------------------------------------------------------- graceful shutdown


@pytest.mark.bot_env({"VEO_MAX_CONCURRENT_JOBS": "1"})
async def test_sigterm_stops_within_ten_seconds_and_the_next_start_finishes_the_jobs(
    emu: DiscordEmulator, fake: FakeSegmind, proc: BotProcess, tmp_path: Path
) -> None:
    first = await emu.dispatch_slash_command(
        "veo", {"prompt": "busy [fake:slow=3]"}, user=emu.member
    )
    await first.wait_for_callback()
    second = await emu.dispatch_slash_command("veo", {"prompt": "waiting"}, user=emu.moderator)
    await second.wait_for_callback()
    await emu.wait_for(_edited_with(first.token, "Generating"), timeout=JOB_TIMEOUT)
    started = time.monotonic()
    code = await proc.stop(signal.SIGTERM, timeout=30.0)
    took = time.monotonic() - started
    assert code == 0, proc.tail()
    assert took < 10.0, f"shutdown took {took:.1f} s"
    assert job_states(tmp_path) == {1: "submitted", 2: "queued"}
    await proc.start()
    await _all_settled(proc, 2)
    assert_exactly_once(emu, fake, tmp_path, jobs=2)
