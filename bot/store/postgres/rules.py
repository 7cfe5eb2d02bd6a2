"""Moderators' rules on PostgreSQL: banned words, allowed channels and the gallery channel.
Every change is audited in the same transaction. A list's size is checked under a per-guild
advisory lock: READ COMMITTED alone would let two moderators adding at once both see room."""

from __future__ import annotations

from bot.moderation import entry_key
from bot.store.model import ListAdd
from bot.store.postgres.connection import PostgresBase, affected, lock_key
from bot.store.sqlite.rules import _key


class RuleQueries(PostgresBase):
    """Banned words, allowed channels, the gallery channel."""

    async def banned_words(self, guild_id: int) -> list[str]:
        """The guild's banned entries as moderators typed them, oldest first."""
        rows = await self._fetch(
            "SELECT entry FROM banned_words WHERE guild_id = $1 ORDER BY id",
            guild_id,
        )
        return [str(r[0]) for r in rows]

    async def add_banned_word(
        self,
        guild_id: int,
        entry: str,
        *,
        actor_id: int,
        max_entries: int,
        now: float | None = None,
    ) -> ListAdd:
        """Ban an entry (compared by `bot.moderation.entry_key`); "exists" when an entry with
        the same key is banned, "full" when the guild has `max_entries` already."""
        key, now = _key(entry), self._now(now)
        async with self._transaction() as conn:
            await self._lock(conn, [lock_key("banned_words", guild_id)])
            if await conn.fetchval(
                "SELECT 1 FROM banned_words WHERE guild_id = $1 AND entry_key = $2",
                guild_id,
                key,
            ):
                return "exists"
            count = await conn.fetchval(
                "SELECT COUNT(*) FROM banned_words WHERE guild_id = $1", guild_id
            )
            if int(count) >= max_entries:
                return "full"
            await conn.execute(
                "INSERT INTO banned_words (guild_id, entry_key, entry, added_by, created_at) "
                "VALUES ($1, $2, $3, $4, $5)",
                guild_id,
                key,
                entry,
                actor_id,
                now,
            )
            await self._audit(conn, guild_id, actor_id, "banned_word.add", {"entry": entry}, now)
        return "added"

    async def remove_banned_word(
        self, guild_id: int, entry: str, *, actor_id: int, now: float | None = None
    ) -> str | None:
        """Lift the ban on the entry with `entry`'s key; returns it as it was typed, or None
        when no such entry was banned."""
        key, now = entry_key(entry), self._now(now)
        async with self._transaction() as conn:
            removed = await conn.fetchval(
                "DELETE FROM banned_words WHERE guild_id = $1 AND entry_key = $2 RETURNING entry",
                guild_id,
                key,
            )
            if removed is None:
                return None
            await self._audit(
                conn, guild_id, actor_id, "banned_word.remove", {"entry": str(removed)}, now
            )
        return str(removed)

    async def allowed_channels(self, guild_id: int) -> frozenset[int]:
        """The channels the bot works in (empty: everywhere)."""
        rows = await self._fetch(
            "SELECT channel_id FROM allowed_channels WHERE guild_id = $1", guild_id
        )
        return frozenset(int(r[0]) for r in rows)

    async def allow_channel(
        self,
        guild_id: int,
        channel_id: int,
        *,
        actor_id: int,
        max_channels: int,
        now: float | None = None,
    ) -> ListAdd:
        """Add a channel to the guild's allowed list."""
        now = self._now(now)
        async with self._transaction() as conn:
            await self._lock(conn, [lock_key("allowed_channels", guild_id)])
            if await conn.fetchval(
                "SELECT 1 FROM allowed_channels WHERE guild_id = $1 AND channel_id = $2",
                guild_id,
                channel_id,
            ):
                return "exists"
            count = await conn.fetchval(
                "SELECT COUNT(*) FROM allowed_channels WHERE guild_id = $1", guild_id
            )
            if int(count) >= max_channels:
                return "full"
            await conn.execute(
                "INSERT INTO allowed_channels (guild_id, channel_id, added_by, created_at) "
                "VALUES ($1, $2, $3, $4)",
                guild_id,
                channel_id,
                actor_id,
                now,
            )
            await self._audit(
                conn, guild_id, actor_id, "channel.allow", {"channel_id": channel_id}, now
            )
        return "added"

    async def remove_channel(
        self, guild_id: int, channel_id: int, *, actor_id: int, now: float | None = None
    ) -> bool:
        """Take a channel off the allowed list; False if it was not on it."""
        now = self._now(now)
        async with self._transaction() as conn:
            status = await conn.execute(
                "DELETE FROM allowed_channels WHERE guild_id = $1 AND channel_id = $2",
                guild_id,
                channel_id,
            )
            if affected(status) != 1:
                return False
            await self._audit(
                conn, guild_id, actor_id, "channel.remove", {"channel_id": channel_id}, now
            )
        return True

    async def get_gallery_channel(self, guild_id: int) -> int | None:
        """The channel where delivered videos are announced, if set."""
        value = await self._fetchval(
            "SELECT gallery_channel_id FROM guild_settings WHERE guild_id = $1", guild_id
        )
        return int(value) if value is not None else None

    async def set_gallery_channel(
        self, guild_id: int, channel_id: int | None, *, actor_id: int, now: float | None = None
    ) -> None:
        """Set (or with None clear) the guild's gallery channel."""
        now = self._now(now)
        async with self._transaction() as conn:
            await conn.execute(
                "INSERT INTO guild_settings (guild_id, gallery_channel_id) VALUES ($1, $2) "
                "ON CONFLICT (guild_id) DO UPDATE SET "
                "gallery_channel_id = excluded.gallery_channel_id",
                guild_id,
                channel_id,
            )
            await self._audit(
                conn, guild_id, actor_id, "gallery.set", {"channel_id": channel_id}, now
            )
