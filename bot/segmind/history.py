"""Segmind's request history, read-side: the row model, the page shape, date windows, de-dup.

Pure data and functions; `SegmindClient.history*` does the HTTP. The history is Segmind's own
record of every request and what it cost (`credits_deduction`, USD), failed and in-flight
requests included, so it is the truth the bot's money figures reconcile against.

Sources: the official SDK `segmind==1.3.0`, `segmind/generations.py` (`history()` and `get()`).
Verified only against that SDK's docstrings and our fake, never on the wire:
- the page's OUTER shape is undocumented: a list at the top level or under a single list-valued
  key are both accepted (`page_rows`);
- the timestamp field names (`created_at`/`updated_at` here; `model_created` is accepted since
  the SDK sorts by that name);
- whether `model_status` uses exactly COMPLETED/FAILED/PENDING (the SDK's `status` filter values).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

log = logging.getLogger(__name__)

# The SDK's `REQUEST_HISTORY_URL`; the setting SEGMIND_HISTORY_URL defaults to it.
DEFAULT_HISTORY_URL = "https://api.spotprod.segmind.com/inference-request/request-history"
MAX_PER_PAGE = 100  # "per_page: Rows per page, 1-100"
MAX_WINDOW_DAYS = 31  # "The window may span at most 31 days" — counted inclusively, to be safe


def finite_float(value: Any) -> float | None:
    """A JSON value as a finite number, or None (missing, a bool, text that is no number)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class HistoryStatus(StrEnum):
    """What a history row says about its request (also the `status` filter's values)."""

    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    PENDING = "PENDING"


class SortBy(StrEnum):
    """The `sort_by` values the SDK documents."""

    MODEL_CREATED = "model_created"
    MODEL_NAME = "model_name"
    CREDITS_DEDUCTION = "credits_deduction"


class SortOrder(StrEnum):
    """The `sort_order` values the SDK documents."""

    ASC = "asc"
    DESC = "desc"


class HistoryShapeError(ValueError):
    """A history answer the bot cannot read as rows (so it must not guess a total from it)."""


class HistoryRow(BaseModel):
    """One row of the history. Only `request_id` is required; any other field may be missing
    or unreadable and is then None, so one odd field never hides a billed request."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    request_id: str = Field(min_length=1)
    model_name: str | None = None
    model_status: str | None = None
    credits_deduction: float | None = None
    request_body: dict[str, Any] | None = None
    generation_url: str | None = None
    latency_ms: float | None = None
    created_at: datetime | None = Field(
        default=None, validation_alias=AliasChoices("created_at", "model_created", "createdAt")
    )
    updated_at: datetime | None = Field(
        default=None, validation_alias=AliasChoices("updated_at", "model_updated", "updatedAt")
    )
    error: str | None = None

    @field_validator("credits_deduction", "latency_ms", mode="before")
    @classmethod
    def _number_or_none(cls, value: Any) -> float | None:
        return finite_float(value)

    @field_validator("request_id", mode="before")
    @classmethod
    def _id_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("model_name", "model_status", "generation_url", "error", mode="before")
    @classmethod
    def _text_or_none(cls, value: Any) -> str | None:
        if isinstance(value, str):
            return value or None
        return None if value is None or isinstance(value, dict | list) else str(value)

    @field_validator("created_at", "updated_at", mode="before")
    @classmethod
    def _moment_or_none(cls, value: Any) -> datetime | None:
        if isinstance(value, datetime):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            # Epoch seconds, or milliseconds as JavaScript back ends tend to send.
            seconds = value / 1000 if value > 1e12 else value
            return datetime.fromtimestamp(seconds, tz=UTC) if math.isfinite(seconds) else None
        if isinstance(value, str) and value:
            try:
                moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                return None
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        return None

    @field_validator("request_body", mode="before")
    @classmethod
    def _object_or_none(cls, value: Any) -> Any:
        if isinstance(value, str):
            # Unverified: a service that stores the body as text may echo it as a JSON string.
            try:
                value = json.loads(value)
            except ValueError:
                return None
        return value if isinstance(value, Mapping) else None

    @property
    def status(self) -> HistoryStatus:
        """COMPLETED, FAILED, or PENDING for anything else (in flight, or a state we do not
        know: not an ending, so nothing is concluded from it)."""
        raw = (self.model_status or "").upper()
        try:
            return HistoryStatus(raw)
        except ValueError:
            return HistoryStatus.PENDING

    @property
    def billed(self) -> float | None:
        """What Segmind charged, USD; None when the row does not say."""
        return self.credits_deduction


def parse_row(raw: Any) -> HistoryRow:
    """A row from its JSON; `HistoryShapeError` when it is not an object with a request id."""
    try:
        return HistoryRow.model_validate(raw)
    except ValidationError as exc:
        count = exc.error_count()
        raise HistoryShapeError(f"a history row is unreadable ({count} errors)") from None


def single_row(body: Any) -> HistoryRow:
    """The row of `GET <history>/<id>`: the object itself, or (unverified, so accepted too)
    the one object under a key that holds a request id."""
    if isinstance(body, Mapping) and "request_id" not in body:
        wrapped = [v for v in body.values() if isinstance(v, Mapping) and "request_id" in v]
        if len(wrapped) == 1:
            body = wrapped[0]
    return parse_row(body)


def page_rows(body: Any) -> list[HistoryRow]:
    """The rows of one page: a list at the top level, or the one list under a key.

    With several list-valued keys, the one whose items carry `request_id` wins; if that is
    still ambiguous the page is refused rather than half-read.
    """
    if isinstance(body, list):
        items = body
    elif isinstance(body, Mapping):
        lists = [value for value in body.values() if isinstance(value, list)]
        if len(lists) > 1:
            lists = [items for items in lists if items and _looks_like_rows(items)]
        if len(lists) != 1:
            if not lists and "request_id" in body:
                raise HistoryShapeError("expected a page of rows, got a single row")
            raise HistoryShapeError(f"cannot tell which of {len(lists)} lists holds the rows")
        items = lists[0]
    else:
        raise HistoryShapeError("the history page is neither a list nor an object")
    return [parse_row(item) for item in items]


def _looks_like_rows(items: list[Any]) -> bool:
    return all(isinstance(item, Mapping) and "request_id" in item for item in items)


def date_windows(start: date, end: date) -> list[tuple[date, date]]:
    """Split `start..end` (inclusive) into the fewest windows the history accepts."""
    if start > end:
        raise ValueError("start must not be after end")
    windows: list[tuple[date, date]] = []
    first = start
    while first <= end:
        last = min(end, first + timedelta(days=MAX_WINDOW_DAYS - 1))
        windows.append((first, last))
        first = last + timedelta(days=1)
    return windows


def dedupe(rows: Iterable[HistoryRow]) -> dict[str, HistoryRow]:
    """One row per request (the first seen): a request with several outputs has one row each,
    all carrying its full cost, and a page boundary that shifted can repeat a row."""
    unique: dict[str, HistoryRow] = {}
    for row in rows:
        seen = unique.get(row.request_id)
        # A repeat read later may have seen the request end; the ending is the better record.
        if seen is None or (
            seen.status is HistoryStatus.PENDING and row.status is not HistoryStatus.PENDING
        ):
            unique[row.request_id] = row
    return unique


def total_billed(rows: Iterable[HistoryRow]) -> float:
    """What the rows' requests cost together, each request counted once.

    A row without a readable cost adds nothing here; a caller that must fail closed looks for
    `billed is None` in `dedupe(rows)` and counts its own quote for those.
    """
    return sum(row.billed or 0.0 for row in dedupe(rows).values())
