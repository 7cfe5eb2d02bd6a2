"""Moderator reports on PostgreSQL: usage summaries, top users, job listings, the audit log."""

from __future__ import annotations

import json
from typing import Any

from bot.quota import DAY_SECONDS
from bot.store.model import AuditEntry, Job, UsageSummary, UserUsage
from bot.store.postgres.connection import PostgresBase
from bot.store.postgres.jobs import _JOB_COLUMNS, _JOB_FROM, _job

_CHARGED = "COALESCE(SUM(l.charged_amount) FILTER (WHERE l.status = 'charged'), 0)"


class ReportQueries(PostgresBase):
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
        row = await self._fetchrow(
            f"""
            SELECT COUNT(*),
                   COUNT(*) FILTER (WHERE j.state = 'delivered'),
                   COUNT(*) FILTER (WHERE j.state IN ('failed', 'expired', 'unknown')),
                   COUNT(*) FILTER (WHERE j.state = 'cancelled'),
                   COUNT(*) FILTER (WHERE j.state IN ('queued', 'submitting', 'submitted',
                                                      'completed', 'delivering')),
                   COUNT(*) FILTER (WHERE l.status = 'released'),
                   {_CHARGED}
            FROM jobs j LEFT JOIN quota_ledger l ON l.job_id = j.id
            WHERE j.guild_id = $1 AND j.created_at > $2
              AND ($3::bigint IS NULL OR j.user_id = $3)
            """,  # noqa: S608  # a fixed fragment
            guild_id,
            since,
            user_id,
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
        rows = await self._fetch(
            f"""
            SELECT j.user_id, COUNT(*), COUNT(*) FILTER (WHERE j.state = 'delivered'), {_CHARGED}
            FROM jobs j LEFT JOIN quota_ledger l ON l.job_id = j.id
            WHERE j.guild_id = $1 AND j.created_at > $2
            GROUP BY j.user_id ORDER BY COUNT(*) DESC, j.user_id LIMIT $3
            """,  # noqa: S608  # a fixed fragment
            guild_id,
            since,
            limit,
        )
        return [UserUsage(int(r[0]), int(r[1]), int(r[2]), float(r[3])) for r in rows]

    async def recent_jobs(
        self, guild_id: int, user_id: int | None = None, limit: int = 10
    ) -> list[Job]:
        """The guild's (or one user's) latest jobs, newest first; each carries the channel and
        message ids a link needs."""
        rows = await self._fetch(
            f"SELECT {_JOB_COLUMNS} {_JOB_FROM} "  # column names from jobs.py
            "WHERE j.guild_id = $1 AND ($2::bigint IS NULL OR j.user_id = $2) "
            "ORDER BY j.id DESC LIMIT $3",
            guild_id,
            user_id,
            limit,
        )
        return [_job(r) for r in rows]

    async def export_jobs(
        self, guild_id: int, days: float = 30.0, now: float | None = None
    ) -> list[Job]:
        """Every job in the guild created within `days`, oldest first (for a CSV export)."""
        since = self._now(now) - days * DAY_SECONDS
        rows = await self._fetch(
            f"SELECT {_JOB_COLUMNS} {_JOB_FROM} "  # column names from jobs.py
            "WHERE j.guild_id = $1 AND j.created_at > $2 ORDER BY j.id",
            guild_id,
            since,
        )
        return [_job(r) for r in rows]

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
        async with self._transaction() as conn:
            await self._audit(conn, guild_id, actor_id, action, detail or {}, now)

    async def audit_entries(self, guild_id: int, limit: int = 20) -> list[AuditEntry]:
        """The guild's latest audit entries, newest first."""
        rows = await self._fetch(
            "SELECT id, guild_id, actor_id, action, detail::text, created_at FROM audit_log "
            "WHERE guild_id = $1 ORDER BY id DESC LIMIT $2",
            guild_id,
            limit,
        )
        return [
            AuditEntry(int(r[0]), int(r[1]), int(r[2]), r[3], json.loads(r[4]), float(r[5]))
            for r in rows
        ]
