"""Where Segmind's record and the bot's disagree: how each disagreement reads for moderators,
and posting each one exactly once.

The store records a disagreement once per (kind, request id) and remembers whether it was
posted; `post_pending` posts what is not yet and marks it, so a pass that finds the same
disagreement again, or a restart, never posts it twice. A post that reached nobody (no log
channel anywhere, Discord down) stays pending and is tried again by the next pass.
"""

from __future__ import annotations

import logging
from typing import Protocol

from bot.store import Discrepancy, Store

log = logging.getLogger(__name__)


class Alerts(Protocol):
    """Tells moderators. Implemented by the Discord layer (the log channels)."""

    async def post(self, discrepancy: Discrepancy, text: str) -> bool:
        """Post `text` where moderators read it; True when it reached at least one place."""
        ...


def _money(amount: float | None) -> str:
    return "an unknown amount" if amount is None else f"${amount:.2f}"


def describe(found: Discrepancy) -> str:
    """The one sentence moderators read about a disagreement (log channel and listing)."""
    job = f"job {found.job_id}" if found.job_id is not None else "no job"
    request = f"request `{found.request_id}`"
    if found.kind == "billed_but_refunded":
        return (
            f"💸 Segmind billed {_money(found.billed)} for {job} ({request}), which the bot "
            "counted as not delivered and refunded to the member."
        )
    if found.kind == "unknown_request":
        return (
            f"❓ Segmind billed {_money(found.billed)} for {request}, which no job of this "
            "bot made (same account and model: another app, or a lost record)."
        )
    if found.kind == "cost_off_quote":
        return (
            f"📈 Segmind billed {_money(found.billed)} for {job} ({request}); the bot "
            f"expected {_money(found.expected)}."
        )
    return (
        f"🔀 The answer to {job}'s submit was lost, and Segmind's record holds several "
        f"requests with exactly its options ({request} is one). The bot did not guess which "
        "is the member's: they got no video and were refunded. Check the requests."
    )


async def post_pending(store: Store, alerts: Alerts, limit: int = 50) -> int:
    """Post every recorded disagreement not posted yet, oldest first; returns how many were."""
    posted = 0
    for found in await store.unposted_discrepancies(limit):
        try:
            reached = await alerts.post(found, describe(found))
        except Exception:
            log.exception("could not post discrepancy %s; trying again later", found.id)
            continue
        if not reached:
            log.warning(
                "discrepancy %s (%s, request %s) has nowhere to be posted: set a log channel "
                "with /veo-admin",
                found.id,
                found.kind,
                found.request_id,
            )
            continue
        await store.mark_discrepancy_posted(found.id)
        posted += 1
    return posted
