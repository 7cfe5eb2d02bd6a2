"""Notices for the owner's moderators that concern no single job: posted to every server's
log channel (the balance watch's low-credits forecast, for one)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

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
        """Post `text` everywhere; returns in how many channels it landed. A server whose
        channel refuses (deleted, no permission) or whose setting cannot be read is logged
        and skipped: the others still hear of it."""
        # The guild list arrives with the gateway; a notice from the first check after
        # start-up must not go to nobody.
        await self.client.wait_until_ready()
        posted = 0
        for guild in list(self.client.guilds):
            try:
                channel_id = await self.log_channel(guild.id)
            except StoreUnavailable as exc:
                log.warning("guild %s: log channel unknown (%s); notice not posted", guild.id, exc)
                continue
            if channel_id is None:
                continue
            channel = self.client.get_partial_messageable(channel_id, guild_id=guild.id)
            try:
                await channel.send(text, allowed_mentions=discord.AllowedMentions.none())
            except discord.HTTPException as exc:
                log.warning(
                    "guild %s: cannot post in the log channel %s (%s %s)",
                    guild.id,
                    channel_id,
                    exc.status,
                    exc.code,
                )
                continue
            posted += 1
        log.info("notice posted in %d log channel(s)", posted)
        return posted
