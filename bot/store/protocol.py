"""The store's API as the rest of the bot uses it, one protocol per concern joined in `Store`.

A backend implements `Store` in its own SQL (`bot.store.sqlite` today; a PostgreSQL one can
follow without any change above this line). Everything crossing this boundary is a type from
`bot.store.model` or `bot.quota`: no driver type, and database trouble is `StoreUnavailable`
(callers fail closed), a newer schema or a bug in the caller `StoreError`.

Every method that takes `now` (epoch seconds) uses the backend's injected clock when it is
omitted, so tests drive time by hand.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, Self, Unpack

from bot.quota import GuildLimits, LimitDefaults, LimitOverride, Refusal
from bot.store.model import (
    Approval,
    ApprovalDecision,
    ApprovalSettings,
    AuditEntry,
    BilledSource,
    BudgetState,
    DaySpend,
    DecisionResult,
    Discrepancy,
    Job,
    JobFields,
    JobState,
    Lease,
    ListAdd,
    NewDiscrepancy,
    QuotaView,
    ReleaseOutcome,
    ReleaseReason,
    Reserved,
    ReserveRequest,
    UsageSummary,
    UserUsage,
)


class LedgerStore(Protocol):
    """The quota ledger: check-and-reserve, then settle each reservation exactly once."""

    async def reserve(self, request: ReserveRequest, defaults: LimitDefaults) -> Reserved | Refusal:
        """Check every limit and, if allowed, create the job (`queued`) and hold its quota in
        one transaction, so concurrent callers (tasks, connections or processes) can never
        pass more than a limit allows. A request whose `event_id` already made a job gets
        that job back (`Reserved.existing`) before any limit is checked, and nothing is
        reserved: one job per Discord event, however many processes received it.
        Raises `StoreUnavailable`: refuse, never proceed."""
        ...

    async def quota_view(
        self,
        guild_id: int,
        user_id: int,
        role_ids: Iterable[int],
        defaults: LimitDefaults,
        now: float | None = None,
        *,
        quote: float | None = None,
    ) -> QuotaView:
        """A member's effective limits, usage and what `reserve` would answer now for a job
        quoted at `quote` (None: `defaults.price_per_job`)."""
        ...

    async def charge(
        self, job_id: int, cost: float | None = None, now: float | None = None
    ) -> bool:
        """Settle a reservation as charged (the video was delivered) at `cost`, else at the
        reserved estimate. False if it was already settled: a retry never charges twice."""
        ...

    async def release(
        self,
        job_id: int,
        reason: ReleaseReason,
        defaults: LimitDefaults | None = None,
        now: float | None = None,
        cost: float | None = None,
    ) -> ReleaseOutcome:
        """Refund a reservation: the user got no video, so it stops counting toward any limit.
        A `content_blocked` refund past the daily cap is charged instead ("charged").
        Idempotent: "already_settled" if charged or released before."""
        ...

    async def settle_terminal(
        self, defaults: LimitDefaults | None = None, now: float | None = None
    ) -> int:
        """Crash net for start-up: settle every reservation whose job already ended (charge
        the delivered, release the rest); returns how many were settled."""
        ...


class SpendStore(Protocol):
    """The owner's spend ledger, kept apart from the member's quota: every job holds its quote
    from reservation until Segmind's bill replaces it. Spend caps count this ledger; a member's
    refund never touches it."""

    async def record_billed(
        self,
        job_id: int,
        amount: float,
        *,
        source: BilledSource,
        now: float | None = None,
    ) -> bool:
        """What Segmind billed for this job (dollars; 0: nothing, e.g. FAILED at Segmind or a
        submit refused before a job existed), replacing its held quote. A `history` figure
        (Segmind's `credits_deduction`) overrides a `metrics` one (the result's
        `metrics.cost`); a `metrics` figure never overrides a `history` one. Idempotent:
        returns whether anything changed (False for a job it does not know). `ValueError` for
        a negative or non-finite amount."""
        ...

    async def spend_by_day(
        self, guild_id: int | None, since: float, until: float | None = None
    ) -> list[DaySpend]:
        """The owner's spend per UTC day for jobs reserved in `[since, until)` (`until` None:
        no upper bound), oldest day first, days without jobs left out; `guild_id` None: every
        guild."""
        ...

    async def observed_bills(self, limit: int = 2000) -> list[tuple[str, float]]:
        """`(params_json, billed)` of the latest `limit` jobs Segmind billed more than 0,
        newest first: what the price book learns from at start-up."""
        ...


class JobStore(Protocol):
    """Jobs as a persisted state machine, and the reads the lifecycle runs."""

    async def transition(
        self,
        job_id: int,
        from_states: JobState | Iterable[JobState],
        to_state: JobState,
        *,
        now: float | None = None,
        **fields: Unpack[JobFields],
    ) -> Job | None:
        """Compare-and-set: move the job to `to_state` only if it is in one of `from_states`,
        setting `fields` in the same committed write, and return the job as written (so the
        caller need not read it again). None when the job was not in those states (someone
        else moved it first): the caller must then NOT perform the action the transition
        guards. The rules are `bot.store.model.plan_transition`'s."""
        ...

    async def get_job(self, job_id: int) -> Job | None:
        """One job by id."""
        ...

    async def job_for_event(self, event_id: int) -> Job | None:
        """The job a Discord interaction or message (`ReserveRequest.event_id`) made, if any."""
        ...

    async def nonterminal_jobs(self) -> list[Job]:
        """Every unfinished job, in queue order: what to resume at start-up."""
        ...

    async def next_queued(self) -> Job | None:
        """The oldest `queued` job, whoever owns it: first come, first served."""
        ...

    async def queued_ids(self) -> list[int]:
        """The ids of every `queued` job in queue order: cheap enough to read on every change."""
        ...

    async def count_queued(self) -> int:
        """Jobs waiting in the bot's own queue (the metrics' queue length)."""
        ...

    async def count_in_flight(self) -> int:
        """Jobs between leaving the queue and their end (the metrics' jobs in flight)."""
        ...

    async def ping(self) -> None:
        """One trivial query: raises `StoreUnavailable` when the database does not answer."""
        ...

    async def recent_durations(self, limit: int = 20) -> list[float]:
        """Seconds from submission to completion of the last `limit` delivered jobs, newest
        first: the poll estimator's prior."""
        ...


