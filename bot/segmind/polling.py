"""Adaptive polling of long Segmind jobs under one process-wide request budget.

Segmind counts every request against one per-minute budget (free plan 5/min, pro 50/min) and
has no webhook for plain v2 jobs, so polling is both the only way to learn that a video is ready
and the main consumer of that budget. Three pieces, none of which knows about HTTP or Discord:

- `DurationEstimator` keeps recent job durations (seeded with a prior from Segmind's published
  ~80 s average) and answers quantiles: "usually ~80 s".
- `PollSchedule` turns that distribution into *when to poll next*. The expected detection lag
  plus the expected number of polls is minimised by spacing polls as 1/sqrt(hazard): with f the
  density of completion times and S the survival, a poll interval h(t) costs S(t)/h(t) polls per
  second and f(t)*h(t)/2 of lag, and the optimum of that trade is h = c*sqrt(S/f). Early on the
  hazard is ~0 (a Veo job rarely ends in under ~30 s) so polls sit at the ceiling; around the
  usual completion time they tighten to the floor; an overdue job backs off again.
- `RateLimiter` is a sliding window every Segmind request of the process passes through, and
  `Poller` is the one loop that decides which job gets the next poll (earliest due first). When
  the jobs in flight want more than the budget, the schedule stretches instead of bursting.

Every piece takes its clock and sleep as arguments, so tests and `bench/polling.py` run them on
simulated time (`harness.clocks.run_simulated`).
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# Segmind's page says "average latency about 80 s" and the price range covers 4–8 s clips; Google
# reports 11 s to 6 min at peak. Until real durations arrive, these pseudo-observations (worth
# `prior_weight` real ones in total) stand in for them; they fade as the bot learns.
DEFAULT_PRIOR: tuple[float, ...] = (40.0, 50.0, 60.0, 70.0, 80.0, 85.0, 90.0, 100.0, 120.0, 150.0)
# Tuned with bench/polling.py: with spacing 0.25 and a 1.5 s floor, jobs lasting 40–120 s cost
# about 0.3 of the SDK's 1-s polls for about 0.85 s of mean detection lag. The floor bounds the
# lag (about half of it inside the dense window): at 2 s the lag sat right at 1 s.
DEFAULT_SPACING = 0.25
DEFAULT_FLOOR = 1.5


class RateLimiter:
    """A sliding-window limit shared by every Segmind request of the process.

    At most `max_per_window` grants in any `window` seconds. Waiters are served by priority
    (`PRIORITY_USER` before `PRIORITY_POLL`, so a submit or a result fetch never queues behind a
    backlog of background polls), then first come first served. `pause_until()` holds everyone
    after Segmind answered 429 with a reset time.
    """

    PRIORITY_USER = 0
    PRIORITY_POLL = 1

    def __init__(
        self,
        max_per_window: int,
        *,
        window: float = 60.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if max_per_window < 1:
            raise ValueError("max_per_window must be at least 1")
        if window <= 0:
            raise ValueError("window must be positive")
        self.max_per_window = max_per_window
        self.window = window
        self._clock = clock
        self._sleep = sleep
        self._grants: deque[float] = deque()
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._paused_until = -math.inf
        self._pump: asyncio.Task[None] | None = None
        self.granted = 0
        # Optional record of every grant time, for tests and the bench to audit the budget.
        self.grant_log: list[float] | None = None
        # Awaited after every grant, before the request goes out, and after a pause: the
        # runner records the budget there so a node taking over continues this window
        # instead of bursting. None: the budget lives in this process only.
        self.journal: Callable[[], Awaitable[None]] | None = None
        self._journal_tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"RateLimiter(max_per_window={self.max_per_window}, window={self.window})"

    @property
    def waiting(self) -> int:
        """Requests queued for a slot."""
        return sum(1 for _, _, fut in self._waiters if not fut.done())

    def used(self) -> int:
        """Grants inside the current window."""
        self._prune(self._clock())
        return len(self._grants)

    def pause_until(self, when: float) -> None:
        """Grant nothing before `when` (this limiter's clock), e.g. Segmind's 429 reset time."""
        self._paused_until = max(self._paused_until, when)
        if self.journal is not None:
            task = asyncio.ensure_future(self.journal())
            self._journal_tasks.add(task)  # a strong reference until it ends
            task.add_done_callback(self._journaled)

    def _journaled(self, task: asyncio.Task[None]) -> None:
        self._journal_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not record the Segmind pause: %s", task.exception())

    def export(self, wall_now: float) -> tuple[tuple[float, ...], float | None]:
        """The grants inside the window and the pause (None if none), as wall-clock times
        given this limiter's clock reads `wall_now` on the wall: for another process."""
        now = self._clock()
        self._prune(now)
        shift = wall_now - now
        paused = self._paused_until + shift if self._paused_until > now else None
        return tuple(g + shift for g in self._grants), paused

    def restore(self, grants: Iterable[float], paused_until: float | None, wall_now: float) -> None:
        """Continue a budget another process recorded (wall-clock times, as `export` gives):
        its grants count in this window beside ours and its pause holds here too. Counting a
        grant twice only slows us; missing one could exceed Segmind's limit."""
        now = self._clock()
        shift = now - wall_now
        # A multiset, not a set: the record keeps times to the second, so several grants
        # share one time and each must count.
        merged = sorted([*self._grants, *(g + shift for g in grants)])
        self._grants = deque(g for g in merged if g > now - self.window)
        if paused_until is not None:
            self._paused_until = max(self._paused_until, paused_until + shift)

    async def acquire(self, priority: int = PRIORITY_USER) -> None:
        """Wait for a slot in the budget and take it (and, with a journal, record it)."""
        now = self._clock()
        if not self._waiters and self._next_free(now) <= now:
            self._grant(now)
        else:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiters, (priority, next(self._seq), future))
            if self._pump is None or self._pump.done():
                self._pump = asyncio.create_task(self._serve(), name="segmind-rate-limiter")
            await future
        if self.journal is not None:
            await self.journal()

    def _prune(self, now: float) -> None:
        horizon = now - self.window
        while self._grants and self._grants[0] <= horizon:
            self._grants.popleft()

    def _next_free(self, now: float) -> float:
        self._prune(now)
        ready = max(now, self._paused_until)
        if len(self._grants) >= self.max_per_window:
            # The slot frees when the grant max_per_window back leaves the window.
            ready = max(ready, self._grants[-self.max_per_window] + self.window)
        return ready

    def _grant(self, now: float) -> None:
        self._grants.append(now)
        self.granted += 1
        if self.grant_log is not None:
            self.grant_log.append(now)

    async def _serve(self) -> None:
        """Hand out slots to queued waiters as the window frees up."""
        while self._waiters:
            if self._waiters[0][2].done():  # its caller was cancelled
                heapq.heappop(self._waiters)
                continue
            now = self._clock()
            ready = self._next_free(now)
            if ready > now:
                # Nothing can be granted before `ready` whoever arrives, so a plain sleep is
                # enough; a new high-priority waiter is still served first when it ends.
                await self._sleep(ready - now)
                continue
            _, _, future = heapq.heappop(self._waiters)
            self._grant(now)
            future.set_result(None)


