"""The owner's money through Discord: a video Segmind billed but the member never got is given
back to the member and still counted against the owner's spend cap; the placeholder shows
what each video is counted at."""

from __future__ import annotations

import pytest

from bot.segmind.fake import FakeSegmind, Fault
from harness.bot_process import BotProcess
from harness.discord_emulator import DiscordEmulator
from tests.e2e.helpers import content_of, edits_for, final_for, private_answer


async def _make(emu: DiscordEmulator, bot: BotProcess, prompt: str) -> tuple[str, list[str]]:
    """One video as the member asks for it: the last word, and every edit before it."""
    handle = await emu.dispatch_slash_command("veo", {"prompt": prompt}, user=emu.member)
    await handle.wait_for_callback()
    final = await final_for(emu, handle.token)
    bot.made += 1
    await bot.settled(bot.made)
    return content_of(final), [content_of(r) for r in edits_for(emu, handle.token)]


# The fake bills $0.60 a video. The first is quoted at $1.20 (nothing billed yet), later ones
# at the $0.60 learned: $1.50 lets the undelivered one and one more fit, never a third.
@pytest.mark.bot_env(
    {"VEO_DAILY_SPEND_CAP": "1.50", "VEO_USER_LIMIT": "10", "VEO_GUILD_MONTHLY_BUDGET_MAX": "50"}
)
async def test_a_billed_undelivered_video_is_refunded_but_counts_against_the_owners_cap(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    fake.inject("output", Fault(status=404))  # made and billed, but the file cannot be fetched
    lost, edits = await _make(emu, bot, "a fox that never arrives")
    assert lost.startswith("❌") and "does not count against your limit" in lost
    assert any("≈ $1.20, the most Segmind bills for these options" in e for e in edits), edits

    delivered, edits = await _make(emu, bot, "a fox that arrives")
    assert "ready" in delivered
    assert any("about $0.60, from the last video with these options" in e for e in edits), edits

    # Refunded to the member (1 of 10 used), but the owner paid $1.20 of $1.50: no more fit.
    handle = await emu.dispatch_slash_command(
        "veo", {"prompt": "one fox too many"}, user=emu.member
    )
    await handle.wait_for_callback()
    answer = await private_answer(emu, handle.token)
    assert answer.ephemeral
    assert answer.content.startswith("Today's video budget is spent"), answer.content
    assert len(fake.submits) == 2  # the refused one never reached Segmind

    quota = await emu.dispatch_slash_command("veo-quota", {}, user=emu.member)
    await quota.wait_for_callback()
    view = await private_answer(emu, quota.token)
    assert "used **1 of 10**" in view.content, view.content

    # A moderator cannot give the server more than the owner allows, and sees the month's spend.
    too_much = await emu.dispatch_slash_command(
        "veo-admin limits set", {"monthly_budget": 80}, user=emu.moderator
    )
    callback = await too_much.wait_for_callback()
    refused = (callback.json or {}).get("data", {}).get("content", "")
    assert refused.startswith("Not saved: $80.00 a month is above"), refused
    show = await emu.dispatch_slash_command("veo-admin limits show", {}, user=emu.moderator)
    await show.wait_for_callback()
    limits = (await private_answer(emu, show.token)).content
    assert "Server budget per month (UTC): $50.00 (default)" in limits, limits
    assert "spent this month: $1.20" in limits, limits
