"""The owner's spend ledger on SQLite: what Segmind billed per job, the quote held until then,
and the daily totals. The caps' sums live with the reservation (`bot.store.sqlite.ledger`)."""

from __future__ import annotations

import math
import sqlite3

from bot.store.model import BilledSource, DaySpend, check_billed, utc_day
from bot.store.sqlite.connection import SqliteBase

# A `history` figure replaces anything; a `metrics` one replaces only a `metrics` one (or the
# hold). Writing what is already there changes nothing, so a retry reports False.
RECORD_BILLED = """
    UPDATE spend_ledger SET billed = :amount, billed_source = :source, billed_at = :now
    WHERE job_id = :job
      AND NOT (COALESCE(billed_source, '') = 'history' AND :source = 'metrics')
      AND NOT (billed IS :amount AND billed_source IS :source)
"""

# Per UTC day (epoch seconds // 86400) of the reservation; every value is a parameter.
_BY_DAY = """
    SELECT CAST(held_at / 86400 AS INTEGER) AS day,
           COALESCE(SUM(billed), 0),
           COALESCE(SUM(CASE WHEN billed IS NULL THEN quoted END), 0),
           COALESCE(SUM(CASE WHEN billed > 0 THEN quoted END), 0),
           COALESCE(SUM(billed > 0), 0),
           COALESCE(SUM(billed IS NULL), 0)
    FROM spend_ledger
    WHERE {where} held_at >= :since AND held_at < :until
    GROUP BY day ORDER BY day
"""


class SpendQueries(SqliteBase):
    """Recording Segmind's bills and reading the owner's spend."""

    async def record_billed(
        self,
        job_id: int,
        amount: float,
        *,
        source: BilledSource,
        now: float | None = None,
    ) -> bool:
        """What Segmind billed for this job, replacing its held quote; `history` overrides
        `metrics`, never the reverse. Idempotent: whether anything changed."""
        args = {"amount": check_billed(amount), "source": source, "now": self._now(now)}

        def body(conn: sqlite3.Connection) -> bool:
            return conn.execute(RECORD_BILLED, {**args, "job": job_id}).rowcount == 1

        return await self._run(body)

    async def spend_by_day(
        self, guild_id: int | None, since: float, until: float | None = None
    ) -> list[DaySpend]:
        """The owner's spend per UTC day of reservation in `[since, until)`, oldest first."""
        # None: no upper bound (a job reserved this very second counts too).
        until = math.inf if until is None else until
        if guild_id is None:
            sql, args = _BY_DAY.format(where=""), {"since": since, "until": until}
        else:
            sql = _BY_DAY.format(where="guild_id = :guild AND")
            args = {"since": since, "until": until, "guild": guild_id}
        rows = await self._fetchall(sql, args)  # type: ignore[arg-type]
        return [
            DaySpend(utc_day(day), float(b), float(h), float(q), int(nb), int(nh))
            for day, b, h, q, nb, nh in rows
        ]

    async def observed_bills(self, limit: int = 2000) -> list[tuple[str, float]]:
        """The params (as stored) and bill of the latest `limit` jobs Segmind billed more
        than 0: what the price book learns from at start-up."""
        rows = await self._fetchall(
            "SELECT j.params, s.billed FROM spend_ledger s JOIN jobs j ON j.id = s.job_id "
            "WHERE s.billed > 0 ORDER BY s.held_at DESC LIMIT ?",
            (limit,),
        )
        return [(str(params), float(billed)) for params, billed in rows]
