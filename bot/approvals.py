"""The approval lane: a guild that wants a say before money is spent holds some requests for a
moderator. Discord-free, like the rest of the job core.

A request that needs approval (the lane is on, the member has no exempt role, and the quoted
price is above the guild's threshold) is reserved like any other — validated, its quota held
at once, so the member's concurrency and window limits count it — but in the state
`awaiting_approval`, which the dispatcher never takes: nothing reaches Segmind. A card goes to
the moderators' channel; the first decision wins (a compare-and-set in the store):

- approved → `queued`: the dispatcher takes it in its turn, as usual;
- denied → `cancelled`, refunded, the member told why;
- nobody decided within the expiry → `expired`, refunded (the sweep below, on the injected
  clock; it also runs at start-up, so a request that lapsed while the bot was down ends).

Every decision is audited by the store in the same transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from bot.jobs import JobOutput, JobService
from bot.logs import current_job_id
from bot.params import VeoParams
from bot.pricing import Quote
from bot.progress import Progress, Stage
from bot.quota import Refusal
from bot.store import (
    Approval,
    ApprovalDecision,
    ApprovalHold,
    ApprovalSettings,
    Job,
    ReleaseReason,
    ReserveRequest,
    Store,
)

log = logging.getLogger(__name__)

BOT_ACTOR = 0  # the audit log's actor for what nobody did (an expiry)
RELEASE_REASONS: dict[ApprovalDecision, ReleaseReason] = {"denied": "denied", "expired": "expired"}


def needs_approval(settings: ApprovalSettings, role_ids: Iterable[int], quote: float) -> bool:
    """Whether a request quoted at `quote` waits for a moderator in this guild."""
    if not settings.enabled or settings.channel_id is None:
        return False
    if settings.exempt_roles.intersection(role_ids):
        return False
    return quote > settings.threshold  # threshold 0: every request (no video is free)


def may_decide(settings: ApprovalSettings, role_ids: Iterable[int], *, manage_guild: bool) -> bool:
    """Approve and Deny: Manage Server, or the guild's approver role."""
    role = settings.approver_role_id
    return manage_guild or (role is not None and role in set(role_ids))


@dataclass(frozen=True)
class Card:
    """What moderators see about a held request."""

    job: Job
    approval: Approval
    channel_id: int  # the moderators' channel, where it goes
    used: int  # the requester's videos in their window, this one included
    limit: int | None  # None: no count limit for them
    window_hours: float


class ApprovalOutput(Protocol):
    """How the lane shows held requests to people. Implemented by the Discord layer."""

    async def post_card(self, card: Card) -> tuple[int, int] | None:
        """Post the card with Approve and Deny in the moderators' channel; returns (channel
        id, message id), or None when it could not be posted."""
        ...

    async def close_card(self, job: Job, approval: Approval) -> None:
        """Show the decision on the card and take its buttons away."""
        ...

    async def ended(self, job: Job, approval: Approval) -> None:
        """Tell the requester their request was denied (with the reason, privately when it
        can) or expired; it did not count."""
        ...


DecideOutcome = Literal["decided", "already_decided", "not_held", "not_allowed"]


@dataclass(frozen=True)
class Decided:
    outcome: DecideOutcome
    approval: Approval | None = None  # the decision that stands (this one or an earlier one)
    job: Job | None = None


