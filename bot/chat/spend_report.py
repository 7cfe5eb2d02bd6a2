"""`/veo-admin spend`: what the owner's Segmind account spent for one server, as an embed and
a chart — billed per day, held quotes, quoted vs billed, the caps, top members, the balance.

Gathering (`gather`) reads the store and the balance watch; everything after it is pure over
the `SpendReport` it returns, so the wording is tested without a database or a gateway.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import discord

from bot.balance import BalanceWatch, Forecast, RecentSpend, forecast_text
from bot.charts import CapLine, ChartDay, render_spend_chart
from bot.chat.reports import money, when
from bot.discrepancies import describe
from bot.quota import GuildLimits, LimitDefaults, guild_monthly_budget
from bot.store import Discrepancy, Store, UserUsage

DEFAULT_DAYS = 30
MAX_DAYS = 90
TOP_MEMBERS = 5
DAYS_LISTED = 10  # the chart shows every day; the text, for those who cannot see it, the latest
DISCREPANCIES_SHOWN = 5  # the rest are one `/veo-admin discrepancies` away
CHART_NAME = "veo-spend.png"
EMBED_COLOR = 0x2F6DB5
FIELD_MAX = 1024  # Discord: an embed field's value
DESCRIPTION_MAX = 4096


@dataclass(frozen=True)
class SpendReport:
    """One server's spend over a window of whole UTC days (the last one is today)."""

    days: list[ChartDay]  # consecutive, oldest first, zero days included
    carry_in: float  # spent in the first day's month before the window (for the running total)
    billed: float
    held: float
    quoted: float  # the quotes of the jobs whose bill is known (to set against `billed`)
    billed_jobs: int
    month_to_date: float  # this server, this calendar month (UTC), billed + held
    owner_month_to_date: float  # every server together
    limits: GuildLimits
    defaults: LimitDefaults
    top: list[UserUsage]
    forecast: Forecast | None
    checked_at: float | None
    # Disagreements with Segmind's record in the window, newest first: at most one more than
    # is shown, so the embed can say there are more.
    discrepancies: list[Discrepancy] = field(default_factory=list)

    @property
    def monthly_budget(self) -> float | None:
        """The server's monthly budget in force (its own, never above the owner's maximum)."""
        return guild_monthly_budget(self.limits, self.defaults)

    @property
    def caps(self) -> list[CapLine]:
        """The lines on the chart: this server's own caps, and the owner's global ones (which
        bound every server together, so a server without its own still sees a ceiling)."""
        lines: list[CapLine] = []
        daily, monthly = self.limits.spend_cap, self.monthly_budget
        if daily is not None:
            lines.append(CapLine("daily", daily, f"server cap {money(daily)} per 24 h"))
        if monthly is not None:
            lines.append(CapLine("monthly", monthly, f"server budget {money(monthly)} a month"))
        owner_daily, owner_monthly = self.defaults.daily_spend_cap, self.defaults.monthly_spend_cap
        if owner_daily is not None:
            label = f"owner's cap {money(owner_daily)} per 24 h, all servers"
            lines.append(CapLine("daily", owner_daily, label, owner=True))
        if owner_monthly is not None:
            label = f"owner's cap {money(owner_monthly)} a month, all servers"
            lines.append(CapLine("monthly", owner_monthly, label, owner=True))
        return lines


def utc_day(epoch: float) -> date:
    return datetime.fromtimestamp(epoch, UTC).date()