class DurationEstimator:
    """Recent job durations (seconds from submit to COMPLETED) and their quantiles."""

    def __init__(
        self,
        *,
        max_samples: int = 200,
        prior: Iterable[float] = DEFAULT_PRIOR,
        prior_weight: float = 5.0,
    ) -> None:
        if max_samples < 1:
            raise ValueError("max_samples must be at least 1")
        self._recent: deque[float] = deque(maxlen=max_samples)
        self._prior = tuple(float(p) for p in prior if p > 0)
        self._prior_weight = prior_weight if self._prior else 0.0
        self.observed = 0  # all observations ever, not just the kept ones

    def __repr__(self) -> str:
        return f"DurationEstimator(samples={len(self._recent)}, typical={self.typical():.0f}s)"

    def observe(self, seconds: float) -> None:
        """Record one finished job's duration; nonsense values are ignored."""
        if not math.isfinite(seconds) or seconds <= 0:
            return
        self._recent.append(float(seconds))
        self.observed += 1

    def weighted_samples(self) -> list[tuple[float, float]]:
        """(duration, weight) pairs: each kept observation weighs 1, the prior shares its weight."""
        pairs = [(x, 1.0) for x in self._recent]
        if self._prior:
            # The prior counts as `prior_weight` observations while there are none and fades as
            # real ones arrive, so its guesses (e.g. a 150 s tail) stop shaping the schedule.
            fade = self._prior_weight / (self._prior_weight + len(self._recent))
            each = self._prior_weight * fade / len(self._prior)
            pairs.extend((x, each) for x in self._prior)
        return pairs

    def quantile(self, q: float) -> float:
        """The weighted `q`-quantile (0..1) of the durations."""
        pairs = sorted(self.weighted_samples())
        if not pairs:
            return math.nan
        return _weighted_quantile(pairs, min(max(q, 0.0), 1.0))

    def typical(self) -> float:
        """The median duration: what the bot shows as "usually ~N s"."""
        return self.quantile(0.5)


