"""The runner lease and the Segmind budget on PostgreSQL.

The lease's clock is the server's `clock_timestamp()` (the time at the statement, not at the
transaction's start as `now()` would be): every node judges expiry by the one clock of the
database, whatever its own clock says."""

from __future__ import annotations

from typing import Any

from bot.store.model import BudgetState, Lease, decode_grants, encode_grants
from bot.store.postgres.connection import PostgresBase

_DB_NOW = "extract(epoch FROM clock_timestamp())::double precision"
_RETURNING = "RETURNING name, owner, epoch, expires_at"


def _lease(row: Any) -> Lease:
    return Lease(str(row[0]), str(row[1]), int(row[2]), float(row[3]))


class LeaseQueries(PostgresBase):
    """Take, renew and give back the runner lease; record and load the request budget."""

    async def acquire_lease(self, name: str, owner: str, seconds: float) -> Lease | None:
        """Take the lease if nobody holds it or its holder's term lapsed (by the database's
        clock), starting a new term with the next epoch; None while someone else holds it.
        Two nodes racing: ON CONFLICT makes one wait for the other's row and re-check it.
        The new epoch is written to `runner_fence` in the same transaction, which waits for
        every runner write still checking the old one to end."""
        async with self._transaction() as conn:
            row = await conn.fetchrow(
                "INSERT INTO runner_lease (name, owner, epoch, expires_at) "  # noqa: S608
                f"VALUES ($1, $2, 1, {_DB_NOW} + $3) "
                "ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, "
                "epoch = runner_lease.epoch + 1, expires_at = EXCLUDED.expires_at "
                f"WHERE runner_lease.expires_at <= {_DB_NOW} {_RETURNING}",
                name,
                owner,
                float(seconds),
            )
            if row is None:
                return None
            await conn.execute(
                "INSERT INTO runner_fence (name, epoch) VALUES ($1, $2) "
                "ON CONFLICT (name) DO UPDATE SET epoch = EXCLUDED.epoch",
                name,
                row[2],
            )
        # The term was counted from the INSERT; waiting for the fence shortened it, never
        # lengthened it, so the holder renews in time either way.
        return _lease(row)

    async def renew_lease(self, lease: Lease, seconds: float) -> Lease | None:
        """Extend this term by `seconds` from now; None if another term began (stand down)."""
        row = await self._fetchrow(
            f"UPDATE runner_lease SET expires_at = {_DB_NOW} + $1 "  # noqa: S608
            f"WHERE name = $2 AND epoch = $3 AND owner = $4 {_RETURNING}",
            float(seconds),
            lease.name,
            lease.epoch,
            lease.owner,
        )
        return _lease(row) if row is not None else None

    async def release_lease(self, lease: Lease) -> bool:
        """End this term now (a clean shutdown), so a standby need not wait it out."""
        row = await self._fetchrow(
            f"UPDATE runner_lease SET expires_at = {_DB_NOW} "  # noqa: S608
            f"WHERE name = $1 AND epoch = $2 AND owner = $3 {_RETURNING}",
            lease.name,
            lease.epoch,
            lease.owner,
        )
        return row is not None

    async def current_lease(self, name: str) -> Lease | None:
        """The lease row as it stands (held or lapsed), for health and tests."""
        row = await self._fetchrow(
            "SELECT name, owner, epoch, expires_at FROM runner_lease WHERE name = $1", name
        )
        return _lease(row) if row is not None else None

    async def save_budget(self, name: str, state: BudgetState) -> None:
        """Record the budget; on a fenced view only while its term is the newest."""
        async with self._transaction() as conn:  # a fenced view checks its epoch first
            await conn.execute(
                "INSERT INTO segmind_budget (name, grants, paused_until) VALUES ($1, $2, $3) "
                "ON CONFLICT (name) DO UPDATE SET grants = EXCLUDED.grants, "
                "paused_until = EXCLUDED.paused_until",
                name,
                encode_grants(state.grants),
                state.paused_until,
            )

    async def load_budget(self, name: str) -> BudgetState | None:
        """The budget the last runner recorded, if any."""
        row = await self._fetchrow(
            "SELECT grants::text, paused_until FROM segmind_budget WHERE name = $1", name
        )
        if row is None:
            return None
        grants = decode_grants(row[0])
        return BudgetState(grants, None if row[1] is None else float(row[1]))
