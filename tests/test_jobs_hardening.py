"""The job lifecycle at its money and bookkeeping edges (issue 11): a real store on a temp file,
the real Segmind client against the fake over HTTP, and an output that records what a member
would have been shown."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import bot.jobs as jobs_module
from bot.jobs import (
    DeliveryUnclear,
    Finished,
    JobService,
    OutputUnavailable,
    Receipt,
)
from bot.params import VeoParams
from bot.progress import Progress
from bot.quota import LimitDefaults
from bot.segmind.client import SegmindClient
from bot.segmind.fake import FakeSegmind, Fault
from bot.store import Job, ReserveRequest, SqliteStore, Store

KEY = "hardening-test-key-0123456789"
GUILD, CHANNEL, USER = 10, 20, 30


@dataclass
class RecordingOutput:
    """`JobOutput` that remembers everything; `deliver` and `find_delivery` follow a script."""

    deliver_raises: Callable[[], BaseException] | None = None
    find_answers: list[Receipt | BaseException | None] = field(default_factory=list)
    delivered: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    ended: list[Job] = field(default_factory=list)
    finds: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def progress(self, job: Job, progress: Progress) -> None:
        pass

    async def deliver(self, job: Job, finished: Finished) -> Receipt:
        if self.deliver_raises is not None:
            raise self.deliver_raises()
        self.delivered.append(job.id)
        return Receipt(message_id=1234, method="interaction")

    async def find_delivery(self, job: Job) -> Receipt | None:
        self.finds += 1
        answer = self.find_answers.pop(0) if self.find_answers else None
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def failed(self, job: Job, message: str) -> None:
        self.failures.append(message)

    async def notice(self, job: Job, message: str) -> None:
        self.notices.append(message)

    async def finished(self, job: Job) -> None:
        self.ended.append(job)
        self.done.set()


@pytest.fixture
async def fake() -> AsyncIterator[FakeSegmind]:
    async with FakeSegmind(api_key=KEY, queue_seconds=0.05, processing_seconds=0.3) as server:
        yield server


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    # A short busy timeout, so a database locked by someone else fails fast, as it would after
    # the production 10 s.
    opened = await SqliteStore.open(tmp_path / "veo.sqlite3", busy_timeout=0.05)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def segmind(fake: FakeSegmind) -> AsyncIterator[SegmindClient]:
    async with SegmindClient(
        KEY, fake.base_url, poll_floor=0.02, poll_ceiling=0.05, timeout=5.0
    ) as client:
        yield client


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs_module, "DELIVERY_BACKOFF", 0.0)
    monkeypatch.setattr(jobs_module, "SUBMITTED_WRITE_DELAYS", (0.01, 0.01), raising=False)
    monkeypatch.setattr(jobs_module, "RECORD_RETRY_CAP", 0.05, raising=False)


def service(
    store: Store, segmind: SegmindClient, output: RecordingOutput, tmp_path: Path, **kw: Any
) -> JobService:
    return JobService(
        store,
        segmind,
        output,
        limit_defaults=LimitDefaults(user_limit=5),
        max_concurrent=kw.get("max_concurrent", 2),
        work_dir=tmp_path / "work",
        max_video_bytes=50 * 1024 * 1024,
        deadline=60.0,
    )


def new_job(prompt: str = "a lighthouse in fog") -> ReserveRequest:
    return ReserveRequest(
        guild_id=GUILD,
        channel_id=CHANNEL,
        user_id=USER,
        role_ids=(),
        params=VeoParams(prompt=prompt, seed=7),
        placeholder_channel_id=CHANNEL,
        placeholder_message_id=555,
    )


async def run_one(svc: JobService, output: RecordingOutput) -> Job:
    await svc.start()
    try:
        job_id = await svc.enqueue(new_job())
        assert isinstance(job_id, int)
        await asyncio.wait_for(output.done.wait(), 20)
    finally:
        await svc.stop()
    job = await svc.store.get_job(job_id)
    assert job is not None
    return job


# ------------------------------------------------------------------------------ item 6


async def test_hardening_06_request_id_survives_a_locked_database(
    store: Store,
    segmind: SegmindClient,
    fake: FakeSegmind,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Segmind accepted (and billed) the job while another process held the database's write
    lock: the request id is logged at once, the job is followed in memory, and the row is
    written when the lock goes — the member gets the video, nothing turns `unknown`."""
    caplog.set_level(logging.INFO, logger="bot.jobs")
    output = RecordingOutput()
    svc = service(store, segmind, output, tmp_path)
    # The submit is billed at once but its answer held, so the lock is taken in between.
    fake.inject("submit", Fault(delay=0.3))
    other = sqlite3.connect(tmp_path / "veo.sqlite3", isolation_level=None)
    await svc.start()
    try:
        job_id = await svc.enqueue(new_job())
        assert isinstance(job_id, int)
        await _until(lambda: bool(fake.submits), "the submit to reach Segmind")
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        await _until(lambda: "in memory" in caplog.text, "the bot to follow the job in memory")
        (request_id,) = fake.jobs
        accepted = [r for r in caplog.records if request_id in r.getMessage()]
        assert accepted[0].levelno == logging.INFO  # the id is in the log before any write
        assert (await store.get_job(job_id)).state == "submitting"  # type: ignore[union-attr]
        other.execute("COMMIT")  # the database is back
        await asyncio.wait_for(output.done.wait(), 20)
    finally:
        await svc.stop()
        other.close()
    job = await store.get_job(job_id)
    assert job is not None
    assert (job.state, job.request_id, job.ledger_status) == ("delivered", request_id, "charged")
    assert output.delivered == [job_id] and output.failures == []
    assert len(fake.submits) == 1  # never re-sent


