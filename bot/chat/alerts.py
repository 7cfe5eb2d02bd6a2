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

from bot.chat.notices import LogChannels
from bot.store import Discrepancy

log = logging.getLogger(__name__)


class DiscordAlerts:
    """Posts disagreements to log channels, pinging nobody."""

    def __init__(
        self, client: discord.Client, *, log_channel: Callable[[int], Awaitable[int | None]]
    ) -> None:
        self.client = client
        self.channels = LogChannels(client, log_channel)

    async def post(self, discrepancy: Discrepancy, text: str) -> bool:
        if discrepancy.guild_id is not None:
            guild_ids = [discrepancy.guild_id]
        else:
            guild_ids = [guild.id for guild in self.client.guilds]
        reached = await self.channels.post(guild_ids, text)
        if not reached:
            log.info("discrepancy %s reached no log channel; it stays pending", discrepancy.id)
        return reached > 0
