"""The fake's request history over real loopback HTTP: what Segmind billed, row by row.

The fake's clock and its wall-clock anchor are injected, so rows land and dates fall exactly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from bot.segmind.fake import FakeSegmind, Fault
from bot.segmind.fake.jobs import INTERNAL_ERROR

KEY = "history-key"
AUTH = {"x-api-key": KEY}
QUEUE = 2.0
PROCESSING = 10.0
DELAY = 3.0
DAY = 86_400.0
# 2026-03-15 12:00 UTC: mid-day, so a few hours either way stay on the same date.
WALL_START = datetime(2026, 3, 15, 12, tzinfo=UTC).timestamp()


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def fake(clock: ManualClock) -> AsyncIterator[FakeSegmind]:
    async with FakeSegmind(
        api_key=KEY,
        queue_seconds=QUEUE,
        processing_seconds=PROCESSING,
        credits=50.0,
        cost_per_job=None,  # priced by parameters, so costs differ per row
        clock=clock,
        wall_clock=lambda: WALL_START,
        history_delay_seconds=DELAY,
    ) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def body(prompt: str = "a heron at dawn", **extra: Any) -> dict[str, Any]:
    return {"prompt": prompt, "duration": 8, "resolution": "720p", "generate_audio": True, **extra}


async def submit(http: aiohttp.ClientSession, fake: FakeSegmind, **kwargs: Any) -> str:
    async with http.post(f"{fake.base_url}/v2/veo-3-fast", json=body(**kwargs), headers=AUTH) as r:
        assert r.status == 200
        request_id: str = (await r.json())["request_id"]
        return request_id


async def page(
    http: aiohttp.ClientSession, fake: FakeSegmind, **params: Any
) -> tuple[int, dict[str, Any]]:
    query = {key: str(value) for key, value in params.items()}
    async with http.get(fake.history_url, params=query, headers=AUTH) as response:
        return response.status, await response.json()


async def row(http: aiohttp.ClientSession, fake: FakeSegmind, request_id: str) -> Any:
    async with http.get(f"{fake.history_url}/{request_id}", headers=AUTH) as response:
        return response.status, await response.json()


async def test_rows_land_after_the_delay_and_follow_the_job(
    fake: FakeSegmind, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    request_id = await submit(http, fake)

    assert (await row(http, fake, request_id))[0] == 404
    assert (await page(http, fake))[1]["data"] == []

    clock.advance(DELAY)
    status, pending = await row(http, fake, request_id)
    assert status == 200
    assert pending["model_status"] == "PENDING"
    assert pending["generation_url"] is None
    assert pending["latency_ms"] is None

    clock.advance(QUEUE + PROCESSING)
    _, done = await row(http, fake, request_id)
    assert done["request_id"] == request_id
    assert done["model_name"] == "veo-3-fast"
    assert done["model_status"] == "COMPLETED"
    assert done["credits_deduction"] == pytest.approx(1.0)  # 8 s 720p with audio
    assert done["request_body"] == body()
    assert done["generation_url"].endswith(f"/_fake/outputs/{request_id}.mp4")
    assert done["latency_ms"] == round((QUEUE + PROCESSING) * 1000)
    assert done["created_at"].startswith("2026-03-15T12:00")
    assert done["error"] is None
    # The history agrees with the account: the balance fell by exactly that row.
    assert fake.credits == pytest.approx(50.0 - done["credits_deduction"])


async def test_a_failed_job_is_listed_and_costs_nothing(
    fake: FakeSegmind, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    request_id = await submit(http, fake, prompt="a storm [fake:fail]")
    clock.advance(DELAY + QUEUE + PROCESSING)

    _, failed = await row(http, fake, request_id)

    assert failed["model_status"] == "FAILED"
    assert failed["credits_deduction"] == 0
    assert failed["error"] == INTERNAL_ERROR
    assert failed["generation_url"] is None


async def test_a_submit_whose_answer_was_dropped_is_still_billed(
    fake: FakeSegmind, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    fake.inject("submit", Fault(drop=True))
    with pytest.raises(aiohttp.ClientError):
        await submit(http, fake, prompt="a lost fox", seed=424242)
    clock.advance(DELAY + QUEUE + PROCESSING)

    _, listed = await page(http, fake)

    [lost] = listed["data"]
    assert lost["request_body"]["seed"] == 424242
    assert lost["model_status"] == "COMPLETED"
    assert lost["credits_deduction"] == pytest.approx(1.0)


async def test_several_outputs_give_several_rows_each_with_the_full_cost(
    fake: FakeSegmind, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    request_id = await submit(http, fake, prompt="three takes [fake:outputs=3]")
    clock.advance(DELAY + QUEUE + PROCESSING)

    _, listed = await page(http, fake)
    async with http.get(f"{fake.base_url}/v2/requests/{request_id}", headers=AUTH) as response:
        result = await response.json()

    rows = listed["data"]
    assert [r["request_id"] for r in rows] == [request_id] * 3
    assert len({r["generation_url"] for r in rows}) == 3
    assert all(r["credits_deduction"] == pytest.approx(1.0) for r in rows)
    assert sorted(result["output"]) == sorted(r["generation_url"] for r in rows)
    # Billed once, whatever the row count.
    assert fake.credits == pytest.approx(49.0)


async def test_one_row_of_any_age_but_status_is_gone_after_retention(
    fake: FakeSegmind, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    request_id = await submit(http, fake)
    clock.advance(40 * DAY)

    async with http.get(f"{fake.base_url}/v2/requests/{request_id}", headers=AUTH) as response:
        assert response.status == 404
    status, old = await row(http, fake, request_id)

    assert status == 200
    assert old["model_status"] == "COMPLETED"
    assert old["generation_url"]
    # ...while the paged history, bounded by its date window, no longer shows it by default.
    assert (await page(http, fake))[1]["data"] == []


async def test_pages_filters_and_sorting(
    fake: FakeSegmind, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    now = fake.now()
    cheap = fake.backfill(body("short", duration=4, generate_audio=False), submitted_at=now - 600)
    dear = fake.backfill(body("dear", resolution="1080p"), submitted_at=now - 500)
    failed = fake.backfill(body("broken [fake:fail]"), submitted_at=now - 400)
    old = fake.backfill(body("last month"), submitted_at=now - 20 * DAY)
    recent = [cheap, dear, failed]

    _, first = await page(http, fake, per_page=2)
    _, second = await page(http, fake, per_page=2, page=2)
    _, third = await page(http, fake, per_page=2, page=3)
    newest_first = [r["request_id"] for r in first["data"] + second["data"]]
    assert newest_first == [job.request_id for job in reversed(recent)]
    assert third["data"] == []

    _, ascending = await page(http, fake, sort_order="asc")
    assert [r["request_id"] for r in ascending["data"]] == [job.request_id for job in recent]

    _, by_cost = await page(http, fake, sort_by="credits_deduction")
    assert [r["credits_deduction"] for r in by_cost["data"]] == pytest.approx([1.2, 0.4, 0.0])

    _, only_failed = await page(http, fake, status="FAILED")
    assert [r["request_id"] for r in only_failed["data"]] == [failed.request_id]

    _, other_model = await page(http, fake, model_name="flux")
    assert other_model["data"] == []
    _, by_substring = await page(http, fake, model_name="veo-3")
    assert len(by_substring["data"]) == 3

    _, march = await page(http, fake, from_date="2026-02-20", to_date="2026-03-15")
    assert old.request_id in {r["request_id"] for r in march["data"]}
    assert len(march["data"]) == 4


@pytest.mark.parametrize(
    ("params", "word"),
    [
        ({"per_page": 0}, "per_page"),
        ({"per_page": 101}, "per_page"),
        ({"page": 0}, "page"),
        ({"from_date": "2026-01-01", "to_date": "2026-02-01"}, "31 days"),
        ({"from_date": "2026-03-10", "to_date": "2026-03-01"}, "from_date"),
        ({"from_date": "15/03/2026"}, "from_date"),
        ({"status": "DONE"}, "status"),
        ({"sort_by": "cost"}, "sort_by"),
        ({"sort_order": "up"}, "sort_order"),
    ],
)
async def test_out_of_range_queries_are_refused(
    fake: FakeSegmind, http: aiohttp.ClientSession, params: dict[str, Any], word: str
) -> None:
    status, answer = await page(http, fake, **params)

    assert status == 400
    assert word in answer["error"]


async def test_a_full_31_day_window_and_100_rows_are_accepted(
    fake: FakeSegmind, http: aiohttp.ClientSession
) -> None:
    status, _ = await page(http, fake, from_date="2026-01-01", to_date="2026-01-31", per_page=100)

    assert status == 200


async def test_history_needs_the_key(fake: FakeSegmind, http: aiohttp.ClientSession) -> None:
    async with http.get(fake.history_url) as listed, http.get(f"{fake.history_url}/x") as one:
        assert (listed.status, one.status) == (401, 401)
    async with http.get(fake.history_url, headers={"x-api-key": "wrong"}) as wrong:
        assert wrong.status == 401


async def test_the_delay_is_set_through_the_admin_api(
    fake: FakeSegmind, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{fake.base_url}/_fake/config", json={"history_delay_seconds": 0}) as r:
        assert (await r.json())["history_delay_seconds"] == 0

    request_id = await submit(http, fake)

    assert (await row(http, fake, request_id))[0] == 200
