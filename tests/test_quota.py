"""The quota policy on plain data: no database, no clock, no sleeping."""

from __future__ import annotations

import pytest

from bot.config import load_settings
from bot.quota import (
    DAY_SECONDS,
    Allowed,
    Block,
    GuildLimits,
    LimitDefaults,
    LimitOverride,
    Refusal,
    UsageSnapshot,
    WindowUsage,
    blocked_refund_allowed,
    budget_over_max,
    decide,
    effective_limits,
    month_start,
    next_free_at,
    next_month_start,
    render_refusal,
    spend_frees_at,
)

NOW = 1_700_000_000.0
HOUR = 3600.0
DEFAULTS = LimitDefaults()


def window(
    times: tuple[float, ...], now: float, limit: int | None, span: float = DAY_SECONDS
) -> WindowUsage:
    """What the store would count at `now`: reservations in the last `span` seconds."""
    return WindowUsage.of(times, now - span, limit)


def test_defaults_come_from_settings() -> None:
    settings = load_settings(env_file=None, veo_user_limit=5, veo_daily_spend_cap=12.5)
    defaults = LimitDefaults.from_settings(settings)
    assert defaults.user_limit == 5
    assert defaults.daily_spend_cap == 12.5
    assert defaults.window_hours == settings.veo_user_window_hours
    assert defaults.blocked_prompt_cap == settings.veo_blocked_prompt_cap


def test_fresh_user_is_allowed_and_told_how_many_used() -> None:
    decision = decide(effective_limits(DEFAULTS), UsageSnapshot(), NOW)
    assert decision == Allowed(used=1, limit=3)


def test_window_full_refuses_with_when_the_next_slot_frees() -> None:
    limits = effective_limits(DEFAULTS)
    times = (NOW - 20 * HOUR, NOW - 5 * HOUR, NOW - 1 * HOUR)
    decision = decide(limits, UsageSnapshot(user_window=window(times, NOW, 3)), NOW)
    assert decision == Refusal(
        kind="user_window", used=3, limit=3, window_hours=24.0, next_free_at=times[0] + DAY_SECONDS
    )


def test_window_slides_without_sleeping() -> None:
    limits = effective_limits(DEFAULTS)
    times = (NOW - 20 * HOUR, NOW - 5 * HOUR, NOW - 1 * HOUR)
    free_at = times[0] + DAY_SECONDS
    before = UsageSnapshot(user_window=window(times, free_at - 1, 3))
    assert isinstance(decide(limits, before, free_at - 1), Refusal)
    # At exactly 24 h the oldest leaves the window (strictly newer than now - window counts).
    after = UsageSnapshot(user_window=window(times, free_at, 3))
    assert decide(limits, after, free_at) == Allowed(used=3, limit=3)


def test_next_free_at_when_limit_was_lowered_below_usage() -> None:
    times = (NOW - 10.0, NOW - 8.0, NOW - 6.0, NOW - 4.0, NOW - 2.0)
    # 5 counted, limit 2: one more fits once only 1 is left, so the 4th oldest decides.
    assert next_free_at(window(times, NOW, 2, 100.0), 2, 100.0) == NOW - 4.0 + 100.0
    assert next_free_at(window(times, NOW, 0, 100.0), 0, 100.0) is None
    assert next_free_at(window(times, NOW, 9, 100.0), 9, 100.0) is None  # not full


def test_limit_zero_turns_generation_off() -> None:
    limits = effective_limits(LimitDefaults(user_limit=0))
    decision = decide(limits, UsageSnapshot(), NOW)
    assert isinstance(decision, Refusal)
    assert decision.kind == "user_window"
    assert decision.next_free_at is None
    assert render_refusal(decision) == "Video generation is turned off for you here"


def test_concurrency_is_checked_before_the_window_so_a_double_click_reads_right() -> None:
    limits = effective_limits(LimitDefaults(user_limit=1))
    usage = UsageSnapshot(in_flight_job_ids=(42,), user_window=window((NOW - 5,), NOW, 1))
    decision = decide(limits, usage, NOW)
    assert decision == Refusal(kind="concurrency", used=1, limit=1, in_flight_job_id=42)
    assert render_refusal(decision) == "One video at a time — yours is still generating"


