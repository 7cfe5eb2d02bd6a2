"""From an acknowledged interaction to a queued job: shared by `/veo`, the context menu and buttons.

The caller has already deferred publicly (the 3-second rule). Anything refused here — a bad
option, a limit, the database being down — removes the public "thinking…" placeholder and
answers privately, so a refusal never clutters the channel and nothing is charged.
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Any

import discord

from bot.jobs import NewJob
from bot.params import InvalidParams, parse_params
from bot.quota import Refusal, render_refusal
from bot.store import StoreUnavailable

if TYPE_CHECKING:
    from bot.app import VeoBot

log = logging.getLogger(__name__)

SEED_MAX = 2**32 - 1


async def start_job(
    bot: VeoBot,
    interaction: discord.Interaction[VeoBot],
    raw: dict[str, Any],
    *,
    image: discord.Attachment | None = None,
    aspect_given: bool = True,
) -> int | None:
    """Validate, reserve and queue; returns the job id, or None when refused (user told)."""
    assert bot.jobs is not None
    if interaction.guild is None or interaction.channel_id is None:
        await refuse(interaction, "Use /veo in a server channel.")
        return None
    if image is not None:
        raw["image_url"] = image.url
    if not raw.get("seed"):
        # Choose the seed ourselves so the final message can say which one made this video.
        raw["seed"] = secrets.randbelow(SEED_MAX) + 1
    try:
        params = parse_params(raw)
    except InvalidParams as exc:
        await refuse(interaction, exc.user_message)
        return None

    member = interaction.user
    # Every role id Discord sent: `Member.roles` silently drops roles missing from the guild
    # cache, and a stale cache must never change someone's limits.
    raw_roles = getattr(member, "_roles", None)  # discord.py's SnowflakeList of payload ids
    role_ids = (
        [int(r) for r in raw_roles]
        if raw_roles is not None
        else [role.id for role in getattr(member, "roles", [])]
    )
    message_id = await placeholder_id(interaction)
    new = NewJob(
        guild_id=interaction.guild.id,
        channel_id=interaction.channel_id,
        user_id=member.id,
        role_ids=tuple(role_ids),
        params=params,
        interaction_token=interaction.token,
        interaction_created_at=interaction.created_at.timestamp(),
        message_id=message_id,
        upload_limit=interaction.filesize_limit,
    )
    try:
        outcome = await bot.jobs.enqueue(new)
    except StoreUnavailable:
        log.exception("database unavailable; refusing /veo from user %s", member.id)
        await refuse(
            interaction,
            "The bot cannot reach its database right now, so /veo is paused to keep limits "
            "exact. Please try again later.",
        )
        return None
    if isinstance(outcome, Refusal):
        await refuse(interaction, render_refusal(outcome))
        return None
    log.info("job %s queued for user %s in guild %s", outcome, member.id, interaction.guild.id)
    return outcome


async def placeholder_id(interaction: discord.Interaction[VeoBot]) -> int | None:
    """The id of the public "thinking…" message, so it can be edited after a restart."""
    try:
        message = await interaction.original_response()
    except discord.HTTPException as exc:
        log.warning("interaction %s: cannot read the placeholder (%s)", interaction.id, exc)
        return None
    return message.id


async def refuse(interaction: discord.Interaction[VeoBot], text: str) -> None:
    """Replace the public placeholder by a private answer."""
    try:
        await interaction.delete_original_response()
    except discord.HTTPException as exc:
        log.info("interaction %s: placeholder not deleted (%s)", interaction.id, exc)
    try:
        await interaction.followup.send(text, ephemeral=True)
    except discord.HTTPException as exc:
        log.warning("interaction %s: refusal not delivered (%s)", interaction.id, exc)
