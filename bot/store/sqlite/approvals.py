"""The approval lane on SQLite: a guild's lane settings and the one decision about each held
request, a compare-and-set on the job in the same `BEGIN IMMEDIATE` transaction as its record
and its audit entry."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict
from functools import partial

from bot.store.model import (
    APPROVAL_ROW,
    APPROVAL_SETTINGS_ROW,
    DECISION_ERRORS,
    DECISION_STATES,
    Approval,
    ApprovalDecision,
    ApprovalSettings,
    DecisionResult,
    approval_of,
    approval_settings_of,
    approval_settings_row,
)
from bot.store.sqlite.connection import SqliteBase
from bot.store.sqlite.jobs import _JOB_COLUMNS, _JOB_FROM, _job

_APPROVAL_COLUMNS = ", ".join(APPROVAL_ROW)
_SETTINGS_COLUMNS = ", ".join(APPROVAL_SETTINGS_ROW)


def _decide(
    conn: sqlite3.Connection,
    job_id: int,
    decision: ApprovalDecision,
    actor_id: int,
    reason: str | None,
    now: float,
) -> DecisionResult | None:
    select = f"SELECT {_APPROVAL_COLUMNS} FROM approvals WHERE job_id = ?"  # noqa: S608
    row = conn.execute(select, (job_id,)).fetchone()
    if row is None:
        return None
    # The compare-and-set: only the first decision finds the job still held.
    moved = conn.execute(
        "UPDATE jobs SET state = ?, error = ?, updated_at = ? "
        "WHERE id = ? AND state = 'awaiting_approval'",
        (DECISION_STATES[decision], DECISION_ERRORS[decision], now, job_id),
    ).rowcount
    if moved == 1:
        conn.execute(
            "UPDATE approvals SET decision = ?, decided_by = ?, decided_at = ?, reason = ? "
            "WHERE job_id = ?",
            (decision, None if decision == "expired" else actor_id, now, reason, job_id),
        )
        (user_id,) = conn.execute("SELECT user_id FROM jobs WHERE id = ?", (job_id,)).fetchone()
        detail = {"job_id": job_id, "user_id": user_id, "reason": reason}
        conn.execute(
            "INSERT INTO audit_log (guild_id, actor_id, action, detail, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (row[1], actor_id, f"approval.{decision}", json.dumps(detail, sort_keys=True), now),
        )
        row = conn.execute(select, (job_id,)).fetchone()
    job = conn.execute(f"SELECT {_JOB_COLUMNS} {_JOB_FROM} WHERE j.id = ?", (job_id,)).fetchone()
    return DecisionResult(
        won=moved == 1, approval=approval_of(row), job=_job(job) if job is not None else None
    )


class ApprovalQueries(SqliteBase):
    """The approval lane's settings and decisions."""

    async def get_approval_settings(self, guild_id: int) -> ApprovalSettings:
        """The guild's lane (off, with defaults, when never set)."""
        row = await self._fetchone(
            f"SELECT {_SETTINGS_COLUMNS} FROM approval_settings WHERE guild_id = ?",  # noqa: S608
            (guild_id,),
        )
        return approval_settings_of(tuple(row) if row is not None else None)

    async def set_approval_settings(
        self,
        guild_id: int,
        settings: ApprovalSettings,
        *,
        actor_id: int,
        now: float | None = None,
    ) -> None:
        """Replace the guild's lane settings (audited in the same transaction)."""
        now = self._now(now)
        updates = ", ".join(f"{c} = excluded.{c}" for c in APPROVAL_SETTINGS_ROW)
        async with self._write() as conn:
            await conn.execute(
                f"INSERT INTO approval_settings (guild_id, {_SETTINGS_COLUMNS}) "  # noqa: S608  # column names from the model
                "VALUES (?, ?, ?, ?, ?, ?, ?) "
                f"ON CONFLICT (guild_id) DO UPDATE SET {updates}",
                (guild_id, *approval_settings_row(settings)),
            )
            detail = asdict(settings) | {"exempt_roles": sorted(settings.exempt_roles)}
            await self._audit(conn, guild_id, actor_id, "approvals.set", detail, now)

    async def get_approval(self, job_id: int) -> Approval | None:
        """The held request behind a job (None: the job was never held)."""
        row = await self._fetchone(
            f"SELECT {_APPROVAL_COLUMNS} FROM approvals WHERE job_id = ?",  # noqa: S608
            (job_id,),
        )
        return approval_of(tuple(row)) if row is not None else None

    async def set_approval_card(self, job_id: int, channel_id: int, message_id: int) -> None:
        """Remember where the moderators' card was posted, so any process can edit it."""
        async with self._write() as conn:
            await conn.execute(
                "UPDATE approvals SET card_channel_id = ?, card_message_id = ? WHERE job_id = ?",
                (channel_id, message_id, job_id),
            )

    async def decide_approval(
        self,
        job_id: int,
        decision: ApprovalDecision,
        *,
        actor_id: int,
        reason: str | None = None,
        now: float | None = None,
    ) -> DecisionResult | None:
        """See `ApprovalStore.decide_approval`."""
        now = self._now(now)
        return await self._run(
            partial(
                _decide,
                job_id=job_id,
                decision=decision,
                actor_id=actor_id,
                reason=reason,
                now=now,
            )
        )

    async def due_approvals(self, now: float | None = None) -> list[int]:
        """Held jobs whose approval lapsed (`expires_at <= now`) still undecided, oldest first."""
        rows = await self._fetchall(
            "SELECT a.job_id FROM approvals a JOIN jobs j ON j.id = a.job_id "
            "WHERE a.decision IS NULL AND a.expires_at <= ? AND j.state = 'awaiting_approval' "
            "ORDER BY a.expires_at, a.job_id",
            (self._now(now),),
        )
        return [int(r[0]) for r in rows]
