"""Reconciliation on SQLite: jobs by request id, discrepancies with Segmind's record, cursors."""

from __future__ import annotations

import sqlite3
from typing import Any

from bot.store.model import DISCREPANCY_ROW, JOB_ROW, LEDGER_ROW, Discrepancy, Job, NewDiscrepancy
from bot.store.sqlite.connection import SqliteBase

_JOB_COLUMNS = ", ".join([*(f"j.{c}" for c in JOB_ROW), *(f"l.{c}" for c in LEDGER_ROW)])
_DISCREPANCY_COLUMNS = ", ".join(DISCREPANCY_ROW)


def _discrepancy(row: sqlite3.Row | tuple[Any, ...]) -> Discrepancy:
    return Discrepancy(*row)


class ReconcileQueries(SqliteBase):
    """See `bot.store.protocol.ReconcileStore`."""

    async def job_by_request_id(self, request_id: str) -> Job | None:
        row = await self._fetchone(
            f"SELECT {_JOB_COLUMNS} FROM jobs j LEFT JOIN quota_ledger l ON l.job_id = j.id "  # noqa: S608  # column names from the model
            "WHERE j.request_id = ?",
            (request_id,),
        )
        return Job(*row) if row is not None else None

    async def job_quote(self, job_id: int) -> float | None:
        row = await self._fetchone("SELECT quoted FROM spend_ledger WHERE job_id = ?", (job_id,))
        return float(row[0]) if row is not None else None

    async def earliest_submit_at(self) -> float | None:
        row = await self._fetchone(
            "SELECT MIN(COALESCE(submit_started_at, submitted_at)) FROM jobs "
            "WHERE submit_started_at IS NOT NULL OR submitted_at IS NOT NULL"
        )
        return float(row[0]) if row is not None and row[0] is not None else None

    async def record_discrepancy(self, found: NewDiscrepancy, now: float | None = None) -> bool:
        now = self._now(now)
        params = (
            found.kind,
            found.request_id,
            found.job_id,
            found.guild_id,
            found.billed,
            found.expected,
            found.detail,
            now,
        )

        def body(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "INSERT INTO discrepancies (kind, request_id, job_id, guild_id, billed, "
                "expected, detail, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (kind, request_id) DO NOTHING",
                params,
            )
            return cursor.rowcount == 1

        return await self._run(body)

    async def discrepancies(
        self, guild_id: int | None, since: float | None = None, limit: int = 50
    ) -> list[Discrepancy]:
        rows = await self._fetchall(
            f"SELECT {_DISCREPANCY_COLUMNS} FROM discrepancies "  # noqa: S608  # column names from the model
            "WHERE (? IS NULL OR guild_id = ? OR guild_id IS NULL) "
            "AND (? IS NULL OR created_at >= ?) ORDER BY created_at DESC, id DESC LIMIT ?",
            (guild_id, guild_id, since, since, limit),
        )
        return [_discrepancy(r) for r in rows]

    async def unposted_discrepancies(self, limit: int = 50) -> list[Discrepancy]:
        rows = await self._fetchall(
            f"SELECT {_DISCREPANCY_COLUMNS} FROM discrepancies "  # noqa: S608  # column names from the model
            "WHERE posted_at IS NULL ORDER BY id LIMIT ?",
            (limit,),
        )
        return [_discrepancy(r) for r in rows]

    async def mark_discrepancy_posted(self, discrepancy_id: int, now: float | None = None) -> None:
        now = self._now(now)

        def body(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE discrepancies SET posted_at = ? WHERE id = ? AND posted_at IS NULL",
                (now, discrepancy_id),
            )

        await self._run(body)

    async def get_cursor(self, name: str) -> str | None:
        row = await self._fetchone("SELECT value FROM task_cursors WHERE name = ?", (name,))
        return str(row[0]) if row is not None else None

    async def set_cursor(self, name: str, value: str) -> None:
        def body(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO task_cursors (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

        await self._run(body)
