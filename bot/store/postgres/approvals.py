"""The approval lane on PostgreSQL: a guild's lane settings and the one decision about each
held request. The decision is a guarded UPDATE of the job (a concurrent one waits for the row
lock, then re-checks the state and finds it moved), with its record and audit entry in the
same transaction. Deciders of one job queue on its approval row's lock."""

from __future__ import annotations

from dataclasses import asdict

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
from bot.store.postgres.connection import PostgresBase
from bot.store.postgres.jobs import _JOB_COLUMNS, _JOB_FROM, _job

_APPROVAL_COLUMNS = ", ".join(APPROVAL_ROW)
# `exempt_roles` is `json`: read as its text, decoded by the model like SQLite's.
_SETTINGS_COLUMNS = ", ".join(
    f"{c}::text" if c == "exempt_roles" else c for c in APPROVAL_SETTINGS_ROW
)
_SELECT_APPROVAL = f"SELECT {_APPROVAL_COLUMNS} FROM approvals WHERE job_id = $1"  # noqa: S608


class ApprovalQueries(PostgresBase):
    """The approval lane's settings and decisions."""

    async def get_approval_settings(self, guild_id: int) -> ApprovalSettings:
        """The guild's lane (off, with defaults, when never set)."""
        row = await self._fetchrow(
            f"SELECT {_SETTINGS_COLUMNS} FROM approval_settings WHERE guild_id = $1",  # noqa: S608
            guild_id,
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
        columns = ", ".join(APPROVAL_SETTINGS_ROW)
        updates = ", ".join(f"{c} = excluded.{c}" for c in APPROVAL_SETTINGS_ROW)
        async with self._transaction() as conn:
            await conn.execute(
                f"INSERT INTO approval_settings (guild_id, {columns}) "  # noqa: S608  # column names from the model
                "VALUES ($1, $2, $3, $4, $5, $6, $7) "
                f"ON CONFLICT (guild_id) DO UPDATE SET {updates}",
                guild_id,
                *approval_settings_row(settings),
            )
            detail = asdict(settings) | {"exempt_roles": sorted(settings.exempt_roles)}
            await self._audit(conn, guild_id, actor_id, "approvals.set", detail, now)

    async def get_approval(self, job_id: int) -> Approval | None:
        """The held request behind a job (None: the job was never held)."""
        row = await self._fetchrow(_SELECT_APPROVAL, job_id)
        return approval_of(tuple(row)) if row is not None else None

    async def set_approval_card(self, job_id: int, channel_id: int, message_id: int) -> None:
        """Remember where the moderators' card was posted, so any process can edit it."""
        async with self._transaction() as conn:
            await conn.execute(
                "UPDATE approvals SET card_channel_id = $1, card_message_id = $2 WHERE job_id = $3",
                channel_id,
                message_id,
                job_id,
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
        async with self._transaction() as conn:
            # The row lock queues concurrent deciders: each reads the approval only after the
            # one before it committed, so a loser reports the decision that stands, not the
            # undecided row it would otherwise have read first.
            row = await conn.fetchrow(f"{_SELECT_APPROVAL} FOR UPDATE", job_id)
            if row is None:
                return None
            # The compare-and-set: only the first decision finds the job still held.
            user_id = await conn.fetchval(
                "UPDATE jobs SET state = $1, error = $2, updated_at = $3 "
                "WHERE id = $4 AND state = 'awaiting_approval' RETURNING user_id",
                DECISION_STATES[decision],
                DECISION_ERRORS[decision],
                now,
                job_id,
            )
            won = user_id is not None
            if won:
                await conn.execute(
                    "UPDATE approvals SET decision = $1, decided_by = $2, decided_at = $3, "
                    "reason = $4 WHERE job_id = $5",
                    decision,
                    None if decision == "expired" else actor_id,
                    now,
                    reason,
                    job_id,
                )
                detail = {"job_id": job_id, "user_id": user_id, "reason": reason}
                await self._audit(conn, row[1], actor_id, f"approval.{decision}", detail, now)
                row = await conn.fetchrow(_SELECT_APPROVAL, job_id)
                assert row is not None  # updated in this transaction
            job = await conn.fetchrow(f"SELECT {_JOB_COLUMNS} {_JOB_FROM} WHERE j.id = $1", job_id)
        return DecisionResult(
            won=won, approval=approval_of(tuple(row)), job=_job(job) if job is not None else None
        )

    async def due_approvals(self, now: float | None = None) -> list[int]:
        """Held jobs whose approval lapsed (`expires_at <= now`) still undecided, oldest first."""
        rows = await self._fetch(
            "SELECT a.job_id FROM approvals a JOIN jobs j ON j.id = a.job_id "
            "WHERE a.decision IS NULL AND a.expires_at <= $1 AND j.state = 'awaiting_approval' "
            "ORDER BY a.expires_at, a.job_id",
            self._now(now),
        )
        return [int(r[0]) for r in rows]