async def _until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """Waits for a fact the test cannot subscribe to; checked every 10 ms."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------------------ item 7


async def test_hardening_07_no_refund_for_a_video_that_landed(
    store: Store, segmind: SegmindClient, tmp_path: Path
) -> None:
    """Every attempt timed out on our side, but the last one reached Discord: the final look
    finds it, so the job is delivered and charged, not refunded with a failure message."""
    output = RecordingOutput(
        deliver_raises=lambda: OutputUnavailable("timeout"),
        # No earlier attempt is found before the retries; the final look finds the video.
        find_answers=[None] * (jobs_module.DELIVERY_ATTEMPTS - 1)
        + [Receipt(message_id=987, method="channel-edit")],
    )
    job = await run_one(service(store, segmind, output, tmp_path), output)
    assert output.finds == jobs_module.DELIVERY_ATTEMPTS
    assert (job.state, job.ledger_status) == ("delivered", "charged")
    assert job.delivered_message_id == 987
    assert output.failures == [] and output.notices == []


async def test_hardening_07_cannot_tell_means_no_refund_and_the_member_is_told(
    store: Store, segmind: SegmindClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Discord kept failing and the bot cannot read back its own placeholder: it may hold the
    video, so nothing is refunded; the member is told it may have arrived (without touching
    the placeholder) and moderators find the job id in the log."""
    output = RecordingOutput(
        deliver_raises=lambda: OutputUnavailable("timeout"),
        find_answers=[None] * (jobs_module.DELIVERY_ATTEMPTS - 1)
        + [DeliveryUnclear("placeholder 555 cannot be read back")],
    )
    job = await run_one(service(store, segmind, output, tmp_path), output)
    assert job.state == "failed"
    assert job.ledger_status == "charged"  # not refunded
    assert output.failures == []  # the placeholder (maybe holding the video) is left alone
    (notice,) = output.notices
    assert "may already be" in notice
    assert "does not count" not in notice
    moderators = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(
        f"job {job.id}" in r.getMessage() and "NOT refunded" in r.getMessage() for r in moderators
    )
    # A restart settles nothing differently: the reservation is no longer open.
    assert await store.settle_terminal(LimitDefaults()) == 0


async def test_hardening_07_nothing_found_is_still_refunded(
    store: Store, segmind: SegmindClient, tmp_path: Path
) -> None:
    """The other side of the rule: when the final look sees for sure that nothing landed, the
    member is refunded as before."""
    output = RecordingOutput(deliver_raises=lambda: OutputUnavailable("timeout"))
    job = await run_one(service(store, segmind, output, tmp_path), output)
    assert output.finds == jobs_module.DELIVERY_ATTEMPTS
    assert (job.state, job.ledger_status) == ("failed", "released")


# ----------------------------------------------------------------------------- item 13


async def test_hardening_13_a_cancelled_job_leaves_no_per_job_state(
    store: Store, segmind: SegmindClient, tmp_path: Path
) -> None:
    """A job cancelled in the queue is forgotten at once by the job service (its place in
    line) as well as by the output."""
    output = RecordingOutput()
    svc = service(store, segmind, output, tmp_path, max_concurrent=0)  # everything waits
    job_id = await svc.enqueue(new_job())
    assert isinstance(job_id, int)
    await svc._announce_positions()
    assert job_id in svc._announced
    result = await svc.cancel(job_id, actor_id=USER, moderator=False)
    assert result.outcome == "cancelled"
    assert svc._announced == {}
    assert [j.state for j in output.ended] == ["cancelled"]
