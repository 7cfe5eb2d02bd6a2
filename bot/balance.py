"""Balance watch: how long the owner's Segmind credits last at the recent pace, told to
moderators once per band, and the pause of `/veo` once they cannot pay for one more video.

Three pieces, each testable alone:
- `forecast()` and `forecast_text()`: pure arithmetic and wording over plain numbers;
- `LowBalanceAlarm`: which check deserves a message — one when the balance falls into a lower
  band, none while it stays there, and a fresh one after a top-up when it falls again;
- `BalanceWatch`: the background task that reads the balance (through the client's shared
  request budget), asks the spend ledger for the recent pace and posts through an injected
  announcer. It also holds the pause `/veo` checks before reserving anything.

No Discord, no store, no HTTP here: the bot's services inject what to call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

log = logging.getLogger(__name__)

PACE_DAYS = 7  # "this week's pace": the billed total of the last 7 days, per day
DAY_SECONDS = 86_400.0

AlertKind = Literal["low", "paused", "resumed"]


@dataclass(frozen=True)
class Forecast:
    """What the balance buys. `days_left` is None when nothing was billed recently (no pace
    to extrapolate from)."""

    balance: float  # USD the account can spend
    price: float  # what one video costs: this week's average bill, else the fallback quote
    per_day: float  # USD billed per day, averaged over the pace window
    videos_left: float  # balance / price, unrounded (the bands compare it)
    days_left: float | None

    @property
    def paused(self) -> bool:
        """The balance cannot pay for one more video: `/veo` refuses at once."""
        return self.videos_left < 1


def forecast(
    balance: float, *, price: float, billed_recent: float, pace_days: float = PACE_DAYS
) -> Forecast:
    """The forecast for `balance` when `billed_recent` USD were billed in the last
    `pace_days` days and a video is quoted at `price`.

    A negative balance (an overdraft the API might report) counts as zero; a price of zero or
    less cannot be right (Segmind bills every delivered video) and raises."""
    if not math.isfinite(price) or price <= 0:
        raise ValueError("price must be a positive number")
    balance = max(0.0, balance) if math.isfinite(balance) else 0.0
    per_day = max(0.0, billed_recent) / pace_days if math.isfinite(billed_recent) else 0.0
    days_left = balance / per_day if per_day > 0 else None
    return Forecast(balance, price, per_day, balance / price, days_left)


def _videos(count: float) -> str:
    whole = math.floor(count + 1e-9)
    return "1 video" if whole == 1 else f"{whole} videos"


def forecast_text(f: Forecast) -> str:
    """One sentence a moderator reads at a glance, e.g. "$3.60 left, enough for about
    3 videos — about 2 days at this week's pace ($1.80/day).\""""
    left = f"${f.balance:.2f} left"
    if f.paused:
        return (
            f"{left}: less than one video (${f.price:.2f}), so /veo is paused until the owner "
            "tops up the Segmind account."
        )
    enough = f"{left}, enough for about {_videos(f.videos_left)} (${f.price:.2f} each)"
    if f.days_left is None:
        return f"{enough}; nothing was billed in the last {PACE_DAYS} days, so no forecast."
    pace = f"at this week's pace (${f.per_day:.2f}/day)"
    if f.days_left < 1:
        return f"{enough} — less than a day {pace}."
    # Rounded down: a forecast of when the money ends should not promise an extra day (the
    # epsilon keeps float noise in 3.6 / 1.2 from losing one).
    days = math.floor(f.days_left + 1e-9)
    return f"{enough} — about {days} day{'s' if days != 1 else ''} left {pace}."


