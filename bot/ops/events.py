"""What the job lifecycle tells an observer (the metrics), as a protocol it owns.

The lifecycle calls these at the few points where a fact becomes true; an observer must not
raise and must not block (they are plain calls on the event loop)."""

from __future__ import annotations

from typing import Protocol

from bot.store import Job


class JobEvents(Protocol):
    def submitted(self, job_id: int) -> None:
        """Segmind accepted the job's POST (a billed job exists)."""

    def polled(self, job_id: int, *, terminal: bool) -> None:
        """A status poll of the job answered; `terminal` when it saw the job finished."""

    def finished(self, job: Job) -> None:
        """The job reached a final state, as recorded (state, ledger, timestamps)."""


class NoEvents:
    """The observer when nobody observes."""

    def submitted(self, job_id: int) -> None:
        pass

    def polled(self, job_id: int, *, terminal: bool) -> None:
        pass

    def finished(self, job: Job) -> None:
        pass


NO_EVENTS: JobEvents = NoEvents()
