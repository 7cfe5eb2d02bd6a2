"""The store's vocabulary, free of any database: job states and the legal moves between them,
the rows the store hands out, the requests it takes, and its errors.

A backend (`bot.store.sqlite` today) implements `bot.store.protocol.Store` in these terms;
nothing here imports a database driver, Discord or HTTP.

Job lifecycle (see `LEGAL_TRANSITIONS`)::

    (awaiting_approval ──▶ queued, or ─▶ cancelled / expired: a held request, `bot.approvals`)
    queued ──▶ submitting ──▶ submitted ──▶ completed ──▶ delivering ──▶ delivered
      │            │  │            │             │              │
      │            │  └─▶ unknown  └─▶ failed / expired        └─▶ failed
      └─▶ cancelled / expired / failed

A transition is a compare-and-set committed before the action it enables (write-ahead): the
lifecycle moves a job to `submitting` *then* POSTs, to `delivering` *then* posts to Discord, so
after a crash it knows which side effects may have happened and never repeats a billed one.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from typing import Any, Literal, TypedDict, cast, get_args

from bot.params import VeoParams
from bot.quota import Allowed, EffectiveLimits, Refusal, UsageSnapshot

JobState = Literal[
    "queued",
    "submitting",
    "submitted",
    "completed",
    "delivering",
    "delivered",
    "failed",
    "expired",
    "cancelled",
    "unknown",
    # Held for a moderator (the approval lane): its quota is reserved, nothing is sent to
    # Segmind until a moderator approves it (then `queued`). Last, so the CHECK lists of
    # existing databases only grow (migration 8).
    "awaiting_approval",
]
ALL_STATES: tuple[JobState, ...] = get_args(JobState)
TERMINAL_STATES: frozenset[JobState] = frozenset(
    {"delivered", "failed", "expired", "cancelled", "unknown"}
)
# Holding a Segmind slot (or about to): what the global concurrency limit counts.
IN_FLIGHT_STATES: tuple[JobState, ...] = ("submitting", "submitted", "completed", "delivering")
# Unfinished: what the member's concurrency limit counts, a held request included (so nobody
# can pile up a hundred of them), and what a restart looks at.
NONTERMINAL_STATES: tuple[JobState, ...] = ("awaiting_approval", "queued", *IN_FLIGHT_STATES)

LEGAL_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    # Approved: into the queue; denied (or withdrawn by the requester): cancelled; nobody
    # decided in time: expired. Never straight to `submitting`: only the queue dispatches.
    "awaiting_approval": frozenset({"queued", "cancelled", "expired"}),
    # A queued job has cost nothing yet: it may be dropped for any reason.
    "queued": frozenset({"submitting", "cancelled", "expired", "failed"}),
    # A refused POST fails the job (refunded): it never goes back to the queue, where it could
    # be sent twice. `unknown` when the POST may have reached Segmind and no id was saved.
    "submitting": frozenset({"submitted", "failed", "unknown"}),
    "submitted": frozenset({"completed", "failed", "expired"}),
    "completed": frozenset({"delivering", "failed", "expired"}),
    "delivering": frozenset({"delivered", "failed"}),
    "delivered": frozenset(),
    "failed": frozenset(),
    "expired": frozenset(),
    "cancelled": frozenset(),
    "unknown": frozenset(),
}

LedgerStatus = Literal["reserved", "charged", "released"]
ReleaseReason = Literal[
    "failed",  # Segmind reported the job failed or returned no video
    "content_blocked",  # Segmind refused the prompt/image: refunded only up to the daily cap
    "not_submitted",  # the POST was refused or never went through: nothing started
    "expired",  # past the deadline, or Segmind no longer knows the job
    "cancelled",  # the user or a moderator cancelled it
    "unknown",  # crashed between POST and saving the request id; the user got nothing
    "delivery_failed",  # Segmind made it but it never reached the user
    "denied",  # a moderator declined it in the approval lane: nothing was sent
]
ReleaseOutcome = Literal["released", "charged", "already_settled", "no_such_job"]
# Who told the owner's spend ledger what Segmind billed: the result's `metrics.cost` (or the
# lifecycle knowing nothing was billed), or Segmind's own request history, which wins.
BilledSource = Literal["metrics", "history"]
BILLED_SOURCES: tuple[BilledSource, ...] = get_args(BilledSource)
# What adding to a guild's list (banned words, allowed channels) did: "full" when the list
# already holds its maximum, "exists" when the entry (or its normalised twin) is listed.
ListAdd = Literal["added", "exists", "full"]


class JobFields(TypedDict, total=False):
    """Columns `transition()` may set besides `state`, with their types."""

    request_id: str
    image_url: str | None
    error: str | None
    cost: float | None
    bytes: int | None
    submitted_at: float
    completed_at: float
    delivered_at: float
    placeholder_channel_id: int | None
    placeholder_message_id: int | None
    output_url: str | None
    upload_limit: int | None
    interaction_token: str | None
    interaction_created_at: float | None
    delivered_message_id: int | None
    delivery_method: str | None
    submit_started_at: float
    gallery_channel_id: int | None
    gallery_message_id: int | None


# Column names cannot be SQL parameters, so only these names are ever formatted into a statement.
JOB_FIELDS: frozenset[str] = JobFields.__optional_keys__
# Entering these states stamps the matching timestamp unless the caller passes one.
ENTRY_STAMPS: dict[JobState, str] = {
    # When the POST may first have left: the start of the window in which a lost answer's
    # request is looked for in Segmind's history.
    "submitting": "submit_started_at",
    "submitted": "submitted_at",
    "completed": "completed_at",
    "delivered": "delivered_at",
}


class StoreError(Exception):
    """Base of the store's errors."""


