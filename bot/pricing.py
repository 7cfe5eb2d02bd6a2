"""What a video will cost, quoted before submit: one place, learned from what Segmind billed.

Segmind publishes only a range, "$0.40 – $1.20 per generation" (its Veo 3 Fast page), not a
price list. So a quote starts at the top of that range — a cap must trip before the owner is
overspent, never after — and comes down as real charges are observed (`metrics.cost` of a
finished job, `credits_deduction` of a history row) for the same parameter combination.

Rules, all failing toward the higher figure:
- A combination that was billed is quoted at the most it was ever billed (never below).
- A combination never billed is quoted at the cheapest observed combination that is at least
  as demanding in every priced dimension (longer or equal, 1080p over 720p, with audio over
  without), and at least the dearest observed one it is at least as demanding as; without
  such evidence, at the published maximum. Dimensions whose effect on price is unknown
  (aspect, fps, image input) must match exactly before one combination informs another.
- Charges of zero or less are refunds or failures, not prices, and teach nothing.
- Quotes are rounded up to the cent.

Pure: no Discord, no store, no HTTP. The caller feeds observations (from the database at
start-up, then as jobs finish or history is read) and persists them itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from bot.params import MODEL_SLUG, Aspect, InvalidParams, Resolution, VeoParams, parse_params
from bot.segmind.history import HistoryRow, HistoryStatus

PUBLISHED_MIN = 0.40  # Segmind's Veo 3 Fast page: "$0.40 – $1.20 per generation"
PUBLISHED_MAX = 1.20

Basis = Literal["observed", "inferred", "published"]

_RESOLUTION_RANK = {Resolution.HD: 0, Resolution.FULL_HD: 1}


@dataclass(frozen=True, order=True)
class PriceKey:
    """The parameters that may change what a video costs (not the prompt or the seed)."""

    duration: int
    resolution: Resolution
    generate_audio: bool
    aspect_ratio: Aspect
    fps: int
    image_input: bool

    @classmethod
    def of(cls, params: VeoParams) -> PriceKey:
        """The combination `params` belongs to."""
        return cls(
            duration=params.duration,
            resolution=params.resolution,
            generate_audio=params.generate_audio,
            aspect_ratio=params.aspect_ratio,
            fps=params.fps,
            image_input=params.image_url is not None,
        )

    def at_least(self, other: PriceKey) -> bool:
        """Whether this combination demands at least as much as `other` in every priced
        dimension, and matches it in every dimension whose price effect is unknown."""
        return (
            self.aspect_ratio == other.aspect_ratio
            and self.fps == other.fps
            and self.image_input == other.image_input
            and self.duration >= other.duration
            and _RESOLUTION_RANK[self.resolution] >= _RESOLUTION_RANK[other.resolution]
            and self.generate_audio >= other.generate_audio
        )


@dataclass(frozen=True)
class Quote:
    """A price for one video. `basis` says where it came from; `samples` how many charges of
    this exact combination were seen."""

    amount: float
    basis: Basis
    samples: int = 0


class PriceBook:
    """The observed charges per combination, and the quotes they give.

    `published_max` is the quote without evidence (the top of Segmind's range).
    """

    def __init__(self, *, published_max: float = PUBLISHED_MAX) -> None:
        if not math.isfinite(published_max) or published_max <= 0:
            raise ValueError("published_max must be a positive number")
        self.published_max = published_max
        self._highest: dict[PriceKey, float] = {}
        self._samples: dict[PriceKey, int] = {}

    def observe(self, params: VeoParams, cost: float | None) -> bool:
        """Learn from one charge; returns whether it taught anything (a positive number)."""
        if cost is None or not math.isfinite(cost) or cost <= 0:
            return False
        key = PriceKey.of(params)
        self._highest[key] = max(cost, self._highest.get(key, 0.0))
        self._samples[key] = self._samples.get(key, 0) + 1
        return True

    def observe_body(self, body: Mapping[str, Any] | None, cost: float | None) -> bool:
        """Learn from a request body as Segmind recorded it; a body the bot would not send
        (another model's, or one that no longer validates) teaches nothing."""
        if body is None:
            return False
        try:
            params = parse_params(dict(body))
        except InvalidParams:
            return False
        return self.observe(params, cost)

    def observe_rows(self, rows: Iterable[HistoryRow]) -> int:
        """Learn from history rows: COMPLETED ones of our model, each request once. Returns how
        many taught. A row naming no model is skipped too: another model's lower price must
        not become ours (Segmind's `model_name` filter is only a substring match)."""
        seen: set[str] = set()
        taught = 0
        for row in rows:
            if row.request_id in seen or row.status is not HistoryStatus.COMPLETED:
                continue
            if row.model_name != MODEL_SLUG:
                continue
            seen.add(row.request_id)
            taught += self.observe_body(row.request_body, row.billed)
        return taught

    def quote(self, params: VeoParams) -> Quote:
        """What a video with `params` should be counted at against the spend caps."""
        key = PriceKey.of(params)
        # Never below what a combination this demands at least as much as was billed.
        floor = max(
            (cost for other, cost in self._highest.items() if key.at_least(other)), default=0.0
        )
        exact = self._highest.get(key)
        if exact is not None:
            return Quote(_cents_up(max(exact, floor)), "observed", self._samples[key])
        ceiling = min(
            (cost for other, cost in self._highest.items() if other.at_least(key)), default=None
        )
        if ceiling is None:
            return Quote(_cents_up(max(self.published_max, floor)), "published")
        return Quote(_cents_up(max(ceiling, floor)), "inferred")


def _cents_up(amount: float) -> float:
    # The small epsilon keeps 0.6000000000000001 (float noise) from becoming 0.61.
    return math.ceil(amount * 100 - 1e-6) / 100