def day_start(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def month_start(day: date) -> date:
    return day.replace(day=1)


def window(days: int, now: float) -> tuple[date, date]:
    """The first and last UTC day of a window of `days` whole days ending today."""
    last = utc_day(now)
    return last - timedelta(days=days - 1), last


def fill_days(first: date, last: date, figures: dict[date, tuple[float, float]]) -> list[ChartDay]:
    """Every day from `first` to `last`, a day without spend as zeros (the chart needs them)."""
    out: list[ChartDay] = []
    day = first
    while day <= last:
        billed, held = figures.get(day, (0.0, 0.0))
        out.append(ChartDay(day, billed, held))
        day += timedelta(days=1)
    return out


async def gather(
    store: Store,
    guild_id: int,
    days: int,
    *,
    defaults: LimitDefaults,
    watch: BalanceWatch,
    now: float,
) -> SpendReport:
    """Read what the report shows: one server's days (from its month's start, so the running
    total is right), every server's month, the top members and the last balance check."""
    first, last = window(days, now)
    rows = await store.spend_by_day(guild_id, day_start(month_start(first)), now)
    figures = {row.day: (row.billed, row.held) for row in rows}
    shown = [row for row in rows if row.day >= first]
    month = month_start(last)
    owner_month = await store.spend_by_day(None, day_start(month), now)
    return SpendReport(
        days=fill_days(first, last, figures),
        carry_in=sum(b + h for d, (b, h) in figures.items() if month_start(first) <= d < first),
        billed=sum(row.billed for row in shown),
        held=sum(row.held for row in shown),
        quoted=sum(row.quoted for row in shown),
        billed_jobs=sum(row.billed_jobs for row in shown),
        month_to_date=sum(b + h for d, (b, h) in figures.items() if d >= month),
        owner_month_to_date=sum(row.billed + row.held for row in owner_month),
        limits=await store.get_guild_limits(guild_id),
        defaults=defaults,
        top=await store.top_users(guild_id, days, limit=TOP_MEMBERS, now=now),
        forecast=watch.latest,
        checked_at=watch.checked_at,
        discrepancies=await store.discrepancies(
            guild_id, since=day_start(first), limit=DISCREPANCIES_SHOWN + 1
        ),
    )


async def recent_spend(store: Store, since: float) -> RecentSpend:
    """The owner's spend since `since` over every server, for the balance watch. Held quotes
    count as spent: most will be billed, and the pace should err toward spending faster."""
    rows = await store.spend_by_day(None, since)
    return RecentSpend(
        spent=sum(row.billed + row.held for row in rows),
        billed=sum(row.billed for row in rows),
        billed_jobs=sum(row.billed_jobs for row in rows),
    )


# ------------------------------------------------------------------------------- wording


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole > 0 else "—"


def quoted_vs_billed(report: SpendReport) -> str:
    """How far the quotes were from Segmind's bills, for the jobs whose bill is known."""
    if report.billed_jobs == 0:
        return "No bill from Segmind yet in this window."
    diff = report.billed - report.quoted
    if math.isclose(diff, 0.0, abs_tol=0.005):
        how = "exactly as quoted"
    elif diff < 0:
        how = f"{money(-diff)} under the quotes"
    else:
        how = f"{money(diff)} **over** the quotes"
    return (
        f"{report.billed_jobs} billed job(s): quoted {money(report.quoted)}, billed "
        f"{money(report.billed)} — {how}."
    )


def caps_text(report: SpendReport) -> str:
    """Where today and this month stand against each cap that applies."""
    today = report.days[-1] if report.days else None
    spent = (today.billed + today.held) if today else 0.0
    lines = []
    daily, monthly = report.limits.spend_cap, report.monthly_budget
    if daily is not None:
        lines.append(
            f"Server: {money(spent)} today of {money(daily)} per 24 h ({_pct(spent, daily)})"
        )
    here = money(report.month_to_date)
    if monthly is not None:
        share = _pct(report.month_to_date, monthly)
        lines.append(f"Server: {here} this month of a {money(monthly)} budget ({share})")
    else:
        lines.append(f"Server: {here} this month (no monthly budget)")
    owner_daily, owner_monthly = report.defaults.daily_spend_cap, report.defaults.monthly_spend_cap
    everywhere = money(report.owner_month_to_date)
    if owner_monthly is not None:
        share = _pct(report.owner_month_to_date, owner_monthly)
        lines.append(
            f"All servers: {everywhere} this month of the owner's {money(owner_monthly)} ({share})"
        )
    else:
        lines.append(f"All servers: {everywhere} this month")
    if owner_daily is not None:
        lines.append(f"Owner's daily cap: {money(owner_daily)} per 24 h over all servers")
    return "\n".join(lines)


def top_text(rows: Sequence[UserUsage]) -> str:
    """Mentions render as names in Discord and the message allows no pings, so a member's
    name (which may hold markdown or `@everyone`) is never pasted in as text."""
    if not rows:
        return "Nobody made a video in this window."
    return "\n".join(
        f"{rank}. <@{row.user_id}> — {row.delivered} delivered of {row.jobs}, "
        f"{money(row.cost)} charged"
        for rank, row in enumerate(rows, start=1)
    )


def per_day_text(report: SpendReport) -> str:
    """The latest days with any spend, newest first, in words (the chart has them all)."""
    spent = [d for d in reversed(report.days) if d.billed > 0 or d.held > 0]
    if not spent:
        return "No spend in this window."
    lines = []
    for entry in spent[:DAYS_LISTED]:
        held = f" + {money(entry.held)} held" if entry.held > 0 else ""
        lines.append(f"{entry.day:%a %d %b}: {money(entry.billed)} billed{held}")
    if len(spent) > DAYS_LISTED:
        lines.append(f"…and {len(spent) - DAYS_LISTED} earlier day(s), on the chart.")
    return "\n".join(lines)


def discrepancies_text(report: SpendReport) -> str:
    """The latest disagreements with Segmind's record (Segmind billed a refunded job, a
    request no job made, a bill far from its quote), each in the sentence the log channel got."""
    found = report.discrepancies
    if not found:
        return "None: Segmind's record matches the bot's."
    lines = [f"{when(item.created_at)} {describe(item)}" for item in found[:DISCREPANCIES_SHOWN]]
    if len(found) > DISCREPANCIES_SHOWN:
        lines.append("…and more: `/veo-admin discrepancies` lists them all.")
    return "\n".join(lines)


def balance_text(report: SpendReport) -> str:
    if report.forecast is None:
        return "Not read yet (the balance watch reads it every few minutes)."
    checked = f" (read <t:{int(report.checked_at)}:R>)" if report.checked_at else ""
    return forecast_text(report.forecast) + checked


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summary_line(report: SpendReport, days: int) -> str:
    held = f" · {money(report.held)} held at quotes, bill not known yet" if report.held > 0 else ""
    return f"**Billed by Segmind:** {money(report.billed)} in the last {days} day(s){held}."


def spend_embed(report: SpendReport, *, days: int, chart: bool) -> discord.Embed:
    """The answer's embed, inside Discord's limits (a field ≤ 1,024 characters, the whole
    embed ≤ 6,000). `chart`: the PNG is attached and shown as the embed's image."""
    embed = discord.Embed(
        title=f"Spend on this server — last {days} day(s)",
        description=_clip(summary_line(report, days), DESCRIPTION_MAX),
        color=EMBED_COLOR,
    )
    embed.add_field(
        name="Per day (UTC)", value=_clip(per_day_text(report), FIELD_MAX), inline=False
    )
    embed.add_field(
        name="Quoted vs billed", value=_clip(quoted_vs_billed(report), FIELD_MAX), inline=False
    )
    embed.add_field(name="Caps", value=_clip(caps_text(report), FIELD_MAX), inline=False)
    embed.add_field(name="Top members", value=_clip(top_text(report.top), FIELD_MAX), inline=False)
    embed.add_field(
        name="Disagreements with Segmind's record",
        value=_clip(discrepancies_text(report), FIELD_MAX),
        inline=False,
    )
    embed.add_field(
        name="Segmind balance (whole account)",
        value=_clip(balance_text(report), FIELD_MAX),
        inline=False,
    )
    if chart:
        embed.set_image(url=f"attachment://{CHART_NAME}")
    embed.set_footer(
        text="Days are UTC. Held quotes count against the caps until Segmind's bill replaces them."
    )
    return embed


async def chart_png(report: SpendReport, *, days: int) -> bytes:
    """The chart, drawn in a worker thread: a render takes long enough to stall the gateway."""
    return await asyncio.to_thread(
        render_spend_chart,
        report.days,
        report.caps,
        title=f"Spend on this server, last {days} day(s) (UTC)",
        carry_in=report.carry_in,
    )
