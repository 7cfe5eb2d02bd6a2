"""SQLite persistence: jobs and their state machine, the quota ledger, moderation settings, audit.

The store knows nothing of Discord or Segmind: guild/channel/user/role ids are plain ints and a
Segmind request id is an opaque string.

Concurrency model. One `SqliteStore` owns one aiosqlite connection (one worker thread). Every
write runs as one `BEGIN IMMEDIATE` transaction under an in-process `asyncio.Lock`: the lock
stops two tasks from interleaving statements on the shared connection, and `BEGIN IMMEDIATE`
takes SQLite's write lock before the first read, so a check-then-insert (`reserve`) can never
be raced by another connection or process either. Readers never block writers (WAL).

The queries are grouped by concern, one mixin each: `ledger`, `spend`, `jobs`, `moderation`,
`reports`, `reconcile`; `connection` holds the plumbing they share and `migrations` the schema.
The queries are grouped by concern, one mixin each: `ledger`, `jobs`, `moderation`, `rules`,
`reports`; `connection` holds the plumbing they share and `migrations` the schema.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import aiosqlite

from bot.store.model import StoreUnavailable
from bot.store.sqlite.approvals import ApprovalQueries
from bot.store.sqlite.connection import _UNAVAILABLE_ERRORS, _store_error
from bot.store.sqlite.gateway import GatewayQueries
from bot.store.sqlite.jobs import JobQueries
from bot.store.sqlite.lease import LeaseQueries
from bot.store.sqlite.ledger import LedgerQueries
from bot.store.sqlite.migrations import MIGRATIONS, Migration, apply_migrations
from bot.store.sqlite.moderation import ModerationQueries
from bot.store.sqlite.reconcile import ReconcileQueries
from bot.store.sqlite.reports import ReportQueries
from bot.store.sqlite.rules import RuleQueries
from bot.store.sqlite.spend import SpendQueries


class SqliteStore(
    LedgerQueries,
    SpendQueries,
    JobQueries,
    ModerationQueries,
    ReportQueries,
    ReconcileQueries,
    ApprovalQueries,
    GatewayQueries,
    RuleQueries,
    LeaseQueries,
):
    """`bot.store.protocol.Store` on one SQLite file. Create with `await SqliteStore.open(path)`;
    close with `await close()`. `now` arguments default to the injected clock."""

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
    ) -> SqliteStore:
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
            if isinstance(exc, sqlite3.Error):
                raise _store_error(exc, f"cannot open {path}") from exc
            raise
        return cls(conn, clock)