def band_thresholds(warn_videos: int) -> tuple[int, ...]:
    """The bands, in videos left, highest first: the warning level, half of it, a fifth of it,
    and 1 (below it `/veo` is paused). A warning level of 0 keeps only the pause."""
    levels = {warn_videos, warn_videos // 2, warn_videos // 5, 1}
    return tuple(sorted((level for level in levels if level >= 1), reverse=True))


@dataclass(frozen=True)
class Alert:
    kind: AlertKind
    forecast: Forecast

    def text(self) -> str:
        """The log-channel message: says what happened, then the forecast."""
        if self.kind == "paused":
            return "⛔ **Segmind credits ran out.** " + forecast_text(self.forecast)
        if self.kind == "resumed":
            return (
                "✅ **Segmind credits were topped up:** /veo takes requests again. "
                + forecast_text(self.forecast)
            )
        return "⚠️ **Segmind credits are running low.** " + forecast_text(self.forecast)


class LowBalanceAlarm:
    """Decides which balance checks deserve a message.

    The band is how many thresholds the balance is below (0 = fine). A message goes out when
    the band gets lower than the one last seen — so one per band crossed, none while it stays
    put — and the remembered band follows the balance back up after a top-up, so a later fall
    is told again. Leaving the paused band says that `/veo` runs again."""

    def __init__(self, warn_videos: int) -> None:
        self.thresholds = band_thresholds(warn_videos)
        self._band = 0

    def band_of(self, f: Forecast) -> int:
        return sum(1 for level in self.thresholds if f.videos_left < level)

    def update(self, f: Forecast) -> Alert | None:
        band, previous = self.band_of(f), self._band
        self._band = band
        if band > previous:
            return Alert("paused" if f.paused else "low", f)
        if previous == len(self.thresholds) and band < previous:
            return Alert("resumed", f)
        return None


@dataclass(frozen=True)
class RecentSpend:
    """What the spend ledger says about the pace window."""

    spent: float  # billed, plus the quotes still held for jobs whose bill is not known yet
    billed: float  # of which Segmind billed
    billed_jobs: int  # jobs Segmind billed more than 0

    def price(self, fallback: float) -> float:
        """One video's price: the average of this week's bills, which reflects the options
        members actually pick; without bills, `fallback` (a quote)."""
        if self.billed_jobs > 0 and self.billed > 0:
            return self.billed / self.billed_jobs
        return fallback


class CreditsSignal(Protocol):
    """What the job lifecycle tells the watch about Segmind's own word on the balance."""

    def note_submitted(self) -> None:
        """Segmind accepted a submit: the account could pay for it."""

    def note_out_of_credits(self) -> None:
        """Segmind refused a submit for insufficient credits (406)."""


class NoSignal:
    def note_submitted(self) -> None:
        pass

    def note_out_of_credits(self) -> None:
        pass


NO_SIGNAL: CreditsSignal = NoSignal()


class BalanceWatch:
    """Reads the balance every `interval` seconds and posts a forecast when it runs low.

    - `read_balance()`: USD the account can spend (raises when Segmind cannot be asked);
    - `spent_since(since)`: the spend ledger's figures since that epoch second;
    - `fallback_price()`: one video's quote, for a week without bills;
    - `announce(text)`: post to every moderator log channel (must not raise for one channel);
    - `speaks()`: whether this node is the one that tells moderators (the runner, when several
      nodes share one Segmind account). A silent node still reads the balance — it must know
      when `/veo` is paused — but leaves the alarm's bands alone, so the node that takes over
      the runner lease tells what is due then instead of taking it as told.

    A failed read changes nothing: the pause stays as the last answer left it. Not knowing the
    balance is not knowing it ran out, and Segmind's own 406 still refuses an unpaid submit
    before anything is billed (and pauses at once through `note_out_of_credits`)."""

    def __init__(
        self,
        *,
        read_balance: Callable[[], Awaitable[float]],
        spent_since: Callable[[float], Awaitable[RecentSpend]],
        fallback_price: Callable[[], float],
        announce: Callable[[str], Awaitable[object]],
        interval: float,
        warn_videos: int,
        clock: Callable[[], float] = time.time,
        speaks: Callable[[], bool] = lambda: True,
    ) -> None:
        self.read_balance = read_balance
        self.speaks = speaks
        self.spent_since = spent_since
        self.fallback_price = fallback_price
        self.announce = announce
        self.interval = interval
        self.alarm = LowBalanceAlarm(warn_videos)
        self.clock = clock
        self.latest: Forecast | None = None
        self.checked_at: float | None = None
        self._paused = False
        self._recheck = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def paused(self) -> bool:
        """Whether `/veo` should refuse at once: the last check, or Segmind's last 406, said
        the balance cannot pay for one more video (until a check or a submit says otherwise)."""
        return self._paused

    def note_submitted(self) -> None:
        if self._paused:
            log.info("Segmind accepted a submit: the credits pause is lifted")
        self._paused = False

    def note_out_of_credits(self) -> None:
        if not self._paused:
            log.warning("Segmind refused a submit for insufficient credits: /veo is paused")
        self._paused = True
        self._recheck.set()  # read the balance now, so moderators hear of it at once

    async def check(self) -> Forecast | None:
        """Read the balance and the pace once, post a message if one is due; returns the
        forecast, or None when it could not be made (logged; the state stays as it was)."""
        try:
            balance = await self.read_balance()
            now = self.clock()
            recent = await self.spent_since(now - PACE_DAYS * DAY_SECONDS)
            price = recent.price(self.fallback_price())
            result = forecast(balance, price=price, billed_recent=recent.spent)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The exception's text only: the client's errors never carry the key.
            log.warning("balance check failed: %s", exc)
            return None
        self.latest, self.checked_at = result, now
        self._paused = result.paused
        alert = self.alarm.update(result) if self.speaks() else None
        log.info(
            "Segmind balance $%.2f: about %.1f videos, $%.2f/day billed recently",
            result.balance,
            result.videos_left,
            result.per_day,
        )
        if alert is not None:
            log.warning("balance alert (%s): %s", alert.kind, forecast_text(result))
            try:
                await self.announce(alert.text())
            except Exception:
                log.exception("balance alert not posted")
        return result

    def start(self) -> None:
        """Start the background loop (once); the first check runs at once."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="balance-watch")
            self._task.add_done_callback(_log_crash)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            self._recheck.clear()
            await self.check()
            # Woken early by a 406 on a submit; otherwise the next regular check.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._recheck.wait(), timeout=self.interval)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the balance watch stopped", exc_info=task.exception())
