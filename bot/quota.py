"""Quota policy: who may start a video now, and why not — pure functions over plain data.

Nothing here touches the database, Discord or Segmind. The store gathers a `UsageSnapshot` and
the member's `EffectiveLimits` inside one `BEGIN IMMEDIATE` transaction, calls `decide()`, and
reserves only on `Allowed`; the cog shows `render_refusal()` for a `Refusal`.

Decisions, in the order they are checked (the first that fails is reported):

1. `blocked`        — a moderator blocked the user in this guild. Beats everything, exempt too.
2. `concurrency`    — the user already has `concurrency` jobs not yet finished (queued counts,
                      so a double-click never queues two). Counted across all guilds: it is one
                      person's share of the bot's queue. Exempt roles are still subject to it.
3. `user_window`    — `user_limit` reservations in the rolling window (per guild). Released
                      (refunded) reservations do not count; reserved and charged ones do. A
                      moderator's window reset ignores reservations made before it. Exempt roles
                      skip this check only.
4. `guild_daily`    — the guild's cap over a rolling 24 h (window resets do not touch it).
5. `global_daily`   — the owner's cap over all guilds, rolling 24 h.
6. `guild_spend_cap`/`spend_cap` — dollars over a rolling 24 h, per guild / over all guilds.
7. `guild_monthly_budget`/`monthly_spend_cap` — dollars per calendar month (UTC), per guild /
                      over all guilds.
                      Spend is the OWNER's ledger, not the member's quota: what Segmind billed,
                      plus the held quote of every job whose bill is not known yet, plus this
                      job's quote, must stay within the cap. A member's refund never lowers it.

Limits resolve per field, most specific first: user override > member's roles > guild settings
> bot settings (`Settings.veo_*`). Among several roles the MOST GENEROUS wins: an exempt role
beats any count, otherwise the highest rate `limit / window`; concurrency takes the highest a
role grants. A role override replaces the guild value even when stricter (a "new member" role
can restrict); a user override replaces everything, including an exempt role's "no limit".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from bot.config import Settings

DAY_SECONDS = 24 * 60 * 60.0

RefusalKind = Literal[
    "blocked",
    "concurrency",
    "user_window",
    "guild_daily",
    "global_daily",
    "guild_spend_cap",
    "spend_cap",
    "guild_monthly_budget",
    "monthly_spend_cap",
]


@dataclass(frozen=True, slots=True)
class LimitDefaults:
    """The bot-wide defaults and owner caps, from `Settings` (`LimitDefaults.from_settings`)."""

    user_limit: int = 3
    window_hours: float = 24.0
    concurrency: int = 1
    guild_daily_limit: int | None = None
    global_daily_limit: int | None = None
    daily_spend_cap: float | None = None  # over all guilds: the owner's wallet, rolling 24 h
    monthly_spend_cap: float | None = None  # over all guilds, per calendar month UTC
    # The most a moderator may set as a guild's monthly budget; it is also the budget of a
    # guild that set none. None: no per-guild maximum beyond `monthly_spend_cap`.
    guild_monthly_budget_max: float | None = None
    # The quote of a reservation whose request carries none (tools, tests); the bot always
    # quotes from `bot.pricing.PriceBook`, whose evidence-free quote is this same setting.
    price_per_job: float = 0.80
    blocked_prompt_cap: int = 3  # content-blocked refunds per user per guild per 24 h

    @classmethod
    def from_settings(cls, settings: Settings) -> LimitDefaults:
        """Take the `veo_*` limit fields of the bot's settings."""
        return cls(
            user_limit=settings.veo_user_limit,
            window_hours=settings.veo_user_window_hours,
            concurrency=settings.veo_user_concurrency,
            guild_daily_limit=settings.veo_guild_daily_limit,
            global_daily_limit=settings.veo_global_daily_limit,
            daily_spend_cap=settings.veo_daily_spend_cap,
            monthly_spend_cap=settings.veo_monthly_spend_cap,
            guild_monthly_budget_max=settings.veo_guild_monthly_budget_max,
            price_per_job=settings.veo_price_per_job,
            blocked_prompt_cap=settings.veo_blocked_prompt_cap,
        )


