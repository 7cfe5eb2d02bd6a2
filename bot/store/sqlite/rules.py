"""Moderators' rules on SQLite: banned words, allowed channels and the gallery channel. Every
change is audited in the same transaction; a list's size is checked inside it too, so two
moderators adding at once can never pass the maximum."""

from __future__ import annotations

from bot.moderation import entry_key
from bot.store.model import ListAdd
from bot.store.sqlite.connection import SqliteBase


def _key(entry: str) -> str:
    key = entry_key(entry)
    if not key:
        raise ValueError("a banned entry needs at least one letter or digit")
    return key


class RuleQueries(SqliteBase):
    """Banned words, allowed channels, the gallery channel."""

    async def banned_words(self, guild_id: int) -> list[str]:
        """The guild's banned entries as moderators typed them, oldest first."""
        rows = await self._fetchall(
            "SELECT entry FROM banned_words WHERE guild_id = ? ORDER BY id",
            (guild_id,),
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
        async with self._write() as conn:
            if await self._rows(
                conn,
                "SELECT 1 FROM banned_words WHERE guild_id = ? AND entry_key = ?",
                (guild_id, key),
            ):
                return "exists"
            count = await self._rows(
                conn, "SELECT COUNT(*) FROM banned_words WHERE guild_id = ?", (guild_id,)
            )
            if int(count[0][0]) >= max_entries:
                return "full"
            await conn.execute(
                "INSERT INTO banned_words (guild_id, entry_key, entry, added_by, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (guild_id, key, entry, actor_id, now),
            )
            await self._audit(conn, guild_id, actor_id, "banned_word.add", {"entry": entry}, now)
        return "added"

    async def remove_banned_word(
        self, guild_id: int, entry: str, *, actor_id: int, now: float | None = None
    ) -> str | None:
        """Lift the ban on the entry with `entry`'s key; returns it as it was typed, or None
        when no such entry was banned."""
        key, now = entry_key(entry), self._now(now)
        async with self._write() as conn:
            rows = await self._rows(
                conn,
                "DELETE FROM banned_words WHERE guild_id = ? AND entry_key = ? RETURNING entry",
                (guild_id, key),
            )
            if not rows:
                return None
            removed = str(rows[0][0])
            await self._audit(
                conn, guild_id, actor_id, "banned_word.remove", {"entry": removed}, now
            )
        return removed

    async def allowed_channels(self, guild_id: int) -> frozenset[int]:
        """The channels the bot works in (empty: everywhere)."""
        rows = await self._fetchall(
            "SELECT channel_id FROM allowed_channels WHERE guild_id = ?", (guild_id,)
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
        async with self._write() as conn:
            if await self._rows(
                conn,
                "SELECT 1 FROM allowed_channels WHERE guild_id = ? AND channel_id = ?",
                (guild_id, channel_id),
            ):
                return "exists"
            count = await self._rows(
                conn, "SELECT COUNT(*) FROM allowed_channels WHERE guild_id = ?", (guild_id,)
            )
            if int(count[0][0]) >= max_channels:
                return "full"
            await conn.execute(
                "INSERT INTO allowed_channels (guild_id, channel_id, added_by, created_at) "
                "VALUES (?, ?, ?, ?)",
                (guild_id, channel_id, actor_id, now),
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
        async with self._write() as conn:
            cursor = await conn.execute(
                "DELETE FROM allowed_channels WHERE guild_id = ? AND channel_id = ?",
                (guild_id, channel_id),
            )
            if cursor.rowcount != 1:
                return False
            await self._audit(
                conn, guild_id, actor_id, "channel.remove", {"channel_id": channel_id}, now
            )
        return True

    async def get_gallery_channel(self, guild_id: int) -> int | None:
        """The channel where delivered videos are announced, if set."""
        row = await self._fetchone(
            "SELECT gallery_channel_id FROM guild_settings WHERE guild_id = ?", (guild_id,)
        )
        return int(row[0]) if row is not None and row[0] is not None else None

    async def set_gallery_channel(
        self, guild_id: int, channel_id: int | None, *, actor_id: int, now: float | None = None
    ) -> None:
        """Set (or with None clear) the guild's gallery channel."""
        now = self._now(now)
        async with self._write() as conn:
            await conn.execute(
                "INSERT INTO guild_settings (guild_id, gallery_channel_id) VALUES (?, ?) "
                "ON CONFLICT (guild_id) DO UPDATE SET "
                "gallery_channel_id = excluded.gallery_channel_id",
                (guild_id, channel_id),
            )
            await self._audit(
                conn, guild_id, actor_id, "gallery.set", {"channel_id": channel_id}, now
            )
