"""`/veo-admin spend`'s report: the window, the wording, the embed inside Discord's limits."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from bot.balance import BalanceWatch, RecentSpend, forecast
from bot.charts import ChartDay
from bot.chat.spend_report import (
    CHART_NAME,
    SpendReport,
    caps_text,
    chart_png,
    discrepancies_text,
    fill_days,
    gather,
    per_day_text,
    quoted_vs_billed,
    spend_embed,
    top_text,
    window,
)
from bot.params import VeoParams
from bot.quota import GuildLimits, LimitDefaults
from bot.store import Discrepancy, NewDiscrepancy, Reserved, ReserveRequest, UserUsage, open_store

NOW = datetime(2026, 12, 2, 15, 30, tzinfo=UTC).timestamp()
GUILD, OTHER = 100, 200


def _report(**changes: object) -> SpendReport:
    days = fill_days(date(2026, 11, 3), date(2026, 12, 2), {date(2026, 12, 2): (1.20, 0.60)})
    base = SpendReport(
        days=days,
        carry_in=0.0,
        billed=4.80,
        held=0.60,
        quoted=5.40,
        billed_jobs=6,
        month_to_date=1.80,
        owner_month_to_date=7.00,
        limits=GuildLimits(spend_cap=5.0),
        defaults=LimitDefaults(daily_spend_cap=20.0),
        top=[UserUsage(111, 4, 3, 2.40), UserUsage(222, 2, 2, 1.20)],
        forecast=forecast(3.60, price=1.20, billed_recent=8.40),
        checked_at=NOW - 60,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_window_is_whole_utc_days_ending_today() -> None:
    assert window(30, NOW) == (date(2026, 11, 3), date(2026, 12, 2))
    assert window(1, NOW) == (date(2026, 12, 2), date(2026, 12, 2))


def test_days_without_spend_are_zeros() -> None:
    days = fill_days(date(2026, 11, 29), date(2026, 12, 1), {date(2026, 11, 30): (0.6, 0.0)})
    assert days == [
        ChartDay(date(2026, 11, 29), 0.0, 0.0),
        ChartDay(date(2026, 11, 30), 0.6, 0.0),
        ChartDay(date(2026, 12, 1), 0.0, 0.0),
    ]


def test_per_day_lists_the_latest_days_with_spend() -> None:
    assert per_day_text(_report()) == "Wed 02 Dec: $1.20 billed + $0.60 held"
    busy = fill_days(date(2026, 11, 1), date(2026, 12, 2), {})
    busy = [ChartDay(d.day, 0.5, 0.0) for d in busy]
    text = per_day_text(_report(days=busy))
    assert text.splitlines()[0] == "Wed 02 Dec: $0.50 billed"
    assert len(text.splitlines()) == 11 and "and 22 earlier day(s)" in text
    idle = fill_days(date(2026, 11, 1), date(2026, 11, 3), {})
    assert per_day_text(_report(days=idle)) == "No spend in this window."


def test_quoted_vs_billed_says_which_way() -> None:
    assert "$0.60 under the quotes" in quoted_vs_billed(_report())
    assert "**over** the quotes" in quoted_vs_billed(_report(quoted=4.00))
    assert "exactly as quoted" in quoted_vs_billed(_report(quoted=4.80))
    assert "No bill from Segmind yet" in quoted_vs_billed(_report(billed_jobs=0, billed=0.0))


def test_caps_show_today_and_the_month_against_each_cap() -> None:
    text = caps_text(_report())
    assert "Server: $1.80 today of $5.00 per 24 h (36%)" in text
    assert "Server: $1.80 this month (no monthly budget)" in text
    assert "All servers: $7.00 this month" in text
    assert "Owner's daily cap: $20.00 per 24 h over all servers" in text
    budgets = caps_text(
        _report(
            limits=GuildLimits(monthly_budget=30.0),
            defaults=LimitDefaults(monthly_spend_cap=70.0, guild_monthly_budget_max=20.0),
        )
    )
    # The owner's maximum wins over a higher budget a moderator set earlier.
    assert "Server: $1.80 this month of a $20.00 budget (9%)" in budgets
    assert "All servers: $7.00 this month of the owner's $70.00 (10%)" in budgets


def test_the_chart_draws_the_caps_that_apply() -> None:
    report = _report(
        limits=GuildLimits(spend_cap=5.0, monthly_budget=30.0),
        defaults=LimitDefaults(daily_spend_cap=20.0, monthly_spend_cap=70.0),
    )
    drawn = {(c.period, c.amount, c.owner) for c in report.caps}
    assert drawn == {
        ("daily", 5.0, False),
        ("monthly", 30.0, False),
        ("daily", 20.0, True),
        ("monthly", 70.0, True),
    }
    assert _report(limits=GuildLimits(), defaults=LimitDefaults()).caps == []


def test_top_members_are_mentions_never_pasted_names() -> None:
    text = top_text([UserUsage(111, 4, 3, 2.40)])
    assert text == "1. <@111> — 3 delivered of 4, $2.40 charged"
    assert "Nobody made a video" in top_text([])


def test_the_embed_fits_discords_limits_and_shows_the_chart() -> None:
    many = [UserUsage(10**17 + n, 999, 999, 9999.99) for n in range(200)]
    embed = spend_embed(_report(top=many), days=30, chart=True)
    assert len(embed) <= 6000
    assert all(len(field.value or "") <= 1024 for field in embed.fields)
    assert embed.image.url == f"attachment://{CHART_NAME}"
    assert "$4.80 in the last 30 day(s)" in (embed.description or "")
    assert "$0.60 held at quotes" in (embed.description or "")
    balance = next(f.value for f in embed.fields if "balance" in (f.name or ""))
    assert "about 3 days left at this week's pace" in (balance or "")
    assert spend_embed(_report(), days=30, chart=False).image.url is None


def test_a_balance_not_read_yet_is_said_so() -> None:
    embed = spend_embed(_report(forecast=None, checked_at=None), days=7, chart=False)
    balance = next(f.value for f in embed.fields if "balance" in (f.name or ""))
    assert "Not read yet" in (balance or "")


async def test_gather_reads_one_servers_window_and_every_servers_month(tmp_path: Path) -> None:
    # Two servers, days on both sides of the 1st: the report's window, its running-total
    # carry-in from before the window, and the owner's month over all servers.
    store = await open_store(tmp_path / "veo.sqlite3")
    defaults = LimitDefaults(user_limit=100, concurrency=100)

    async def billed(guild_id: int, at: datetime, amount: float | None, quote: float) -> None:
        outcome = await store.reserve(
            ReserveRequest(
                guild_id=guild_id,
                channel_id=1,
                user_id=7,
                role_ids=(),
                params=VeoParams(prompt="a fox"),
                now=at.timestamp(),
                quote=quote,
            ),
            defaults,
        )
        assert isinstance(outcome, Reserved)
        if amount is not None:
            await store.record_billed(outcome.job_id, amount, source="metrics")

    try:
        await billed(GUILD, datetime(2026, 11, 10, 12, tzinfo=UTC), 0.50, 1.20)  # before
        await billed(GUILD, datetime(2026, 11, 28, 12, tzinfo=UTC), 0.60, 1.20)
        await billed(GUILD, datetime(2026, 12, 2, 9, tzinfo=UTC), 0.70, 1.20)
        await billed(GUILD, datetime(2026, 12, 2, 10, tzinfo=UTC), None, 1.20)  # held
        await billed(OTHER, datetime(2026, 12, 1, 10, tzinfo=UTC), 0.80, 1.20)
        await store.record_discrepancy(
            NewDiscrepancy("cost_off_quote", "req-1", job_id=3, guild_id=GUILD, billed=2.0),
            now=NOW - 3600,
        )
        await store.record_discrepancy(
            NewDiscrepancy("cost_off_quote", "req-2", job_id=5, guild_id=OTHER, billed=2.0),
            now=NOW - 3600,
        )
        watch = _idle_watch()
        report = await gather(store, GUILD, 7, defaults=defaults, watch=watch, now=NOW)
    finally:
        await store.close()
    assert [d.day for d in report.days] == [
        date(2026, 11, 26) + timedelta(days=i) for i in range(7)
    ]
    assert report.days[-1] == ChartDay(date(2026, 12, 2), 0.70, 1.20)
    assert report.billed == pytest.approx(1.30) and report.held == pytest.approx(1.20)
    assert report.billed_jobs == 2 and report.quoted == pytest.approx(2.40)
    assert report.carry_in == pytest.approx(0.50)  # Nov 10, in the window's first month
    assert report.month_to_date == pytest.approx(1.90)  # December, this server
    assert report.owner_month_to_date == pytest.approx(2.70)  # December, both servers
    assert [row.user_id for row in report.top] == [7]
    assert report.forecast is None
    # This server's disagreement only, in the sentence the log channel got.
    assert [d.request_id for d in report.discrepancies] == ["req-1"]
    assert "Segmind billed $2.00 for job 3" in discrepancies_text(report)


def _idle_watch() -> BalanceWatch:
    async def never() -> float:
        raise AssertionError("gather must not read the balance itself")

    async def nothing(since: float) -> RecentSpend:
        return RecentSpend(0.0, 0.0, 0)

    async def silent(text: str) -> None:
        pass

    return BalanceWatch(
        read_balance=never,
        spent_since=nothing,
        fallback_price=lambda: 1.2,
        announce=silent,
        interval=600.0,
        warn_videos=25,
    )


def _discrepancy(n: int) -> Discrepancy:
    return Discrepancy(
        id=n,
        kind="billed_but_refunded",
        request_id=f"req-{n}",
        job_id=n,
        guild_id=GUILD,
        billed=0.6,
        expected=0.0,
        detail="",
        created_at=NOW - n * 60,
        posted_at=None,
    )


def test_discrepancies_are_listed_with_a_pointer_to_the_rest() -> None:
    assert "None" in discrepancies_text(_report())
    some = discrepancies_text(_report(discrepancies=[_discrepancy(1), _discrepancy(2)]))
    assert some.count("refunded to the member") == 2 and "and more" not in some
    many = discrepancies_text(_report(discrepancies=[_discrepancy(n) for n in range(1, 7)]))
    assert many.count("refunded to the member") == 5
    assert "`/veo-admin discrepancies` lists them all" in many
    embed = spend_embed(_report(discrepancies=[_discrepancy(1)]), days=30, chart=True)
    shown = {f.name: f.value for f in embed.fields}
    assert "req-1" in (shown["Disagreements with Segmind's record"] or "")
    assert len(embed) <= 6000


async def test_the_chart_is_drawn_off_the_event_loop() -> None:
    # A render takes a good part of a second; meanwhile the loop must keep serving (the
    # gateway's heartbeats, other members' commands).
    ticks = 0
    rendering = asyncio.ensure_future(chart_png(_report(), days=30))
    while not rendering.done():
        await asyncio.sleep(0.005)
        ticks += 1
    assert (await rendering).startswith(b"\x89PNG")
    assert ticks >= 5
