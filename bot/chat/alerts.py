"""`Alerts` for Discord: a disagreement with Segmind's record, posted to moderators' log channels.

A disagreement about a known job goes to its guild's log channel. One with no guild (a request
Segmind billed that no job of the bot made) concerns the bot's owner, who may run the bot in
several guilds: it goes to every guild's log channel that is set. With no log channel at all
nothing is posted (the store keeps it pending, the log says so, and `/veo-admin discrepancies`
lists it).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import discord

from bot.store import Discrepancy

log = logging.getLogger(__name__)


class DiscordAlerts:
    """Posts to log channels, pinging nobody."""

    def __init__(
        self, client: discord.Client, *, log_channel: Callable[[int], Awaitable[int | None]]
    ) -> None:
        self.client = client
        self.log_channel = log_channel  # a guild's moderator log channel, if it set one

    async def post(self, discrepancy: Discrepancy, text: str) -> bool:
        if discrepancy.guild_id is not None:
            guild_ids = [discrepancy.guild_id]
        else:
            guild_ids = [guild.id for guild in self.client.guilds]
        reached = False
        for guild_id in guild_ids:
            channel_id = await self.log_channel(guild_id)
            if channel_id is None:
                continue
            channel = self.client.get_partial_messageable(channel_id, guild_id=guild_id)
            try:
                await channel.send(text, allowed_mentions=discord.AllowedMentions.none())
            except discord.HTTPException as exc:
                log.warning(
                    "cannot post discrepancy %s in the log channel %s (%s %s)",
                    discrepancy.id,
                    channel_id,
                    exc.status,
                    exc.code,
                )
                continue
            reached = True
        return reached
