"""The approval lane (`bot.approvals.ApprovalLane`) without Discord: a recording output and
card sink, the Segmind fake over real HTTP and a SQLite store in a temp dir.

What a member and a moderator would notice: a held request never reaches Segmind until it is
approved, then is made as usual; a denied or lapsed one is refunded and its requester told;
only one decision is ever made; only moderators (or the approver role) may make it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from bot.approvals import BOT_ACTOR, ApprovalLane, Card, needs_approval
from bot.chat.approvals import already_decided_text, card_embed, card_head, decision_line
from bot.pricing import PriceBook
from bot.quota import Refusal
from bot.segmind.client import SegmindClient
from bot.segmind.fake import FakeSegmind
from bot.store import Approval, ApprovalHold, ApprovalSettings, Job, Store, open_store
from harness.clocks import ManualClock
from tests.lifecycle_support import (
    GUILD,
    MEMBER,
    MODERATOR,
    ONE_A_DAY,
    OTHER_MEMBER,
    SEGMIND_KEY,
    RecordingOutput,
    Stage,
    counts_against_limit,
    make_segmind,
    make_service,
    new_job,
)

MODS_CHANNEL = 555
APPROVER_ROLE = 77
EXEMPT_ROLE = 78
LANE = ApprovalSettings(
    enabled=True,
    channel_id=MODS_CHANNEL,
    threshold=0.0,
    exempt_roles=frozenset({EXEMPT_ROLE}),
    approver_role_id=APPROVER_ROLE,
    expiry_seconds=600.0,
)


@dataclass
class Cards:
    """An `ApprovalOutput` that keeps what the lane showed moderators and requesters."""

    posted: list[Card] = field(default_factory=list)
    closed: list[Approval] = field(default_factory=list)
    told: list[tuple[Job, Approval]] = field(default_factory=list)
    unreachable: bool = False

    async def post_card(self, card: Card) -> tuple[int, int] | None:
        self.posted.append(card)
        return None if self.unreachable else (MODS_CHANNEL, 9000 + card.job.id)

    async def close_card(self, job: Job, approval: Approval) -> None:
        self.closed.append(approval)

    async def ended(self, job: Job, approval: Approval) -> None:
        self.told.append((job, approval))


@pytest.fixture
async def fake() -> AsyncIterator[FakeSegmind]:
    async with FakeSegmind(api_key=SEGMIND_KEY, queue_seconds=0.02, processing_seconds=0.05) as f:
        yield f


@pytest.fixture
async def segmind(fake: FakeSegmind) -> AsyncIterator[SegmindClient]:
    async with make_segmind(fake) as client:
        yield client


@pytest.fixture
def clock() -> ManualClock:
    # The lane's (and the store's) clock, moved by hand for expiries. It starts at the real
    # time because the job service keeps the real clock: Segmind's polls run on it.
    return ManualClock(time.time())


@pytest.fixture
async def store(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Store]:
    opened = await open_store(tmp_path / "data" / "veo.sqlite3", clock=clock)
    await opened.set_approval_settings(GUILD, LANE, actor_id=MODERATOR)
    yield opened
    await opened.close()


@dataclass
class Lane:
    lane: ApprovalLane
    output: RecordingOutput
    cards: Cards


@pytest.fixture
async def world(
    store: Store, segmind: SegmindClient, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[Lane]:
    output, cards = RecordingOutput(), Cards()
    jobs = make_service(store, segmind, output, tmp_path / "work")
    lane = ApprovalLane(
        store,
        jobs,
        output,
        cards,
        quote=PriceBook().quote,
        default_expiry=86400,
        sweep_interval=3600,
        clock=clock,
    )
    await jobs.start()
    await lane.start()
    yield Lane(lane, output, cards)
    await lane.stop()
    await jobs.stop()


async def held(world: Lane, user_id: int = MEMBER, **kw: object) -> int:
    outcome = await world.lane.enqueue(new_job(user_id=user_id, **kw))  # type: ignore[arg-type]
    assert not isinstance(outcome, Refusal), outcome
    return outcome


async def state(store: Store, job_id: int) -> str:
    job = await store.get_job(job_id)
    assert job is not None
    return job.state


def test_which_requests_wait_for_a_moderator() -> None:
    assert needs_approval(LANE, (), 0.40)  # threshold 0: every request
    assert not needs_approval(LANE, (EXEMPT_ROLE,), 1.20)  # an exempt role never waits
    assert not needs_approval(ApprovalSettings(enabled=False, channel_id=1), (), 1.20)
    pricey = ApprovalSettings(enabled=True, channel_id=1, threshold=0.80)
    assert needs_approval(pricey, (), 0.81) and not needs_approval(pricey, (), 0.80)


async def test_a_held_request_reaches_segmind_only_once_approved(
    world: Lane, store: Store, fake: FakeSegmind
) -> None:
    job_id = await held(world, duration=4)
    (card,) = world.cards.posted
    assert card.approval.quote == 1.20  # nothing billed yet: the top of the published range
    assert (card.used, card.limit) == (1, 1)  # ONE_A_DAY, this request included
    assert world.output.stages(job_id) == [Stage.AWAITING_APPROVAL]
    # A request made after it (by an exempt member) is dispatched and made: the dispatcher
    # went past the held one, which was first in line, and sent nothing of it.
    behind = await world.lane.enqueue(
        new_job("a later one", user_id=OTHER_MEMBER, role_ids=(EXEMPT_ROLE,))
    )
    assert not isinstance(behind, Refusal)
    assert (await world.output.settled(behind)).job.state == "delivered"
    assert [s["prompt"] for s in fake.submits] == ["a later one"]
    assert await state(store, job_id) == "awaiting_approval"
    # The member's request counts at once: no second one while it waits.
    again = await world.lane.enqueue(new_job(duration=4))
    assert isinstance(again, Refusal)

    decided = await world.lane.approve(job_id, actor_id=MODERATOR, role_ids=(), manage_guild=True)
    assert decided.outcome == "decided"
    assert [a.decision for a in world.cards.closed] == ["approved"]
    finished = await world.output.settled(job_id)
    assert finished.job.state == "delivered"
    assert len(fake.submits) == 2 and fake.submits[1]["duration"] == 4
    assert world.cards.told == []  # an approved request is not "ended" by the lane
    (entry, *_) = await store.audit_entries(GUILD)
    assert (entry.action, entry.actor_id) == ("approval.approved", MODERATOR)


async def test_deny_refunds_and_tells_the_requester_why(
    world: Lane, store: Store, fake: FakeSegmind
) -> None:
    job_id = await held(world)
    decided = await world.lane.deny(
        job_id, actor_id=MODERATOR, role_ids=(), manage_guild=True, reason="  too gory  "
    )
    assert decided.outcome == "decided"
    ((job, approval),) = world.cards.told
    assert job.state == "cancelled" and approval.reason == "too gory"
    assert approval.decided_by == MODERATOR
    assert not await counts_against_limit(store)
    assert (await world.output.settled(job_id)).job.state == "cancelled"
    assert fake.submits == []


async def test_two_moderators_at_once_make_one_decision(world: Lane, fake: FakeSegmind) -> None:
    job_id = await held(world)
    results = await asyncio.gather(
        world.lane.approve(job_id, actor_id=MODERATOR, role_ids=(), manage_guild=True),
        world.lane.deny(
            job_id, actor_id=OTHER_MEMBER, role_ids=(APPROVER_ROLE,), manage_guild=False, reason=""
        ),
    )
    assert sorted(r.outcome for r in results) == ["already_decided", "decided"]
    winner = next(r for r in results if r.outcome == "decided")
    loser = next(r for r in results if r.outcome == "already_decided")
    assert loser.approval is not None and winner.approval is not None
    assert loser.approval.decided_by == winner.approval.decided_by  # "already decided by X"
    assert len(world.cards.closed) == 1


async def test_only_moderators_or_the_approver_role_decide(world: Lane, store: Store) -> None:
    job_id = await held(world)
    refused = await world.lane.approve(
        job_id, actor_id=OTHER_MEMBER, role_ids=(EXEMPT_ROLE,), manage_guild=False
    )
    assert refused.outcome == "not_allowed"
    assert await state(store, job_id) == "awaiting_approval"
    allowed = await world.lane.approve(
        job_id, actor_id=OTHER_MEMBER, role_ids=(APPROVER_ROLE,), manage_guild=False
    )
    assert allowed.outcome == "decided"


async def test_an_undecided_request_expires_and_is_released_after_a_restart(
    world: Lane, store: Store, clock: ManualClock, segmind: SegmindClient, tmp_path: Path
) -> None:
    job_id = await held(world)
    clock.advance(599)
    assert await world.lane.expire_due() == 0
    await world.lane.stop()  # the bot goes down; the request lapses meanwhile
    clock.advance(2)
    cards = Cards()
    restarted = ApprovalLane(
        store,
        world.lane.jobs,
        world.output,
        cards,
        quote=PriceBook().quote,
        default_expiry=86400,
        sweep_interval=3600,
        clock=clock,
    )
    await restarted.start()  # the first sweep runs at start-up
    try:
        ((job, approval),) = cards.told
        assert job.state == "expired" and approval.decision == "expired"
        assert approval.decided_by is None
        assert not await counts_against_limit(store)
        (entry, *_) = await store.audit_entries(GUILD)
        assert (entry.action, entry.actor_id) == ("approval.expired", BOT_ACTOR)
        late = await restarted.approve(job_id, actor_id=MODERATOR, role_ids=(), manage_guild=True)
        assert late.outcome == "already_decided"
        assert late.approval is not None and late.approval.decision == "expired"
    finally:
        await restarted.stop()


async def test_cheap_or_exempt_requests_go_straight_to_the_queue(world: Lane, store: Store) -> None:
    exempt = await world.lane.enqueue(new_job(role_ids=(EXEMPT_ROLE,)))
    assert not isinstance(exempt, Refusal)
    await store.set_approval_settings(GUILD, replace(LANE, threshold=5.0), actor_id=MODERATOR)
    cheap = await world.lane.enqueue(new_job(user_id=OTHER_MEMBER))
    assert not isinstance(cheap, Refusal)
    for job_id in (exempt, cheap):
        assert await store.get_approval(job_id) is None
        assert (await world.output.settled(job_id)).job.state == "delivered"
    assert world.cards.posted == []


async def test_a_card_that_cannot_be_posted_releases_the_request(
    world: Lane, store: Store, fake: FakeSegmind
) -> None:
    world.cards.unreachable = True
    job_id = await held(world)
    assert await state(store, job_id) == "expired"
    assert not await counts_against_limit(store)
    assert len(world.cards.told) == 1 and fake.submits == []


async def test_the_card_pings_nobody_and_shows_what_moderators_decide_on(store: Store) -> None:
    request = new_job("@everyone <@1> look **here**", image_url="https://cdn.example/x.png")
    outcome = await store.reserve(
        replace(request, approval=ApprovalHold(quote=1.2, expires_at=3600.0)), ONE_A_DAY
    )
    assert not isinstance(outcome, Refusal)
    job, approval = await store.get_job(outcome.job_id), await store.get_approval(outcome.job_id)
    assert job is not None and approval is not None
    card = Card(job, approval, channel_id=MODS_CHANNEL, used=2, limit=3, window_hours=24)
    embed = card_embed(card).to_dict()
    assert "@\u200beveryone" in embed["description"] and "\\*\\*here" in embed["description"]
    assert embed["thumbnail"]["url"] == "https://cdn.example/x.png"
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Quoted price"] == "$1.20"
    assert fields["Requester"] == f"<@{MEMBER}> · 2 of 3 videos in the last 24 h"
    assert fields["Request"].endswith(f"/{GUILD}/200/400)")  # a link to the member's request
    assert "$1.20" in card_head(card)
    denied = replace(approval, decision="denied", decided_by=MODERATOR, decided_at=60.0)
    assert decision_line(replace(denied, reason="@here no")).endswith(": @\u200bhere no Refunded.")
    assert (
        already_decided_text(denied)
        == f"This request was already denied by <@{MODERATOR}> <t:60:f>."
    )
    assert "withdrew" in already_decided_text(approval)


async def test_a_withdrawn_request_closes_its_card_and_cannot_be_approved(
    world: Lane, store: Store, fake: FakeSegmind
) -> None:
    job_id = await held(world)
    result = await world.lane.jobs.cancel(job_id, actor_id=MEMBER, moderator=False)
    assert result.outcome == "cancelled" and result.job is not None
    await world.lane.withdrawn(result.job)
    (closed,) = world.cards.closed
    assert closed.decision is None
    assert not await counts_against_limit(store)
    late = await world.lane.approve(job_id, actor_id=MODERATOR, role_ids=(), manage_guild=True)
    assert late.outcome == "already_decided"
    assert late.approval is not None and late.approval.decision is None
    assert await store.due_approvals(time.time() + 10**6) == []  # the sweep leaves it alone
    assert fake.submits == []