class PollSchedule:
    """When to poll next, computed once from a snapshot of the duration distribution.

    The distribution is smoothed with a Gaussian kernel; the poll density is
    sqrt(hazard)/spacing clamped to [1/ceiling, 1/floor] polls per second, and the next poll comes
    when one unit of density has accumulated since the last. Past the observed durations the
    interval grows again by `tail_growth` seconds per second overdue, up to the ceiling.
    """

    def __init__(
        self,
        samples: Sequence[tuple[float, float]],
        *,
        floor: float = DEFAULT_FLOOR,
        ceiling: float = 20.0,
        spacing: float = DEFAULT_SPACING,
        step: float = 0.5,
        tail_growth: float = 0.1,
    ) -> None:
        if not 0 < floor <= ceiling:
            raise ValueError("need 0 < floor <= ceiling")
        self.floor = floor
        self.ceiling = ceiling
        self.spacing = spacing
        self.step = step
        self.tail_growth = tail_growth
        self._times: list[float] = [0.0]
        self._cumulative: list[float] = [0.0]
        self._end_density = 1.0 / ceiling
        points = [(x, w) for x, w in samples if w > 0 and math.isfinite(x)]
        if not points:
            self.horizon = 0.0
            return
        bandwidth = _bandwidth(points)
        # Beyond nearly all known durations the hazard estimate rests on a sample or two and
        # would pin polls to the floor; there an overdue job backs off instead.
        self.horizon = _weighted_quantile(sorted(points), 0.995) + 2.0 * bandwidth
        steps = max(1, math.ceil(self.horizon / step))
        densities = [self._density(k * step, points, bandwidth) for k in range(steps + 1)]
        for k in range(1, steps + 1):
            self._times.append(k * step)
            area = 0.5 * (densities[k - 1] + densities[k]) * step
            self._cumulative.append(self._cumulative[-1] + area)
        self._end_density = densities[-1]

    def _density(self, t: float, points: Sequence[tuple[float, float]], bw: float) -> float:
        pdf = 0.0
        survival = 0.0
        for x, w in points:
            z = (t - x) / bw
            pdf += w * math.exp(-0.5 * z * z)
            survival += w * 0.5 * math.erfc(z / math.sqrt(2.0))
        pdf /= bw * math.sqrt(2.0 * math.pi)
        if survival <= 1e-12:
            return 1.0 / self.floor
        hazard = pdf / survival
        wanted = math.sqrt(hazard) / self.spacing
        return min(max(wanted, 1.0 / self.ceiling), 1.0 / self.floor)

    def _accumulated(self, t: float) -> float:
        k = min(int(t / self.step), len(self._times) - 1)
        if k >= len(self._times) - 1:
            return self._cumulative[-1]
        frac = (t - self._times[k]) / self.step
        return self._cumulative[k] + frac * (self._cumulative[k + 1] - self._cumulative[k])

    def next_poll(self, elapsed: float) -> float:
        """Seconds after the start at which to poll next, given a poll at `elapsed`."""
        elapsed = max(0.0, elapsed)
        if elapsed >= self.horizon:
            overdue = elapsed - self.horizon
            interval = 1.0 / self._end_density + self.tail_growth * overdue
        else:
            target = self._accumulated(elapsed) + 1.0
            if target <= self._cumulative[-1]:
                k = bisect.bisect_left(self._cumulative, target)
                low, high = self._cumulative[k - 1], self._cumulative[k]
                frac = (target - low) / (high - low) if high > low else 0.0
                interval = self._times[k - 1] + frac * self.step - elapsed
            else:
                rest = target - self._cumulative[-1]
                interval = self.horizon + rest / self._end_density - elapsed
        return elapsed + min(max(interval, self.floor), self.ceiling)

    def polls_until(self, seconds: float) -> list[float]:
        """The poll times (from the start) this schedule makes for a job lasting `seconds`."""
        times: list[float] = []
        t = 0.0
        while True:
            t = self.next_poll(t)
            times.append(t)
            if t >= seconds:
                return times


