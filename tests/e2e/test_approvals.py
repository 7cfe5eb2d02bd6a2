"""The approval lane end to end: the real bot process, the Discord emulator and the Segmind
fake. One bot process serves the whole module (each test uses its own members, so their
limits never meet), and the lane is set up through `/veo-admin approvals on` as a
moderator would.

What people notice: a held request is not sent to Segmind until Approve; Deny (with a
reason) refunds and tells the member why, privately; two moderators pressing at once make
one decision; an undecided request lapses and is released; a member's press is refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bot.segmind.fake import FakeSegmind
from harness.bot_process import FAKE_KEY, BotProcess, db_rows, ledger, wait_until
from harness.discord_emulator import DiscordEmulator, InteractionHandle, StoredMessage
from harness.discord_emulator.world import Channel, User
from tests.e2e.helpers import final_for

pytestmark = pytest.mark.asyncio(loop_scope="module")

JOB_TIMEOUT = 40.0


@dataclass
class World:
    emu: DiscordEmulator
    fake: FakeSegmind
    proc: BotProcess
    workdir: Path
    mods: Channel  # the moderators' channel, where the cards go
    second_moderator: User

    def member(self, name: str) -> User:
        """A fresh member per test: nobody's limits carry over."""
        user = self.emu.add_user(name)
        self.emu.guild.add_member(user)
        return user


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    workdir = tmp_path_factory.mktemp("approvals")
    async with DiscordEmulator() as emu:
        mods = emu.guild.add_text_channel("mods")
        second = emu.add_user("moderator2")
        emu.guild.add_member(second, [emu.moderator_role])
        fake = FakeSegmind(api_key=FAKE_KEY, queue_seconds=0.1, processing_seconds=0.3)
        await fake.start(host="127.0.0.1", port=0)
        env = {"VEO_APPROVAL_SWEEP_SECONDS": "0.2", "VEO_USER_LIMIT": "5"}
        proc = BotProcess(emu, fake, workdir, env)
        try:
            await proc.start()
            await emu.wait_for_command("veo")
            made = World(emu, fake, proc, workdir, mods, second)
            await lane_on(made, expiry_minutes=60)
            yield made
            assert await proc.stop() == 0, proc.tail()
            emu.assert_no_violations()
        finally:
            if proc.proc is not None and proc.proc.returncode is None:
                await proc.kill()
            await fake.stop()


async def lane_on(world: World, **options: Any) -> None:
    handle = await world.emu.dispatch_slash_command(
        "veo-admin approvals on", {"channel": world.mods, **options}, user=world.emu.moderator
    )
    assert "Approvals**: on" in await private_text(world.emu, handle)


async def private_text(emu: DiscordEmulator, handle: InteractionHandle) -> str:
    """What the bot answered privately on an interaction (a message or an ephemeral one)."""
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


def job_id_of(handle: InteractionHandle, workdir: Path) -> int:
    assert handle.original_message_id is not None
    ((job_id,),) = db_rows(
        workdir,
        "SELECT id FROM jobs WHERE placeholder_message_id = ?",
        (handle.original_message_id,),
    )
    return int(job_id)  # type: ignore[call-overload]


async def card_of(world: World, job_id: int) -> StoredMessage:
    def find() -> StoredMessage | None:
        for message in world.emu.channel_messages(world.mods.id):
            if any(e.get("footer", {}).get("text") == f"job {job_id}" for e in message.embeds):
                return message
        return None

    await wait_until(lambda: find() is not None, what=f"the approval card of job {job_id}")
    card = find()
    assert card is not None
    return card


def state(world: World, job_id: int) -> str:
    ((value,),) = db_rows(world.workdir, "SELECT state FROM jobs WHERE id = ?", (job_id,))
    return str(value)


def submitted_prompts(world: World) -> list[str]:
    return [str(s["prompt"]) for s in world.fake.submits]


async def held_request(world: World, user: User, prompt: str) -> tuple[InteractionHandle, int]:
    handle = await world.emu.dispatch_slash_command("veo", {"prompt": prompt}, user=user)
    await handle.wait_for_callback()
    await world.emu.wait_for(
        lambda r: (
            r.params.get("interaction_token") == handle.token
            and "Waiting for a moderator" in str((r.json or {}).get("content", ""))
        )
    )
    return handle, job_id_of(handle, world.workdir)


async def test_nothing_reaches_segmind_until_approve_then_it_is_delivered(world: World) -> None:
    emu = world.emu
    member = world.member("asker")
    handle, job_id = await held_request(world, member, "a lighthouse @everyone in a storm")
    card = await card_of(world, job_id)
    assert state(world, job_id) == "awaiting_approval"
    assert "a lighthouse" not in " ".join(submitted_prompts(world))
    # The card: who asks, the quote, the escaped prompt, pinging nobody.
    assert f"<@{member.id}>" in card.content and "$1.20" in card.content
    (embed,) = card.embeds
    assert "a lighthouse" in embed["description"] and "@\u200beveryone" in embed["description"]
    assert card.allowed_mentions == {"parse": []}
    assert not card.mention_everyone and card.mentions == []
    assert "1 of 5 videos" in str(embed["fields"])

    # A member cannot approve it.
    refused = await emu.dispatch_component(f"veo:approve:{job_id}", card, user=member)
    assert "Only members with Manage Server" in await private_text(emu, refused)
    assert state(world, job_id) == "awaiting_approval"

    press = await emu.dispatch_component(f"veo:approve:{job_id}", card, user=emu.moderator)
    assert "Approved" in await private_text(emu, press)
    final = await final_for(emu, handle.token, timeout=JOB_TIMEOUT)
    assert "ready" in str((final.json or {}).get("content", ""))
    await world.proc.wait_for_log(f"job {job_id} delivered")
    assert submitted_prompts(world).count("a lighthouse @everyone in a storm") == 1
    assert ledger(world.workdir)[job_id] == "charged"
    assert "Approved" in card.content and f"<@{emu.moderator.id}>" in card.content
    assert card.components == []  # decided: no buttons left
    shown = await emu.dispatch_slash_command("veo-admin limits show", user=emu.moderator)
    assert f"**Approvals**: on, for every request, in <#{world.mods.id}>" in await private_text(
        emu, shown
    )