class StoreUnavailable(StoreError):
    """The database cannot be read or written (locked too long, disk full, unreadable).

    Callers fail closed: refuse the request, never start an unrecorded job."""

    user_message = "The bot cannot reach its database right now — please try again in a minute."


class IllegalTransition(StoreError, ValueError):
    """A transition the state machine never allows: a bug in the caller, not a race."""


class Fenced(StoreError):
    """A runner write refused because another node took the runner lease (a newer epoch):
    nothing of the write was kept, and the writer must stand down at once. Not
    `StoreUnavailable`: retrying can never succeed."""


@dataclass(frozen=True, slots=True)
class Lease:
    """One term of the runner lease: who holds it, its fencing epoch (one more on every
    takeover) and when it lapses, in the database's clock (epoch seconds)."""

    name: str
    owner: str
    epoch: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class BudgetState:
    """The Segmind request budget as the runner last recorded it, in wall-clock epoch seconds
    so another node can continue it: the grant times inside the window, and a 429 pause."""

    grants: tuple[float, ...]
    paused_until: float | None


# How finely the recorded budget keeps grant times: each is rounded UP to the second, so a
# node that continues the window counts every grant at least as long as it really counts —
# it may wait up to a second longer, never burst. Recording the window once per group commit
# as "second → grants" keeps it to at most window-seconds entries, however many requests a
# busy runner sends (a list of every grant time was 3,000 numbers at 3,000 requests a
# minute, and encoding it took a fifth of the runner's CPU at 1,000 jobs in flight).
GRANT_RESOLUTION = 1.0


def encode_grants(grants: Iterable[float]) -> str:
    """`BudgetState.grants` as the backends store it: JSON pairs [second, how many]."""
    counts = Counter(math.ceil(g / GRANT_RESOLUTION) * GRANT_RESOLUTION for g in grants)
    return json.dumps(sorted(counts.items()))


def decode_grants(text: str) -> tuple[float, ...]:
    """What `encode_grants` stored, one time per grant (a plain list of times is read too)."""
    grants: list[float] = []
    for entry in json.loads(text):
        if isinstance(entry, list):
            when, count = entry
            grants.extend([float(when)] * int(count))
        else:
            grants.append(float(entry))
    return tuple(grants)


@dataclass(frozen=True, slots=True)
class TransitionPlan:
    """A checked `transition`: what a backend writes, in its own SQL, as one compare-and-set."""

    sources: tuple[JobState, ...]  # the job must be in one of these
    fields: dict[str, Any]  # names from `JOB_FIELDS`, the entry stamp included


