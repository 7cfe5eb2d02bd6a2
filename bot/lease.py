"""One runner per Segmind key: the runner lease, kept alive, and the request budget it hands on.

Every node takes interactions in (reserve, placeholder); only the node holding the runner lease
submits, polls, downloads and delivers. The lease is a database row named by a fingerprint of
the Segmind key (never the key), with an owner, an expiry on the DATABASE's clock and a
fencing epoch that grows on every takeover. `RunnerLease` takes it when it is free, renews it
every third of its term, and stands the node down when it cannot renew in time or a write was
refused as `Fenced`; `BudgetRecorder` records the Segmind request budget through the runner's
fenced store, so the next runner continues the window instead of bursting.

Nothing here imports Discord; the callbacks are the lifecycle's (`JobService.take_over`,
`JobService.stand_down`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from bot.segmind.polling import RateLimiter
from bot.store import BudgetState, Lease, RunnerStore, StoreError, StoreUnavailable

log = logging.getLogger(__name__)

Monotonic = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


def lease_name(segmind_key: str) -> str:
    """The lease's (and the budget's) name for a Segmind key: a truncated SHA-256, enough to
    tell two keys apart and useless for recovering the key."""
    return "segmind-" + hashlib.sha256(segmind_key.encode()).hexdigest()[:16]


class BudgetRecorder:
    """Records a `RateLimiter`'s window and 429 pause through the runner's fenced store, and
    loads what the last runner recorded when this node takes over.

    A grant is recorded before its request goes out, so a node killed right after sending
    left the grant behind for the next one. A `Fenced` refusal propagates (the request is not
    sent and the runner stands down); a database that does not answer is logged and the
    request proceeds — the lease renewal fails soon after and stops this runner anyway."""

    def __init__(
        self,
        limiter: RateLimiter,
        name: str,
        *,
        wall: Callable[[], float] = time.time,
        coalesce: float = 0.05,
    ) -> None:
        self.limiter = limiter
        self.name = name
        self._wall = wall
        # Group commit: grants asked for within `coalesce` seconds share one write, so 1,000
        # jobs polling cost a few writes a second, not one per request.
        self.coalesce = coalesce
        self._runs: RunnerStore | None = None
        self._lock = asyncio.Lock()
        self._asked = 0  # grants that asked to be recorded
        self._written = 0  # grants covered by a completed write
        self.writes = 0

    async def resume(self, runs: RunnerStore) -> None:
        """Continue the recorded window (if any) and record from now on through `runs`."""
        state = await runs.load_budget(self.name)
        if state is not None:
            self.limiter.restore(state.grants, state.paused_until, self._wall())
            log.info(
                "continuing the Segmind budget: %d requests in the window%s",
                self.limiter.used(),
                " and a rate-limit pause" if state.paused_until else "",
            )
        self._runs = runs
        self.limiter.journal = self.record

    def detach(self) -> None:
        """Stop recording (this node no longer runs jobs)."""
        self.limiter.journal = None
        self._runs = None

    async def record(self) -> None:
        """Return once a write that began after this call's grant has landed."""
        runs = self._runs
        if runs is None:
            return
        self._asked += 1
        mine = self._asked
        async with self._lock:
            if self._written >= mine:
                return  # a write that began after our grant covered it
            if self.coalesce > 0:
                await asyncio.sleep(self.coalesce)  # gather the grants asked for meanwhile
            covered = self._asked
            grants, paused = self.limiter.export(self._wall())
            try:
                await runs.save_budget(self.name, BudgetState(grants, paused))
            except StoreUnavailable as exc:
                log.warning("could not record the Segmind budget: %s", exc)
            self.writes += 1
            self._written = covered