class ModerationStore(Protocol):
    """What moderators set; every change is audited in the same transaction."""

    async def get_guild_limits(self, guild_id: int) -> GuildLimits:
        """The guild's own limit settings (`None` fields use the bot defaults)."""
        ...

    async def set_guild_limits(
        self, guild_id: int, limits: GuildLimits, *, actor_id: int, now: float | None = None
    ) -> GuildLimits:
        """Replace the guild's limit settings; returns the previous ones."""
        ...

    async def role_overrides(self, guild_id: int) -> dict[int, LimitOverride]:
        """Every role override in the guild, by role id."""
        ...

    async def set_role_override(
        self,
        guild_id: int,
        role_id: int,
        override: LimitOverride | None,
        *,
        actor_id: int,
        now: float | None = None,
    ) -> None:
        """Set a role's override; `None` (or an all-`None` override) removes it."""
        ...

    async def user_overrides(self, guild_id: int) -> dict[int, LimitOverride]:
        """Every user override in the guild, by user id."""
        ...

    async def set_user_override(
        self,
        guild_id: int,
        user_id: int,
        override: LimitOverride | None,
        *,
        actor_id: int,
        now: float | None = None,
    ) -> None:
        """Set a user's override; `None` (or an all-`None` override) removes it."""
        ...

    async def exempt_roles(self, guild_id: int) -> frozenset[int]:
        """Roles whose members have no count limit in the guild."""
        ...

    async def set_role_exempt(
        self, guild_id: int, role_id: int, exempt: bool, *, actor_id: int, now: float | None = None
    ) -> bool:
        """Make a role exempt (or not). Returns whether anything changed."""
        ...

    async def block_user(
        self,
        guild_id: int,
        user_id: int,
        *,
        reason: str | None,
        actor_id: int,
        now: float | None = None,
    ) -> None:
        """Block a user from /veo in the guild (replacing any earlier block's reason)."""
        ...

    async def unblock_user(
        self, guild_id: int, user_id: int, *, actor_id: int, now: float | None = None
    ) -> bool:
        """Lift a block; False if the user was not blocked."""
        ...

    async def reset_user_window(
        self, guild_id: int, user_id: int, *, actor_id: int, now: float | None = None
    ) -> None:
        """Give the user a fresh window; history, guild and global counts stay."""
        ...

    async def get_log_channel(self, guild_id: int) -> int | None:
        """The channel where moderation events are posted, if set."""
        ...

    async def set_log_channel(
        self, guild_id: int, channel_id: int | None, *, actor_id: int, now: float | None = None
    ) -> None:
        """Set (or with None clear) the guild's log channel."""
        ...


