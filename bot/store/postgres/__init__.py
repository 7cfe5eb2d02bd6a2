"""PostgreSQL persistence: the same jobs, ledger, moderation settings and audit as the SQLite
backend, for bots that outgrow one file (several processes or nodes sharing one database).

Concurrency model. One `PostgresStore` owns an asyncpg pool: statements of different tasks run
on different connections at once. Single-statement writes (`transition`, `charge`) are atomic
by themselves; multi-statement ones run in a transaction. `reserve` takes transaction-scoped
advisory locks — only for the scopes whose limits apply — before it counts anything, so the
check and the insert are exact across tasks, pools and nodes (see `ledger`).

The queries are grouped by concern as on SQLite, one mixin each: `ledger`, `spend`, `jobs`,
`moderation`, `reports`, `reconcile`; `connection` holds the plumbing and `migrations` the
schema.
The queries are grouped by concern as on SQLite, one mixin each: `ledger`, `jobs`,
`moderation`, `rules`, `reports`; `connection` holds the plumbing and `migrations` the schema.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import asyncpg

from bot.store.model import StoreError
from bot.store.postgres.approvals import ApprovalQueries
from bot.store.postgres.connection import DRIVER_ERRORS, store_error
from bot.store.postgres.gateway import GatewayQueries
from bot.store.postgres.jobs import JobQueries
from bot.store.postgres.lease import LeaseQueries
from bot.store.postgres.ledger import LedgerQueries
from bot.store.postgres.migrations import MIGRATIONS, SCHEMA_VERSION, apply_migrations
from bot.store.postgres.moderation import ModerationQueries
from bot.store.postgres.reconcile import ReconcileQueries
from bot.store.postgres.reports import ReportQueries
from bot.store.postgres.rules import RuleQueries
from bot.store.postgres.spend import SpendQueries
from bot.store.sqlite.migrations import Migration

# A malformed URL is a ValueError (asyncpg's ClientConfigurationError): the bot cannot start.
_OPEN_ERRORS: tuple[type[BaseException], ...] = (*DRIVER_ERRORS, ValueError)


class PostgresStore(
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
    """`bot.store.protocol.Store` on a PostgreSQL database. Create with
    `await PostgresStore.open(url)`; close with `await close()`. `now` arguments default to
    the injected clock."""

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 10.0,
        command_timeout: float = 10.0,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> PostgresStore:
        """Connect a pool to `url` (`postgresql://user:password@host:port/dbname`, libpq
        style) and migrate the database.

        `command_timeout` bounds every statement, lock waits included: a reservation stuck
        behind a wedged peer fails closed (`StoreUnavailable`) instead of hanging the bot."""
        try:
            pool: asyncpg.Pool[asyncpg.Record] = await asyncpg.create_pool(
                url,
                min_size=min_size,
                max_size=max_size,
                timeout=connect_timeout,
                command_timeout=command_timeout,
            )
        except _OPEN_ERRORS as exc:
            # Never the URL in the message: it may carry the password.
            raise store_error(exc, "cannot connect to PostgreSQL") from exc
        try:
            async with pool.acquire() as conn:
                await apply_migrations(conn, migrations)
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, StoreError):
                raise
            if isinstance(exc, DRIVER_ERRORS):
                raise store_error(exc, "cannot migrate the PostgreSQL database") from exc
            raise
        return cls(pool, clock)


__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "PostgresStore", "apply_migrations"]
