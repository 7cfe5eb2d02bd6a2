"""The moderators' rules on a Discord request: where the bot works, and which words it refuses.

`screen` runs first at every entry point (`/veo`, the image form, a mention, Again, Edit
prompt), before the limits are read, the image is fetched or anything is reserved. The rules
themselves are `bot.moderation`'s; this module reads the guild's lists and words the answers.
"""

from __future__ import annotations

import logging
from typing import Any

import discord

from bot.chat.notices import LogChannels
from bot.chat.presenter import STORE_DOWN, safe_text
from bot.chat.replies import send_ephemeral
from bot.moderation import channel_allowed, compiled
from bot.store import Store, StoreUnavailable

log = logging.getLogger(__name__)

BANNED_PUBLIC = (
    "This prompt uses a word or phrase this server does not allow, so nothing was made and "
    "nothing was charged."
)


class RuleRefusal(Exception):
    """A rule stops the request: `str()` is the member's (private) message, `public` the one
    to show where everyone reads, `log_line` the moderators' line (None: nothing to log)."""

    def __init__(self, text: str, *, public: str, log_line: str | None = None) -> None:
        super().__init__(text)
        self.public = public
        self.log_line = log_line


def parent_of(channel: object) -> int | None:
    """The parent channel of a thread (its `parent_id`), else None. A channel discord.py has
    only as a partial (not cached) has no parent known: it counts as itself."""
    parent = getattr(channel, "parent_id", None)
    return parent if isinstance(parent, int) else None


def outside_text(allowed: frozenset[int]) -> str:
    links = ", ".join(f"<#{channel_id}>" for channel_id in sorted(allowed))
    return f"I only make videos in {links} on this server. Please ask there."


def banned_text(entry: str) -> str:
    return (
        f"Your prompt was stopped by this server's banned word or phrase “{safe_text(entry)}”. "
        "Nothing was made and nothing was charged; please rephrase."
    )


def banned_log_line(entry: str, user_id: int, channel_id: int) -> str:
    return (
        f"🚫 <@{user_id}> in <#{channel_id}>: a prompt was stopped by the banned entry "
        f"“{safe_text(entry)}”."
    )


async def outside_allowed(
    store: Store, guild_id: int, channel_id: int, parent_id: int | None
) -> str | None:
    """Why the bot does not work in this channel (links to where it does), or None when it
    does. Raises `StoreUnavailable`."""
    allowed = await store.allowed_channels(guild_id)
    if channel_allowed(allowed, channel_id, parent_id):
        return None
    return outside_text(allowed)


async def screen(
    store: Store, guild_id: int, channel_id: int, parent_id: int | None, prompt: str, user_id: int
) -> None:
    """Raise `RuleRefusal` when the channel is not one the bot works in or the prompt holds a
    banned entry. Reads only the guild's lists; `StoreUnavailable` propagates (fail closed)."""
    outside = await outside_allowed(store, guild_id, channel_id, parent_id)
    if outside is not None:
        log.info("user %s refused in channel %s: not an allowed channel", user_id, channel_id)
        raise RuleRefusal(outside, public=outside)
    entries = await store.banned_words(guild_id)
    entry = compiled(tuple(entries)).first_match(prompt) if entries else None
    if entry is None:
        return
    # The entry is moderators' text, not the member's: safe to log as is.
    log.info(
        "user %s in guild %s: prompt stopped by the banned entry %r before anything was "
        "fetched or reserved",
        user_id,
        guild_id,
        entry,
    )
    raise RuleRefusal(
        banned_text(entry),
        public=BANNED_PUBLIC,
        log_line=banned_log_line(entry, user_id, channel_id),
    )


async def tell_moderators(client: discord.Client, store: Store, guild_id: int, text: str) -> None:
    """One line in the guild's log channel, pinging nobody; best effort (logged on failure)."""
    await LogChannels(client, store.get_log_channel).post([guild_id], text)


async def allowed_here(interaction: discord.Interaction[Any]) -> bool:
    """False, after telling the member privately where the bot works, when the guild keeps the
    bot to some channels and this is not one (nor a thread of one). For commands (the tree's
    check); what starts a job is screened again by `screen`."""
    if interaction.guild_id is None or interaction.channel_id is None:
        return True
    try:
        outside = await outside_allowed(
            interaction.client.services.store,
            interaction.guild_id,
            interaction.channel_id,
            parent_of(interaction.channel),
        )
    except StoreUnavailable:
        log.exception("database unavailable; refusing interaction %s", interaction.id)
        outside = STORE_DOWN
    if outside is None:
        return True
    await send_ephemeral(interaction, outside)
    return False
