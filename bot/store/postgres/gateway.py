"""The gateway's shared state on PostgreSQL: IDENTIFY slots per `max_concurrency` bucket."""

from __future__ import annotations

from bot.store.postgres.connection import PostgresBase

# The server's clock (not the transaction's start, which `now()` would give) in epoch seconds.
_DB_NOW = "extract(epoch FROM clock_timestamp())::double precision"


class GatewayQueries(PostgresBase):
    """`GatewayStore` on PostgreSQL."""

    async def claim_identify_slot(self, bucket: int, spacing: float) -> float:
        """See `GatewayStore.claim_identify_slot`: the bucket's row is locked (`FOR UPDATE`)
        while it is read and moved, so nodes claiming at once take turns."""
        async with self._transaction() as conn:
            await conn.execute(
                "INSERT INTO identify_slots (bucket, next_at) VALUES ($1, 0) "
                "ON CONFLICT (bucket) DO NOTHING",
                bucket,
            )
            row = await conn.fetchrow(
                f"SELECT next_at, {_DB_NOW} FROM identify_slots WHERE bucket = $1 FOR UPDATE",  # noqa: S608  # a constant
                bucket,
            )
            assert row is not None  # inserted above if it was missing
            next_at, now = float(row[0]), float(row[1])
            if next_at > now:
                return next_at - now
            await conn.execute(
                "UPDATE identify_slots SET next_at = $2 WHERE bucket = $1", bucket, now + spacing
            )
            return 0.0
