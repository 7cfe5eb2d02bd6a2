"""The owner's money through the job lifecycle: each job is quoted by the price book and held
at that quote against the spend caps; what the lifecycle learns of Segmind's bill replaces the
hold; the member's refund never lowers what the owner is counted to have spent.

Same set-up as `test_jobs.py`: the Segmind fake over real HTTP (it bills $0.60 a video), a
real client, a SQLite store, a recording output."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import bot.jobs
from bot.billing import Billing, billed_by_failure
from bot.chat.reports import budget_over_max_text, limits_text, monthly_budget_lines
from bot.params import VeoParams
from bot.pricing import PUBLISHED_MAX, PriceBook
from bot.quota import GuildLimits, LimitDefaults, Refusal, UsageSnapshot, effective_limits
from bot.segmind.client import SegmindClient
from bot.segmind.fake import FakeSegmind, Fault
from bot.store import DaySpend, Store, open_store
from tests.lifecycle_support import (
    MEMBER,
    SEGMIND_KEY,
    OutputUnavailable,
    RecordingOutput,
    counts_against_limit,
    enqueue,
    make_segmind,
    make_service,
    new_job,
)

BILLED = 0.6  # what the fake bills per video


@pytest.fixture(autouse=True)
def quick_delivery_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bot.jobs, "DELIVERY_BACKOFF", 0.01)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSegmind]:
    async with FakeSegmind(api_key=SEGMIND_KEY, queue_seconds=0.02, processing_seconds=0.05) as f:
        yield f


@pytest.fixture
async def segmind(fake: FakeSegmind) -> AsyncIterator[SegmindClient]:
    async with make_segmind(fake) as client:
        yield client


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(tmp_path / "data" / "veo.sqlite3")
    yield opened
    await opened.close()


@pytest.fixture
def output() -> RecordingOutput:
    return RecordingOutput()


@pytest.fixture
async def service(
    store: Store, segmind: SegmindClient, output: RecordingOutput, tmp_path: Path
) -> AsyncIterator[bot.jobs.JobService]:
    made = make_service(store, segmind, output, tmp_path / "work")
    await made.start()
    yield made
    await made.stop()


async def today(store: Store) -> DaySpend:
    [day] = await store.spend_by_day(None, 0.0)
    return day


async def test_a_delivered_video_is_billed_its_cost_and_teaches_the_price_book(
    service: bot.jobs.JobService, store: Store, output: RecordingOutput
) -> None:
    params = VeoParams(prompt="a red fox in the snow")
    assert service.billing.quote(params).basis == "published"  # nothing billed yet
    job_id = await enqueue(service)
    await output.settled(job_id)

    day = await today(store)
    # Held at the top of Segmind's range until the bill came; counted at the bill now.
    assert (day.quoted, day.billed, day.held, day.billed_jobs) == (PUBLISHED_MAX, BILLED, 0, 1)
    learned = service.billing.quote(params)
    assert (learned.amount, learned.basis, learned.samples) == (BILLED, "observed", 1)


async def test_a_refused_submit_and_a_failed_generation_bill_nothing(
    service: bot.jobs.JobService, store: Store, output: RecordingOutput, fake: FakeSegmind
) -> None:
    refused = await enqueue(service, "a fox [fake:credits]")
    await output.settled(refused)
    failed = await enqueue(service, "a fox [fake:fail]")
    await output.settled(failed)

    day = await today(store)
    assert (day.billed, day.held, day.held_jobs, day.billed_jobs) == (0.0, 0.0, 0, 0)
    assert fake.submits and len(fake.submits) == 1  # only the failed one reached Segmind


async def test_an_undelivered_video_is_refunded_to_the_member_but_stays_on_the_owners_bill(
    service: bot.jobs.JobService, store: Store, output: RecordingOutput
) -> None:
    attempts = bot.jobs.DELIVERY_ATTEMPTS
    output.fail_deliver = {n: OutputUnavailable("502") for n in range(1, attempts + 1)}
    job_id = await enqueue(service)
    await output.settled(job_id)

    assert not await counts_against_limit(store)  # the member's video is given back
    day = await today(store)
    assert (day.billed, day.billed_jobs) == (BILLED, 1)  # Segmind still billed the owner


async def test_a_lost_answer_found_in_the_history_is_delivered_and_billed(
    service: bot.jobs.JobService, store: Store, output: RecordingOutput, fake: FakeSegmind
) -> None:
    fake.inject("submit", Fault(drop=True))  # Segmind made and billed it; the answer is lost
    job_id = await enqueue(service)
    await output.settled(job_id)

    assert (await store.get_job(job_id)).state == "delivered"  # type: ignore[union-attr]
    assert len(fake.submits) == 1
    day = await today(store)
    assert (day.billed, day.billed_jobs, day.held_jobs) == (BILLED, 1, 0)


async def test_a_submit_whose_answer_was_lost_keeps_its_quote_held(
    service: bot.jobs.JobService, store: Store, output: RecordingOutput, fake: FakeSegmind
) -> None:
    fake.inject("submit", Fault(drop=True))  # Segmind made and billed it; the answer is lost
    # ...and its history cannot be read: the job cannot be recovered and is written off.
    fake.inject("history", Fault(status=503), times=10_000)
    job_id = await enqueue(service)
    await output.settled(job_id)

    assert (await store.get_job(job_id)).state == "unknown"  # type: ignore[union-attr]
    assert not await counts_against_limit(store)
    day = await today(store)
    # Until Segmind's history says what it billed, the owner's cap counts the quote.
    assert (day.held, day.held_jobs, day.billed_jobs) == (PUBLISHED_MAX, 1, 0)


async def test_a_job_cancelled_in_the_queue_bills_nothing(
    store: Store, segmind: SegmindClient, output: RecordingOutput, tmp_path: Path
) -> None:
    idle = make_service(store, segmind, output, tmp_path / "work")  # not started: stays queued
    job_id = await enqueue(idle)
    assert (await idle.cancel(job_id, actor_id=MEMBER, moderator=False)).outcome == "cancelled"
    day = await today(store)
    assert (day.held, day.held_jobs, day.billed) == (0.0, 0, 0.0)


async def test_the_quote_is_what_the_spend_cap_holds(
    store: Store, segmind: SegmindClient, output: RecordingOutput, tmp_path: Path
) -> None:
    capped = LimitDefaults(user_limit=10, concurrency=10, daily_spend_cap=1.0)
    idle = make_service(store, segmind, output, tmp_path / "work", defaults=capped)
    # Options never billed are quoted at $1.20: more than the whole $1.00 cap.
    refusal = await idle.enqueue(new_job())
    assert isinstance(refusal, Refusal) and refusal.kind == "spend_cap"
    # Once Segmind billed these options $0.60, one fits and a second does not.
    idle.billing.book.observe(VeoParams(prompt="any"), BILLED)
    assert not isinstance(await idle.enqueue(new_job()), Refusal)
    refusal = await idle.enqueue(new_job(user_id=MEMBER + 10))
    assert isinstance(refusal, Refusal) and refusal.spent == pytest.approx(BILLED)


async def test_the_price_book_starts_from_the_bills_in_the_store(
    service: bot.jobs.JobService, store: Store, output: RecordingOutput
) -> None:
    await output.settled(await enqueue(service))
    fresh = Billing(store, PriceBook())  # the next start of the bot
    assert await fresh.load() == 1
    assert fresh.quote(VeoParams(prompt="another prompt")).amount == BILLED


def test_a_failed_job_costs_its_reported_cost_or_nothing() -> None:
    assert billed_by_failure({"metrics": {"cost": 0.4}}) == 0.4
    assert billed_by_failure({"metrics": {"cost": "0.4"}}) == 0.0  # not a number: unverified
    assert billed_by_failure({"metrics": {"cost": -1}}) == 0.0
    assert billed_by_failure({"metrics": None}) == 0.0
    assert billed_by_failure({}) == 0.0


def test_limits_show_the_monthly_budget_its_maximum_and_the_months_spend() -> None:
    owner = LimitDefaults(monthly_spend_cap=300.0, guild_monthly_budget_max=50.0)
    text = limits_text(
        GuildLimits(monthly_budget=80.0), owner, {}, {}, frozenset(), None, month_spent=12.5
    )
    assert (
        "Server budget per month (UTC): $50.00 (server) — the server asked for $80.00, above "
        "the maximum; the owner allows at most $50.00; spent this month: $12.50"
    ) in text
    assert "$300.00 per calendar month (UTC)" in text
    assert "Not saved: $80.00 a month is above" in budget_over_max_text(80.0, owner)


def test_the_member_sees_the_monthly_budgets_in_force() -> None:
    limits = effective_limits(
        LimitDefaults(monthly_spend_cap=300.0), GuildLimits(monthly_budget=40.0)
    )
    usage = UsageSnapshot(guild_month_spend=12.0, global_month_spend=99.5)
    assert monthly_budget_lines(limits, usage) == [
        "This server's video budget this month: $12.00 of $40.00 used (renews on the 1st, UTC).",
        "The bot's video budget this month: $99.50 of $300.00 used (renews on the 1st, UTC).",
    ]
    assert monthly_budget_lines(effective_limits(LimitDefaults()), UsageSnapshot()) == []
