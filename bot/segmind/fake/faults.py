"""One-shot faults the fake serves instead of (or on top of) its faithful answer.

A fault is consumed by the next request on its route, first in, first out, so a test can script
"429, then 500, then the real answer" without timing games.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Literal, get_args

Route = Literal["submit", "status", "result", "credits", "output", "history"]
ROUTES: tuple[str, ...] = get_args(Route)


@dataclass(frozen=True)
class Fault:
    """What to do to one request.

    With a `status`, the fake answers that status *instead of* doing the work: a submit creates no
    job and bills nothing (a 429 or 500 from the gateway). Without a `status`, the real work is
    done first (a submit creates and bills its job) and then the answer is tampered with: held for
    `delay` seconds, lost entirely with `drop=True`, or its body replaced by `body` / an HTML page.
    `headers` are added to whatever is sent. `drop` together with a `status` drops the connection
    before any work, i.e. a failure that never reached Segmind.
    """

    status: int | None = None
    body: Any = None
    headers: dict[str, str] | None = None
    html: bool = False
    delay: float = 0.0
    drop: bool = False

    def __post_init__(self) -> None:
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"status {self.status} is not an HTTP status")
        if self.delay < 0:
            raise ValueError("delay must not be negative")


class FaultQueue:
    """Per-route FIFO of pending faults."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[Fault]] = {route: deque() for route in ROUTES}

    def push(self, route: str, fault: Fault, times: int = 1) -> None:
        """Queue `fault` for the next `times` requests on `route`."""
        if route not in self._queues:
            raise ValueError(f"unknown route {route!r}; expected one of {', '.join(ROUTES)}")
        if times < 1:
            raise ValueError("times must be at least 1")
        self._queues[route].extend([fault] * times)

    def take(self, route: str) -> Fault | None:
        """The fault for this request, if one is pending."""
        queue = self._queues[route]
        return queue.popleft() if queue else None

    def pending(self) -> dict[str, int]:
        """How many faults wait on each route."""
        return {route: len(queue) for route, queue in self._queues.items()}

    def clear(self) -> None:
        """Forget every pending fault."""
        for queue in self._queues.values():
            queue.clear()
