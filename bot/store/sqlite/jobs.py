"""Jobs on SQLite: the compare-and-set `transition` and the queries the lifecycle runs."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

from bot.store.model import (
    JOB_FIELDS,
    LEGAL_TRANSITIONS,
    NONTERMINAL_STATES,
    IllegalTransition,
    Job,
    JobState,
)
from bot.store.sqlite.connection import SqliteBase, _placeholders

# Entering these states stamps the matching timestamp unless the caller passes one.
_STAMPS: dict[str, str] = {
    "submitted": "submitted_at",
    "completed": "completed_at",
    "delivered": "delivered_at",
}


_JOB_COLUMNS = (
    "j.id, j.guild_id, j.channel_id, j.user_id, j.prompt, j.params, j.image_url, j.request_id, "
    "j.state, j.queue_seq, j.created_at, j.updated_at, j.submitted_at, j.completed_at, "
    "j.delivered_at, j.cost, j.bytes, j.error, j.placeholder_channel_id, "
    "j.placeholder_message_id, j.interaction_token, j.interaction_created_at, "
    "j.delivered_message_id, j.delivery_method, j.upload_limit, j.output_url, "
    "l.status, l.charged_amount, l.reason"
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
        **fields: Any,
    ) -> bool:
        """Compare-and-set: move the job to `to_state` only if it is in one of `from_states`,
        setting `fields` (names from `JOB_FIELDS`) in the same committed write. Returns False
        when the job was not in those states (someone else moved it first) — the caller must
        then NOT perform the action the transition guards.

        Only the `from_states` with a legal edge to `to_state` are matched (staying in the same
        state is always legal: a guarded update of fields), so "fail it from wherever it is"
        can list every unfinished state and a job in a state with no such edge is refused
        (False). Raises `IllegalTransition` when no listed state may reach `to_state` at all,
        or a state name is unknown: a bug in the caller, not a race. `submitted_at`,
        `completed_at` and `delivered_at` are stamped on entering those states."""
        requested = (from_states,) if isinstance(from_states, str) else tuple(from_states)
        for state in (*requested, to_state):
            if state not in LEGAL_TRANSITIONS:
                raise IllegalTransition(f"unknown job state {state!r}")
        sources = tuple(s for s in requested if s == to_state or to_state in LEGAL_TRANSITIONS[s])
        if not sources:
            raise IllegalTransition(f"a job never goes from {requested!r} to {to_state!r}")
        unknown = set(fields) - JOB_FIELDS
        if unknown:
            raise ValueError(f"not a job field: {', '.join(sorted(unknown))}")
        now = self._now(now)
        stamp = _STAMPS.get(to_state)
        if stamp is not None and stamp not in fields and to_state not in sources:
            fields[stamp] = now
        assignments = "".join(f", {name} = ?" for name in fields)  # names checked above
        sql = (
            f"UPDATE jobs SET state = ?, updated_at = ?{assignments} "  # noqa: S608
            f"WHERE id = ? AND state IN ({_placeholders(len(sources))})"
        )
        params = (to_state, now, *fields.values(), job_id, *sources)

        def body(conn: sqlite3.Connection) -> bool:
            return conn.execute(sql, params).rowcount == 1

        return await self._run(body)

    async def get_job(self, job_id: int) -> Job | None:
        """One job by id."""
        row = await self._fetchone(f"SELECT {_JOB_COLUMNS} {_JOB_FROM} WHERE j.id = ?", (job_id,))
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
