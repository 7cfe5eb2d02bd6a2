"""Real bot processes sharing one database, each running its own gateway shards.

Until the runner lease is merged, every node also runs jobs: the store's compare-and-set
(`queued` → `submitting`) already lets only one of them take each job, so these tests assert
what holds whichever node runs it — one submit, one delivery, one charge — and check the
intake (which node answered, which synced, which stayed quiet) from each node's own log.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.segmind.fake import FakeSegmind
from bot.store import open_store
from harness.bot_process import SETTLED, BotProcess, wait_until
from harness.discord_emulator import DiscordEmulator, Guild
from harness.postgres import PostgresServer
from tests.e2e.helpers import final_for

# Two shards in two session-start buckets, and Discord's rule enforced: an IDENTIFY within
# 5 s of another in its bucket gets op 9, so a test that sees none proves the nodes spaced
# theirs through the database.
SHARDS = 2
SYNC = "PUT /applications/{application_id}/commands"
CALLBACK = "POST /interactions/{interaction_id}/{interaction_token}/callback"
QUIET_ACK = "answered by another gateway session (40060)"


@pytest.fixture
async def emu() -> AsyncIterator[DiscordEmulator]:
    async with DiscordEmulator(
        shard_count=SHARDS, max_concurrency=2, identify_interval=5.0
    ) as emulator:
        yield emulator


@pytest.fixture
def far_guild(emu: DiscordEmulator) -> Guild:
    """A guild on shard 1 with the plain member in it (made before any bot logs in)."""
    guild = emu.add_guild_on_shard("Shard One Guild", shard=1, owner=emu.owner)
    guild.add_member(emu.member)
    return guild


def node(
    emu: DiscordEmulator, fake: FakeSegmind, workdir: Path, shards: str, **env: str
) -> BotProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    return BotProcess(
        emu,
        fake,
        workdir,
        {"DISCORD_SHARD_COUNT": str(SHARDS), "DISCORD_SHARD_IDS": shards, **env},
    )


async def settled_anywhere(count: int, *nodes: BotProcess) -> None:
    """Until the nodes between them have recorded `count` finished jobs (whichever ran them)."""

    def finished() -> int:
        return sum(bool(re.search(SETTLED, line)) for n in nodes for line in n.lines)

    await wait_until(lambda: finished() >= count, what=f"{count} jobs recorded as finished")


def logged(fragment: str, *nodes: BotProcess) -> bool:
    return any(fragment in line for n in nodes for line in n.lines)


async def stop_all(emu: DiscordEmulator, *nodes: BotProcess) -> None:
    for process in nodes:
        code = await process.stop()
        assert code == 0, f"a node did not shut down cleanly ({code}):\n{process.tail()}"
    emu.assert_no_violations()


def quiet(process: BotProcess) -> None:
    """Nothing in the node's log a moderator would take for a fault."""
    loud = [line for line in process.lines if "Traceback" in line or "unhandled error" in line]
    assert not loud, "\n".join(loud)


async def test_two_nodes_split_the_shards_on_one_postgres(
    emu: DiscordEmulator,
    fake: FakeSegmind,
    far_guild: Guild,
    postgres_server: PostgresServer,
    tmp_path: Path,
) -> None:
    url = postgres_server.url(await postgres_server.create_database())
    zero = node(emu, fake, tmp_path / "zero", "0", VEO_DATABASE_URL=url)
    one = node(emu, fake, tmp_path / "one", "1", VEO_DATABASE_URL=url)
    try:
        await zero.start()
        await one.start()
        await emu.wait_for_shards([(0, SHARDS), (1, SHARDS)])
        await emu.wait_for_command("veo")
        assert len(emu.requests(SYNC)) == 1  # only the node with shard 0 synced
        await one.wait_for_log("not syncing commands")

        handle = await emu.dispatch_slash_command(
            "veo", {"prompt": "a lighthouse in a storm", "duration": 4}, guild_id=far_guild.id
        )
        final = await final_for(emu, handle.token, timeout=40)
        assert final.files, "the video was attached"
        # The node on shard 1 took it in; the other never saw it.
        await one.wait_for_log(f"queued for user {emu.member.id} in guild {far_guild.id}")
        assert not any(str(far_guild.id) in line for line in zero.lines if "queued" in line)
        await settled_anywhere(1, zero, one)
        assert len(fake.submits) == 1
        async with await open_store(url) as store:
            jobs = await store.recent_jobs(far_guild.id)
        assert [(j.state, j.ledger_status, j.event_id) for j in jobs] == [
            ("delivered", "charged", handle.id)
        ]
        assert emu.identify_refusals == 0
        quiet(zero)
        quiet(one)
    finally:
        await stop_all(emu, zero, one)


