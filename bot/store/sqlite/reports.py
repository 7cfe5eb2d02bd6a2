"""Moderator reports on SQLite: usage summaries, top users, job listings, and the audit log."""

from __future__ import annotations

import json
from typing import Any

from bot.quota import DAY_SECONDS
from bot.store.model import AuditEntry, Job, UsageSummary, UserUsage
from bot.store.sqlite.connection import SqliteBase
from bot.store.sqlite.jobs import _JOB_COLUMNS, _JOB_FROM, _job


class ReportQueries(SqliteBase):
    """What moderators read: usage, heaviest users, recent and exported jobs, audit entries."""

    async def usage(
        self,
        guild_id: int,
        user_id: int | None = None,
        days: float = 1.0,
        now: float | None = None,
    ) -> UsageSummary:
        """Jobs created in the guild (or by one user there) in the last `days`."""
        since = self._now(now) - days * DAY_SECONDS
        row = await self._fetchone(
            """
            SELECT COUNT(*),
                   COALESCE(SUM(j.state = 'delivered'), 0),
                   COALESCE(SUM(j.state IN ('failed', 'expired', 'unknown')), 0),
                   COALESCE(SUM(j.state = 'cancelled'), 0),
                   COALESCE(SUM(j.state IN ('queued', 'submitting', 'submitted', 'completed',
                                            'delivering')), 0),
                   COALESCE(SUM(l.status = 'released'), 0),
                   COALESCE(SUM(CASE WHEN l.status = 'charged' THEN l.charged_amount END), 0)
            FROM jobs j LEFT JOIN quota_ledger l ON l.job_id = j.id
            WHERE j.guild_id = ? AND j.created_at > ? AND (? IS NULL OR j.user_id = ?)
            """,
            (guild_id, since, user_id, user_id),
        )
        assert row is not None  # an aggregate always yields one row
        jobs, delivered, failed, cancelled, in_progress, refunded, cost = row
        return UsageSummary(
            jobs=int(jobs),
            delivered=int(delivered),
            failed=int(failed),
            cancelled=int(cancelled),
            in_progress=int(in_progress),
            refunded=int(refunded),
            cost=float(cost),
        )

    async def top_users(
        self, guild_id: int, days: float = 1.0, limit: int = 10, now: float | None = None
    ) -> list[UserUsage]:
        """The guild's heaviest users over the last `days`, most jobs first."""
        since = self._now(now) - days * DAY_SECONDS
        rows = await self._fetchall(
            """
            SELECT j.user_id, COUNT(*), COALESCE(SUM(j.state = 'delivered'), 0),
                   COALESCE(SUM(CASE WHEN l.status = 'charged' THEN l.charged_amount END), 0)
            FROM jobs j LEFT JOIN quota_ledger l ON l.job_id = j.id
            WHERE j.guild_id = ? AND j.created_at > ?
            GROUP BY j.user_id ORDER BY COUNT(*) DESC, j.user_id LIMIT ?
            """,
            (guild_id, since, limit),
        )
        return [UserUsage(int(r[0]), int(r[1]), int(r[2]), float(r[3])) for r in rows]

    async def recent_jobs(
        self, guild_id: int, user_id: int | None = None, limit: int = 10
    ) -> list[Job]:
        """The guild's (or one user's) latest jobs, newest first; each carries the channel and
        message ids a link needs."""
        rows = await self._fetchall(
            f"SELECT {_JOB_COLUMNS} {_JOB_FROM} "
            "WHERE j.guild_id = ? AND (? IS NULL OR j.user_id = ?) ORDER BY j.id DESC LIMIT ?",
            (guild_id, user_id, user_id, limit),
        )
        return [_job(r) for r in rows]

    async def export_jobs(
        self, guild_id: int, days: float = 30.0, now: float | None = None
    ) -> list[Job]:
        """Every job in the guild created within `days`, oldest first (for a CSV export)."""
        since = self._now(now) - days * DAY_SECONDS
        rows = await self._fetchall(
            f"SELECT {_JOB_COLUMNS} {_JOB_FROM} "
            "WHERE j.guild_id = ? AND j.created_at > ? ORDER BY j.id",
            (guild_id, since),
        )
        return [_job(r) for r in rows]

    # -- moderator settings (every change is audited in the same transaction) -----------------
    async def record_audit(
        self,
        guild_id: int,
        actor_id: int,
        action: str,
        detail: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> None:
        """Write an audit entry for an action taken outside the store (e.g. a mod cancel)."""
        now = self._now(now)
        async with self._write() as conn:
            await self._audit(conn, guild_id, actor_id, action, detail or {}, now)

    async def audit_entries(self, guild_id: int, limit: int = 20) -> list[AuditEntry]:
        """The guild's latest audit entries, newest first."""
        rows = await self._fetchall(
            "SELECT id, guild_id, actor_id, action, detail, created_at FROM audit_log "
            "WHERE guild_id = ? ORDER BY id DESC LIMIT ?",
            (guild_id, limit),
        )
        return [
            AuditEntry(int(r[0]), int(r[1]), int(r[2]), r[3], json.loads(r[4]), float(r[5]))
            for r in rows
        ]
