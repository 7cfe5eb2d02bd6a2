"""Readiness: is the bot able to do its job right now — gateway, database, Segmind?

Each check answers with a short reason a person can act on; none names a secret. The checks
take what they read as small protocols, so this module imports neither discord.py nor the store.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

log = logging.getLogger(__name__)

Part = Literal["gateway", "database", "segmind", "runner"]

DB_TIMEOUT = 2.0  # seconds a trivial query may take before the database counts as down
SEGMIND_FRESH = 300.0  # an answer from Segmind this recent shows it is reachable
SEGMIND_PROBE_TIMEOUT = 5.0
# An idle bot asks Segmind itself (the credits call), but not more often than this: the free
# plan allows 5 requests a minute, and every /readyz of an orchestrator must not cost one.
SEGMIND_PROBE_INTERVAL = 60.0


class GatewayView(Protocol):
    """What discord.py's client tells about the gateway."""

    def is_ready(self) -> bool: ...

    def is_closed(self) -> bool: ...

    @property
    def latency(self) -> float: ...


class GatewayWatch:
    """Connected between a READY/RESUMED and the next disconnect.

    discord.py's `is_ready()` stays true across a dropped connection, so the Discord side
    calls `up()` from `on_connect`/`on_resumed` and `down()` from `on_disconnect`."""

    def __init__(self) -> None:
        self.connected = False

    def up(self) -> None:
        self.connected = True

    def down(self) -> None:
        self.connected = False


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str


@dataclass(frozen=True)
class Report:
    checks: dict[Part, Check]

    @property
    def ready(self) -> bool:
        return all(check.ok for check in self.checks.values())

    def body(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "checks": {
                part: {"ok": check.ok, "detail": check.detail}
                for part, check in self.checks.items()
            },
        }


class Readiness:
    """Runs the three checks; `segmind_answered_at` reads when Segmind last answered (on
    `clock`), `probe_segmind` makes it answer (any call that reaches the API)."""

    def __init__(
        self,
        gateway: GatewayView,
        watch: GatewayWatch,
        db_ping: Callable[[], Awaitable[object]],
        segmind_answered_at: Callable[[], float | None],
        probe_segmind: Callable[[], Awaitable[object]],
        *,
        clock: Callable[[], float] = time.monotonic,
        db_timeout: float = DB_TIMEOUT,
        runner_role: Callable[[], str] | None = None,
    ) -> None:
        self._runner_role = runner_role
        self._gateway = gateway
        self._db_timeout = db_timeout
        self._watch = watch
        self._db_ping = db_ping
        self._answered_at = segmind_answered_at
        self._probe = probe_segmind
        self._clock = clock
        self._probed_at: float | None = None
        self._probe_lock = asyncio.Lock()

    async def report(self) -> Report:
        gateway, database, segmind = await asyncio.gather(
            self._check_gateway(), self._check_database(), self._check_segmind()
        )
        checks: dict[Part, Check] = {"gateway": gateway, "database": database, "segmind": segmind}
        if self._runner_role is not None:
            # A standby is ready too: it takes interactions in, and the runner runs them.
            checks["runner"] = Check(True, self._runner_role())
        return Report(checks)

    async def _check_gateway(self) -> Check:
        client = self._gateway
        if client.is_closed():
            return Check(False, "the Discord client is closed")
        if not client.is_ready() or not self._watch.connected:
            return Check(False, "not connected to the Discord gateway")
        latency = client.latency
        if not math.isfinite(latency):
            return Check(False, "no heartbeat acknowledged by the gateway yet")
        return Check(True, f"connected, heartbeat {latency * 1000:.0f} ms")

    async def _check_database(self) -> Check:
        try:
            await asyncio.wait_for(self._db_ping(), self._db_timeout)
        except TimeoutError:
            return Check(False, f"the database did not answer within {self._db_timeout:g} s")
        except Exception as exc:
            return Check(False, f"the database failed ({type(exc).__name__})")
        return Check(True, "answers")

    async def _check_segmind(self) -> Check:
        if not self._fresh():
            await self._probe_once()
        answered = self._answered_at()
        if answered is None:
            return Check(False, "Segmind has not answered since start-up")
        age = self._clock() - answered
        if age > SEGMIND_FRESH:
            return Check(False, f"Segmind last answered {age:.0f} s ago")
        return Check(True, f"answered {age:.0f} s ago")

    def _fresh(self) -> bool:
        answered = self._answered_at()
        return answered is not None and self._clock() - answered <= SEGMIND_FRESH

    async def _probe_once(self) -> None:
        """At most one probe at a time and one per interval, whatever the rate of /readyz."""
        async with self._probe_lock:
            now = self._clock()
            recent = self._probed_at is not None and now - self._probed_at < SEGMIND_PROBE_INTERVAL
            if self._fresh() or recent:
                return
            self._probed_at = now
            try:
                await asyncio.wait_for(self._probe(), SEGMIND_PROBE_TIMEOUT)
            except Exception as exc:
                # An error answer still shows Segmind is reachable (the trace saw it); only
                # the kind is logged, as the check's detail says the rest.
                log.info("readiness: the Segmind probe failed (%s)", type(exc).__name__)
