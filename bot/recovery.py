"""Finding a submit whose answer was lost in Segmind's own record of requests.

A POST that timed out or was cut off after it left may have created (and billed) a job the
bot has no request id for. Segmind's request history lists every request with the body it was
sent, and the bot chooses the seed of every job it sends (`bot.request.pick_seed`), so a job's
body is its fingerprint: the one history row whose model and body equal the job's, created
within the submit's time window, is that job's request. Pure matching here; the lifecycle
(`bot.jobs`) pages the history and decides what to do with 0, 1 or several matches.

Unverified (only the SDK's field list and our fake back it): that `request_body` echoes the
inputs exactly as sent. So the comparison is canonical and forgiving about representation —
JSON numbers by value (8 == 8.0, and "8" for a service that stringifies), "true"/"false" text
for booleans, keys in any order — and ignores keys Segmind may add on its own, but it never
ignores a value: every field the bot sent must be there and equal, and a parameter the bot
left out (`image_url` for a text prompt) must be absent or null in the row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bot.params import MODEL_SLUG, VeoParams
from bot.segmind.history import HistoryRow

# Clocks disagree: ours stamps the submit start, Segmind's the row. A minute either way.
CLOCK_SKEW = 60.0


def _canonical(value: Any) -> Any:
    """One representation per JSON value, for comparing a body with its echo."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        try:
            number = float(text)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    if isinstance(value, Mapping):
        return {str(key): _canonical(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    return value


def same_body(sent: Mapping[str, Any], echoed: Mapping[str, Any]) -> bool:
    """Whether a history row's `request_body` is the body the bot sent (see the module doc)."""
    mine = _canonical(sent)
    theirs = _canonical(echoed)
    if any(key not in theirs or theirs[key] != value for key, value in mine.items()):
        return False
    left_out = set(VeoParams.model_fields) - set(mine)
    return all(theirs.get(key) is None for key in left_out)


@dataclass(frozen=True)
class Fingerprint:
    """What identifies one submit in the history: model, body, and when it may have landed
    (`start`..`end`, epoch seconds, widened by `CLOCK_SKEW`)."""

    body: dict[str, Any]
    start: float
    end: float
    model: str = MODEL_SLUG

    @classmethod
    def of(cls, params: VeoParams, *, start: float, end: float) -> Fingerprint:
        return cls(body=params.to_body(), start=start, end=end)

    def matches(self, row: HistoryRow) -> bool:
        """A row for this submit: same model, same body, created inside the window.

        A row without a model name or a creation time is judged by its body alone (those
        fields' presence is unverified, and the body with its seed is the strong part)."""
        if row.model_name is not None and row.model_name != self.model:
            return False
        if row.request_body is None or not same_body(self.body, row.request_body):
            return False
        if row.created_at is None:
            return True
        created = row.created_at.timestamp()
        return self.start - CLOCK_SKEW <= created <= self.end + CLOCK_SKEW
