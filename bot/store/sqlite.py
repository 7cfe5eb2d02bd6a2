"""SQLite persistence: jobs and their state machine, the quota ledger, moderation settings, audit.

The store knows nothing of Discord or Segmind: guild/channel/user/role ids are plain ints and a
Segmind request id is an opaque string.

Concurrency model. One `Store` owns one aiosqlite connection (one worker thread). Every write
runs as one `BEGIN IMMEDIATE` transaction under an in-process `asyncio.Lock`: the lock stops two
tasks from interleaving statements on the shared connection, and `BEGIN IMMEDIATE` takes
SQLite's write lock before the first read, so a check-then-insert (`reserve`) can never be
raced by another connection or process either. Readers never block writers (WAL).

Job lifecycle (see `LEGAL_TRANSITIONS`)::

    queued ──▶ submitting ──▶ submitted ──▶ completed ──▶ delivering ──▶ delivered
      │            │  │            │             │              │
      │            │  └─▶ unknown  └─▶ failed / expired        └─▶ failed
      └─▶ cancelled / expired / failed       (submitting ─▶ queued: the POST surely never left)

`transition()` is a compare-and-set committed before the action it enables (write-ahead): the
lifecycle moves a job to `submitting` *then* POSTs, to `delivering` *then* posts to Discord, so
after a crash it knows which side effects may have happened and never repeats a billed one.

Quota ledger. `reserve()` inserts the job (`queued`) and a `reserved` ledger row atomically;
`charge()` settles it as `charged` once delivered, `release()` as `released` (refunded) when the
user got no video. Reserved and charged rows count toward every limit; released ones do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, get_args

import aiosqlite

from bot.params import VeoParams
from bot.quota import (
    DAY_SECONDS,
    Allowed,
    Block,
    EffectiveLimits,
    GuildLimits,
    LimitDefaults,
    LimitOverride,
    Refusal,
    UsageSnapshot,
    WindowUsage,
    blocked_refund_allowed,
    decide,
    effective_limits,
)

JobState = Literal[
    "queued",
    "submitting",
    "submitted",
    "completed",
    "delivering",
    "delivered",
    "failed",
    "expired",
    "cancelled",
    "unknown",
]
ALL_STATES: tuple[JobState, ...] = get_args(JobState)
TERMINAL_STATES: frozenset[JobState] = frozenset(
    {"delivered", "failed", "expired", "cancelled", "unknown"}
)
# Holding a Segmind slot (or about to): what the global concurrency limit counts.
IN_FLIGHT_STATES: tuple[JobState, ...] = ("submitting", "submitted", "completed", "delivering")
NONTERMINAL_STATES: tuple[JobState, ...] = ("queued", *IN_FLIGHT_STATES)

LEGAL_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    # A queued job has cost nothing yet: it may be dropped for any reason.
    "queued": frozenset({"submitting", "cancelled", "expired", "failed"}),
    # `queued` again only when the POST certainly never reached Segmind (connection refused,
    # 429 before the body was read); `unknown` when it may have and no request id was saved.
    "submitting": frozenset({"submitted", "queued", "failed", "unknown"}),
    "submitted": frozenset({"completed", "failed", "expired"}),
    "completed": frozenset({"delivering", "failed", "expired"}),
    "delivering": frozenset({"delivered", "failed"}),
    "delivered": frozenset(),
    "failed": frozenset(),
    "expired": frozenset(),
    "cancelled": frozenset(),
    "unknown": frozenset(),
}

LedgerStatus = Literal["reserved", "charged", "released"]
ReleaseReason = Literal[
    "failed",  # Segmind reported the job failed or returned no video
    "content_blocked",  # Segmind refused the prompt/image: refunded only up to the daily cap
    "not_submitted",  # the POST was refused or never went through: nothing started
    "expired",  # past the deadline, or Segmind no longer knows the job
    "cancelled",  # the user or a moderator cancelled it
    "unknown",  # crashed between POST and saving the request id; the user got nothing
    "delivery_failed",  # Segmind made it but it never reached the user
]
ReleaseOutcome = Literal["released", "charged", "already_settled", "no_such_job"]

# Columns `transition()` may set besides `state`: column names cannot be SQL parameters, so
# only these names are ever formatted into a statement.
JOB_FIELDS: frozenset[str] = frozenset(
    {
        "request_id",
        "image_url",
        "error",
        "cost",
        "bytes",
        "submitted_at",
        "completed_at",
        "delivered_at",
        "placeholder_channel_id",
        "placeholder_message_id",
        "output_url",
        "upload_limit",
        "interaction_token",
        "interaction_created_at",
        "delivered_message_id",
        "delivery_method",
    }
)
# Entering these states stamps the matching timestamp unless the caller passes one.
_STAMPS: dict[str, str] = {
    "submitted": "submitted_at",
    "completed": "completed_at",
    "delivered": "delivered_at",
}


class StoreError(Exception):
    """Base of the store's errors."""


class StoreUnavailable(StoreError):
    """The database cannot be read or written (locked too long, disk full, unreadable).

    Callers fail closed: refuse the request, never start an unrecorded job."""

    user_message = "The bot cannot reach its database right now — please try again in a minute."


class IllegalTransition(StoreError, ValueError):
    """A transition the state machine never allows: a bug in the caller, not a race."""


# --------------------------------------------------------------------------------------------
# Schema


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


