"""Job records, their lazily computed state, magic prompt tokens and pricing.

State is never stored: it is derived from `now - submitted_at` each time it is asked for, so a
test that injects a clock moves every job forward without sleeping and without a background task.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bot.params import Resolution, VeoParams


class JobState(StrEnum):
    """Segmind's v2 job states."""

    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


TERMINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED})

# Wording modelled on what Veo/Segmind report; the bot only needs them to be plausible text.
INTERNAL_ERROR = (
    "Inference failed: the upstream Veo worker returned 500 INTERNAL "
    "(video generation did not finish). Please retry the request."
)
BLOCKED_ERROR = (
    "Prompt blocked by safety filters: the request was rejected by the content policy "
    "(Responsible AI support code 58061214). Rephrase the prompt and try again."
)

_MAGIC = re.compile(r"\[fake:(?P<name>[a-z]+)(?:=(?P<value>\d+(?:\.\d+)?))?\]", re.IGNORECASE)


@dataclass(frozen=True)
class Magic:
    """Scenario switches parsed from `[fake:...]` tokens in the prompt."""

    fail: bool = False
    block: bool = False
    credits: bool = False
    slow_seconds: float | None = None
    big_mb: float | None = None
    bitrate_mb: float | None = None
    outputs: int = 1  # several outputs: a list in `output`, one history row each


def parse_magic(prompt: str) -> Magic:
    """Read the `[fake:...]` tokens of a prompt; unknown or malformed tokens are ignored."""
    fail = block = credits = False
    slow: float | None = None
    big: float | None = None
    bitrate: float | None = None
    outputs = 1
    for match in _MAGIC.finditer(prompt):
        name = match["name"].lower()
        value = float(match["value"]) if match["value"] is not None else None
        if name == "fail":
            fail = True
        elif name == "block":
            block = True
        elif name == "credits":
            credits = True
        elif name == "slow" and value is not None:
            slow = value
        elif name == "bigmb" and value is not None and value > 0:
            big = value
        elif name == "bitratemb" and value is not None and value > 0:
            bitrate = value
        elif name == "outputs" and value is not None and value >= 1:
            outputs = int(value)
    return Magic(
        fail=fail,
        block=block,
        credits=credits,
        slow_seconds=slow,
        big_mb=big,
        bitrate_mb=bitrate,
        outputs=outputs,
    )


def price(params: VeoParams) -> float:
    """A plausible per-job price inside Segmind's published $0.40-$1.20 band.

    $0.40 for a 4-second 720p silent clip; +$0.10 per extra second, +$0.20 with audio,
    +$0.20 at 1080p, so an 8-second 1080p clip with audio costs $1.20.
    """
    cost = 0.40 + 0.10 * (params.duration - 4)
    if params.generate_audio:
        cost += 0.20
    if params.resolution is Resolution.FULL_HD:
        cost += 0.20
    return round(cost, 2)


@dataclass
class Job:
    """One accepted submit. `state` reads the fake's clock each time."""

    request_id: str
    params: VeoParams
    body: dict[str, Any]
    submitted_at: float
    queue_seconds: float
    processing_seconds: float
    cost: float
    magic: Magic
    now: Callable[[], float] = field(repr=False, compare=False)

    @property
    def started_at(self) -> float:
        """When the job leaves the queue."""
        return self.submitted_at + self.queue_seconds

    @property
    def finished_at(self) -> float:
        """When the job reaches COMPLETED or FAILED."""
        return self.started_at + self.processing_seconds

    @property
    def fails(self) -> bool:
        """Whether this job ends FAILED rather than COMPLETED."""
        return self.magic.fail or self.magic.block

    @property
    def error(self) -> str | None:
        """The error text a FAILED job carries."""
        if self.magic.block:
            return BLOCKED_ERROR
        if self.magic.fail:
            return INTERNAL_ERROR
        return None

    def state_at(self, now: float) -> JobState:
        """The state at clock reading `now`."""
        if now < self.started_at:
            return JobState.QUEUED
        if now < self.finished_at:
            return JobState.PROCESSING
        return JobState.FAILED if self.fails else JobState.COMPLETED

    @property
    def state(self) -> JobState:
        """The state now."""
        return self.state_at(self.now())

    def billed_at(self, now: float) -> float:
        """What the job costs at `now`: held while running, refunded if it fails."""
        return 0.0 if self.state_at(now) is JobState.FAILED else self.cost