def _bandwidth(points: Sequence[tuple[float, float]]) -> float:
    """Silverman's rule of thumb on weighted samples, at least one second."""
    total = sum(w for _, w in points)
    mean = sum(x * w for x, w in points) / total
    variance = sum(w * (x - mean) ** 2 for x, w in points) / total
    ordered = sorted(points)
    iqr = _weighted_quantile(ordered, 0.75) - _weighted_quantile(ordered, 0.25)
    spread = min(math.sqrt(variance), iqr / 1.34)
    if spread <= 0:
        spread = math.sqrt(variance)
    effective_n = total * total / sum(w * w for _, w in points)
    silverman = 0.9 * spread * effective_n ** (-0.2)
    # With few samples Silverman's kernel is wide enough to leak hazard into the first seconds,
    # where no Veo job ends; a tenth of the median keeps the early polls sparse.
    return max(1.0, min(silverman, 0.1 * _weighted_quantile(ordered, 0.5)))


def _weighted_quantile(ordered: Sequence[tuple[float, float]], q: float) -> float:
    """The `q`-quantile of (value, weight) pairs sorted by value."""
    total = sum(w for _, w in ordered)
    running = 0.0
    for x, w in ordered:
        running += w
        if running >= q * total:
            return x
    return ordered[-1][0]


class DeadlineReached(Exception):
    """A polled job was still not finished at its hard deadline."""

    def __init__(self, elapsed: float) -> None:
        super().__init__(f"still not finished after {elapsed:.0f} s")
        self.elapsed = elapsed


@dataclass(eq=False)
class _Watch(Generic[T]):
    check: Callable[[], Awaitable[T]]
    done: Callable[[T], bool]
    on_result: Callable[[T], Awaitable[None] | None] | None
    retryable: tuple[type[BaseException], ...]
    retry_in: Callable[[BaseException], float | None] | None
    started_at: float
    deadline_at: float
    future: asyncio.Future[T]
    polls: int = 0


@dataclass(order=True)
class _Due:
    due: float
    seq: int
    watch: _Watch[Any] = field(compare=False)


