"""The job lifecycle: the one place that joins the store, the Segmind client and the output.

A job is a persisted state machine. Every transition is committed (compare-and-set) *before*
the action it enables, so a crash at any point leaves a state from which the next start can
tell what already happened:

    queued → submitting → submitted → completed → delivering → delivered
                    ↘ unknown            ↘ failed / expired        (cancelled from queued)

- `submitting` without a request id (a lost answer, or a crash while the POST was on the wire)
  means the POST may or may not have reached Segmind: it is never re-sent (a second POST is a
  second bill). Its request is looked for in Segmind's history by fingerprint (`_recover`):
  found, it is adopted and delivered; not found in time, or found several times, the job
  becomes `unknown` and the member is refunded.
- A job Segmind's status route no longer knows (results are kept an hour) is settled from its
  history row, which is kept for good (`_from_history`).
- Delivery is exactly once. Before each delivery route is tried, its name is written to the
  job (`delivery_method`, still in `delivering`): a write-ahead note of where the video may have
  landed. Every attempt — the first, a retry after a transient error, or the resume of a
  `delivering` job after a restart — first asks the output whether an earlier attempt already
  reached Discord (`JobOutput.find_delivery`: the placeholder carries the video, or a message
  of ours in the channel/DM does); only if not is the video sent again. Channel and DM posts
  also carry a fixed nonce, so Discord itself drops a repeat within a few minutes.

The output (Discord, in production) is told about progress through `JobOutput`; this module
imports nothing from Discord.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

from bot.balance import NO_SIGNAL, CreditsSignal
from bot.billing import Billing, billed_by_failure
from bot.discrepancies import Alerts, post_pending
from bot.logs import job_context
from bot.media.encode import NotAVideo, encoded_path, probe_video
from bot.ops.events import NO_EVENTS, JobEvents
from bot.pricing import PUBLISHED_MIN, PriceBook
from bot.progress import Progress, Stage
from bot.quota import LimitDefaults, Refusal
from bot.recovery import Fingerprint
from bot.segmind import client as sm
from bot.segmind.history import HistoryRow, HistoryStatus, dedupe
from bot.segmind.polling import RateLimiter
from bot.store import (
    IN_FLIGHT_STATES,
    Fenced,
    Job,
    NewDiscrepancy,
    ReleaseReason,
    ReserveRequest,
    Store,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

SUBMIT_DRAIN_SECONDS = 5.0  # on shutdown, let a POST already on the wire finish and be recorded
DELIVERY_ATTEMPTS = 4  # transient Discord trouble (5xx, timeouts) is retried, looking first
DELIVERY_BACKOFF = 2.0  # seconds before the 2nd attempt; doubles each time
# A busy or locked database must not lose a request id Segmind already billed: the `submitted`
# write is retried after these pauses, then (still failing) at every status poll and with
# `RECORD_RETRY_CAP` between tries once Segmind has answered, until the database is back.
SUBMITTED_WRITE_DELAYS = (0.2, 0.5, 1.0, 2.0)
RECORD_RETRY_CAP = 10.0
# A submit whose answer was lost is looked for in Segmind's history until this long after the
# POST began (its row lands a little after the request), every `RECOVERY_INTERVAL` seconds.
RECOVERY_WINDOW = 300.0
RECOVERY_INTERVAL = 15.0


def may_act_on(job: Job | None, actor_id: int, *, moderator: bool) -> bool:
    """Cancel or delete: the requester, or a moderator (Manage Server). A job the database no
    longer knows is a moderator's call only."""
    return moderator or (job is not None and job.user_id == actor_id)


@dataclass(frozen=True)
class Finished:
    """What the output needs to deliver a completed job."""

    video: Path
    size: int
    output_url: str
    took: float
    cost: float | None


# The ways a video can reach the requester, in the order they are tried: an edit of the
# placeholder with the interaction token, the same edit with the bot token, a new message in
# the channel, a DM. Written to the job before each is tried and stored with the receipt.
DeliveryRoute = Literal["interaction", "channel-edit", "channel-post", "dm"]
PLACEHOLDER_ROUTES: tuple[DeliveryRoute, ...] = ("interaction", "channel-edit")

# The write-ahead hook of the delivery running in this task: the output awaits it with a route
# name right before trying that route, so a restart knows where the video may already be. A
# context variable keeps `deliver()`'s signature small, and each job task sees only its own.
delivery_checkpoint: ContextVar[Callable[[DeliveryRoute], Awaitable[None]] | None] = ContextVar(
    "delivery_checkpoint", default=None
)


async def checkpoint_route(route: DeliveryRoute) -> None:
    """Called by the output before it tries a delivery route (no-op outside a delivery)."""
    hook = delivery_checkpoint.get()
    if hook is not None:
        await hook(route)


@dataclass(frozen=True)
class Receipt:
    """Where the video ended up; stored with the job."""

    message_id: int | None
    method: DeliveryRoute


