"""The SQLite schema as numbered migrations, recorded in `PRAGMA user_version`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import aiosqlite

from bot.store.model import ALL_STATES, BILLED_SOURCES, DISCREPANCY_KINDS, StoreError


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]
    # The statements rewrite `sqlite_master` (a CHECK list SQLite cannot ALTER): the schema
    # cookie is bumped in the same transaction so every connection, this one included,
    # reloads the schema instead of enforcing the old text.
    bump_schema_version: bool = False


_STATE_CHECK = ", ".join(f"'{s}'" for s in ALL_STATES)
_BILLED_CHECK = ", ".join(f"'{s}'" for s in BILLED_SOURCES)
# Every job reserved before the spend ledger existed, at what is known of it: the cost Segmind
# reported; 0 for a job that ended without ever being sent (no request id, not `unknown`);
# otherwise its reserved estimate stays held (fail closed: it may have been billed).
SPEND_BACKFILL = """
    INSERT INTO spend_ledger
        (job_id, guild_id, user_id, quoted, held_at, billed, billed_source, billed_at)
    SELECT job_id, guild_id, user_id, amount, reserved_at, billed,
           CASE WHEN billed IS NOT NULL THEN 'metrics' END,
           CASE WHEN billed IS NOT NULL THEN settled END
    FROM (
        SELECT l.job_id, l.guild_id, l.user_id, l.amount, l.reserved_at,
               COALESCE(l.settled_at, j.updated_at) AS settled,
               CASE
                   WHEN j.cost IS NOT NULL AND j.cost >= 0 THEN j.cost
                   WHEN j.request_id IS NULL AND j.state IN ('failed', 'expired', 'cancelled')
                       THEN 0
               END AS billed
        FROM quota_ledger l JOIN jobs j ON j.id = l.job_id
    ) AS known
