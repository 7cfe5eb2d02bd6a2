"""The spend chart: a real PNG from sample data, with the caps drawn where they belong."""

from __future__ import annotations

import io
import subprocess
import sys
from datetime import date, timedelta

import pytest

from bot.charts import (
    CAP_COLOR,
    CapLine,
    ChartDay,
    month_running_totals,
    render_spend_chart,
    spend_figure,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
START = date(2026, 11, 20)


def _days(count: int = 30) -> list[ChartDay]:
    return [
        ChartDay(
            START + timedelta(days=i), billed=0.6 * (i % 5), held=1.2 if i == count - 1 else 0.0
        )
        for i in range(count)
    ]


CAPS = (
    CapLine("daily", 4.0, "server daily cap $4.00"),
    CapLine("monthly", 40.0, "server monthly budget $40.00"),
    CapLine("daily", 10.0, "owner's daily cap $10.00", owner=True),
)


def test_renders_a_png_of_plausible_size() -> None:
    data = render_spend_chart(_days(), CAPS, title="Spend, last 30 days")
    assert data.startswith(PNG_MAGIC)
    assert 10_000 < len(data) < 500_000
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        assert image.size == (900, 600)


def test_an_empty_window_still_renders() -> None:
    assert render_spend_chart([], (), title="nothing").startswith(PNG_MAGIC)
    zeros = [ChartDay(START + timedelta(days=i), 0.0, 0.0) for i in range(3)]
    assert render_spend_chart(zeros, CAPS, title="zeros").startswith(PNG_MAGIC)


def _horizontal_lines(axis: object) -> dict[str, float]:
    found = {}
    for line in axis.get_lines():  # type: ignore[attr-defined]
        ys = list(line.get_ydata())
        if len(ys) == 2 and ys[0] == ys[1]:
            found[line.get_label()] = float(ys[0])
    return found


def test_each_cap_is_a_horizontal_line_on_its_own_panel() -> None:
    figure = spend_figure(_days(), CAPS, title="t")
    daily, monthly = figure.axes
    assert _horizontal_lines(daily) == {
        "server daily cap $4.00": 4.0,
        "owner's daily cap $10.00": 10.0,
    }
    assert _horizontal_lines(monthly) == {"server monthly budget $40.00": 40.0}
    # A cap above every bar stays inside the plot, not on its frame.
    assert daily.get_ylim()[1] > 10.0 and monthly.get_ylim()[1] > 40.0
    # And it is visible in the picture: the cap colour is there only when a cap is drawn.
    assert _pixels_of(render_spend_chart(_days(), CAPS, title="t"), CAP_COLOR) > 500
    assert _pixels_of(render_spend_chart(_days(), (), title="t"), CAP_COLOR) == 0


def _pixels_of(png: bytes, color: str) -> int:
    from PIL import Image

    target = tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))
    with Image.open(io.BytesIO(png)) as image:
        raw = image.convert("RGB").tobytes()
    pixels = zip(raw[0::3], raw[1::3], raw[2::3], strict=True)
    return sum(1 for p in pixels if all(abs(a - b) < 12 for a, b in zip(p, target, strict=True)))


def test_held_quotes_are_stacked_on_the_billed_bars() -> None:
    figure = spend_figure(_days(), (), title="t")
    daily = figure.axes[0]
    labels = [c.get_label() for c in daily.containers]
    assert labels == ["billed by Segmind", "quoted, bill not known yet"]
    held_bar = daily.containers[1].patches[-1]
    assert held_bar.get_y() == pytest.approx(0.6 * (29 % 5))  # sits on that day's billed bar
    assert held_bar.get_height() == pytest.approx(1.2)


def test_month_running_total_resets_on_the_first() -> None:
    days = [
        ChartDay(date(2026, 11, 29), 1.0, 0.0),
        ChartDay(date(2026, 11, 30), 2.0, 0.5),
        ChartDay(date(2026, 12, 1), 1.0, 0.0),
        ChartDay(date(2026, 12, 2), 0.0, 1.0),
    ]
    assert month_running_totals(days, carry_in=10.0) == [11.0, 13.5, 1.0, 2.0]
    assert month_running_totals([]) == []


def test_importing_the_bot_does_not_load_matplotlib() -> None:
    # Start-up (the app, every cog, the report) pays nothing for the chart until one is drawn.
    code = (
        "import bot.charts, bot.chat.spend_report, bot.chat.app, cogs.admin, sys; "
        "assert 'matplotlib' not in sys.modules"
    )
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


def test_a_panel_without_a_cap_says_so() -> None:
    only_daily = (CapLine("daily", 4.0, "server daily cap $4.00"),)
    daily, monthly = spend_figure(_days(), only_daily, title="t").axes
    assert "no daily cap" not in daily.get_title(loc="left")
    assert monthly.get_title(loc="left") == "Month to date — no monthly cap set"