class JobOutput(Protocol):
    """How the lifecycle shows a job to people. Implemented by the Discord layer."""

    async def progress(self, job: Job, progress: Progress) -> None: ...

    async def deliver(self, job: Job, finished: Finished) -> Receipt:
        """Post the finished video. Raise `OutputUnavailable` for trouble worth retrying,
        anything else if no route reached the requester."""
        ...

    async def find_delivery(self, job: Job) -> Receipt | None:
        """Where an earlier attempt already put this job's video (None: nowhere). Raise when it
        cannot tell."""
        ...

    async def failed(self, job: Job, message: str) -> None: ...

    async def notice(self, job: Job, message: str) -> None:
        """Tell the requester something in a new message, leaving the job's own messages as
        they are (they may carry the video)."""
        ...

    async def finished(self, job: Job) -> None:
        """The job reached its end (as recorded in `job`): tell moderators, forget it."""
        ...


class OutputUnavailable(Exception):
    """The output could not be reached for now (server error, timeout): try again later."""


class DeliveryUnclear(Exception):
    """`find_delivery` cannot tell whether an earlier attempt landed (it cannot read back its
    own placeholder, say): the video may be in front of the member."""


class AlreadyQueued(Exception):
    """The request's Discord event had already made job `job_id`: another gateway session of
    the same shard (a deploy's overlap) got it first. Nothing was reserved; the caller says
    nothing more, the other session answers the member."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"the event already made job {job_id}")
        self.job_id = job_id


CancelOutcome = Literal["cancelled", "not_allowed", "too_late", "finished", "missing"]


@dataclass(frozen=True)
class CancelResult:
    outcome: CancelOutcome
    job: Job | None


class JobService:
    """Runs jobs FCFS under a process-wide cap on jobs in flight at Segmind.

    Intake (`enqueue`, `precheck`, `cancel`) works on every node, always. Running jobs
    (submit, poll, download, deliver) happens only between `start()` — or `take_over()` with
    a store fenced by the runner lease — and `stop()` / `stand_down()`; a fenced write that
    is refused (`Fenced`: another node took the lease) calls `on_fenced` so the lease keeper
    makes this node a standby."""

    def __init__(
        self,
        store: Store,
        segmind: sm.SegmindClient,
        output: JobOutput,
        *,
        limit_defaults: LimitDefaults,
        max_concurrent: int,
        work_dir: Path,
        max_video_bytes: int,
        deadline: float,
        clock: Callable[[], float] = time.time,
        events: JobEvents = NO_EVENTS,
        recovery_window: float = RECOVERY_WINDOW,
        recovery_interval: float = RECOVERY_INTERVAL,
        alerts: Alerts | None = None,
        credits_signal: CreditsSignal = NO_SIGNAL,
        billing: Billing | None = None,
    ) -> None:
        self.store = store
        # The bot passes its own; a bare service (tools, tests) quotes from an empty book.
        self.billing = billing or Billing(store, PriceBook())
        self.segmind = segmind
        self.output = output
        self.limit_defaults = limit_defaults
        self.max_concurrent = max_concurrent
        self.work_dir = work_dir
        self.max_video_bytes = max_video_bytes
        self.deadline = deadline
        self.clock = clock
        self.events = events
        self.recovery_window = recovery_window
        self.recovery_interval = recovery_interval
        self.alerts = alerts  # None: disagreements are recorded and logged, not posted
        # Segmind's own word on the balance (a submit accepted, or refused with 406) moves the
        # balance watch's pause at once, not at its next check.
        self.credits_signal = credits_signal
        # The store the running side writes through: the lease's fenced view once taken over.
        self._runs: Store = store
        self._running = False
        # Called (once per term) when the store refused a write as `Fenced`.
        self.on_fenced: Callable[[], None] = lambda: None
        # How often the runner looks at the queue for jobs other nodes took in (their wake-up
        # cannot reach this process); 0 = only when woken (one process).
        self.queue_poll: float = 0.0
        self._poller: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._dispatcher: asyncio.Task[None] | None = None
        self._accepting = True
        self._submitting: set[int] = set()  # jobs whose POST may be on the wire right now
        self._announced: dict[int, int] = {}  # queued job id -> the place in line last shown
        # Jobs Segmind accepted whose `submitted` write has not landed yet (database busy):
        # job id -> (request id, submitted at). Followed in memory, written when possible.
        self._unrecorded: dict[int, tuple[str, float]] = {}

    # ----------------------------------------------------------------- lifecycle of the service

    async def start(self) -> None:
        """Resume every unfinished job, then start taking queued ones (one process, no lease)."""
        await self.take_over(self.store)

    @property
    def running(self) -> bool:
        """Whether this node runs jobs now (holds the runner lease) or only takes them in."""
        return self._running

    async def take_over(self, runs: Store) -> None:
        """Become the runner, writing through `runs` (the lease's fenced view): settle what a
        crash left open, resume every unfinished job exactly as a restart does, then take
        queued ones. The previous runner's term has lapsed by the database's clock before the
        lease is granted, and its epoch can no longer write."""
        self._runs = runs
        self._running = True
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._clean_work_dir()
        # Ledger rows left open by a crash between a transition and its charge/release.
        settled = await self._runs.settle_terminal(self.limit_defaults)
        if settled:
            log.info("settled %d reservations left open by the last run", settled)
        await self.billing.load()
        durations = await self._runs.recent_durations(200)
        for seconds in durations:
            self.segmind.observe_duration(seconds)
        await self._resume()
        self._dispatcher = asyncio.create_task(self._dispatch_loop(), name="job-dispatcher")
        if self.queue_poll > 0:
            self._poller = asyncio.create_task(self._poll_queue(), name="job-queue-poll")
        self.wake()

    async def stand_down(self) -> None:
        """Stop running jobs at once — the lease is lost or could not be renewed in time —
        and keep taking them in: the node is a standby. Nothing waits for a submit on the wire:
        its `submitted` write would be refused anyway, and the next runner marks it `unknown`
        exactly as after a crash."""
        if not self._running:
            return
        self._running = False
        await self._halt(drain=False)
        self._runs = self.store
        # What this term knew in memory belongs to it: the next runner reads the database.
        self._unrecorded.clear()
        self._announced.clear()

    def stop_accepting(self) -> None:
        """From now on every entry point refuses new work (shutdown has begun)."""
        self._accepting = False

    async def stop(self) -> None:
        """Stop taking work; let submits on the wire land; leave the rest for the next start."""
        self.stop_accepting()
        await self._halt(drain=True)
        self._running = False

    async def _halt(self, *, drain: bool) -> None:
        for background in (self._dispatcher, self._poller):
            if background is not None:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
        self._dispatcher = self._poller = None
        submitting = [task for job_id, task in self._tasks.items() if job_id in self._submitting]
        if submitting and drain:
            await asyncio.wait(submitting, timeout=SUBMIT_DRAIN_SECONDS)
        for task in list(self._tasks.values()):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()

    async def enqueue(self, request: ReserveRequest) -> int | Refusal:
        """Quote the job, check the limits and queue it in one transaction, the quote held
        against every spend cap; returns its id or why not.

        Raises `StoreUnavailable` when the database cannot be used (the caller refuses), and
        `AlreadyQueued` when the request's event made a job before (the caller stays quiet)."""
        quote = self.billing.quote(request.params)
        outcome = await self.store.reserve(
            replace(request, now=self.clock(), quote=quote.amount), self.limit_defaults
        )
        if isinstance(outcome, Refusal):
            return outcome
        if outcome.existing:
            raise AlreadyQueued(outcome.job_id)
        self.billing.given(outcome.job_id, quote)
        self.wake()
        return outcome.job_id

    async def job_for_event(self, event_id: int) -> Job | None:
        """The job a Discord interaction or message already made, if any."""
        return await self.store.job_for_event(event_id)

    async def precheck(
        self, guild_id: int, user_id: int, role_ids: tuple[int, ...]
    ) -> Refusal | None:
        """Why this member would be refused right now (blocked, over a limit), read-only.

        Lets the caller refuse before it fetches anything; `enqueue` still decides atomically.
        Raises `StoreUnavailable` when the database cannot be used (the caller refuses)."""
        # The options are not known yet: the cheapest price Segmind publishes, so a spend cap
        # refuses here only when no video at all would fit; `enqueue` holds the real quote.
        view = await self.store.quota_view(
            guild_id, user_id, role_ids, self.limit_defaults, quote=PUBLISHED_MIN
        )
        return view.decision if isinstance(view.decision, Refusal) else None

    def wake(self) -> None:
        """A job was queued or a slot freed: look at the queue again."""
        self._wake.set()

    @property
    def accepting(self) -> bool:
        return self._accepting

    async def get(self, job_id: int) -> Job | None:
        """One job, for the buttons that act on it."""
        return await self.store.get_job(job_id)

    async def cancel(self, job_id: int, *, actor_id: int, moderator: bool) -> CancelResult:
        """Drop a job still waiting in the bot's own queue (or for a moderator) and refund it.

        Only the requester or a moderator may. Segmind has no cancel call, so once the job
        left the queue (`submitting` or later) it can no longer be cancelled."""
        job = await self.store.get_job(job_id)
        if job is None:
            return CancelResult("missing", None)
        if not may_act_on(job, actor_id, moderator=moderator):
            return CancelResult("not_allowed", job)
        if not await self.store.transition(
            job_id,
            ("queued", "awaiting_approval"),
            "cancelled",
            error="cancelled before it was sent to Veo",
        ):
            current = await self.store.get_job(job_id) or job
            outcome: CancelOutcome = "too_late" if current.state in IN_FLIGHT_STATES else "finished"
            return CancelResult(outcome, current)
        await self.store.release(job_id, "cancelled", self.limit_defaults)
        await self.billing.record_billed(job, 0.0, source="metrics")  # never sent to Segmind
        if actor_id != job.user_id:
            await self.store.record_audit(
                job.guild_id, actor_id, "job.cancel", {"job_id": job_id, "user_id": job.user_id}
            )
        log.info("job %s cancelled in the queue by user %s", job_id, actor_id)
        self._announced.pop(job_id, None)  # not left for the next dispatch to notice
        self.wake()  # the jobs behind it move up
        cancelled = await self.store.get_job(job_id)
        await self._finished(cancelled)
        return CancelResult("cancelled", cancelled)

    # ----------------------------------------------------------------------------- dispatching

    async def _dispatch_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._dispatch_once()
            except Fenced:
                log.warning("another node took the runner lease; this one stands down")
                self.on_fenced()
                return
            except Exception:
                log.exception("job dispatcher failed; retrying on the next wake-up")

    async def _poll_queue(self) -> None:
        """Polling, not LISTEN/NOTIFY: it works on both backends, survives reconnects with no
        listener to re-arm, and one indexed read per interval costs nothing."""
        while True:
            await asyncio.sleep(self.queue_poll)
            self.wake()

    async def _dispatch_once(self) -> None:
        while self._accepting and len(self._tasks) < self.max_concurrent:
            job = await self._runs.next_queued()
            if job is None:
                break
            # The budget slot first, then the write-ahead `submitting`: a job waiting for
            # Segmind's rate limit stays `queued`, so a runner killed meanwhile leaves it to
            # the next one to send, instead of hundreds of never-sent jobs in `submitting`
            # that can only end `unknown`.
            await self.segmind.limiter.acquire(RateLimiter.PRIORITY_USER)
            if not await self._runs.transition(job.id, ("queued",), "submitting"):
                continue  # cancelled in between (the slot goes unused)
            self._spawn(job.id, self._run_new(job.id, prepaid=True))
        await self._announce_positions()

    async def _announce_positions(self) -> None:
        """Tell each waiting job its place in line — only the jobs whose place changed, so a
        burst of n requests costs O(n) edits and renders, not O(n²)."""
        queued = await self._runs.queued_ids()
        positions = {job_id: place for place, job_id in enumerate(queued, start=1)}
        for job_id in [j for j in self._announced if j not in positions]:
            del self._announced[job_id]
        for job_id, place in positions.items():
            if self._announced.get(job_id) == place:
                continue
            job = await self._runs.get_job(job_id)
            if job is None or job.state != "queued":
                continue
            self._announced[job_id] = place
            await self._progress(job, Progress(Stage.QUEUED, position=place))

    def _spawn(self, job_id: int, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.create_task(
            coro,  # type: ignore[arg-type]
            name=f"job-{job_id}",
            context=job_context(job_id),  # every line this task logs carries the job id
        )
        self._tasks[job_id] = task

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.pop(job_id, None)
            self._submitting.discard(job_id)
            error = None if finished.cancelled() else finished.exception()
            if isinstance(error, Fenced):
                log.warning("job %s: another node took the runner lease (%s)", job_id, error)
                self.on_fenced()
            elif error is not None:
                log.error("job %s crashed", job_id, exc_info=error)
            self.wake()

        task.add_done_callback(done)

    # ------------------------------------------------------------------------------ one job

    async def _run_new(self, job_id: int, *, prepaid: bool = False) -> None:
        job = await self._job(job_id)
        await self._progress(job, Progress(Stage.SUBMITTING))
        self._submitting.add(job_id)
        try:
            submitted = await self.segmind.submit(job.params_model, prepaid=prepaid)
        except sm.SubmitUncertain as exc:
            self._submitting.discard(job_id)
            await self._recover(job, exc)
            return
        except sm.SegmindError as exc:
            if isinstance(exc, sm.InsufficientCredits):
                self.credits_signal.note_out_of_credits()
            # Refused before Segmind created a job: nothing was billed.
            await self._fail(job, "failed", exc, release_reason="not_submitted", billed=0.0)
            return
        finally:
            self._submitting.discard(job_id)
        self.credits_signal.note_submitted()
        # Logged before anything else can fail: with it a moderator can always find the job.
        log.info("job %s: Segmind accepted it as request %s", job_id, submitted.request_id)
        self.events.submitted(job_id)
        await self._accepted(job, submitted, self.clock())

    async def _accepted(self, job: Job, submitted: sm.SubmittedJob, submitted_at: float) -> None:
        """Segmind has the job as `submitted.request_id`: record that (retrying a busy
        database, following in memory meanwhile), then follow it to delivery."""
        job_id = job.id
        self._unrecorded[job_id] = (submitted.request_id, submitted_at)
        for delay in (*SUBMITTED_WRITE_DELAYS, None):
            if await self._record_submitted(job_id):
                break
            if delay is None:
                log.error(
                    "job %s: the database is unavailable; following Segmind request %s in "
                    "memory and recording it when the database is back",
                    job_id,
                    submitted.request_id,
                )
                await self._follow(
                    dataclasses.replace(
                        job,
                        state="submitted",
                        request_id=submitted.request_id,
                        submitted_at=submitted_at,
                    ),
                    submitted,
                )
                return
            await asyncio.sleep(delay)
        job = await self._job(job_id)
        if job.state != "submitted" or job.request_id != submitted.request_id:
            return  # the state moved under us (logged by _record_submitted)
        log.info("job %s submitted as Segmind request %s", job_id, submitted.request_id)
        await self._follow(job, submitted)

    async def _record_submitted(self, job_id: int) -> bool:
        """Try once to write the pending `submitted` transition; True when nothing is pending
        any more (written, or the job's state moved meanwhile, which is logged)."""
        pending = self._unrecorded.get(job_id)
        if pending is None:
            return True
        request_id, submitted_at = pending
        try:
            recorded = await self._runs.transition(
                job_id,
                ("submitting",),
                "submitted",
                request_id=request_id,
                submitted_at=submitted_at,
            )
        except StoreUnavailable as exc:
            log.warning("job %s: cannot record request %s yet (%s)", job_id, request_id, exc)
            return False
        del self._unrecorded[job_id]
        if not recorded:
            log.error("job %s: submitted as %s but its state moved", job_id, request_id)
            return True
        log.info("job %s: request %s recorded", job_id, request_id)
        return True

    async def _until_recorded(self, job_id: int) -> None:
        """Before the job's next transition: wait until its `submitted` write has landed."""
        delay = SUBMITTED_WRITE_DELAYS[0]
        while not await self._record_submitted(job_id):
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECORD_RETRY_CAP)

    async def _wait(self, job: Job, submitted: sm.SubmittedJob, **kwargs: Any) -> sm.JobResult:
        """`SegmindClient.wait`, then (answer or error) the job's `submitted` row in place."""
        try:
            result = await self.segmind.wait(submitted, **kwargs)
        except sm.SegmindError:
            await self._until_recorded(job.id)
            raise
        await self._until_recorded(job.id)
        return result

    async def _follow(self, job: Job, submitted: sm.SubmittedJob) -> None:
        """From `submitted`: wait for Segmind, download, deliver."""
        started = job.submitted_at or self.clock()

        async def on_status(report: sm.StatusReport) -> None:
            self.events.polled(job.id, terminal=report.state.is_terminal)
            if job.id in self._unrecorded:
                await self._record_submitted(job.id)  # each poll is a try while the db is down
            stage = Stage.WAITING if report.state is sm.JobState.QUEUED else Stage.GENERATING
            await self._progress(
                job,
                Progress(
                    stage,
                    elapsed=self.clock() - started,
                    estimate=self.segmind.estimate_seconds(),
                    since=started,
                ),
            )

        try:
            result = await self._wait(
                job, submitted, on_status=on_status, deadline=self.deadline, started_at=started
            )
        except sm.NotFound as exc:
            if not await self._from_history(job, started):
                await self._fail(job, "expired", exc, release_reason="expired")
            return
        except sm.ContentBlocked as exc:
            await self._fail(
                job,
                "failed",
                exc,
                release_reason="content_blocked",
                billed=billed_by_failure(exc.raw),
            )
            return
        except sm.GenerationFailed as exc:
            await self._fail(
                job, "failed", exc, release_reason="failed", billed=billed_by_failure(exc.raw)
            )
            return
        except sm.SegmindError as exc:
            # Deadline, lost job, polls refused: Segmind may have made (and billed) it, so the
            # quote stays held until its history says what it billed.
            await self._fail(job, "failed", exc, release_reason="failed")
            return
        if result.cost is not None:
            # Billed once it finished, whether or not the member gets the video.
            await self.billing.record_billed(job, result.cost, source="metrics")
        took = self.clock() - started
        video_url = result.video_url  # the first http(s) entry: a data: URL is never fetched
        if video_url is None:
            await self._fail(
                job,
                "failed",
                sm.Unavailable("Segmind finished without a video"),
                release_reason="failed",
            )
            return
        completed = await self._runs.transition(
            job.id,
            ("submitted",),
            "completed",
            completed_at=self.clock(),
            cost=result.cost,
            output_url=video_url,
        )
        if completed is None:
            log.warning("job %s: ended while Segmind finished it; not delivering", job.id)
            return
        await self._deliver(completed, video_url, took, result.cost)

    async def _from_history(self, job: Job, started: float) -> bool:
        """The status or result route no longer knows the job (Segmind keeps those an hour);
        its history row, of any age, may still say how it ended. True when that settled the
        job: delivered from the row's `generation_url`, or failed as the row says (a failed
        request is not billed). False: no row, or one still pending — expire as before."""
        assert job.request_id is not None
        try:
            row = await self.segmind.history_row(job.request_id)
        except sm.SegmindError as exc:
            log.warning("job %s: the history cannot say how it ended (%s)", job.id, exc)
            return False
        if row is None:
            log.info("job %s: Segmind's history has no row for %s", job.id, job.request_id)
            return False
        if row.status is HistoryStatus.FAILED:
            reason = row.error
            kind = sm.ContentBlocked if sm.looks_blocked(reason) else sm.GenerationFailed
            failure = kind(reason, request_id=job.request_id)
            log.info("job %s: past the retention; the history says it failed", job.id)
            blocked = isinstance(failure, sm.ContentBlocked)
            await self._fail(
                job, "failed", failure, release_reason="content_blocked" if blocked else "failed"
            )
            return True
        if row.status is not HistoryStatus.COMPLETED or not row.generation_url:
            log.info("job %s: the history row says %s, without a video", job.id, row.status)
            return False
        log.info("job %s: past the retention; delivering from the history's video", job.id)
        completed = await self._runs.transition(
            job.id,
            ("submitted",),
            "completed",
            completed_at=self.clock(),
            cost=row.billed,
            output_url=row.generation_url,
        )
        if completed is None:
            log.warning("job %s: ended while the history was read; not delivering", job.id)
            return True
        await self._deliver(completed, row.generation_url, self.clock() - started, row.billed)
        return True

    async def _deliver(self, job: Job, output_url: str, took: float, cost: float | None) -> None:
        """From `completed` (or `delivering` after a restart): download once, deliver once."""
        if job.state == "delivering" and await self._found_earlier_delivery(job):
            return
        await self._progress(job, Progress(Stage.DOWNLOADING))
        video = self.work_dir / f"job-{job.id}.mp4"
        try:
            size = await self.segmind.download(output_url, video, self.max_video_bytes)
            await _check_playable(job.id, video)
        except sm.SegmindError as exc:
            log.warning("job %s: the video was not downloaded: %s", job.id, exc)
            video.unlink(missing_ok=True)
            await self._fail(job, "failed", exc, release_reason="delivery_failed")
            return
        try:
            delivering = await self._runs.transition(
                job.id, ("completed", "delivering"), "delivering"
            )
            if delivering is None:
                return
            job = delivering
            await self._progress(job, Progress(Stage.UPLOADING))

            async def checkpoint(route: DeliveryRoute) -> None:
                await self._runs.transition(
                    job.id, ("delivering",), "delivering", delivery_method=route
                )

            finished = Finished(video=video, size=size, output_url=output_url, took=took, cost=cost)
            delivery_checkpoint.set(checkpoint)  # this job task's context only
            await self._deliver_attempts(job, finished)
        finally:
            video.unlink(missing_ok=True)
            encoded_path(video).unlink(missing_ok=True)  # kept across delivery attempts

    async def _deliver_attempts(self, job: Job, finished: Finished) -> None:
        """Deliver, retrying transient trouble; before every retry, look for the last attempt."""
        for attempt in range(DELIVERY_ATTEMPTS):
            if attempt:
                await asyncio.sleep(DELIVERY_BACKOFF * 2 ** (attempt - 1))
                if await self._found_earlier_delivery(await self._job(job.id)):
                    return
            try:
                receipt = await self.output.deliver(job, finished)
            except OutputUnavailable as exc:
                log.warning(
                    "job %s: delivery attempt %d failed (%s)", job.id, attempt + 1, exc.__cause__
                )
                continue
            except Exception as exc:
                # No route reached the requester; telling them tries every route once more.
                log.exception("job %s: delivery failed", job.id)
                await self._fail(job, "failed", exc, release_reason="delivery_failed")
                return
            await self._delivered(job, receipt, finished.size, finished.cost)
            return
        if await self._landed_after_all(await self._job(job.id), finished):
            return
        log.error("job %s: Discord kept failing; the video was not delivered", job.id)
        await self._fail(
            job,
            "failed",
            OutputUnavailable("Discord kept failing"),
            release_reason="delivery_failed",
        )

    async def _landed_after_all(self, job: Job, finished: Finished) -> bool:
        """After the last failed attempt, one more look before refunding: an attempt that
        timed out may still have landed. True when the job was settled here: delivered, or —
        when the output cannot tell — charged and the member told it may have arrived."""
        try:
            receipt = await self.output.find_delivery(job)
        except Exception as exc:
            log.error(
                "job %s: Discord kept failing and the bot cannot tell whether the video "
                "arrived (%s); NOT refunded — a moderator should check the channel for job %s",
                job.id,
                exc,
                job.id,
            )
            # Charged first, like a delivery: a refund for a video that landed is the loss
            # this exists to prevent, and settle_terminal must find nothing to release.
            await self._runs.charge(job.id, finished.cost)
            moved = await self._runs.transition(
                job.id, ("delivering",), "failed", error=MAYBE_DELIVERED, bytes=finished.size
            )
            log.warning("job %s failed: %s (charged, not refunded)", job.id, MAYBE_DELIVERED)
            await self._safely(self.output.notice(job, MAYBE_DELIVERED), job.id)
            if moved:
                await self._finished(await self._runs.get_job(job.id))
            return True
        if receipt is None:
            return False
        log.info("job %s: the last attempt landed after all (%s)", job.id, receipt.method)
        await self._delivered(job, receipt, finished.size, finished.cost)
        return True

    async def _found_earlier_delivery(self, job: Job) -> bool:
        """True (and the job settled as delivered) when an earlier attempt reached Discord."""
        try:
            receipt = await self.output.find_delivery(job)
        except DeliveryUnclear as exc:
            log.info("job %s: cannot see an earlier delivery (%s); sending", job.id, exc)
            return False
        except Exception:
            # Cannot tell: delivering again risks a duplicate, not delivering loses a paid
            # video. The placeholder edit is idempotent and posts carry a nonce, so send.
            log.exception("job %s: could not check for an earlier delivery; sending", job.id)
            return False
        if receipt is None:
            return False
        log.info(
            "job %s: already delivered before the restart (%s); not sending again",
            job.id,
            receipt.method,
        )
        await self._delivered(job, receipt, job.bytes, job.cost)
        return True

    async def _delivered(
        self, job: Job, receipt: Receipt, size: int | None, cost: float | None
    ) -> None:
        # Charged first, so a job never reads as delivered-but-free; if the process dies in
        # between, the resume finds the video, and charge() is idempotent.
        await self._runs.charge(job.id, cost)
        delivered = await self._runs.transition(
            job.id,
            ("delivering",),
            "delivered",
            delivered_at=self.clock(),
            delivered_message_id=receipt.message_id,
            delivery_method=receipt.method,
            bytes=size,
        )
        log.info("job %s delivered (%s, %s bytes)", job.id, receipt.method, size)
        await self._finished(delivered)

    # ---------------------------------------------------------------------------- endings

    async def _fail(
        self,
        job: Job,
        state: Literal["failed", "expired"],
        exc: BaseException,
        *,
        release_reason: ReleaseReason,
        billed: float | None = None,
    ) -> None:
        """End the job as `state`, refund the member per `release_reason`, tell them. `billed`:
        what Segmind billed when the lifecycle knows it (0 for a job it never made); None
        leaves the quote held against the owner's caps."""
        message = user_message(exc)
        log.warning("job %s %s: %s (%s)", job.id, state, message, type(exc).__name__)
        action = OWNER_ACTIONS.get(type(exc))
        if action is not None:
            log.error("job %s: the bot owner must act: %s", job.id, action)
        moved = await self._runs.transition(
            job.id,
            ("queued", "submitting", "submitted", "completed", "delivering"),
            state,
            error=message,
        )
        refunded = moved and (
            await self._runs.release(job.id, release_reason, self.limit_defaults) == "released"
        )
        if moved and billed is not None:
            await self.billing.record_billed(job, billed, source="metrics")
        shown = f"{message} {NOT_COUNTED}" if refunded else message
        await self._safely(self.output.failed(job, shown), job.id)
        if moved:
            await self._finished(await self._runs.get_job(job.id))

    async def _recover(self, job: Job, exc: BaseException | None) -> None:
        """From `submitting` with no request id: the POST may have reached Segmind (its answer
        was lost, or the process died while it was on the wire). Never re-sent; instead its
        request is looked for in Segmind's history by fingerprint (`bot.recovery`) until
        `recovery_window` after the submit began. One match is adopted and followed like any
        submitted job; none is refunded as `unknown`; several are not guessed between: the
        member is refunded and moderators are told."""
        await self._progress(job, Progress(Stage.RECOVERING))
        start = job.submit_started_at or job.updated_at
        until = start + self.recovery_window
        fingerprint = Fingerprint.of(job.params_model, start=start, end=until)
        log.warning(
            "job %s: the submit's answer was lost (%s); looking for its request in "
            "Segmind's history until %.0f s after it began",
            job.id,
            type(exc).__name__ if exc else "crash during submit",
            self.recovery_window,
        )
        looked = False
        while True:
            matches = await self._history_matches(job, fingerprint)
            looked = looked or matches is not None
            if matches is not None and len(matches) == 1:
                (row,) = matches
                log.info("job %s: found as Segmind request %s; adopting it", job.id, row.request_id)
                self.events.submitted(job.id)
                landed = row.created_at.timestamp() if row.created_at else start
                await self._accepted(job, self.segmind.job(row.request_id), landed)
                return
            if matches:
                await self._ambiguous(job, matches)
                return
            if self.clock() >= until:
                break
            await asyncio.sleep(min(self.recovery_interval, max(until - self.clock(), 0.0)))
        await self._unknown(job, exc, looked=looked)

    async def _history_matches(self, job: Job, fingerprint: Fingerprint) -> list[HistoryRow] | None:
        """The history rows that fit the job, those another job adopted left out; None when
        the history cannot be read right now."""
        first = datetime.fromtimestamp(fingerprint.start, tz=UTC).date() - timedelta(days=1)
        last = datetime.fromtimestamp(min(fingerprint.end, self.clock()), tz=UTC).date()
        last = max(first, last) + timedelta(days=1)  # UTC dates at Segmind: a day's slack
        try:
            rows = [row async for row in self.segmind.history(first, last)]
        except sm.SegmindError as exc:
            log.warning("job %s: cannot read Segmind's history (%s)", job.id, exc)
            return None
        found: list[HistoryRow] = []
        for row in dedupe(r for r in rows if fingerprint.matches(r)).values():
            owner = await self._runs.job_by_request_id(row.request_id)
            if owner is None or owner.id == job.id:
                found.append(row)
        return found

    async def _ambiguous(self, job: Job, matches: list[HistoryRow]) -> None:
        ids = ", ".join(row.request_id for row in matches)
        log.error(
            "job %s unknown: the lost submit matches %d Segmind requests (%s); not guessing — "
            "refunding the member, a moderator should check them",
            job.id,
            len(matches),
            ids,
        )
        for row in matches:
            await self._runs.record_discrepancy(
                NewDiscrepancy(
                    "ambiguous_recovery",
                    row.request_id,
                    job_id=job.id,
                    guild_id=job.guild_id,
                    billed=row.billed,
                    detail=f"{len(matches)} requests match: {ids}",
                )
            )
        moved = await self._runs.transition(job.id, ("submitting",), "unknown", error=AMBIGUOUS)
        if moved:
            await self._runs.release(job.id, "unknown", self.limit_defaults)
        await self._safely(self.output.failed(job, AMBIGUOUS), job.id)
        if self.alerts is not None:
            await self._safely(post_pending(self.store, self.alerts), job.id)
        if moved:
            await self._finished(await self._runs.get_job(job.id))

    async def _unknown(self, job: Job, exc: BaseException | None, *, looked: bool) -> None:
        """No request found for a lost submit: refunded. `looked`: Segmind's history was read
        and had none (so nothing was made); otherwise it could not be read at all."""
        message = NOT_FOUND if looked else UNCERTAIN
        log.error(
            "job %s unknown: the submit's outcome is unknown (%s) and %s; not resubmitting — "
            "a moderator should check Segmind's dashboard for a request made at this time",
            job.id,
            type(exc).__name__ if exc else "crash during submit",
            "Segmind's history shows no such request" if looked else "the history was unreadable",
        )
        moved = await self._runs.transition(job.id, ("submitting",), "unknown", error=message)
        if moved:
            await self._runs.release(job.id, "unknown", self.limit_defaults)
        await self._safely(self.output.failed(job, message), job.id)
        if moved:
            await self._finished(await self._runs.get_job(job.id))

    # ---------------------------------------------------------------------------- resuming

    async def _resume(self) -> None:
        for job in await self._runs.nonterminal_jobs():
            if job.state in ("queued", "awaiting_approval"):
                # The dispatcher takes queued jobs in order; held ones wait for a moderator
                # (or the approval lane's expiry sweep), whatever happened to this process.
                continue
            if job.state == "submitting":
                # The POST may have left before the crash: find it, never re-send it.
                self._spawn(job.id, self._recover(job, None))
            elif job.state == "submitted" and job.request_id:
                submitted = self.segmind.job(job.request_id)
                log.info("job %s: resuming Segmind request %s", job.id, job.request_id)
                self._spawn(job.id, self._follow(job, submitted))
            elif job.state in ("completed", "delivering") and job.output_url:
                took = (job.completed_at or self.clock()) - (job.submitted_at or job.created_at)
                self._spawn(job.id, self._deliver(job, job.output_url, took, job.cost))
            else:
                log.error("job %s: cannot resume from %s; marking failed", job.id, job.state)
                await self._fail(
                    job,
                    "failed",
                    sm.Unavailable("lost track of this job"),
                    release_reason="failed",
                )

    # ------------------------------------------------------------------------------ helpers

    async def _job(self, job_id: int) -> Job:
        job = await self._runs.get_job(job_id)
        if job is None:
            raise LookupError(f"job {job_id} vanished from the database")
        return job

    async def ended(self, job: Job) -> None:
        """A job ended outside this service's own flow (a moderator denied it, or it lapsed
        in the approval lane): counted and shown like any other ending."""
        await self._finished(job)

    async def _finished(self, job: Job | None) -> None:
        if job is not None:
            self.billing.forget(job.id)
            self.events.finished(job)
            await self._safely(self.output.finished(job), job.id)

    async def _progress(self, job: Job, progress: Progress) -> None:
        await self._safely(self.output.progress(job, progress), job.id)

    async def _safely(self, coro: object, job_id: int) -> None:
        """Showing progress must never break the job itself."""
        try:
            await coro  # type: ignore[misc]
        except Exception:
            log.exception("job %s: could not update Discord", job_id)

    def _clean_work_dir(self) -> None:
        """Partial downloads from a crash are worthless: the video is fetched again. Downloads
        in progress are hidden (`.job-N.mp4.<hex>.part`), so both patterns are swept."""
        for pattern in ("job-*", f"{sm.PARTIAL_PREFIX}job-*"):
            for leftover in self.work_dir.glob(pattern):
                leftover.unlink(missing_ok=True)


async def _check_playable(job_id: int, video: Path) -> None:
    """Raise `DownloadError` unless the downloaded file is a video worth attaching."""
    try:
        seconds = await asyncio.to_thread(probe_video, video)
    except NotAVideo as exc:
        raise sm.DownloadError(
            f"the downloaded file is not a playable video: {exc.reason}",
            user_message="Segmind's file is not a playable video, so there is nothing to post.",
        ) from None
    log.info("job %s: downloaded a %.1f s video", job_id, seconds)


NOT_COUNTED = "This does not count against your limit."
UNCERTAIN = (
    "Segmind did not answer in time, so this request may or may not have started. "
    "It was not sent again (that could bill twice) and it does not count against your "
    "limit. A moderator can check the job in the logs."
)
NOT_FOUND = (
    "Segmind's answer to this request was lost, and its record shows no such request: nothing "
    "was made. It was not sent again (that could bill twice) and it does not count against "
    "your limit."
)
AMBIGUOUS = (
    "Segmind's answer to this request was lost, and its record shows more than one request "
    "exactly like it, so the bot did not guess which is yours. It does not count against your "
    "limit; a moderator has been told."
)
MAYBE_DELIVERED = (
    "Discord kept failing while the bot sent this video, and the bot cannot tell whether it "
    "arrived — it may already be in this channel or your DMs. A moderator has been told in the "
    "logs."
)
OWNER_ACTIONS: dict[type[BaseException], str] = {
    sm.InsufficientCredits: "the Segmind account is out of credits — top it up at segmind.com",
    sm.AuthError: "Segmind refused SEGMIND_API_KEY — check the key in the bot's settings",
    sm.ModelGone: "Segmind no longer offers veo-3-fast — check for a bot update",
}


def user_message(exc: BaseException) -> str:
    """The sentence a Discord user sees for a failure; never a traceback or a secret. Segmind's
    failures carry their own (`SegmindError.user_message`)."""
    if isinstance(exc, sm.SegmindError):
        return exc.user_message
    return "Something went wrong delivering this video."
