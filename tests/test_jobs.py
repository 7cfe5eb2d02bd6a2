"""The job lifecycle (`bot.jobs.JobService`) without Discord: a recording `JobOutput`, the
Segmind fake over real HTTP, a real `SegmindClient` and a SQLite store in a temp dir.

Every ending is checked the way a member would notice it: the job's state, what they were told,
and whether the job still uses up their video for the day. Restarts are a second service on the
same database, started over a state a crash would leave."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import bot.jobs
from bot.jobs import NOT_COUNTED, JobService
from bot.params import VeoParams
from bot.quota import LimitDefaults
from bot.segmind.client import SegmindClient
from bot.segmind.fake import FakeSegmind, Fault
from bot.segmind.polling import RateLimiter
from bot.store import Job, Store, open_store
from tests.lifecycle_support import (
    GUILD,
    MEMBER,
    MODERATOR,
    OTHER_MEMBER,
    SEGMIND_KEY,
    OutputUnavailable,
    Receipt,
    RecordingOutput,
    Stage,
    counts_against_limit,
    enqueue,
    make_segmind,
    make_service,
)


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


class Services:
    """Builds services over the test's store (a second one is the bot after a restart) and
    stops every one of them at the end."""

    def __init__(
        self, store: Store, segmind: SegmindClient, output: RecordingOutput, work_dir: Path
    ) -> None:
        self.store, self.segmind, self.output, self.work_dir = store, segmind, output, work_dir
        self.built: list[JobService] = []

    def build(self, **kw: Any) -> JobService:
        service = make_service(self.store, self.segmind, self.output, self.work_dir, **kw)
        self.built.append(service)
        return service

    async def start(self, **kw: Any) -> JobService:
        service = self.build(**kw)
        await service.start()
        return service


@pytest.fixture
async def services(
    store: Store, segmind: SegmindClient, output: RecordingOutput, tmp_path: Path
) -> AsyncIterator[Services]:
    made = Services(store, segmind, output, tmp_path / "work")
    yield made
    for service in made.built:
        await service.stop()


@pytest.fixture(autouse=True)
def no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Any:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="bot")
    yield
    assert SEGMIND_KEY not in caplog.text


async def job(store: Store, job_id: int) -> Job:
    found = await store.get_job(job_id)
    assert found is not None
    return found


def posts(fake: FakeSegmind) -> int:
    """POSTs that reached the fake: each one is a bill at Segmind."""
    return sum(1 for r in fake.requests if r.route == "submit")


def downloads(fake: FakeSegmind) -> int:
    return sum(1 for r in fake.requests if r.route == "output")


# ---------------------------------------------------------------------------------- happy path


async def test_a_job_is_submitted_once_delivered_once_and_counts(
    services: Services, store: Store, output: RecordingOutput, fake: FakeSegmind, tmp_path: Path
) -> None:
    service = await services.start()
    job_id = await enqueue(service)
    await output.settled(job_id)

    done = await job(store, job_id)
    assert done.state == "delivered"
    assert (done.delivery_method, done.delivered_message_id) == ("channel-post", 9001)
    assert (done.ledger_status, done.charged_amount) == ("charged", 0.6)
    assert await counts_against_limit(store)
    assert posts(fake) == 1 and len(fake.submits) == 1
    assert output.kinds(job_id) == ["deliver", "finished"]
    # The member saw it move through every stage, in order.
    stages = output.stages(job_id)
    assert stages[0] is Stage.SUBMITTING
    assert stages[-2:] == [Stage.DOWNLOADING, Stage.UPLOADING]
    assert {Stage.WAITING, Stage.GENERATING} & set(stages)
    # What was handed over is the whole clip Segmind made, and it is not left on disk.
    (finished,) = [c.detail for c in output.of("deliver")]
    assert finished.size == len(output.videos[0]) == done.bytes > 0
    assert output.videos[0][4:8] == b"ftyp"
    assert finished.output_url == done.output_url and finished.cost == 0.6
    assert list((tmp_path / "work").iterdir()) == []


async def test_a_failing_progress_edit_never_breaks_the_job(
    services: Services, store: Store, output: RecordingOutput
) -> None:
    output.fail_progress = True
    service = await services.start()
    job_id = await enqueue(service)
    await output.settled(job_id)
    assert (await job(store, job_id)).state == "delivered"


# ------------------------------------------------------------------------------------- refunds


async def test_a_submit_segmind_refuses_is_refunded_and_the_owner_told(
    services: Services,
    store: Store,
    output: RecordingOutput,
    fake: FakeSegmind,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = await services.start()
    job_id = await enqueue(service, "a fox [fake:credits]")
    await output.settled(job_id)

    done = await job(store, job_id)
    assert done.state == "failed"
    assert (done.ledger_status, done.ledger_reason) == ("released", "not_submitted")
    assert not await counts_against_limit(store)
    (told,) = [c.detail for c in output.of("failed", job_id)]
    assert "credits ran out" in told and told.endswith(NOT_COUNTED)
    assert fake.submits == []  # nothing was billed
    assert "the bot owner must act" in caplog.text and "top it up" in caplog.text


class CreditsRecorder:
    def __init__(self) -> None:
        self.noted: list[str] = []

    def note_submitted(self) -> None:
        self.noted.append("submitted")

    def note_out_of_credits(self) -> None:
        self.noted.append("out_of_credits")


async def test_segmind_word_on_credits_reaches_the_balance_watch(
    services: Services, output: RecordingOutput
) -> None:
    # A 406 pauses /veo at once (not at the next balance check); an accepted submit lifts it.
    recorder = CreditsRecorder()
    service = await services.start(credits_signal=recorder)
    refused = await enqueue(service, "a fox [fake:credits]")
    await output.settled(refused)
    assert recorder.noted == ["out_of_credits"]
    accepted = await enqueue(service, "a calm fox", user_id=77)
    await output.settled(accepted)
    assert recorder.noted == ["out_of_credits", "submitted"]


async def test_a_content_block_is_refunded_under_the_daily_cap(
    services: Services, store: Store, output: RecordingOutput
) -> None:
    service = await services.start()
    job_id = await enqueue(service, "a fox [fake:block]")
    await output.settled(job_id)

    done = await job(store, job_id)
    assert done.state == "failed"
    assert (done.ledger_status, done.ledger_reason) == ("released", "content_blocked")
    assert not await counts_against_limit(store)
    (told,) = [c.detail for c in output.of("failed", job_id)]
    assert told.startswith("Veo declined this prompt:") and told.endswith(NOT_COUNTED)


async def test_a_content_block_past_the_daily_cap_counts(
    services: Services, store: Store, output: RecordingOutput
) -> None:
    no_free_blocks = LimitDefaults(user_limit=1, concurrency=5, blocked_prompt_cap=0)
    service = await services.start(defaults=no_free_blocks)
    job_id = await enqueue(service, "a fox [fake:block]")
    await output.settled(job_id)

    done = await job(store, job_id)
    assert done.state == "failed"
    assert (done.ledger_status, done.ledger_reason) == ("charged", "content_blocked_over_cap")
    assert await counts_against_limit(store, no_free_blocks)
    (told,) = [c.detail for c in output.of("failed", job_id)]
    assert told.startswith("Veo declined this prompt:") and NOT_COUNTED not in told


async def test_a_failed_generation_is_refunded(
    services: Services, store: Store, output: RecordingOutput
) -> None:
    service = await services.start()
    job_id = await enqueue(service, "a fox [fake:fail]")
    await output.settled(job_id)

    done = await job(store, job_id)
    assert done.state == "failed"
    assert (done.ledger_status, done.ledger_reason) == ("released", "failed")
    assert not await counts_against_limit(store)
    (told,) = [c.detail for c in output.of("failed", job_id)]
    assert told.startswith("Veo could not make this video:") and told.endswith(NOT_COUNTED)
    assert output.of("deliver") == []


async def test_a_video_too_large_to_download_is_refunded(
    services: Services, store: Store, output: RecordingOutput
) -> None:
    service = await services.start(max_video_bytes=1000)
    job_id = await enqueue(service)
    await output.settled(job_id)

    done = await job(store, job_id)
    assert done.state == "failed"
    assert (done.ledger_status, done.ledger_reason) == ("released", "delivery_failed")
    assert not await counts_against_limit(store)
    (told,) = [c.detail for c in output.of("failed", job_id)]
    assert told.endswith(NOT_COUNTED)
    assert output.of("deliver") == []


async def test_a_submit_whose_answer_was_lost_is_found_in_the_history_and_delivered_once(
    services: Services, store: Store, output: RecordingOutput, fake: FakeSegmind
) -> None:
    fake.inject("submit", Fault(drop=True))  # Segmind took (and billed) it; the answer is lost
    service = await services.start()
    job_id = await enqueue(service)
    await output.settled(job_id)

    done = await job(store, job_id)
    assert done.state == "delivered"
    assert done.request_id in fake.jobs  # the request Segmind made, adopted
    assert done.ledger_status == "charged"
    assert posts(fake) == 1 and len(fake.submits) == 1  # never sent again
    assert len(output.of("deliver", job_id)) == 1
    assert Stage.RECOVERING in output.stages(job_id)  # the member saw it being looked up


async def test_the_job_deadline_stops_the_wait_and_refunds(
    services: Services, store: Store, output: RecordingOutput, fake: FakeSegmind
) -> None:
    service = await services.start(deadline=0.3)
    job_id = await enqueue(service, "a fox [fake:slow=60]")
    await output.settled(job_id)

    done = await job(store, job_id)
    assert done.state == "failed"
    assert done.ledger_status == "released"
    assert not await counts_against_limit(store)
    (told,) = [c.detail for c in output.of("failed", job_id)]
    assert told.startswith("Veo took far longer than usual") and told.endswith(NOT_COUNTED)
    assert posts(fake) == 1


# ---------------------------------------------------------------------------- delivery retries


async def test_transient_trouble_is_retried_after_looking_for_the_first_attempt(
    services: Services, store: Store, output: RecordingOutput
) -> None:
    output.fail_deliver = {1: OutputUnavailable("502 Bad Gateway")}
    service = await services.start()
    job_id = await enqueue(service)
    await output.settled(job_id)

    assert output.kinds(job_id) == ["deliver", "find_delivery", "deliver", "finished"]
    # The write-ahead note of the first attempt was there for the look.
    (look,) = output.of("find_delivery", job_id)
    assert look.job.delivery_method == "channel-post"
    assert output.videos[0] == output.videos[1]  # the same clip, not a second download
    done = await job(store, job_id)
    assert (done.state, done.delivered_message_id) == ("delivered", 9002)
    assert done.ledger_status == "charged"
    assert await counts_against_limit(store)


async def test_an_attempt_that_landed_despite_the_error_is_not_sent_again(
    services: Services, store: Store, output: RecordingOutput
) -> None:
    output.fail_deliver = {1: OutputUnavailable("timed out reading the answer")}
    output.landed = {1}
    service = await services.start()
    job_id = await enqueue(service)
    await output.settled(job_id)

    assert output.kinds(job_id) == ["deliver", "find_delivery", "finished"]
    done = await job(store, job_id)
    assert (done.state, done.delivered_message_id) == ("delivered", 9001)
    assert done.ledger_status == "charged"


async def test_when_it_cannot_tell_whether_an_attempt_landed_it_sends_again(
    services: Services, store: Store, output: RecordingOutput
) -> None:
    output.fail_deliver = {1: OutputUnavailable("503")}
    output.find_error = RuntimeError("history unreadable")
    service = await services.start()
    job_id = await enqueue(service)
    await output.settled(job_id)

    assert output.kinds(job_id) == ["deliver", "find_delivery", "deliver", "finished"]
    assert (await job(store, job_id)).state == "delivered"


async def test_discord_failing_every_attempt_refunds_the_job(
    services: Services, store: Store, output: RecordingOutput
) -> None:
    attempts = bot.jobs.DELIVERY_ATTEMPTS
    output.fail_deliver = {n: OutputUnavailable("502") for n in range(1, attempts + 1)}
    service = await services.start()
    job_id = await enqueue(service)
    await output.settled(job_id)

    kinds = output.kinds(job_id)
    assert kinds.count("deliver") == attempts
    # A look before every retry, never a blind re-send.
    assert kinds[: 2 * attempts - 1] == ["deliver", *["find_delivery", "deliver"] * (attempts - 1)]
    done = await job(store, job_id)
    assert done.state == "failed"
    assert (done.ledger_status, done.ledger_reason) == ("released", "delivery_failed")
    assert not await counts_against_limit(store)


async def test_a_member_whose_video_could_not_be_delivered_is_told(
    services: Services, store: Store, output: RecordingOutput
) -> None:
    attempts = bot.jobs.DELIVERY_ATTEMPTS
    output.fail_deliver = {n: OutputUnavailable("502") for n in range(1, attempts + 1)}
    service = await services.start()
    job_id = await enqueue(service)
    await output.settled(job_id)

    (told,) = [c.detail for c in output.of("failed", job_id)]
    assert told.endswith(NOT_COUNTED)


async def test_the_last_attempt_is_looked_for_before_giving_up(
    services: Services, store: Store, output: RecordingOutput
) -> None:
    attempts = bot.jobs.DELIVERY_ATTEMPTS
    output.fail_deliver = {n: OutputUnavailable("timeout") for n in range(1, attempts + 1)}
    output.landed = {attempts}  # the last upload reached Discord; only its answer was lost
    service = await services.start()
    job_id = await enqueue(service)
    await output.settled(job_id)

    done = await job(store, job_id)
    assert (done.state, done.delivered_message_id) == ("delivered", 9000 + attempts)
    assert done.ledger_status == "charged"


async def test_a_delivery_no_route_could_take_is_refunded_without_retrying(
    services: Services, store: Store, output: RecordingOutput
) -> None:
    output.fail_deliver = {1: RuntimeError("the requester blocks DMs and the channel is gone")}
    service = await services.start()
    job_id = await enqueue(service)
    await output.settled(job_id)

    assert output.kinds(job_id).count("deliver") == 1
    done = await job(store, job_id)
    assert done.state == "failed"
    assert (done.ledger_status, done.ledger_reason) == ("released", "delivery_failed")
    assert not await counts_against_limit(store)


# --------------------------------------------------------------------------------- cancelling


async def test_cancel_rules_while_one_job_runs_and_two_wait(
    services: Services, store: Store, output: RecordingOutput, fake: FakeSegmind
) -> None:
    two_a_day = LimitDefaults(user_limit=2, concurrency=5)
    service = await services.start(defaults=two_a_day, max_concurrent=1)
    running = await enqueue(service, "a slow fox [fake:slow=60]")
    await output.wait_for(lambda: {Stage.WAITING, Stage.GENERATING} & set(output.stages(running)))
    waiting = await enqueue(service, "a waiting fox")
    behind = await enqueue(service, "a fox at the back", user_id=OTHER_MEMBER)
    await output.wait_for(lambda: output.of("progress", behind))
    assert output.of("progress", waiting)[-1].detail.position == 1
    assert output.of("progress", behind)[-1].detail.position == 2

    not_yours = await service.cancel(waiting, actor_id=OTHER_MEMBER, moderator=False)
    assert not_yours.outcome == "not_allowed"
    assert (await job(store, waiting)).state == "queued"

    too_late = await service.cancel(running, actor_id=MEMBER, moderator=False)
    assert too_late.outcome == "too_late"
    assert too_late.job is not None and too_late.job.state == "submitted"

    by_mod = await service.cancel(waiting, actor_id=MODERATOR, moderator=True)
    assert by_mod.outcome == "cancelled"
    cancelled = await job(store, waiting)
    assert cancelled.state == "cancelled"
    assert (cancelled.ledger_status, cancelled.ledger_reason) == ("released", "cancelled")
    assert not await counts_against_limit(store, two_a_day)  # one of two used: the running one
    assert (await output.settled(waiting)).job.state == "cancelled"
    (audit,) = await store.audit_entries(GUILD)
    assert (audit.actor_id, audit.action) == (MODERATOR, "job.cancel")
    assert audit.detail == {"job_id": waiting, "user_id": MEMBER}
    # The job behind moves up, and is told so.
    await output.wait_for(lambda: output.of("progress", behind)[-1].detail.position == 1)

    own = await service.cancel(behind, actor_id=OTHER_MEMBER, moderator=False)
    assert own.outcome == "cancelled"
    assert len(await store.audit_entries(GUILD)) == 1  # a requester's own cancel is not audited

    again = await service.cancel(waiting, actor_id=MEMBER, moderator=False)
    assert again.outcome == "finished"
    assert (await service.cancel(10_000, actor_id=MODERATOR, moderator=True)).outcome == "missing"
    assert posts(fake) == 1  # neither cancelled job ever reached Segmind


# ------------------------------------------------------------------------ shutdown and resume


async def _submitting(output: RecordingOutput, job_id: int) -> None:
    await output.wait_for(lambda: Stage.SUBMITTING in output.stages(job_id))


async def test_stop_lets_a_submit_on_the_wire_land_and_the_next_start_follows_it(
    services: Services,
    store: Store,
    output: RecordingOutput,
    fake: FakeSegmind,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bot.jobs, "SUBMIT_DRAIN_SECONDS", 1.0)
    fake.inject("submit", Fault(delay=0.3))  # billed at once, answered 0.3 s later
    first = await services.start()
    job_id = await enqueue(first, "a fox [fake:slow=60]")
    await _submitting(output, job_id)
    await first.stop()

    stopped = await job(store, job_id)
    assert stopped.state == "submitted"
    assert stopped.request_id in fake.jobs
    assert not first.accepting

    fake.advance(61)  # the job finished at Segmind while the bot was down
    await services.start()
    await output.settled(job_id)
    assert (await job(store, job_id)).state == "delivered"
    assert posts(fake) == 1


async def test_a_submit_cut_off_by_shutdown_is_found_on_the_next_start(
    services: Services,
    store: Store,
    output: RecordingOutput,
    fake: FakeSegmind,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bot.jobs, "SUBMIT_DRAIN_SECONDS", 0.05)
    fake.inject("submit", Fault(delay=2.0))  # created and billed at once, answered too late
    first = await services.start()
    job_id = await enqueue(first)
    await _submitting(output, job_id)
    await first.stop()
    assert (await job(store, job_id)).state == "submitting"

    await services.start()
    await output.settled(job_id)
    done = await job(store, job_id)
    assert done.state == "delivered"
    assert done.ledger_status == "charged"
    assert done.request_id == next(iter(fake.jobs))
    assert posts(fake) == 1  # the one that was billed; never a second
    assert len(output.of("deliver", job_id)) == 1


async def _crashed_at(
    services: Services, steps: list[tuple[str, dict[str, Any]]], prompt: str = "a fox"
) -> int:
    """Queue a job and walk it through `steps` (state, fields) as the last run did before it
    died; returns its id. Nothing is running meanwhile."""
    job_id = await enqueue(services.build(), prompt)
    state = "queued"
    for to_state, fields in steps:
        assert await services.store.transition(job_id, state, to_state, **fields)  # type: ignore[arg-type]
        state = to_state
    return job_id


async def _finished_at_segmind(segmind: SegmindClient, prompt: str = "a fox") -> tuple[str, str]:
    """A job that Segmind made to the end: its request id and video URL."""
    submitted = await segmind.submit(VeoParams(prompt=prompt))
    result = await segmind.wait(submitted)
    return submitted.request_id, result.output_urls[0]


async def test_a_queued_job_is_taken_after_a_restart(
    services: Services, store: Store, output: RecordingOutput
) -> None:
    job_id = await _crashed_at(services, [])
    await services.start()
    await output.settled(job_id)
    assert (await job(store, job_id)).state == "delivered"


async def test_a_submitted_job_segmind_no_longer_knows_expires_and_is_refunded(
    services: Services, store: Store, output: RecordingOutput, fake: FakeSegmind
) -> None:
    job_id = await _crashed_at(
        services, [("submitting", {}), ("submitted", {"request_id": "a-request-long-gone"})]
    )
    await services.start()
    await output.settled(job_id)

    done = await job(store, job_id)
    assert done.state == "expired"
    assert (done.ledger_status, done.ledger_reason) == ("released", "expired")
    assert not await counts_against_limit(store)
    (told,) = [c.detail for c in output.of("failed", job_id)]
    assert told.startswith("Segmind no longer has this job") and told.endswith(NOT_COUNTED)
    assert posts(fake) == 0


async def test_a_completed_job_is_downloaded_and_delivered_without_asking_segmind_again(
    services: Services,
    store: Store,
    output: RecordingOutput,
    fake: FakeSegmind,
    segmind: SegmindClient,
) -> None:
    request_id, url = await _finished_at_segmind(segmind)
    before = len(fake.requests)
    job_id = await _crashed_at(
        services,
        [
            ("submitting", {}),
            ("submitted", {"request_id": request_id}),
            ("completed", {"output_url": url, "cost": 0.6}),
        ],
    )
    await services.start()
    await output.settled(job_id)

    done = await job(store, job_id)
    assert done.state == "delivered" and done.ledger_status == "charged"
    assert [r.route for r in fake.requests[before:]] == ["output"]  # no submit, no poll
    assert output.kinds(job_id) == ["deliver", "finished"]


async def test_a_delivering_job_found_delivered_is_settled_without_sending(
    services: Services,
    store: Store,
    output: RecordingOutput,
    fake: FakeSegmind,
    segmind: SegmindClient,
) -> None:
    request_id, url = await _finished_at_segmind(segmind)
    job_id = await _crashed_at(
        services,
        [
            ("submitting", {}),
            ("submitted", {"request_id": request_id}),
            ("completed", {"output_url": url, "cost": 0.6}),
            ("delivering", {"delivery_method": "channel-post"}),
        ],
    )
    output.found = Receipt(message_id=777, method="channel-post")
    await services.start()
    await output.settled(job_id)

    done = await job(store, job_id)
    assert (done.state, done.delivered_message_id) == ("delivered", 777)
    assert (done.ledger_status, done.charged_amount) == ("charged", 0.6)
    assert await counts_against_limit(store)
    assert output.kinds(job_id) == ["find_delivery", "finished"]
    assert downloads(fake) == 0  # the bot did not fetch the video again


async def test_a_delivering_job_not_found_anywhere_is_sent_once(
    services: Services,
    store: Store,
    output: RecordingOutput,
    segmind: SegmindClient,
) -> None:
    request_id, url = await _finished_at_segmind(segmind)
    job_id = await _crashed_at(
        services,
        [
            ("submitting", {}),
            ("submitted", {"request_id": request_id}),
            ("completed", {"output_url": url}),
            ("delivering", {"delivery_method": "dm"}),
        ],
    )
    await services.start()
    await output.settled(job_id)

    assert output.kinds(job_id) == ["find_delivery", "deliver", "finished"]
    assert (await job(store, job_id)).state == "delivered"


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param(
            [("submitting", {}), ("submitted", {"request_id": None})], id="submitted-no-request-id"
        ),
        pytest.param(
            [("submitting", {}), ("submitted", {"request_id": "r"}), ("completed", {})],
            id="completed-no-url",
        ),
    ],
)
async def test_a_job_that_cannot_be_resumed_fails_and_is_refunded(
    services: Services,
    store: Store,
    output: RecordingOutput,
    steps: list[tuple[str, dict[str, Any]]],
) -> None:
    job_id = await _crashed_at(services, steps)
    await services.start()
    await output.settled(job_id)

    done = await job(store, job_id)
    assert done.state == "failed"
    assert (done.ledger_status, done.ledger_reason) == ("released", "failed")
    assert not await counts_against_limit(store)
    (told,) = [c.detail for c in output.of("failed", job_id)]
    assert told.endswith(NOT_COUNTED)


async def test_a_delivered_job_whose_charge_was_lost_is_charged_at_start(
    services: Services, store: Store
) -> None:
    job_id = await _crashed_at(
        services,
        [
            ("submitting", {}),
            ("submitted", {"request_id": "r"}),
            ("completed", {"output_url": "https://cdn.example/v.mp4", "cost": 0.5}),
            ("delivering", {}),
            ("delivered", {"delivered_message_id": 1}),
        ],
    )
    assert (await job(store, job_id)).ledger_status == "reserved"
    await services.start()
    assert (await job(store, job_id)).ledger_status == "charged"
    assert await counts_against_limit(store)


async def test_a_job_waiting_for_the_segmind_budget_stays_queued_and_survives_a_crash(
    services: Services,
    store: Store,
    segmind: SegmindClient,
    fake: FakeSegmind,
    output: RecordingOutput,
) -> None:
    """The budget slot is taken before the write-ahead `submitting`: a runner killed while
    jobs wait for Segmind's rate limit leaves them queued for the next one to send, never
    `unknown` (which refunds the member but gives them no video)."""
    spent = RateLimiter(1, window=3600.0)
    await spent.acquire()  # the window is used up for an hour
    real = segmind.limiter
    segmind.limiter = spent
    first = await services.start()
    job_id = await enqueue(first)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while spent.waiting == 0:  # the dispatcher reached the budget (a fact, not a delay)
        assert loop.time() < deadline, "the dispatcher never asked for a slot"
        await asyncio.sleep(0.01)
    assert (await job(store, job_id)).state == "queued"
    assert posts(fake) == 0
    await first.stand_down()  # the runner stops, as when it lost the lease or died

    segmind.limiter = real  # the next runner has budget
    await services.start()
    await output.settled(job_id)
    assert (await job(store, job_id)).state == "delivered"
    assert posts(fake) == 1