@dataclass(frozen=True, slots=True)
class GuildLimits:
    """A guild's own settings; `None` means "use the bot default"."""

    user_limit: int | None = None
    window_hours: float | None = None
    concurrency: int | None = None
    daily_limit: int | None = None
    spend_cap: float | None = None  # dollars per rolling 24 h for this guild
    monthly_budget: float | None = None  # dollars per calendar month UTC, ≤ the owner's max


@dataclass(frozen=True, slots=True)
class LimitOverride:
    """A role's or a user's override; `None` fields inherit."""

    user_limit: int | None = None
    window_hours: float | None = None
    concurrency: int | None = None

    @property
    def is_empty(self) -> bool:
        return self.user_limit is None and self.window_hours is None and self.concurrency is None


@dataclass(frozen=True, slots=True)
class EffectiveLimits:
    """The limits that apply to one member in one guild, after all overrides."""

    user_limit: int | None  # None: exempt, no count limit
    window_hours: float
    concurrency: int
    guild_daily_limit: int | None
    guild_spend_cap: float | None
    global_daily_limit: int | None
    global_spend_cap: float | None
    guild_monthly_budget: float | None
    global_monthly_cap: float | None
    price_per_job: float
    blocked_prompt_cap: int
    # Which rule set the count: "default", "guild", "role:<id>", "exempt:<id>", "exempt", "user".
    source: str

    @property
    def window_seconds(self) -> float:
        return self.window_hours * 3600.0

    @property
    def exempt(self) -> bool:
        return self.user_limit is None


@dataclass(frozen=True, slots=True)
class Block:
    """A moderator's block of one user in one guild."""

    guild_id: int
    user_id: int
    reason: str | None
    blocked_by: int
    created_at: float


@dataclass(frozen=True, slots=True)
class WindowUsage:
    """Counting reservations (reserved or charged) inside one rolling window.

    `pivot` is the `reserved_at` of the `limit`-th newest of them when `count >= limit`: once it
    leaves the window, one more fits. Reading only that row (not every timestamp) keeps a
    check's cost flat however busy the day was.
    """

    count: int = 0
    pivot: float | None = None

    @classmethod
    def of(cls, times: Iterable[float], since: float, limit: int | None) -> WindowUsage:
        """Build from raw `reserved_at` times, counting those after `since` (for tests/tools)."""
        inside = sorted(t for t in times if t > since)
        pivot = inside[-limit] if limit and len(inside) >= limit else None
        return cls(len(inside), pivot)


@dataclass(frozen=True, slots=True)
class UsageSnapshot:
    """What the policy needs to know, read in the same transaction that will reserve.

    Windows the member is not limited by (exempt, no guild/global cap) may be left empty.
    """

    block: Block | None = None
    in_flight_job_ids: tuple[int, ...] = ()  # the user's unfinished jobs, oldest first
    user_window: WindowUsage = WindowUsage()  # after the moderator's last reset, if any
    guild_day: WindowUsage = WindowUsage()
    global_day: WindowUsage = WindowUsage()
    # The owner's spend (billed, else the held quote) over the rolling day / this UTC month.
    guild_spend: float = 0.0
    global_spend: float = 0.0
    guild_month_spend: float = 0.0
    global_month_spend: float = 0.0


