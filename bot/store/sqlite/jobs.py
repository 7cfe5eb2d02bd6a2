"""Jobs on SQLite: the compare-and-set `transition` and the queries the lifecycle runs."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any, Unpack

from bot.store.model import (
    IN_FLIGHT_STATES,
    JOB_ROW,
    LEDGER_ROW,
    NONTERMINAL_STATES,
    Job,
    JobFields,
    JobState,
    plan_transition,
)
from bot.store.sqlite.connection import SqliteBase, _placeholders

_JOB_COLUMNS = ", ".join([*(f"j.{c}" for c in JOB_ROW), *(f"l.{c}" for c in LEDGER_ROW)])
# RETURNING may name only the updated table (no alias, no join), so the ledger's columns come
# from correlated subqueries: the same `Job` in the same statement as the compare-and-set.
_JOB_RETURNING = ", ".join(
    [
        *JOB_ROW,
        *(f"(SELECT {c} FROM quota_ledger WHERE job_id = jobs.id)" for c in LEDGER_ROW),  # noqa: S608  # column names from this module
    ]
)
_JOB_FROM = "FROM jobs j LEFT JOIN quota_ledger l ON l.job_id = j.id"


def _job(row: sqlite3.Row | tuple[Any, ...]) -> Job:
    return Job(*row)


class JobQueries(SqliteBase):
    """The job state machine and the lifecycle's reads."""

    async def transition(
        self,
        job_id: int,
        from_states: JobState | Iterable[JobState],
        to_state: JobState,
        *,
        now: float | None = None,
        **fields: Unpack[JobFields],
    ) -> Job | None:
        """See `JobStore.transition`: one guarded `UPDATE … RETURNING` of the job row."""
        now = self._now(now)
        plan = plan_transition(from_states, to_state, fields, now)
        assignments = "".join(f", {name} = ?" for name in plan.fields)  # checked by the plan
        sql = (
            f"UPDATE jobs SET state = ?, updated_at = ?{assignments} "  # noqa: S608
            f"WHERE id = ? AND state IN ({_placeholders(len(plan.sources))}) "
            f"RETURNING {_JOB_RETURNING}"
        )
        params = (to_state, now, *plan.fields.values(), job_id, *plan.sources)

        def body(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute(sql, params).fetchone()
            return _job(row) if row is not None else None

        return await self._run(body)

    async def get_job(self, job_id: int) -> Job | None:
        """One job by id."""
        row = await self._fetchone(f"SELECT {_JOB_COLUMNS} {_JOB_FROM} WHERE j.id = ?", (job_id,))
        return _job(row) if row is not None else None

    async def job_for_event(self, event_id: int) -> Job | None:
        """The job a Discord interaction or message made, if any."""
        row = await self._fetchone(
            f"SELECT {_JOB_COLUMNS} {_JOB_FROM} WHERE j.event_id = ?", (event_id,)
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

    async def queued_ids(self) -> list[int]:
        """The ids of every `queued` job in queue order: cheap enough to read on every change."""
        rows = await self._fetchall("SELECT id FROM jobs WHERE state = 'queued' ORDER BY queue_seq")
        return [int(r[0]) for r in rows]

    async def count_queued(self) -> int:
        """Jobs waiting in the bot's own queue (the metrics' queue length)."""
        row = await self._fetchone("SELECT COUNT(*) FROM jobs WHERE state = 'queued'")
        return int(row[0]) if row is not None else 0

    async def count_in_flight(self) -> int:
        """Jobs between leaving the queue and their end (the metrics' jobs in flight)."""
        row = await self._fetchone(
            f"SELECT COUNT(*) FROM jobs WHERE state IN ({_placeholders(len(IN_FLIGHT_STATES))})",  # noqa: S608  # only "?" marks are formatted in
            IN_FLIGHT_STATES,
        )
        return int(row[0]) if row is not None else 0

    async def ping(self) -> None:
        """One trivial query: raises `StoreUnavailable` when the database does not answer."""
        await self._fetchone("SELECT 1")

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
