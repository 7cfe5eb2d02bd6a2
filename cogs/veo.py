"""`/veo`: the product. Thin: it defers, collects options and hands them to the job flow."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.chat.intake import defer_public, image_of, start_job
from bot.chat.presenter import ASPECT_LABELS
from bot.params import DURATIONS, FPS_VALUES, PROMPT_MAX_CHARS, SEED_MAX, Aspect, Resolution
from bot.request import VeoRequest

if TYPE_CHECKING:
    from bot.chat.app import VeoBot

ASPECT_CHOICES = [
    app_commands.Choice(name=label, value=aspect.value) for aspect, label in ASPECT_LABELS.items()
]
DURATION_CHOICES = [app_commands.Choice(name=f"{s} seconds", value=s) for s in DURATIONS]
FPS_CHOICES = [app_commands.Choice(name=f"{f} fps", value=f) for f in FPS_VALUES]
RESOLUTION_CHOICES = [
    app_commands.Choice(name="720p", value=Resolution.HD.value),
    app_commands.Choice(name="1080p", value=Resolution.FULL_HD.value),
]


class Veo(commands.Cog):
    def __init__(self, bot: VeoBot) -> None:
        self.bot = bot

    @app_commands.command(
        name="veo", description="Make a short video from a prompt with Veo 3 Fast"
    )
    @app_commands.guild_only()
    @app_commands.describe(
        prompt="What should happen in the video? Describe the scene, motion, style and sound.",
        aspect="Shape of the video (default from the bot's settings)",
        duration="Length in seconds",
        fps="Frames per second: 24 looks cinematic, 30 smoother",
        resolution="720p or 1080p",
        audio="Generate a soundtrack with the video",
        seed="Same seed + same prompt = similar video; 0 or empty picks one at random",
        image="Animate this image (PNG, JPEG or WebP)",
    )
    @app_commands.choices(aspect=ASPECT_CHOICES, resolution=RESOLUTION_CHOICES)
    @app_commands.choices(duration=DURATION_CHOICES, fps=FPS_CHOICES)
    async def veo(
        self,
        interaction: discord.Interaction[VeoBot],
        prompt: app_commands.Range[str, 1, PROMPT_MAX_CHARS],
        aspect: app_commands.Choice[str] | None = None,
        duration: app_commands.Choice[int] | None = None,
        fps: app_commands.Choice[int] | None = None,
        resolution: app_commands.Choice[str] | None = None,
        audio: bool | None = None,
        seed: app_commands.Range[int, 0, SEED_MAX] | None = None,
        image: discord.Attachment | None = None,
    ) -> None:
        # Discord allows 3 s for the first answer: acknowledge before any I/O.
        if not await defer_public(interaction):
            return  # another gateway session answered it and runs it
        request = VeoRequest(
            prompt=prompt,
            aspect=Aspect(aspect.value) if aspect else None,
            duration=duration.value if duration else None,
            fps=fps.value if fps else None,
            resolution=Resolution(resolution.value) if resolution else None,
            audio=audio,
            seed=seed,
            image=image_of(image) if image else None,
        )
        await start_job(self.bot, interaction, request)


async def setup(bot: VeoBot) -> None:
    await bot.add_cog(Veo(bot))
