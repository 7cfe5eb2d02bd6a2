"""The owner's spend ledger on PostgreSQL: what Segmind billed per job, the quote held until
then, and the daily totals. The caps' sums live with the reservation
(`bot.store.postgres.ledger`)."""

from __future__ import annotations

import math

from bot.store.model import BilledSource, DaySpend, check_billed, utc_day
from bot.store.postgres.connection import PostgresBase, affected

# A `history` figure replaces anything; a `metrics` one replaces only a `metrics` one (or the
# hold). Writing what is already there changes nothing, so a retry reports False. One guarded
# statement: a concurrent writer's commit is re-checked by the row lock it takes.
RECORD_BILLED = """
    UPDATE spend_ledger SET billed = $1, billed_source = $2, billed_at = $3
    WHERE job_id = $4
      AND NOT (COALESCE(billed_source, '') = 'history' AND $2 = 'metrics')
      AND (billed IS DISTINCT FROM $1 OR billed_source IS DISTINCT FROM $2)
"""

# Per UTC day (epoch seconds // 86400) of the reservation. $1 since, $2 until, $3 guild.
_BY_DAY = """
    SELECT floor(held_at / 86400)::bigint AS day,
           COALESCE(SUM(billed), 0),
           COALESCE(SUM(quoted) FILTER (WHERE billed IS NULL), 0),
           COALESCE(SUM(quoted) FILTER (WHERE billed > 0), 0),
           COUNT(*) FILTER (WHERE billed > 0),
           COUNT(*) FILTER (WHERE billed IS NULL)
    FROM spend_ledger
    WHERE {where} held_at >= $1 AND held_at < $2
    GROUP BY day ORDER BY day
"""


class SpendQueries(PostgresBase):
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
        amount = check_billed(amount)
        async with self._transaction() as conn:
            status = await conn.execute(RECORD_BILLED, amount, source, self._now(now), job_id)
        return affected(status) == 1

    async def spend_by_day(
        self, guild_id: int | None, since: float, until: float | None = None
    ) -> list[DaySpend]:
        """The owner's spend per UTC day of reservation in `[since, until)`, oldest first."""
        # None: no upper bound (a job reserved this very second counts too).
        end = math.inf if until is None else until
        if guild_id is None:
            rows = await self._fetch(_BY_DAY.format(where=""), since, end)
        else:
            rows = await self._fetch(
                _BY_DAY.format(where="guild_id = $3 AND"), since, end, guild_id
            )
        return [
            DaySpend(utc_day(day), float(b), float(h), float(q), int(nb), int(nh))
            for day, b, h, q, nb, nh in rows
        ]

    async def observed_bills(self, limit: int = 2000) -> list[tuple[str, float]]:
        """The params (as stored) and bill of the latest `limit` jobs Segmind billed more
        than 0: what the price book learns from at start-up."""
        rows = await self._fetch(
            "SELECT j.params::text, s.billed FROM spend_ledger s JOIN jobs j ON j.id = s.job_id "
            "WHERE s.billed > 0 ORDER BY s.held_at DESC LIMIT $1",
            limit,
        )
        return [(str(params), float(billed)) for params, billed in rows]
