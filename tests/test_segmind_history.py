"""Reading Segmind's request history through `SegmindClient`: one row by id, pages over a date
window, the undocumented page shape, pacing inside the shared budget, and the key kept secret.

Against the fake over loopback HTTP; the clock and sleeps are injected, so pacing costs no time.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import logging
import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from bot.params import VeoParams
from bot.segmind.client import AuthError, RateLimited, SegmindClient, Unavailable
from bot.segmind.fake import FakeSegmind, Fault
from bot.segmind.history import (
    DEFAULT_HISTORY_URL,
    HistoryRow,
    HistoryShapeError,
    HistoryStatus,
    date_windows,
    dedupe,
    page_rows,
    parse_row,
    total_billed,
)

KEY = "sk-history-0123456789-SECRET"
DAY = 86_400.0
NOON = datetime(2026, 3, 15, 12, tzinfo=UTC)
TODAY = NOON.date()
DELAY = 2.0


class FakeTime:
    """A clock that moves only when someone sleeps on it; sleeps return at once."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[], None] | None = None

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
        if self.on_sleep is not None:
            self.on_sleep()
        await asyncio.sleep(0)


@pytest.fixture
def ft() -> FakeTime:
    return FakeTime()


@pytest.fixture
async def fake(ft: FakeTime) -> AsyncIterator[FakeSegmind]:
    async with FakeSegmind(
        api_key=KEY,
        queue_seconds=5.0,
        processing_seconds=60.0,
        clock=ft.clock,
        wall_clock=NOON.timestamp,
        cost_per_job=None,
        credits=10_000.0,
        history_delay_seconds=DELAY,
    ) as running:
        yield running


def make_client(fake: FakeSegmind, ft: FakeTime, **kwargs: Any) -> SegmindClient:
    options: dict[str, Any] = {
        "clock": ft.clock,
        "sleep": ft.sleep,
        "rng": random.Random(3),
        "timeout": 2.0,
        "connect_timeout": 1.0,
        "history_url": fake.history_url,
    }
    options.update(kwargs)
    return SegmindClient(KEY, fake.base_url, **options)


@pytest.fixture
async def client(fake: FakeSegmind, ft: FakeTime) -> AsyncIterator[SegmindClient]:
    async with make_client(fake, ft) as running:
        yield running


def body(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"prompt": prompt, "duration": 8, "resolution": "720p", "generate_audio": True, **extra}


def backfill(fake: FakeSegmind, count: int, *, days: float, prompt: str = "a past clip") -> None:
    """`count` finished jobs spread evenly over the last `days` days."""
    now = fake.now()
    for index in range(count):
        age = DAY * days * (index + 1) / (count + 1)
        fake.backfill(body(f"{prompt} {index}", seed=index + 1), submitted_at=now - age)


async def collect(client: SegmindClient, since: date, until: date, **kwargs: Any) -> list[Any]:
    return [row async for row in client.history(since, until, **kwargs)]


def history_requests(fake: FakeSegmind) -> int:
    return sum(1 for r in fake.requests if r.route in ("history", "history-row"))


def test_the_default_address_is_the_official_sdks() -> None:
    sdk = importlib.import_module("segmind.generations")
    assert sdk.REQUEST_HISTORY_URL == DEFAULT_HISTORY_URL


# --- one row ----------------------------------------------------------------------------------


async def test_one_row_by_id_once_it_has_landed(
    client: SegmindClient, fake: FakeSegmind, ft: FakeTime
) -> None:
    params = VeoParams(prompt="a kite over dunes", seed=31337, duration=6, generate_audio=False)
    job = await client.submit(params)

    assert await client.history_row(job.request_id) is None  # not landed yet
    ft.now += DELAY
    pending = await client.history_row(job.request_id)
    ft.now += 65.0
    done = await client.history_row(job.request_id)

    assert pending is not None and pending.status is HistoryStatus.PENDING
    assert done is not None
    assert done.status is HistoryStatus.COMPLETED
    assert done.billed == pytest.approx(0.60)  # 6 s, 720p, silent
    assert done.request_body == params.to_body()
    assert done.generation_url is not None
    assert done.created_at is not None and done.created_at.date() == TODAY
    assert await client.history_row("no-such-request") is None


