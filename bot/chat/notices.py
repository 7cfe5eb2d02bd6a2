"""Posting to moderators' log channels, pinging nobody: one server's (a banned word, a
disagreement about its job) or every server's (the balance watch's low-credits forecast, a
bill no job of the bot made)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

import discord

from bot.store import StoreUnavailable

log = logging.getLogger(__name__)


class LogChannels:
    """Posts one text to the log channel of every server the bot is in that set one."""

    def __init__(
        self, client: discord.Client, log_channel: Callable[[int], Awaitable[int | None]]
    ) -> None:
        self.client = client
        self.log_channel = log_channel

    async def post_all(self, text: str) -> int:
        """Post `text` in every server's log channel; returns in how many it landed."""
        # The guild list arrives with the gateway; a notice from the first check after
        # start-up must not go to nobody.
        await self.client.wait_until_ready()
        posted = await self.post([guild.id for guild in self.client.guilds], text)
        log.info("notice posted in %d log channel(s)", posted)
        return posted

    async def post(self, guild_ids: Iterable[int], text: str) -> int:
        """Post `text` in the log channel of each of these servers that set one; returns in
        how many it landed. A server whose channel refuses (deleted, no permission) or whose
        setting cannot be read is logged and skipped: the others still hear of it."""
        posted = 0
        for guild_id in guild_ids:
            try:
                channel_id = await self.log_channel(guild_id)
            except StoreUnavailable as exc:
                log.warning("guild %s: log channel unknown (%s); not posted", guild_id, exc)
                continue
            if channel_id is None:
                continue
            channel = self.client.get_partial_messageable(channel_id, guild_id=guild_id)
            try:
                await channel.send(text, allowed_mentions=discord.AllowedMentions.none())
            except discord.HTTPException as exc:
                log.warning(
                    "guild %s: cannot post in the log channel %s (%s %s)",
                    guild_id,
                    channel_id,
                    exc.status,
                    exc.code,
                )
                continue
            posted += 1
        return posted
