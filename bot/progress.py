"""Where a job stands, as the lifecycle reports it to the output: plain data, no Discord."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Stage(StrEnum):
    AWAITING_APPROVAL = "awaiting_approval"  # held for a moderator (the approval lane)
    QUEUED = "queued"
    SUBMITTING = "submitting"
    RECOVERING = "recovering"  # the submit's answer was lost: looking it up in Segmind's record
    WAITING = "waiting"  # accepted by Segmind, not yet started
    GENERATING = "generating"
    DOWNLOADING = "downloading"
    ENCODING = "encoding"
    UPLOADING = "uploading"


@dataclass(frozen=True)
class Progress:
    stage: Stage
    elapsed: float = 0.0
    estimate: float | None = None
    position: int | None = None  # 1-based place in the bot's own queue
    # When the job reached Segmind (epoch seconds). Shown as a Discord timestamp, which every
    # client keeps counting by itself, so the text need not be edited on every poll.
    since: float | None = None
