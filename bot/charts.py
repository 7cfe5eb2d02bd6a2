"""The spend chart of `/veo-admin spend`: a pure function from plain numbers to PNG bytes.

Two panels sharing the day axis, because the two caps answer two different questions:
- top, per UTC day: what Segmind billed (solid) with the quotes still held for jobs whose bill
  is not known yet stacked on top (hatched), against the daily cap as a horizontal line;
- bottom, the month's running total (reset on the 1st, UTC) against the monthly cap as a
  horizontal line. A moderator sees at a glance how close the month is to its cap; a
  per-day share of the monthly budget would flag every busy day as "over" when the month is
  fine, and hide a steady climb toward the cap.

matplotlib is imported inside the functions, with the Agg backend and a bare `Figure` (no
pyplot, no global state), so importing this module costs nothing and a render may run in a
worker thread while the event loop goes on.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BILLED_COLOR = "#2f6db5"
HELD_COLOR = "#f0a030"
CUMULATIVE_COLOR = "#2f6db5"
CAP_COLOR = "#c62828"
OWNER_CAP_COLOR = "#6a1b9a"

CapPeriod = Literal["daily", "monthly"]


@dataclass(frozen=True)
class ChartDay:
    """One UTC day of spend, in USD."""

    day: date
    billed: float  # what Segmind billed (known)
    held: float  # quotes held for jobs whose bill is not known yet


@dataclass(frozen=True)
class CapLine:
    """A cap to draw: `owner` for the bot owner's global cap (all servers together)."""

    period: CapPeriod
    amount: float
    label: str
    owner: bool = False


def month_running_totals(days: Sequence[ChartDay], carry_in: float = 0.0) -> list[float]:
    """The month-to-date spend (billed + held) at the end of each day, reset on the 1st.

    `carry_in` is what the first day's month had spent before the first day shown (the
    window rarely starts on the 1st)."""
    totals: list[float] = []
    running, month = carry_in, days[0].day.replace(day=1) if days else None
    for entry in days:
        first = entry.day.replace(day=1)
        if first != month:
            running, month = 0.0, first
        running += entry.billed + entry.held
        totals.append(running)
    return totals


def _month_runs(days: Sequence[date]) -> list[tuple[int, int]]:
    """[start, stop) index ranges of consecutive days in the same calendar month."""
    runs: list[tuple[int, int]] = []
    start = 0
    for index in range(1, len(days) + 1):
        if index == len(days) or (days[index].year, days[index].month) != (
            days[start].year,
            days[start].month,
        ):
            runs.append((start, index))
            start = index
    return runs


def spend_figure(
    days: Sequence[ChartDay],
    caps: Sequence[CapLine] = (),
    *,
    title: str,
    carry_in: float = 0.0,
) -> Figure:
    """The chart as a matplotlib `Figure` (for tests to inspect; `render_spend_chart` draws
    it to PNG). `days` must be consecutive UTC days, oldest first, zero days included."""
    from matplotlib.dates import DateFormatter, DayLocator
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter

    figure = Figure(figsize=(9, 6), dpi=100, layout="constrained")
    daily, monthly = figure.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    xs = [entry.day for entry in days]
    billed = [entry.billed for entry in days]
    held = [entry.held for entry in days]
    daily.bar(xs, billed, width=0.8, color=BILLED_COLOR, label="billed by Segmind")
    if any(held):
        daily.bar(
            xs,
            held,
            width=0.8,
            bottom=billed,
            color=HELD_COLOR,
            hatch="//",
            edgecolor="white",
            label="quoted, bill not known yet",
        )
    totals = month_running_totals(days, carry_in)
    # One curve per calendar month: a line joining the 30th to the 1st would draw a fall in
    # spending that never happened.
    for index, (start, stop) in enumerate(_month_runs(xs)):
        run_x, run_y = xs[start:stop], totals[start:stop]
        label = "month to date" if index == 0 else "_nolegend_"
        monthly.plot(run_x, run_y, color=CUMULATIVE_COLOR, marker="o", markersize=3, label=label)
        monthly.fill_between(run_x, run_y, color=CUMULATIVE_COLOR, alpha=0.12)

    tops = {"daily": max((b + h for b, h in zip(billed, held, strict=True)), default=0.0)}
    tops["monthly"] = max(totals, default=0.0)
    for cap in caps:
        axis = daily if cap.period == "daily" else monthly
        axis.axhline(
            cap.amount,
            color=OWNER_CAP_COLOR if cap.owner else CAP_COLOR,
            linestyle="--" if cap.owner else "-",
            linewidth=1.6,
            label=cap.label,
        )
        tops[cap.period] = max(tops[cap.period], cap.amount)

    periods = {cap.period for cap in caps}
    for axis, period, heading in (
        (daily, "daily", "Spend per day (UTC)"),
        (monthly, "monthly", "Month to date"),
    ):
        if period not in periods:
            heading += f" — no {period} cap set"  # an absent line is not a missed one
        # Headroom above the highest bar or cap, so a cap line never sits on the frame.
        axis.set_ylim(0, max(tops[period] * 1.15, 0.5))
        axis.yaxis.set_major_formatter(FormatStrFormatter("$%.2f"))
        axis.set_title(heading, loc="left", fontsize=10)
        axis.grid(axis="y", alpha=0.3)
        if axis.get_legend_handles_labels()[0]:  # an empty window has nothing to name
            # Wherever it hides the least: a cap line near the top must stay readable.
            axis.legend(loc="best", fontsize=8, framealpha=0.85)
    # Day and month on every tick: a window that spans two months must not read as one.
    # Evenly spaced ticks (a locator that adds the 1st of each month crowds its neighbour).
    monthly.xaxis.set_major_locator(DayLocator(interval=max(1, math.ceil(len(days) / 8))))
    monthly.xaxis.set_major_formatter(DateFormatter("%d %b"))
    figure.suptitle(title, fontsize=12)
    return figure


def render_spend_chart(
    days: Sequence[ChartDay],
    caps: Sequence[CapLine] = (),
    *,
    title: str,
    carry_in: float = 0.0,
) -> bytes:
    """The chart as PNG bytes. CPU-bound (a few hundred ms): run it in a worker thread."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = spend_figure(days, caps, title=title, carry_in=carry_in)
    FigureCanvasAgg(figure)  # the Agg backend, for this figure only: no global backend switch
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
