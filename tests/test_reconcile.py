"""Reconciliation against the in-process fake's history (issue 12, item 3): what Segmind billed
is recorded for each known job, and the disagreements an owner or moderator would want to see
are recorded and posted once each."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.discrepancies import describe
from bot.params import VeoParams
from bot.quota import LimitDefaults
from bot.reconcile import CURSOR, Reconciler
from bot.segmind.client import GenerationFailed, SegmindClient
from bot.segmind.fake import FakeSegmind
from bot.store import Discrepancy, Job, Reserved, ReserveRequest, Store, open_store
from tests.lifecycle_support import SEGMIND_KEY, make_segmind

GUILD = 100
LIMITS = LimitDefaults(user_limit=50, concurrency=50)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSegmind]:
    async with FakeSegmind(
        api_key=SEGMIND_KEY, queue_seconds=0.0, processing_seconds=0.0, history_delay_seconds=0
    ) as f:
        yield f


@pytest.fixture
async def segmind(fake: FakeSegmind) -> AsyncIterator[SegmindClient]:
    async with make_segmind(fake) as client:
        yield client


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(tmp_path / "veo.sqlite3")
    yield opened
    await opened.close()


class Ledger:
    """Stands in for the spend ledger's `record_billed`: what it was told, per job."""

    def __init__(self) -> None:
        self.billed: dict[int, list[tuple[float, str]]] = {}

    async def __call__(
        self, job_id: int, amount: float, *, source: str, now: float | None = None
    ) -> bool:
        seen = self.billed.setdefault(job_id, [])
        new = (amount, source) not in seen
        seen.append((amount, source))
        return new


class Alerts:
    def __init__(self) -> None:
        self.posted: list[tuple[Discrepancy, str]] = []

    async def post(self, discrepancy: Discrepancy, text: str) -> bool:
        self.posted.append((discrepancy, text))
        return True


async def made(store: Store, segmind: SegmindClient, prompt: str, *, refunded: bool = False) -> Job:
    """A job the bot sent and Segmind finished: delivered and charged, or refunded."""
    outcome = await store.reserve(
        ReserveRequest(GUILD, 200, 300, (), VeoParams(prompt=prompt, seed=5)), LIMITS
    )
    assert isinstance(outcome, Reserved)
    job_id = outcome.job_id
    assert await store.transition(job_id, "queued", "submitting")
    submitted = await segmind.submit(VeoParams(prompt=prompt, seed=5))
    with contextlib.suppress(GenerationFailed):  # a [fake:fail] prompt fails, as meant
        await segmind.wait(submitted)
    assert await store.transition(
        job_id, "submitting", "submitted", request_id=submitted.request_id
    )
    if refunded:
        assert await store.transition(job_id, "submitted", "failed")
        await store.release(job_id, "delivery_failed", LIMITS)
    else:
        for src, dst in (("submitted", "completed"), ("completed", "delivering")):
            assert await store.transition(job_id, src, dst)  # type: ignore[arg-type]
        assert await store.transition(job_id, "delivering", "delivered")
        await store.charge(job_id, 0.6)
    job = await store.get_job(job_id)
    assert job is not None
    return job


def reconciler(store: Store, segmind: SegmindClient, **kw: Any) -> Reconciler:
    kw.setdefault("settle_lag", 0.0)
    return Reconciler(store, segmind, **kw)


