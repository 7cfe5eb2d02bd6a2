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
    AuditEntry,
    Job,
    JobFields,
    JobState,
    ListAdd,
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
        pass more than a limit allows. Raises `StoreUnavailable`: refuse, never proceed."""
        ...

    async def quota_view(
        self,
        guild_id: int,
        user_id: int,
        role_ids: Iterable[int],
        defaults: LimitDefaults,
        now: float | None = None,
    ) -> QuotaView:
        """A member's effective limits, usage and what `reserve` would answer now."""
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


class Store(LedgerStore, JobStore, ModerationStore, RuleStore, ReportStore, Protocol):
    """The bot's database, whatever the backend. Close it once, on shutdown."""

    async def close(self) -> None:
        """Close the database after any running transaction finishes."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...
