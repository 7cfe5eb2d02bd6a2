"""The store: jobs as a persisted state machine, the quota ledger, moderation settings, reports
and audit. Callers import from here and depend on the `Store` protocol (`bot.store.protocol`),
never on a backend; the vocabulary (states, rows, errors) lives in `bot.store.model`, the SQLite
backend in `bot.store.sqlite`, the PostgreSQL one in `bot.store.postgres`."""

import time
from collections.abc import Callable
from pathlib import Path

from bot.database_url import DatabaseUrlError, backend_of, sqlite_path
from bot.store.model import (
    ALL_STATES,
    DISCREPANCY_KINDS,
    IN_FLIGHT_STATES,
    JOB_FIELDS,
    LEGAL_TRANSITIONS,
    TERMINAL_STATES,
    Approval,
    ApprovalDecision,
    ApprovalHold,
    ApprovalSettings,
    AuditEntry,
    BilledSource,
    BudgetState,
    DaySpend,
    DecisionResult,
    Discrepancy,
    DiscrepancyKind,
    Fenced,
    IllegalTransition,
    Job,
    JobFields,
    JobState,
    Lease,
    ListAdd,
    NewDiscrepancy,
    ReleaseReason,
    Reserved,
    ReserveRequest,
    StoreError,
    StoreUnavailable,
    UsageSummary,
    UserUsage,
)
from bot.store.protocol import (
    ApprovalStore,
    GatewayStore,
    JobStore,
    LedgerStore,
    ModerationStore,
    ReconcileStore,
    ReportStore,
    RuleStore,
    RunnerStore,
    SpendStore,
    Store,
)
from bot.store.sqlite import SqliteStore
from bot.store.sqlite.migrations import MIGRATIONS, SCHEMA_VERSION, Migration, apply_migrations


async def open_store(where: str | Path, *, clock: Callable[[], float] = time.time) -> Store:
    """Open the bot's database, created (SQLite) and migrated as needed: a database URL
    (`sqlite:///path`, `postgresql://…`: `Settings.database_url`), or a SQLite file's path.

    An unknown URL scheme is a `StoreError`, never a guess."""
    if isinstance(where, Path) or "://" not in where:
        return await SqliteStore.open(where, clock=clock)
    try:
        backend = backend_of(where)
    except DatabaseUrlError as exc:
        raise StoreError(f"not a database URL: {exc}") from None
    if backend == "sqlite":
        return await SqliteStore.open(sqlite_path(where), clock=clock)
    # Imported here: a SQLite-only bot (and every tool) never loads the PostgreSQL driver.
    from bot.store.postgres import PostgresStore

    return await PostgresStore.open(where, clock=clock)


__all__ = [
    "ALL_STATES",
    "DISCREPANCY_KINDS",
    "IN_FLIGHT_STATES",
    "JOB_FIELDS",
    "LEGAL_TRANSITIONS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "TERMINAL_STATES",
    "Approval",
    "ApprovalDecision",
    "ApprovalHold",
    "ApprovalSettings",
    "ApprovalStore",
    "AuditEntry",
    "BilledSource",
    "BudgetState",
    "DaySpend",
    "DecisionResult",
    "Discrepancy",
    "DiscrepancyKind",
    "Fenced",
    "GatewayStore",
    "IllegalTransition",
    "Job",
    "JobFields",
    "JobState",
    "JobStore",
    "Lease",
    "LedgerStore",
    "ListAdd",
    "Migration",
    "ModerationStore",
    "NewDiscrepancy",
    "ReconcileStore",
    "ReleaseReason",
    "ReportStore",
    "ReserveRequest",
    "Reserved",
    "RuleStore",
    "RunnerStore",
    "SpendStore",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "UsageSummary",
    "UserUsage",
    "apply_migrations",
    "open_store",
]
