"""The runner lease kept by `RunnerLease` on a real SQLite file shared by two stores (as two
processes share it), and the Segmind budget handed from one runner to the next.

Terms here are a fraction of a second of real time: the lease's clock is the database's, which
no test can move by hand."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.lease import BudgetRecorder, RunnerLease, lease_name
from bot.segmind.polling import RateLimiter
from bot.store import BudgetState, Fenced, Lease, SqliteStore, Store, StoreUnavailable, open_store
from bot.store.model import decode_grants, encode_grants

TERM = 0.6  # seconds
NAME = lease_name("sk-not-a-real-key")


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    first = await open_store(tmp_path / "veo.sqlite3")
    second = await open_store(tmp_path / "veo.sqlite3")
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


class Node:
    """What the bot hangs on a lease: takeovers and stand-downs, recorded."""

    def __init__(self, store: Store, owner: str, seconds: float = TERM) -> None:
        self.took: list[Lease] = []
        self.running = asyncio.Event()
        self.stood_down = asyncio.Event()
        self.lease = RunnerLease(
            store,
            name=NAME,
            owner=owner,
            seconds=seconds,
            on_acquired=self._take,
            on_lost=self._lose,
        )

    async def _take(self, lease: Lease) -> None:
        self.took.append(lease)
        self.stood_down.clear()
        self.running.set()

    async def _lose(self) -> None:
        self.running.clear()
        self.stood_down.set()


def test_the_lease_is_named_by_a_fingerprint_never_the_key() -> None:
    key = "sk-live-0123456789abcdef"
    name = lease_name(key)
    assert key not in name and "0123456789" not in name
    assert name == lease_name(key) and name != lease_name(key + "x")


async def test_a_standby_takes_over_within_the_term_after_the_runner_dies(
    stores: tuple[Store, Store],
) -> None:
    a, b = Node(stores[0], "node-a"), Node(stores[1], "node-b")
    a.lease.start()
    await asyncio.wait_for(a.running.wait(), 5)
    b.lease.start()
    # Two whole terms: the runner renews, the standby never gets in.
    await asyncio.sleep(2 * TERM)
    assert not b.running.is_set() and a.lease.holding
    assert len(a.took) == 1

    # SIGKILL as far as the database can tell: the runner stops renewing, hands nothing back.
    assert a.lease._task is not None
    a.lease._task.cancel()
    died = time.monotonic()
    await asyncio.wait_for(b.running.wait(), 5)
    took = time.monotonic() - died
    assert took <= TERM + TERM / 3 + 0.3, f"standby took {took:.2f} s over a {TERM} s term"
    assert b.took[0].epoch == a.took[0].epoch + 1

    # The dead runner's epoch can no longer write anything.
    with pytest.raises(Fenced):
        await stores[0].fenced(a.took[0]).save_budget(NAME, BudgetState((), None))
    await b.lease.close()
    await a.lease.close()


async def test_a_clean_shutdown_hands_the_lease_over_at_once(
    stores: tuple[Store, Store],
) -> None:
    a, b = Node(stores[0], "node-a", seconds=30), Node(stores[1], "node-b", seconds=0.3)
    a.lease.start()
    await asyncio.wait_for(a.running.wait(), 5)
    b.lease.start()
    await a.lease.close()  # a 30 s term, handed back: the standby need not wait it out
    await asyncio.wait_for(b.running.wait(), 2)
    await b.lease.close()


class FlakyRenewals:
    """The store as a runner sees it when the database stops answering its renewals."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.down = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    async def renew_lease(self, lease: Lease, seconds: float) -> Lease | None:
        if self.down:
            raise StoreUnavailable("database is locked")
        return await self.store.renew_lease(lease, seconds)


async def test_a_runner_that_cannot_renew_stands_down_before_its_term_lapses(
    stores: tuple[Store, Store],
) -> None:
    flaky = FlakyRenewals(stores[0])
    a = Node(flaky, "node-a")  # type: ignore[arg-type]
    a.lease.start()
    await asyncio.wait_for(a.running.wait(), 5)
    flaky.down = True
    await asyncio.wait_for(a.stood_down.wait(), 5)
    stood_down_at = time.time()
    # Measured on the database's clock (SQLite's is this host's): still inside the term, so
    # no second runner can have started while this one still ran.
    current = await stores[1].current_lease(NAME)
    assert current is not None and current.owner == "node-a"
    assert stood_down_at < current.expires_at
    assert not a.lease.holding
    await a.lease.close()


