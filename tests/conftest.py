"""Fixtures shared by the unit tests: a clock moved by hand, and Segmind fakes started on a
free loopback port and stopped after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from bot.segmind.fake import FakeSegmind
from harness.clocks import ManualClock

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