def test_concurrency_cap_above_one() -> None:
    limits = effective_limits(LimitDefaults(concurrency=2, user_limit=10))
    assert isinstance(decide(limits, UsageSnapshot(in_flight_job_ids=(1,)), NOW), Allowed)
    refusal = decide(limits, UsageSnapshot(in_flight_job_ids=(1, 2)), NOW)
    assert isinstance(refusal, Refusal)
    assert "2 videos on the way" in render_refusal(refusal)


def test_guild_override_replaces_defaults() -> None:
    limits = effective_limits(DEFAULTS, GuildLimits(user_limit=10, window_hours=12, daily_limit=50))
    assert (limits.user_limit, limits.window_hours, limits.guild_daily_limit) == (10, 12, 50)
    assert limits.source == "guild"


def test_most_generous_role_wins() -> None:
    roles = {
        1: LimitOverride(user_limit=5),  # 5 per 24 h
        2: LimitOverride(user_limit=2, window_hours=1),  # 48 per 24 h: the most generous
        3: LimitOverride(user_limit=20, window_hours=240),  # 2 per 24 h
    }
    limits = effective_limits(DEFAULTS, None, roles, member_role_ids=[1, 2, 3])
    assert (limits.user_limit, limits.window_hours, limits.source) == (2, 1, "role:2")
    # Roles the member does not hold are ignored.
    limits = effective_limits(DEFAULTS, None, roles, member_role_ids=[1, 3])
    assert (limits.user_limit, limits.source) == (5, "role:1")


def test_a_stricter_role_still_replaces_the_guild_value() -> None:
    roles = {7: LimitOverride(user_limit=1)}
    limits = effective_limits(DEFAULTS, GuildLimits(user_limit=4), roles, member_role_ids=[7])
    assert limits.user_limit == 1


def test_role_concurrency_takes_the_highest() -> None:
    roles = {1: LimitOverride(concurrency=2), 2: LimitOverride(concurrency=3), 3: LimitOverride()}
    limits = effective_limits(DEFAULTS, None, roles, member_role_ids=[1, 2, 3])
    assert limits.concurrency == 3
    assert limits.user_limit == DEFAULTS.user_limit  # concurrency-only roles leave the count


def test_user_override_beats_roles_even_when_stricter() -> None:
    roles = {1: LimitOverride(user_limit=50, concurrency=4)}
    user = LimitOverride(user_limit=1)
    limits = effective_limits(DEFAULTS, None, roles, [1], user_override=user)
    assert (limits.user_limit, limits.source) == (1, "user")
    assert limits.concurrency == 4  # fields the user override leaves unset still come from roles


def test_exempt_role_has_no_count_limit_but_keeps_concurrency_and_guild_caps() -> None:
    limits = effective_limits(
        DEFAULTS, GuildLimits(daily_limit=2), None, member_role_ids=[9], exempt_role_ids=[9]
    )
    assert limits.exempt
    many = tuple(NOW - i for i in range(1, 100))
    full = UsageSnapshot(user_window=window(many, NOW, None))
    assert isinstance(decide(limits, full, NOW), Allowed)
    busy = decide(limits, UsageSnapshot(in_flight_job_ids=(5,)), NOW)
    assert isinstance(busy, Refusal)
    assert busy.kind == "concurrency"
    capped = decide(limits, UsageSnapshot(guild_day=window((NOW - 2, NOW - 1), NOW, 2)), NOW)
    assert isinstance(capped, Refusal)
    assert capped.kind == "guild_daily"


def test_user_override_limit_beats_an_exempt_role() -> None:
    limits = effective_limits(
        DEFAULTS, None, None, [9], exempt_role_ids=[9], user_override=LimitOverride(user_limit=2)
    )
    assert limits.user_limit == 2


def test_exempt_member_flag() -> None:
    assert effective_limits(DEFAULTS, exempt_member=True).exempt


def test_block_beats_everything_including_exemption() -> None:
    limits = effective_limits(DEFAULTS, None, None, [9], exempt_role_ids=[9])
    block = Block(guild_id=1, user_id=2, reason="spam", blocked_by=3, created_at=NOW)
    decision = decide(limits, UsageSnapshot(block=block), NOW)
    assert decision == Refusal(kind="blocked", reason="spam")
    assert render_refusal(decision) == "You are not allowed to use /veo here (spam)"
    assert render_refusal(Refusal(kind="blocked")) == "You are not allowed to use /veo here"