def plan_transition(
    from_states: JobState | Iterable[JobState],
    to_state: JobState,
    fields: Mapping[str, Any],
    now: float,
) -> TransitionPlan:
    """The state machine's rules for one `transition`, the same for every backend.

    Only the `from_states` with a legal edge to `to_state` are matched (staying in the same
    state is always legal: a guarded update of fields), so "fail it from wherever it is" can
    list every unfinished state and a job in a state with no such edge is refused (None).
    Raises `IllegalTransition` when no listed state may reach `to_state` at all, or a state
    name is unknown: a bug in the caller, not a race; `ValueError` for a field that is not a
    job column. `submitted_at`, `completed_at` and `delivered_at` are stamped with `now` on
    entering those states."""
    requested = (from_states,) if isinstance(from_states, str) else tuple(from_states)
    for state in (*requested, to_state):
        if state not in LEGAL_TRANSITIONS:
            raise IllegalTransition(f"unknown job state {state!r}")
    sources = tuple(s for s in requested if s == to_state or to_state in LEGAL_TRANSITIONS[s])
    if not sources:
        raise IllegalTransition(f"a job never goes from {requested!r} to {to_state!r}")
    unknown = set(fields) - JOB_FIELDS
    if unknown:
        raise ValueError(f"not a job field: {', '.join(sorted(unknown))}")
    values = dict(fields)
    stamp = ENTRY_STAMPS.get(to_state)
    if stamp is not None and stamp not in values and to_state not in sources:
        values[stamp] = now
    return TransitionPlan(sources, values)


# --------------------------------------------------------------------------------------------
# Rows


# The `Job` fields in order, as every backend reads them: the job row's columns, then its
# ledger row's.
JOB_ROW: tuple[str, ...] = (
    "id",
    "guild_id",
    "channel_id",
    "user_id",
    "prompt",
    "params",
    "image_url",
    "request_id",
    "state",
    "queue_seq",
    "created_at",
    "updated_at",
    "submitted_at",
    "completed_at",
    "delivered_at",
    "cost",
    "bytes",
    "error",
    "placeholder_channel_id",
    "placeholder_message_id",
    "interaction_token",
    "interaction_created_at",
    "delivered_message_id",
    "delivery_method",
    "upload_limit",
    "output_url",
    "submit_started_at",
    "event_id",
    "gallery_channel_id",
    "gallery_message_id",
)
LEDGER_ROW: tuple[str, ...] = ("status", "charged_amount", "reason")


@dataclass(frozen=True, slots=True)
class Job:
    """One `/veo` request and everything the lifecycle and moderators need about it."""

    id: int
    guild_id: int
    channel_id: int
    user_id: int
    prompt: str
    params_json: str
    image_url: str | None
    request_id: str | None
    state: JobState
    queue_seq: int
    created_at: float
    updated_at: float
    submitted_at: float | None
    completed_at: float | None
    delivered_at: float | None
    cost: float | None  # what Segmind reported (metrics.cost), if it did
    bytes: int | None
    error: str | None
    placeholder_channel_id: int | None  # None: the placeholder is in `channel_id`
    placeholder_message_id: int | None  # the public "thinking…" message, edited in place
    interaction_token: str | None  # valid 15 minutes from interaction_created_at
    interaction_created_at: float | None
    delivered_message_id: int | None
    delivery_method: str | None
    upload_limit: int | None  # bytes the requester's channel accepts as an attachment
    output_url: str | None  # Segmind's result URL, kept so delivery can resume after a crash
    submit_started_at: float | None  # when the job entered `submitting` (None before schema 5)
    event_id: int | None  # the interaction or message that asked for it (unique per job)
    # The gallery's announcement of the delivered video, so the member's Delete removes it
    # too (its channel kept: the gallery may have moved since).
    gallery_channel_id: int | None
    gallery_message_id: int | None
    ledger_status: LedgerStatus | None  # None only for rows that predate the ledger
    charged_amount: float | None
    ledger_reason: str | None

    @property
    def params(self) -> dict[str, Any]:
        return cast(dict[str, Any], json.loads(self.params_json))

    @property
    def params_model(self) -> VeoParams:
        """The parameters the job was reserved with, decoded once per distinct row text."""
        return _decode_params(self.params_json)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


# VeoParams is frozen, so one decoded value can serve every reader of the same row.
_decode_params = lru_cache(maxsize=1024)(VeoParams.model_validate_json)