async def test_a_held_request_and_its_buttons_survive_a_restart(world: World) -> None:
    emu = world.emu
    handle, job_id = await held_request(world, world.member("patient"), "a slow sunrise")
    card = await card_of(world, job_id)
    await world.proc.kill()  # a new process answers the press
    await world.proc.start()
    assert state(world, job_id) == "awaiting_approval"
    press = await emu.dispatch_component(f"veo:approve:{job_id}", card, user=emu.moderator)
    assert "Approved" in await private_text(emu, press)
    final = await final_for(emu, handle.token, timeout=JOB_TIMEOUT)  # the member's placeholder
    assert "ready" in str((final.json or {}).get("content", ""))
    assert submitted_prompts(world).count("a slow sunrise") == 1
    assert "Approved" in card.content


async def test_deny_with_a_reason_refunds_and_tells_the_member_privately(world: World) -> None:
    emu = world.emu
    member = world.member("denied")
    handle, job_id = await held_request(world, member, "a forbidden dance")
    card = await card_of(world, job_id)
    press = await emu.dispatch_component(f"veo:deny:{job_id}", card, user=emu.moderator)
    await press.wait_for_callback()
    assert press.callback_type == 9  # the reason form
    submit = await emu.dispatch_modal_submit(
        f"veo:deny-modal:{job_id}", {"reason": "not on this server"}, user=emu.moderator
    )
    assert "Denied" in await private_text(emu, submit)
    await world.proc.wait_for_log(f"job {job_id} denied by {emu.moderator.id}")

    # Privately, the reason; publicly, only that it was declined and did not count.
    private = await emu.wait_for(
        lambda r: (
            r.params.get("interaction_token") == handle.token
            and r.method == "POST"
            and "not on this server" in str((r.json or {}).get("content", ""))
        )
    )
    assert (private.json or {}).get("flags", 0) & 64  # ephemeral
    final = await final_for(emu, handle.token)
    text = str((final.json or {}).get("content", ""))
    assert "declined" in text and "does not count" in text and "not on this server" not in text
    assert ledger(world.workdir)[job_id] == "released"
    assert state(world, job_id) == "cancelled"
    assert "forbidden dance" not in " ".join(submitted_prompts(world))
    assert "Denied" in card.content and "not on this server" in card.content
    assert card.components == []
    audit = db_rows(
        world.workdir,
        "SELECT actor_id, detail FROM audit_log WHERE action = 'approval.denied' "
        "AND json_extract(detail, '$.job_id') = ?",
        (job_id,),
    )
    assert [row[0] for row in audit] == [emu.moderator.id]


async def test_two_moderators_pressing_at_once_make_one_decision(world: World) -> None:
    emu = world.emu
    handle, job_id = await held_request(world, world.member("raced"), "two hands on a button")
    card = await card_of(world, job_id)
    first, second = await asyncio.gather(
        emu.dispatch_component(f"veo:approve:{job_id}", card, user=emu.moderator),
        emu.dispatch_component(f"veo:approve:{job_id}", card, user=world.second_moderator),
    )
    answers = sorted([await private_text(emu, first), await private_text(emu, second)])
    assert answers[0].startswith("Approved")
    assert answers[1].startswith("This request was already approved by <@")
    await final_for(emu, handle.token, timeout=JOB_TIMEOUT)
    assert submitted_prompts(world).count("two hands on a button") == 1
    decisions = db_rows(
        world.workdir,
        "SELECT COUNT(*) FROM audit_log WHERE action LIKE 'approval.%' "
        "AND json_extract(detail, '$.job_id') = ?",
        (job_id,),
    )
    assert decisions == [(1,)]


async def test_an_undecided_request_expires_and_is_released(world: World) -> None:
    emu = world.emu
    await lane_on(world, expiry_minutes=0.05)  # three seconds
    try:
        handle, job_id = await held_request(world, world.member("waiter"), "nobody looks")
    finally:
        await lane_on(world, expiry_minutes=60)  # the other tests' lane
    card = await card_of(world, job_id)
    await world.proc.wait_for_log(f"job {job_id} expired by 0", timeout=15)
    final = await final_for(emu, handle.token)
    assert "in time" in str((final.json or {}).get("content", ""))
    assert ledger(world.workdir)[job_id] == "released"
    assert state(world, job_id) == "expired"
    await wait_until(lambda: "Expired" in card.content, what="the card to show the expiry")
    assert card.components == []  # nothing left to press
    assert "nobody looks" not in " ".join(submitted_prompts(world))