def test_released_reservations_are_not_in_the_snapshot_so_a_refund_frees_a_slot() -> None:
    # The store leaves released rows out of `user_window`; two left after one refund.
    limits = effective_limits(DEFAULTS)
    usage = UsageSnapshot(user_window=window((NOW - 3, NOW - 2), NOW, 3))
    assert isinstance(decide(limits, usage, NOW), Allowed)


def test_guild_daily_cap_is_rolling_24h() -> None:
    limits = effective_limits(DEFAULTS, GuildLimits(daily_limit=2))
    times = (NOW - 23 * HOUR, NOW - HOUR)
    refusal = decide(limits, UsageSnapshot(guild_day=window(times, NOW, 2)), NOW)
    assert isinstance(refusal, Refusal)
    assert refusal.kind == "guild_daily"
    assert refusal.next_free_at == NOW + HOUR
    assert render_refusal(refusal).startswith("This server's daily limit is reached")
    later = UsageSnapshot(guild_day=window(times, NOW + HOUR, 2))
    assert isinstance(decide(limits, later, NOW + HOUR), Allowed)


def test_global_daily_cap() -> None:
    limits = effective_limits(LimitDefaults(global_daily_limit=1))
    refusal = decide(limits, UsageSnapshot(global_day=window((NOW - 10,), NOW, 1)), NOW)
    assert isinstance(refusal, Refusal)
    assert refusal.kind == "global_daily"
    assert "bot's daily limit" in render_refusal(refusal)


def test_spend_cap_counts_this_jobs_estimate() -> None:
    limits = effective_limits(LimitDefaults(daily_spend_cap=4.0, price_per_job=0.8))
    # $3.20 spent + $0.80 = $4.00: exactly at the cap is allowed (despite float rounding).
    assert isinstance(decide(limits, UsageSnapshot(global_spend=0.8 * 4), NOW), Allowed)
    refusal = decide(limits, UsageSnapshot(global_spend=3.5), NOW)
    assert refusal == Refusal(kind="spend_cap", limit=4.0, spent=3.5)
    assert render_refusal(refusal) == "Today's video budget is spent — try again later"
    # A cheaper job (4 s, 720p) may still fit.
    assert isinstance(decide(limits, UsageSnapshot(global_spend=3.5), NOW, 0.4), Allowed)


def test_guild_spend_cap() -> None:
    limits = effective_limits(DEFAULTS, GuildLimits(spend_cap=1.0))
    refusal = decide(limits, UsageSnapshot(guild_spend=0.8), NOW)
    assert isinstance(refusal, Refusal)
    assert refusal.kind == "guild_spend_cap"
    assert "server's video budget" in render_refusal(refusal)


@pytest.mark.parametrize(("used", "cap", "allowed"), [(0, 3, True), (2, 3, True), (3, 3, False)])
def test_blocked_prompt_refund_cap(used: int, cap: int, allowed: bool) -> None:
    assert blocked_refund_allowed(used, cap) is allowed


def test_render_user_window_matches_the_spec_wording() -> None:
    refusal = Refusal(
        kind="user_window", used=3, limit=3, window_hours=24.0, next_free_at=1_700_000_000.0
    )
    assert render_refusal(refusal) == (
        "You have used 3 of 3 videos in the last 24 h — next one <t:1700000000:R>"
    )
    # A fractional moment rounds up so "next one" is never shown as already past.
    later = Refusal(kind="user_window", used=1, limit=1, window_hours=1.5, next_free_at=10.2)
    assert (
        render_refusal(later) == "You have used 1 of 1 videos in the last 1.5 h — next one <t:11:R>"
    )


DECEMBER_1 = 1_701_388_800.0  # 2023-12-01 00:00 UTC; NOW is 2023-11-14 22:13 UTC