class RunnerLease:
    """Keeps this node's claim on the runner lease: a standby tries to take it every sixth of
    a term; the holder renews it as often, and stands down (`on_lost`) when a renewal says
    another node holds a newer term, when it could not renew for two thirds of a term (the
    last third is the margin before the database's expiry, measured from when the last good
    renewal was SENT, which is never later than the database's own clock read it), or when
    `lost()` is called (a runner write was refused as `Fenced`)."""

    def __init__(
        self,
        store: RunnerStore,
        *,
        name: str,
        owner: str,
        seconds: float,
        on_acquired: Callable[[Lease], Coroutine[Any, Any, None]],
        on_lost: Callable[[], Awaitable[None]],
        monotonic: Monotonic = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if seconds <= 0:
            raise ValueError("the lease must last a positive number of seconds")
        self.store = store
        self.name = name
        self.owner = owner
        self.seconds = seconds
        self._on_acquired = on_acquired
        self._on_lost = on_lost
        self._monotonic = monotonic
        self._sleep = sleep
        self.lease: Lease | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._taking_over: asyncio.Task[None] | None = None
        self.terms = 0  # how many times this node became the runner
        self.acquired_at: float | None = None  # monotonic time of the last takeover

    @property
    def holding(self) -> bool:
        """Whether this node is the runner now."""
        return self.lease is not None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="runner-lease")

    def lost(self) -> None:
        """A runner write was refused: another node holds a newer term. Stand down now."""
        self._lost.set()

    async def close(self) -> None:
        """Stop trying; if this node holds the lease, end its term so a standby takes over at
        once. Call after the job service stopped (its writes are done)."""
        lease = self.lease  # read first: stopping the loop forgets it
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._cancel_takeover()
        self.lease = None
        if lease is not None:
            try:
                await self.store.release_lease(lease)
                log.info("runner lease %s (epoch %d) handed back", lease.name, lease.epoch)
            except StoreError as exc:
                log.warning("could not hand the runner lease back (%s); it lapses by itself", exc)

    async def _run(self) -> None:
        # A standby looks twice per renewal period: after a runner dies it starts at most a
        # sixth of a term after the dead one's term lapsed.
        interval = self.seconds / 6
        while True:
            try:
                lease = await self.store.acquire_lease(self.name, self.owner, self.seconds)
            except StoreError as exc:
                log.warning("cannot reach the runner lease (%s); still a standby", exc)
                lease = None
            if lease is None:
                await self._sleep(interval)
                continue
            await self._hold(lease, sent_at=self._monotonic())

    async def _hold(self, lease: Lease, *, sent_at: float) -> None:
        """Run jobs under `lease` until it is lost; then stand down and return."""
        self.lease = lease
        self.terms += 1
        self.acquired_at = sent_at
        self._lost.clear()
        log.info("runner lease %s taken (epoch %d): this node runs jobs", lease.name, lease.epoch)
        # The takeover (resuming every job) may outlast a renewal period: renew beside it.
        self._taking_over = asyncio.create_task(self._on_acquired(lease), name="runner-takeover")
        self._taking_over.add_done_callback(self._took_over)
        last_good = sent_at
        reason = "this node is shutting down"
        try:
            while True:
                stand_down_at = last_good + self.seconds * 2 / 3
                next_renewal = last_good + self.seconds / 3
                if await self._lost_within(next_renewal - self._monotonic()):
                    reason = "a runner write was refused, or taking over failed"
                    break
                sending = self._monotonic()
                try:
                    renewed = await asyncio.wait_for(
                        self.store.renew_lease(lease, self.seconds),
                        timeout=max(0.0, stand_down_at - sending),
                    )
                except (StoreError, TimeoutError) as exc:
                    if self._monotonic() >= stand_down_at:
                        reason = f"could not renew in time ({exc or 'timeout'})"
                        break
                    log.warning("runner lease renewal failed (%s); retrying", exc)
                    await self._lost_within(min(1.0, stand_down_at - self._monotonic()))
                    continue
                if renewed is None:
                    reason = "another node took it"
                    break
                last_good = sending
                self.lease = renewed
        finally:
            self.lease = None
            await self._cancel_takeover()
            log.warning(
                "runner lease %s (epoch %d) lost: %s; this node is a standby",
                lease.name,
                lease.epoch,
                reason,
            )
            await self._on_lost()

    def _took_over(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # Holding a lease while running nothing would stall every job: give it up.
        log.error("taking over as the runner failed", exc_info=task.exception())
        self.lost()

    async def _lost_within(self, seconds: float) -> bool:
        if seconds <= 0:
            return self._lost.is_set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._lost.wait(), timeout=seconds)
        return self._lost.is_set()

    async def _cancel_takeover(self) -> None:
        task, self._taking_over = self._taking_over, None
        if task is None:
            return
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):  # logged by _took_over
            await task
