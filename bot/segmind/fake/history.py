"""The fake's request history: `GET /inference-request/request-history` (paged) and
`GET /inference-request/request-history/{request_id}` (one row, of any age).

Fields and rules follow the official SDK's `segmind/generations.py` (1.3.0): rows carry
`request_id`, `model_name`, `model_status`, `credits_deduction` (USD), `request_body`,
`generation_url`, `latency_ms`, timestamps and `error`; failed and in-flight requests are
listed; a request with several outputs appears once per output, each row with the request's
full cost. What the SDK does not say, the fake chooses and the client must not rely on:
- the page's outer shape, here `{"data": [...], "page", "per_page", "total"}`;
- in-flight requests are `PENDING` and show the cost the fake holds for them (failed ones are
  refunded, so they show 0);
- the timestamp names `created_at` / `updated_at` (ISO 8601, UTC);
- a refused query answers 400 `{"error": ...}`.

Pure functions over `Job`s: the server owns the clock and the routes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from bot.params import MODEL_SLUG
from bot.segmind.fake.jobs import Job, JobState
from bot.segmind.history import HistoryStatus, SortBy

_E = TypeVar("_E", bound=StrEnum)

HISTORY_PATH = "/inference-request/request-history"
MAX_WINDOW_DAYS = 31  # "The window may span at most 31 days" (counted inclusively here)
DEFAULT_WINDOW_DAYS = 7  # `from_date` defaults to 7 days ago
MAX_PER_PAGE = 100


class QueryError(ValueError):
    """A history query the service refuses (answered 400 with this text)."""


@dataclass(frozen=True)
class HistoryQuery:
    """A parsed `GET <request-history>` query string."""

    page: int
    per_page: int
    from_date: date
    to_date: date
    model_name: str | None
    status: HistoryStatus | None
    sort_by: SortBy
    descending: bool


def parse_query(query: Mapping[str, str], today: date) -> HistoryQuery:
    """Validate the query the way the SDK documents it; raise `QueryError` otherwise."""
    page = _int(query, "page", 1)
    per_page = _int(query, "per_page", 20)
    if page < 1:
        raise QueryError("page must be at least 1")
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise QueryError(f"per_page must be between 1 and {MAX_PER_PAGE}")
    to_date = _date(query, "to_date") or today
    from_date = _date(query, "from_date") or to_date - timedelta(days=DEFAULT_WINDOW_DAYS)
    if from_date > to_date:
        raise QueryError("from_date must not be after to_date")
    if (to_date - from_date).days + 1 > MAX_WINDOW_DAYS:
        raise QueryError(f"the date window may span at most {MAX_WINDOW_DAYS} days")
    status = _choice(query, "status", HistoryStatus, upper=True)
    sort_by = _choice(query, "sort_by", SortBy) or SortBy.MODEL_CREATED
    order = query.get("sort_order", "desc").lower()
    if order not in ("asc", "desc"):
        raise QueryError("sort_order must be asc or desc")
    return HistoryQuery(
        page=page,
        per_page=per_page,
        from_date=from_date,
        to_date=to_date,
        model_name=query.get("model_name") or None,
        status=status,
        sort_by=sort_by,
        descending=order == "desc",
    )


def _int(query: Mapping[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise QueryError(f"{name} must be an integer") from None


def _date(query: Mapping[str, str], name: str) -> date | None:
    raw = query.get(name)
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise QueryError(f"{name} must be a date as YYYY-MM-DD") from None


def _choice(
    query: Mapping[str, str], name: str, kind: type[_E], *, upper: bool = False
) -> _E | None:
    raw = query.get(name)
    if not raw:
        return None
    try:
        return kind(raw.upper() if upper else raw)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise QueryError(f"{name} must be one of {allowed}") from None


def row_status(state: JobState) -> HistoryStatus:
    """How a job's state reads in the history."""
    if state is JobState.COMPLETED:
        return HistoryStatus.COMPLETED
    if state is JobState.FAILED:
        return HistoryStatus.FAILED
    return HistoryStatus.PENDING