@dataclass(frozen=True, slots=True)
class ReserveRequest:
    """A member's request, validated and acknowledged, not yet reserved: what `reserve` needs
    to check the limits and create the job. `role_ids` are the member's roles in that guild."""

    guild_id: int
    channel_id: int
    user_id: int
    role_ids: frozenset[int] | tuple[int, ...]
    params: VeoParams
    now: float | None = None  # None: the store's clock
    interaction_token: str | None = None
    interaction_created_at: float | None = None
    placeholder_channel_id: int | None = None
    placeholder_message_id: int | None = None  # the public "thinking…" message
    upload_limit: int | None = None
    # Set: the job is created `awaiting_approval` (held for a moderator), not `queued`.
    approval: ApprovalHold | None = None
    # Dollars held against the owner's spend caps until Segmind's bill replaces it (the bot's
    # `PriceBook` quote). None: `LimitDefaults.price_per_job`.
    quote: float | None = None
    # The Discord interaction (slash command, menu, button, form) or message (a mention) that
    # asked: at most one job per event, however many gateway sessions delivered it.
    event_id: int | None = None


def initial_state(request: ReserveRequest) -> JobState:
    """The state `reserve` creates the job in: held for a moderator, or straight in line."""
    return "awaiting_approval" if request.approval is not None else "queued"


@dataclass(frozen=True, slots=True)
class Reserved:
    """The job exists (`queued`, or `awaiting_approval` when held) and its quota is held.

    `used`/`limit` describe the member's window including this job (`limit` None: exempt).
    `existing`: the request's `event_id` had already made this job (another gateway session
    got the same event first); nothing was reserved or charged now, and `used`/`limit` are
    not read (0 and None)."""

    job_id: int
    queue_seq: int
    used: int
    limit: int | None
    existing: bool = False


@dataclass(frozen=True, slots=True)
class QuotaView:
    """A member's limits and usage without reserving anything (for `/veo quota`, `/limits`)."""

    limits: EffectiveLimits
    usage: UsageSnapshot
    decision: Allowed | Refusal


@dataclass(frozen=True, slots=True)
class UsageSummary:
    jobs: int
    delivered: int
    failed: int  # failed, expired or unknown
    cancelled: int
    in_progress: int
    refunded: int  # ledger rows released
    cost: float  # dollars charged


@dataclass(frozen=True, slots=True)
class UserUsage:
    user_id: int
    jobs: int
    delivered: int
    cost: float


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    guild_id: int
    actor_id: int
    action: str
    detail: dict[str, Any]
    created_at: float


# --------------------------------------------------------------------------------------------
# The approval lane

ApprovalDecision = Literal["approved", "denied", "expired"]
# Where a decision moves the held job.
DECISION_STATES: dict[ApprovalDecision, JobState] = {
    "approved": "queued",
    "denied": "cancelled",
    "expired": "expired",
}
DECISION_ERRORS: dict[ApprovalDecision, str | None] = {
    "approved": None,
    "denied": "declined by a moderator",
    "expired": "no moderator decided in time",
}


@dataclass(frozen=True, slots=True)
class ApprovalHold:
    """What `reserve` records with a job held for a moderator: the quoted price shown on the
    card, and when the request lapses undecided (epoch seconds)."""

    quote: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class ApprovalSettings:
    """A guild's approval lane. `threshold`: approval is needed when the quote is above it
    (0: always). `expiry_seconds` None: the bot's default."""

    enabled: bool = False
    channel_id: int | None = None
    threshold: float = 0.0
    exempt_roles: frozenset[int] = frozenset()
    approver_role_id: int | None = None
    expiry_seconds: float | None = None


APPROVAL_ROW: tuple[str, ...] = (
    "job_id",
    "guild_id",
    "quote",
    "created_at",
    "expires_at",
    "card_channel_id",
    "card_message_id",
    "decision",
    "decided_by",
    "decided_at",
    "reason",
)


@dataclass(frozen=True, slots=True)
class Approval:
    """A held request and, once made, the one decision about it."""

    job_id: int
    guild_id: int
    quote: float
    created_at: float
    expires_at: float
    card_channel_id: int | None
    card_message_id: int | None
    decision: ApprovalDecision | None
    decided_by: int | None  # None for an expiry (nobody decided)
    decided_at: float | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class DecisionResult:
    """`decide_approval`'s answer. `won`: this call made the decision; otherwise `approval`
    shows the earlier one (or none, when the job ended another way, e.g. withdrawn)."""

    won: bool
    approval: Approval
    job: Job | None


