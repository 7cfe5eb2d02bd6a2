"""The runner lease and the Segmind budget on SQLite.

The lease's clock is SQLite's `julianday('now')`: the host's clock, read inside the same
write transaction that compares and moves the lease, so every process on the file judges
expiry by one clock (SQLite files are not shared across hosts)."""

from __future__ import annotations

import sqlite3
from typing import Any

from bot.store.model import BudgetState, Lease, decode_grants, encode_grants
from bot.store.sqlite.connection import SqliteBase

_DB_NOW = "((julianday('now') - 2440587.5) * 86400.0)"


def _lease(row: sqlite3.Row | tuple[Any, ...]) -> Lease:
    return Lease(str(row[0]), str(row[1]), int(row[2]), float(row[3]))


class LeaseQueries(SqliteBase):
    """Take, renew and give back the runner lease; record and load the request budget."""

    async def acquire_lease(self, name: str, owner: str, seconds: float) -> Lease | None:
        """Take the lease if nobody holds it or its holder's term lapsed (by the database's
        clock), starting a new term with the next epoch; None while someone else holds it."""
        sql = (
            "INSERT INTO runner_lease (name, owner, epoch, expires_at) "  # noqa: S608
            f"VALUES (?, ?, 1, {_DB_NOW} + ?) "
            "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, "
            "epoch = runner_lease.epoch + 1, expires_at = excluded.expires_at "
            f"WHERE runner_lease.expires_at <= {_DB_NOW} "
            "RETURNING name, owner, epoch, expires_at"
        )

        def body(conn: sqlite3.Connection) -> Lease | None:
            row = conn.execute(sql, (name, owner, seconds)).fetchone()
            return _lease(row) if row is not None else None

        return await self._run(body)

    async def renew_lease(self, lease: Lease, seconds: float) -> Lease | None:
        """Extend this term by `seconds` from now; None if another term began (stand down)."""
        sql = (
            f"UPDATE runner_lease SET expires_at = {_DB_NOW} + ? "  # noqa: S608
            "WHERE name = ? AND epoch = ? AND owner = ? "
            "RETURNING name, owner, epoch, expires_at"
        )

        def body(conn: sqlite3.Connection) -> Lease | None:
            row = conn.execute(sql, (seconds, lease.name, lease.epoch, lease.owner)).fetchone()
            return _lease(row) if row is not None else None

        return await self._run(body)

    async def release_lease(self, lease: Lease) -> bool:
        """End this term now (a clean shutdown), so a standby need not wait it out."""
        sql = (
            f"UPDATE runner_lease SET expires_at = {_DB_NOW} "  # noqa: S608
            "WHERE name = ? AND epoch = ? AND owner = ?"
        )

        def body(conn: sqlite3.Connection) -> bool:
            return conn.execute(sql, (lease.name, lease.epoch, lease.owner)).rowcount > 0

        return await self._run(body)

    async def current_lease(self, name: str) -> Lease | None:
        """The lease row as it stands (held or lapsed), for health and tests."""
        row = await self._fetchone(
            "SELECT name, owner, epoch, expires_at FROM runner_lease WHERE name = ?", (name,)
        )
        return _lease(row) if row is not None else None

    async def save_budget(self, name: str, state: BudgetState) -> None:
        """Record the budget; on a fenced view only while its term is the newest."""
        grants = encode_grants(state.grants)

        def body(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO segmind_budget (name, grants, paused_until) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET grants = excluded.grants, "
                "paused_until = excluded.paused_until",
                (name, grants, state.paused_until),
            )

        await self._run(body)  # a fenced view checks its epoch first, in this transaction

    async def load_budget(self, name: str) -> BudgetState | None:
        """The budget the last runner recorded, if any."""
        row = await self._fetchone(
            "SELECT grants, paused_until FROM segmind_budget WHERE name = ?", (name,)
        )
        if row is None:
            return None
        grants = decode_grants(row[0])
        return BudgetState(grants, None if row[1] is None else float(row[1]))
