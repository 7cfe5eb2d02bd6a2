"""The owner's money as the bot runs it: one price book, quoting every job before it is
reserved, and every bill Segmind reports recorded through one call that also teaches the book.

`bot.pricing` holds the pricing rules (pure) and the store the ledgers; this joins the two for
the lifecycle (`bot.jobs`) and whoever else learns a bill (reconciliation against Segmind's
history records through `record_billed` too). No Discord, no HTTP.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from bot.params import VeoParams
from bot.pricing import PriceBook, Quote
from bot.store import BilledSource, Job, Store

log = logging.getLogger(__name__)

# How many of the latest bills the book learns from at start-up: enough to see every
# combination a server uses, bounded so a years-old database starts as fast as a new one.
START_UP_BILLS = 2000


class Billing:
    """Quotes from the price book, and bills recorded in the store and learned by the book.

    Build with the store and a book, then `await load()` once at start-up."""

    def __init__(self, store: Store, book: PriceBook) -> None:
        self.store = store
        self.book = book
        # The quote each job was reserved at, by job id, for the placeholder to show the same
        # words. Jobs reserved before a restart are described by today's book instead.
        self._given: dict[int, Quote] = {}

    async def load(self, limit: int = START_UP_BILLS) -> int:
        """Learn from the bills already in the store; returns how many taught."""
        taught = 0
        for params_json, billed in await self.store.observed_bills(limit):
            try:
                params = VeoParams.model_validate_json(params_json)
            except ValidationError:
                continue  # a row older than today's parameters teaches nothing
            taught += self.book.observe(params, billed)
        log.info("price book: learned from %d past bills", taught)
        return taught

    def quote(self, params: VeoParams) -> Quote:
        """What a video with `params` is held at against the spend caps."""
        return self.book.quote(params)

    def given(self, job_id: int, quote: Quote) -> None:
        """Remember the quote `job_id` was reserved at."""
        self._given[job_id] = quote

    def quote_of(self, job: Job) -> Quote:
        """The quote to show for `job`: the one it was reserved at when known."""
        return self._given.get(job.id) or self.book.quote(job.params_model)

    def forget(self, job_id: int) -> None:
        """The job ended: its quote is no longer shown."""
        self._given.pop(job_id, None)

    async def record_billed(self, job: Job, amount: float, *, source: BilledSource) -> bool:
        """Record what Segmind billed for `job` (replacing its held quote) and, when it is a
        price, teach the book. Returns whether the ledger changed (see `record_billed`)."""
        changed = await self.store.record_billed(job.id, amount, source=source)
        if changed:
            self.book.observe(job.params_model, amount)
            log.info("job %s: Segmind billed $%.2f (%s)", job.id, amount, source)
        return changed


def billed_by_failure(raw: Mapping[str, Any]) -> float:
    """What a FAILED job cost: its `metrics.cost` when the body carries one (unverified for
    video), else 0 — Segmind says failed jobs are not billed; its history corrects either."""
    metrics = raw.get("metrics")
    cost = metrics.get("cost") if isinstance(metrics, Mapping) else None
    if not isinstance(cost, int | float) or isinstance(cost, bool):
        return 0.0
    return float(cost) if math.isfinite(cost) and cost >= 0 else 0.0
