"""The SQLite backend's plumbing: one aiosqlite connection, its transactions, and how database
trouble becomes `StoreUnavailable`. The query mixins build on `SqliteBase`."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Self, TypeVar, cast

import aiosqlite

from bot.store.model import Fenced, Lease, StoreError, StoreUnavailable

_UNAVAILABLE_ERRORS = (sqlite3.OperationalError, sqlite3.DatabaseError)
# Integrity and programming errors are bugs in our SQL or data, not an unreachable database.
_BUG_ERRORS = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)


def _store_error(exc: sqlite3.Error, context: str = "") -> StoreError:
    """What a caller sees of a driver error: never a `sqlite3` type, which another backend
    would not raise. Trouble with the database is `StoreUnavailable` (callers fail closed);
    a statement SQLite refused on its merits is a bug, a plain `StoreError`."""
    text = f"{context}: {exc}" if context else str(exc)
    if isinstance(exc, _BUG_ERRORS) or not isinstance(exc, _UNAVAILABLE_ERRORS):
        return StoreError(f"the database refused a statement: {text}")
    return StoreUnavailable(text)


def _placeholders(count: int) -> str:
    return ", ".join("?" * count)


# --------------------------------------------------------------------------------------------
# Transaction bodies that run on the connection's thread in one hand-off (see `SqliteBase._run`).

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


def check_fence(conn: sqlite3.Connection, fence: Lease) -> None:
    """Inside a write transaction: refuse it unless `fence` is still the newest runner term.
    BEGIN IMMEDIATE holds SQLite's one write lock, so no takeover can commit between this
    read and the transaction's own writes."""
    row = conn.execute("SELECT epoch FROM runner_lease WHERE name = ?", (fence.name,)).fetchone()
    if row is None or int(row[0]) != fence.epoch:
        raise Fenced(f"runner epoch {fence.epoch} of {fence.name} was superseded")


def _fenced_body(fence: Lease, body: Callable[[sqlite3.Connection], T]) -> Callable[..., T]:
    def checked(conn: sqlite3.Connection) -> T:
        check_fence(conn, fence)
        return body(conn)

    return checked


class SqliteBase:
    """The connection, its lock and the injected clock, shared by every query mixin."""

    def __init__(self, conn: aiosqlite.Connection, clock: Callable[[], float]) -> None:
        self._conn = conn
        self._clock = clock
        self._lock = asyncio.Lock()
        # Set only on a view made by `fenced()`: every write transaction checks it first.
        self._fence: Lease | None = None

    def fenced(self, lease: Lease) -> Self:
        """This store as the runner of `lease` writes to it: the same connection, but every
        write transaction (transitions, charge, release, the budget) first checks that the
        lease's epoch is still the newest, in that transaction, else raises `Fenced`.
        Reads are not fenced. Close the store, never the view."""
        view = copy.copy(self)
        view._fence = lease
        return view

    # -- opening and closing -----------------------------------------------------------------

    async def close(self) -> None:
        """Close the connection after any running transaction finishes."""
        async with self._lock:
            await self._conn.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

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
            if self._fence is not None and begin != "BEGIN":
                body = _fenced_body(self._fence, body)
            try:
                result = await self._conn._execute(_transaction, raw, begin, body)
            except sqlite3.Error as exc:
                raise _store_error(exc) from exc
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
            except sqlite3.Error as exc:
                raise _store_error(exc) from exc
            try:
                if self._fence is not None and begin != "BEGIN":
                    rows = await self._rows(
                        self._conn,
                        "SELECT epoch FROM runner_lease WHERE name = ?",
                        (self._fence.name,),
                    )
                    if not rows or int(rows[0][0]) != self._fence.epoch:
                        raise Fenced(f"runner epoch {self._fence.epoch} was superseded")
                yield self._conn
                await self._conn.execute("COMMIT")
            except BaseException as exc:
                if self._conn.in_transaction:
                    # The original error below is the one worth reporting.
                    with contextlib.suppress(*_UNAVAILABLE_ERRORS):
                        await self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise _store_error(exc) from exc
                raise

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            return list(await self._conn.execute_fetchall(sql, params))
        except ValueError as exc:  # aiosqlite: the connection is closed
            raise StoreUnavailable(str(exc)) from exc
        except sqlite3.Error as exc:
            raise _store_error(exc) from exc

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
