"""A submit whose answer was lost, found again in Segmind's history (issue 12, item 4), and a
job past Segmind's one-hour retention delivered from its history row (item 5): the real
lifecycle, a real client and store, against the in-process fake.

What a member notices: the video arrives once and is charged once, nothing is sent to Segmind
twice; when the bot cannot tell which request was theirs, they are refunded and moderators
are told.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import bot.jobs
from bot.jobs import AMBIGUOUS, NOT_COUNTED, NOT_FOUND, UNCERTAIN, JobService
from bot.params import VeoParams
from bot.recovery import CLOCK_SKEW, Fingerprint, same_body
from bot.segmind.client import SegmindClient
from bot.segmind.fake import FakeSegmind, Fault
from bot.segmind.history import HistoryRow
from bot.store import Discrepancy, Job, Store, open_store
from tests.lifecycle_support import (
    SEGMIND_KEY,
    RecordingOutput,
    Stage,
    counts_against_limit,
    enqueue,
    make_segmind,
    make_service,
)

SENT = VeoParams(prompt="a red fox in the snow", seed=1234).to_body()
START = 1_700_000_000.0


def row(**fields: Any) -> HistoryRow:
    raw: dict[str, Any] = {
        "request_id": "rq-1",
        "model_name": "veo-3-fast",
        "request_body": dict(SENT),
        "created_at": datetime.fromtimestamp(START + 2, tz=UTC).isoformat(),
    }
    raw.update(fields)
    return HistoryRow.model_validate(raw)


FINGERPRINT = Fingerprint(body=SENT, start=START, end=START + 300)


# ------------------------------------------------------------------------ the fingerprint


def test_the_body_as_sent_matches_whatever_its_representation() -> None:
    assert FINGERPRINT.matches(row())
    reordered = dict(reversed(list(SENT.items())))
    stringly = {k: (str(v).lower() if not isinstance(v, str) else v) for k, v in SENT.items()}
    assert FINGERPRINT.matches(row(request_body=reordered))
    assert FINGERPRINT.matches(row(request_body=stringly))  # "8", "true": unverified echo
    assert FINGERPRINT.matches(row(request_body={**SENT, "base64": False}))  # added by Segmind
    assert FINGERPRINT.matches(row(request_body=__import__("json").dumps(SENT)))  # as text
    assert FINGERPRINT.matches(row(model_name=None, created_at=None))  # judged by the body


def test_another_request_never_matches() -> None:
    assert not FINGERPRINT.matches(row(request_body={**SENT, "seed": 1235}))
    assert not FINGERPRINT.matches(row(request_body={**SENT, "prompt": "a red fox"}))
    missing = {k: v for k, v in SENT.items() if k != "fps"}
    assert not FINGERPRINT.matches(row(request_body=missing))
    # A parameter the bot left out is another request when the row has it.
    assert not same_body(SENT, {**SENT, "image_url": "https://example.com/cat.png"})
    assert same_body(SENT, {**SENT, "image_url": None})
    assert not FINGERPRINT.matches(row(model_name="veo-3"))
    assert not FINGERPRINT.matches(row(request_body=None))
    late = datetime.fromtimestamp(START + 300 + CLOCK_SKEW + 1, tz=UTC).isoformat()
    early = datetime.fromtimestamp(START - CLOCK_SKEW - 1, tz=UTC).isoformat()
    assert not FINGERPRINT.matches(row(created_at=late))
    assert not FINGERPRINT.matches(row(created_at=early))


# ------------------------------------------------------------------------- the lifecycle


@pytest.fixture(autouse=True)
def quick_delivery_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bot.jobs, "DELIVERY_BACKOFF", 0.01)


@pytest.fixture(autouse=True)
def no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Any:
    caplog.set_level(logging.INFO)
    yield
    assert SEGMIND_KEY not in caplog.text


@pytest.fixture
async def fake() -> AsyncIterator[FakeSegmind]:
    async with FakeSegmind(
        api_key=SEGMIND_KEY, queue_seconds=0.02, processing_seconds=0.05, history_delay_seconds=0.2
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


@pytest.fixture
def output() -> RecordingOutput:
    return RecordingOutput()


class RecordingAlerts:
    def __init__(self) -> None:
        self.posted: list[tuple[Discrepancy, str]] = []

    async def post(self, discrepancy: Discrepancy, text: str) -> bool:
        self.posted.append((discrepancy, text))
        return True


@pytest.fixture
def alerts() -> RecordingAlerts:
    return RecordingAlerts()


@pytest.fixture
async def service(
    store: Store,
    segmind: SegmindClient,
    output: RecordingOutput,
    alerts: RecordingAlerts,
    tmp_path: Path,
) -> AsyncIterator[JobService]:
    made = make_service(store, segmind, output, tmp_path / "work", alerts=alerts)
    await made.start()
    yield made
    await made.stop()


def posts(fake: FakeSegmind) -> int:
    return sum(1 for r in fake.requests if r.route == "submit")


async def settled(store: Store, output: RecordingOutput, job_id: int) -> Job:
    await output.settled(job_id)
    found = await store.get_job(job_id)
    assert found is not None
    return found


async def test_a_lost_answer_with_no_request_at_segmind_is_refunded_after_the_window(
    service: JobService, store: Store, output: RecordingOutput, fake: FakeSegmind
) -> None:
    fake.inject("submit", Fault(status=502))  # the gateway failed: Segmind made nothing
    job_id = await enqueue(service)
    done = await settled(store, output, job_id)

    assert done.state == "unknown"
    assert (done.ledger_status, done.ledger_reason) == ("released", "unknown")
    assert not await counts_against_limit(store)
    assert posts(fake) == 1 and fake.jobs == {}
    assert Stage.RECOVERING in output.stages(job_id)
    # Looked for until the window closed (3 s in tests), not given up at the first miss.
    assert done.updated_at - (done.submit_started_at or 0) >= service.recovery_window
    assert [c.detail for c in output.of("failed", job_id)] == [NOT_FOUND]


async def test_a_lost_answer_while_the_history_is_down_is_refunded_as_uncertain(
    service: JobService, store: Store, output: RecordingOutput, fake: FakeSegmind
) -> None:
    fake.inject("submit", Fault(drop=True))  # Segmind made it, but the bot cannot find out
    fake.inject("history", Fault(status=503), times=10_000)
    job_id = await enqueue(service)
    done = await settled(store, output, job_id)

    assert done.state == "unknown"
    assert (done.ledger_status, done.ledger_reason) == ("released", "unknown")
    assert [c.detail for c in output.of("failed", job_id)] == [UNCERTAIN]
    assert posts(fake) == 1  # never re-sent, even though nothing could be confirmed


async def test_several_matching_requests_are_not_guessed_between(
    service: JobService,
    store: Store,
    output: RecordingOutput,
    fake: FakeSegmind,
    segmind: SegmindClient,
    alerts: RecordingAlerts,
) -> None:
    # Someone sent exactly the same options (prompt and seed) from elsewhere on the account.
    params = {"prompt": "the same fox", "seed": 77}
    twin = await segmind.submit(VeoParams(**params))
    fake.inject("submit", Fault(drop=True))
    job_id = await enqueue(service, **params)
    done = await settled(store, output, job_id)

    assert done.state == "unknown" and done.request_id is None
    assert (done.ledger_status, done.ledger_reason) == ("released", "unknown")
    assert output.of("deliver", job_id) == []
    assert [c.detail for c in output.of("failed", job_id)] == [AMBIGUOUS]
    found = await store.discrepancies(done.guild_id)
    ours = next(rid for rid in fake.jobs if rid != twin.request_id)
    assert {d.request_id for d in found} == {twin.request_id, ours}
    assert {d.kind for d in found} == {"ambiguous_recovery"}
    assert len(alerts.posted) == 2 and all(f"job {job_id}" in text for _, text in alerts.posted)
    assert await store.unposted_discrepancies() == []  # posted once, never again
    assert posts(fake) == 2  # the twin and ours; nothing re-sent


async def test_a_request_another_job_owns_is_not_adopted(
    service: JobService, store: Store, output: RecordingOutput, fake: FakeSegmind
) -> None:
    first = await enqueue(service, "the same fox", seed=77)
    assert (await settled(store, output, first)).state == "delivered"
    fake.inject("submit", Fault(drop=True))
    second = await enqueue(service, "the same fox", seed=77, user_id=999)
    done = await settled(store, output, second)

    # The first job's request matches too, but it is the first job's: the lost one is adopted.
    assert done.state == "delivered"
    assert done.request_id not in (None, (await store.get_job(first)).request_id)  # type: ignore[union-attr]
    assert posts(fake) == 2


async def test_a_job_past_the_retention_is_delivered_from_its_history_row(
    store: Store, output: RecordingOutput, start_fake: Any, tmp_path: Path
) -> None:
    # Segmind forgets status and result the moment the job ends: only the history remains.
    fake = await start_fake(
        api_key=SEGMIND_KEY,
        queue_seconds=0.02,
        processing_seconds=0.05,
        retention_seconds=0,
        history_delay_seconds=0,
    )
    async with make_segmind(fake) as segmind:
        service = make_service(store, segmind, output, tmp_path / "work")
        await service.start()
        try:
            job_id = await enqueue(service)
            done = await settled(store, output, job_id)
        finally:
            await service.stop()
        assert sum(r.route == "history-row" for r in fake.requests) == 1
        assert done.request_id is not None
        history = await segmind.history_row(done.request_id)

    assert done.state == "delivered" and done.ledger_status == "charged"
    assert history is not None and done.output_url == history.generation_url
    assert done.cost == pytest.approx(0.6)  # what the history says Segmind billed
    assert len(output.of("deliver", job_id)) == 1


async def test_a_failed_job_past_the_retention_fails_as_segmind_says(
    store: Store, output: RecordingOutput, start_fake: Any, tmp_path: Path
) -> None:
    fake = await start_fake(
        api_key=SEGMIND_KEY,
        queue_seconds=0.02,
        processing_seconds=0.05,
        retention_seconds=0,
        history_delay_seconds=0,
    )
    async with make_segmind(fake) as segmind:
        service = make_service(store, segmind, output, tmp_path / "work")
        await service.start()
        try:
            job_id = await enqueue(service, "a fox [fake:fail]")
            done = await settled(store, output, job_id)
        finally:
            await service.stop()

    assert done.state == "failed"
    assert (done.ledger_status, done.ledger_reason) == ("released", "failed")
    (told,) = [c.detail for c in output.of("failed", job_id)]
    assert told.startswith("Veo could not make this video") and told.endswith(NOT_COUNTED)
    assert output.of("deliver", job_id) == []
