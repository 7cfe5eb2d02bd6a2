"""`/veo` under load, with bad input, and with every Segmind failure class."""

from __future__ import annotations

import asyncio

import pytest

from bot.segmind.fake import FakeSegmind, Fault
from harness.bot_process import BotProcess
from harness.discord_emulator import DiscordEmulator
from tests.e2e.helpers import final_for, private_answer


async def test_ten_users_at_once_all_get_their_videos(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    users = [emu.add_user(f"member{n}") for n in range(10)]
    for user in users:
        emu.guild.add_member(user)
    handles = await asyncio.gather(
        *(
            emu.dispatch_slash_command("veo", {"prompt": f"video number {n}"}, user=user)
            for n, user in enumerate(users)
        )
    )
    finals = await asyncio.gather(*(final_for(emu, h.token, timeout=60) for h in handles))
    for user, final in zip(users, finals, strict=True):
        assert len(final.files) == 1, final.json
        assert f"<@{user.id}>" in final.json["content"]
    assert sorted(b["prompt"] for b in fake.submits) == sorted(
        f"video number {n}" for n in range(10)
    )
    # The bot-wide cap (VEO_MAX_CONCURRENT_JOBS, default 4) held at Segmind.
    assert fake.max_in_flight <= 4


async def test_blank_prompt_is_refused_privately_and_nothing_is_submitted(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    handle = await emu.dispatch_slash_command("veo", {"prompt": "   "}, user=emu.member)
    await handle.wait_for_callback()
    answer = await private_answer(emu, handle.token)
    assert answer.ephemeral
    assert "prompt is empty" in answer.content
    assert handle.original_message().deleted  # the public "thinking…" is gone
    assert fake.submits == []


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (Fault(status=401, body={"error": "Invalid API key"}), "key was refused"),
        (Fault(status=500, body={"error": "Internal Server Error"}), "cannot be reached"),
        (Fault(status=400, body={"error": "Invalid value for fps"}), "fps"),
        (Fault(status=410, body={"error": "Model deprecated"}), "no longer offered"),
    ],
    ids=["auth", "server-error", "bad-request", "model-gone"],
)
async def test_submit_failures_are_explained_and_not_charged(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess, fault: Fault, expected: str
) -> None:
    fake.inject("submit", fault, times=10)
    handle = await emu.dispatch_slash_command("veo", {"prompt": "a lighthouse"}, user=emu.member)
    await handle.wait_for_callback()
    final = await final_for(emu, handle.token)
    content = final.json["content"]
    assert content.startswith("❌")
    assert expected in content
    assert "Traceback" not in content
    assert fake.submits == []
    # The failed job did not use up the member's quota: the next one goes through.
    fake.clear_faults()
    again = await emu.dispatch_slash_command("veo", {"prompt": "a lighthouse"}, user=emu.member)
    await again.wait_for_callback()
    assert len((await final_for(emu, again.token)).files) == 1


async def test_rate_limited_submit_waits_for_the_reset_then_succeeds(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    fake.inject(
        "submit",
        Fault(status=429, body={"error": "Too many requests"}, headers={"Retry-After": "0.2"}),
        times=2,
    )
    handle = await emu.dispatch_slash_command("veo", {"prompt": "a comet"}, user=emu.member)
    await handle.wait_for_callback()
    final = await final_for(emu, handle.token)
    assert len(final.files) == 1
    assert len(fake.submits) == 1  # one billed job; the 429s were never billed
