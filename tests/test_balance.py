"""The balance watch: the forecast's numbers and words, the once-per-band alarm, the pause."""

from __future__ import annotations

import asyncio

import pytest

from bot.balance import (
    DAY_SECONDS,
    PACE_DAYS,
    BalanceWatch,
    LowBalanceAlarm,
    RecentSpend,
    band_thresholds,
    forecast,
    forecast_text,
)

PRICE = 1.20

# ---------------------------------------------------------------------------- the forecast


def test_forecast_at_this_weeks_pace() -> None:
    # $8.40 billed in 7 days = $1.20/day; $3.60 lasts 3 days and buys 3 videos.
    f = forecast(3.60, price=PRICE, billed_recent=8.40)
    assert f.per_day == pytest.approx(1.20)
    assert f.days_left == pytest.approx(3.0)
    assert f.videos_left == pytest.approx(3.0)
    assert not f.paused
    text = forecast_text(f)
    assert "about 3 days left at this week's pace" in text
    assert "$3.60 left" in text and "about 3 videos" in text and "$1.20/day" in text


def test_one_day_is_singular_and_fractions_round_down() -> None:
    assert "about 1 day left" in forecast_text(forecast(1.9, price=0.4, billed_recent=7.0))
    assert "about 2 days left" in forecast_text(forecast(2.6, price=0.4, billed_recent=7.0))


def test_less_than_a_day_is_said_so() -> None:
    f = forecast(2.40, price=PRICE, billed_recent=7 * 6.0)  # $6/day
    assert f.days_left == pytest.approx(0.4)
    assert "less than a day at this week's pace" in forecast_text(f)


def test_no_recent_spend_gives_no_forecast() -> None:
    f = forecast(12.0, price=PRICE, billed_recent=0.0)
    assert f.days_left is None
    text = forecast_text(f)
    assert "nothing was billed in the last 7 days, so no forecast" in text
    assert "about 10 videos" in text


def test_below_one_video_pauses() -> None:
    f = forecast(0.90, price=PRICE, billed_recent=5.0)
    assert f.paused
    assert "/veo is paused" in forecast_text(f)
    assert forecast(0.0, price=PRICE, billed_recent=0.0).paused
    # An overdraft counts as nothing left, not as a negative number of days.
    overdrawn = forecast(-3.0, price=PRICE, billed_recent=5.0)
    assert overdrawn.paused and overdrawn.balance == 0.0 and overdrawn.days_left == 0.0


def test_one_whole_video_is_not_paused() -> None:
    f = forecast(1.20, price=PRICE, billed_recent=0.0)
    assert not f.paused and "about 1 video " in forecast_text(f)


def test_a_price_of_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="price"):
        forecast(5.0, price=0.0, billed_recent=1.0)


# ------------------------------------------------------------------------------- the bands


def test_band_thresholds() -> None:
    assert band_thresholds(25) == (25, 12, 5, 1)
    assert band_thresholds(3) == (3, 1)
    assert band_thresholds(0) == (1,)  # warnings off: only the pause is told


def _at(videos: float) -> object:
    return forecast(videos * PRICE, price=PRICE, billed_recent=7.0)


def test_one_message_per_band_crossed_not_per_check() -> None:
    alarm = LowBalanceAlarm(25)
    assert alarm.update(_at(40)) is None  # plenty
    first = alarm.update(_at(24))
    assert first is not None and first.kind == "low"
    assert "running low" in first.text() and "about 24 videos" in first.text()
    # Still in the same band at every later check: nothing more.
    assert alarm.update(_at(20)) is None
    assert alarm.update(_at(13)) is None
    # Crossing into the next lower band (below 12) is told once.
    second = alarm.update(_at(11))
    assert second is not None and second.kind == "low"
    assert alarm.update(_at(10)) is None
    # A fall over two bands at once is one message, not two.
    third = alarm.update(_at(0.5))
    assert third is not None and third.kind == "paused"
    assert "credits ran out" in third.text() and "/veo is paused" in third.text()
    assert alarm.update(_at(0.2)) is None


def test_a_top_up_then_a_new_fall_is_told_again() -> None:
    alarm = LowBalanceAlarm(25)
    assert alarm.update(_at(20)) is not None
    assert alarm.update(_at(19)) is None
    assert alarm.update(_at(60)) is None  # topped up: nothing to warn about
    again = alarm.update(_at(24))
    assert again is not None and again.kind == "low"


def test_a_partial_top_up_remembers_the_band_it_reached() -> None:
    alarm = LowBalanceAlarm(25)
    alarm.update(_at(20))
    alarm.update(_at(4))  # below a fifth
    assert alarm.update(_at(20)) is None  # topped up a little: still under the warning level
    fell = alarm.update(_at(11))  # and down again past half
    assert fell is not None and fell.kind == "low"


def test_leaving_the_pause_is_told() -> None:
    alarm = LowBalanceAlarm(25)
    assert alarm.update(_at(0)) is not None
    resumed = alarm.update(_at(30))
    assert resumed is not None and resumed.kind == "resumed"
    assert "takes requests again" in resumed.text()
    assert alarm.update(_at(30)) is None


