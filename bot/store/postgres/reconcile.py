"""Reconciliation on PostgreSQL: jobs by request id, discrepancies with Segmind's record,
cursors — the same queries as on SQLite."""

from __future__ import annotations

from typing import Any

from bot.store.model import DISCREPANCY_ROW, JOB_ROW, LEDGER_ROW, Discrepancy, Job, NewDiscrepancy
from bot.store.postgres.connection import PostgresBase, affected

_JOB_COLUMNS = ", ".join(
    [*(f"j.{c}::text" if c == "params" else f"j.{c}" for c in JOB_ROW)]
    + [f"l.{c}" for c in LEDGER_ROW]
)
_DISCREPANCY_COLUMNS = ", ".join(DISCREPANCY_ROW)


def _discrepancy(row: Any) -> Discrepancy:
    return Discrepancy(*row)


class ReconcileQueries(PostgresBase):
    """See `bot.store.protocol.ReconcileStore`."""

    async def job_by_request_id(self, request_id: str) -> Job | None:
        row = await self._fetchrow(
            f"SELECT {_JOB_COLUMNS} FROM jobs j LEFT JOIN quota_ledger l ON l.job_id = j.id "  # noqa: S608  # column names from the model
            "WHERE j.request_id = $1",
            request_id,
        )
        return Job(*row) if row is not None else None

    async def job_quote(self, job_id: int) -> float | None:
        value = await self._fetchval("SELECT quoted FROM spend_ledger WHERE job_id = $1", job_id)
        return float(value) if value is not None else None

    async def earliest_submit_at(self) -> float | None:
        value = await self._fetchval(
            "SELECT MIN(COALESCE(submit_started_at, submitted_at)) FROM jobs"
        )
        return float(value) if value is not None else None

    async def record_discrepancy(self, found: NewDiscrepancy, now: float | None = None) -> bool:
        now = self._now(now)
        async with self._transaction() as conn:
            status = await conn.execute(
                "INSERT INTO discrepancies (kind, request_id, job_id, guild_id, billed, "
                "expected, detail, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
                "ON CONFLICT (kind, request_id) DO NOTHING",
                found.kind,
                found.request_id,
                found.job_id,
                found.guild_id,
                found.billed,
                found.expected,
                found.detail,
                now,
            )
        return affected(status) == 1

    async def discrepancies(
        self, guild_id: int | None, since: float | None = None, limit: int = 50
    ) -> list[Discrepancy]:
        rows = await self._fetch(
            f"SELECT {_DISCREPANCY_COLUMNS} FROM discrepancies "  # noqa: S608  # column names from the model
            "WHERE ($1::BIGINT IS NULL OR guild_id = $1 OR guild_id IS NULL) "
            "AND ($2::DOUBLE PRECISION IS NULL OR created_at >= $2) "
            "ORDER BY created_at DESC, id DESC LIMIT $3",
            guild_id,
            since,
            limit,
        )
        return [_discrepancy(r) for r in rows]

    async def unposted_discrepancies(self, limit: int = 50) -> list[Discrepancy]:
        rows = await self._fetch(
            f"SELECT {_DISCREPANCY_COLUMNS} FROM discrepancies "  # noqa: S608  # column names from the model
            "WHERE posted_at IS NULL ORDER BY id LIMIT $1",
            limit,
        )
        return [_discrepancy(r) for r in rows]

    async def mark_discrepancy_posted(self, discrepancy_id: int, now: float | None = None) -> None:
        now = self._now(now)
        async with self._transaction() as conn:
            await conn.execute(
                "UPDATE discrepancies SET posted_at = $1 WHERE id = $2 AND posted_at IS NULL",
                now,
                discrepancy_id,
            )

    async def get_cursor(self, name: str) -> str | None:
        value = await self._fetchval("SELECT value FROM task_cursors WHERE name = $1", name)
        return str(value) if value is not None else None

    async def set_cursor(self, name: str, value: str) -> None:
        async with self._transaction() as conn:
            await conn.execute(
                "INSERT INTO task_cursors (name, value) VALUES ($1, $2) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                name,
                value,
            )
