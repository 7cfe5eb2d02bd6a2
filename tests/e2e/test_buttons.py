"""Buttons end to end: Cancel while queued, and Again / Edit prompt / Delete pressed on a video
the *previous* bot process delivered (DynamicItem: the job id lives in the custom_id)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.segmind.fake import FakeSegmind
from harness.bot_process import BotProcess, job_states, ledger, messages_with_video, wait_until
from harness.discord_emulator import DiscordEmulator, InteractionHandle, StoredMessage

JOB_TIMEOUT = 40.0
SETTLED = r"job \d+ (delivered|failed|expired|unknown|cancelled)\b"


@pytest.fixture
async def proc(
    emu: DiscordEmulator, fake: FakeSegmind, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[BotProcess]:
    marker = request.node.get_closest_marker("bot_env")
    env = {"VEO_USER_CONCURRENCY": "5", "VEO_USER_LIMIT": "20"}
    env.update(marker.args[0] if marker else {})
    process = BotProcess(emu, fake, tmp_path, env)
    await process.start()
    await emu.wait_for_command("veo")
    yield process
    assert await process.stop() == 0, process.tail()
    emu.assert_no_violations()


def _custom_ids(message: StoredMessage) -> list[str]:
    found: list[str] = []

    def walk(components: list[dict[str, Any]]) -> None:
        for component in components:
            if "custom_id" in component:
                found.append(component["custom_id"])
            walk(component.get("components", []))

    walk(message.components)
    return found


async def _private_text(emu: DiscordEmulator, handle: InteractionHandle) -> str:
    record = await emu.wait_for(
        lambda r: (
            r.params.get("interaction_token") == handle.token
            and r.method in ("POST", "PATCH")
            and r.status in (200, 204)
            and bool((r.json or {}).get("content") or (r.json or {}).get("data", {}).get("content"))
        )
    )
    body = record.json or {}
    return str(body.get("content") or body.get("data", {}).get("content"))


@pytest.mark.bot_env({"VEO_MAX_CONCURRENT_JOBS": "1"})
async def test_cancel_while_queued_refunds_and_nothing_reaches_segmind(
    emu: DiscordEmulator, fake: FakeSegmind, proc: BotProcess, tmp_path: Path
) -> None:
    first = await emu.dispatch_slash_command(
        "veo", {"prompt": "ahead [fake:slow=2]"}, user=emu.owner
    )
    await first.wait_for_callback()
    waiting = await emu.dispatch_slash_command("veo", {"prompt": "behind"}, user=emu.member)
    await waiting.wait_for_callback()
    assert waiting.original_message_id is not None
    await emu.wait_for(
        lambda r: (
            r.params.get("interaction_token") == waiting.token
            and "1st in line" in str((r.json or {}).get("content", ""))
        ),
        timeout=JOB_TIMEOUT,
    )
    placeholder = emu.message(waiting.original_message_id)
    assert _custom_ids(placeholder) == ["veo:cancel:2"]

    # Someone else may not cancel it.
    stranger = emu.add_user("stranger")
    emu.guild.add_member(stranger)
    refused = await emu.dispatch_component("veo:cancel:2", placeholder, user=stranger)
    assert "Only the person who asked" in await _private_text(emu, refused)
    assert job_states(tmp_path)[2] == "queued"

    press = await emu.dispatch_component("veo:cancel:2", placeholder, user=emu.member)
    await proc.wait_for_log("job 2 cancelled")
    await emu.wait_for(
        lambda r: (
            r.params.get("interaction_token") == press.token
            and r.method == "PATCH"
            and "Cancelled" in str((r.json or {}).get("content", ""))
        )
    )
    assert "Cancelled" in placeholder.content
    assert _custom_ids(placeholder) == []
    assert ledger(tmp_path)[2] == "released"

    # The first job finishes; the cancelled one never reached Segmind.
    await proc.wait_for_log("job 1 delivered", timeout=JOB_TIMEOUT)
    assert [s["prompt"] for s in fake.submits] == ["ahead [fake:slow=2]"]
    assert job_states(tmp_path) == {1: "delivered", 2: "cancelled"}
    # Once Veo is making a job it offers no Cancel, and the text says why.
    generating = [
        r.json
        for r in emu.timeline
        if r.params.get("interaction_token") == first.token
        and "Generating" in str((r.json or {}).get("content", ""))
    ]
    assert generating
    assert all("can no longer be cancelled" in body["content"] for body in generating)
    assert all(body.get("components") == [] for body in generating)


async def test_buttons_on_a_video_work_after_a_restart(
    emu: DiscordEmulator, fake: FakeSegmind, proc: BotProcess, tmp_path: Path
) -> None:
    handle = await emu.dispatch_slash_command(
        "veo", {"prompt": "a paper boat", "duration": 4}, user=emu.member
    )
    await handle.wait_for_callback()
    await proc.wait_for_log("job 1 delivered", timeout=JOB_TIMEOUT)
    (video,) = messages_with_video(emu, 1)
    assert _custom_ids(video) == ["veo:again:1", "veo:edit:1", "veo:delete:1"]

    # The edit form is opened before the restart and submitted after it.
    edit = await emu.dispatch_component("veo:edit:1", video, user=emu.member)
    await edit.wait_for_callback()
    assert edit.callback_type == 9
    assert "a paper boat" in str(edit.modal)

    await proc.kill()  # a new process answers every press below
    await proc.start()

    # Again: same parameters, a new seed, through the same flow (deferred first).
    again = await emu.dispatch_component("veo:again:1", video, user=emu.member)
    await again.wait_for_callback()
    assert again.callback_type == 5
    await proc.wait_for_log("job 2 delivered", timeout=JOB_TIMEOUT)
    first, second = fake.submits
    assert second["prompt"] == first["prompt"] and second["duration"] == 4
    assert second["seed"] != first["seed"]

    # Edit prompt: the form pre-filled with the old prompt, sent after the restart: a new job.
    submitted = await emu.dispatch_modal_submit(
        "veo:edit-modal:1", {"prompt": "a paper boat in a storm"}, user=emu.member
    )
    await submitted.wait_for_callback()
    assert submitted.callback_type == 5
    await proc.wait_for_log("job 3 delivered", timeout=JOB_TIMEOUT)
    assert fake.submits[2]["prompt"] == "a paper boat in a storm"
    assert fake.submits[2]["duration"] == 4

    # Delete: not by another member; by a moderator (Manage Server), yes.
    stranger = emu.add_user("stranger")
    emu.guild.add_member(stranger)
    refused = await emu.dispatch_component("veo:delete:1", video, user=stranger)
    assert "Only the person who asked" in await _private_text(emu, refused)
    assert not video.deleted
    await emu.dispatch_component("veo:delete:1", video, user=emu.moderator)
    await wait_until(lambda: video.deleted, what="the video message to be deleted")
    assert set(ledger(tmp_path).values()) == {"charged"}
