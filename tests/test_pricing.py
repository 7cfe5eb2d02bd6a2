"""Price quotes before submit: from the published range, learned from what Segmind billed, and
never below a charge already seen — checked against the fake's own billing rule."""

from __future__ import annotations

import itertools
import random
import subprocess
import sys
from typing import Any, get_args

import pytest

from bot.params import Aspect, Duration, Resolution, VeoParams
from bot.pricing import PUBLISHED_MAX, PriceBook, PriceKey, Quote
from bot.segmind.fake import price as fake_price
from bot.segmind.history import HistoryRow


def params(**options: Any) -> VeoParams:
    return VeoParams(prompt="a lantern in the rain", **options)


EVERY_PRICED = [
    params(duration=duration, resolution=resolution, generate_audio=audio)
    for duration, resolution, audio in itertools.product(
        get_args(Duration), list(Resolution), (False, True)
    )
]


def test_without_evidence_the_quote_is_the_top_of_the_published_range() -> None:
    book = PriceBook()

    for p in EVERY_PRICED:
        assert book.quote(p) == Quote(PUBLISHED_MAX, "published")


def test_a_billed_combination_is_quoted_at_the_most_it_was_billed() -> None:
    book = PriceBook()
    clip = params(duration=6, generate_audio=True)

    book.observe(clip, 0.80)
    book.observe(clip.model_copy(update={"seed": 99, "prompt": "other words"}), 0.85)
    book.observe(clip, 0.78)

    assert book.quote(clip) == Quote(0.85, "observed", samples=3)


def test_refunds_and_failures_teach_nothing() -> None:
    book = PriceBook()
    clip = params()

    assert not book.observe(clip, 0.0)
    assert not book.observe(clip, None)
    assert not book.observe(clip, float("nan"))
    assert not book.observe(clip, -0.6)

    assert book.quote(clip).basis == "published"


def test_an_unseen_combination_borrows_from_a_more_demanding_one() -> None:
    book = PriceBook()
    book.observe(params(duration=8, resolution=Resolution.FULL_HD, generate_audio=True), 1.10)
    book.observe(params(duration=8, generate_audio=True), 0.90)

    # 6 s 720p with audio: at most what 8 s 720p with audio cost (the cheaper bound).
    assert book.quote(params(duration=6, generate_audio=True)) == Quote(0.90, "inferred")
    # 8 s 1080p silent: only 8 s 1080p with audio is at least as demanding.
    assert book.quote(params(duration=8, resolution=Resolution.FULL_HD)) == Quote(1.10, "inferred")


def test_never_below_a_less_demanding_combination_already_billed() -> None:
    book = PriceBook()
    book.observe(params(duration=4), 0.70)
    book.observe(params(duration=8, generate_audio=True), 0.65)  # odd, but it is what was billed

    # 8 s with audio demands more than 4 s silent, so the 4 s charge is a floor for it.
    assert book.quote(params(duration=8, generate_audio=True)).amount == pytest.approx(0.70)
    assert book.quote(params(duration=6)).amount == pytest.approx(0.70)


def test_dimensions_of_unknown_effect_must_match_to_inform() -> None:
    book = PriceBook()
    book.observe(params(duration=8, resolution=Resolution.FULL_HD, generate_audio=True), 1.20)
    book.observe(params(duration=8), 0.80)

    assert book.quote(params(duration=4, aspect_ratio=Aspect.VERTICAL)).basis == "published"
    assert book.quote(params(duration=4, fps=30)).basis == "published"
    with_image = params(duration=4, image_url="https://example.com/cat.png")
    assert book.quote(with_image).basis == "published"
    assert book.quote(params(duration=4)) == Quote(0.80, "inferred")


@pytest.mark.parametrize("seed", range(5))
def test_learning_the_fakes_prices_never_under_quotes(seed: int) -> None:
    # Segmind bills by the fake's rule; the book sees the charges one by one, in random order.
    rng = random.Random(seed)
    book = PriceBook()
    order = EVERY_PRICED * 3
    rng.shuffle(order)

    for billed in order:
        for p in EVERY_PRICED:
            assert book.quote(p).amount >= fake_price(p) - 1e-9, (PriceKey.of(p), book.quote(p))
        book.observe(billed, fake_price(billed))

    for p in EVERY_PRICED:
        assert book.quote(p) == Quote(fake_price(p), "observed", samples=3)


def test_history_rows_teach_each_completed_request_of_our_model_once() -> None:
    body = params(duration=6, resolution=Resolution.FULL_HD).to_body()

    def row(request_id: str, status: str, cost: float, **extra: Any) -> HistoryRow:
        fields: dict[str, Any] = {"model_name": "veo-3-fast", "request_body": body, **extra}
        return HistoryRow(
            request_id=request_id, model_status=status, credits_deduction=cost, **fields
        )

    rows = [
        row("r1", "COMPLETED", 0.8),
        row("r1", "COMPLETED", 0.8),  # a second output of the same request, not a second charge
        row("r2", "FAILED", 0.0),
        row("r3", "PENDING", 5.0),
        row("r4", "COMPLETED", 0.5, request_body={"prompt": "x", "duration": 5}),  # not Veo's
        row("r5", "COMPLETED", 0.9, request_body=None),
        row("r6", "COMPLETED", 0.3, model_name="veo-3-fast-lite"),  # matched the substring filter
        row("r7", "COMPLETED", 0.3, model_name=None),
    ]
    book = PriceBook()

    assert book.observe_rows(rows) == 1
    assert book.quote(params(duration=6, resolution=Resolution.FULL_HD)) == Quote(
        0.80, "observed", samples=1
    )


def test_quotes_round_up_to_the_cent() -> None:
    book = PriceBook()
    book.observe(params(), 0.601)
    book.observe(params(duration=6), 0.1 * 6)  # 0.6000000000000001: float noise, not a cent

    assert book.quote(params()).amount == pytest.approx(0.61)
    assert book.quote(params(duration=6)).amount == pytest.approx(0.60)


def test_pricing_imports_no_framework() -> None:
    code = (
        "import sys, bot.pricing; "
        "print(sorted(m for m in ('discord', 'aiohttp', 'aiosqlite') if m in sys.modules))"
    )
    # A fresh interpreter: this test process has long imported everything.
    out = subprocess.run(  # noqa: S603 (our own code string)
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == "[]"