@dataclass(frozen=True, slots=True)
class Allowed:
    """The request may be reserved; `used` counts it, `limit` is None when exempt."""

    used: int
    limit: int | None


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was refused, with what a message needs. Unused fields stay None."""

    kind: RefusalKind
    used: int | None = None
    limit: float | None = None
    next_free_at: float | None = None  # epoch seconds when one slot frees, if it ever will
    window_hours: float | None = None
    in_flight_job_id: int | None = None
    reason: str | None = None  # a block's reason
    spent: float | None = None


Decision = Allowed | Refusal


def _rate(limit: int, window_hours: float) -> float:
    return limit / window_hours


def effective_limits(
    defaults: LimitDefaults,
    guild: GuildLimits | None = None,
    role_overrides: Mapping[int, LimitOverride] | None = None,
    member_role_ids: Iterable[int] = (),
    exempt_role_ids: Iterable[int] = (),
    user_override: LimitOverride | None = None,
    exempt_member: bool = False,
) -> EffectiveLimits:
    """Resolve one member's limits: user override > most generous role > guild > defaults.

    `role_overrides` may hold every role of the guild; only the member's roles are considered.
    `exempt_member` treats the member as holding an exempt role (e.g. the caller decided that
    members with Manage Server are exempt).
    """
    guild = guild or GuildLimits()
    roles = set(member_role_ids)
    base_limit = guild.user_limit if guild.user_limit is not None else defaults.user_limit
    base_window = guild.window_hours if guild.window_hours is not None else defaults.window_hours
    concurrency = guild.concurrency if guild.concurrency is not None else defaults.concurrency
    source = (
        "guild" if guild.user_limit is not None or guild.window_hours is not None else "default"
    )

    user_limit: int | None = base_limit
    window = base_window
    exempt_roles = sorted(roles.intersection(exempt_role_ids))
    if exempt_member:
        user_limit, source = None, "exempt"
    elif exempt_roles:
        user_limit, source = None, f"exempt:{exempt_roles[0]}"
    else:
        # Pick the role whose (limit, window) pair gives the highest rate; a tie goes to the
        # larger count, then the lower role id so the answer never depends on dict order.
        best: tuple[float, int, int] | None = None
        for role_id in sorted(roles):
            override = (role_overrides or {}).get(role_id)
            if override is None or (override.user_limit is None and override.window_hours is None):
                continue
            limit = override.user_limit if override.user_limit is not None else base_limit
            hours = override.window_hours if override.window_hours is not None else base_window
            key = (_rate(limit, hours), limit, -role_id)
            if best is None or key > best:
                best = key
                user_limit, window, source = limit, hours, f"role:{role_id}"
    role_concurrency = [
        o.concurrency
        for role_id, o in (role_overrides or {}).items()
        if role_id in roles and o.concurrency is not None
    ]
    if role_concurrency:
        concurrency = max(role_concurrency)

    if user_override is not None:
        if user_override.user_limit is not None:
            user_limit, source = user_override.user_limit, "user"
        if user_override.window_hours is not None:
            window, source = user_override.window_hours, "user"
        if user_override.concurrency is not None:
            concurrency = user_override.concurrency

    return EffectiveLimits(
        user_limit=user_limit,
        window_hours=window,
        concurrency=max(1, concurrency),
        guild_daily_limit=guild.daily_limit
        if guild.daily_limit is not None
        else defaults.guild_daily_limit,
        guild_spend_cap=guild.spend_cap,
        global_daily_limit=defaults.global_daily_limit,
        global_spend_cap=defaults.daily_spend_cap,
        guild_monthly_budget=guild_monthly_budget(guild, defaults),
        global_monthly_cap=defaults.monthly_spend_cap,
        price_per_job=defaults.price_per_job,
        blocked_prompt_cap=defaults.blocked_prompt_cap,
        source=source,
    )


def guild_monthly_budget(guild: GuildLimits, defaults: LimitDefaults) -> float | None:
    """The guild's monthly budget in force: its moderator's, never above the owner's maximum
    (lowered later, the maximum wins); the maximum itself when the guild set none."""
    budgets = [
        b for b in (guild.monthly_budget, defaults.guild_monthly_budget_max) if b is not None
    ]
    return min(budgets) if budgets else None


def budget_over_max(budget: float | None, defaults: LimitDefaults) -> bool:
    """Whether a moderator's monthly budget is above what the owner allows per guild."""
    cap = defaults.guild_monthly_budget_max
    return budget is not None and cap is not None and budget > cap + 1e-9