class ApprovalLane:
    """Holds the requests a guild wants approved, and carries out the moderators' decisions.

    `quote` prices a request (the PriceBook's quote: one seam, so every part of the bot
    quotes from the same book)."""

    def __init__(
        self,
        store: Store,
        jobs: JobService,
        member_output: JobOutput,
        cards: ApprovalOutput,
        *,
        quote: Callable[[VeoParams], Quote],
        default_expiry: float,  # seconds, for a guild that set none (the settings' default)
        sweep_interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.jobs = jobs
        self.member_output = member_output
        self.cards = cards
        self.quote = quote
        self.default_expiry = default_expiry
        self.sweep_interval = sweep_interval
        self.clock = clock
        self._sweeper: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------------ the sweep

    async def start(self) -> None:
        """Expire what lapsed while the bot was down, then keep sweeping."""
        await self._sweep_once()
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="approval-sweep")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            await self._sweep_once()

    async def _sweep_once(self) -> None:
        try:
            await self.expire_due()
        except Exception:
            log.exception("approval sweep failed; retrying on the next one")

    async def expire_due(self) -> int:
        """End every held request whose time ran out; returns how many this call ended."""
        ended = 0
        for job_id in await self.store.due_approvals(self.clock()):
            with _job_logs(job_id):
                result = await self._end(job_id, "expired", actor_id=BOT_ACTOR, reason=None)
            ended += result.outcome == "decided"
        return ended

    # --------------------------------------------------------------------------- intake

    async def hold_for(self, request: ReserveRequest) -> ApprovalHold | None:
        """The hold to reserve `request` with, or None when it goes straight to the queue."""
        settings = await self.store.get_approval_settings(request.guild_id)
        if not settings.enabled:
            return None  # priced only when a guild asked for the lane
        quote = self.quote(request.params).amount
        if not needs_approval(settings, request.role_ids, quote):
            return None
        expiry = settings.expiry_seconds or self.default_expiry
        return ApprovalHold(quote=quote, expires_at=self.clock() + expiry)

    async def enqueue(self, request: ReserveRequest) -> int | Refusal:
        """`JobService.enqueue`, holding the request for a moderator when the guild wants
        that. Raises `StoreUnavailable` like it (the caller refuses)."""
        hold = await self.hold_for(request)
        outcome = await self.jobs.enqueue(replace(request, approval=hold))
        if hold is not None and not isinstance(outcome, Refusal):
            with _job_logs(outcome):
                log.info("job %s held for a moderator (quoted $%.2f)", outcome, hold.quote)
                await self._announce_or_release(outcome, request.role_ids)
        return outcome

    async def _announce_or_release(self, job_id: int, role_ids: Iterable[int]) -> None:
        """The job is reserved: whatever goes wrong now, the member hears of it and the
        request either reaches the moderators or ends released — never a silent hold."""
        try:
            await self._announce(job_id, role_ids)
        except Exception:
            log.exception("job %s: could not put the request before the moderators", job_id)
            try:
                await self._end(job_id, "expired", actor_id=BOT_ACTOR, reason=CARD_UNREACHABLE)
            except Exception:
                # The store is down too: the expiry sweep releases it once it is back.
                log.exception("job %s: left for the expiry sweep to release", job_id)

    async def _announce(self, job_id: int, role_ids: Iterable[int]) -> None:
        """Tell the member it waits, and the moderators what for. A card that cannot be
        posted ends the request at once (released): nobody could ever approve it."""
        job = await self.store.get_job(job_id)
        approval = await self.store.get_approval(job_id)
        if job is None or approval is None:
            return
        await _safely(self.member_output.progress(job, Progress(Stage.AWAITING_APPROVAL)), job_id)
        # Read again: a moderator may have moved (or closed) the lane since the reservation.
        channel_id = (await self.store.get_approval_settings(job.guild_id)).channel_id
        view = await self.store.quota_view(
            job.guild_id, job.user_id, role_ids, self.jobs.limit_defaults
        )
        card = (
            Card(
                job=job,
                approval=approval,
                channel_id=channel_id,
                used=view.usage.user_window.count,
                limit=view.limits.user_limit,
                window_hours=view.limits.window_hours,
            )
            if channel_id is not None
            else None
        )
        where = None
        try:
            if card is not None:
                where = await self.cards.post_card(card)
        except Exception:
            log.exception("job %s: the approval card could not be posted", job_id)
        if where is None:
            log.error(
                "job %s: the moderators' channel cannot be reached; the request is released",
                job_id,
            )
            await self._end(job_id, "expired", actor_id=BOT_ACTOR, reason=CARD_UNREACHABLE)
            return
        await self.store.set_approval_card(job_id, *where)

    async def withdrawn(self, job: Job) -> None:
        """The requester (or a moderator) cancelled a job: if it was still held, its card
        says so and loses its buttons. Nothing else to do: the cancel refunded it."""
        approval = await self.store.get_approval(job.id)
        if approval is not None and approval.decision is None:
            await _safely(self.cards.close_card(job, approval), job.id)

    # ------------------------------------------------------------------------ decisions

    async def approve(
        self, job_id: int, *, actor_id: int, role_ids: Iterable[int], manage_guild: bool
    ) -> Decided:
        """Let the held request into the queue (first decision wins)."""
        return await self._decide(
            job_id, "approved", actor_id=actor_id, role_ids=role_ids, manage_guild=manage_guild
        )

    async def deny(
        self,
        job_id: int,
        *,
        actor_id: int,
        role_ids: Iterable[int],
        manage_guild: bool,
        reason: str | None,
    ) -> Decided:
        """Decline the held request and refund it (first decision wins)."""
        return await self._decide(
            job_id,
            "denied",
            actor_id=actor_id,
            role_ids=role_ids,
            manage_guild=manage_guild,
            reason=(reason or "").strip() or None,
        )

    async def may_decide(
        self, job_id: int, *, role_ids: Iterable[int], manage_guild: bool
    ) -> DecideOutcome | None:
        """Why this person cannot decide about the job (None: they can, for now) — so the
        Deny form is opened only for someone whose answer will count."""
        job = await self.store.get_job(job_id)
        if job is None or await self.store.get_approval(job_id) is None:
            return "not_held"
        settings = await self.store.get_approval_settings(job.guild_id)
        if not may_decide(settings, role_ids, manage_guild=manage_guild):
            return "not_allowed"
        return None

    async def _decide(
        self,
        job_id: int,
        decision: ApprovalDecision,
        *,
        actor_id: int,
        role_ids: Iterable[int],
        manage_guild: bool,
        reason: str | None = None,
    ) -> Decided:
        refused = await self.may_decide(job_id, role_ids=role_ids, manage_guild=manage_guild)
        if refused is not None:
            log.info("job %s: %s by user %s refused (%s)", job_id, decision, actor_id, refused)
            return Decided(refused)
        with _job_logs(job_id):
            return await self._end(job_id, decision, actor_id=actor_id, reason=reason)

    async def _end(
        self, job_id: int, decision: ApprovalDecision, *, actor_id: int, reason: str | None
    ) -> Decided:
        """Make the decision if nobody made one yet, then carry it out."""
        result = await self.store.decide_approval(
            job_id, decision, actor_id=actor_id, reason=reason, now=self.clock()
        )
        if result is None:
            return Decided("not_held")
        if not result.won:
            return Decided("already_decided", result.approval, result.job)
        job, approval = result.job, result.approval
        assert job is not None  # a decided job is a job
        log.info("job %s %s by %s (reason: %s)", job_id, decision, actor_id, reason)
        if decision == "approved":
            self.jobs.wake()  # into the queue, in its turn
        else:
            await self.store.release(job_id, RELEASE_REASONS[decision], self.jobs.limit_defaults)
        await _safely(self.cards.close_card(job, approval), job_id)
        if decision != "approved":
            await _safely(self.cards.ended(job, approval), job_id)
            ended = await self.store.get_job(job_id)
            if ended is not None:
                await self.jobs.ended(ended)
        return Decided("decided", approval, job)


CARD_UNREACHABLE = "the moderators' channel could not be reached"


@contextlib.contextmanager
def _job_logs(job_id: int) -> Iterator[None]:
    """Log lines about one held job carry its id, as a job task's do (`bot.logs`)."""
    token = current_job_id.set(job_id)
    try:
        yield
    finally:
        current_job_id.reset(token)


async def _safely(coro: object, job_id: int) -> None:
    """Showing a decision must never undo it."""
    try:
        await coro  # type: ignore[misc]
    except Exception:
        log.exception("job %s: could not update Discord about its approval", job_id)