class Poller:
    """The one place that decides which in-flight job is polled next.

    Every job waits here; a single loop takes the earliest-due job, takes a slot from the shared
    `RateLimiter` (at poll priority), and runs that job's check. Over budget, jobs simply get
    their slots later: the schedule stretches, the window is never exceeded.
    """

    def __init__(
        self,
        limiter: RateLimiter,
        *,
        estimator: DurationEstimator | None = None,
        floor: float = DEFAULT_FLOOR,
        ceiling: float = 20.0,
        spacing: float = DEFAULT_SPACING,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not 0 < floor <= ceiling:
            raise ValueError("need 0 < floor <= ceiling")
        self.limiter = limiter
        self.estimator = estimator if estimator is not None else DurationEstimator()
        self.floor = floor
        self.ceiling = ceiling
        self.spacing = spacing
        self._clock = clock
        self._sleep = sleep
        self._heap: list[_Due] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._watching: set[_Watch[Any]] = set()
        self._schedule: PollSchedule | None = None
        self._schedule_built_at = -1
        self.polls = 0

    def __repr__(self) -> str:
        return f"Poller(in_flight={self.in_flight}, typical={self.typical_duration():.0f}s)"

    @property
    def in_flight(self) -> int:
        """Jobs being waited on."""
        return len(self._watching)

    def observe(self, seconds: float) -> None:
        """Teach the schedule one finished job's duration (e.g. seeded from the database)."""
        self.estimator.observe(seconds)

    def typical_duration(self) -> float:
        """The median job duration in seconds: "usually ~80 s"."""
        return self.estimator.typical()

    def quantile(self, q: float) -> float:
        """A quantile (0..1) of recent job durations in seconds."""
        return self.estimator.quantile(q)

    @property
    def schedule(self) -> PollSchedule:
        """The current schedule, rebuilt as durations are learned."""
        seen = self.estimator.observed
        stale = self._schedule is None or (
            seen != self._schedule_built_at
            # One more sample barely moves a distribution of hundreds: rebuild every time while
            # learning, then only after ~10% new observations, so rebuilding stays cheap.
            and (
                seen < 30 or seen - self._schedule_built_at >= max(1, self._schedule_built_at // 10)
            )
        )
        if stale or self._schedule is None:
            self._schedule = PollSchedule(
                self.estimator.weighted_samples(),
                floor=self.floor,
                ceiling=self.ceiling,
                spacing=self.spacing,
            )
            self._schedule_built_at = seen
        return self._schedule

    def next_poll(self, elapsed: float) -> float:
        """Seconds after the start of the next poll, given one at `elapsed`."""
        return self.schedule.next_poll(elapsed)

    async def wait(
        self,
        check: Callable[[], Awaitable[T]],
        *,
        done: Callable[[T], bool],
        started_at: float | None = None,
        deadline: float | None = None,
        on_result: Callable[[T], Awaitable[None] | None] | None = None,
        retryable: tuple[type[BaseException], ...] = (),
        retry_in: Callable[[BaseException], float | None] | None = None,
    ) -> T:
        """Poll `check` on the shared schedule until `done(result)`; return that result.

        `check` must make exactly one request: the poller has already taken its budget slot.
        `started_at` (this poller's clock) is when the job was submitted; a job resumed long
        after it started is checked at once. `deadline` is seconds after `started_at`; past it
        `DeadlineReached` is raised. Errors of a `retryable` type are logged and retried a
        ceiling later — or after `retry_in(error)` seconds when that says (the server named
        when to come back, as a 429's reset does); any other error from `check` is raised
        here. `on_result` sees every result; its own failures are logged, never fatal.
        """
        now = self._clock()
        start = now if started_at is None else started_at
        deadline_at = math.inf if deadline is None else start + deadline
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        watch = _Watch(check, done, on_result, retryable, retry_in, start, deadline_at, future)
        first = start + self.next_poll(0.0)
        self._watching.add(watch)
        try:
            self._push(watch, min(max(first, now), deadline_at))
            return await future
        finally:
            self._watching.discard(watch)
            if not future.done():
                future.cancel()

    def _push(self, watch: _Watch[Any], due: float) -> None:
        heapq.heappush(self._heap, _Due(due, next(self._seq), watch))
        self._wake.set()
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(self._run(), name="segmind-poller")

    def _drop_finished(self) -> None:
        while self._heap and self._heap[0].watch.future.done():
            heapq.heappop(self._heap)

    async def _run(self) -> None:
        while True:
            self._drop_finished()
            if not self._heap:
                return
            now = self._clock()
            due = self._heap[0].due
            if due > now:
                await self._nap(due - now)
                continue
            await self.limiter.acquire(RateLimiter.PRIORITY_POLL)
            # Pick again: while we waited for the slot an earlier-due job may have arrived.
            self._drop_finished()
            if not self._heap:
                return
            entry = heapq.heappop(self._heap)
            entry.watch.polls += 1
            self.polls += 1
            task = asyncio.create_task(self._check(entry.watch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _nap(self, seconds: float) -> None:
        """Sleep until the next job is due, or until a new job is pushed."""
        self._wake.clear()
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()

    async def _check(self, watch: _Watch[Any]) -> None:
        future = watch.future
        try:
            result = await watch.check()
        except asyncio.CancelledError:
            if not future.done():
                future.cancel()
            raise
        except Exception as exc:
            if future.done():
                return
            if isinstance(exc, watch.retryable):
                told = watch.retry_in(exc) if watch.retry_in is not None else None
                delay = self.ceiling if told is None else max(0.0, told)
                log.warning("poll failed (%s); trying again in %.1f s", exc, delay)
                self._reschedule(watch, self._clock() + delay)
            else:
                future.set_exception(exc)
            return
        if future.done():
            return
        if watch.on_result is not None:
            try:
                maybe = watch.on_result(result)
                if maybe is not None:
                    await maybe
            except Exception:
                log.exception("status callback failed; polling continues")
        if future.done():
            return
        if watch.done(result):
            future.set_result(result)
            return
        now = self._clock()
        self._reschedule(watch, watch.started_at + self.next_poll(now - watch.started_at))

    def _reschedule(self, watch: _Watch[Any], due: float) -> None:
        now = self._clock()
        if now >= watch.deadline_at:
            watch.future.set_exception(DeadlineReached(now - watch.started_at))
            return
        self._push(watch, min(due, watch.deadline_at))