def next_month_start(now: float) -> float:
    """Epoch seconds of the 1st of the next calendar month, 00:00 UTC: when a monthly cap
    frees up."""
    today = datetime.fromtimestamp(now, UTC)
    year, month = (today.year + 1, 1) if today.month == 12 else (today.year, today.month + 1)
    return datetime(year, month, 1, tzinfo=UTC).timestamp()


def month_start(now: float) -> float:
    """Epoch seconds of the 1st of this calendar month, 00:00 UTC."""
    today = datetime.fromtimestamp(now, UTC)
    return datetime(today.year, today.month, 1, tzinfo=UTC).timestamp()


def spend_frees_at(
    rows: Iterable[tuple[float, float]], spent: float, price: float, cap: float
) -> float | None:
    """When a rolling-24 h spend cap lets a job of `price` through again, if nothing else is
    spent meanwhile: `rows` are the window's (held_at, amount) oldest first, `spent` their sum.
    None when no amount of waiting helps (the job alone is above the cap)."""
    if price > cap + 1e-9:
        return None
    for held_at, amount in rows:
        spent -= amount
        if spent + price <= cap + 1e-9:
            return held_at + DAY_SECONDS
    return None


def next_free_at(usage: WindowUsage, limit: int, window_seconds: float) -> float | None:
    """When one more reservation fits under `limit` again: the pivot's expiry.

    None when the limit is 0 (no amount of waiting frees a slot) or nothing blocks.
    """
    if limit <= 0 or usage.count < limit or usage.pivot is None:
        return None
    return usage.pivot + window_seconds


def decide(
    limits: EffectiveLimits, usage: UsageSnapshot, now: float, estimated_cost: float | None = None
) -> Decision:
    """Allow or refuse one new job; `estimated_cost` is its quote (default: the configured
    price per job), held against every spend cap.

    The windows in `usage` were counted at `now` by whoever built it (the store, in the same
    transaction that reserves); `now` is kept for policies that need the moment itself."""
    if usage.block is not None:
        return Refusal(kind="blocked", reason=usage.block.reason)

    if len(usage.in_flight_job_ids) >= limits.concurrency:
        return Refusal(
            kind="concurrency",
            used=len(usage.in_flight_job_ids),
            limit=limits.concurrency,
            in_flight_job_id=usage.in_flight_job_ids[0],
        )

    user = usage.user_window
    if limits.user_limit is not None and user.count >= limits.user_limit:
        return Refusal(
            kind="user_window",
            used=user.count,
            limit=limits.user_limit,
            window_hours=limits.window_hours,
            next_free_at=next_free_at(user, limits.user_limit, limits.window_seconds),
        )

    for kind, cap, window in (
        ("guild_daily", limits.guild_daily_limit, usage.guild_day),
        ("global_daily", limits.global_daily_limit, usage.global_day),
    ):
        if cap is not None and window.count >= cap:
            return Refusal(
                kind=kind,  # type: ignore[arg-type]  # the tuple above holds only these two
                used=window.count,
                limit=cap,
                window_hours=24.0,
                next_free_at=next_free_at(window, cap, DAY_SECONDS),
            )

    price = limits.price_per_job if estimated_cost is None else estimated_cost
    # A tiny tolerance so $0.80 * 5 is not refused against a $4.00 cap by float rounding.
    epsilon = 1e-9
    if limits.guild_spend_cap is not None and usage.guild_spend + price > (
        limits.guild_spend_cap + epsilon
    ):
        return Refusal(
            kind="guild_spend_cap", limit=limits.guild_spend_cap, spent=usage.guild_spend
        )
    if limits.global_spend_cap is not None and usage.global_spend + price > (
        limits.global_spend_cap + epsilon
    ):
        return Refusal(kind="spend_cap", limit=limits.global_spend_cap, spent=usage.global_spend)
    if limits.guild_monthly_budget is not None and usage.guild_month_spend + price > (
        limits.guild_monthly_budget + epsilon
    ):
        return Refusal(
            kind="guild_monthly_budget",
            limit=limits.guild_monthly_budget,
            spent=usage.guild_month_spend,
            next_free_at=next_month_start(now),
        )
    if limits.global_monthly_cap is not None and usage.global_month_spend + price > (
        limits.global_monthly_cap + epsilon
    ):
        return Refusal(
            kind="monthly_spend_cap",
            limit=limits.global_monthly_cap,
            spent=usage.global_month_spend,
            next_free_at=next_month_start(now),
        )

    return Allowed(used=user.count + 1, limit=limits.user_limit)


