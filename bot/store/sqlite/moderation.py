"""Moderation settings on SQLite: guild limits, role and user overrides, exempt roles, blocks,
window resets and the log channel. Every change is audited in the same transaction."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from bot.quota import GuildLimits, LimitOverride
from bot.store.overrides import OverrideCalls
from bot.store.sqlite.connection import SqliteBase


class ModerationQueries(OverrideCalls, SqliteBase):
    """What moderators set, each change written with its audit entry."""

    async def get_guild_limits(self, guild_id: int) -> GuildLimits:
        """The guild's own limit settings (`None` fields use the bot defaults)."""
        row = await self._fetchone(
            "SELECT user_limit, window_hours, concurrency, daily_limit, spend_cap, "
            "monthly_budget FROM guild_settings WHERE guild_id = ?",
            (guild_id,),
        )
        return GuildLimits(*row) if row is not None else GuildLimits()

    async def set_guild_limits(
        self, guild_id: int, limits: GuildLimits, *, actor_id: int, now: float | None = None
    ) -> GuildLimits:
        """Replace the guild's limit settings; returns the previous ones."""
        now = self._now(now)
        async with self._write() as conn:
            old_rows = await self._rows(
                conn,
                "SELECT user_limit, window_hours, concurrency, daily_limit, spend_cap, "
                "monthly_budget FROM guild_settings WHERE guild_id = ?",
                (guild_id,),
            )
            old = GuildLimits(*old_rows[0]) if old_rows else GuildLimits()
            await conn.execute(
                """
                INSERT INTO guild_settings
                    (guild_id, user_limit, window_hours, concurrency, daily_limit, spend_cap,
                     monthly_budget)
                VALUES (?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (guild_id) DO UPDATE SET
                    user_limit = excluded.user_limit, window_hours = excluded.window_hours,
                    concurrency = excluded.concurrency, daily_limit = excluded.daily_limit,
                    spend_cap = excluded.spend_cap, monthly_budget = excluded.monthly_budget
                """,
                (
                    guild_id,
                    limits.user_limit,
                    limits.window_hours,
                    limits.concurrency,
                    limits.daily_limit,
                    limits.spend_cap,
                    limits.monthly_budget,
                ),
            )
            await self._audit(
                conn,
                guild_id,
                actor_id,
                "limits.set",
                {"old": asdict(old), "new": asdict(limits)},
                now,
            )
        return old

    async def _overrides(self, table: str, key: str, guild_id: int) -> dict[int, LimitOverride]:
        rows = await self._fetchall(
            f"SELECT {key}, user_limit, window_hours, concurrency FROM {table} "  # noqa: S608  # table/key are literals below
            "WHERE guild_id = ?",
            (guild_id,),
        )
        return {int(r[0]): LimitOverride(*r[1:]) for r in rows}

    async def _set_override(
        self,
        table: str,
        key: str,
        guild_id: int,
        target_id: int,
        override: LimitOverride | None,
        actor_id: int,
        now: float | None,
    ) -> None:
        now = self._now(now)
        action = f"{table.removesuffix('s')}.{'clear' if override is None else 'set'}"
        async with self._write() as conn:
            if override is None or override.is_empty:
                await conn.execute(
                    f"DELETE FROM {table} WHERE guild_id = ? AND {key} = ?",  # noqa: S608
                    (guild_id, target_id),
                )
                detail: dict[str, Any] = {key: target_id}
            else:
                await conn.execute(
                    f"INSERT INTO {table} (guild_id, {key}, user_limit, window_hours, concurrency) "  # noqa: S608
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (guild_id, "
                    f"{key}) DO UPDATE SET user_limit = excluded.user_limit, "
                    "window_hours = excluded.window_hours, concurrency = excluded.concurrency",
                    (
                        guild_id,
                        target_id,
                        override.user_limit,
                        override.window_hours,
                        override.concurrency,
                    ),
                )
                detail = {key: target_id, **asdict(override)}
            await self._audit(conn, guild_id, actor_id, action, detail, now)

    async def exempt_roles(self, guild_id: int) -> frozenset[int]:
        """Roles whose members have no count limit in the guild."""
        rows = await self._fetchall(
            "SELECT role_id FROM exempt_roles WHERE guild_id = ?", (guild_id,)
        )
        return frozenset(int(r[0]) for r in rows)

    async def set_role_exempt(
        self, guild_id: int, role_id: int, exempt: bool, *, actor_id: int, now: float | None = None
    ) -> bool:
        """Make a role exempt (or not). Returns whether anything changed."""
        now = self._now(now)
        async with self._write() as conn:
            if exempt:
                cursor = await conn.execute(
                    "INSERT OR IGNORE INTO exempt_roles (guild_id, role_id) VALUES (?, ?)",
                    (guild_id, role_id),
                )
            else:
                cursor = await conn.execute(
                    "DELETE FROM exempt_roles WHERE guild_id = ? AND role_id = ?",
                    (guild_id, role_id),
                )
            changed = cursor.rowcount == 1
            if changed:
                action = "exempt_role.add" if exempt else "exempt_role.remove"
                await self._audit(conn, guild_id, actor_id, action, {"role_id": role_id}, now)
            return changed

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
        now = self._now(now)
        async with self._write() as conn:
            await conn.execute(
                "INSERT INTO blocks (guild_id, user_id, reason, blocked_by, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (guild_id, user_id) DO UPDATE SET "
                "reason = excluded.reason, blocked_by = excluded.blocked_by, "
                "created_at = excluded.created_at",
                (guild_id, user_id, reason, actor_id, now),
            )
            await self._audit(
                conn, guild_id, actor_id, "block", {"user_id": user_id, "reason": reason}, now
            )

    async def unblock_user(
        self, guild_id: int, user_id: int, *, actor_id: int, now: float | None = None
    ) -> bool:
        """Lift a block; False if the user was not blocked."""
        now = self._now(now)
        async with self._write() as conn:
            cursor = await conn.execute(
                "DELETE FROM blocks WHERE guild_id = ? AND user_id = ?", (guild_id, user_id)
            )
            if cursor.rowcount != 1:
                return False
            await self._audit(conn, guild_id, actor_id, "unblock", {"user_id": user_id}, now)
            return True

    async def reset_user_window(
        self, guild_id: int, user_id: int, *, actor_id: int, now: float | None = None
    ) -> None:
        """Give the user a fresh window: reservations made before now stop counting toward
        their per-user limit. History, guild and global counts and spend are untouched."""
        now = self._now(now)
        async with self._write() as conn:
            await conn.execute(
                "INSERT INTO window_resets (guild_id, user_id, reset_at, reset_by) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (guild_id, user_id) DO UPDATE SET "
                "reset_at = excluded.reset_at, reset_by = excluded.reset_by",
                (guild_id, user_id, now, actor_id),
            )
            await self._audit(conn, guild_id, actor_id, "window.reset", {"user_id": user_id}, now)

    async def get_log_channel(self, guild_id: int) -> int | None:
        """The channel where moderation events are posted, if set."""
        row = await self._fetchone(
            "SELECT log_channel_id FROM guild_settings WHERE guild_id = ?", (guild_id,)
        )
        return int(row[0]) if row is not None and row[0] is not None else None

    async def set_log_channel(
        self, guild_id: int, channel_id: int | None, *, actor_id: int, now: float | None = None
    ) -> None:
        """Set (or with None clear) the guild's log channel."""
        now = self._now(now)
        async with self._write() as conn:
            await conn.execute(
                "INSERT INTO guild_settings (guild_id, log_channel_id) VALUES (?, ?) "
                "ON CONFLICT (guild_id) DO UPDATE SET log_channel_id = excluded.log_channel_id",
                (guild_id, channel_id),
            )
            await self._audit(
                conn, guild_id, actor_id, "log_channel.set", {"channel_id": channel_id}, now
            )
