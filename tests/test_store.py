"""The store on a real SQLite file and a real PostgreSQL server: migrations, the job state
machine, the ledger, moderation, and contention (many truly concurrent reservations, on one
connection or pool and on two).

The tests that take the `store` (or `database_url`) fixture speak only the `Store` protocol:
they are the contract every backend passes (add its database to `BACKENDS`). The ones that
open a file by path are the SQLite backend's own: migrations, PRAGMAs, locking across
connections; `test_store_postgres.py` holds the PostgreSQL backend's own."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import aiosqlite
import pytest

from bot.database_url import sqlite_url
from bot.params import VeoParams
from bot.quota import GuildLimits, LimitDefaults, LimitOverride, Refusal
from bot.store import (
    IN_FLIGHT_STATES,
    JOB_FIELDS,
    LEGAL_TRANSITIONS,
    MIGRATIONS,
    SCHEMA_VERSION,
    TERMINAL_STATES,
    ApprovalHold,
    ApprovalSettings,
    BudgetState,
    Fenced,
    IllegalTransition,
    JobState,
    Migration,
    NewDiscrepancy,
    Reserved,
    ReserveRequest,
    SqliteStore,
    Store,
    StoreError,
    StoreUnavailable,
    apply_migrations,
    open_store,
)
from harness.clocks import ManualClock
from harness.postgres import PostgresServer

NOW = 1_700_000_000.0
HOUR = 3600.0
DAY = 24 * HOUR
GUILD = 100
CHANNEL = 200
DEFAULTS = LimitDefaults()  # 3 per 24 h, one at a time


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


async def sqlite_database(request: pytest.FixtureRequest) -> str:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    return sqlite_url(tmp_path / "data" / "veo.sqlite3")


async def postgres_database(request: pytest.FixtureRequest) -> str:
    # Asked for here, not in a signature: a SQLite-only run never starts (or skips on) it.
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return await server.migrated_database()


# How each backend makes a new empty database for one test, named by the URL the bot's
# VEO_DATABASE_URL would hold; stores are opened on it with `open_store`, as the bot does.
BACKENDS: dict[str, Callable[[pytest.FixtureRequest], Awaitable[str]]] = {
    "sqlite": sqlite_database,
    "postgres": postgres_database,
}


@pytest.fixture(params=sorted(BACKENDS))
async def database_url(request: pytest.FixtureRequest) -> str:
    return await BACKENDS[request.param](request)


@pytest.fixture
async def store(database_url: str, clock: ManualClock) -> AsyncIterator[Store]:
    opened = await open_store(database_url, clock=clock)
    try:
        yield opened
    finally:
        await opened.close()


def request(
    user_id: int = 1,
    now: float = NOW,
    *,
    guild_id: int = GUILD,
    role_ids: tuple[int, ...] = (),
    prompt: str = "a red fox in the snow",
    **extra: object,
) -> ReserveRequest:
    return ReserveRequest(
        guild_id=guild_id,
        channel_id=CHANNEL,
        user_id=user_id,
        role_ids=role_ids,
        params=VeoParams(prompt=prompt, duration=8),
        now=now,
        **extra,  # type: ignore[arg-type]
    )


async def reserved(store: Store, req: ReserveRequest, defaults: LimitDefaults = DEFAULTS) -> int:
    outcome = await store.reserve(req, defaults)
    assert isinstance(outcome, Reserved), outcome
    return outcome.job_id


def schema_version(path: Path) -> int:
    """The file's `PRAGMA user_version`, read beside the store as another process would."""
    with sqlite3.connect(path) as raw:
        return int(raw.execute("PRAGMA user_version").fetchone()[0])


async def queue_position(store: Store, job_id: int) -> int | None:
    """1 for the next job to start, as the queue announcements number it; None once it left."""
    queued = await store.queued_ids()
    return queued.index(job_id) + 1 if job_id in queued else None


async def finish(store: Store, job_id: int, cost: float | None = None) -> None:
    """Walk a job through the happy path and charge it."""
    assert await store.transition(job_id, "queued", "submitting")
    assert await store.transition(job_id, "submitting", "submitted", request_id=f"req-{job_id}")
    assert await store.transition(job_id, "submitted", "completed", cost=cost)
    assert await store.transition(job_id, "completed", "delivering")
    assert await store.transition(job_id, "delivering", "delivered", delivered_message_id=9)
    assert await store.charge(job_id, cost)


# ------------------------------------------------------------------------------------ schema


async def test_open_creates_parent_dir_and_latest_schema(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "veo.sqlite3"
    async with await open_store(path):  # what the bot calls at start-up
        assert schema_version(path) == SCHEMA_VERSION
    assert path.exists()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"jobs", "quota_ledger", "guild_settings", "blocks", "audit_log"} <= tables


async def test_open_store_refuses_a_url_it_cannot_serve() -> None:
    with pytest.raises(StoreError, match="postgresql://") as raised:
        await open_store("mysql://veo@db/veo")  # never guessed to be a file name
    assert not isinstance(raised.value, StoreUnavailable)  # a setting to fix, not "retry"


async def test_every_settable_job_field_is_a_column(tmp_path: Path) -> None:
    """`JOB_FIELDS` (from the `JobFields` type) names columns the migrations really create, so a
    typed field can never reach SQLite as an unknown column."""
    path = tmp_path / "veo.sqlite3"
    async with await SqliteStore.open(path):
        with sqlite3.connect(path) as raw:
            columns = {r[1] for r in raw.execute("PRAGMA table_info(jobs)")}
    assert JOB_FIELDS
    assert columns >= JOB_FIELDS


async def test_reopening_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "veo.sqlite3"
    async with await SqliteStore.open(path) as store:
        job_id = await reserved(store, request())
    async with await SqliteStore.open(path) as store:
        assert schema_version(path) == SCHEMA_VERSION
        job = await store.get_job(job_id)
        assert job is not None
        assert job.state == "queued"


async def test_migrates_a_version_1_database_with_data(tmp_path: Path, clock: ManualClock) -> None:
    path = tmp_path / "veo.sqlite3"
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        assert await apply_migrations(conn, MIGRATIONS[:1]) == 1
        # What an early bot left behind: one delivered and charged, one still queued.
        for job_id, state, created in ((1, "delivered", NOW - 2 * HOUR), (2, "queued", NOW - 60)):
            await conn.execute(
                "INSERT INTO jobs (id, guild_id, channel_id, user_id, prompt, params, state, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, GUILD, CHANNEL, 1, "old", '{"prompt": "old"}', state, created, created),
            )
        await conn.execute(
            "INSERT INTO quota_ledger (job_id, guild_id, user_id, status, amount, reserved_at, "
            "settled_at) VALUES (1, ?, 1, 'charged', 0.8, ?, ?), "
            "(2, ?, 1, 'reserved', 0.8, ?, NULL)",
            (GUILD, NOW - 2 * HOUR, NOW - HOUR, GUILD, NOW - 60),
        )

    async with await SqliteStore.open(path, clock=clock) as store:
        assert schema_version(path) == SCHEMA_VERSION
        old = await store.get_job(1)
        assert old is not None
        assert old.queue_seq == 1  # backfilled in arrival order
        assert old.charged_amount == 0.8  # the real-cost column is backfilled from the amount
        assert [j.id for j in await store.nonterminal_jobs()] == [2]
        assert await queue_position(store, 2) == 1
        # The old reservations still count: used 2 of 3, and job 2 is in flight.
        view = await store.quota_view(GUILD, 1, (), LimitDefaults(concurrency=5), NOW)
        assert view.usage.user_window.count == 2
        assert view.usage.in_flight_job_ids == (2,)
        # New jobs queue behind the old one.
        outcome = await store.reserve(request(user_id=7), DEFAULTS)
        assert isinstance(outcome, Reserved)
        assert outcome.queue_seq == 3
        assert await queue_position(store, outcome.job_id) == 2
        # The owner's ledger starts from the old reservations: no cost was recorded for
        # either, so both estimates stay held (they may have been billed), and the new one.
        days = await store.spend_by_day(None, 0.0)
        assert [(d.held, d.held_jobs, d.billed_jobs) for d in days] == [(pytest.approx(2.4), 3, 0)]


