"""The PostgreSQL backend's own behaviour on a real server (the shared contract is in
`test_store.py`): migrations recorded in `schema_migrations` and safe when nodes start at
once, failing closed on an unreachable server or a peer that holds a lock, the limit held
across two pools."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import pytest

from bot.params import VeoParams
from bot.quota import LimitDefaults
from bot.store import Reserved, ReserveRequest, StoreError, StoreUnavailable, open_store
from bot.store.postgres import PostgresStore
from bot.store.postgres.ledger import user_lock
from bot.store.postgres.migrations import MIGRATIONS
from bot.store.sqlite.migrations import Migration
from harness.postgres import PostgresServer

NOW = 1_700_000_000.0


def request(user_id: int = 1, guild_id: int = 100) -> ReserveRequest:
    return ReserveRequest(
        guild_id=guild_id,
        channel_id=200,
        user_id=user_id,
        role_ids=(),
        params=VeoParams(prompt="a heron at dawn", duration=8),
        now=NOW,
    )


@pytest.fixture
async def empty_url(postgres_server: PostgresServer) -> str:
    """A new database with no schema at all."""
    return postgres_server.url(await postgres_server.create_database())


async def applied_versions(url: str) -> list[int]:
    conn = await asyncpg.connect(url)
    try:
        return [r[0] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")]
    finally:
        await conn.close()


async def test_nodes_starting_at_once_migrate_the_database_once(empty_url: str) -> None:
    stores = await asyncio.gather(*(open_store(empty_url) for _ in range(4)))
    try:
        # Every migration of this backend, once each (numbering may have gaps).
        assert await applied_versions(empty_url) == [m.version for m in MIGRATIONS]
        outcome = await stores[0].reserve(request(), LimitDefaults())
        assert isinstance(outcome, Reserved)
        assert (await stores[3].get_job(outcome.job_id)) is not None  # one schema, shared
    finally:
        for store in stores:
            await store.close()


async def test_reopening_applies_nothing_twice(empty_url: str) -> None:
    async with await open_store(empty_url) as store:
        job_id = (await store.reserve(request(), LimitDefaults())).job_id  # type: ignore[union-attr]
    async with await open_store(empty_url) as store:
        job = await store.get_job(job_id)
        assert job is not None and job.state == "queued"
    assert await applied_versions(empty_url) == [m.version for m in MIGRATIONS]


async def test_a_failed_migration_rolls_back_entirely(empty_url: str) -> None:
    broken = (
        Migration(1, "half a schema", ("CREATE TABLE half (id BIGINT)", "SELECT no_such_fn()")),
    )
    with pytest.raises(StoreError):
        await PostgresStore.open(empty_url, migrations=broken)
    conn = await asyncpg.connect(empty_url)
    try:
        assert await conn.fetchval("SELECT to_regclass('half')") is None
        assert await conn.fetchval("SELECT to_regclass('schema_migrations')") is None
    finally:
        await conn.close()
    async with await open_store(empty_url):  # the real migrations still apply cleanly
        pass


async def test_refuses_a_database_from_a_newer_bot(empty_url: str) -> None:
    async with await open_store(empty_url):
        pass
    conn = await asyncpg.connect(empty_url)
    try:
        await conn.execute("INSERT INTO schema_migrations (version, description) VALUES (99, 'x')")
    finally:
        await conn.close()
    with pytest.raises(StoreError, match="newer") as raised:
        await open_store(empty_url)
    assert not isinstance(raised.value, StoreUnavailable)  # not "try later": upgrade the bot


async def test_an_unreachable_server_fails_closed_without_the_password() -> None:
    url = "postgresql://veo:s3cret-Pa55word@127.0.0.1:1/veo"  # nothing listens on port 1
    with pytest.raises(StoreUnavailable) as raised:
        await open_store(url)
    assert "s3cret-Pa55word" not in str(raised.value)
    assert "s3cret-Pa55word" not in repr(raised.value.__cause__)


async def test_reserve_fails_closed_while_a_peer_holds_the_users_lock(
    postgres_server: PostgresServer,
) -> None:
    """Another node stuck mid-reservation for this user: ours gives up after the command
    timeout with `StoreUnavailable` (the bot refuses), writes nothing, and works once freed."""
    url = await postgres_server.migrated_database()
    async with await PostgresStore.open(url, command_timeout=0.3) as store:
        peer = await asyncpg.connect(url)
        try:
            async with peer.transaction():
                await peer.execute("SELECT pg_advisory_xact_lock($1)", user_lock(1))
                with pytest.raises(StoreUnavailable):
                    await store.reserve(request(user_id=1), LimitDefaults())
                # Another user is not held up by that lock.
                assert isinstance(
                    await store.reserve(request(user_id=2), LimitDefaults()), Reserved
                )
        finally:
            await peer.close()
        assert [j.user_id for j in await store.nonterminal_jobs()] == [2]
        assert isinstance(await store.reserve(request(user_id=1), LimitDefaults()), Reserved)


@pytest.mark.parametrize(
    ("cap", "guild_of"),
    [
        (LimitDefaults(guild_daily_limit=13), lambda user: 7),
        (LimitDefaults(global_daily_limit=13), lambda user: user % 5),  # across guilds
    ],
    ids=["guild", "global"],
)
async def test_a_day_cap_holds_across_two_pools(
    postgres_server: PostgresServer, cap: LimitDefaults, guild_of: Callable[[int], int]
) -> None:
    """200 different users race a cap of 13 over two pools (20 connections). 13 on purpose:
    a cap equal to the number of connections passes by luck even without the scope's lock
    (every connection reads the count before any commits, and exactly that many pass)."""
    url = await postgres_server.migrated_database()
    first, second = await PostgresStore.open(url), await PostgresStore.open(url)
    try:
        outcomes = await asyncio.gather(
            *(
                (first, second)[u % 2].reserve(request(user_id=u, guild_id=guild_of(u)), cap)
                for u in range(200)
            )
        )
        assert sum(isinstance(o, Reserved) for o in outcomes) == 13
        seqs = [j.queue_seq for j in await first.nonterminal_jobs()]
        assert len(seqs) == 13 and seqs == sorted(set(seqs))
    finally:
        await first.close()
        await second.close()


async def test_a_closed_store_is_unavailable(postgres_server: PostgresServer) -> None:
    store = await open_store(await postgres_server.migrated_database())
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.reserve(request(), LimitDefaults())
    with pytest.raises(StoreUnavailable):
        await store.get_job(1)


async def test_migration_4_starts_the_owners_ledger_from_what_is_known(empty_url: str) -> None:
    """Jobs from before the spend ledger: a reported cost is the bill, a job never sent bills
    nothing, anything else (a lost submit answer, no cost recorded) stays held at its estimate."""
    before = await PostgresStore.open(empty_url, migrations=MIGRATIONS[:2])
    await before.close()
    conn = await asyncpg.connect(empty_url)
    try:
        for job_id, state, request_id, cost in (
            (1, "delivered", "req-1", 0.6),
            (2, "cancelled", None, None),
            (3, "unknown", None, None),
            (4, "failed", "req-4", None),
        ):
            await conn.execute(
                "INSERT INTO jobs (id, guild_id, channel_id, user_id, prompt, params, state, "
                "request_id, cost, created_at, updated_at) "
                "VALUES ($1, 100, 200, 1, 'old', '{}', $2, $3, $4, $5, $5)",
                job_id,
                state,
                request_id,
                cost,
                NOW,
            )
            await conn.execute(
                "INSERT INTO quota_ledger (job_id, guild_id, user_id, status, amount, "
                "reserved_at) VALUES ($1, 100, 1, 'released', 0.8, $2)",
                job_id,
                NOW,
            )
    finally:
        await conn.close()
    async with await open_store(empty_url) as store:
        [day] = await store.spend_by_day(100, 0.0)
        assert (day.billed, day.billed_jobs) == (0.6, 1)
        assert (day.held, day.held_jobs) == (pytest.approx(1.6), 2)  # jobs 3 and 4
        # A history figure can still replace a backfilled one.
        assert await store.record_billed(1, 0.55, source="history")


async def test_renewals_never_wait_for_runner_writes_but_a_takeover_does(
    empty_url: str,
) -> None:
    """A runner write holds its epoch's fence row FOR SHARE until it commits: the runner's
    renewal must pass beside it (or a busy runner would lose its own lease), while a takeover
    waits for it, so no write of the old epoch can land after the new one began."""
    async with await open_store(empty_url) as store:
        lease = await store.acquire_lease("segmind-x", "node-a", 60)
        assert lease is not None
        writer = await asyncpg.connect(empty_url)
        try:
            in_flight = writer.transaction()
            await in_flight.start()
            await writer.execute(
                "SELECT epoch FROM runner_fence WHERE name = $1 FOR SHARE", "segmind-x"
            )
            # Renewed at once despite the open write (with a 0 s term: lapsed for the test).
            assert await asyncio.wait_for(store.renew_lease(lease, 0), 2) is not None
            takeover = asyncio.create_task(store.acquire_lease("segmind-x", "node-b", 60))
            await asyncio.sleep(0.3)  # long enough to have finished, were it not waiting
            assert not takeover.done()
            await in_flight.commit()
            taken = await asyncio.wait_for(takeover, 5)
            assert taken is not None and taken.epoch == lease.epoch + 1
        finally:
            await writer.close()
