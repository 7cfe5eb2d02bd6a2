"""The PostgreSQL backend's plumbing: an asyncpg pool, its transactions, advisory-lock keys, and
how driver trouble becomes `StoreUnavailable`. The query mixins build on `PostgresBase`."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Self, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from bot.store.model import Fenced, Lease, StoreError, StoreUnavailable

# A connection handed out by the pool (what `_transaction` yields and the mixins query on).
# (A string: the stubs make these generic, the runtime classes are not subscriptable.)
Connection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"

# SQLSTATE classes where the statement itself was refused on its merits (a constraint, a bad
# value, a typo in our SQL): a bug in the caller or in this module, not an unreachable
# database. Everything else the server or the driver raises — connection lost, server shutting
# down, too many clients, a timeout, a deadlock — means "try again later": fail closed.
_BUG_SQLSTATE_CLASSES = frozenset({"22", "23", "42"})
# What, besides the server's own errors, says the database cannot be used right now.
_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable (ConnectionError is one)
    TimeoutError,  # connect or command timeout (asyncio.TimeoutError is this on 3.11)
    asyncpg.InterfaceError,  # the pool or connection is closed, or was lost mid-call
)


def store_error(exc: BaseException, context: str = "") -> StoreError:
    """What a caller sees of a driver error: never an asyncpg type, which another backend would
    not raise. The message carries the server's text, never the connection URL (it may hold a
    password)."""
    text = f"{context}: {exc}" if context else str(exc) or type(exc).__name__
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = str(getattr(exc, "sqlstate", "") or "")
        if sqlstate[:2] in _BUG_SQLSTATE_CLASSES:
            return StoreError(f"the database refused a statement: {text}")
    return StoreUnavailable(text)


DRIVER_ERRORS: tuple[type[BaseException], ...] = (asyncpg.PostgresError, *_UNAVAILABLE_ERRORS)


def lock_key(*parts: object) -> int:
    """A stable signed 64-bit advisory-lock key for a name such as ("guild", 123).

    Discord ids use all 63 bits, so a scope cannot be packed beside one: the key is a hash. A
    collision only makes two unrelated callers wait for each other, never lets one through."""
    digest = hashlib.blake2b(":".join(map(str, ("veo", *parts))).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def check_fence(conn: Connection, fence: Lease) -> None:
    """Inside a transaction: refuse it unless `fence` is still the newest runner term."""
    epoch = await conn.fetchval(
        "SELECT epoch FROM runner_fence WHERE name = $1 FOR SHARE", fence.name
    )
    if epoch is None or int(epoch) != fence.epoch:
        raise Fenced(f"runner epoch {fence.epoch} of {fence.name} was superseded")


class PostgresBase:
    """The pool and the injected clock, shared by every query mixin."""

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record], clock: Callable[[], float]) -> None:
        self._pool = pool
        self._clock = clock
        # Set only on a view made by `fenced()`: every transaction checks it first.
        self._fence: Lease | None = None

    def fenced(self, lease: Lease) -> Self:
        """This store as the runner of `lease` writes to it: the same pool, but every write
        (transitions, charge, release, the budget) runs in a transaction that first checks,
        holding the lease's `runner_fence` row FOR SHARE, that its epoch is still the newest,
        else raises `Fenced`. A takeover's UPDATE of that row waits for such transactions to
        end, and every one after it sees the new epoch. Reads are not fenced. Close the store,
        never the view."""
        view = copy.copy(self)
        view._fence = lease
        return view

    # -- closing -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the pool after the running transactions finish."""
        await self._pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- plumbing ----------------------------------------------------------------------------

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Connection]:
        """One transaction on a pooled connection (READ COMMITTED: each statement sees what
        committed before it began, which is what makes "lock, then read" exact). Driver
        trouble surfaces as `StoreUnavailable`, a refused statement as `StoreError`; either
        way nothing of the transaction is kept."""
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                if self._fence is not None:
                    await check_fence(conn, self._fence)
                yield conn
        except DRIVER_ERRORS as exc:
            raise store_error(exc) from exc

    async def _fetch(self, sql: str, *params: Any) -> list[asyncpg.Record]:
        try:
            return list(await self._pool.fetch(sql, *params))
        except DRIVER_ERRORS as exc:
            raise store_error(exc) from exc

    async def _fetchrow(self, sql: str, *params: Any) -> asyncpg.Record | None:
        rows = await self._fetch(sql, *params)
        return rows[0] if rows else None

    async def _fetchval(self, sql: str, *params: Any) -> Any:
        row = await self._fetchrow(sql, *params)
        return row[0] if row is not None else None

    @staticmethod
    async def _lock(conn: Connection, keys: Sequence[int]) -> None:
        """Take these transaction-scoped advisory locks, in this order, in ONE statement
        (`SELECT` evaluates its target list left to right). Every caller names them widest
        first (global, guild, user), so two callers can never wait on each other in a cycle."""
        if not keys:
            return
        calls = ", ".join(f"pg_advisory_xact_lock(${i})" for i in range(1, len(keys) + 1))
        await conn.execute(f"SELECT {calls}", *keys)  # only "$n" marks formatted

    @staticmethod
    async def _audit(
        conn: Connection,
        guild_id: int,
        actor_id: int,
        action: str,
        detail: dict[str, Any],
        now: float,
    ) -> None:
        await conn.execute(
            "INSERT INTO audit_log (guild_id, actor_id, action, detail, created_at) "
            "VALUES ($1, $2, $3, $4, $5)",
            guild_id,
            actor_id,
            action,
            json.dumps(detail, sort_keys=True),
            now,
        )


def affected(status: str) -> int:
    """Rows an INSERT/UPDATE/DELETE touched, from asyncpg's command tag ("UPDATE 1")."""
    return int(status.rsplit(" ", 1)[-1]) if status else 0


__all__ = [
    "DRIVER_ERRORS",
    "Connection",
    "PostgresBase",
    "affected",
    "lock_key",
    "store_error",
]
