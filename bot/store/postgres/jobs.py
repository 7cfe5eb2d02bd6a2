"""Jobs on PostgreSQL: the compare-and-set `transition` and the queries the lifecycle runs."""

from __future__ import annotations

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
from bot.store.postgres.connection import PostgresBase

# `params` is `json`: read as its text (`Job.params_json`), exactly as written.
_JOB_COLUMNS = ", ".join(
    [*(f"j.{c}::text" if c == "params" else f"j.{c}" for c in JOB_ROW)]
    + [f"l.{c}" for c in LEDGER_ROW]
)
_JOB_FROM = "FROM jobs j LEFT JOIN quota_ledger l ON l.job_id = j.id"


def _job(row: Any) -> Job:
    return Job(*row)


def _marks(count: int, start: int = 1) -> str:
    return ", ".join(f"${i}" for i in range(start, start + count))


class JobQueries(PostgresBase):
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
        """See `JobStore.transition`: one guarded `UPDATE … RETURNING` of the job row, joined
        to its ledger row in the same statement (a data-modifying CTE), so the `Job` handed
        back is the one this compare-and-set wrote."""
        now = self._now(now)
        plan = plan_transition(from_states, to_state, fields, now)
        names = list(plan.fields)  # checked by the plan against JOB_FIELDS
        assignments = "".join(f", {name} = ${i}" for i, name in enumerate(names, start=3))
        first_source = 3 + len(names) + 1
        sql = (
            f"WITH moved AS (UPDATE jobs SET state = $1, updated_at = $2{assignments} "  # noqa: S608
            f"WHERE id = ${first_source - 1} "
            f"AND state IN ({_marks(len(plan.sources), first_source)}) RETURNING *) "
            f"SELECT {_JOB_COLUMNS} FROM moved j LEFT JOIN quota_ledger l ON l.job_id = j.id"
        )
        params = (to_state, now, *plan.fields.values(), job_id, *plan.sources)
        if self._fence is not None:
            # A runner's write: the epoch check and the update in one transaction.
            async with self._transaction() as conn:
                row = await conn.fetchrow(sql, *params)
        else:
            # One statement: atomic on its own, no explicit transaction needed.
            row = await self._fetchrow(sql, *params)
        return _job(row) if row is not None else None

    async def get_job(self, job_id: int) -> Job | None:
        """One job by id."""
        row = await self._fetchrow(f"SELECT {_JOB_COLUMNS} {_JOB_FROM} WHERE j.id = $1", job_id)
        return _job(row) if row is not None else None

    async def job_for_event(self, event_id: int) -> Job | None:
        """The job a Discord interaction or message made, if any."""
        row = await self._fetchrow(
            f"SELECT {_JOB_COLUMNS} {_JOB_FROM} WHERE j.event_id = $1", event_id
        )
        return _job(row) if row is not None else None

    async def nonterminal_jobs(self) -> list[Job]:
        """Every unfinished job, in queue order: what to resume at start-up."""
        rows = await self._fetch(
            f"SELECT {_JOB_COLUMNS} {_JOB_FROM} "
            "WHERE j.state = ANY($1::text[]) ORDER BY j.queue_seq",
            list(NONTERMINAL_STATES),
        )
        return [_job(r) for r in rows]

    async def next_queued(self) -> Job | None:
        """The oldest `queued` job, whoever owns it: first come, first served."""
        row = await self._fetchrow(
            f"SELECT {_JOB_COLUMNS} {_JOB_FROM} "
            "WHERE j.state = 'queued' ORDER BY j.queue_seq LIMIT 1"
        )
        return _job(row) if row is not None else None

    async def queued_ids(self) -> list[int]:
        """The ids of every `queued` job in queue order: cheap enough to read on every change."""
        rows = await self._fetch("SELECT id FROM jobs WHERE state = 'queued' ORDER BY queue_seq")
        return [int(r[0]) for r in rows]

    async def count_queued(self) -> int:
        """Jobs waiting in the bot's own queue (the metrics' queue length)."""
        return int(await self._fetchval("SELECT COUNT(*) FROM jobs WHERE state = 'queued'") or 0)

    async def count_in_flight(self) -> int:
        """Jobs between leaving the queue and their end (the metrics' jobs in flight)."""
        count = await self._fetchval(
            "SELECT COUNT(*) FROM jobs WHERE state = ANY($1::text[])", list(IN_FLIGHT_STATES)
        )
        return int(count or 0)

    async def ping(self) -> None:
        """One trivial query: raises `StoreUnavailable` when the database does not answer."""
        await self._fetchval("SELECT 1")

    async def recent_durations(self, limit: int = 20) -> list[float]:
        """Seconds from submission to completion of the last `limit` delivered jobs, newest
        first: the poll estimator's prior."""
        rows = await self._fetch(
            "SELECT completed_at - submitted_at FROM jobs WHERE state = 'delivered' "
            "AND submitted_at IS NOT NULL AND completed_at IS NOT NULL "
            "ORDER BY completed_at DESC LIMIT $1",
            limit,
        )
        return [float(r[0]) for r in rows]
