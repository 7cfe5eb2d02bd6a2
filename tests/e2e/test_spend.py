"""`/veo-admin spend` and the balance watch through Discord, in one bot process: the report
with its chart after a delivered video, moderators only, and the owner's credits running low
and out — told once each in the log channel, and `/veo` paused at once."""

from __future__ import annotations

import pytest

from bot.segmind.fake import FakeSegmind
from harness.bot_process import BotProcess
from harness.discord_emulator import DiscordEmulator
from tests.e2e.helpers import content_of, final_for, private_answer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHECK = "Segmind balance \\$"  # the watch logs every check: the test waits on checks, not time


def _log_posts(emu: DiscordEmulator, channel_id: int) -> list[str]:
    return [
        content_of(r)
        for r in emu.requests("POST /channels/{channel_id}/messages")
        if r.params.get("channel_id") == str(channel_id) and r.status == 200
    ]


@pytest.mark.bot_env({"VEO_BALANCE_CHECK_SECONDS": "0.2", "VEO_BALANCE_WARN_VIDEOS": "5"})
async def test_spend_report_chart_and_the_balance_running_out(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    log_channel = emu.guild.add_text_channel("veo-log")
    await emu.announce_channel_create(log_channel.id)
    handle = await emu.dispatch_slash_command(
        "veo-admin limits log-channel", {"channel": log_channel}, user=emu.moderator
    )
    await handle.wait_for_callback()

    # One delivered video, billed by the fake.
    made = await emu.dispatch_slash_command("veo", {"prompt": "a lighthouse"}, user=emu.member)
    await made.wait_for_callback()
    assert len((await final_for(emu, made.token)).files) == 1
    await bot.settled(1)
    cost = next(iter(fake.jobs.values())).cost
    assert cost

    # A moderator's report: the billed figure, the top member, a PNG chart in the embed.
    report = await emu.dispatch_slash_command("veo-admin spend", {}, user=emu.moderator)
    await report.wait_for_callback()
    answer = await emu.wait_for(
        lambda r: r.params.get("interaction_token") == report.token and bool(r.files)
    )
    assert answer.status == 200 and not answer.violations
    (chart,) = answer.files
    assert chart.data.startswith(PNG_MAGIC) and len(chart.data) > 10_000
    body = answer.json
    assert body["flags"] & 64  # private to the moderator
    assert body["allowed_mentions"]["parse"] == []
    (embed,) = body["embeds"]
    assert f"Billed by Segmind:** ${cost:.2f} in the last 30 day(s)" in embed["description"]
    assert embed["image"]["url"] == f"attachment://{chart.filename}"
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert f"<@{emu.member.id}>" in fields["Top members"]
    assert f"${cost:.2f} billed" in fields["Per day (UTC)"]
    assert "Segmind balance" in " ".join(fields)
    assert "Segmind's record matches" in fields["Disagreements with Segmind's record"]

    # A member cannot read it, even where the command is visible.
    refused = await emu.dispatch_slash_command("veo-admin spend", {}, user=emu.member)
    callback = await refused.wait_for_callback()
    assert "Manage Server" in (callback.json or {})["data"]["content"]

    # The owner's credits get low: one warning with a forecast, however many checks follow.
    checks = len([line for line in bot.lines if "Segmind balance $" in line])
    fake.credits = 2.5 * cost  # about two videos left, under the warning level of five
    low = await emu.wait_for(
        lambda r: (
            r.params.get("channel_id") == str(log_channel.id) and "running low" in content_of(r)
        )
    )
    assert "about 2 videos" in content_of(low) and "this week's pace" in content_of(low)
    await bot.wait_for_log(CHECK, regex=True, count=checks + 4)
    assert [p for p in _log_posts(emu, log_channel.id) if "Segmind credits" in p] == [
        content_of(low)
    ]

    # And out: one more message, and /veo refuses at once, privately, before any submit.
    fake.credits = 0.0
    await emu.wait_for(
        lambda r: (
            r.params.get("channel_id") == str(log_channel.id) and "credits ran out" in content_of(r)
        )
    )
    paused = await emu.dispatch_slash_command("veo", {"prompt": "one more"}, user=emu.member)
    await paused.wait_for_callback()
    told = await private_answer(emu, paused.token)
    assert told.ephemeral
    assert "Video generation is paused" in told.content and "credits ran out" in told.content
    # Refused before reserving: no POST reached Segmind at all (a 406 would be one).
    assert sum(1 for r in fake.requests if r.route == "submit") == 1

    # Topped up: the next check lifts the pause by itself.
    fake.credits = 50.0
    await emu.wait_for(
        lambda r: (
            r.params.get("channel_id") == str(log_channel.id)
            and "takes requests again" in content_of(r)
        )
    )
    again = await emu.dispatch_slash_command("veo", {"prompt": "after top-up"}, user=emu.member)
    await again.wait_for_callback()
    assert len((await final_for(emu, again.token)).files) == 1
    assert len(fake.submits) == 2
    posts = [p for p in _log_posts(emu, log_channel.id) if "Segmind credits" in p]
    assert len(posts) == 3, posts
