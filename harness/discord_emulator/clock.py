"""A controllable clock and the snowflake ids minted from it.

The clock runs with real time (so latencies measured against it are real) plus an offset that a
test can push forward with :meth:`EmulatorClock.advance`: that is how a test makes a 15-minute
interaction token expire without waiting 15 minutes.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time

DISCORD_EPOCH_MS = 1_420_070_400_000


class EmulatorClock:
    """Wall-clock seconds since the Unix epoch, advanceable by tests."""

    def __init__(self, start: float | None = None) -> None:
        self._base = time.time() if start is None else start
        self._mono0 = time.monotonic()
        self._offset = 0.0

    def now(self) -> float:
        return self._base + (time.monotonic() - self._mono0) + self._offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the emulator clock only moves forward")
        self._offset += seconds

    def iso(self, at: float | None = None) -> str:
        """ISO 8601 timestamp, the format Discord uses in payloads."""
        moment = self.now() if at is None else at
        return dt.datetime.fromtimestamp(moment, dt.UTC).isoformat()


class SnowflakeFactory:
    """Discord-shaped, strictly increasing ids whose embedded time comes from the clock."""

    def __init__(self, clock: EmulatorClock) -> None:
        self._clock = clock
        self._last = 0
        self._counter = itertools.count()

    def __call__(self) -> int:
        ms = int(self._clock.now() * 1000) - DISCORD_EPOCH_MS
        candidate = (ms << 22) | (1 << 17) | (next(self._counter) & 0xFFF)
        self._last = max(candidate, self._last + 1)
        return self._last