_STATE_CHECK = ", ".join(f"'{s}'" for s in ALL_STATES)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "jobs and the quota ledger",
        (
            f"""
            CREATE TABLE jobs (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                guild_id INTEGER NOT NULL,
                channel_id INTEGER NOT NULL,
                user_id INTEGER NOT NULL,
                prompt TEXT NOT NULL,
                params TEXT NOT NULL DEFAULT '{{}}' CHECK (json_valid(params)),
                image_url TEXT,
                request_id TEXT,
                state TEXT NOT NULL CHECK (state IN ({_STATE_CHECK})),
                error TEXT,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL
            )
            """,
            "CREATE INDEX jobs_user_state ON jobs (user_id, state)",
            """
            CREATE TABLE quota_ledger (
                job_id INTEGER PRIMARY KEY REFERENCES jobs (id),
                guild_id INTEGER NOT NULL,
                user_id INTEGER NOT NULL,
                status TEXT NOT NULL CHECK (status IN ('reserved', 'charged', 'released')),
                amount REAL NOT NULL,
                reserved_at REAL NOT NULL,
                settled_at REAL
            )
            """,
            "CREATE INDEX ledger_guild_user_time ON quota_ledger (guild_id, user_id, reserved_at)",
        ),
    ),
    Migration(
        2,
        "job lifecycle columns, FCFS queue sequence, ledger reasons and real cost",
        (
            "ALTER TABLE jobs ADD COLUMN submitted_at REAL",
            "ALTER TABLE jobs ADD COLUMN completed_at REAL",
            "ALTER TABLE jobs ADD COLUMN delivered_at REAL",
            "ALTER TABLE jobs ADD COLUMN cost REAL",
            "ALTER TABLE jobs ADD COLUMN bytes INTEGER",
            "ALTER TABLE jobs ADD COLUMN placeholder_channel_id INTEGER",
            "ALTER TABLE jobs ADD COLUMN placeholder_message_id INTEGER",
            "ALTER TABLE jobs ADD COLUMN upload_limit INTEGER",
            "ALTER TABLE jobs ADD COLUMN output_url TEXT",
            "ALTER TABLE jobs ADD COLUMN interaction_token TEXT",
            "ALTER TABLE jobs ADD COLUMN interaction_created_at REAL",
            "ALTER TABLE jobs ADD COLUMN delivered_message_id INTEGER",
            "ALTER TABLE jobs ADD COLUMN delivery_method TEXT",
            "ALTER TABLE jobs ADD COLUMN queue_seq INTEGER",
            # Jobs from version 1 keep their arrival order: ids were assigned in that order.
            "UPDATE jobs SET queue_seq = id WHERE queue_seq IS NULL",
            "CREATE UNIQUE INDEX jobs_queue_seq ON jobs (queue_seq)",
            "CREATE INDEX jobs_state_seq ON jobs (state, queue_seq)",
            "CREATE UNIQUE INDEX jobs_request_id ON jobs (request_id) WHERE request_id IS NOT NULL",
            "CREATE INDEX jobs_guild_created ON jobs (guild_id, created_at)",
            "ALTER TABLE quota_ledger ADD COLUMN reason TEXT",
            "ALTER TABLE quota_ledger ADD COLUMN charged_amount REAL",
            "UPDATE quota_ledger SET charged_amount = amount WHERE status = 'charged'",
            # Covering indexes for the guild/global windows and the spend sum, so a check never
            # touches the table rows however busy the day was.
            "CREATE INDEX ledger_guild_time ON quota_ledger "
            "(guild_id, reserved_at, status, amount, charged_amount)",
            "CREATE INDEX ledger_time ON quota_ledger "
            "(reserved_at, status, guild_id, amount, charged_amount)",
        ),
    ),
    Migration(
        3,
        "moderation: guild limits, role/user overrides, exempt roles, blocks, resets, audit",
        (
            """
            CREATE TABLE guild_settings (
                guild_id INTEGER PRIMARY KEY,
                user_limit INTEGER CHECK (user_limit >= 0),
                window_hours REAL CHECK (window_hours > 0),
                concurrency INTEGER CHECK (concurrency >= 1),
                daily_limit INTEGER CHECK (daily_limit >= 0),
                spend_cap REAL CHECK (spend_cap >= 0),
                log_channel_id INTEGER
            )
            """,
            """
            CREATE TABLE role_overrides (
                guild_id INTEGER NOT NULL,
                role_id INTEGER NOT NULL,
                user_limit INTEGER CHECK (user_limit >= 0),
                window_hours REAL CHECK (window_hours > 0),
                concurrency INTEGER CHECK (concurrency >= 1),
                PRIMARY KEY (guild_id, role_id)
            )
            """,
            """
            CREATE TABLE user_overrides (
                guild_id INTEGER NOT NULL,
                user_id INTEGER NOT NULL,
                user_limit INTEGER CHECK (user_limit >= 0),
                window_hours REAL CHECK (window_hours > 0),
                concurrency INTEGER CHECK (concurrency >= 1),
                PRIMARY KEY (guild_id, user_id)
            )
            """,
            """
            CREATE TABLE exempt_roles (
                guild_id INTEGER NOT NULL,
                role_id INTEGER NOT NULL,
                PRIMARY KEY (guild_id, role_id)
            )
            """,
            """
            CREATE TABLE blocks (
                guild_id INTEGER NOT NULL,
                user_id INTEGER NOT NULL,
                reason TEXT,
                blocked_by INTEGER NOT NULL,
                created_at REAL NOT NULL,
                PRIMARY KEY (guild_id, user_id)
            )
            """,
            # A reset hides earlier reservations from the user's window without deleting them.
            """
            CREATE TABLE window_resets (
                guild_id INTEGER NOT NULL,
                user_id INTEGER NOT NULL,
                reset_at REAL NOT NULL,
                reset_by INTEGER NOT NULL,
                PRIMARY KEY (guild_id, user_id)
            )
            """,
            """
            CREATE TABLE audit_log (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                guild_id INTEGER NOT NULL,
                actor_id INTEGER NOT NULL,
                action TEXT NOT NULL,
                detail TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(detail)),
                created_at REAL NOT NULL
            )
            """,
            "CREATE INDEX audit_guild_time ON audit_log (guild_id, created_at)",
        ),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


async def _user_version(conn: aiosqlite.Connection) -> int:
    rows = list(await conn.execute_fetchall("PRAGMA user_version"))
    return int(rows[0][0])


async def apply_migrations(
    conn: aiosqlite.Connection, migrations: Sequence[Migration] = MIGRATIONS
) -> int:
    """Bring the schema up to the last migration, each in its own transaction; return the
    version reached. A database newer than this code is refused rather than misread."""
    latest = migrations[-1].version if migrations else 0
    current = await _user_version(conn)
    if current > latest:
        raise StoreError(
            f"the database is at schema version {current}, newer than this bot knows "
            f"({latest}); upgrade the bot"
        )
    for migration in migrations:
        if migration.version <= current:
            continue
        await conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated while we waited for the write lock.
            if await _user_version(conn) >= migration.version:
                await conn.execute("ROLLBACK")
                continue
            for statement in migration.statements:
                await conn.execute(statement)
            # PRAGMA takes no parameters; the version is an int from this module.
            await conn.execute(f"PRAGMA user_version = {int(migration.version)}")
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
        current = migration.version
    return current


# --------------------------------------------------------------------------------------------
# Rows


@dataclass(frozen=True, slots=True)
class Job:
    """One `/veo` request and everything the lifecycle and moderators need about it."""

    id: int
    guild_id: int
    channel_id: int
    user_id: int
    prompt: str
    params_json: str
    image_url: str | None
    request_id: str | None
    state: JobState
    queue_seq: int
    created_at: float
    updated_at: float
    submitted_at: float | None
    completed_at: float | None
    delivered_at: float | None
    cost: float | None  # what Segmind reported (metrics.cost), if it did
    bytes: int | None
    error: str | None
    placeholder_channel_id: int | None  # None: the placeholder is in `channel_id`
    placeholder_message_id: int | None  # the public "thinking…" message, edited in place
    interaction_token: str | None  # valid 15 minutes from interaction_created_at
    interaction_created_at: float | None
    delivered_message_id: int | None
    delivery_method: str | None
    upload_limit: int | None  # bytes the requester's channel accepts as an attachment
    output_url: str | None  # Segmind's result URL, kept so delivery can resume after a crash
    ledger_status: LedgerStatus | None  # None only for rows that predate the ledger
    charged_amount: float | None
    ledger_reason: str | None

    @property
    def params(self) -> dict[str, Any]:
        return cast(dict[str, Any], json.loads(self.params_json))

    @property
    def params_model(self) -> VeoParams:
        """The parameters the job was reserved with, decoded once per distinct row text."""
        return _decode_params(self.params_json)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


# VeoParams is frozen, so one decoded value can serve every reader of the same row.
_decode_params = lru_cache(maxsize=1024)(VeoParams.model_validate_json)

_JOB_COLUMNS = (
    "j.id, j.guild_id, j.channel_id, j.user_id, j.prompt, j.params, j.image_url, j.request_id, "
    "j.state, j.queue_seq, j.created_at, j.updated_at, j.submitted_at, j.completed_at, "
    "j.delivered_at, j.cost, j.bytes, j.error, j.placeholder_channel_id, "
    "j.placeholder_message_id, j.interaction_token, j.interaction_created_at, "
    "j.delivered_message_id, j.delivery_method, j.upload_limit, j.output_url, "
    "l.status, l.charged_amount, l.reason"
)
_JOB_FROM = "FROM jobs j LEFT JOIN quota_ledger l ON l.job_id = j.id"


def _job(row: sqlite3.Row | tuple[Any, ...]) -> Job:
    return Job(*row)


@dataclass(frozen=True, slots=True)
class ReserveRequest:
    """A member's request, validated and acknowledged, not yet reserved: what `reserve` needs
    to check the limits and create the job. `role_ids` are the member's roles in that guild."""

    guild_id: int
    channel_id: int
    user_id: int
    role_ids: frozenset[int] | tuple[int, ...]
    params: VeoParams
    now: float | None = None  # None: the store's clock
    estimated_cost: float | None = None  # defaults to the configured price per job
    exempt: bool = False  # no count limit, as if holding an exempt role (e.g. a moderator)
    interaction_token: str | None = None
    interaction_created_at: float | None = None
    placeholder_channel_id: int | None = None
    placeholder_message_id: int | None = None  # the public "thinking…" message
    upload_limit: int | None = None


@dataclass(frozen=True, slots=True)
class Reserved:
    """The job exists (state `queued`) and its quota is held.

    `used`/`limit` describe the member's window including this job (`limit` None: exempt)."""

    job_id: int
    queue_seq: int
    used: int
    limit: int | None


@dataclass(frozen=True, slots=True)
class QuotaView:
    """A member's limits and usage without reserving anything (for `/veo quota`, `/limits`)."""

    limits: EffectiveLimits
    usage: UsageSnapshot
    decision: Allowed | Refusal


@dataclass(frozen=True, slots=True)
class UsageSummary:
    jobs: int
    delivered: int
    failed: int  # failed, expired or unknown
    cancelled: int
    in_progress: int
    refunded: int  # ledger rows released
    cost: float  # dollars charged


@dataclass(frozen=True, slots=True)
class UserUsage:
    user_id: int
    jobs: int
    delivered: int
    cost: float


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    guild_id: int
    actor_id: int
    action: str
    detail: dict[str, Any]
    created_at: float


# --------------------------------------------------------------------------------------------
# The store


_UNAVAILABLE_ERRORS = (sqlite3.OperationalError, sqlite3.DatabaseError)
# Integrity and programming errors are bugs in our SQL or data, not an unreachable database.
_BUG_ERRORS = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)


