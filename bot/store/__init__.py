"""The store: jobs as a persisted state machine, the quota ledger, moderation settings, reports
and audit. Callers import from here; the vocabulary (states, rows, errors) lives in
`bot.store.model`, the SQLite backend in `bot.store.sqlite`."""

from bot.store.model import (
    ALL_STATES,
    IN_FLIGHT_STATES,
    LEGAL_TRANSITIONS,
    TERMINAL_STATES,
    AuditEntry,
    IllegalTransition,
    Job,
    JobState,
    ReleaseReason,
    Reserved,
    ReserveRequest,
    StoreError,
    StoreUnavailable,
    UsageSummary,
    UserUsage,
)
from bot.store.sqlite import Store
from bot.store.sqlite.migrations import MIGRATIONS, SCHEMA_VERSION, Migration, apply_migrations

__all__ = [
    "ALL_STATES",
    "IN_FLIGHT_STATES",
    "LEGAL_TRANSITIONS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "TERMINAL_STATES",
    "AuditEntry",
    "IllegalTransition",
    "Job",
    "JobState",
    "Migration",
    "ReleaseReason",
    "ReserveRequest",
    "Reserved",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "UsageSummary",
    "UserUsage",
    "apply_migrations",
]