async def test_the_same_events_on_two_sessions_of_a_shard_make_one_job_each(
    emu: DiscordEmulator, fake: FakeSegmind, far_guild: Guild, tmp_path: Path
) -> None:
    """A deploy's overlap on SQLite: the old node runs every shard, the new one starts on
    shard 1 beside it. Both receive the shard's events; each /veo and each @mention still
    makes one job, one submit and one charge, and the node that lost the race stays quiet."""
    shared = {"VEO_DB_PATH": str(tmp_path / "shared.sqlite3")}
    old = node(emu, fake, tmp_path / "old", "0-1", **shared)
    new = node(emu, fake, tmp_path / "new", "1", **shared)
    try:
        await old.start()
        await new.start()  # its shard 1 IDENTIFY waits out the old one's slot (5 s)
        await emu.wait_for_shards([(0, SHARDS), (1, SHARDS), (1, SHARDS)])
        assert emu.identify_refusals == 0, "the nodes spaced their IDENTIFYs"
        assert len(emu.requests(SYNC)) == 1

        handle = await emu.dispatch_slash_command(
            "veo", {"prompt": "a paper boat on a river", "duration": 4}, guild_id=far_guild.id
        )
        final = await final_for(emu, handle.token, timeout=40)
        assert final.files
        answers = sorted(
            (r.status, (r.response or {}).get("code"))
            for r in emu.requests(CALLBACK)
            if r.params.get("interaction_token") == handle.token
        )
        assert answers == [(200, None), (400, 40060)]
        await wait_until(lambda: logged(QUIET_ACK, old, new), what="the loser's info line")

        # A mention reaches both too: one placeholder (Discord hands the second node its own
        # reply back by nonce), one job, the twin leaves it to the first.
        channel = next(iter(far_guild.channels.values()))
        picture = emu.add_cdn_file("picture.png", encode_png())
        ask = await emu.post_user_message(
            channel.id,
            f"{emu.bot_user.mention} the boat drifts away",
            emu.owner,
            attachments=[picture],
        )
        twin_line = f"event {ask.id} already made job"
        await emu.wait_for(
            lambda r: (
                r.route == "PATCH /channels/{channel_id}/messages/{message_id}"
                and r.status == 200
                and "ready" in str((r.json or {}).get("content", "")).split("\n", 1)[0]
            ),
            timeout=40,
        )
        await wait_until(lambda: logged(twin_line, old, new), what="the twin to stand down")
        replies = [
            m
            for m in emu.channel_messages(channel.id)
            if m.author.id == emu.bot_user.id
            and str((m.message_reference or {}).get("message_id")) == str(ask.id)
        ]
        assert len(replies) == 1, "one placeholder, edited into the video"
        assert replies[0].attachments, "the placeholder carries the video"
        await settled_anywhere(2, old, new)

        async with await open_store(tmp_path / "shared.sqlite3") as store:
            jobs = await store.recent_jobs(far_guild.id)
        assert sorted((j.event_id, j.state, j.ledger_status) for j in jobs) == sorted(
            [(handle.id, "delivered", "charged"), (ask.id, "delivered", "charged")]
        )
        assert len(fake.submits) == 2
        quiet(old)
        quiet(new)
    finally:
        await stop_all(emu, old, new)


def encode_png() -> bytes:
    from tests.imaging import encode_image

    return encode_image("png", 320, 240)
