"""Reconciliation: the bot's record of jobs checked against Segmind's record of requests.

A background task (owned by the bot's services, started and stopped with them) pages the
request history every `interval` seconds from a saved cursor, and for every request of our
model:

- a known job: what Segmind billed (`credits_deduction`) is recorded for it through
  `record_billed(..., source="history")` (the owner's spend ledger; history overrides what
  `metrics.cost` said); a job the bot counts as refunded that Segmind billed, or a bill far
  from the job's quote (`cost_tolerance`, when a quote is known), is a discrepancy;
- no job: a billed request the bot does not know is a discrepancy.

Each discrepancy is recorded once (per kind and request) and posted to moderators once
(`bot.discrepancies`). Paging goes through `SegmindClient.history`, which paces its pages to
`history_share` of the process's one request budget, at poll priority: job polling always
keeps the rest.

The cursor is the moment before which every request has been judged for good. It never
passes a request still PENDING at Segmind (its bill may change), nor the last
`settle_lag` seconds (a row lands after its request, and a lost submit's request may still be
adopted by its job); each pass re-reads from a day before it (history is queried by UTC date),
which recording and the once-only discrepancies make harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Protocol

from bot.discrepancies import Alerts, post_pending
from bot.params import MODEL_SLUG
from bot.recovery import CLOCK_SKEW
from bot.segmind import client as sm
from bot.segmind.history import HistoryRow, HistoryStatus, dedupe
from bot.store import BilledSource, Job, NewDiscrepancy, Store

log = logging.getLogger(__name__)

CURSOR = "reconcile.history"
DEFAULT_INTERVAL = 900.0
STUCK_PENDING = 86_400.0
COST_TOLERANCE = 0.25  # a bill more than 25 % away from the quote is worth a moderator's look


class RecordBilled(Protocol):
    """The owner's spend ledger: what Segmind billed for a job (the `spend` store method)."""

    def __call__(
        self, job_id: int, amount: float, *, source: BilledSource, now: float | None = None
    ) -> Awaitable[bool]: ...


@dataclass(frozen=True)
class ReconcilePass:
    """What one pass did, for the log and the bench."""

    rows: int  # rows read (a request with several outputs has several)
    requests: int  # distinct requests of our model
    recorded: int  # bills recorded for known jobs
    discrepancies: int  # new ones found
    cursor: float  # where the next pass starts


class Reconciler:
    """Pages Segmind's history and records its truth. `quote` gives the price the bot held for
    a job against the spend caps (None: unknown, no cost comparison); `record_billed` is the
    spend ledger's writer, `Store.record_billed` in the bot (None: bills are not recorded,
    discrepancies still are)."""

    def __init__(
        self,
        store: Store,
        segmind: sm.SegmindClient,
        *,
        record_billed: RecordBilled | None,
        alerts: Alerts | None,
        interval: float = DEFAULT_INTERVAL,
        settle_lag: float = 300.0 + 2 * CLOCK_SKEW,
        quote: Callable[[Job], Awaitable[float | None]] | None = None,
        cost_tolerance: float = COST_TOLERANCE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.segmind = segmind
        self.record_billed = record_billed
        self.alerts = alerts
        self.interval = interval
        self.settle_lag = settle_lag
        self.quote = quote
        self.cost_tolerance = cost_tolerance
        self.clock = clock
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------- the background task

    def start(self) -> None:
        """Run a pass now and every `interval` seconds until `stop()`."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="reconcile")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            try:
                done = await self.run_once()
                log.info(
                    "reconciled %d history rows (%d requests): %d bills recorded, "
                    "%d new discrepancies",
                    done.rows,
                    done.requests,
                    done.recorded,
                    done.discrepancies,
                )
            except Exception:
                # Segmind or the database down: the cursor did not move, the next pass retries.
                log.exception("reconciliation failed; retrying in %.0f s", self.interval)
            await asyncio.sleep(self.interval)

    # ----------------------------------------------------------------------------- one pass

    async def run_once(self) -> ReconcilePass:
        """One pass from the saved cursor to now; the cursor moves only when it completes."""
        now = self.clock()
        cursor = await self._cursor(now)
        since = _day(cursor) - timedelta(days=1)
        until = _day(now)
        read = 0
        rows: list[HistoryRow] = []
        async for row in self.segmind.history(since, until):
            read += 1
            # `model_name` is a substring filter at Segmind: only our model's rows count.
            if row.model_name in (None, MODEL_SLUG):
                rows.append(row)
        requests = dedupe(rows)
        settled_before = now - self.settle_lag
        next_cursor = max(cursor, settled_before)
        recorded = found = 0
        for row in requests.values():
            created = row.created_at.timestamp() if row.created_at else None
            if row.status is HistoryStatus.PENDING:
                # A request stuck in flight for a day would otherwise pin the cursor for good
                # (and every pass would page further back); past that it is left behind.
                if created is not None and created >= now - STUCK_PENDING:
                    next_cursor = min(next_cursor, created)
                continue
            recent = created is None or created >= settled_before
            job = await self.store.job_by_request_id(row.request_id)
            if job is None:
                if not recent and created is not None and created >= cursor:
                    found += await self._unknown(row)
                continue
            if row.billed is not None and self.record_billed is not None:
                recorded += bool(await self.record_billed(job.id, row.billed, source="history"))
            found += await self._judge(job, row)
        await self.store.set_cursor(CURSOR, repr(next_cursor))
        if self.alerts is not None:
            await post_pending(self.store, self.alerts)
        return ReconcilePass(read, len(requests), recorded, found, next_cursor)

    async def _cursor(self, now: float) -> float:
        saved = await self.store.get_cursor(CURSOR)
        if saved is not None:
            try:
                return float(saved)
            except ValueError:
                log.error("the reconcile cursor %r is unreadable; starting again", saved)
        # First pass: from the bot's first submit, so requests from before it are not flagged.
        first = await self.store.earliest_submit_at()
        return (first - CLOCK_SKEW) if first is not None else now

    async def _unknown(self, row: HistoryRow) -> int:
        if not row.billed:
            return 0  # failed or free: nothing was paid for it
        return await self._record(
            NewDiscrepancy(
                "unknown_request",
                row.request_id,
                billed=row.billed,
                detail=f"{row.status.value} at Segmind, no job of the bot",
            )
        )

    async def _judge(self, job: Job, row: HistoryRow) -> int:
        billed = row.billed
        if not billed:
            return 0
        found = 0
        if job.ledger_status == "released":
            found += await self._record(
                NewDiscrepancy(
                    "billed_but_refunded",
                    row.request_id,
                    job_id=job.id,
                    guild_id=job.guild_id,
                    billed=billed,
                    expected=0.0,
                    detail=f"job {job.state}, member refunded ({job.ledger_reason})",
                )
            )
        quoted = await self.quote(job) if self.quote is not None else None
        if quoted and abs(billed - quoted) > self.cost_tolerance * quoted:
            found += await self._record(
                NewDiscrepancy(
                    "cost_off_quote",
                    row.request_id,
                    job_id=job.id,
                    guild_id=job.guild_id,
                    billed=billed,
                    expected=quoted,
                    detail=f"{(billed - quoted) / quoted:+.0%} from the quote",
                )
            )
        return found

    async def _record(self, found: NewDiscrepancy) -> int:
        new = await self.store.record_discrepancy(found)
        if new:
            log.warning(
                "discrepancy with Segmind's record: %s for request %s (job %s): %s",
                found.kind,
                found.request_id,
                found.job_id,
                found.detail,
            )
        return int(new)


def _day(moment: float) -> date:
    return datetime.fromtimestamp(moment, tz=UTC).date()