async def test_a_fenced_write_stands_the_runner_down_at_once(
    stores: tuple[Store, Store],
) -> None:
    a = Node(stores[0], "node-a", seconds=30)
    a.lease.start()
    await asyncio.wait_for(a.running.wait(), 5)
    a.lease.lost()  # what JobService.on_fenced calls
    await asyncio.wait_for(a.stood_down.wait(), 1)
    await a.lease.close()


async def test_a_new_runner_continues_the_budget_window_instead_of_bursting(
    stores: tuple[Store, Store],
) -> None:
    old_lease = await stores[0].acquire_lease(NAME, "node-a", 0)
    assert old_lease is not None
    old_limiter = RateLimiter(3, window=60.0)
    old = BudgetRecorder(old_limiter, NAME)
    await old.resume(stores[0].fenced(old_lease))
    for _ in range(3):
        await old_limiter.acquire()
    old_limiter.pause_until(time.monotonic() + 30)
    await asyncio.gather(*old_limiter._journal_tasks)

    # The runner dies; another process takes over with a fresh limiter of its own.
    new_lease = await stores[1].acquire_lease(NAME, "node-b", 60)
    assert new_lease is not None
    new_limiter = RateLimiter(3, window=60.0)
    new = BudgetRecorder(new_limiter, NAME)
    await new.resume(stores[1].fenced(new_lease))
    assert new_limiter.used() == 3  # the old window counts here
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(new_limiter.acquire(), 0.3)  # no burst: the window is full
    grants, paused = new_limiter.export(time.time())
    assert len(grants) == 3 and paused is not None and paused > time.time() + 25

    # The old runner's recorder is fenced: its grant is refused before its request goes out.
    with pytest.raises(Fenced):
        await old.record()


async def test_the_budget_is_recorded_before_each_request_goes_out(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "veo.sqlite3")
    try:
        lease = await store.acquire_lease(NAME, "node-a", 60)
        assert lease is not None
        limiter = RateLimiter(5, window=60.0)
        await BudgetRecorder(limiter, NAME).resume(store.fenced(lease))
        await limiter.acquire()
        recorded = await store.load_budget(NAME)
        assert recorded is not None and len(recorded.grants) == 1
        await limiter.acquire()
        recorded = await store.load_budget(NAME)
        assert recorded is not None and len(recorded.grants) == 2
    finally:
        await store.close()


async def test_grants_asked_for_together_share_one_write_and_none_is_left_out(
    tmp_path: Path,
) -> None:
    store = await SqliteStore.open(tmp_path / "veo.sqlite3")
    try:
        lease = await store.acquire_lease(NAME, "node-a", 60)
        assert lease is not None
        limiter = RateLimiter(500, window=60.0)
        recorder = BudgetRecorder(limiter, NAME)
        await recorder.resume(store.fenced(lease))
        await asyncio.gather(*(limiter.acquire() for _ in range(200)))
        recorded = await store.load_budget(NAME)
        # Every grant was recorded before its acquire returned, in a handful of writes.
        assert recorded is not None and len(recorded.grants) == 200
        assert recorder.writes <= 5, recorder.writes
    finally:
        await store.close()


def test_a_busy_window_is_recorded_compactly_and_never_shorter() -> None:
    """3,000 requests a minute (the bench's rate) are recorded as one entry per second, and a
    node continuing the window counts each of them at least until it really leaves."""
    start = 1_700_000_000.25
    grants = [start + i * 0.02 for i in range(3000)]  # 50 a second for a minute
    text = encode_grants(grants)
    assert len(text) < 2_000  # one [second, count] pair per second, not 3,000 numbers
    restored = decode_grants(text)
    assert len(restored) == len(grants)
    assert all(kept >= real for kept, real in zip(restored, sorted(grants), strict=True))
    assert max(kept - real for kept, real in zip(restored, sorted(grants), strict=True)) <= 1.0
    assert decode_grants("[1.5, 2.5]") == (1.5, 2.5)  # a record of plain times still reads
