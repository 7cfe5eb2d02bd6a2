"""The store: jobs as a persisted state machine, the quota ledger, moderation settings, reports
and audit. Callers import from here and depend on the `Store` protocol (`bot.store.protocol`),
never on a backend; the vocabulary (states, rows, errors) lives in `bot.store.model`, the SQLite
backend in `bot.store.sqlite`."""

import time
from collections.abc import Callable
from pathlib import Path

from bot.store.model import (
    ALL_STATES,
    IN_FLIGHT_STATES,
    JOB_FIELDS,
    LEGAL_TRANSITIONS,
    TERMINAL_STATES,
    AuditEntry,
    IllegalTransition,
    Job,
    JobFields,
    JobState,
    ReleaseReason,
    Reserved,
    ReserveRequest,
    StoreError,
    StoreUnavailable,
    UsageSummary,
    UserUsage,
)
from bot.store.protocol import JobStore, LedgerStore, ModerationStore, ReportStore, Store
from bot.store.sqlite import SqliteStore
from bot.store.sqlite.migrations import MIGRATIONS, SCHEMA_VERSION, Migration, apply_migrations


async def open_store(path: str | Path, *, clock: Callable[[], float] = time.time) -> Store:
    """Open the bot's database: the SQLite file at `path`, created and migrated as needed."""
    return await SqliteStore.open(path, clock=clock)


__all__ = [
    "ALL_STATES",
    "IN_FLIGHT_STATES",
    "JOB_FIELDS",
    "LEGAL_TRANSITIONS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "TERMINAL_STATES",
    "AuditEntry",
    "IllegalTransition",
    "Job",
    "JobFields",
    "JobState",
    "JobStore",
    "LedgerStore",
    "Migration",
    "ModerationStore",
    "ReleaseReason",
    "ReportStore",
    "ReserveRequest",
    "Reserved",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "UsageSummary",
    "UserUsage",
    "apply_migrations",
    "open_store",
]
