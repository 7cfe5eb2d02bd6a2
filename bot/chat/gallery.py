"""The gallery: each delivered video announced in the guild's gallery channel, as a link to the
video's message (not a second upload), and withdrawn when the member deletes the video.

Best effort by design: a gallery that cannot be posted to never fails or delays a delivery;
the job's log says why. The announcement's channel and message ids are kept with the job, so
Delete finds it even after a restart or after the gallery moved.
"""

from __future__ import annotations

import logging

import aiohttp
import discord

from bot.chat.presenter import safe_text
from bot.chat.reports import message_url
from bot.store import Job, Store

log = logging.getLogger(__name__)

PROMPT_IN_GALLERY = 300


def announcement(job: Job, link: str) -> str:
    """The gallery line: the requester (a mention that renders their name; nobody is pinged),
    the prompt escaped on one line, and the jump link to the video."""
    prompt = " ".join(job.prompt.split())
    if len(prompt) > PROMPT_IN_GALLERY:
        prompt = prompt[: PROMPT_IN_GALLERY - 1].rstrip() + "…"
    return f"🎬 New video by <@{job.user_id}>: {safe_text(prompt)}\n{link}"


class Gallery:
    """Posts and removes gallery announcements. One per bot."""

    def __init__(self, client: discord.Client, store: Store) -> None:
        self.client = client
        self.store = store

    async def announce(self, job: Job) -> None:
        """Announce a delivered job in its guild's gallery, if the guild has one. Never raises."""
        try:
            await self._announce(job)
        except Exception:
            log.exception("job %s: the gallery announcement failed", job.id)

    async def _announce(self, job: Job) -> None:
        if job.state != "delivered" or job.gallery_message_id is not None:
            return
        channel_id = await self.store.get_gallery_channel(job.guild_id)
        if channel_id is None:
            return
        if job.delivery_method == "dm":
            log.info("job %s: delivered by DM, nothing to link in the gallery", job.id)
            return
        link = message_url(job)
        if link is None:
            return
        channel = self.client.get_partial_messageable(channel_id, guild_id=job.guild_id)
        try:
            message = await channel.send(
                announcement(job, link),
                allowed_mentions=discord.AllowedMentions.none(),
                nonce=f"veo-{job.id}-gallery",  # a retried post is not shown twice
            )
        except (discord.HTTPException, aiohttp.ClientError, TimeoutError) as exc:
            log.warning(
                "job %s: cannot post in the gallery channel %s (%s)", job.id, channel_id, exc
            )
            return
        await self.store.transition(
            job.id,
            "delivered",
            "delivered",
            gallery_channel_id=channel_id,
            gallery_message_id=message.id,
        )
        log.info("job %s: announced in the gallery (message %s)", job.id, message.id)

    async def withdraw(self, job: Job) -> None:
        """Remove the job's announcement (the member deleted the video). Never raises."""
        if job.gallery_message_id is None or job.gallery_channel_id is None:
            return
        channel = self.client.get_partial_messageable(job.gallery_channel_id, guild_id=job.guild_id)
        try:
            await channel.get_partial_message(job.gallery_message_id).delete()
        except discord.NotFound:
            pass  # a moderator removed it already
        except (discord.HTTPException, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("job %s: cannot remove the gallery announcement (%s)", job.id, exc)
            return
        try:
            await self.store.transition(
                job.id, "delivered", "delivered", gallery_channel_id=None, gallery_message_id=None
            )
        except Exception:
            log.exception("job %s: gallery announcement removed but not forgotten", job.id)
        log.info("job %s: gallery announcement removed", job.id)