async def test_one_row_outlives_the_one_hour_retention(
    client: SegmindClient, fake: FakeSegmind, ft: FakeTime
) -> None:
    job = await client.submit(VeoParams(prompt="an old request"))
    ft.now += 30 * DAY

    row = await client.history_row(job.request_id)

    assert row is not None
    assert row.status is HistoryStatus.COMPLETED
    assert row.generation_url is not None and job.request_id in row.generation_url


# --- pages ------------------------------------------------------------------------------------


async def test_paging_a_window_wider_than_31_days_reads_every_row_once(
    client: SegmindClient, fake: FakeSegmind
) -> None:
    backfill(fake, 250, days=45)

    rows = await collect(client, TODAY - timedelta(days=45), TODAY)

    assert len(rows) == 250
    assert len(dedupe(rows)) == 250
    assert total_billed(rows) == pytest.approx(250 * 1.0)
    # Two windows (31 + 15 days), each paged at 100 until a short page: a handful of requests.
    windows = date_windows(TODAY - timedelta(days=45), TODAY)
    assert len(windows) == 2
    assert history_requests(fake) <= 2 + 250 // 100 + 1


async def test_a_page_exactly_full_is_followed_by_an_empty_one(
    client: SegmindClient, fake: FakeSegmind
) -> None:
    backfill(fake, 20, days=3)

    rows = await collect(client, TODAY - timedelta(days=3), TODAY, per_page=10)

    assert len(rows) == 20
    assert history_requests(fake) == 3  # 10, 10, then an empty page ends it


async def test_a_row_landing_mid_paging_repeats_one_but_skips_none(
    client: SegmindClient, fake: FakeSegmind, ft: FakeTime
) -> None:
    backfill(fake, 20, days=2)
    present = {job.request_id for job in fake.jobs.values()}
    landed: list[str] = []

    def land_one_early_row() -> None:
        # Between two pages, a request older than every row so far shows up at the front.
        if not landed:
            job = fake.backfill(body("late record"), submitted_at=fake.now() - 1.95 * DAY)
            landed.append(job.request_id)

    ft.on_sleep = land_one_early_row
    rows = await collect(client, TODAY - timedelta(days=2), TODAY, per_page=10)

    ids = [row.request_id for row in rows]
    assert present <= set(ids)
    assert len(ids) == len(set(ids)) + 1  # the row pushed across a page boundary, read twice
    assert len(dedupe(rows)) == 20


async def test_several_outputs_are_summed_once(
    client: SegmindClient, fake: FakeSegmind, ft: FakeTime
) -> None:
    await client.submit(VeoParams(prompt="three takes [fake:outputs=3]"))
    await client.submit(VeoParams(prompt="a storm [fake:fail]"))
    ft.now += 70.0

    rows = await collect(client, TODAY, TODAY)

    assert len(rows) == 4  # three outputs of one request, plus the failed one
    unique = dedupe(rows)
    assert len(unique) == 2
    assert total_billed(rows) == pytest.approx(0.8)  # once, and the failed one costs nothing
    assert sorted(r.status for r in unique.values()) == ["COMPLETED", "FAILED"]


async def test_the_status_filter_is_sent(client: SegmindClient, fake: FakeSegmind) -> None:
    backfill(fake, 3, days=1)
    fake.backfill(body("broken [fake:fail]"), submitted_at=fake.now() - 100)

    rows = await collect(client, TODAY - timedelta(days=1), TODAY, status=HistoryStatus.FAILED)

    assert [row.status for row in rows] == [HistoryStatus.FAILED]


