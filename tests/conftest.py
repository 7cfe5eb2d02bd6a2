"""Fixtures shared by the unit tests: a clock moved by hand, Segmind fakes started on a free
loopback port and stopped after the test, and one throwaway PostgreSQL server per session."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from bot.segmind.fake import FakeSegmind
from harness.clocks import ManualClock
from harness.postgres import PostgresServer, PostgresUnavailable

StartFake = Callable[..., Awaitable[FakeSegmind]]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def start_fake() -> AsyncIterator[StartFake]:
    """`await start_fake(api_key=..., queue_seconds=...)`: a running fake with those options."""
    started: list[FakeSegmind] = []

    async def start(**options: Any) -> FakeSegmind:
        fake = FakeSegmind(**options)
        await fake.start(host="127.0.0.1", port=0)
        started.append(fake)
        return fake

    yield start
    for fake in reversed(started):
        await fake.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session (started on first use, so a run that needs
    none starts none). Without the server binaries the PostgreSQL cases skip — unless
    VEO_REQUIRE_POSTGRES=1 (CI), where that is a failure: a skipped backend is an untested one."""
    try:
        server = PostgresServer.start()
    except PostgresUnavailable as exc:
        if os.environ.get("VEO_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"VEO_REQUIRE_POSTGRES=1 but no PostgreSQL server can start: {exc}")
        pytest.skip(f"no PostgreSQL server here ({exc}); set VEO_REQUIRE_POSTGRES=1 to fail")
    try:
        yield server
    finally:
        server.stop()
