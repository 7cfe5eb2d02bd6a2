"""The scheduler, the shared budget and the central poller, on simulated time.

`run_simulated` runs each scenario on an event loop whose clock jumps to the next timer, so an
hour of polling takes milliseconds and every timestamp is exact.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random

import pytest

from bot.segmind.polling import (
    DeadlineReached,
    DurationEstimator,
    Poller,
    PollSchedule,
    RateLimiter,
)
from harness.clocks import run_simulated


def now() -> float:
    return asyncio.get_running_loop().time()


def max_in_any_window(times: list[float], window: float = 60.0) -> int:
    ordered = sorted(times)
    return max((sum(1 for t in ordered if a <= t < a + window) for a in ordered), default=0)


def learned(durations: list[float]) -> DurationEstimator:
    estimator = DurationEstimator()
    for d in durations:
        estimator.observe(d)
    return estimator


_RNG = random.Random(3)
UNIFORM = [_RNG.uniform(40, 120) for _ in range(200)]


# --- RateLimiter ----------------------------------------------------------------------------


def test_limiter_never_exceeds_window() -> None:
    async def scenario() -> list[float]:
        limiter = RateLimiter(50, window=60.0, clock=now)
        limiter.grant_log = []
        await asyncio.gather(*(limiter.acquire() for _ in range(175)))
        return limiter.grant_log

    grants = run_simulated(scenario())
    assert len(grants) == 175
    assert max_in_any_window(grants) == 50
    assert grants[:50] == [0.0] * 50  # a fresh budget is usable at once
    assert grants[50] == 60.0 and grants[100] == 120.0 and grants[150] == 180.0


def test_limiter_serves_user_requests_before_polls() -> None:
    async def scenario() -> list[str]:
        limiter = RateLimiter(1, window=10.0, clock=now)
        order: list[str] = []

        async def take(name: str, priority: int) -> None:
            await limiter.acquire(priority)
            order.append(name)

        await limiter.acquire()
        polls = [asyncio.create_task(take(f"poll{i}", RateLimiter.PRIORITY_POLL)) for i in range(3)]
        await asyncio.sleep(1)
        user = asyncio.create_task(take("submit", RateLimiter.PRIORITY_USER))
        await asyncio.gather(*polls, user)
        return order

    assert run_simulated(scenario()) == ["submit", "poll0", "poll1", "poll2"]


def test_limiter_pause_holds_everyone() -> None:
    async def scenario() -> float:
        limiter = RateLimiter(100, clock=now)
        await limiter.acquire()
        limiter.pause_until(now() + 42.0)
        await limiter.acquire()
        return now()

    assert run_simulated(scenario()) == 42.0


def test_limiter_skips_cancelled_waiters() -> None:
    async def scenario() -> tuple[int, float]:
        limiter = RateLimiter(1, window=10.0, clock=now)
        await limiter.acquire()
        doomed = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(1)
        doomed.cancel()
        await limiter.acquire()
        return limiter.granted, now()

    assert run_simulated(scenario()) == (2, 10.0)


# --- DurationEstimator ----------------------------------------------------------------------


def test_estimator_prior_then_learns() -> None:
    estimator = DurationEstimator()
    assert 70 <= estimator.typical() <= 90  # Segmind's published ~80 s until we know better
    for _ in range(100):
        estimator.observe(200.0)
    assert estimator.typical() == 200.0
    assert estimator.quantile(0.0) < 200.0  # the prior still whispers, weighted ~5 %


def test_estimator_keeps_recent_and_ignores_nonsense() -> None:
    estimator = DurationEstimator(max_samples=10, prior=())
    for value in [-1.0, 0.0, float("nan"), float("inf")]:
        estimator.observe(value)
    assert estimator.observed == 0
    for value in range(1, 31):
        estimator.observe(float(value))
    assert estimator.observed == 30
    assert estimator.quantile(0.0) == 21.0  # only the last 10 are kept
    assert estimator.quantile(1.0) == 30.0
    assert estimator.typical() == 25.0


# --- PollSchedule ---------------------------------------------------------------------------


def test_schedule_sparse_early_dense_near_typical_then_backs_off() -> None:
    schedule = PollSchedule(learned(UNIFORM).weighted_samples(), floor=2.0, ceiling=20.0)
    polls = schedule.polls_until(240.0)
    gaps = {round(a): b - a for a, b in itertools.pairwise(polls)}
    # One look at 20 s and nothing before (no Veo job ends that fast), a few while approaching
    # the first learned completions at 40 s.
    assert [t for t in polls if t < 30] == [pytest.approx(20.0)]
    assert len([t for t in polls if t < 40]) <= 4
    near = [g for t, g in gaps.items() if 60 <= t <= 115]
    assert near and max(near) <= 2.5  # dense where jobs usually finish
    assert all(g >= 2.0 - 1e-9 for g in gaps.values())  # never below the floor
    overdue = [g for t, g in gaps.items() if t >= 160]
    assert overdue == sorted(overdue) and overdue[-1] > 10  # an overdue job backs off
    assert all(g <= 20.0 + 1e-9 for g in gaps.values())


def test_schedule_follows_the_learned_distribution() -> None:
    fast = PollSchedule(learned([30 + i * 0.1 for i in range(100)]).weighted_samples())
    slow = PollSchedule(learned([200 + i * 0.1 for i in range(100)]).weighted_samples())

    def density(schedule: PollSchedule, start: float, end: float) -> int:
        return sum(1 for t in schedule.polls_until(400) if start <= t < end)

    assert density(fast, 25, 45) > 3 * density(slow, 25, 45)
    assert density(slow, 195, 215) > 3 * density(fast, 195, 215)


@pytest.mark.parametrize("spacing", [0.1, 0.2, 0.4])
def test_schedule_spacing_trades_polls_for_lag(spacing: float) -> None:
    schedule = PollSchedule(learned(UNIFORM).weighted_samples(), spacing=spacing)
    loose = PollSchedule(learned(UNIFORM).weighted_samples(), spacing=spacing * 2)
    rng = random.Random(9)
    jobs = [rng.uniform(40, 120) for _ in range(300)]
    tight_polls = sum(len(schedule.polls_until(d)) for d in jobs)
    loose_polls = sum(len(loose.polls_until(d)) for d in jobs)
    assert tight_polls > loose_polls


# --- Poller ---------------------------------------------------------------------------------


class SimJob:
    """A job that completes `duration` seconds after it started; counts the checks."""

    def __init__(self, duration: float) -> None:
        self.started = now()
        self.duration = duration
        self.checks: list[float] = []

    async def check(self) -> str:
        self.checks.append(now())
        return "COMPLETED" if now() >= self.started + self.duration else "PROCESSING"


def make_poller(max_rpm: int, **kwargs: object) -> Poller:
    limiter = RateLimiter(max_rpm, clock=now)
    limiter.grant_log = []
    return Poller(limiter, clock=now, **kwargs)  # type: ignore[arg-type]


def test_poller_single_job_follows_the_schedule() -> None:
    async def scenario() -> tuple[list[float], list[float]]:
        poller = make_poller(50)
        job = SimJob(70.0)
        await poller.wait(job.check, done=lambda s: s == "COMPLETED")
        return job.checks, poller.schedule.polls_until(70.0)

    checks, planned = run_simulated(scenario())
    assert checks == pytest.approx(planned)
    assert checks[-1] - 70.0 < 2.0 + 1e-9


def test_fifty_jobs_in_flight_never_exceed_the_budget() -> None:
    async def scenario() -> tuple[Poller, list[SimJob], list[float]]:
        poller = make_poller(50)
        for d in UNIFORM:
            poller.observe(d)
        rng = random.Random(5)
        jobs: list[SimJob] = []
        finished: list[float] = []

        async def run_one(delay: float) -> None:
            await asyncio.sleep(delay)
            job = SimJob(rng.uniform(40, 120))
            jobs.append(job)
            await poller.wait(job.check, done=lambda s: s == "COMPLETED")
            finished.append(now() - job.started - job.duration)

        await asyncio.gather(*(run_one(i * 0.5) for i in range(50)))
        return poller, jobs, finished

    poller, jobs, lags = run_simulated(scenario())
    grants = poller.limiter.grant_log
    assert grants is not None
    assert len(jobs) == len(lags) == 50  # everyone finished
    assert max_in_any_window(grants) <= 50
    assert max_in_any_window(grants) >= 45  # the budget was the bottleneck, and was used
    assert sum(len(j.checks) for j in jobs) == len(grants) == poller.polls
    # Over budget the schedule stretches: lags grow, but no job is starved.
    assert max(lags) < 120


def test_poller_earliest_due_first_under_pressure() -> None:
    async def scenario() -> list[tuple[str, float]]:
        poller = make_poller(1)  # one request a minute for everybody
        await poller.limiter.acquire()  # ... and this minute's is gone
        first = poller.next_poll(0.0)
        order: list[tuple[str, float]] = []

        def waiter(name: str, due: float) -> asyncio.Task[str]:
            async def check() -> str:
                order.append((name, now()))
                return "done"

            # started_at chosen so that this job's first poll falls due at `due`
            return asyncio.create_task(
                poller.wait(check, done=lambda s: True, started_at=due - first)
            )

        tasks = [waiter("A", 50.0), waiter("B", 10.0), waiter("C", 30.0)]
        await asyncio.gather(*tasks)
        return order

    # All three were due before the next slot; slots go earliest-due first, one a minute.
    assert run_simulated(scenario()) == [("B", 60.0), ("C", 120.0), ("A", 180.0)]


def test_poller_deadline() -> None:
    async def scenario() -> tuple[float, int]:
        poller = make_poller(50)
        job = SimJob(10_000.0)
        with pytest.raises(DeadlineReached) as info:
            await poller.wait(job.check, done=lambda s: s == "COMPLETED", deadline=300.0)
        assert info.value.elapsed == pytest.approx(300.0)
        return now(), len(job.checks)

    ended, checks = run_simulated(scenario())
    assert ended == pytest.approx(300.0)
    assert checks < 150  # no busy loop at the end


def test_poller_retries_transient_and_raises_others(caplog: pytest.LogCaptureFixture) -> None:
    class Transient(Exception):
        pass

    async def scenario() -> None:
        poller = make_poller(50)
        calls = 0

        async def flaky() -> str:
            nonlocal calls
            calls += 1
            if calls <= 2:
                raise Transient("gateway hiccup")
            return "done"

        assert await poller.wait(flaky, done=lambda s: True, retryable=(Transient,)) == "done"
        assert calls == 3

        async def broken() -> str:
            raise KeyError("boom")

        with pytest.raises(KeyError):
            await poller.wait(broken, done=lambda s: True, retryable=(Transient,))

    caplog.set_level(logging.WARNING)
    run_simulated(scenario())
    assert "gateway hiccup" in caplog.text


def test_poller_callback_failure_is_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> list[str]:
        poller = make_poller(50)
        job = SimJob(50.0)
        seen: list[str] = []

        async def on_result(state: str) -> None:
            seen.append(state)
            raise RuntimeError("discord edit failed")

        await poller.wait(job.check, done=lambda s: s == "COMPLETED", on_result=on_result)
        return seen

    seen = run_simulated(scenario())
    assert seen[-1] == "COMPLETED" and len(seen) > 1
    assert "discord edit failed" in caplog.text


def test_cancelled_wait_stops_polling() -> None:
    async def scenario() -> tuple[int, int]:
        poller = make_poller(50)
        job = SimJob(1000.0)
        task = asyncio.create_task(poller.wait(job.check, done=lambda s: s == "COMPLETED"))
        await asyncio.sleep(100)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        before = len(job.checks)
        await asyncio.sleep(500)
        return before, len(job.checks)

    before, after = run_simulated(scenario())
    assert before > 0 and after == before