"""  # plain SQL both backends run (bot.store.postgres.migrations uses it too)
_DISCREPANCY_CHECK = ", ".join(f"'{k}'" for k in DISCREPANCY_KINDS)

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
    Migration(
        4,
        "the owner's spend ledger, apart from the member's quota; guild monthly budgets",
        (
            # Its own table, not more columns on quota_ledger: a member's refund rewrites that
            # row's status, and nothing a refund writes may ever lower what the owner spent.
            # One row per job, written with the reservation: the quote is held until Segmind's
            # bill replaces it (`billed`, NULL while unknown).
            f"""
            CREATE TABLE spend_ledger (
                job_id INTEGER PRIMARY KEY REFERENCES jobs (id),
                guild_id INTEGER NOT NULL,
                user_id INTEGER NOT NULL,
                quoted REAL NOT NULL CHECK (quoted >= 0),
                held_at REAL NOT NULL,
                billed REAL CHECK (billed >= 0),
                billed_source TEXT CHECK (billed_source IN ({_BILLED_CHECK})),
                billed_at REAL,
                CHECK ((billed IS NULL) = (billed_source IS NULL))
            )
            """,
            # Covering indexes for the caps' sums (global / per guild) and the daily report.
            "CREATE INDEX spend_time ON spend_ledger (held_at, guild_id, quoted, billed)",
            "CREATE INDEX spend_guild_time ON spend_ledger (guild_id, held_at, quoted, billed)",
            SPEND_BACKFILL,
            "ALTER TABLE guild_settings ADD COLUMN monthly_budget REAL CHECK (monthly_budget >= 0)",
        ),
    ),
    Migration(
        5,
        "money truth: submit start times, discrepancies with Segmind's record, task cursors",
        (
            "ALTER TABLE jobs ADD COLUMN submit_started_at REAL",
            # A job already in `submitting` from before this version: the last write is the
            # best guess at when its POST began (it moved there, and nothing wrote it since).
            "UPDATE jobs SET submit_started_at = updated_at WHERE state = 'submitting'",
            f"""
            CREATE TABLE discrepancies (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                kind TEXT NOT NULL CHECK (kind IN ({_DISCREPANCY_CHECK})),
                request_id TEXT NOT NULL,
                job_id INTEGER REFERENCES jobs (id),
                guild_id INTEGER,
                billed REAL,
                expected REAL,
                detail TEXT NOT NULL DEFAULT '',
                created_at REAL NOT NULL,
                posted_at REAL,
                UNIQUE (kind, request_id)
            )
            """,
            "CREATE INDEX discrepancies_guild_time ON discrepancies (guild_id, created_at)",
            "CREATE INDEX discrepancies_unposted ON discrepancies (id) WHERE posted_at IS NULL",
            """
            CREATE TABLE task_cursors (
                name TEXT PRIMARY KEY,
                value TEXT NOT NULL
            )
            """,
        ),
    ),
    Migration(
        6,
        "the runner lease (one runner per Segmind key, fenced by epoch) and the Segmind budget",
        (
            # `name` is a fingerprint of the Segmind key, never the key. `expires_at` is in
            # the database's clock: SQLite's julianday('now'), the host's clock, which every
            # process sharing the file reads (a SQLite file is never shared across hosts).
            """
            CREATE TABLE runner_lease (
                name TEXT PRIMARY KEY,
                owner TEXT NOT NULL,
                epoch INTEGER NOT NULL CHECK (epoch >= 1),
                expires_at REAL NOT NULL
            )
            """,
            # The window's grant times (a JSON list, at most the budget's size) and a 429
            # pause, wall-clock epoch seconds, so a new runner continues the old one's window.
            """
            CREATE TABLE segmind_budget (
                name TEXT PRIMARY KEY,
                grants TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(grants)),
                paused_until REAL
            )
            """,
        ),
    ),
    Migration(
        7,
        "one job per Discord event; the IDENTIFY slots shared by every node",
        (
            # The interaction or message that asked for the job: two gateway sessions on one
            # shard (a deploy's overlap) deliver the same event, and it must make one job.
            "ALTER TABLE jobs ADD COLUMN event_id INTEGER",
            "CREATE UNIQUE INDEX jobs_event_id ON jobs (event_id) WHERE event_id IS NOT NULL",
            # Per max_concurrency bucket, when the next session may start (database clock).
            """
            CREATE TABLE identify_slots (
                bucket INTEGER PRIMARY KEY CHECK (bucket >= 0),
                next_at REAL NOT NULL
            )
            """,
        ),
    ),
    Migration(
        8,
        "approval lane: the awaiting_approval state, guild lane settings, held requests",
        (
            # SQLite cannot ALTER a CHECK, and rebuilding `jobs` needs foreign keys off, which
            # cannot happen inside this transaction. Its documented writable_schema procedure
            # for changes every stored row still satisfies is used instead: the state list only
            # grows. A database created by this code already lists every state (migration 1
            # formats `ALL_STATES`), hence the `instr` guard.
            "PRAGMA writable_schema = ON",
            "UPDATE sqlite_master SET sql = replace(sql, '''unknown''))', "
            "'''unknown'', ''awaiting_approval''))') "
            "WHERE type = 'table' AND name = 'jobs' AND instr(sql, 'awaiting_approval') = 0",
            "PRAGMA writable_schema = OFF",
            """
            CREATE TABLE approval_settings (
                guild_id INTEGER PRIMARY KEY,
                enabled INTEGER NOT NULL DEFAULT 0 CHECK (enabled IN (0, 1)),
                channel_id INTEGER,
                threshold REAL NOT NULL DEFAULT 0 CHECK (threshold >= 0),
                exempt_roles TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(exempt_roles)),
                approver_role_id INTEGER,
                expiry_seconds REAL CHECK (expiry_seconds > 0)
            )
            """,
            """
            CREATE TABLE approvals (
                job_id INTEGER PRIMARY KEY REFERENCES jobs (id),
                guild_id INTEGER NOT NULL,
                quote REAL NOT NULL,
                created_at REAL NOT NULL,
                expires_at REAL NOT NULL,
                card_channel_id INTEGER,
                card_message_id INTEGER,
                decision TEXT CHECK (decision IN ('approved', 'denied', 'expired')),
                decided_by INTEGER,
                decided_at REAL,
                reason TEXT
            )
            """,
            # The sweep reads only the undecided ones, by expiry.
            "CREATE INDEX approvals_due ON approvals (expires_at) WHERE decision IS NULL",
        ),
        bump_schema_version=True,
    ),
    Migration(
        9,
        "moderation: banned words, allowed channels, the gallery channel and its posts",
        (
            # `entry_key` is the normalised form (bot.moderation.entry_key): two spellings of
            # one word are one entry; `entry` is kept as typed, to show.
            """
            CREATE TABLE banned_words (
                id INTEGER PRIMARY KEY AUTOINCREMENT,  -- the order they were added in
                guild_id INTEGER NOT NULL,
                entry_key TEXT NOT NULL CHECK (entry_key <> ''),
                entry TEXT NOT NULL,
                added_by INTEGER NOT NULL,
                created_at REAL NOT NULL,
                UNIQUE (guild_id, entry_key)
            )
            """,
            """
            CREATE TABLE allowed_channels (
                guild_id INTEGER NOT NULL,
                channel_id INTEGER NOT NULL,
                added_by INTEGER NOT NULL,
                created_at REAL NOT NULL,
                PRIMARY KEY (guild_id, channel_id)
            )
            """,
            "ALTER TABLE guild_settings ADD COLUMN gallery_channel_id INTEGER",
            "ALTER TABLE jobs ADD COLUMN gallery_channel_id INTEGER",
            "ALTER TABLE jobs ADD COLUMN gallery_message_id INTEGER",
        ),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


async def _pragma_int(conn: aiosqlite.Connection, name: str) -> int:
    rows = list(await conn.execute_fetchall(f"PRAGMA {name}"))  # a name from this module
    return int(rows[0][0])


async def _user_version(conn: aiosqlite.Connection) -> int:
    return await _pragma_int(conn, "user_version")


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
            if migration.bump_schema_version:
                cookie = await _pragma_int(conn, "schema_version")
                await conn.execute(f"PRAGMA schema_version = {cookie + 1}")
            # PRAGMA takes no parameters; the version is an int from this module.
            await conn.execute(f"PRAGMA user_version = {int(migration.version)}")
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
        current = migration.version
    return current