class History:
    """Rows over the fake's jobs at one instant.

    `wall` turns a fake-clock reading into epoch seconds (dates and timestamps), `output_urls`
    gives a completed job's output URLs, `delay` is how long after its submit a request shows up.
    """

    def __init__(
        self,
        jobs: Iterable[Job],
        *,
        now: float,
        delay: float,
        wall: Callable[[float], float],
        output_urls: Callable[[Job], list[str]],
    ) -> None:
        self._now = now
        self._wall = wall
        self._output_urls = output_urls
        # Rows land `delay` after the request, like a record written by a later pipeline.
        self._jobs = [job for job in jobs if now >= job.submitted_at + delay]

    def get(self, request_id: str) -> dict[str, Any] | None:
        """The request's first row, whatever its age; None when unknown or not landed yet."""
        for job in self._jobs:
            if job.request_id == request_id:
                return self._row(job, 0)
        return None

    def page(self, query: HistoryQuery) -> dict[str, Any]:
        """One page of rows matching `query`."""
        first = self._wall_date_bound(query.from_date)
        last = self._wall_date_bound(query.to_date + timedelta(days=1))
        # (sort key, job, output index): one entry per output, as the service lists them.
        entries: list[tuple[tuple[Any, ...], Job, int]] = []
        for job in self._jobs:
            if not first <= self._wall(job.submitted_at) < last:
                continue
            if query.model_name and query.model_name not in MODEL_SLUG:
                continue
            state = job.state_at(self._now)
            if query.status is not None and row_status(state) is not query.status:
                continue
            key = self._sort_key(job, query.sort_by)
            outputs = job.magic.outputs if state is JobState.COMPLETED else 1
            entries.extend(((*key, index), job, index) for index in range(outputs))
        # The request id and output index break ties, so pages never overlap or skip.
        entries.sort(key=lambda entry: entry[0], reverse=query.descending)
        start = (query.page - 1) * query.per_page
        rows = [self._row(job, index) for _, job, index in entries[start : start + query.per_page]]
        return {"data": rows, "page": query.page, "per_page": query.per_page, "total": len(entries)}

    def _sort_key(self, job: Job, sort_by: SortBy) -> tuple[Any, ...]:
        if sort_by is SortBy.CREDITS_DEDUCTION:
            return (self._billed(job), job.submitted_at, job.request_id)
        if sort_by is SortBy.MODEL_NAME:
            return (MODEL_SLUG, job.submitted_at, job.request_id)
        return (job.submitted_at, job.request_id)

    def _wall_date_bound(self, day: date) -> float:
        return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()

    def _billed(self, job: Job) -> float:
        return job.billed_at(self._now)

    def _row(self, job: Job, output: int) -> dict[str, Any]:
        state = job.state_at(self._now)
        # No output yet (or never): still one row, without a URL.
        generation_url = self._output_urls(job)[output] if state is JobState.COMPLETED else None
        finished = state in (JobState.COMPLETED, JobState.FAILED)
        if finished:
            updated = job.finished_at
        elif state is JobState.PROCESSING:
            updated = job.started_at
        else:
            updated = job.submitted_at
        return {
            "request_id": job.request_id,
            "model_name": MODEL_SLUG,
            "model_status": row_status(state).value,
            "credits_deduction": self._billed(job),
            "request_body": job.body,
            "generation_url": generation_url,
            "latency_ms": round((job.finished_at - job.submitted_at) * 1000) if finished else None,
            "created_at": self._iso(job.submitted_at),
            "updated_at": self._iso(updated),
            "error": job.error if state is JobState.FAILED else None,
        }

    def _iso(self, moment: float) -> str:
        return datetime.fromtimestamp(self._wall(moment), tz=UTC).isoformat()
