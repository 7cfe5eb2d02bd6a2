"""`/veo-admin banned-words …`, `/veo-admin channels …` and `/veo-admin gallery`: the
moderators' rules, as a part of the `/veo-admin` group (`cogs.admin.VeoAdmin` mixes this in, so
its Manage Server check covers these too). Thin: the store keeps the lists, `bot.moderation`
says what they mean, `bot.chat.reports` words them."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.chat import reports
from bot.moderation import MAX_CHANNELS, MAX_ENTRIES, MAX_ENTRY_CHARS, entry_key

if TYPE_CHECKING:
    from bot.chat.app import VeoBot  # noqa: F401  # named in the string below
    from bot.store import Store

Interaction = discord.Interaction["VeoBot"]


def _where(interaction: Interaction) -> tuple[Store, int, int]:
    assert interaction.guild_id is not None  # /veo-admin is guild_only
    return interaction.client.services.store, interaction.guild_id, interaction.user.id


async def _say(interaction: Interaction, text: str) -> None:
    await interaction.response.send_message(
        text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
    )


class RuleCommands(commands.Cog):
    """The `/veo-admin` subcommands for banned words, allowed channels and the gallery; a Cog
    only so that the cog machinery collects them for `VeoAdmin`, never loaded on its own."""

    banned_words = app_commands.Group(
        name="banned-words", description="Words and phrases /veo refuses in prompts"
    )
    channels = app_commands.Group(name="channels", description="Channels the bot works in")

    # ---------------------------------------------------------------------- banned words

    @banned_words.command(name="add", description="Refuse prompts with this word or phrase")
    @app_commands.describe(entry="A word or phrase (plain text, no patterns)")
    async def banned_add(
        self, interaction: Interaction, entry: app_commands.Range[str, 1, MAX_ENTRY_CHARS]
    ) -> None:
        store, guild_id, actor = _where(interaction)
        entry = " ".join(entry.split())
        if not entry_key(entry):
            await _say(interaction, "An entry needs at least one letter or digit.")
            return
        outcome = await store.add_banned_word(
            guild_id, entry, actor_id=actor, max_entries=MAX_ENTRIES
        )
        await _say(interaction, reports.banned_added_text(entry, outcome, MAX_ENTRIES))

    @banned_words.command(name="remove", description="Stop refusing a word or phrase")
    @app_commands.describe(entry="The word or phrase, spelled any way that matches it")
    async def banned_remove(
        self, interaction: Interaction, entry: app_commands.Range[str, 1, MAX_ENTRY_CHARS]
    ) -> None:
        store, guild_id, actor = _where(interaction)
        removed = await store.remove_banned_word(guild_id, entry, actor_id=actor)
        await _say(interaction, reports.banned_removed_text(entry, removed))

    @banned_words.command(name="list", description="The words and phrases /veo refuses here")
    async def banned_list(self, interaction: Interaction) -> None:
        store, guild_id, _ = _where(interaction)
        entries = await store.banned_words(guild_id)
        text = reports.banned_list_text(entries)
        if len(text) <= reports.MESSAGE_MAX:
            await _say(interaction, text)
            return
        # Too long for one message: the whole list as a file, none left out.
        data = "\n".join(entries).encode()
        await interaction.response.send_message(
            f"{len(entries)} banned entries (attached).",
            file=discord.File(io.BytesIO(data), filename="banned-words.txt"),
            ephemeral=True,
        )

    # -------------------------------------------------------------------------- channels

    @channels.command(name="allow", description="Let members use the bot in this channel")
    @app_commands.describe(channel="Its threads are included")
    async def channels_allow(self, interaction: Interaction, channel: discord.TextChannel) -> None:
        store, guild_id, actor = _where(interaction)
        outcome = await store.allow_channel(
            guild_id, channel.id, actor_id=actor, max_channels=MAX_CHANNELS
        )
        allowed = await store.allowed_channels(guild_id)
        await _say(interaction, reports.channel_allowed_text(channel.id, outcome, allowed))

    @channels.command(name="remove", description="Take a channel off the allowed list")
    @app_commands.describe(channel="The channel to take off")
    async def channels_remove(self, interaction: Interaction, channel: discord.TextChannel) -> None:
        store, guild_id, actor = _where(interaction)
        removed = await store.remove_channel(guild_id, channel.id, actor_id=actor)
        allowed = await store.allowed_channels(guild_id)
        await _say(interaction, reports.channel_removed_text(channel.id, removed, allowed))

    @channels.command(name="list", description="Where members can use the bot")
    async def channels_list(self, interaction: Interaction) -> None:
        store, guild_id, _ = _where(interaction)
        await _say(interaction, reports.channels_text(await store.allowed_channels(guild_id)))

    # --------------------------------------------------------------------------- gallery

    @app_commands.command(name="gallery", description="Announce every new video in a channel")
    @app_commands.describe(channel="Leave empty to stop announcing")
    async def gallery(
        self, interaction: Interaction, channel: discord.TextChannel | None = None
    ) -> None:
        store, guild_id, actor = _where(interaction)
        await store.set_gallery_channel(guild_id, channel.id if channel else None, actor_id=actor)
        text = (
            f"Every new video will be announced in {channel.mention}, with a link to it."
            if channel
            else "New videos will no longer be announced."
        )
        await _say(interaction, text)
