"""Image to video from an existing message: the "Animate with Veo" menu and `@Veo …` replies.

Thin, like `/veo`: it finds the image and the prompt, then hands them to the job flow, which
checks the image (type, size, shape) before anything is charged.

The context menu is the dependable path: Discord always gives a message command its target
message in full. A mention works without the privileged Message Content intent too (a message
that mentions the bot arrives with its content), but the message it replies to may arrive
without its attachments; then the bot fetches it, and if the image still cannot be seen it
says so in one line and points to the menu.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.chat import rules
from bot.chat.intake import (
    defer_public,
    find_image,
    reply_nonce,
    reply_quietly,
    start_job,
    start_job_from_message,
)
from bot.chat.presenter import (
    ASPECT_LABELS,
    MENTION_USAGE,
    NO_IMAGE_MENU,
    NO_PROMPT,
    NOT_ACCEPTING,
    reply_without_image_hint,
)
from bot.chat.replies import accepting_work, send_ephemeral, unexpected
from bot.params import PROMPT_MAX_CHARS, Aspect
from bot.request import ImageSource, VeoRequest
from bot.store import StoreUnavailable

if TYPE_CHECKING:
    from bot.chat.app import VeoBot

log = logging.getLogger(__name__)

MENU_NAME = "Animate with Veo"
MODAL_ID = "veo-animate"
FOLLOW_IMAGE = "image"
# Every mention gets a public reply; one per member per this many seconds, so a member cannot
# make the bot flood a channel (the placeholder's own edits are throttled elsewhere).
MENTION_COOLDOWN = 10.0
DEFAULT_PROMPT = "Bring this image to life with natural, gentle motion and a slow camera move."


class AnimateModal(discord.ui.Modal):
    """Prompt and aspect ratio for animating the image of one message."""

    def __init__(self, bot: VeoBot, image: ImageSource, prompt: str) -> None:
        super().__init__(title="Animate with Veo", custom_id=MODAL_ID, timeout=15 * 60)
        self.bot = bot
        self.image = image
        self.prompt: discord.ui.TextInput[AnimateModal] = discord.ui.TextInput(
            custom_id="prompt",
            style=discord.TextStyle.paragraph,
            default=prompt[:PROMPT_MAX_CHARS],
            min_length=1,
            max_length=PROMPT_MAX_CHARS,
        )
        self.aspect: discord.ui.Select[AnimateModal] = discord.ui.Select(
            custom_id="aspect",
            options=[
                discord.SelectOption(label="Follow the image", value=FOLLOW_IMAGE, default=True),
                *(
                    discord.SelectOption(label=text, value=a.value)
                    for a, text in ASPECT_LABELS.items()
                ),
            ],
            required=False,
        )
        self.add_item(
            discord.ui.Label(
                text="What should happen?",
                description="Scene, motion, style and sound.",
                component=self.prompt,
            )
        )
        self.add_item(discord.ui.Label(text="Shape of the video", component=self.aspect))

    async def interaction_check(self, interaction: discord.Interaction[VeoBot]) -> bool:  # type: ignore[override]
        # A form bypasses the tree's check: a submit during shutdown must not queue a job.
        return await accepting_work(interaction)

    async def on_submit(self, interaction: discord.Interaction[VeoBot]) -> None:  # type: ignore[override]
        # Discord allows 3 s for the first answer: acknowledge before any I/O.
        if not await defer_public(interaction):
            return  # another gateway session answered it and runs it
        choice = self.aspect.values[0] if self.aspect.values else FOLLOW_IMAGE
        aspect = None if choice == FOLLOW_IMAGE else Aspect(choice)
        request = VeoRequest(prompt=self.prompt.value, aspect=aspect, image=self.image)
        await start_job(self.bot, interaction, request)

    async def on_error(  # type: ignore[override]
        self, interaction: discord.Interaction[VeoBot], error: Exception
    ) -> None:
        await send_ephemeral(interaction, unexpected("the animate modal", error))


class ImageToVideo(commands.Cog):
    def __init__(self, bot: VeoBot) -> None:
        self.bot = bot
        # The decorator form refuses methods, so the menu is built here and removed on unload.
        self.menu = app_commands.guild_only(
            app_commands.ContextMenu(name=MENU_NAME, callback=self.animate)
        )
        self.bot.tree.add_command(self.menu)
        self.mention_cooldown = commands.CooldownMapping.from_cooldown(
            1, MENTION_COOLDOWN, commands.BucketType.member
        )

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    async def animate(
        self, interaction: discord.Interaction[VeoBot], message: discord.Message
    ) -> None:
        """Open the modal for an image message; a message without one is told so privately."""
        image = find_image(message)
        if image is None:
            await interaction.response.send_message(NO_IMAGE_MENU, ephemeral=True)
            return
        prompt = message.clean_content.strip() if message.content else ""
        await interaction.response.send_modal(
            AnimateModal(self.bot, image, prompt or DEFAULT_PROMPT)
        )

    # ------------------------------------------------------------------------------ mentions

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or message.guild is None or self.bot.user is None:
            return
        mention = re.compile(rf"<@!?{self.bot.user.id}>")
        # A reply to one of the bot's messages "mentions" it too; only a written mention counts.
        if not mention.search(message.content):
            return
        # Outside the channels a guild keeps the bot to, a mention gets no answer at all.
        if not await self._works_here(message):
            return
        retry_after = self.mention_cooldown.update_rate_limit(message)
        if retry_after:
            log.info(
                "message %s: mention by user %s ignored (cooldown, %.0f s left)",
                message.id,
                message.author.id,
                retry_after,
            )
            return
        try:
            await self._from_mention(message, mention.sub(" ", message.content).strip())
        except Exception as exc:
            # No nonce: a placeholder may exist already, and this must not come back as it.
            await reply_quietly(message, unexpected(f"the answer to mention {message.id}", exc))

    async def _works_here(self, message: discord.Message) -> bool:
        assert message.guild is not None
        try:
            outside = await rules.outside_allowed(
                self.bot.services.store,
                message.guild.id,
                message.channel.id,
                rules.parent_of(message.channel),
            )
        except StoreUnavailable:
            # Answered: the job flow refuses it with the "database unavailable" message.
            log.warning("message %s: allowed channels unknown (database unavailable)", message.id)
            return True
        if outside is not None:
            log.info(
                "message %s: mention in channel %s ignored (not an allowed channel)",
                message.id,
                message.channel.id,
            )
            return False
        return True

    async def _from_mention(self, message: discord.Message, prompt: str) -> None:
        if not self.bot.services.jobs.accepting:
            await reply_quietly(message, NOT_ACCEPTING, nonce=reply_nonce(message))
            return
        image = find_image(message)
        if image is None and message.reference is not None:
            image = await self._replied_image(message)
            if image is None:
                intent = self.bot.settings.discord_message_content_intent
                await reply_quietly(
                    message,
                    reply_without_image_hint(content_intent=intent),
                    nonce=reply_nonce(message),
                )
                return
        if image is None:
            await reply_quietly(message, MENTION_USAGE, nonce=reply_nonce(message))
            return
        if not prompt:
            await reply_quietly(message, NO_PROMPT, nonce=reply_nonce(message))
            return
        await start_job_from_message(self.bot, message, VeoRequest(prompt=prompt, image=image))

    async def _replied_image(self, message: discord.Message) -> ImageSource | None:
        """The image of the message replied to; fetched again when the gateway's copy may lack
        its attachments (no Message Content intent) or did not come at all."""
        reference = message.reference
        assert reference is not None
        resolved = reference.resolved
        if isinstance(resolved, discord.Message):
            image = find_image(resolved)
            if image is not None or self.bot.settings.discord_message_content_intent:
                return image
        elif isinstance(resolved, discord.DeletedReferencedMessage):
            return None
        if reference.message_id is None:
            return None
        channel: discord.abc.Messageable = message.channel
        if reference.channel_id != message.channel.id:
            found = self.bot.get_channel(reference.channel_id)
            if not isinstance(found, discord.abc.Messageable):
                return None
            channel = found
        try:
            fetched = await channel.fetch_message(reference.message_id)
        except discord.HTTPException as exc:
            log.info(
                "message %s: replied-to message %s not readable (%s %s)",
                message.id,
                reference.message_id,
                exc.status,
                exc.code,
            )
            return None
        log.info("message %s: fetched the replied-to message %s", message.id, fetched.id)
        return find_image(fetched)


async def setup(bot: VeoBot) -> None:
    await bot.add_cog(ImageToVideo(bot))