async def test_each_known_job_gets_what_segmind_billed_and_disagreements_are_posted_once(
    store: Store, segmind: SegmindClient, fake: FakeSegmind
) -> None:
    delivered = await made(store, segmind, "a delivered fox")
    refunded = await made(store, segmind, "a fox Discord never showed", refunded=True)
    failed = await made(store, segmind, "a fox [fake:fail]", refunded=True)
    stranger = await segmind.submit(VeoParams(prompt="made by another app"))
    await segmind.wait(stranger)
    ledger, alerts = Ledger(), Alerts()

    first = await reconciler(store, segmind, record_billed=ledger, alerts=alerts).run_once()

    assert ledger.billed == {
        delivered.id: [(0.6, "history")],
        refunded.id: [(0.6, "history")],
        failed.id: [(0.0, "history")],  # a failed request costs nothing, and says so
    }
    assert (first.requests, first.recorded, first.discrepancies) == (4, 3, 2)
    kinds = {(d.kind, d.request_id, d.job_id) for d, _ in alerts.posted}
    assert kinds == {
        ("billed_but_refunded", refunded.request_id, refunded.id),
        ("unknown_request", stranger.request_id, None),
    }
    texts = {d.kind: text for d, text in alerts.posted}
    assert (
        "$0.60" in texts["billed_but_refunded"]
        and f"job {refunded.id}" in texts["billed_but_refunded"]
    )
    assert texts["unknown_request"] == describe(
        next(d for d, _ in alerts.posted if d.kind == "unknown_request")
    )
    listed = await store.discrepancies(GUILD)
    assert {d.kind for d in listed} == {"billed_but_refunded", "unknown_request"}

    # The next pass (a restart: a new reconciler, the same database) posts nothing twice.
    again = await reconciler(store, segmind, record_billed=ledger, alerts=alerts).run_once()
    assert again.discrepancies == 0 and len(alerts.posted) == 2


async def test_a_bill_far_from_the_quote_is_flagged(store: Store, segmind: SegmindClient) -> None:
    close = await made(store, segmind, "a fox near its quote")
    far = await made(store, segmind, "a fox far from its quote")
    quotes = {close.id: 0.55, far.id: 0.40}  # billed 0.60: +9 %, +50 %
    alerts = Alerts()

    async def quote(job: Job) -> float | None:
        return quotes.get(job.id)

    done = await reconciler(
        store, segmind, record_billed=None, alerts=alerts, quote=quote
    ).run_once()

    assert done.recorded == 0  # no spend ledger wired: nothing recorded, still judged
    ((found, text),) = alerts.posted
    assert (found.kind, found.job_id, found.expected) == ("cost_off_quote", far.id, 0.40)
    assert "$0.60" in text and "$0.40" in text


async def test_the_cursor_waits_for_requests_still_in_flight(
    store: Store, segmind: SegmindClient, fake: FakeSegmind
) -> None:
    await made(store, segmind, "an early fox")
    fake.processing_seconds = 3600.0  # the next one is still rendering at Segmind
    slow = await segmind.submit(VeoParams(prompt="a slow fox"))
    done = await reconciler(store, segmind, record_billed=None, alerts=None).run_once()

    saved = await store.get_cursor(CURSOR)
    assert saved is not None and float(saved) == done.cursor
    # Not past the pending request's creation: its bill is judged by a later pass.
    row = await segmind.history_row(slow.request_id)
    assert row is not None and row.created_at is not None
    assert done.cursor <= row.created_at.timestamp()


async def test_the_task_runs_a_pass_and_stops(store: Store, segmind: SegmindClient) -> None:
    await made(store, segmind, "a fox")
    ledger = Ledger()
    task = reconciler(store, segmind, record_billed=ledger, alerts=None, interval=3600)
    task.start()
    for _ in range(200):
        if await store.get_cursor(CURSOR) is not None:
            break
        await asyncio.sleep(0.02)
    await task.stop()
    assert len(ledger.billed) == 1


async def test_the_spend_ledger_learns_what_segmind_billed_for_a_refunded_job(
    store: Store, segmind: SegmindClient
) -> None:
    """The member got no video and was refunded; the owner still paid, and the spend caps
    must count it: Segmind's record says so and the reconciler writes it down."""
    delivered = await made(store, segmind, "a delivered fox")
    refunded = await made(store, segmind, "a fox Discord never showed", refunded=True)
    before = await store.spend_by_day(GUILD, since=0)
    assert sum(day.billed for day in before) == pytest.approx(0.6)  # only metrics.cost so far

    done = await reconciler(
        store, segmind, record_billed=store.record_billed, alerts=None
    ).run_once()

    after = await store.spend_by_day(GUILD, since=0)
    assert sum(day.billed for day in after) == pytest.approx(1.2)
    assert sum(day.held_jobs for day in after) == 0  # no quote left standing in for a bill
    assert done.recorded == 2  # Segmind's own record replaces the delivered job's metrics.cost
    assert {d.job_id for d in await store.discrepancies(GUILD)} == {refunded.id}
    assert delivered.ledger_status == "charged"