async def test_pages_are_paced_inside_the_shared_budget(fake: FakeSegmind, ft: FakeTime) -> None:
    backfill(fake, 50, days=2)
    async with make_client(fake, ft, max_rpm=8, history_share=0.25) as paced:
        paced.limiter.grant_log = []
        rows = await collect(paced, TODAY - timedelta(days=2), TODAY, per_page=10)
        grants = paced.limiter.grant_log

    assert len(rows) == 50
    assert paced.limiter.granted == len(fake.requests) == 6
    # A quarter of 8 per 61 s window: one page every 30.5 s, leaving the rest to members' jobs.
    gaps = [later - earlier for earlier, later in itertools.pairwise(grants)]
    assert all(gap >= 30.5 for gap in gaps)


async def test_readers_at_once_share_one_pace(fake: FakeSegmind, ft: FakeTime) -> None:
    """The reconciler and a lost submit being looked up page at the same time: together they
    stay inside the history's share, so job polling keeps the rest of the budget."""
    backfill(fake, 30, days=2)
    async with make_client(fake, ft, max_rpm=8, history_share=0.25) as paced:
        paced.limiter.grant_log = []
        since = TODAY - timedelta(days=2)
        both = await asyncio.gather(
            collect(paced, since, TODAY, per_page=10), collect(paced, since, TODAY, per_page=10)
        )
        grants = paced.limiter.grant_log

    assert [len(rows) for rows in both] == [30, 30]
    assert len(grants) == 8  # 4 pages each (the last one empty)
    gaps = [later - earlier for earlier, later in itertools.pairwise(grants)]
    assert all(gap >= 30.5 for gap in gaps), gaps


async def test_a_rate_limited_page_waits_for_the_reset_and_retries(
    client: SegmindClient, fake: FakeSegmind, ft: FakeTime
) -> None:
    backfill(fake, 5, days=1)
    fake.inject("history", Fault(status=429, headers={"Retry-After": "7"}))

    rows = await collect(client, TODAY - timedelta(days=1), TODAY)

    assert len(rows) == 5
    assert 7.0 in ft.sleeps


async def test_a_limit_that_outlasts_the_retries_raises(fake: FakeSegmind, ft: FakeTime) -> None:
    fake.inject("history", Fault(status=429), times=2)
    async with make_client(fake, ft, max_attempts=2) as c:
        with pytest.raises(RateLimited):
            await collect(c, TODAY, TODAY)


# --- the undocumented page shape --------------------------------------------------------------


def raw_row(request_id: str, cost: float = 0.6) -> dict[str, Any]:
    return {"request_id": request_id, "model_status": "COMPLETED", "credits_deduction": cost}


async def test_a_bare_list_page_is_read(client: SegmindClient, fake: FakeSegmind) -> None:
    fake.inject("history", Fault(body=[raw_row("a"), raw_row("b")]))

    rows = await collect(client, TODAY, TODAY)

    assert [row.request_id for row in rows] == ["a", "b"]


async def test_rows_under_any_single_list_key_are_read(
    client: SegmindClient, fake: FakeSegmind
) -> None:
    fake.inject("history", Fault(body={"items": [raw_row("c")], "meta": {"total": 1}}))

    rows = await collect(client, TODAY, TODAY)

    assert [row.request_id for row in rows] == ["c"]


async def test_an_unreadable_page_fails_closed(client: SegmindClient, fake: FakeSegmind) -> None:
    fake.inject("history", Fault(body={"rows": [raw_row("d")], "more": [raw_row("e")]}))

    with pytest.raises(Unavailable, match="unreadable"):
        await collect(client, TODAY, TODAY)


async def test_a_server_that_ignores_page_is_not_paged_forever(
    client: SegmindClient, fake: FakeSegmind
) -> None:
    same = [raw_row(f"r{i}") for i in range(10)]
    fake.inject("history", Fault(body=same), times=5)

    with pytest.raises(Unavailable, match="repeats"):
        await collect(client, TODAY, TODAY, per_page=10)

    assert history_requests(fake) == 2