# ------------------------------------------------------------------------------- the watch


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Account:
    """Stands in for Segmind's balance and the spend ledger."""

    def __init__(self, balance: float, billed_week: float, jobs_week: int = 0) -> None:
        self.balance = balance
        self.billed_week = billed_week
        self.jobs_week = jobs_week  # 0: no average, the fallback quote is the price
        self.asked_since: list[float] = []
        self.fail = False

    async def read(self) -> float:
        if self.fail:
            raise RuntimeError("Segmind did not answer")
        return self.balance

    async def spent_since(self, since: float) -> RecentSpend:
        self.asked_since.append(since)
        return RecentSpend(self.billed_week, self.billed_week, self.jobs_week)


def _watch(account: Account, posted: list[str], clock: Clock, **kwargs: object) -> BalanceWatch:
    async def announce(text: str) -> None:
        posted.append(text)

    return BalanceWatch(
        read_balance=account.read,
        spent_since=account.spent_since,
        fallback_price=lambda: PRICE,
        announce=announce,
        interval=kwargs.pop("interval", 600.0),  # type: ignore[arg-type]
        warn_videos=25,
        clock=clock,
        speaks=kwargs.pop("speaks", lambda: True),  # type: ignore[arg-type]
    )


async def test_a_standby_keeps_the_pause_but_leaves_the_telling_to_the_runner() -> None:
    """Two nodes on one Segmind account: both must refuse /veo when it runs out, but the log
    channels hear it once — from the runner; a node that takes over tells what is due."""
    clock, posted = Clock(), []
    runner = {"holding": False}
    account = Account(balance=0.0, billed_week=8.40)
    watch = _watch(account, posted, clock, speaks=lambda: runner["holding"])
    await watch.check()
    assert watch.paused and posted == []

    runner["holding"] = True  # this node took the runner lease over
    await watch.check()
    assert len(posted) == 1 and "/veo is paused" in posted[0]


async def test_the_watch_posts_once_and_pauses_at_zero() -> None:
    clock, posted = Clock(), []
    account = Account(balance=100.0, billed_week=8.40)
    watch = _watch(account, posted, clock)
    await watch.check()
    assert posted == [] and not watch.paused
    # The pace is read over the last 7 days of the injected clock.
    assert account.asked_since == [clock.now - PACE_DAYS * DAY_SECONDS]

    account.balance = 3.60
    clock.now += 600
    await watch.check()
    await watch.check()
    assert len(posted) == 1
    assert "about 3 days left at this week's pace" in posted[0]
    assert not watch.paused

    account.balance = 0.0
    await watch.check()
    assert watch.paused and len(posted) == 2 and "/veo is paused" in posted[1]

    account.balance = 50.0
    await watch.check()
    assert not watch.paused and "takes requests again" in posted[2]


async def test_a_failed_read_changes_nothing() -> None:
    clock, posted = Clock(), []
    account = Account(balance=0.0, billed_week=1.0)
    watch = _watch(account, posted, clock)
    await watch.check()
    assert watch.paused
    account.fail = True
    assert await watch.check() is None
    assert watch.paused and len(posted) == 1  # still paused; nothing new posted


async def test_segmind_word_on_a_submit_moves_the_pause_at_once() -> None:
    clock, posted = Clock(), []
    watch = _watch(Account(balance=100.0, billed_week=0.0), posted, clock)
    watch.note_out_of_credits()
    assert watch.paused
    watch.note_submitted()
    assert not watch.paused


async def test_a_406_wakes_the_loop_for_an_immediate_check() -> None:
    clock, posted = Clock(), []
    account = Account(balance=100.0, billed_week=0.0)
    watch = _watch(account, posted, clock, interval=3600.0)
    watch.start()
    try:
        for _ in range(100):
            if watch.latest is not None:
                break
            await asyncio.sleep(0)
        assert watch.latest is not None and posted == []
        account.balance = 0.0
        watch.note_out_of_credits()  # long before the hour is up
        for _ in range(100):
            if posted:
                break
            await asyncio.sleep(0)
        assert posted and "credits ran out" in posted[0]
    finally:
        await watch.stop()


async def test_a_failing_announcer_does_not_stop_the_watch() -> None:
    clock = Clock()
    account = Account(balance=0.0, billed_week=0.0)

    async def broken(text: str) -> None:
        raise RuntimeError("Discord is down")

    watch = BalanceWatch(
        read_balance=account.read,
        spent_since=account.spent_since,
        fallback_price=lambda: PRICE,
        announce=broken,
        interval=600.0,
        warn_videos=25,
        clock=clock,
    )
    result = await watch.check()
    assert result is not None and watch.paused


async def test_the_price_is_this_weeks_average_bill_else_the_quote() -> None:
    clock, posted = Clock(), []
    # $7 over 10 billed videos: $0.70 each, so $3.50 buys 5 videos, not 2 at the $1.20 quote.
    account = Account(balance=3.50, billed_week=7.0, jobs_week=10)
    result = await _watch(account, posted, clock).check()
    assert result is not None
    assert result.price == pytest.approx(0.70) and result.videos_left == pytest.approx(5.0)
    account.jobs_week = 0
    result = await _watch(account, posted, clock).check()
    assert result is not None and result.price == PRICE
    assert RecentSpend(spent=2.4, billed=0.0, billed_jobs=0).price(1.2) == 1.2