class RuleStore(Protocol):
    """Moderators' rules on content and place; every change is audited in the same transaction."""

    async def banned_words(self, guild_id: int) -> list[str]:
        """The guild's banned entries as moderators typed them, oldest first."""
        ...

    async def add_banned_word(
        self,
        guild_id: int,
        entry: str,
        *,
        actor_id: int,
        max_entries: int,
        now: float | None = None,
    ) -> ListAdd:
        """Ban an entry, compared with the others by `bot.moderation.entry_key` (so `BAD` and
        `b.a.d` are one entry): "exists" if one with the same key is banned, "full" if the
        guild has `max_entries` already (checked in the same transaction). `ValueError` for
        an entry without a letter or digit."""
        ...

    async def remove_banned_word(
        self, guild_id: int, entry: str, *, actor_id: int, now: float | None = None
    ) -> str | None:
        """Lift the ban on the entry with `entry`'s key: the entry as it was typed, or None
        when none was banned."""
        ...

    async def allowed_channels(self, guild_id: int) -> frozenset[int]:
        """The channels the bot works in; empty: everywhere."""
        ...

    async def allow_channel(
        self,
        guild_id: int,
        channel_id: int,
        *,
        actor_id: int,
        max_channels: int,
        now: float | None = None,
    ) -> ListAdd:
        """Add a channel to the allowed list (at most `max_channels`)."""
        ...

    async def remove_channel(
        self, guild_id: int, channel_id: int, *, actor_id: int, now: float | None = None
    ) -> bool:
        """Take a channel off the allowed list; False if it was not on it."""
        ...

    async def get_gallery_channel(self, guild_id: int) -> int | None:
        """The channel where delivered videos are announced, if set."""
        ...

    async def set_gallery_channel(
        self, guild_id: int, channel_id: int | None, *, actor_id: int, now: float | None = None
    ) -> None:
        """Set (or with None clear) the guild's gallery channel."""
        ...