async def test_migration_4_starts_the_owners_ledger_from_what_is_known(tmp_path: Path) -> None:
    """Jobs from before the spend ledger: a reported cost is the bill, a job never sent bills
    nothing, anything else (a lost submit answer, no cost recorded) stays held at its estimate."""
    path = tmp_path / "veo.sqlite3"
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        assert await apply_migrations(conn, MIGRATIONS[:3]) == 3
        for job_id, state, request_id, cost in (
            (1, "delivered", "req-1", 0.6),
            (2, "cancelled", None, None),
            (3, "unknown", None, None),
            (4, "failed", "req-4", None),
        ):
            await conn.execute(
                "INSERT INTO jobs (id, guild_id, channel_id, user_id, prompt, params, state, "
                "request_id, cost, queue_seq, created_at, updated_at) "
                "VALUES (?, ?, ?, 1, 'old', '{}', ?, ?, ?, ?, ?, ?)",
                (job_id, GUILD, CHANNEL, state, request_id, cost, job_id, NOW, NOW),
            )
            await conn.execute(
                "INSERT INTO quota_ledger (job_id, guild_id, user_id, status, amount, "
                "reserved_at) VALUES (?, ?, 1, 'released', 0.8, ?)",
                (job_id, GUILD, NOW),
            )
    async with await SqliteStore.open(path) as store:
        [day] = await store.spend_by_day(GUILD, 0.0)
        assert (day.billed, day.billed_jobs) == (0.6, 1)
        assert (day.held, day.held_jobs) == (pytest.approx(1.6), 2)  # jobs 3 and 4
        assert await store.record_billed(1, 0.55, source="history")


async def test_failed_migration_rolls_back_entirely(tmp_path: Path) -> None:
    broken = (
        *MIGRATIONS[:1],
        Migration(2, "broken", ("ALTER TABLE jobs ADD COLUMN half_done TEXT", "NOT SQL AT ALL")),
    )
    path = tmp_path / "veo.sqlite3"
    with pytest.raises(StoreError, match="syntax error"):
        await SqliteStore.open(path, migrations=broken)
    assert schema_version(path) == 1
    with sqlite3.connect(path) as raw:
        columns = {r[1] for r in raw.execute("PRAGMA table_info(jobs)")}
    assert "half_done" not in columns
    async with await SqliteStore.open(path):  # the real migrations still apply cleanly
        assert schema_version(path) == SCHEMA_VERSION


async def test_refuses_a_database_from_a_newer_bot(tmp_path: Path) -> None:
    path = tmp_path / "veo.sqlite3"
    with sqlite3.connect(path) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer"):
        await SqliteStore.open(path)


