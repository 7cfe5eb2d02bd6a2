"""Answering a member when something did not go to plan: privately, and never a traceback."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable
from typing import Any

import discord

from bot.chat.presenter import NOT_ACCEPTING

log = logging.getLogger(__name__)

# Discord's answer to a second response to one interaction. With two gateway sessions on one
# shard (a deploy's overlap) both processes get the interaction and race to answer it: the
# loser's acknowledgement fails with this, and it must stay quiet — the winner answers.
ALREADY_ACKNOWLEDGED = 40060


def acknowledged_elsewhere(error: BaseException) -> bool:
    """True when `error` (or what it wraps, as a command error does) is Discord's 40060."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, discord.HTTPException) and seen.code == ALREADY_ACKNOWLEDGED:
            return True
        seen = seen.__cause__ or getattr(seen, "original", None)
    return False


def note_acknowledged_elsewhere(interaction: discord.Interaction[Any]) -> None:
    log.info(
        "interaction %s was answered by another gateway session (40060); leaving it to that one",
        interaction.id,
    )


async def first_response(interaction: discord.Interaction[Any], answer: Awaitable[Any]) -> bool:
    """Await the interaction's first response (a defer, a modal); False, quietly, when
    another gateway session answered the interaction first — the caller then stops."""
    try:
        await answer
    except discord.HTTPException as exc:
        if not acknowledged_elsewhere(exc):
            raise
        note_acknowledged_elsewhere(interaction)
        return False
    return True


def unexpected(where: str, error: BaseException) -> str:
    """Log an error nobody handled under a short reference; the sentence to show the member
    carries the same reference, so a moderator can find the traceback in the log."""
    ref = uuid.uuid4().hex[:8]
    log.error("unhandled error in %s (ref %s)", where, ref, exc_info=error)
    return f"Something went wrong on the bot's side (ref `{ref}`). Nothing was charged."


async def send_ephemeral(interaction: discord.Interaction[Any], text: str) -> None:
    """Answer privately whatever state the interaction is in (fresh, deferred, expired)."""
    try:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)
    except discord.HTTPException as exc:
        log.info("could not answer interaction %s: %s", interaction.id, exc)


async def accepting_work(interaction: discord.Interaction[Any]) -> bool:
    """False, after telling the member, while the bot is shutting down. Commands get this from
    the tree's check; buttons and forms bypass the tree and call it themselves."""
    if not interaction.client.services.jobs.accepting:
        await send_ephemeral(interaction, NOT_ACCEPTING)
        return False
    return True