# Read and written the same way by every backend.
APPROVAL_SETTINGS_ROW: tuple[str, ...] = (
    "enabled",
    "channel_id",
    "threshold",
    "exempt_roles",
    "approver_role_id",
    "expiry_seconds",
)


def approval_settings_of(row: tuple[Any, ...] | None) -> ApprovalSettings:
    """A guild's lane from its `APPROVAL_SETTINGS_ROW` columns (no row: the lane is off)."""
    if row is None:
        return ApprovalSettings()
    enabled, channel_id, threshold, exempt, approver, expiry = row
    return ApprovalSettings(
        enabled=bool(enabled),
        channel_id=channel_id,
        threshold=float(threshold),
        exempt_roles=frozenset(int(r) for r in json.loads(exempt or "[]")),
        approver_role_id=approver,
        expiry_seconds=expiry,
    )


def approval_settings_row(settings: ApprovalSettings) -> tuple[Any, ...]:
    """The `APPROVAL_SETTINGS_ROW` values to write (role ids as a sorted JSON list)."""
    return (
        settings.enabled,
        settings.channel_id,
        settings.threshold,
        json.dumps(sorted(settings.exempt_roles)),
        settings.approver_role_id,
        settings.expiry_seconds,
    )


def approval_of(row: tuple[Any, ...]) -> Approval:
    """An `Approval` from its `APPROVAL_ROW` columns."""
    return Approval(*row)


@dataclass(frozen=True, slots=True)
class DaySpend:
    """The owner's spend on one UTC day, by the day each job was reserved (so a job never
    moves between days when its bill arrives).

    `billed`: what Segmind billed (known). `held`: the quotes of jobs whose bill is not known
    yet (`held_jobs` of them), counted against the caps until it is. `quoted`: the quotes of
    the `billed_jobs` jobs Segmind billed (more than 0), beside `billed` for "quoted vs
    billed"."""

    day: date
    billed: float
    held: float
    quoted: float
    billed_jobs: int
    held_jobs: int


def check_billed(amount: float) -> float:
    """A billed amount as the spend ledger stores it: a finite number of dollars ≥ 0."""
    if not math.isfinite(amount) or amount < 0:
        raise ValueError(f"a billed amount is a finite number of dollars >= 0, not {amount!r}")
    return float(amount)


def utc_day(day_number: int) -> date:
    """The UTC date of `floor(epoch / 86400)`, as the backends group spend by day."""
    return date.fromordinal(_EPOCH_ORDINAL + int(day_number))


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


# --------------------------------------------------------------------------------------------
# Money truth: where Segmind's record and the bot's disagree

DiscrepancyKind = Literal[
    "billed_but_refunded",  # the bot counts the job failed/refunded, Segmind billed it
    "unknown_request",  # Segmind billed a request (for our model) the bot has no job for
    "cost_off_quote",  # Segmind billed far from the quote the bot held for the job
    "ambiguous_recovery",  # a lost submit matched several requests: none was adopted
]
DISCREPANCY_KINDS: tuple[DiscrepancyKind, ...] = get_args(DiscrepancyKind)


@dataclass(frozen=True, slots=True)
class NewDiscrepancy:
    """A disagreement to record; one per (kind, request id), however often it is seen."""

    kind: DiscrepancyKind
    request_id: str
    job_id: int | None = None
    guild_id: int | None = None  # None: no known job, so no guild
    billed: float | None = None  # what Segmind's record says it charged, USD
    expected: float | None = None  # what the bot expected (its quote; 0 for a refunded job)
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Discrepancy:
    """A recorded disagreement, as moderators list it. `posted_at` None: not yet posted."""

    id: int
    kind: DiscrepancyKind
    request_id: str
    job_id: int | None
    guild_id: int | None
    billed: float | None
    expected: float | None
    detail: str
    created_at: float
    posted_at: float | None


DISCREPANCY_ROW: tuple[str, ...] = tuple(Discrepancy.__slots__)