class ReportStore(Protocol):
    """What moderators read: usage, heaviest users, job listings, the audit log."""

    async def usage(
        self,
        guild_id: int,
        user_id: int | None = None,
        days: float = 1.0,
        now: float | None = None,
    ) -> UsageSummary:
        """Jobs created in the guild (or by one user there) in the last `days`."""
        ...

    async def top_users(
        self, guild_id: int, days: float = 1.0, limit: int = 10, now: float | None = None
    ) -> list[UserUsage]:
        """The guild's heaviest users over the last `days`, most jobs first."""
        ...

    async def recent_jobs(
        self, guild_id: int, user_id: int | None = None, limit: int = 10
    ) -> list[Job]:
        """The guild's (or one user's) latest jobs, newest first."""
        ...

    async def export_jobs(
        self, guild_id: int, days: float = 30.0, now: float | None = None
    ) -> list[Job]:
        """Every job in the guild created within `days`, oldest first (for a CSV export)."""
        ...

    async def record_audit(
        self,
        guild_id: int,
        actor_id: int,
        action: str,
        detail: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> None:
        """Write an audit entry for an action taken outside the store (e.g. a mod cancel)."""
        ...

    async def audit_entries(self, guild_id: int, limit: int = 20) -> list[AuditEntry]:
        """The guild's latest audit entries, newest first."""
        ...


class RunnerStore(Protocol):
    """The runner lease (one node at a time submits, polls and delivers for a Segmind key),
    the fencing of that node's writes, and the request budget it hands on."""

    async def acquire_lease(self, name: str, owner: str, seconds: float) -> Lease | None:
        """Start a new term (the next epoch) for `owner` if the lease is free or lapsed by
        the DATABASE's clock; None while another term runs."""
        ...

    async def renew_lease(self, lease: Lease, seconds: float) -> Lease | None:
        """Extend `lease`'s term by `seconds` from now; None once another term began."""
        ...

    async def release_lease(self, lease: Lease) -> bool:
        """End `lease`'s term now (clean shutdown); False if it was no longer the term."""
        ...

    async def current_lease(self, name: str) -> Lease | None:
        """The lease row as it stands, lapsed or not."""
        ...

    def fenced(self, lease: Lease) -> Self:
        """A view of this store for the runner of `lease`: every write checks, in its own
        transaction, that `lease.epoch` is still the newest and else raises `Fenced`."""
        ...

    async def save_budget(self, name: str, state: BudgetState) -> None:
        """Record the request budget (fenced on a fenced view)."""
        ...

    async def load_budget(self, name: str) -> BudgetState | None:
        """The request budget last recorded under `name`."""
        ...


class ApprovalStore(Protocol):
    """The approval lane: a guild's settings and the one decision about each held request.

    A held job is created by `reserve` (a `ReserveRequest` with `approval`), in state
    `awaiting_approval` with its quota reserved; only `decide_approval` moves it on."""

    async def get_approval_settings(self, guild_id: int) -> ApprovalSettings:
        """The guild's lane (off, with defaults, when never set)."""
        ...

    async def set_approval_settings(
        self,
        guild_id: int,
        settings: ApprovalSettings,
        *,
        actor_id: int,
        now: float | None = None,
    ) -> None:
        """Replace the guild's lane settings (audited in the same transaction)."""
        ...

    async def get_approval(self, job_id: int) -> Approval | None:
        """The held request behind a job (None: the job was never held)."""
        ...

    async def set_approval_card(self, job_id: int, channel_id: int, message_id: int) -> None:
        """Remember where the moderators' card was posted, so any process can edit it."""
        ...

    async def decide_approval(
        self,
        job_id: int,
        decision: ApprovalDecision,
        *,
        actor_id: int,
        reason: str | None = None,
        now: float | None = None,
    ) -> DecisionResult | None:
        """Compare-and-set, in one transaction: if the job still awaits approval, move it
        (approved → `queued`, denied → `cancelled`, expired → `expired`), record who decided,
        when and why, and write the audit entry. Only the first caller wins; the others get
        `won=False` and the decision already made. The quota is not settled here: the caller
        releases a denied or expired job (and `settle_terminal` does after a crash). None when
        the job was never held."""
        ...

    async def due_approvals(self, now: float | None = None) -> list[int]:
        """Held jobs whose approval lapsed (`expires_at <= now`) still undecided, oldest first."""
        ...


class ReconcileStore(Protocol):
    """What checking the bot's record against Segmind's needs: jobs by request id, the
    discrepancies found (each recorded and posted once), and where the last pass stopped."""

    async def job_by_request_id(self, request_id: str) -> Job | None:
        """The job Segmind knows as `request_id`, if the bot has one."""
        ...

    async def job_quote(self, job_id: int) -> float | None:
        """The quote the job's reservation held against the spend caps (None: no such job)."""
        ...

    async def earliest_submit_at(self) -> float | None:
        """When the first job left the queue (None: none ever did): where a first pass over
        Segmind's history starts, so requests from before the bot are not flagged."""
        ...

    async def record_discrepancy(self, found: NewDiscrepancy, now: float | None = None) -> bool:
        """Record one disagreement; False when its (kind, request id) is already recorded."""
        ...

    async def discrepancies(
        self, guild_id: int | None, since: float | None = None, limit: int = 50
    ) -> list[Discrepancy]:
        """Recorded disagreements, newest first: one guild's (those with no guild — a request
        the bot does not know — are listed for every guild too), or with None all of them."""
        ...

    async def unposted_discrepancies(self, limit: int = 50) -> list[Discrepancy]:
        """Disagreements not yet posted to a log channel, oldest first."""
        ...

    async def mark_discrepancy_posted(self, discrepancy_id: int, now: float | None = None) -> None:
        """The disagreement was posted: never post it again."""
        ...

    async def get_cursor(self, name: str) -> str | None:
        """A background task's saved position (None: it never saved one)."""
        ...

    async def set_cursor(self, name: str, value: str) -> None:
        """Save a background task's position."""
        ...


class GatewayStore(Protocol):
    """What the nodes of one bot share about the Discord gateway."""

    async def claim_identify_slot(self, bucket: int, spacing: float) -> float:
        """Claim the right to start a gateway session (IDENTIFY) in this `max_concurrency`
        bucket: 0.0 when claimed — no other claim of the bucket for `spacing` seconds — else
        the seconds until it may be claimed. Timed on the database's clock, so every node
        sharing the database agrees whatever its own clock says."""
        ...


class Store(
    RunnerStore,
    LedgerStore,
    SpendStore,
    JobStore,
    ModerationStore,
    ReportStore,
    ReconcileStore,
    ApprovalStore,
    GatewayStore,
    RuleStore,
    Protocol,
):
    """The bot's database, whatever the backend. Close it once, on shutdown."""

    async def close(self) -> None:
        """Close the database after any running transaction finishes."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...
