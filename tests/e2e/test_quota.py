"""Limits and moderation through Discord: windows, refunds, moderators only, export, the queue."""

from __future__ import annotations

import asyncio
import csv
import io
import re

import pytest

from bot.segmind.fake import FakeSegmind
from harness.bot_process import BotProcess
from harness.discord_emulator import DiscordEmulator, User
from tests.e2e.helpers import content_of, edits_for, final_for, private_answer


async def _make(emu: DiscordEmulator, bot: BotProcess, prompt: str, user: User) -> str:
    """One video, waited for until the bot has recorded it (not just shown it)."""
    handle = await emu.dispatch_slash_command("veo", {"prompt": prompt}, user=user)
    await handle.wait_for_callback()
    final = await final_for(emu, handle.token)
    bot.made += 1
    await bot.settled(bot.made)
    return str(final.json["content"])


async def test_fourth_video_in_the_window_is_refused_and_a_failed_one_does_not_count(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    failed = await _make(emu, bot, "[fake:fail] a storm", emu.member)
    assert failed.startswith("❌")
    for n in range(3):
        assert "ready" in await _make(emu, bot, f"calm sea {n}", emu.member)

    handle = await emu.dispatch_slash_command("veo", {"prompt": "one more"}, user=emu.member)
    await handle.wait_for_callback()
    answer = await private_answer(emu, handle.token)
    assert answer.ephemeral
    assert re.search(
        r"You have used 3 of 3 videos in the last 24 h — next one <t:\d+:R>", answer.content
    ), answer.content
    assert len(fake.submits) == 4  # the refused one never reached Segmind


async def test_admin_commands_refuse_non_moderators_even_if_visible(
    emu: DiscordEmulator, bot: BotProcess
) -> None:
    # Discord hides the command from members by default_member_permissions, but a server
    # owner can clear that; the emulator dispatches it anyway, as Discord would then.
    handle = await emu.dispatch_slash_command("veo-admin usage", {}, user=emu.member)
    callback = await handle.wait_for_callback()
    body = callback.json or {}
    text = body.get("data", {}).get("content", "")
    assert "Manage Server" in text
    assert body["data"]["flags"] & 64  # ephemeral
    synced = await emu.wait_for_command("veo-admin")
    assert int(synced["default_member_permissions"]) == 1 << 5  # MANAGE_GUILD


@pytest.mark.bot_env({"VEO_USER_CONCURRENCY": "5", "VEO_USER_LIMIT": "10"})
async def test_export_is_a_csv_whose_rows_match_the_jobs(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    prompts = ['a "quoted", comma prompt', "=HYPERLINK(1)", "[fake:fail] broken"]
    for prompt in prompts:
        await _make(emu, bot, prompt, emu.member)
    handle = await emu.dispatch_slash_command("veo-admin export", {"days": 7}, user=emu.moderator)
    await handle.wait_for_callback()
    record = await emu.wait_for(
        lambda r: r.params.get("interaction_token") == handle.token and bool(r.files)
    )
    rows = list(csv.DictReader(io.StringIO(record.files[0].data.decode())))
    assert [r["prompt"] for r in rows] == [prompts[0], "'=HYPERLINK(1)", prompts[2]]
    assert [r["state"] for r in rows] == ["delivered", "delivered", "failed"]
    assert {r["user_id"] for r in rows} == {str(emu.member.id)}
    assert [r["segmind_request_id"] for r in rows[:2]] == [
        j.request_id for j in fake.jobs.values()
    ][:2]
    assert rows[0]["ledger"] == "charged"
    assert rows[2]["ledger"] == "released"


async def test_usage_reports_counts_and_cost(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    await _make(emu, bot, "a quiet forest", emu.member)
    handle = await emu.dispatch_slash_command(
        "veo-admin usage", {"user": emu.member}, user=emu.moderator
    )
    await handle.wait_for_callback()
    answer = await private_answer(emu, handle.token)
    assert "Jobs: 1 · delivered 1" in answer.content
    cost = next(iter(fake.jobs.values())).cost
    assert f"${cost:.2f}" in answer.content


@pytest.mark.bot_env({"VEO_MAX_CONCURRENT_JOBS": "2"})
async def test_bot_queue_caps_jobs_at_segmind_and_positions_count_down(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    users = [emu.add_user(f"queued{n}") for n in range(5)]
    for user in users:
        emu.guild.add_member(user)
    handles = []
    for n, user in enumerate(users):
        handle = await emu.dispatch_slash_command(
            "veo", {"prompt": f"[fake:slow=1] clip {n}"}, user=user
        )
        await handle.wait_for_callback()
        handles.append(handle)
    finals = await asyncio.gather(*(final_for(emu, h.token, timeout=60) for h in handles))
    assert all(len(f.files) == 1 for f in finals)
    assert fake.max_in_flight <= 2
    assert len(fake.submits) == 5

    def positions(token: str) -> list[int]:
        shown = [
            re.search(r"(\d+)(?:st|nd|rd|th) in line", content_of(r)) for r in edits_for(emu, token)
        ]
        return [int(m.group(1)) for m in shown if m]

    seen = [positions(h.token) for h in handles]
    for shown in seen:
        assert shown == sorted(shown, reverse=True), seen  # only ever moves forward
    assert seen[4][:1] == [3], seen  # the fifth started 3rd in line…
    assert 1 in seen[4], seen  # …and reached the front before it was sent


async def _admin(emu: DiscordEmulator, command: str, options: dict[str, object]) -> str:
    handle = await emu.dispatch_slash_command(command, options, user=emu.moderator)
    callback = await handle.wait_for_callback()
    data = (callback.json or {}).get("data", {})
    if data.get("content"):  # answered directly
        assert data["flags"] & 64
        return str(data["content"])
    return (await private_answer(emu, handle.token)).content


async def _refusal(emu: DiscordEmulator, user: User) -> str:
    handle = await emu.dispatch_slash_command("veo", {"prompt": "please"}, user=user)
    await handle.wait_for_callback()
    return (await private_answer(emu, handle.token)).content


async def test_moderator_sets_limits_blocks_resets_and_every_change_is_audited(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    saved = await _admin(emu, "veo-admin limits set", {"videos": 1, "window_hours": 12.0})
    assert "1 videos per 12 h" in saved
    assert "ready" in await _make(emu, bot, "first", emu.member)
    refused = await _refusal(emu, emu.member)
    assert "You have used 1 of 1 videos in the last 12 h" in refused

    await _admin(emu, "veo-admin reset", {"user": emu.member})
    assert "ready" in await _make(emu, bot, "after reset", emu.member)

    await _admin(emu, "veo-admin block", {"user": emu.member, "reason": "spam"})
    assert "You are not allowed to use /veo here (spam)" in await _refusal(emu, emu.member)
    await _admin(emu, "veo-admin unblock", {"user": emu.member})
    assert "1 of 1" in await _refusal(emu, emu.member)  # unblocked, back to the window

    shown = await _admin(emu, "veo-admin limits show", {})
    assert "1 (server) videos per 12.0 (server) h" in shown
    audit = await _admin(emu, "veo-admin audit", {})
    for action in ("limits.set", "window.reset", "block", "unblock"):
        assert f"**{action}**" in audit, audit
    assert "user limit default → 1" in audit
    assert f"**block** <@{emu.member.id}>, reason: spam" in audit
    assert audit.count(f"<@{emu.moderator.id}>") >= 4
    assert len(fake.submits) == 2


async def test_role_override_most_generous_role_wins(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    vip = emu.guild.add_role("vip")
    member = emu.guild.members[emu.member.id]
    member.role_ids.append(vip.id)
    await _admin(emu, "veo-admin limits set", {"videos": 1})
    await _admin(emu, "veo-admin limits role", {"role": vip, "videos": 2})
    assert "ready" in await _make(emu, bot, "one", emu.member)
    assert "ready" in await _make(emu, bot, "two", emu.member)
    assert "2 of 2" in await _refusal(emu, emu.member)


async def test_log_channel_gets_one_line_per_finished_job(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    log_channel = emu.guild.add_text_channel("veo-log")
    await emu.announce_channel_create(log_channel.id)
    saved = await _admin(emu, "veo-admin limits log-channel", {"channel": log_channel})
    assert f"<#{log_channel.id}>" in saved

    failed = await _make(emu, bot, "[fake:fail] storm", emu.member)
    assert "This does not count against your limit." in failed
    await _make(emu, bot, "calm", emu.member)

    posts = await emu.wait_for(
        lambda r: (
            r.route == "POST /channels/{channel_id}/messages"
            and r.params.get("channel_id") == str(log_channel.id)
            and "delivered" in content_of(r)
        )
    )
    lines = [
        content_of(m)
        for m in emu.requests("POST /channels/{channel_id}/messages")
        if m.params.get("channel_id") == str(log_channel.id)
    ]
    assert len(lines) == 2, lines
    assert "**failed**" in lines[0] and "refunded" in lines[0] and "storm" in lines[0]
    assert "**delivered**" in lines[1] and "$0.60" in lines[1]
    assert posts.json["allowed_mentions"]["parse"] == []  # names the member, pings nobody


async def test_log_channel_the_bot_cannot_see_gets_a_clear_answer(
    emu: DiscordEmulator, bot: BotProcess
) -> None:
    hidden = emu.guild.add_text_channel("secret")  # never announced: not in the bot's view
    answer = await _admin(emu, "veo-admin limits log-channel", {"channel": hidden})
    assert "View Channel and Send Messages" in answer
    assert "went wrong" not in answer


async def test_double_click_is_refused_with_a_link_to_the_job_in_progress(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    first = await emu.dispatch_slash_command(
        "veo", {"prompt": "[fake:slow=2] a slow one"}, user=emu.member
    )
    await first.wait_for_callback()
    await bot.wait_for_log("job 1 queued")
    refused = await _refusal(emu, emu.member)
    placeholder = first.original_message()
    assert "One video at a time — yours is still generating" in refused
    link = f"https://discord.com/channels/{emu.guild.id}/{emu.channel.id}/{placeholder.id}"
    assert f"([see it]({link}))" in refused
    assert len((await final_for(emu, first.token)).files) == 1
    assert len(fake.submits) == 1


async def test_quota_command_shows_usage_privately_and_follows_role_overrides(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    async def quota() -> str:
        handle = await emu.dispatch_slash_command("veo-quota", {}, user=emu.member)
        await handle.wait_for_callback()
        answer = await private_answer(emu, handle.token)
        assert answer.ephemeral
        return answer.content

    assert "You have used **0 of 3** videos in the last 24 h." in await quota()
    assert "You can start a video now" in await quota()
    await _make(emu, bot, "one", emu.member)
    assert "**1 of 3**" in await quota()

    vip = emu.guild.add_role("vip")  # created after start-up: not in the bot's role cache
    emu.guild.members[emu.member.id].role_ids.append(vip.id)
    await _admin(emu, "veo-admin limits role", {"role": vip, "videos": 1})
    shown = await quota()
    assert "**1 of 1**" in shown
    assert re.search(r"Right now: You have used 1 of 1 videos .* next one <t:\d+:R>\.", shown)