async def test_one_row_wrapped_under_a_key_is_read(
    client: SegmindClient, fake: FakeSegmind
) -> None:
    fake.inject("history", Fault(status=200, body={"data": raw_row("w"), "success": True}))
    fake.inject("history", Fault(status=200, body={"success": True}))

    row = await client.history_row("w")

    assert row is not None and row.request_id == "w"
    with pytest.raises(Unavailable):
        await client.history_row("w")


def test_page_shapes() -> None:
    assert [r.request_id for r in page_rows({"data": [raw_row("x")], "page": 1})] == ["x"]
    assert page_rows({"data": []}) == []
    assert [r.request_id for r in page_rows({"tags": ["t"], "data": [raw_row("y")]})] == ["y"]
    for bad in ({"page": 1}, raw_row("z"), "rows", None):
        with pytest.raises(HistoryShapeError):
            page_rows(bad)


# --- the row model ----------------------------------------------------------------------------


def test_a_row_tolerates_missing_and_odd_fields() -> None:
    bare = parse_row({"request_id": "only-an-id"})
    odd = parse_row(
        {
            "request_id": 12345,
            "model_status": "completed",
            "credits_deduction": "0.8",
            "latency_ms": "n/a",
            "request_body": "not an object",
            "generation_url": "",
            "model_created": 1_773_576_000_000,
            "updated_at": "yesterday",
            "something_new": {"kept": True},
        }
    )

    assert bare.status is HistoryStatus.PENDING  # nothing concluded from a row that says nothing
    assert bare.billed is None
    assert odd.request_id == "12345"
    assert odd.status is HistoryStatus.COMPLETED
    assert odd.billed == pytest.approx(0.8)
    assert odd.latency_ms is None
    assert odd.request_body is None
    assert odd.generation_url is None
    assert odd.created_at == datetime(2026, 3, 15, 12, tzinfo=UTC)
    assert odd.updated_at is None
    with pytest.raises(HistoryShapeError):
        parse_row({"credits_deduction": 0.6})
    with pytest.raises(HistoryShapeError):
        parse_row({"request_id": ""})


def test_dedupe_keeps_the_ending_over_an_earlier_pending_read() -> None:
    pending = HistoryRow(request_id="q", model_status="PENDING", credits_deduction=1.0)
    failed = HistoryRow(request_id="q", model_status="FAILED", credits_deduction=0.0)

    assert dedupe([pending, failed])["q"].status is HistoryStatus.FAILED
    assert total_billed([pending, failed]) == 0.0


def test_date_windows_never_exceed_31_days() -> None:
    start, end = date(2026, 1, 1), date(2026, 4, 10)
    windows = date_windows(start, end)

    assert windows[0] == (date(2026, 1, 1), date(2026, 1, 31))
    assert windows[-1][1] == end
    assert all((last - first).days + 1 <= 31 for first, last in windows)
    assert all(b[0] == a[1] + timedelta(days=1) for a, b in itertools.pairwise(windows))
    assert date_windows(end, end) == [(end, end)]


# --- the key ----------------------------------------------------------------------------------


async def test_the_key_is_sent_and_never_shown(
    client: SegmindClient, fake: FakeSegmind, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.inject("history", Fault(status=401, body={"error": f"bad key {KEY}"}))

    with pytest.raises(AuthError) as info:
        await client.history_row("any")
    backfill(fake, 2, days=1)
    rows = await collect(client, TODAY - timedelta(days=1), TODAY)

    assert KEY not in str(info.value) and KEY not in repr(info.value)
    assert "[redacted]" in str(info.value)
    assert len(rows) == 2  # the key was accepted on the paged route
    assert KEY not in caplog.text
    assert caplog.records