def test_importing_the_store_loads_no_discord_and_no_http() -> None:
    """The store knows nothing of Discord or HTTP: a fresh interpreter that imports it (and its
    SQLite backend) has loaded neither library, so a second backend or a tool can use it bare."""
    probe = (
        "import sys, bot.store\n"
        "assert 'bot.store.sqlite' in sys.modules\n"
        "print(' '.join(sorted(m for m in sys.modules if m.partition('.')[0] in "
        "{'discord', 'aiohttp'})))"
    )
    loaded = subprocess.run(  # noqa: S603  # our own interpreter and code
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert loaded.stdout.split() == []


# ----------------------------------------------------------------------------- state machine


async def test_happy_path_stamps_times_and_charges(store: Store, clock: ManualClock) -> None:
    job_id = await reserved(store, request())
    clock.now = NOW + 10
    assert await store.transition(job_id, "queued", "submitting")
    assert await store.transition(job_id, "submitting", "submitted", request_id="abc")
    clock.now = NOW + 70
    assert await store.transition(
        job_id, "submitted", "completed", cost=1.2, output_url="https://x"
    )
    assert await store.transition(job_id, "completed", "delivering")
    assert await store.transition(
        job_id, "delivering", "delivered", delivered_message_id=5, delivery_method="interaction"
    )
    assert await store.charge(job_id, 1.2)
    job = await store.get_job(job_id)
    assert job is not None
    assert job.request_id == "abc"
    assert (job.submitted_at, job.completed_at, job.delivered_at) == (NOW + 10, NOW + 70, NOW + 70)
    assert (job.state, job.ledger_status, job.charged_amount) == ("delivered", "charged", 1.2)
    assert job.output_url == "https://x"
    assert job.params["duration"] == 8
    assert await store.recent_durations() == [60.0]


async def test_cas_refuses_a_second_mover(store: Store) -> None:
    job_id = await reserved(store, request())
    results = await asyncio.gather(
        *(store.transition(job_id, "queued", "submitting") for _ in range(10))
    )
    winners = [r for r in results if r is not None]
    assert [j.state for j in winners] == ["submitting"]  # one submit, however many raced
    assert await store.transition(job_id, "queued", "cancelled") is None


async def test_transition_returns_the_row_it_wrote(store: Store, clock: ManualClock) -> None:
    job_id = await reserved(store, request())
    clock.now = NOW + 10
    assert await store.transition(job_id, "queued", "submitting")
    submitted = await store.transition(job_id, "submitting", "submitted", request_id="abc")
    assert submitted is not None
    assert (submitted.id, submitted.state, submitted.request_id) == (job_id, "submitted", "abc")
    assert (submitted.submitted_at, submitted.updated_at) == (NOW + 10, NOW + 10)
    assert submitted.params["duration"] == 8
    # The ledger columns come with it: the row is exactly what a fresh read gives.
    assert (submitted.ledger_status, submitted.charged_amount) == ("reserved", None)
    assert submitted == await store.get_job(job_id)
    assert await store.transition(job_id, "completed", "delivering") is None  # not there yet
    assert await store.transition(job_id, "submitting", "failed") is None  # already moved on
    assert await store.get_job(job_id) == submitted
    # Charged before it is marked delivered (as the lifecycle does): the row says so.
    assert await store.transition(job_id, "submitted", "completed", cost=0.5)
    assert await store.transition(job_id, "completed", "delivering")
    assert await store.charge(job_id, 0.5)
    delivered = await store.transition(job_id, "delivering", "delivered", delivered_message_id=9)
    assert delivered is not None
    assert (delivered.state, delivered.ledger_status, delivered.charged_amount) == (
        "delivered",
        "charged",
        0.5,
    )


async def test_illegal_transitions_raise(store: Store) -> None:
    job_id = await reserved(store, request())
    with pytest.raises(IllegalTransition):
        await store.transition(job_id, "delivered", "queued")
    with pytest.raises(IllegalTransition):
        await store.transition(job_id, "queued", "delivered")  # skipping the write-ahead marks
    with pytest.raises(IllegalTransition):
        await store.transition(job_id, "queued", "nonsense")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a job field"):
        await store.transition(job_id, "queued", "submitting", state="delivered")
    job = await store.get_job(job_id)
    assert job is not None
    assert job.state == "queued"


def test_no_transition_leaves_a_terminal_state() -> None:
    for state in TERMINAL_STATES:
        assert LEGAL_TRANSITIONS[state] == frozenset()


async def test_fail_from_anywhere_only_matches_legal_sources(store: Store) -> None:
    job_id = await reserved(store, request())
    assert await store.transition(job_id, "queued", "submitting")
    everywhere: tuple[JobState, ...] = (
        "queued",
        "submitting",
        "submitted",
        "completed",
        "delivering",
    )
    # `submitting -> expired` is not an edge, so the job is left alone...
    assert not await store.transition(job_id, everywhere, "expired")
    # ...while `failed` is reachable from every unfinished state.
    assert await store.transition(job_id, everywhere, "failed", error="boom")
    job = await store.get_job(job_id)
    assert job is not None
    assert (job.state, job.error) == ("failed", "boom")


async def test_same_state_is_a_guarded_field_update(store: Store) -> None:
    job_id = await reserved(store, request())
    assert await store.transition(job_id, "queued", "queued", placeholder_message_id=77)
    job = await store.get_job(job_id)
    assert job is not None
    assert job.placeholder_message_id == 77


async def test_nonterminal_jobs_and_in_flight_count(store: Store) -> None:
    ids = [await reserved(store, request(user_id=u)) for u in range(1, 6)]
    assert await store.transition(ids[0], "queued", "submitting")
    assert await store.transition(ids[1], "queued", "submitting")
    assert await store.transition(ids[1], "submitting", "submitted", request_id="r1")
    assert await store.transition(ids[2], "queued", "cancelled")
    unfinished = await store.nonterminal_jobs()
    assert [j.id for j in unfinished] == [ids[0], ids[1], ids[3], ids[4]]
    assert [j.id for j in unfinished if j.state in IN_FLIGHT_STATES] == [ids[0], ids[1]]
    assert await store.queued_ids() == [ids[3], ids[4]]


async def test_queue_is_first_come_first_served_across_users(store: Store) -> None:
    ids = [await reserved(store, request(user_id=u, now=NOW + u)) for u in (5, 3, 9)]
    assert [await queue_position(store, i) for i in ids] == [1, 2, 3]
    first = await store.next_queued()
    assert first is not None
    assert first.id == ids[0]
    assert await store.transition(ids[0], "queued", "submitting")
    assert await queue_position(store, ids[0]) is None
    assert [await queue_position(store, i) for i in ids[1:]] == [1, 2]
    # A job that left the queue never re-enters it: its POST may have been billed.
    with pytest.raises(IllegalTransition):
        await store.transition(ids[0], "submitting", "queued")
    assert await store.queued_ids() == ids[1:]


# ------------------------------------------------------------------------------------- quota


async def test_window_counts_reserved_and_charged_but_not_released(
    store: Store, clock: ManualClock
) -> None:
    limits = LimitDefaults(concurrency=10)
    first = await reserved(store, request(now=NOW), limits)
    await finish(store, first, cost=0.9)
    second = await reserved(store, request(now=NOW + 1), limits)
    third = await reserved(store, request(now=NOW + 2), limits)
    refusal = await store.reserve(request(now=NOW + 3), limits)
    assert isinstance(refusal, Refusal)
    assert (refusal.kind, refusal.used, refusal.limit) == ("user_window", 3, 3)
    assert refusal.next_free_at == NOW + DAY
    # Segmind failed the second one: refunded, so a slot opens at once.
    assert await store.release(second, "failed", limits, now=NOW + 4) == "released"
    assert await store.release(second, "failed", limits, now=NOW + 5) == "already_settled"
    assert not await store.charge(second)  # settled stays settled
    assert isinstance(await store.reserve(request(now=NOW + 6), limits), Reserved)
    # And the window slides: a day after the first, another fits.
    assert isinstance(await store.reserve(request(now=NOW + 7), limits), Refusal)
    assert isinstance(await store.reserve(request(now=NOW + DAY + 1), limits), Reserved)
    assert third


async def test_concurrency_refusal_names_the_job_in_flight(store: Store) -> None:
    job_id = await reserved(store, request())
    refusal = await store.reserve(request(now=NOW + 1), DEFAULTS)
    assert refusal == Refusal(kind="concurrency", used=1, limit=1, in_flight_job_id=job_id)
    await finish(store, job_id)
    assert isinstance(await store.reserve(request(now=NOW + 2), DEFAULTS), Reserved)


async def test_blocked_prompt_refunds_are_capped(store: Store) -> None:
    limits = LimitDefaults(user_limit=100, concurrency=100, blocked_prompt_cap=2)
    outcomes = []
    for i in range(4):
        job_id = await reserved(store, request(now=NOW + i), limits)
        assert await store.transition(job_id, "queued", "submitting")
        assert await store.transition(job_id, "submitting", "submitted", request_id=f"b{i}")
        assert await store.transition(job_id, "submitted", "failed", error="blocked")
        outcomes.append(await store.release(job_id, "content_blocked", limits, now=NOW + i))
    assert outcomes == ["released", "released", "charged", "charged"]
    view = await store.quota_view(GUILD, 1, (), limits, NOW + 10)
    assert view.usage.user_window.count == 2  # the two over the cap count against the user
    # A day later the refunds are available again.
    job_id = await reserved(store, request(now=NOW + DAY + 5), limits)
    assert await store.release(job_id, "content_blocked", limits, now=NOW + DAY + 5) == "released"


async def test_guild_and_global_caps_and_spend(store: Store) -> None:
    limits = LimitDefaults(user_limit=10, concurrency=10, global_daily_limit=3)
    await reserved(store, request(user_id=1, guild_id=1), limits)
    await reserved(store, request(user_id=2, guild_id=2), limits)
    await reserved(store, request(user_id=3, guild_id=3), limits)
    refusal = await store.reserve(request(user_id=4, guild_id=4, now=NOW + 5), limits)
    assert isinstance(refusal, Refusal)
    assert (refusal.kind, refusal.used, refusal.next_free_at) == ("global_daily", 3, NOW + DAY)

    spend = LimitDefaults(user_limit=10, concurrency=10, daily_spend_cap=3.0, price_per_job=1.0)
    refusal = await store.reserve(request(user_id=5, guild_id=5), spend)
    assert isinstance(refusal, Refusal)
    # Three reservations held at the $0.80 estimate: 2.40 + 1.00 > 3.00.
    assert (refusal.kind, refusal.spent) == ("spend_cap", pytest.approx(2.4))
    # The real cost replaces the estimate once charged: 0.40 + 1.60 + 1.00 fits.
    first = (await store.recent_jobs(guild_id=1))[0].id
    await finish(store, first, cost=0.4)
    assert isinstance(
        await store.reserve(request(user_id=5, guild_id=5, now=NOW + 1), spend), Reserved
    )


async def test_guild_settings_override_and_guild_daily(store: Store) -> None:
    await store.set_guild_limits(GUILD, GuildLimits(daily_limit=2, concurrency=5), actor_id=99)
    await reserved(store, request(user_id=1))
    await reserved(store, request(user_id=2))
    refusal = await store.reserve(request(user_id=3), DEFAULTS)
    assert isinstance(refusal, Refusal)
    assert (refusal.kind, refusal.used, refusal.next_free_at) == ("guild_daily", 2, NOW + DAY)
    # Other guilds are unaffected.
    assert isinstance(
        await store.reserve(request(user_id=3, guild_id=GUILD + 1), DEFAULTS), Reserved
    )


async def test_role_user_overrides_and_exempt_roles_in_the_store(store: Store) -> None:
    await store.set_role_override(GUILD, 10, LimitOverride(user_limit=5), actor_id=99)
    await store.set_role_override(GUILD, 11, LimitOverride(user_limit=8), actor_id=99)
    await store.set_role_override(GUILD, 12, LimitOverride(concurrency=3), actor_id=99)
    limits = (await store.quota_view(GUILD, 1, (10, 11, 12), DEFAULTS)).limits
    assert (limits.user_limit, limits.concurrency, limits.source) == (8, 3, "role:11")
    await store.set_user_override(GUILD, 1, LimitOverride(user_limit=1), actor_id=99)
    assert (await store.quota_view(GUILD, 1, (10, 11), DEFAULTS)).limits.user_limit == 1
    assert await store.set_role_exempt(GUILD, 20, True, actor_id=99)
    assert not await store.set_role_exempt(GUILD, 20, True, actor_id=99)
    assert (await store.quota_view(GUILD, 2, (20,), DEFAULTS)).limits.exempt
    assert await store.exempt_roles(GUILD) == frozenset({20})
    assert await store.set_role_exempt(GUILD, 20, False, actor_id=99)
    assert not await store.set_role_exempt(GUILD, 20, False, actor_id=99)
    assert not (await store.quota_view(GUILD, 2, (20,), DEFAULTS)).limits.exempt
    assert await store.set_role_exempt(GUILD, 20, True, actor_id=99)
    assert set(await store.role_overrides(GUILD)) == {10, 11, 12}
    await store.set_role_override(GUILD, 10, None, actor_id=99)
    assert set(await store.role_overrides(GUILD)) == {11, 12}
    assert await store.user_overrides(GUILD) == {1: LimitOverride(user_limit=1)}


async def test_block_and_unblock(store: Store) -> None:
    await store.block_user(GUILD, 1, reason="spam", actor_id=99)
    refusal = await store.reserve(request(), DEFAULTS)
    assert refusal == Refusal(kind="blocked", reason="spam")
    view = await store.quota_view(GUILD, 1, (), DEFAULTS)
    assert view.usage.block is not None
    assert (view.usage.block.reason, view.usage.block.blocked_by) == ("spam", 99)
    assert (await store.quota_view(GUILD, 2, (), DEFAULTS)).usage.block is None  # only user 1
    assert isinstance(await store.reserve(request(guild_id=GUILD + 1), DEFAULTS), Reserved)
    assert await store.unblock_user(GUILD, 1, actor_id=99)
    assert not await store.unblock_user(GUILD, 1, actor_id=99)
    assert (await store.quota_view(GUILD, 1, (), DEFAULTS)).usage.block is None


async def test_reset_clears_the_users_window_but_keeps_history(store: Store) -> None:
    limits = LimitDefaults(user_limit=2, concurrency=10)
    await store.set_guild_limits(GUILD, GuildLimits(daily_limit=3), actor_id=99)
    for i in range(2):
        await finish(store, await reserved(store, request(now=NOW + i), limits))
    assert isinstance(await store.reserve(request(now=NOW + 5), limits), Refusal)
    await store.reset_user_window(GUILD, 1, actor_id=99, now=NOW + 10)
    assert isinstance(await store.reserve(request(now=NOW + 11), limits), Reserved)
    summary = await store.usage(GUILD, 1, days=1, now=NOW + 12)
    assert (summary.jobs, summary.delivered) == (3, 2)  # nothing was deleted
    # The guild cap still counts all three.
    refusal = await store.reserve(request(user_id=2, now=NOW + 13), limits)
    assert isinstance(refusal, Refusal)
    assert refusal.kind == "guild_daily"


async def test_every_moderator_change_is_audited(store: Store, clock: ManualClock) -> None:
    await store.set_guild_limits(GUILD, GuildLimits(user_limit=5), actor_id=99)
    await store.set_role_override(GUILD, 10, LimitOverride(user_limit=7), actor_id=98)
    await store.set_user_override(GUILD, 1, LimitOverride(concurrency=2), actor_id=99)
    await store.set_role_exempt(GUILD, 20, True, actor_id=99)
    await store.block_user(GUILD, 1, reason=None, actor_id=99)
    await store.unblock_user(GUILD, 1, actor_id=99)
    await store.reset_user_window(GUILD, 1, actor_id=99)
    await store.set_log_channel(GUILD, 555, actor_id=99)
    await store.record_audit(GUILD, 99, "job.cancel", {"job_id": 1})
    entries = await store.audit_entries(GUILD, limit=50)
    assert [e.action for e in reversed(entries)] == [
        "limits.set",
        "role_override.set",
        "user_override.set",
        "exempt_role.add",
        "block",
        "unblock",
        "window.reset",
        "log_channel.set",
        "job.cancel",
    ]
    assert entries[-1].detail == {
        "old": _empty_limits(),
        "new": {**_empty_limits(), "user_limit": 5},
    }
    assert entries[-2].actor_id == 98
    assert all(e.created_at == clock.now for e in entries)
    assert await store.audit_entries(GUILD + 1) == []
    assert await store.get_log_channel(GUILD) == 555
    assert await store.get_guild_limits(GUILD) == GuildLimits(
        user_limit=5
    )  # log channel kept apart


def _empty_limits() -> dict[str, object]:
    return {
        "user_limit": None,
        "window_hours": None,
        "concurrency": None,
        "daily_limit": None,
        "spend_cap": None,
        "monthly_budget": None,
    }


async def test_moderator_queries(store: Store) -> None:
    limits = LimitDefaults(user_limit=10, concurrency=10)
    a1 = await reserved(store, request(user_id=1, now=NOW), limits)
    await finish(store, a1, cost=1.0)
    a2 = await reserved(store, request(user_id=1, now=NOW + 1), limits)
    await store.transition(a2, "queued", "failed", error="x")
    await store.release(a2, "failed", limits)
    await reserved(store, request(user_id=2, now=NOW + 2), limits)
    old = await reserved(store, request(user_id=3, now=NOW - 3 * DAY), limits)

    summary = await store.usage(GUILD, days=1, now=NOW + 10)
    assert (summary.jobs, summary.delivered, summary.failed, summary.in_progress) == (3, 1, 1, 1)
    assert (summary.refunded, summary.cost) == (1, 1.0)
    assert (await store.usage(GUILD, 2, days=1, now=NOW + 10)).jobs == 1
    top = await store.top_users(GUILD, days=1, now=NOW + 10)
    assert [(u.user_id, u.jobs, u.delivered, u.cost) for u in top] == [
        (1, 2, 1, 1.0),
        (2, 1, 0, 0.0),
    ]
    recent = await store.recent_jobs(GUILD, limit=2)
    assert [j.user_id for j in recent] == [3, 2]  # newest ids first
    assert [j.id for j in await store.recent_jobs(GUILD, user_id=1)] == [a2, a1]
    exported = await store.export_jobs(GUILD, days=7, now=NOW + 10)
    assert [j.id for j in exported][-1] == old
    assert len(exported) == 4
    assert len(await store.export_jobs(GUILD, days=1, now=NOW + 10)) == 3


async def test_settle_terminal_is_the_crash_net(store: Store) -> None:
    limits = LimitDefaults(user_limit=10, concurrency=10)
    delivered = await reserved(store, request(now=NOW), limits)
    steps: tuple[tuple[JobState, JobState], ...] = (
        ("queued", "submitting"),
        ("submitting", "submitted"),
        ("submitted", "completed"),
        ("completed", "delivering"),
    )
    for src, dst in steps:
        assert await store.transition(delivered, src, dst)
    assert await store.transition(delivered, "delivering", "delivered", cost=1.1)
    unknown = await reserved(store, request(now=NOW + 1), limits)
    assert await store.transition(unknown, "queued", "submitting")
    assert await store.transition(unknown, "submitting", "unknown")
    # "Crash" before charge/release: both ledger rows are still reserved.
    assert await store.settle_terminal(limits) == 2
    job = await store.get_job(delivered)
    assert job is not None
    assert (job.ledger_status, job.charged_amount) == ("charged", 1.1)
    job = await store.get_job(unknown)
    assert job is not None
    assert (job.ledger_status, job.ledger_reason) == ("released", "unknown")
    assert await store.settle_terminal(limits) == 0


# ---------------------------------------------------------------------------- fail closed


async def test_reserve_fails_closed_when_the_database_is_locked(tmp_path: Path) -> None:
    path = tmp_path / "veo.sqlite3"
    async with await SqliteStore.open(path, busy_timeout=0.05) as store:
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")  # another process hogs the write lock
            with pytest.raises(StoreUnavailable):
                await store.reserve(request(), DEFAULTS)
            with pytest.raises(StoreUnavailable):  # a moderator's change fails closed too
                await store.set_guild_limits(GUILD, GuildLimits(user_limit=9), actor_id=99)
            holder.execute("ROLLBACK")
        finally:
            holder.close()
        assert isinstance(await store.reserve(request(), DEFAULTS), Reserved)
        assert await store.get_guild_limits(GUILD) == GuildLimits()
        assert await store.audit_entries(GUILD) == []


async def test_a_refused_setting_changes_nothing_and_audits_nothing(store: Store) -> None:
    with pytest.raises(StoreError):
        await store.set_guild_limits(GUILD, GuildLimits(user_limit=-1), actor_id=99)
    assert await store.get_guild_limits(GUILD) == GuildLimits()
    assert await store.audit_entries(GUILD) == []  # the audit row went with the change
    await store.set_guild_limits(GUILD, GuildLimits(user_limit=1), actor_id=99)
    assert await store.get_guild_limits(GUILD) == GuildLimits(user_limit=1)


async def test_a_refused_statement_is_a_store_error_and_writes_nothing(store: Store) -> None:
    """A bug the database catches (here two jobs claiming one Segmind request id) comes out as
    the store's own error, not the driver's, and is not mistaken for an unreachable database."""
    first = await reserved(store, request(user_id=1))
    second = await reserved(store, request(user_id=2))
    for job_id in (first, second):
        assert await store.transition(job_id, "queued", "submitting")
    assert await store.transition(first, "submitting", "submitted", request_id="same")
    with pytest.raises(StoreError) as raised:
        await store.transition(second, "submitting", "submitted", request_id="same")
    assert not isinstance(raised.value, (StoreUnavailable, sqlite3.Error))
    job = await store.get_job(second)
    assert job is not None
    assert (job.state, job.request_id) == ("submitting", None)
    # The store is still usable afterwards: the failed write was rolled back.
    assert await store.transition(second, "submitting", "unknown")


async def test_closed_store_is_unavailable(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "veo.sqlite3")
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.reserve(request(), DEFAULTS)
    with pytest.raises(StoreUnavailable):
        await store.get_job(1)


# ------------------------------------------------------------------------- owner's spend


def quoted(user_id: int = 1, quote: float = 1.0, **kw: object) -> ReserveRequest:
    return request(user_id, quote=quote, **kw)  # type: ignore[arg-type]


SPEND = LimitDefaults(user_limit=100, concurrency=100)


async def test_record_billed_replaces_the_hold_and_history_wins(store: Store) -> None:
    job_id = await reserved(store, quoted(quote=1.2), SPEND)
    [day] = await store.spend_by_day(GUILD, NOW - DAY)
    assert (day.billed, day.held, day.held_jobs, day.billed_jobs) == (0.0, 1.2, 1, 0)

    assert await store.record_billed(job_id, 0.8, source="metrics") is True
    assert await store.record_billed(job_id, 0.8, source="metrics") is False  # idempotent
    [day] = await store.spend_by_day(GUILD, NOW - DAY)
    assert (day.billed, day.held, day.quoted, day.billed_jobs) == (0.8, 0.0, 1.2, 1)

    # Segmind's own record overrides the result's metrics, and metrics never override it.
    assert await store.record_billed(job_id, 0.6, source="history") is True
    assert await store.record_billed(job_id, 0.9, source="metrics") is False
    assert await store.record_billed(job_id, 0.6, source="history") is False
    [day] = await store.spend_by_day(None, NOW - DAY)
    assert day.billed == pytest.approx(0.6)

    assert await store.record_billed(999_999, 0.5, source="history") is False  # no such job
    with pytest.raises(ValueError, match="billed amount"):
        await store.record_billed(job_id, -0.1, source="history")


async def test_a_charge_with_a_cost_is_also_the_owners_bill(store: Store) -> None:
    job_id = await reserved(store, quoted(quote=1.2), SPEND)
    await finish(store, job_id, cost=0.7)
    [day] = await store.spend_by_day(GUILD, NOW - DAY)
    assert (day.billed, day.held, day.billed_jobs) == (pytest.approx(0.7), 0.0, 1)
    # A charge without a cost leaves the quote held: nobody knows the bill yet.
    other = await reserved(store, quoted(user_id=2, quote=1.2), SPEND)
    await finish(store, other)
    [day] = await store.spend_by_day(GUILD, NOW - DAY)
    assert (day.held, day.held_jobs) == (pytest.approx(1.2), 1)


async def test_billed_undelivered_job_counts_for_the_owner_while_the_member_is_refunded(
    store: Store,
) -> None:
    limits = LimitDefaults(user_limit=5, concurrency=5, daily_spend_cap=2.0)
    lost = await reserved(store, quoted(user_id=1), limits)
    await reserved(store, quoted(user_id=2), limits)
    # Segmind made and billed it, Discord never took it: the member gets their quota back…
    assert await store.transition(lost, "queued", "failed", error="delivery refused")
    assert await store.release(lost, "delivery_failed", limits) == "released"
    view = await store.quota_view(GUILD, 1, (), limits)
    assert view.usage.user_window.count == 0
    # …but the owner still paid: the next job would pass the $2.00 cap.
    refusal = await store.reserve(quoted(user_id=3), limits)
    assert isinstance(refusal, Refusal)
    assert (refusal.kind, refusal.spent) == ("spend_cap", pytest.approx(2.0))
    # Segmind's record says it billed nothing after all: the hold goes, the cap frees.
    assert await store.record_billed(lost, 0.0, source="history")
    assert isinstance(await store.reserve(quoted(user_id=3), limits), Reserved)


async def test_a_spend_cap_refusal_says_when_enough_rolls_off(store: Store) -> None:
    limits = LimitDefaults(user_limit=100, concurrency=100, daily_spend_cap=2.0)
    for user_id, quote, at in ((1, 1.0, NOW - 5 * HOUR), (2, 0.6, NOW - 2 * HOUR), (3, 0.4, NOW)):
        await reserved(store, quoted(user_id, quote, now=at), limits)
    refusal = await store.reserve(quoted(4, 1.2, now=NOW), limits)
    assert isinstance(refusal, Refusal)
    # The $1.00 leaving at NOW - 5 h + 24 h is not enough for $1.20; the $0.60 after it is.
    assert (refusal.kind, refusal.next_free_at) == ("spend_cap", NOW - 2 * HOUR + DAY)
    view = await store.quota_view(GUILD, 4, (), limits, NOW, quote=1.0)  # what /veo-quota says
    assert isinstance(view.decision, Refusal)
    assert view.decision.next_free_at == NOW - 5 * HOUR + DAY
    # A server's own daily cap counts only its own spend.
    await store.set_guild_limits(7, GuildLimits(spend_cap=1.0), actor_id=99)
    await reserved(store, quoted(5, 0.8, now=NOW - HOUR, guild_id=7), SPEND)
    refusal = await store.reserve(quoted(6, 0.8, now=NOW, guild_id=7), SPEND)
    assert isinstance(refusal, Refusal)
    assert (refusal.kind, refusal.next_free_at) == ("guild_spend_cap", NOW - HOUR + DAY)


async def test_monthly_caps_count_the_calendar_month_utc(store: Store, clock: ManualClock) -> None:
    # NOW is 2023-11-14 22:13 UTC; the month renews on 2023-12-01 00:00 UTC.
    december = 1_701_388_800.0
    limits = LimitDefaults(user_limit=100, concurrency=100, monthly_spend_cap=2.0)
    await reserved(store, quoted(user_id=9, now=1_698_796_799.0), limits)  # 31 October: not ours
    await reserved(store, quoted(user_id=1, now=NOW - 10 * DAY), limits)  # 4 November
    await reserved(store, quoted(user_id=2, now=NOW), limits)
    refusal = await store.reserve(quoted(user_id=3, now=december - 1), limits)
    assert isinstance(refusal, Refusal)
    assert (refusal.kind, refusal.spent, refusal.next_free_at) == (
        "monthly_spend_cap",
        pytest.approx(2.0),
        december,
    )
    assert isinstance(await store.reserve(quoted(user_id=3, now=december), limits), Reserved)


async def test_guild_monthly_budget_never_above_the_owners_maximum(store: Store) -> None:
    await store.set_guild_limits(GUILD, GuildLimits(monthly_budget=3.0), actor_id=99)
    assert (await store.get_guild_limits(GUILD)).monthly_budget == 3.0
    capped = LimitDefaults(user_limit=100, concurrency=100, guild_monthly_budget_max=1.5)
    await reserved(store, quoted(user_id=1), capped)
    refusal = await store.reserve(quoted(user_id=2), capped)
    assert isinstance(refusal, Refusal)
    # The owner's maximum, not the moderator's 3.00, is the budget in force.
    assert (refusal.kind, refusal.limit) == ("guild_monthly_budget", 1.5)
    # Another guild has its own budget: the maximum applies to a guild that set none.
    assert isinstance(await store.reserve(quoted(user_id=3, guild_id=7), capped), Reserved)
    refusal = await store.reserve(quoted(user_id=4, guild_id=7), capped)
    assert isinstance(refusal, Refusal) and refusal.kind == "guild_monthly_budget"
    # Without a maximum the moderator's budget holds: 1 + 1 + 1 = 3.00 fits, a fourth not.
    free = LimitDefaults(user_limit=100, concurrency=100)
    assert isinstance(await store.reserve(quoted(user_id=2), free), Reserved)
    assert isinstance(await store.reserve(quoted(user_id=5), free), Reserved)
    refusal = await store.reserve(quoted(user_id=6), free)
    assert isinstance(refusal, Refusal)
    assert (refusal.kind, refusal.limit, refusal.spent) == ("guild_monthly_budget", 3.0, 3.0)


async def test_spend_by_day_groups_by_utc_day_and_guild(store: Store) -> None:
    midnight = 1_700_006_400.0  # 2023-11-15 00:00 UTC
    a = await reserved(store, quoted(user_id=1, quote=1.2, now=midnight - 1), SPEND)
    b = await reserved(store, quoted(user_id=2, quote=0.8, now=midnight), SPEND)
    await reserved(store, quoted(user_id=3, quote=0.4, now=midnight + 5, guild_id=7), SPEND)
    await store.record_billed(a, 1.1, source="history")
    await store.record_billed(b, 0.0, source="metrics")  # never sent: not a billed job
    days = await store.spend_by_day(None, midnight - DAY)
    assert [(d.day.isoformat(), d.billed, d.held, d.quoted, d.billed_jobs) for d in days] == [
        ("2023-11-14", pytest.approx(1.1), 0.0, pytest.approx(1.2), 1),
        ("2023-11-15", 0.0, pytest.approx(0.4), 0.0, 0),
    ]
    assert [d.held_jobs for d in await store.spend_by_day(GUILD, midnight - DAY)] == [0, 0]
    assert await store.spend_by_day(GUILD, midnight - DAY, until=midnight) == days[:1]
    assert await store.spend_by_day(7, midnight + 6) == []


async def test_observed_bills_feed_the_price_book(store: Store) -> None:
    a = await reserved(store, quoted(user_id=1), SPEND)
    b = await reserved(store, quoted(user_id=2), SPEND)
    await store.record_billed(a, 0.6, source="metrics")
    await store.record_billed(b, 0.0, source="metrics")  # a zero teaches no price
    [(params_json, billed)] = await store.observed_bills()
    assert (VeoParams.model_validate_json(params_json).duration, billed) == (8, 0.6)


# ------------------------------------------------------------------------------ contention


async def test_fifty_concurrent_reservations_for_one_user_pass_exactly_three(store: Store) -> None:
    limits = LimitDefaults(user_limit=3, concurrency=100)  # the count binds, not concurrency
    outcomes = await asyncio.gather(*(store.reserve(request(), limits) for _ in range(50)))
    assert sum(isinstance(o, Reserved) for o in outcomes) == 3
    assert {o.kind for o in outcomes if isinstance(o, Refusal)} == {"user_window"}


async def test_fifty_concurrent_quotes_never_pass_a_ten_dollar_cap(store: Store) -> None:
    """Quoted plus billed stays within the cap however the burst interleaves, and nothing is
    refused that would have fitted when it was decided."""
    limits = LimitDefaults(user_limit=100, concurrency=100, daily_spend_cap=10.0)
    first = await reserved(store, quoted(user_id=1000, quote=1.2), limits)
    await store.record_billed(first, 0.55, source="metrics")  # billed below its quote
    quotes = [(0.4, 0.8, 1.2)[u % 3] for u in range(50)]
    outcomes = await asyncio.gather(
        *(store.reserve(quoted(user_id=u, quote=q), limits) for u, q in enumerate(quotes))
    )
    held = sum(q for q, o in zip(quotes, outcomes, strict=True) if isinstance(o, Reserved))
    total = 0.55 + held
    assert total <= 10.0 + 1e-9
    refused = [q for q, o in zip(quotes, outcomes, strict=True) if isinstance(o, Refusal)]
    assert refused and all(q > 10.0 - total for q in refused)
    assert {o.kind for o in outcomes if isinstance(o, Refusal)} == {"spend_cap"}
    [day] = await store.spend_by_day(None, NOW - DAY)
    assert day.billed + day.held == pytest.approx(total)


async def test_double_click_queues_one_job(store: Store) -> None:
    outcomes = await asyncio.gather(*(store.reserve(request(), DEFAULTS) for _ in range(2)))
    assert sorted(type(o).__name__ for o in outcomes) == ["Refusal", "Reserved"]


async def test_two_hundred_users_against_a_guild_cap_of_twenty(store: Store) -> None:
    limits = LimitDefaults(guild_daily_limit=20)
    outcomes = await asyncio.gather(
        *(store.reserve(request(user_id=u), limits) for u in range(1, 201))
    )
    passed = [o for o in outcomes if isinstance(o, Reserved)]
    assert len(passed) == 20
    assert sorted(o.queue_seq for o in passed) == list(range(1, 21))  # no gaps, no duplicates


async def test_forty_reservations_over_two_stores_pass_exactly_three(database_url: str) -> None:
    """Two stores on one database — two pools or connections, as two bot processes or nodes
    would hold — racing one user's reservations: the limit holds across them exactly."""
    first = await open_store(database_url)
    second = await open_store(database_url)
    try:
        per_user = LimitDefaults(user_limit=3, concurrency=100)
        outcomes = await asyncio.gather(
            *(s.reserve(request(), per_user) for _ in range(20) for s in (first, second))
        )
        assert sum(isinstance(o, Reserved) for o in outcomes) == 3
        assert {o.kind for o in outcomes if isinstance(o, Refusal)} == {"user_window"}
        assert len(await second.nonterminal_jobs()) == 3  # no job written beside a refusal
    finally:
        await first.close()
        await second.close()


async def test_two_stores_on_one_file_still_hold_the_limit(tmp_path: Path) -> None:
    """Two connections (as two processes would have) racing: BEGIN IMMEDIATE serialises them."""
    path = tmp_path / "veo.sqlite3"
    first = await SqliteStore.open(path)
    second = await SqliteStore.open(path)
    try:
        per_user = LimitDefaults(user_limit=3, concurrency=100)
        outcomes = await asyncio.gather(
            *(s.reserve(request(), per_user) for _ in range(25) for s in (first, second))
        )
        assert sum(isinstance(o, Reserved) for o in outcomes) == 3

        guild_cap = LimitDefaults(guild_daily_limit=20)
        outcomes = await asyncio.gather(
            *(
                (first if u % 2 else second).reserve(request(user_id=u, guild_id=7), guild_cap)
                for u in range(1, 201)
            )
        )
        assert sum(isinstance(o, Reserved) for o in outcomes) == 20
        queued = await first.nonterminal_jobs()
        assert {j.state for j in queued} == {"queued"}
        seqs = [j.queue_seq for j in queued]
        assert seqs == sorted(set(seqs))
    finally:
        await first.close()
        await second.close()


# -- the runner lease, fencing and the Segmind budget (one runner per Segmind key) ----------

LEASE = "segmind-3f2a9c"  # a key's fingerprint, as the bot names it


async def test_runner_lease_has_one_holder_until_its_term_lapses(store: Store) -> None:
    first = await store.acquire_lease(LEASE, "node-a", 60)
    assert first is not None and first.owner == "node-a" and first.epoch == 1
    # Held: nobody else can take it, however often they try.
    assert await store.acquire_lease(LEASE, "node-b", 60) is None
    renewed = await store.renew_lease(first, 60)
    assert renewed is not None and renewed.epoch == 1
    assert renewed.expires_at >= first.expires_at
    # A term of 0 s has lapsed by the database's clock as soon as it is written.
    assert await store.renew_lease(first, 0) is not None
    taken = await store.acquire_lease(LEASE, "node-b", 60)
    assert taken is not None and taken.owner == "node-b" and taken.epoch == 2
    # The old holder learns it lost the lease on its next renewal.
    assert await store.renew_lease(first, 60) is None
    current = await store.current_lease(LEASE)
    assert current is not None and (current.owner, current.epoch) == ("node-b", 2)


async def test_released_lease_is_taken_at_once_with_a_new_epoch(store: Store) -> None:
    first = await store.acquire_lease(LEASE, "node-a", 60)
    assert first is not None
    assert await store.release_lease(first)
    taken = await store.acquire_lease(LEASE, "node-b", 60)
    assert taken is not None and taken.epoch == first.epoch + 1
    assert not await store.release_lease(first)  # no longer its term: nothing changes
    assert await store.acquire_lease(LEASE, "node-a", 60) is None


async def test_a_superseded_runner_cannot_write_jobs_or_settle_money(store: Store) -> None:
    old_lease = await store.acquire_lease(LEASE, "node-a", 0)
    assert old_lease is not None
    old = store.fenced(old_lease)
    job_id = await reserved(store, request())
    other = await reserved(store, request(user_id=2))
    assert await old.transition(job_id, "queued", "submitting")
    new_lease = await store.acquire_lease(LEASE, "node-b", 60)
    assert new_lease is not None
    new = store.fenced(new_lease)

    with pytest.raises(Fenced):
        await old.transition(job_id, "submitting", "submitted", request_id="req-old")
    with pytest.raises(Fenced):
        await old.transition(other, "queued", "submitting")
    with pytest.raises(Fenced):
        await old.charge(job_id, 0.8)
    with pytest.raises(Fenced):
        await old.release(job_id, "failed", DEFAULTS)
    # A job that ended with its reservation still open: the crash net must not settle it.
    ended = await reserved(store, request(user_id=4))
    assert await store.transition(ended, "queued", "cancelled")
    with pytest.raises(Fenced):
        await old.settle_terminal(DEFAULTS)
    left_open = await store.get_job(ended)
    assert left_open is not None and left_open.ledger_status == "reserved"
    job = await store.get_job(job_id)
    assert job is not None and job.state == "submitting" and job.request_id is None
    assert job.ledger_status == "reserved"
    second = await store.get_job(other)
    assert second is not None and second.state == "queued"

    # The new runner writes as usual, and intake (reservations) is never fenced.
    assert await new.transition(job_id, "submitting", "unknown")
    assert await new.release(job_id, "unknown", DEFAULTS) == "released"
    assert await reserved(store, request(user_id=3)) > 0
    assert await old.get_job(other) is not None  # reads stay open to everyone


async def test_segmind_budget_is_handed_on_and_fenced(store: Store) -> None:
    assert await store.load_budget(LEASE) is None
    old_lease = await store.acquire_lease(LEASE, "node-a", 0)
    assert old_lease is not None
    old = store.fenced(old_lease)
    state = BudgetState((NOW, NOW + 1.5, NOW + 2.25), NOW + 30)
    await old.save_budget(LEASE, state)
    # Kept to the second, rounded up: every grant counts at least as long as it really does.
    kept = BudgetState((NOW, NOW + 2.0, NOW + 3.0), NOW + 30)
    assert await store.load_budget(LEASE) == kept
    assert await store.acquire_lease(LEASE, "node-b", 60) is not None
    with pytest.raises(Fenced):
        await old.save_budget(LEASE, BudgetState((), None))
    assert await store.load_budget(LEASE) == kept


# --------------------------------------------------------------------------------------------
# The approval lane: held requests and the one decision about each


def held(user_id: int = 1, *, expires_in: float = HOUR, quote: float = 1.2) -> ReserveRequest:
    return request(user_id, approval=ApprovalHold(quote=quote, expires_at=NOW + expires_in))


async def test_a_held_request_is_reserved_but_never_queued(store: Store) -> None:
    job_id = await reserved(store, held())
    job = await store.get_job(job_id)
    assert job is not None and job.state == "awaiting_approval"
    assert job.ledger_status == "reserved"
    # Nothing for the dispatcher, or the queue's metrics.
    assert await store.next_queued() is None
    assert await store.queued_ids() == []
    assert await store.count_queued() == 0 and await store.count_in_flight() == 0
    # It counts for the member: one at a time (DEFAULTS), so a second request is refused.
    refusal = await store.reserve(held(), DEFAULTS)
    assert isinstance(refusal, Refusal) and refusal.kind == "concurrency"
    assert refusal.in_flight_job_id == job_id
    assert [j.id for j in await store.nonterminal_jobs()] == [job_id]  # a restart sees it
    approval = await store.get_approval(job_id)
    assert approval is not None
    assert (approval.quote, approval.expires_at, approval.decision) == (1.2, NOW + HOUR, None)
    assert await store.get_approval(job_id + 1) is None
    # A held job never goes straight to Segmind.
    with pytest.raises(IllegalTransition):
        await store.transition(job_id, ("awaiting_approval",), "submitting")


async def test_approval_queues_it_and_the_first_decision_wins(store: Store) -> None:
    job_id = await reserved(store, held())
    ahead = await reserved(store, request(2))  # a plain request, queued after it
    await store.set_approval_card(job_id, 555, 777)

    approved = await store.decide_approval(job_id, "approved", actor_id=99, now=NOW + 60)
    assert approved is not None and approved.won
    assert approved.job is not None and approved.job.state == "queued"
    assert (approved.approval.decided_by, approved.approval.decided_at) == (99, NOW + 60)
    assert (approved.approval.card_channel_id, approved.approval.card_message_id) == (555, 777)
    # In line by arrival: it was asked for first.
    assert await store.queued_ids() == [job_id, ahead]

    late = await store.decide_approval(job_id, "denied", actor_id=98, reason="no", now=NOW + 61)
    assert late is not None and not late.won
    assert late.approval.decision == "approved" and late.approval.decided_by == 99
    assert late.approval.reason is None
    job = await store.get_job(job_id)
    assert job is not None and job.state == "queued" and job.ledger_status == "reserved"
    assert await store.decide_approval(ahead, "approved", actor_id=99) is None  # never held
    entries = await store.audit_entries(GUILD)
    assert [(e.action, e.actor_id) for e in entries] == [("approval.approved", 99)]
    assert entries[0].detail == {"job_id": job_id, "user_id": 1, "reason": None}


async def test_deny_cancels_with_its_reason_and_the_refund_frees_the_member(store: Store) -> None:
    job_id = await reserved(store, held())
    denied = await store.decide_approval(job_id, "denied", actor_id=98, reason="too gory")
    assert denied is not None and denied.won
    assert denied.job is not None and denied.job.state == "cancelled"
    assert denied.approval.reason == "too gory"
    assert await store.release(job_id, "denied", DEFAULTS) == "released"
    view = await store.quota_view(GUILD, 1, (), DEFAULTS, NOW)
    assert view.usage.user_window.count == 0 and view.usage.in_flight_job_ids == ()
    (entry,) = await store.audit_entries(GUILD)
    assert (entry.action, entry.actor_id, entry.detail["reason"]) == (
        "approval.denied",
        98,
        "too gory",
    )


async def test_many_moderators_pressing_at_once_make_one_decision(store: Store) -> None:
    job_id = await reserved(store, held())
    results = await asyncio.gather(
        *(
            store.decide_approval(job_id, "approved" if i % 2 else "denied", actor_id=1000 + i)
            for i in range(12)
        )
    )
    assert all(r is not None for r in results)
    winners = [r for r in results if r is not None and r.won]
    assert len(winners) == 1
    (winner,) = winners
    # Everyone else is told the same decision, by the same moderator.
    assert {(r.approval.decision, r.approval.decided_by) for r in results if r is not None} == {
        (winner.approval.decision, winner.approval.decided_by)
    }
    assert (
        len([e for e in await store.audit_entries(GUILD) if e.action.startswith("approval.")]) == 1
    )


async def test_due_approvals_lists_only_lapsed_undecided_ones(store: Store) -> None:
    soon = await reserved(store, held(1, expires_in=60))
    later = await reserved(store, held(2, expires_in=HOUR))
    decided = await reserved(store, held(3, expires_in=30))
    withdrawn = await reserved(store, held(4, expires_in=30))
    await store.decide_approval(decided, "approved", actor_id=99)
    await store.transition(withdrawn, ("awaiting_approval",), "cancelled")
    assert await store.due_approvals(NOW + 59) == []
    assert await store.due_approvals(NOW + 60) == [soon]
    assert await store.due_approvals(NOW + 2 * HOUR) == [soon, later]

    expired = await store.decide_approval(soon, "expired", actor_id=0, now=NOW + 61)
    assert expired is not None and expired.won
    assert expired.job is not None and expired.job.state == "expired"
    assert expired.approval.decided_by is None  # nobody decided
    assert await store.due_approvals(NOW + 2 * HOUR) == [later]
    # A crash before the refund: the start-up net releases the expired one.
    assert await store.settle_terminal(DEFAULTS) == 2  # the expired and the withdrawn
    job = await store.get_job(soon)
    assert job is not None and job.ledger_status == "released"


async def test_approval_settings_round_trip_and_are_audited(store: Store) -> None:
    assert await store.get_approval_settings(GUILD) == ApprovalSettings()
    lane = ApprovalSettings(
        enabled=True,
        channel_id=555,
        threshold=0.5,
        exempt_roles=frozenset({10, 11}),
        approver_role_id=12,
        expiry_seconds=3600.0,
    )
    await store.set_approval_settings(GUILD, lane, actor_id=99)
    assert await store.get_approval_settings(GUILD) == lane
    assert await store.get_approval_settings(GUILD + 1) == ApprovalSettings()
    off = replace(lane, enabled=False, exempt_roles=frozenset())
    await store.set_approval_settings(GUILD, off, actor_id=98)
    assert await store.get_approval_settings(GUILD) == off
    entries = await store.audit_entries(GUILD)
    assert [(e.action, e.actor_id) for e in entries] == [
        ("approvals.set", 98),
        ("approvals.set", 99),
    ]
    assert entries[1].detail["exempt_roles"] == [10, 11]
    assert entries[1].detail["channel_id"] == 555
    # The lane's settings are apart from the limits: neither overwrites the other.
    await store.set_guild_limits(GUILD, GuildLimits(user_limit=5), actor_id=99)
    assert await store.get_approval_settings(GUILD) == off


async def test_migration_8_widens_an_old_state_check_in_place(
    tmp_path: Path, clock: ManualClock
) -> None:
    """A database made before the lane lists one state fewer; its jobs must take the new one."""
    first, *rest = MIGRATIONS[:3]
    old_first = Migration(
        first.version,
        first.description,
        tuple(s.replace(", 'awaiting_approval'", "") for s in first.statements),
    )
    path = tmp_path / "veo.sqlite3"
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        await apply_migrations(conn, (old_first, *rest))
    with sqlite3.connect(path) as raw:
        (old_sql,) = raw.execute("SELECT sql FROM sqlite_master WHERE name = 'jobs'").fetchone()
    assert "awaiting_approval" not in old_sql
    async with await SqliteStore.open(path, clock=clock) as store:
        job_id = await reserved(store, held())
        job = await store.get_job(job_id)
        assert job is not None and job.state == "awaiting_approval"
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        with pytest.raises(sqlite3.IntegrityError):  # the CHECK still refuses what is no state
            raw.execute("UPDATE jobs SET state = 'bogus' WHERE id = ?", (job_id,))


# ------------------------------------------------------------------ money truth (schema 5)


async def test_the_submit_start_is_stamped_and_the_job_found_by_its_request_id(
    store: Store, clock: ManualClock
) -> None:
    """A lost submit answer is looked up in Segmind's history from when the POST began, and a
    history row is matched back to its job by request id."""
    assert await store.earliest_submit_at() is None
    job_id = await reserved(store, request())
    clock.advance(5)
    submitting = await store.transition(job_id, "queued", "submitting")
    assert submitting is not None and submitting.submit_started_at == NOW + 5
    clock.advance(3)
    assert await store.transition(job_id, "submitting", "submitted", request_id="rq-1")
    found = await store.job_by_request_id("rq-1")
    assert found is not None and found.id == job_id
    assert found.submit_started_at == NOW + 5 and found.submitted_at == NOW + 8
    assert await store.job_by_request_id("rq-other") is None
    assert await store.earliest_submit_at() == NOW + 5
    # The quote held against the spend caps, for comparing with what Segmind billed.
    quoted = await reserved(store, request(now=NOW + 9, quote=0.55), LimitDefaults(concurrency=5))
    assert await store.job_quote(quoted) == 0.55
    assert await store.job_quote(job_id) == DEFAULTS.price_per_job
    assert await store.job_quote(10_000) is None


async def test_a_discrepancy_is_recorded_once_and_posted_once(
    store: Store, clock: ManualClock
) -> None:
    job_id = await reserved(store, request())
    refunded = NewDiscrepancy(
        "billed_but_refunded", "rq-1", job_id=job_id, guild_id=GUILD, billed=0.8, expected=0.0
    )
    stranger = NewDiscrepancy("unknown_request", "rq-9", billed=1.2, detail="not ours")
    assert await store.record_discrepancy(refunded)
    assert not await store.record_discrepancy(refunded)  # seen again by the next pass
    # Another kind for the same request is another disagreement.
    assert await store.record_discrepancy(
        NewDiscrepancy("cost_off_quote", "rq-1", job_id=job_id, guild_id=GUILD, billed=0.8)
    )
    clock.advance(10)
    assert await store.record_discrepancy(stranger)
    assert await store.record_discrepancy(
        NewDiscrepancy("unknown_request", "rq-elsewhere", guild_id=GUILD + 1)
    )

    mine = await store.discrepancies(GUILD)
    # Newest first; a request with no guild is every guild's concern; another guild's is not.
    assert [(d.kind, d.request_id) for d in mine] == [
        ("unknown_request", "rq-9"),
        ("cost_off_quote", "rq-1"),
        ("billed_but_refunded", "rq-1"),
    ]
    first = mine[-1]
    assert (first.job_id, first.guild_id, first.billed, first.expected) == (job_id, GUILD, 0.8, 0)
    assert mine[0].detail == "not ours" and mine[0].created_at == NOW + 10
    assert len(await store.discrepancies(None)) == 4
    assert [d.request_id for d in await store.discrepancies(GUILD, since=NOW + 5)] == ["rq-9"]
    assert len(await store.discrepancies(GUILD, limit=1)) == 1

    unposted = await store.unposted_discrepancies()
    assert [d.request_id for d in unposted] == ["rq-1", "rq-1", "rq-9", "rq-elsewhere"]
    await store.mark_discrepancy_posted(unposted[0].id)
    await store.mark_discrepancy_posted(unposted[0].id, now=NOW + 99)  # a repeat changes nothing
    left = await store.unposted_discrepancies()
    assert [d.id for d in left] == [d.id for d in unposted[1:]]
    posted = [d for d in await store.discrepancies(None) if d.id == unposted[0].id]
    assert posted[0].posted_at == NOW + 10


async def test_a_task_cursor_is_saved_and_replaced(store: Store) -> None:
    assert await store.get_cursor("reconcile") is None
    await store.set_cursor("reconcile", "1700000000.0")
    await store.set_cursor("reconcile", "1700000500.0")
    await store.set_cursor("other", "x")
    assert await store.get_cursor("reconcile") == "1700000500.0"


# --------------------------------------------------------------------- one job per Discord event


async def test_the_same_event_twice_makes_one_job_and_one_reservation(store: Store) -> None:
    """Two gateway sessions on one shard (a deploy's overlap) deliver one interaction to two
    processes: the second reservation finds the first's job instead of being refused for it
    (the member's one-at-a-time slot is that very job) or charged again."""
    first = await store.reserve(request(event_id=9001), DEFAULTS)
    again = await store.reserve(request(now=NOW + 1, event_id=9001), DEFAULTS)
    assert isinstance(first, Reserved) and not first.existing
    assert isinstance(again, Reserved) and again.existing
    assert (again.job_id, again.queue_seq) == (first.job_id, first.queue_seq)
    view = await store.quota_view(GUILD, 1, (), DEFAULTS, NOW + 2)
    assert view.usage.user_window.count == 1  # one reservation held, not two
    assert [j.id for j in await store.nonterminal_jobs()] == [first.job_id]
    found = await store.job_for_event(9001)
    assert found is not None and (found.id, found.event_id) == (first.job_id, 9001)
    assert await store.job_for_event(9002) is None
    # Another event of the same member is a new request, judged by the limits as ever.
    other = await store.reserve(request(now=NOW + 3, event_id=9002), DEFAULTS)
    assert isinstance(other, Refusal) and other.kind == "concurrency"


async def test_an_event_twice_over_two_stores_at_once_makes_one_job(database_url: str) -> None:
    """The twins race from two processes (two pools or connections): exactly one job, one
    reservation, and both processes learn its id."""
    first = await open_store(database_url)
    second = await open_store(database_url)
    try:
        outcomes = await asyncio.gather(
            *(s.reserve(request(event_id=77), DEFAULTS) for _ in range(5) for s in (first, second))
        )
        assert all(isinstance(o, Reserved) for o in outcomes), outcomes
        reserved_now = [o for o in outcomes if isinstance(o, Reserved) and not o.existing]
        assert len(reserved_now) == 1
        assert {o.job_id for o in outcomes if isinstance(o, Reserved)} == {reserved_now[0].job_id}
        assert len(await second.nonterminal_jobs()) == 1
    finally:
        await first.close()
        await second.close()


# ---------------------------------------------------------------------------- gateway IDENTIFY


async def test_identify_slots_space_sessions_per_bucket_across_stores(database_url: str) -> None:
    """One IDENTIFY per max_concurrency bucket per spacing, whichever node asks: the second
    claim of a bucket is told how long to wait; another bucket is free; once the wait is over
    the slot can be claimed again."""
    first = await open_store(database_url)
    second = await open_store(database_url)
    try:
        assert await first.claim_identify_slot(0, 5.0) == 0.0
        wait = await second.claim_identify_slot(0, 5.0)
        assert 4.0 < wait <= 5.0
        assert await second.claim_identify_slot(1, 5.0) == 0.0
        # Racing claims of a fresh bucket: exactly one wins.
        claims = await asyncio.gather(
            *(s.claim_identify_slot(2, 5.0) for _ in range(4) for s in (first, second))
        )
        assert sorted(c == 0.0 for c in claims) == [False] * 7 + [True]
        # A short spacing, long enough that the second claim surely comes within it.
        assert await first.claim_identify_slot(3, 1.0) == 0.0
        wait = await second.claim_identify_slot(3, 1.0)
        assert 0 < wait <= 1.0
        await asyncio.sleep(wait + 0.01)  # the database's clock moves on its own
        assert await second.claim_identify_slot(3, 1.0) == 0.0
    finally:
        await first.close()
        await second.close()


# ---------------------------------------------------------------------- moderators' rules


async def test_banned_words_are_one_entry_per_normalised_form_and_capped(store: Store) -> None:
    assert await store.add_banned_word(GUILD, "Bad", actor_id=99, max_entries=3) == "added"
    # Full-width, spaced or dotted: the same entry, so not a second one.
    assert await store.add_banned_word(GUILD, "ｂ.ａ.ｄ", actor_id=98, max_entries=3) == "exists"
    assert await store.add_banned_word(GUILD, "worse word", actor_id=99, max_entries=3) == "added"
    assert await store.add_banned_word(GUILD, "third", actor_id=99, max_entries=3) == "added"
    assert await store.add_banned_word(GUILD, "fourth", actor_id=99, max_entries=3) == "full"
    assert await store.banned_words(GUILD) == ["Bad", "worse word", "third"]
    assert await store.banned_words(GUILD + 1) == []  # per guild
    with pytest.raises(ValueError, match="letter or digit"):
        await store.add_banned_word(GUILD, "…!", actor_id=99, max_entries=3)

    assert await store.remove_banned_word(GUILD, "BAD", actor_id=99) == "Bad"  # as typed
    assert await store.remove_banned_word(GUILD, "bad", actor_id=99) is None
    assert await store.banned_words(GUILD) == ["worse word", "third"]
    entries = await store.audit_entries(GUILD, limit=10)
    assert [(e.action, e.detail) for e in reversed(entries)] == [
        ("banned_word.add", {"entry": "Bad"}),
        ("banned_word.add", {"entry": "worse word"}),
        ("banned_word.add", {"entry": "third"}),
        ("banned_word.remove", {"entry": "Bad"}),
    ]  # refusals (exists, full, not banned) change nothing and audit nothing


async def test_concurrent_banned_word_adds_never_pass_the_maximum(store: Store) -> None:
    outcomes = await asyncio.gather(
        *(store.add_banned_word(GUILD, f"word{i}", actor_id=99, max_entries=5) for i in range(20))
    )
    assert outcomes.count("added") == 5
    assert len(await store.banned_words(GUILD)) == 5


async def test_allowed_channels_and_the_gallery_channel(store: Store) -> None:
    assert await store.allowed_channels(GUILD) == frozenset()
    assert await store.allow_channel(GUILD, 201, actor_id=99, max_channels=2) == "added"
    assert await store.allow_channel(GUILD, 201, actor_id=99, max_channels=2) == "exists"
    assert await store.allow_channel(GUILD, 202, actor_id=99, max_channels=2) == "added"
    assert await store.allow_channel(GUILD, 203, actor_id=99, max_channels=2) == "full"
    assert await store.allowed_channels(GUILD) == {201, 202}
    assert await store.remove_channel(GUILD, 201, actor_id=99)
    assert not await store.remove_channel(GUILD, 201, actor_id=99)
    assert await store.allowed_channels(GUILD) == {202}

    await store.set_log_channel(GUILD, 555, actor_id=99)
    await store.set_guild_limits(GUILD, GuildLimits(user_limit=4), actor_id=99)
    assert await store.get_gallery_channel(GUILD) is None
    await store.set_gallery_channel(GUILD, 777, actor_id=99)
    assert await store.get_gallery_channel(GUILD) == 777
    # One row of guild settings: neither setting overwrites the others.
    assert await store.get_log_channel(GUILD) == 555
    assert await store.get_guild_limits(GUILD) == GuildLimits(user_limit=4)
    await store.set_gallery_channel(GUILD, None, actor_id=99)
    assert await store.get_gallery_channel(GUILD) is None
    assert await store.get_log_channel(GUILD) == 555
    actions = [e.action for e in reversed(await store.audit_entries(GUILD, limit=20))]
    assert actions == [
        "channel.allow",
        "channel.allow",
        "channel.remove",
        "log_channel.set",
        "limits.set",
        "gallery.set",
        "gallery.set",
    ]


async def test_a_jobs_gallery_announcement_is_kept_with_it(store: Store) -> None:
    job_id = await reserved(store, request())
    await finish(store, job_id)
    job = await store.get_job(job_id)
    assert job is not None and (job.gallery_channel_id, job.gallery_message_id) == (None, None)
    written = await store.transition(
        job_id, "delivered", "delivered", gallery_channel_id=777, gallery_message_id=888
    )
    assert written is not None and written.gallery_message_id == 888
    job = await store.get_job(job_id)
    assert job is not None and (job.gallery_channel_id, job.gallery_message_id) == (777, 888)
    assert (await store.recent_jobs(GUILD))[0].gallery_message_id == 888