def test_monthly_spend_cap_frees_on_the_first_of_next_month() -> None:
    limits = effective_limits(LimitDefaults(monthly_spend_cap=20.0))
    assert isinstance(decide(limits, UsageSnapshot(global_month_spend=18.8), NOW, 1.2), Allowed)
    refusal = decide(limits, UsageSnapshot(global_month_spend=19.0), NOW, 1.2)
    assert refusal == Refusal(
        kind="monthly_spend_cap", limit=20.0, spent=19.0, next_free_at=DECEMBER_1
    )
    assert render_refusal(refusal) == (
        "The bot's video budget for this month is spent — it renews on 1 December 2023 (UTC), "
        "<t:1701388800:R>"
    )


def test_the_daily_caps_are_checked_before_the_monthly_ones() -> None:
    limits = effective_limits(LimitDefaults(daily_spend_cap=5.0, monthly_spend_cap=20.0))
    usage = UsageSnapshot(global_spend=5.0, global_month_spend=20.0)
    refusal = decide(limits, usage, NOW, 0.4)
    assert isinstance(refusal, Refusal) and refusal.kind == "spend_cap"


def test_guild_monthly_budget_is_the_moderators_up_to_the_owners_maximum() -> None:
    owner_max = LimitDefaults(guild_monthly_budget_max=10.0)
    assert effective_limits(owner_max, GuildLimits(monthly_budget=4.0)).guild_monthly_budget == 4.0
    # Set before the owner lowered the maximum: the maximum wins.
    assert effective_limits(owner_max, GuildLimits(monthly_budget=25.0)).guild_monthly_budget == 10
    # A server that set none gets the owner's maximum; without a maximum, no budget.
    assert effective_limits(owner_max).guild_monthly_budget == 10.0
    assert effective_limits(DEFAULTS).guild_monthly_budget is None
    assert budget_over_max(10.01, owner_max) and not budget_over_max(10.0, owner_max)
    assert not budget_over_max(1e6, DEFAULTS) and not budget_over_max(None, owner_max)

    limits = effective_limits(owner_max, GuildLimits(monthly_budget=4.0))
    refusal = decide(limits, UsageSnapshot(guild_month_spend=3.5), NOW, 0.8)
    assert isinstance(refusal, Refusal)
    assert (refusal.kind, refusal.limit, refusal.next_free_at) == (
        "guild_monthly_budget",
        4.0,
        DECEMBER_1,
    )
    assert render_refusal(refusal).startswith(
        "This server's video budget for this month is spent — it renews on 1 December 2023"
    )


def test_month_boundaries_in_utc() -> None:
    assert month_start(NOW) == 1_698_796_800.0  # 2023-11-01 00:00 UTC
    assert next_month_start(NOW) == DECEMBER_1
    assert next_month_start(DECEMBER_1) == 1_704_067_200.0  # December rolls into January
    assert month_start(DECEMBER_1 - 0.5) == month_start(NOW)


def test_monthly_settings_reach_the_defaults() -> None:
    settings = load_settings(
        env_file=None, veo_monthly_spend_cap=300, veo_guild_monthly_budget_max=50
    )
    defaults = LimitDefaults.from_settings(settings)
    assert (defaults.monthly_spend_cap, defaults.guild_monthly_budget_max) == (300, 50)
    # The quote of options never billed: the top of Segmind's published range.
    assert defaults.price_per_job == 1.20


def test_a_rolling_spend_cap_says_when_enough_rolls_off() -> None:
    rows = [(NOW - 5 * HOUR, 1.0), (NOW - 2 * HOUR, 0.6), (NOW, 0.4)]
    assert spend_frees_at(rows, 2.0, 1.0, 2.0) == NOW - 5 * HOUR + DAY_SECONDS
    assert spend_frees_at(rows, 2.0, 1.2, 2.0) == NOW - 2 * HOUR + DAY_SECONDS
    assert spend_frees_at(rows, 2.0, 2.5, 2.0) is None  # the job alone is over the cap
    refusal = Refusal(kind="spend_cap", limit=2.0, spent=2.0, next_free_at=NOW + 60)
    assert render_refusal(refusal) == (
        "Today's video budget is spent — enough frees up <t:1700000060:R>, as the last 24 "
        "hours move on"
    )
    guild = Refusal(kind="guild_spend_cap", limit=2.0, spent=2.0, next_free_at=NOW + 60)
    assert render_refusal(guild).startswith(
        "This server's video budget for today is spent — enough"
    )
