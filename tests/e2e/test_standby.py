"""Two real bot processes on one database: one runner per Segmind key, a standby that takes over.

The node that takes the interaction in is not the runner: it reserves and shows the
placeholder, and the runner (the other process, holding the lease) submits, polls and
delivers. Until the gateway routes events by shard, the runner's gateway is a second emulator
(it identifies there and receives no events), while every REST call of both nodes goes to the
one Discord emulator the member uses: each interaction is taken in exactly once.

- PostgreSQL: SIGKILL the runner after Segmind accepted the job and before delivery; the
  standby takes over within the lease time and delivers the video exactly once, with exactly
  one submit, and the member is charged once.
- PostgreSQL and two shards, one per node (the deployment the README describes): the node on
  shard 1 takes the member's request in, the runner on shard 0 is SIGKILLed mid-job, and the
  node on shard 1 takes over and delivers it exactly once.
- SQLite: a second process on the same file runs no job at all (today's bug: it marked the
  first one's submits `unknown` and delivered twice).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.segmind.fake import FakeSegmind
from bot.store import open_store
from harness.bot_process import BotProcess, messages_with_video, video_uploads
from harness.discord_emulator import DiscordEmulator
from harness.postgres import PostgresServer
from tests.e2e.helpers import final_for

LEASE_SECONDS = 1.5  # the harness's VEO_RUNNER_LEASE_SECONDS
TAKEN = "runner lease segmind-"
ACCEPTED = re.compile(r"Segmind accepted it as request")


@pytest.fixture
async def quiet_gateway(emu: DiscordEmulator) -> AsyncIterator[DiscordEmulator]:
    """Where the runner's gateway session lives: it identifies fine (the same bot token) and
    gets no events."""
    async with DiscordEmulator(token=emu.token) as emulator:
        yield emulator


async def start_pair(
    emu: DiscordEmulator,
    quiet: DiscordEmulator,
    fake: FakeSegmind,
    tmp_path: Path,
    env: dict[str, str],
) -> tuple[BotProcess, BotProcess]:
    """The runner first (it takes the lease), then the standby that takes interactions in."""
    for name in ("runner", "standby"):
        (tmp_path / name).mkdir()
    runner = BotProcess(
        emu, fake, tmp_path / "runner", {**env, "DISCORD_GATEWAY_URL": quiet.gateway_url}
    )
    await runner.start()
    await runner.wait_for_log(TAKEN + r"\w+ taken", regex=True, timeout=20)
    standby = BotProcess(emu, fake, tmp_path / "standby", env)
    await standby.start()
    await emu.wait_for_command("veo")
    return runner, standby


async def stop_all(*processes: BotProcess, killed: BotProcess | None = None) -> None:
    for process in processes:
        code = await process.stop()
        if process is not killed:
            assert code == 0, f"a node did not shut down cleanly ({code}):\n{process.tail()}"


async def test_the_standby_takes_over_a_killed_runner_and_delivers_exactly_once(
    emu: DiscordEmulator,
    quiet_gateway: DiscordEmulator,
    fake: FakeSegmind,
    tmp_path: Path,
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.url(await postgres_server.create_database())
    runner, standby = await start_pair(
        emu, quiet_gateway, fake, tmp_path, {"VEO_DATABASE_URL": url}
    )
    try:
        handle = await emu.dispatch_slash_command(
            "veo", {"prompt": "a lighthouse in a storm [fake:slow=3]"}, user=emu.member
        )
        await handle.wait_for_callback()
        # The runner, not the node that took it in, sends it to Segmind.
        await runner.wait_for_log("Segmind accepted it as request", timeout=20)
        await runner.wait_for_log(r"job 1: request \S+ recorded", regex=True, timeout=10)
        assert len(fake.submits) == 1
        assert not [line for line in standby.lines if ACCEPTED.search(line)]

        await runner.kill()  # after submit, before delivery
        killed_at = time.monotonic()
        await standby.wait_for_log(TAKEN + r"\w+ taken", regex=True, timeout=10)
        took = time.monotonic() - killed_at
        # The dead term lapses within one lease; the standby looks every sixth of one.
        assert took <= LEASE_SECONDS * (1 + 1 / 6) + 1.0, f"takeover took {took:.2f} s"

        final = await final_for(emu, handle.token, timeout=30)
        assert final.files, "the video was attached"
        await standby.wait_for_log("job 1 delivered", timeout=10)
        assert len(video_uploads(emu, 1)) == 1
        assert len(messages_with_video(emu, 1)) == 1
        assert len(fake.submits) == 1  # resumed from its request id, never re-sent
        async with await open_store(url) as store:
            jobs = await store.recent_jobs(emu.guild.id)
        assert [(j.state, j.ledger_status) for j in jobs] == [("delivered", "charged")]
    finally:
        await stop_all(standby, runner, killed=runner)
    emu.assert_no_violations()


async def test_two_nodes_each_on_its_own_shard_lose_no_job_when_the_runner_dies(
    fake: FakeSegmind, tmp_path: Path, postgres_server: PostgresServer
) -> None:
    url = postgres_server.url(await postgres_server.create_database())
    env = {"VEO_DATABASE_URL": url, "DISCORD_SHARD_COUNT": "2"}
    async with DiscordEmulator(shard_count=2, max_concurrency=2) as emu:
        far = emu.add_guild_on_shard("Shard One Guild", shard=1, owner=emu.owner)
        far.add_member(emu.member)
        for name in ("zero", "one"):
            (tmp_path / name).mkdir()
        runner = BotProcess(emu, fake, tmp_path / "zero", {**env, "DISCORD_SHARD_IDS": "0"})
        standby = BotProcess(emu, fake, tmp_path / "one", {**env, "DISCORD_SHARD_IDS": "1"})
        try:
            await runner.start()
            await runner.wait_for_log(TAKEN + r"\w+ taken", regex=True, timeout=20)
            await standby.start()
            await emu.wait_for_shards([(0, 2), (1, 2)])
            await emu.wait_for_command("veo")

            handle = await emu.dispatch_slash_command(
                "veo", {"prompt": "a lighthouse in a storm [fake:slow=3]"}, guild_id=far.id
            )
            await handle.wait_for_callback()
            # Shard 1's node took it in; the runner on shard 0 never saw the event.
            await standby.wait_for_log(f"queued for user {emu.member.id} in guild {far.id}")
            await runner.wait_for_log(r"job 1: request \S+ recorded", regex=True, timeout=20)
            assert len(fake.submits) == 1

            await runner.kill()  # after submit, before delivery
            await standby.wait_for_log(TAKEN + r"\w+ taken", regex=True, timeout=10)
            final = await final_for(emu, handle.token, timeout=30)
            assert final.files, "the video was attached"
            await standby.wait_for_log("job 1 delivered", timeout=10)
            assert len(video_uploads(emu, 1)) == 1
            assert len(messages_with_video(emu, 1)) == 1
            assert len(fake.submits) == 1  # resumed from its request id, never re-sent
            async with await open_store(url) as store:
                jobs = await store.recent_jobs(far.id)
            assert [(j.state, j.ledger_status) for j in jobs] == [("delivered", "charged")]
        finally:
            await stop_all(standby, runner, killed=runner)
        emu.assert_no_violations()


async def test_a_second_process_on_one_sqlite_file_runs_no_job(
    emu: DiscordEmulator,
    quiet_gateway: DiscordEmulator,
    fake: FakeSegmind,
    tmp_path: Path,
) -> None:
    database = tmp_path / "shared.sqlite3"
    env = {"VEO_DB_PATH": str(database), "VEO_USER_CONCURRENCY": "3", "VEO_USER_LIMIT": "10"}
    runner, second = await start_pair(emu, quiet_gateway, fake, tmp_path, env)
    try:
        handles = []
        for prompt in ("a red fox", "a blue whale", "a green heron"):
            handle = await emu.dispatch_slash_command("veo", {"prompt": prompt}, user=emu.member)
            await handle.wait_for_callback()
            handles.append(handle)
        for handle in handles:
            final = await final_for(emu, handle.token, timeout=30)
            assert final.files, "the video was attached"
        await runner.settled(3, timeout=10)
        assert len(fake.submits) == 3
        for job_id in (1, 2, 3):
            assert len(video_uploads(emu, job_id)) == 1, f"job {job_id} delivered twice"
        # Only the lease holder ran them; the second process took them in and ran none.
        assert len([line for line in runner.lines if ACCEPTED.search(line)]) == 3
        assert not [line for line in second.lines if ACCEPTED.search(line)]
        async with await open_store(database) as store:
            jobs = await store.recent_jobs(emu.guild.id)
        assert sorted((j.state, j.ledger_status) for j in jobs) == [("delivered", "charged")] * 3
    finally:
        await stop_all(second, runner)
    emu.assert_no_violations()
