"""The SQLite schema as numbered migrations, recorded in `PRAGMA user_version`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import aiosqlite

from bot.store.model import ALL_STATES, StoreError


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