def _placeholders(count: int) -> str:
    return ", ".join("?" * count)


# --------------------------------------------------------------------------------------------
# Transaction bodies that run on the connection's thread in one hand-off (see `Store._run`).

T = TypeVar("T")


def _transaction(
    conn: sqlite3.Connection, begin: str, body: Callable[[sqlite3.Connection], T]
) -> T:
    conn.execute(begin)
    try:
        result = body(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            # The original error is the one worth reporting.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    return result


def _load_limits(
    conn: sqlite3.Connection,
    guild_id: int,
    user_id: int,
    role_ids: Iterable[int],
    defaults: LimitDefaults,
    exempt_member: bool = False,
) -> tuple[EffectiveLimits, Block | None, float | None]:
    """The member's effective limits, their block (if any) and their last window reset."""
    row = conn.execute(
        """
        SELECT g.user_limit, g.window_hours, g.concurrency, g.daily_limit, g.spend_cap,
               u.user_id, u.user_limit, u.window_hours, u.concurrency,
               b.user_id, b.reason, b.blocked_by, b.created_at,
               r.reset_at
        FROM (SELECT 1)
        LEFT JOIN guild_settings g ON g.guild_id = :guild
        LEFT JOIN user_overrides u ON u.guild_id = :guild AND u.user_id = :user
        LEFT JOIN blocks b ON b.guild_id = :guild AND b.user_id = :user
        LEFT JOIN window_resets r ON r.guild_id = :guild AND r.user_id = :user
        """,
        {"guild": guild_id, "user": user_id},
    ).fetchone()
    guild = GuildLimits(*row[0:5])
    user_override = LimitOverride(*row[6:9]) if row[5] is not None else None
    block = (
        Block(guild_id, user_id, reason=row[10], blocked_by=row[11], created_at=row[12])
        if row[9] is not None
        else None
    )
    reset_at: float | None = row[13]

    roles = sorted(set(role_ids))
    role_overrides: dict[int, LimitOverride] = {}
    exempt: set[int] = set()
    if roles:
        marks = _placeholders(len(roles))
        for role_id, limit, hours, conc, is_exempt in conn.execute(
            "SELECT role_id, user_limit, window_hours, concurrency, 0 FROM role_overrides "  # noqa: S608  # only "?" marks are formatted in
            f"WHERE guild_id = ? AND role_id IN ({marks}) "
            "UNION ALL SELECT role_id, NULL, NULL, NULL, 1 FROM exempt_roles "
            f"WHERE guild_id = ? AND role_id IN ({marks})",
            (guild_id, *roles, guild_id, *roles),
        ):
            if is_exempt:
                exempt.add(role_id)
            else:
                role_overrides[role_id] = LimitOverride(limit, hours, conc)
    limits = effective_limits(
        defaults, guild, role_overrides, roles, exempt, user_override, exempt_member
    )
    return limits, block, reset_at


# Counting rows of the ledger inside a window, for one user, one guild or everyone. The WHERE
# clauses are fixed strings; every value is a parameter.
_WINDOW_SCOPES = {
    "user": "guild_id = ? AND user_id = ? AND reserved_at > ? AND status != 'released'",
    "guild": "guild_id = ? AND reserved_at > ? AND status != 'released'",
    "global": "reserved_at > ? AND status != 'released'",
}


def _pivot(
    conn: sqlite3.Connection, scope: str, params: tuple[Any, ...], count: int, limit: int | None
) -> WindowUsage:
    """A window of `count` rows; when it is full, also read the one row whose expiry frees a
    slot (the limit-th newest) — the only timestamp a refusal needs."""
    pivot = None
    if limit and count >= limit:
        pivot = conn.execute(
            f"SELECT reserved_at FROM quota_ledger WHERE {_WINDOW_SCOPES[scope]} "  # noqa: S608
            "ORDER BY reserved_at DESC LIMIT 1 OFFSET ?",
            (*params, limit - 1),
        ).fetchone()[0]
    return WindowUsage(int(count), pivot)


def _window(
    conn: sqlite3.Connection, scope: str, params: tuple[Any, ...], limit: int | None
) -> WindowUsage:
    (count,) = conn.execute(
        f"SELECT COUNT(*) FROM quota_ledger WHERE {_WINDOW_SCOPES[scope]}",  # noqa: S608
        params,
    ).fetchone()
    return _pivot(conn, scope, params, count, limit)


# One pass over the day's counting rows of a scope (a covering index each) gives both caps'
# inputs: how many and how much. A reservation counts at its estimate until charged.
_DAY_TOTALS = """
    SELECT COUNT(*),
           COALESCE(SUM(guild_id = :guild), 0),
           COALESCE(SUM(CASE status WHEN 'charged' THEN COALESCE(charged_amount, amount)
                                    ELSE amount END), 0),
           COALESCE(SUM(CASE WHEN guild_id = :guild THEN
                            CASE status WHEN 'charged' THEN COALESCE(charged_amount, amount)
                                        ELSE amount END END), 0)
    FROM quota_ledger
    WHERE {where} AND reserved_at > :since AND status != 'released'
"""
_DAY_TOTALS_GLOBAL = _DAY_TOTALS.format(where="1")
_DAY_TOTALS_GUILD = _DAY_TOTALS.format(where="guild_id = :guild")


def _snapshot(
    conn: sqlite3.Connection,
    guild_id: int,
    user_id: int,
    limits: EffectiveLimits,
    block: Block | None,
    reset_at: float | None,
    now: float,
) -> UsageSnapshot:
    """Everything `decide` needs, read inside the caller's transaction."""
    if block is not None:
        return UsageSnapshot(block=block)  # nothing else matters; spare the queries
    window_start = now - limits.window_seconds
    if reset_at is not None:
        window_start = max(window_start, reset_at)
    day_start = now - DAY_SECONDS
    # `concurrency` rows are enough to refuse; never read more, whatever piled up.
    in_flight = tuple(
        r[0]
        for r in conn.execute(
            "SELECT id FROM jobs WHERE user_id = ? AND state IN "  # noqa: S608  # only "?" marks
            f"({_placeholders(len(NONTERMINAL_STATES))}) ORDER BY queue_seq LIMIT ?",
            (user_id, *NONTERMINAL_STATES, limits.concurrency),
        )
    )
    user_window = _window(conn, "user", (guild_id, user_id, window_start), limits.user_limit)
    global_count = guild_count = 0
    global_spend = guild_spend = 0.0
    if limits.global_daily_limit is not None or limits.global_spend_cap is not None:
        global_count, guild_count, global_spend, guild_spend = conn.execute(
            _DAY_TOTALS_GLOBAL, {"guild": guild_id, "since": day_start}
        ).fetchone()
    elif limits.guild_daily_limit is not None or limits.guild_spend_cap is not None:
        # Only this guild's caps apply: scan this guild's rows, not everyone's.
        _, guild_count, _, guild_spend = conn.execute(
            _DAY_TOTALS_GUILD, {"guild": guild_id, "since": day_start}
        ).fetchone()
    guild_day = _pivot(conn, "guild", (guild_id, day_start), guild_count, limits.guild_daily_limit)
    global_day = _pivot(conn, "global", (day_start,), global_count, limits.global_daily_limit)
    return UsageSnapshot(
        block=None,
        in_flight_job_ids=in_flight,
        user_window=user_window,
        guild_day=guild_day,
        global_day=global_day,
        guild_spend=float(guild_spend),
        global_spend=float(global_spend),
    )


def _reserve(
    conn: sqlite3.Connection, request: ReserveRequest, defaults: LimitDefaults, now: float
) -> Reserved | Refusal:
    limits, block, reset_at = _load_limits(
        conn, request.guild_id, request.user_id, request.role_ids, defaults, request.exempt
    )
    usage = _snapshot(conn, request.guild_id, request.user_id, limits, block, reset_at, now)
    decision = decide(limits, usage, now, request.estimated_cost)
    if isinstance(decision, Refusal):
        return decision  # nothing was written; the commit is empty
    job_id, queue_seq = conn.execute(
        """
        INSERT INTO jobs (guild_id, channel_id, user_id, prompt, params, image_url,
                          state, created_at, updated_at, queue_seq,
                          interaction_token, interaction_created_at,
                          placeholder_channel_id, placeholder_message_id, upload_limit)
        VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?,
                (SELECT COALESCE(MAX(queue_seq), 0) + 1 FROM jobs), ?, ?, ?, ?, ?)
        RETURNING id, queue_seq
        """,
        (
            request.guild_id,
            request.channel_id,
            request.user_id,
            request.params.prompt,
            request.params.model_dump_json(),
            request.params.image_url,
            now,
            now,
            request.interaction_token,
            request.interaction_created_at,
            request.placeholder_channel_id,
            request.placeholder_message_id,
            request.upload_limit,
        ),
    ).fetchone()
    price = limits.price_per_job if request.estimated_cost is None else request.estimated_cost
    conn.execute(
        "INSERT INTO quota_ledger (job_id, guild_id, user_id, status, amount, reserved_at)"
        " VALUES (?, ?, ?, 'reserved', ?, ?)",
        (job_id, request.guild_id, request.user_id, price, now),
    )
    return Reserved(
        job_id=int(job_id), queue_seq=int(queue_seq), used=decision.used, limit=decision.limit
    )


class Store:
    """The bot's database. Create with `await Store.open(path)`; close with `await close()`.

    Every method that takes `now` (epoch seconds) uses the injected clock when it is omitted.
    """

    def __init__(self, conn: aiosqlite.Connection, clock: Callable[[], float]) -> None:
        self._conn = conn
        self._clock = clock
        self._lock = asyncio.Lock()

    # -- opening and closing -----------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 10.0,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> Store:
        """Open (creating the file and its parent directory) and migrate the database.

        `synchronous=FULL` fsyncs every commit: a reservation or a `submitting` mark that was
        acknowledged survives a power cut, which is what "no job is ever lost" needs.
        """
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN IMMEDIATE/COMMIT ourselves, never implicitly.
            conn = await aiosqlite.connect(path, isolation_level=None)
        except (OSError, *_UNAVAILABLE_ERRORS) as exc:
            raise StoreUnavailable(f"cannot open {path}: {exc}") from exc
        try:
            await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute(f"PRAGMA synchronous = {synchronous}")
            await conn.execute("PRAGMA foreign_keys = ON")
            await apply_migrations(conn, migrations)
        except BaseException as exc:
            await conn.close()
            if isinstance(exc, _UNAVAILABLE_ERRORS) and not isinstance(exc, _BUG_ERRORS):
                raise StoreUnavailable(f"cannot open {path}: {exc}") from exc
            raise
        return cls(conn, clock)

    async def close(self) -> None:
        """Close the connection after any running transaction finishes."""
        async with self._lock:
            await self._conn.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def schema_version(self) -> int:
        """The database's `PRAGMA user_version`."""
        return await _user_version(self._conn)

    # -- plumbing ----------------------------------------------------------------------------

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    async def _run(
        self, body: Callable[[sqlite3.Connection], T], begin: str = "BEGIN IMMEDIATE"
    ) -> T:
        """Run `body` as one transaction on the connection's own thread, in ONE hand-off.

        Through aiosqlite's public calls every statement is a thread hop (~0.1 ms); a
        reservation has about ten, all while holding the write lock, which would cap the bot
        near 300 reservations/s. aiosqlite has no public "run this on your thread", so this
        uses `Connection._execute` and `_conn` (aiosqlite is pinned below 1.0 and
        `test_store.py` exercises this path on every run)."""
        async with self._lock:
            try:
                raw: sqlite3.Connection = self._conn._conn
            except ValueError as exc:  # closed
                raise StoreUnavailable(str(exc)) from exc
            try:
                result = await self._conn._execute(_transaction, raw, begin, body)
            except _BUG_ERRORS:
                raise
            except _UNAVAILABLE_ERRORS as exc:
                raise StoreUnavailable(str(exc)) from exc
            return cast(T, result)

    @asynccontextmanager
    async def _write(self, begin: str = "BEGIN IMMEDIATE") -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction, serialised in-process by the lock and across connections
        by BEGIN IMMEDIATE. Database trouble surfaces as `StoreUnavailable`.

        `begin="BEGIN"` gives a read transaction: one consistent snapshot that does not take
        SQLite's write lock (other processes keep writing)."""
        async with self._lock:
            try:
                await self._conn.execute(begin)
            except ValueError as exc:  # aiosqlite: the connection is closed
                raise StoreUnavailable(str(exc)) from exc
            except _BUG_ERRORS:
                raise
            except _UNAVAILABLE_ERRORS as exc:
                raise StoreUnavailable(str(exc)) from exc
            try:
                yield self._conn
                await self._conn.execute("COMMIT")
            except BaseException as exc:
                if self._conn.in_transaction:
                    # The original error below is the one worth reporting.
                    with contextlib.suppress(*_UNAVAILABLE_ERRORS):
                        await self._conn.execute("ROLLBACK")
                if isinstance(exc, _UNAVAILABLE_ERRORS) and not isinstance(exc, _BUG_ERRORS):
                    raise StoreUnavailable(str(exc)) from exc
                raise

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            return list(await self._conn.execute_fetchall(sql, params))
        except ValueError as exc:
            raise StoreUnavailable(str(exc)) from exc
        except _BUG_ERRORS:
            raise
        except _UNAVAILABLE_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def _fetchone(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = await self._fetchall(sql, params)
        return rows[0] if rows else None

    @staticmethod
    async def _rows(
        conn: aiosqlite.Connection, sql: str, params: Sequence[Any] | dict[str, Any] = ()
    ) -> list[sqlite3.Row]:
        return list(await conn.execute_fetchall(sql, params))

    @staticmethod
    async def _audit(
        conn: aiosqlite.Connection,
        guild_id: int,
        actor_id: int,
        action: str,
        detail: dict[str, Any],
        now: float,
    ) -> None:
        await conn.execute(
            "INSERT INTO audit_log (guild_id, actor_id, action, detail, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (guild_id, actor_id, action, json.dumps(detail, sort_keys=True), now),
        )

    # -- quota: check and reserve ------------------------------------------------------------

    async def reserve(self, request: ReserveRequest, defaults: LimitDefaults) -> Reserved | Refusal:
        """Check every limit and, if allowed, create the job (`queued`) and hold its quota —
        all in one `BEGIN IMMEDIATE` transaction, so concurrent callers (tasks, connections or
        processes) can never pass more than a limit allows.

        Raises `StoreUnavailable` when the database cannot be used: refuse, never proceed.
        """
        now = self._now(request.now)
        return await self._run(partial(_reserve, request=request, defaults=defaults, now=now))

    async def quota_view(
        self,
        guild_id: int,
        user_id: int,
        role_ids: Iterable[int],
        defaults: LimitDefaults,
        now: float | None = None,
        *,
        exempt: bool = False,
    ) -> QuotaView:
        """A member's effective limits, usage and what `reserve` would answer now."""
        now = self._now(now)

        def body(conn: sqlite3.Connection) -> QuotaView:
            limits, block, reset_at = _load_limits(
                conn, guild_id, user_id, role_ids, defaults, exempt
            )
            usage = _snapshot(conn, guild_id, user_id, limits, block, reset_at, now)
            return QuotaView(limits, usage, decide(limits, usage, now))

        # A read transaction: one consistent snapshot without taking SQLite's write lock.
        return await self._run(body, begin="BEGIN")

    async def effective_limits(
        self,
        guild_id: int,
        user_id: int,
        role_ids: Iterable[int],
        defaults: LimitDefaults,
        *,
        exempt: bool = False,
    ) -> EffectiveLimits:
        """Settings + guild row + the member's roles + user override, resolved."""
        view = await self.quota_view(guild_id, user_id, role_ids, defaults, exempt=exempt)
        return view.limits

    # -- quota: settle -----------------------------------------------------------------------

    async def charge(
        self, job_id: int, cost: float | None = None, now: float | None = None
    ) -> bool:
        """Settle a reservation as charged (the video was delivered). `cost` is Segmind's
        `metrics.cost` when known, else the reserved estimate stands. False if the job's
        reservation was already settled (idempotent: a retry never charges twice)."""
        now = self._now(now)

        def body(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE quota_ledger SET status = 'charged', charged_amount = COALESCE(?, amount),"
                " settled_at = ?, reason = 'delivered' WHERE job_id = ? AND status = 'reserved'",
                (cost, now, job_id),
            )
            return cursor.rowcount == 1

        return await self._run(body)

    async def release(
        self,
        job_id: int,
        reason: ReleaseReason,
        defaults: LimitDefaults | None = None,
        now: float | None = None,
        cost: float | None = None,
    ) -> ReleaseOutcome:
        """Refund a reservation: the user got no video. It stops counting toward any limit.

        For `content_blocked`, only `blocked_prompt_cap` refunds per user per guild per
        rolling 24 h are granted (cap from `defaults`, else `LimitDefaults()`); past it the job
        is charged (`cost` if given, else the estimate) and "charged" is returned — so nobody
        farms free attempts. Idempotent: "already_settled" if charged or released before.
        """
        now = self._now(now)
        cap = (defaults or LimitDefaults()).blocked_prompt_cap

        def body(conn: sqlite3.Connection) -> ReleaseOutcome:
            row = conn.execute(
                "SELECT guild_id, user_id, status FROM quota_ledger WHERE job_id = ?", (job_id,)
            ).fetchone()
            if row is None:
                return "no_such_job"
            guild_id, user_id, status = row
            if status != "reserved":
                return "already_settled"
            if reason == "content_blocked":
                (refunds,) = conn.execute(
                    "SELECT COUNT(*) FROM quota_ledger WHERE guild_id = ? AND user_id = ? "
                    "AND status = 'released' AND reason = 'content_blocked' AND settled_at > ?",
                    (guild_id, user_id, now - DAY_SECONDS),
                ).fetchone()
                if not blocked_refund_allowed(int(refunds), cap):
                    conn.execute(
                        "UPDATE quota_ledger SET status = 'charged', "
                        "charged_amount = COALESCE(?, amount), settled_at = ?, reason = ? "
                        "WHERE job_id = ?",
                        (cost, now, "content_blocked_over_cap", job_id),
                    )
                    return "charged"
            conn.execute(
                "UPDATE quota_ledger SET status = 'released', settled_at = ?, reason = ? "
                "WHERE job_id = ?",
                (now, reason, job_id),
            )
            return "released"

        return await self._run(body)

    async def settle_terminal(
        self, defaults: LimitDefaults | None = None, now: float | None = None
    ) -> int:
        """Crash net for start-up: settle every reservation whose job already reached a
        terminal state (the process died between `transition` and `charge`/`release`).
        Delivered jobs are charged at their recorded cost or the estimate; the rest released
        with their state as the reason. Returns how many were settled."""
        rows = await self._fetchall(
            "SELECT j.id, j.state, j.cost FROM jobs j JOIN quota_ledger l ON l.job_id = j.id "  # noqa: S608
            f"WHERE l.status = 'reserved' AND j.state IN ({_placeholders(len(TERMINAL_STATES))})",
            tuple(sorted(TERMINAL_STATES)),
        )
        settled = 0
        for job_id, state, cost in rows:
            if state == "delivered":
                settled += await self.charge(job_id, cost, now)
            else:
                # The state names the reason: failed, expired, cancelled or unknown.
                reason = cast(ReleaseReason, state)
                outcome = await self.release(job_id, reason, defaults, now)
                settled += outcome in ("released", "charged")
        return settled

    # -- jobs: the state machine ------------------------------------------------------------

    async def transition(
        self,
        job_id: int,
        from_states: JobState | Iterable[JobState],
        to_state: JobState,
        *,
        now: float | None = None,
        **fields: Any,
    ) -> bool:
        """Compare-and-set: move the job to `to_state` only if it is in one of `from_states`,
        setting `fields` (names from `JOB_FIELDS`) in the same committed write. Returns False
        when the job was not in those states (someone else moved it first) — the caller must
        then NOT perform the action the transition guards.

        Only the `from_states` with a legal edge to `to_state` are matched (staying in the same
        state is always legal: a guarded update of fields), so "fail it from wherever it is"
        can list every unfinished state and a job in a state with no such edge is refused
        (False). Raises `IllegalTransition` when no listed state may reach `to_state` at all,
        or a state name is unknown: a bug in the caller, not a race. `submitted_at`,
        `completed_at` and `delivered_at` are stamped on entering those states."""
        requested = (from_states,) if isinstance(from_states, str) else tuple(from_states)
        for state in (*requested, to_state):
            if state not in LEGAL_TRANSITIONS:
                raise IllegalTransition(f"unknown job state {state!r}")
        sources = tuple(s for s in requested if s == to_state or to_state in LEGAL_TRANSITIONS[s])
        if not sources:
            raise IllegalTransition(f"a job never goes from {requested!r} to {to_state!r}")
        unknown = set(fields) - JOB_FIELDS
        if unknown:
            raise ValueError(f"not a job field: {', '.join(sorted(unknown))}")
        now = self._now(now)
        stamp = _STAMPS.get(to_state)
        if stamp is not None and stamp not in fields and to_state not in sources:
            fields[stamp] = now
        assignments = "".join(f", {name} = ?" for name in fields)  # names checked above
        sql = (
            f"UPDATE jobs SET state = ?, updated_at = ?{assignments} "  # noqa: S608
            f"WHERE id = ? AND state IN ({_placeholders(len(sources))})"
        )
        params = (to_state, now, *fields.values(), job_id, *sources)

        def body(conn: sqlite3.Connection) -> bool:
            return conn.execute(sql, params).rowcount == 1

        return await self._run(body)

    async def get_job(self, job_id: int) -> Job | None:
        """One job by id."""
        row = await self._fetchone(f"SELECT {_JOB_COLUMNS} {_JOB_FROM} WHERE j.id = ?", (job_id,))
        return _job(row) if row is not None else None

    async def job_by_request_id(self, request_id: str) -> Job | None:
        """The job Segmind knows as `request_id`."""
        row = await self._fetchone(
            f"SELECT {_JOB_COLUMNS} {_JOB_FROM} WHERE j.request_id = ?",
            (request_id,),
        )
        return _job(row) if row is not None else None

    async def nonterminal_jobs(self) -> list[Job]:
        """Every unfinished job, in queue order: what to resume at start-up."""
        rows = await self._fetchall(
            f"SELECT {_JOB_COLUMNS} {_JOB_FROM} "
            f"WHERE j.state IN ({_placeholders(len(NONTERMINAL_STATES))}) ORDER BY j.queue_seq",
            NONTERMINAL_STATES,
        )
        return [_job(r) for r in rows]

    async def next_queued(self) -> Job | None:
        """The oldest `queued` job, whoever owns it: first come, first served."""
        row = await self._fetchone(
            f"SELECT {_JOB_COLUMNS} {_JOB_FROM} "
            "WHERE j.state = 'queued' ORDER BY j.queue_seq LIMIT 1"
        )
        return _job(row) if row is not None else None

    async def queued_jobs(self) -> list[Job]:
        """Every `queued` job in queue order (position 1 first)."""
        rows = await self._fetchall(
            f"SELECT {_JOB_COLUMNS} {_JOB_FROM} WHERE j.state = 'queued' ORDER BY j.queue_seq"
        )
        return [_job(r) for r in rows]

    async def queued_ids(self) -> list[int]:
        """The ids of every `queued` job in queue order: cheap enough to read on every change."""
        rows = await self._fetchall("SELECT id FROM jobs WHERE state = 'queued' ORDER BY queue_seq")
        return [int(r[0]) for r in rows]

    async def queue_position(self, job_id: int) -> int | None:
        """1 for the next job to start; None when the job is not queued (any more)."""
        row = await self._fetchone(
            "SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND queue_seq <= "
            "(SELECT queue_seq FROM jobs WHERE id = ? AND state = 'queued')",
            (job_id,),
        )
        position = int(row[0]) if row is not None else 0
        return position or None

    async def count_queued(self) -> int:
        """How many jobs wait in the bot's own queue."""
        row = await self._fetchone("SELECT COUNT(*) FROM jobs WHERE state = 'queued'")
        return int(row[0]) if row is not None else 0

    async def count_in_flight(self) -> int:
        """Jobs holding a Segmind slot: submitting, submitted, completed or delivering."""
        row = await self._fetchone(
            f"SELECT COUNT(*) FROM jobs WHERE state IN ({_placeholders(len(IN_FLIGHT_STATES))})",  # noqa: S608
            IN_FLIGHT_STATES,
        )
        return int(row[0]) if row is not None else 0

    async def recent_durations(self, limit: int = 20) -> list[float]:
        """Seconds from submission to completion of the last `limit` delivered jobs, newest
        first: the poll estimator's prior."""
        rows = await self._fetchall(
            "SELECT completed_at - submitted_at FROM jobs WHERE state = 'delivered' "
            "AND submitted_at IS NOT NULL AND completed_at IS NOT NULL "
            "ORDER BY completed_at DESC LIMIT ?",
            (limit,),
        )
        return [float(r[0]) for r in rows]

    # -- moderator queries --------------------------------------------------------------------

    async def usage(
        self,
        guild_id: int,
        user_id: int | None = None,
        days: float = 1.0,
        now: float | None = None,
    ) -> UsageSummary:
        """Jobs created in the guild (or by one user there) in the last `days`."""
        since = self._now(now) - days * DAY_SECONDS
        row = await self._fetchone(
            """
            SELECT COUNT(*),
                   COALESCE(SUM(j.state = 'delivered'), 0),
                   COALESCE(SUM(j.state IN ('failed', 'expired', 'unknown')), 0),
                   COALESCE(SUM(j.state = 'cancelled'), 0),
                   COALESCE(SUM(j.state IN ('queued', 'submitting', 'submitted', 'completed',
                                            'delivering')), 0),
                   COALESCE(SUM(l.status = 'released'), 0),
                   COALESCE(SUM(CASE WHEN l.status = 'charged' THEN l.charged_amount END), 0)
            FROM jobs j LEFT JOIN quota_ledger l ON l.job_id = j.id
            WHERE j.guild_id = ? AND j.created_at > ? AND (? IS NULL OR j.user_id = ?)
            """,
            (guild_id, since, user_id, user_id),
        )
        assert row is not None  # an aggregate always yields one row
        jobs, delivered, failed, cancelled, in_progress, refunded, cost = row
        return UsageSummary(
            jobs=int(jobs),
            delivered=int(delivered),
            failed=int(failed),
            cancelled=int(cancelled),
            in_progress=int(in_progress),
            refunded=int(refunded),
            cost=float(cost),
        )

    async def top_users(
        self, guild_id: int, days: float = 1.0, limit: int = 10, now: float | None = None
    ) -> list[UserUsage]:
        """The guild's heaviest users over the last `days`, most jobs first."""
        since = self._now(now) - days * DAY_SECONDS
        rows = await self._fetchall(
            """
            SELECT j.user_id, COUNT(*), COALESCE(SUM(j.state = 'delivered'), 0),
                   COALESCE(SUM(CASE WHEN l.status = 'charged' THEN l.charged_amount END), 0)
            FROM jobs j LEFT JOIN quota_ledger l ON l.job_id = j.id
            WHERE j.guild_id = ? AND j.created_at > ?
            GROUP BY j.user_id ORDER BY COUNT(*) DESC, j.user_id LIMIT ?
            """,
            (guild_id, since, limit),
        )
        return [UserUsage(int(r[0]), int(r[1]), int(r[2]), float(r[3])) for r in rows]

    async def recent_jobs(
        self, guild_id: int, user_id: int | None = None, limit: int = 10
    ) -> list[Job]:
        """The guild's (or one user's) latest jobs, newest first; each carries the channel and
        message ids a link needs."""
        rows = await self._fetchall(
            f"SELECT {_JOB_COLUMNS} {_JOB_FROM} "
            "WHERE j.guild_id = ? AND (? IS NULL OR j.user_id = ?) ORDER BY j.id DESC LIMIT ?",
            (guild_id, user_id, user_id, limit),
        )
        return [_job(r) for r in rows]

    async def export_jobs(
        self, guild_id: int, days: float = 30.0, now: float | None = None
    ) -> list[Job]:
        """Every job in the guild created within `days`, oldest first (for a CSV export)."""
        since = self._now(now) - days * DAY_SECONDS
        rows = await self._fetchall(
            f"SELECT {_JOB_COLUMNS} {_JOB_FROM} "
            "WHERE j.guild_id = ? AND j.created_at > ? ORDER BY j.id",
            (guild_id, since),
        )
        return [_job(r) for r in rows]

    # -- moderator settings (every change is audited in the same transaction) -----------------

    async def get_guild_limits(self, guild_id: int) -> GuildLimits:
        """The guild's own limit settings (`None` fields use the bot defaults)."""
        row = await self._fetchone(
            "SELECT user_limit, window_hours, concurrency, daily_limit, spend_cap "
            "FROM guild_settings WHERE guild_id = ?",
            (guild_id,),
        )
        return GuildLimits(*row) if row is not None else GuildLimits()

    async def set_guild_limits(
        self, guild_id: int, limits: GuildLimits, *, actor_id: int, now: float | None = None
    ) -> GuildLimits:
        """Replace the guild's limit settings; returns the previous ones."""
        now = self._now(now)
        async with self._write() as conn:
            old_rows = await self._rows(
                conn,
                "SELECT user_limit, window_hours, concurrency, daily_limit, spend_cap "
                "FROM guild_settings WHERE guild_id = ?",
                (guild_id,),
            )
            old = GuildLimits(*old_rows[0]) if old_rows else GuildLimits()
            await conn.execute(
                """
                INSERT INTO guild_settings
                    (guild_id, user_limit, window_hours, concurrency, daily_limit, spend_cap)
                VALUES (?, ?, ?, ?, ?, ?)
                ON CONFLICT (guild_id) DO UPDATE SET
                    user_limit = excluded.user_limit, window_hours = excluded.window_hours,
                    concurrency = excluded.concurrency, daily_limit = excluded.daily_limit,
                    spend_cap = excluded.spend_cap
                """,
                (
                    guild_id,
                    limits.user_limit,
                    limits.window_hours,
                    limits.concurrency,
                    limits.daily_limit,
                    limits.spend_cap,
                ),
            )
            await self._audit(
                conn,
                guild_id,
                actor_id,
                "limits.set",
                {"old": asdict(old), "new": asdict(limits)},
                now,
            )
        return old

    async def _overrides(self, table: str, key: str, guild_id: int) -> dict[int, LimitOverride]:
        rows = await self._fetchall(
            f"SELECT {key}, user_limit, window_hours, concurrency FROM {table} "  # noqa: S608  # table/key are literals below
            "WHERE guild_id = ?",
            (guild_id,),
        )
        return {int(r[0]): LimitOverride(*r[1:]) for r in rows}

    async def _set_override(
        self,
        table: str,
        key: str,
        guild_id: int,
        target_id: int,
        override: LimitOverride | None,
        actor_id: int,
        now: float | None,
    ) -> None:
        now = self._now(now)
        action = f"{table.removesuffix('s')}.{'clear' if override is None else 'set'}"
        async with self._write() as conn:
            if override is None or override.is_empty:
                await conn.execute(
                    f"DELETE FROM {table} WHERE guild_id = ? AND {key} = ?",  # noqa: S608
                    (guild_id, target_id),
                )
                detail: dict[str, Any] = {key: target_id}
            else:
                await conn.execute(
                    f"INSERT INTO {table} (guild_id, {key}, user_limit, window_hours, concurrency) "  # noqa: S608
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (guild_id, "
                    f"{key}) DO UPDATE SET user_limit = excluded.user_limit, "
                    "window_hours = excluded.window_hours, concurrency = excluded.concurrency",
                    (
                        guild_id,
                        target_id,
                        override.user_limit,
                        override.window_hours,
                        override.concurrency,
                    ),
                )
                detail = {key: target_id, **asdict(override)}
            await self._audit(conn, guild_id, actor_id, action, detail, now)

    async def role_overrides(self, guild_id: int) -> dict[int, LimitOverride]:
        """Every role override in the guild, by role id."""
        return await self._overrides("role_overrides", "role_id", guild_id)

    async def set_role_override(
        self,
        guild_id: int,
        role_id: int,
        override: LimitOverride | None,
        *,
        actor_id: int,
        now: float | None = None,
    ) -> None:
        """Set a role's override; `None` (or an all-`None` override) removes it."""
        await self._set_override(
            "role_overrides", "role_id", guild_id, role_id, override, actor_id, now
        )

    async def user_overrides(self, guild_id: int) -> dict[int, LimitOverride]:
        """Every user override in the guild, by user id."""
        return await self._overrides("user_overrides", "user_id", guild_id)

    async def set_user_override(
        self,
        guild_id: int,
        user_id: int,
        override: LimitOverride | None,
        *,
        actor_id: int,
        now: float | None = None,
    ) -> None:
        """Set a user's override; `None` (or an all-`None` override) removes it."""
        await self._set_override(
            "user_overrides", "user_id", guild_id, user_id, override, actor_id, now
        )

    async def exempt_roles(self, guild_id: int) -> frozenset[int]:
        """Roles whose members have no count limit in the guild."""
        rows = await self._fetchall(
            "SELECT role_id FROM exempt_roles WHERE guild_id = ?", (guild_id,)
        )
        return frozenset(int(r[0]) for r in rows)

    async def set_role_exempt(
        self, guild_id: int, role_id: int, exempt: bool, *, actor_id: int, now: float | None = None
    ) -> bool:
        """Make a role exempt (or not). Returns whether anything changed."""
        now = self._now(now)
        async with self._write() as conn:
            if exempt:
                cursor = await conn.execute(
                    "INSERT OR IGNORE INTO exempt_roles (guild_id, role_id) VALUES (?, ?)",
                    (guild_id, role_id),
                )
            else:
                cursor = await conn.execute(
                    "DELETE FROM exempt_roles WHERE guild_id = ? AND role_id = ?",
                    (guild_id, role_id),
                )
            changed = cursor.rowcount == 1
            if changed:
                action = "exempt_role.add" if exempt else "exempt_role.remove"
                await self._audit(conn, guild_id, actor_id, action, {"role_id": role_id}, now)
            return changed

    async def block_user(
        self,
        guild_id: int,
        user_id: int,
        *,
        reason: str | None,
        actor_id: int,
        now: float | None = None,
    ) -> None:
        """Block a user from /veo in the guild (replacing any earlier block's reason)."""
        now = self._now(now)
        async with self._write() as conn:
            await conn.execute(
                "INSERT INTO blocks (guild_id, user_id, reason, blocked_by, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (guild_id, user_id) DO UPDATE SET "
                "reason = excluded.reason, blocked_by = excluded.blocked_by, "
                "created_at = excluded.created_at",
                (guild_id, user_id, reason, actor_id, now),
            )
            await self._audit(
                conn, guild_id, actor_id, "block", {"user_id": user_id, "reason": reason}, now
            )

    async def unblock_user(
        self, guild_id: int, user_id: int, *, actor_id: int, now: float | None = None
    ) -> bool:
        """Lift a block; False if the user was not blocked."""
        now = self._now(now)
        async with self._write() as conn:
            cursor = await conn.execute(
                "DELETE FROM blocks WHERE guild_id = ? AND user_id = ?", (guild_id, user_id)
            )
            if cursor.rowcount != 1:
                return False
            await self._audit(conn, guild_id, actor_id, "unblock", {"user_id": user_id}, now)
            return True

    async def get_block(self, guild_id: int, user_id: int) -> Block | None:
        """The user's block in the guild, if any."""
        row = await self._fetchone(
            "SELECT reason, blocked_by, created_at FROM blocks WHERE guild_id = ? AND user_id = ?",
            (guild_id, user_id),
        )
        return Block(guild_id, user_id, *row) if row is not None else None

    async def blocks(self, guild_id: int) -> list[Block]:
        """Every block in the guild, newest first."""
        rows = await self._fetchall(
            "SELECT user_id, reason, blocked_by, created_at FROM blocks WHERE guild_id = ? "
            "ORDER BY created_at DESC",
            (guild_id,),
        )
        return [Block(guild_id, *r) for r in rows]

    async def reset_user_window(
        self, guild_id: int, user_id: int, *, actor_id: int, now: float | None = None
    ) -> None:
        """Give the user a fresh window: reservations made before now stop counting toward
        their per-user limit. History, guild and global counts and spend are untouched."""
        now = self._now(now)
        async with self._write() as conn:
            await conn.execute(
                "INSERT INTO window_resets (guild_id, user_id, reset_at, reset_by) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (guild_id, user_id) DO UPDATE SET "
                "reset_at = excluded.reset_at, reset_by = excluded.reset_by",
                (guild_id, user_id, now, actor_id),
            )
            await self._audit(conn, guild_id, actor_id, "window.reset", {"user_id": user_id}, now)

    async def get_log_channel(self, guild_id: int) -> int | None:
        """The channel where moderation events are posted, if set."""
        row = await self._fetchone(
            "SELECT log_channel_id FROM guild_settings WHERE guild_id = ?", (guild_id,)
        )
        return int(row[0]) if row is not None and row[0] is not None else None

    async def set_log_channel(
        self, guild_id: int, channel_id: int | None, *, actor_id: int, now: float | None = None
    ) -> None:
        """Set (or with None clear) the guild's log channel."""
        now = self._now(now)
        async with self._write() as conn:
            await conn.execute(
                "INSERT INTO guild_settings (guild_id, log_channel_id) VALUES (?, ?) "
                "ON CONFLICT (guild_id) DO UPDATE SET log_channel_id = excluded.log_channel_id",
                (guild_id, channel_id),
            )
            await self._audit(
                conn, guild_id, actor_id, "log_channel.set", {"channel_id": channel_id}, now
            )

    async def record_audit(
        self,
        guild_id: int,
        actor_id: int,
        action: str,
        detail: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> None:
        """Write an audit entry for an action taken outside the store (e.g. a mod cancel)."""
        now = self._now(now)
        async with self._write() as conn:
            await self._audit(conn, guild_id, actor_id, action, detail or {}, now)

    async def audit_entries(self, guild_id: int, limit: int = 20) -> list[AuditEntry]:
        """The guild's latest audit entries, newest first."""
        rows = await self._fetchall(
            "SELECT id, guild_id, actor_id, action, detail, created_at FROM audit_log "
            "WHERE guild_id = ? ORDER BY id DESC LIMIT ?",
            (guild_id, limit),
        )
        return [
            AuditEntry(int(r[0]), int(r[1]), int(r[2]), r[3], json.loads(r[4]), float(r[5]))
            for r in rows
        ]


__all__ = [
    "ALL_STATES",
    "IN_FLIGHT_STATES",
    "JOB_FIELDS",
    "LEGAL_TRANSITIONS",
    "MIGRATIONS",
    "NONTERMINAL_STATES",
    "SCHEMA_VERSION",
    "TERMINAL_STATES",
    "AuditEntry",
    "IllegalTransition",
    "Job",
    "JobState",
    "LedgerStatus",
    "Migration",
    "QuotaView",
    "ReleaseOutcome",
    "ReleaseReason",
    "ReserveRequest",
    "Reserved",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "UsageSummary",
    "UserUsage",
    "apply_migrations",
]
