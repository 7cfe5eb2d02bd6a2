"""The gateway's shared state on SQLite: IDENTIFY slots per `max_concurrency` bucket."""

from __future__ import annotations

import sqlite3

from bot.store.sqlite.connection import SqliteBase

# SQLite's own clock in epoch seconds, to the millisecond (`unixepoch('subsec')` needs 3.42).
_DB_NOW = "(julianday('now') - 2440587.5) * 86400.0"


class GatewayQueries(SqliteBase):
    """`GatewayStore` on SQLite."""

    async def claim_identify_slot(self, bucket: int, spacing: float) -> float:
        """See `GatewayStore.claim_identify_slot`: read and move the slot in one
        `BEGIN IMMEDIATE` transaction, so two processes on the file take turns."""

        def body(conn: sqlite3.Connection) -> float:
            (now,) = conn.execute(f"SELECT {_DB_NOW}").fetchone()
            row = conn.execute(
                "SELECT next_at FROM identify_slots WHERE bucket = ?", (bucket,)
            ).fetchone()
            if row is not None and row[0] > now:
                return float(row[0] - now)
            conn.execute(
                "INSERT INTO identify_slots (bucket, next_at) VALUES (?, ?) "
                "ON CONFLICT (bucket) DO UPDATE SET next_at = excluded.next_at",
                (bucket, now + spacing),
            )
            return 0.0

        return await self._run(body)