def blocked_refund_allowed(refunds_in_last_day: int, cap: int) -> bool:
    """May a content-blocked job be refunded? Only the first `cap` per user per 24 h are, so
    nobody can farm free attempts with prompts they know will be refused."""
    return refunds_in_last_day < cap


def _when(epoch: float | None) -> str:
    # Discord renders <t:N:R> as "in 3 hours" in the reader's own locale and time zone.
    return f"<t:{int(epoch + 0.999)}:R>" if epoch is not None else ""


def _hours(hours: float | None) -> str:
    return f"{hours:g} h" if hours is not None else "24 h"


def render_refusal(refusal: Refusal, *, public: bool = False) -> str:
    """One sentence for the user. Discord timestamp markup is plain text here.

    `public`: the sentence is shown in the channel, not privately — a moderator's reason for a
    block is between them and the member, so it is left out."""
    kind = refusal.kind
    if kind == "blocked":
        text = "You are not allowed to use /veo here"
        return f"{text} ({refusal.reason})" if refusal.reason and not public else text
    if kind == "concurrency":
        if refusal.limit is not None and refusal.limit > 1:
            return (
                f"You already have {refusal.used} videos on the way — "
                "wait for one to finish before starting another"
            )
        return "One video at a time — yours is still generating"
    if kind == "user_window":
        if not refusal.limit:
            return "Video generation is turned off for you here"
        text = (
            f"You have used {refusal.used} of {int(refusal.limit)} videos "
            f"in the last {_hours(refusal.window_hours)}"
        )
        return f"{text} — next one {_when(refusal.next_free_at)}" if refusal.next_free_at else text
    if kind == "guild_daily":
        text = "This server's daily limit is reached"
        return f"{text} — try again {_when(refusal.next_free_at)}" if refusal.next_free_at else text
    if kind == "global_daily":
        text = "The bot's daily limit is reached"
        return f"{text} — try again {_when(refusal.next_free_at)}" if refusal.next_free_at else text
    if kind == "guild_spend_cap":
        text = "This server's video budget for today is spent"
        return (
            f"{text} — {_rolling(refusal)}" if refusal.next_free_at else f"{text} — try again later"
        )
    if kind == "guild_monthly_budget":
        return f"This server's video budget for this month is spent — {_month(refusal)}"
    if kind == "monthly_spend_cap":
        return f"The bot's video budget for this month is spent — {_month(refusal)}"
    text = "Today's video budget is spent"
    return f"{text} — {_rolling(refusal)}" if refusal.next_free_at else f"{text} — try again later"


def _rolling(refusal: Refusal) -> str:
    return f"enough frees up {_when(refusal.next_free_at)}, as the last 24 hours move on"


def _month(refusal: Refusal) -> str:
    when = refusal.next_free_at
    if when is None:
        return "it renews on the 1st of next month (UTC)"
    day = datetime.fromtimestamp(when, UTC).strftime("%-d %B %Y")
    return f"it renews on {day} (UTC), {_when(when)}"
