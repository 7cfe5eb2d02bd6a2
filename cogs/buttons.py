"""Buttons on a job's messages that keep working after a restart.

Each button is a `discord.ui.DynamicItem`: the job id travels in its `custom_id`, so any
process — not only the one that sent the message — can answer a press. Registered with
`bot.add_dynamic_items` when this extension loads (inside `setup_hook`).

- Cancel (`veo:cancel:<job>`) on a placeholder while the job waits in the bot's own queue.
- Again (`veo:again:<job>`), Edit prompt (`veo:edit:<job>`), Delete (`veo:delete:<job>`) on
  the finished video. Again and Edit prompt start a new job through `bot.chat.intake.start_job`,
  exactly like `/veo` (deferred first, same limits).

The decisions (who may cancel, what the new job asks for) live in `bot/`; this module renders.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, ClassVar, Self

import discord
from discord.ext import commands

from bot.chat.intake import defer_public, refuse, start_job
from bot.chat.presenter import NOT_CANCELLABLE, cancelled_text
from bot.chat.replies import accepting_work, first_response, send_ephemeral, unexpected
from bot.jobs import may_act_on
from bot.params import PROMPT_MAX_CHARS
from bot.request import VeoRequest
from bot.store import Job

if TYPE_CHECKING:
    from bot.chat.app import VeoBot

log = logging.getLogger(__name__)

INVALID_BUTTON = "This button is no longer valid."
JOB_ID_MAX = 2**63 - 1  # SQLite's INTEGER: a larger id cannot name a job, and would not bind


def _is_moderator(interaction: discord.Interaction[VeoBot]) -> bool:
    return interaction.guild is not None and interaction.permissions.manage_guild


def _job_id(text: str) -> int | None:
    """The job id a custom id names, or None when it names none (not ASCII digits, 0, too big)."""
    if not (text.isascii() and text.isdigit()):
        return None
    job_id = int(text)
    return job_id if 0 < job_id <= JOB_ID_MAX else None


async def _bound_here(interaction: discord.Interaction[VeoBot], job_id: int) -> bool:
    """A button acts only where its job lives: a job of another guild (or, in a DM, of
    someone else) is not this button's. A job the database no longer knows is left to the
    button's own answer."""
    job = await interaction.client.services.jobs.get(job_id)
    if job is None:
        return True
    if interaction.guild_id is not None:
        return job.guild_id == interaction.guild_id
    return job.user_id == interaction.user.id


async def _start_again(
    interaction: discord.Interaction[VeoBot], job_id: int, prompt: str | None
) -> None:
    """Deferred already: a new job like `job_id`, through the same flow and limits as /veo."""
    bot = interaction.client
    job = await bot.services.jobs.get(job_id)
    if job is None:
        await refuse(interaction, "That video is no longer in the bot's records.")
        return
    new_id = await start_job(bot, interaction, VeoRequest.again(job.params_model, prompt))
    if new_id is not None:
        log.info("job %s started from job %s by user %s", new_id, job_id, interaction.user.id)


class _JobButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"veo:(?!)"):
    """A button about one job. The job id lives in the custom id (`veo:<action>:<id>`), so the
    button works after any restart. Subclasses name the action and the look; this base's own
    template never matches and it is never registered."""

    action: ClassVar[str]
    button_label: ClassVar[str]
    button_emoji: ClassVar[str | None] = None
    button_style: ClassVar[discord.ButtonStyle] = discord.ButtonStyle.secondary
    refuse_while_stopping: ClassVar[bool] = True

    def __init__(self, job_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label=self.button_label,
                emoji=self.button_emoji,
                style=self.button_style,
                custom_id=f"veo:{self.action}:{job_id}",
            )
        )
        self.job_id = job_id
        self.valid = True  # False: the press gets INVALID_BUTTON and touches nothing

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> Self:
        # The template takes any text after the action, so that a custom id naming no job of
        # this guild is answered (below) instead of silently failing.
        job_id = _job_id(match["job"])
        button = cls(job_id or 0)
        button.valid = job_id is not None and await _bound_here(interaction, job_id)
        if not button.valid:
            log.warning(
                "button %r pressed by user %s in guild %s names no job there; ignored",
                match.string[:100],
                interaction.user.id,
                interaction.guild_id,
            )
        return button

    async def interaction_check(self, interaction: discord.Interaction[VeoBot]) -> bool:  # type: ignore[override]
        if not self.valid:
            await send_ephemeral(interaction, INVALID_BUTTON)
            return False
        return not self.refuse_while_stopping or await accepting_work(interaction)


class CancelButton(_JobButton, template=r"veo:cancel:(?P<job>.*)"):
    action = "cancel"
    button_label = "Cancel"

    async def callback(self, interaction: discord.Interaction[VeoBot]) -> None:  # type: ignore[override]
        bot = interaction.client
        if not await first_response(interaction, interaction.response.defer()):
            return  # another gateway session answered the press and acts on it
        moderator = _is_moderator(interaction)
        result = await bot.services.jobs.cancel(
            self.job_id, actor_id=interaction.user.id, moderator=moderator
        )
        if result.outcome == "cancelled" and result.job is not None:
            await bot.services.approvals.withdrawn(result.job)  # a held one: its card too
            # The service's end of the job already retired it in the output (no progress edit
            # can land on top of this one) and forgot it; retiring here would leak its state.
            by_moderator = interaction.user.id != result.job.user_id
            await interaction.edit_original_response(
                content=cancelled_text(result.job.params_model, by_moderator=by_moderator),
                view=None,
                allowed_mentions=discord.AllowedMentions.none(),
            )
            return
        answers = {
            "not_allowed": "Only the person who asked for this video or a moderator can cancel it.",
            "too_late": "This video can no longer be cancelled: Veo is already making it.",
            "finished": "This job has already ended.",
            "missing": "That job is no longer in the bot's records.",
        }
        log.info("job %s: cancel by %s refused (%s)", self.job_id, interaction.user.id, result)
        await send_ephemeral(interaction, answers.get(result.outcome, NOT_CANCELLABLE))


class AgainButton(_JobButton, template=r"veo:again:(?P<job>.*)"):
    action = "again"
    button_label = "Again"
    button_emoji = "🔁"
    button_style = discord.ButtonStyle.primary

    async def callback(self, interaction: discord.Interaction[VeoBot]) -> None:  # type: ignore[override]
        # A new public placeholder, before any I/O (the 3-second rule).
        if not await defer_public(interaction):
            return  # another gateway session answered it and runs it
        await _start_again(interaction, self.job_id, prompt=None)


EDIT_MODAL = re.compile(r"veo:edit-modal:(?P<job>[0-9]+)")


def edit_prompt_modal(job_id: int, prompt: str) -> discord.ui.Modal:
    """The "Edit prompt" form. It is sent already stopped, so discord.py keeps no copy in
    memory: its submit is handled by `Buttons.on_interaction` from the job id in its custom id,
    and still works when the bot restarted while the member was typing."""
    modal = discord.ui.Modal(title="Edit the prompt", custom_id=f"veo:edit-modal:{job_id}")
    modal.add_item(
        discord.ui.TextInput(
            label="Prompt",
            style=discord.TextStyle.paragraph,
            default=prompt[:PROMPT_MAX_CHARS],
            max_length=PROMPT_MAX_CHARS,
            custom_id="prompt",
        )
    )
    modal.stop()
    return modal


def submitted_value(data: Any, custom_id: str) -> str | None:
    """A text input's value from a raw modal submit (in action rows or in labels)."""
    if isinstance(data, dict):
        if data.get("custom_id") == custom_id and "value" in data:
            return str(data["value"])
        children = data.get("components") or ([data["component"]] if "component" in data else [])
        for child in children:
            found = submitted_value(child, custom_id)
            if found is not None:
                return found
    elif isinstance(data, list):
        for child in data:
            found = submitted_value(child, custom_id)
            if found is not None:
                return found
    return None


class EditPromptButton(_JobButton, template=r"veo:edit:(?P<job>.*)"):
    action = "edit"
    button_label = "Edit prompt"
    button_emoji = "✏️"

    async def callback(self, interaction: discord.Interaction[VeoBot]) -> None:  # type: ignore[override]
        jobs = interaction.client.services.jobs
        # A modal must be the first answer, so this one read comes before it (one indexed
        # SELECT, far inside the 3 s).
        job = await jobs.get(self.job_id)
        if job is None:
            await send_ephemeral(interaction, "That video is no longer in the bot's records.")
            return
        modal = edit_prompt_modal(self.job_id, job.params_model.prompt)
        # False: another gateway session opened the form; nothing more to do here.
        await first_response(interaction, interaction.response.send_modal(modal))


class DeleteButton(_JobButton, template=r"veo:delete:(?P<job>.*)"):
    action = "delete"
    button_label = "Delete"
    button_emoji = "🗑️"
    button_style = discord.ButtonStyle.danger
    refuse_while_stopping = False  # tidying up needs no new job

    async def callback(self, interaction: discord.Interaction[VeoBot]) -> None:  # type: ignore[override]
        jobs = interaction.client.services.jobs
        thinking = interaction.response.defer(ephemeral=True, thinking=True)
        if not await first_response(interaction, thinking):
            return  # another gateway session answered the press and acts on it
        job = await jobs.get(self.job_id)
        if not may_act_on(job, interaction.user.id, moderator=_is_moderator(interaction)):
            await send_ephemeral(
                interaction,
                "Only the person who asked for this video or a moderator can delete it.",
            )
            return
        message = interaction.message
        try:
            if message is not None:
                await message.delete()
        except discord.NotFound:
            pass  # someone was quicker
        except discord.HTTPException as exc:
            log.warning("job %s: could not delete the video message (%s)", self.job_id, exc)
            await send_ephemeral(interaction, "Discord would not let me delete that message.")
            return
        log.info("job %s: video message deleted by user %s", self.job_id, interaction.user.id)
        if job is not None:
            await interaction.client.services.gallery.withdraw(job)
        if job is not None and interaction.user.id != job.user_id and interaction.guild:
            await jobs.store.record_audit(
                interaction.guild.id,
                interaction.user.id,
                "video.delete",
                {"job_id": job.id, "user_id": job.user_id},
            )
        await send_ephemeral(interaction, "Deleted.")


DYNAMIC_ITEMS = (CancelButton, AgainButton, EditPromptButton, DeleteButton)


class Components:
    """`bot.chat.output.JobComponents`: the views the output attaches to a job's messages."""

    def queued(self, job: Job) -> discord.ui.View:
        view = discord.ui.View(timeout=None)
        view.add_item(CancelButton(job.id))
        return view

    def delivered(self, job: Job) -> discord.ui.View:
        view = discord.ui.View(timeout=None)
        for item in (AgainButton(job.id), EditPromptButton(job.id), DeleteButton(job.id)):
            view.add_item(item)
        return view


class Buttons(commands.Cog):
    def __init__(self, bot: VeoBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.services.output.components = Components()

    async def cog_unload(self) -> None:
        self.bot.services.output.components = None

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction[VeoBot]) -> None:
        """Submits of the "Edit prompt" form, whichever process opened it."""
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        data: dict[str, Any] = dict(interaction.data or {})
        match = EDIT_MODAL.fullmatch(str(data.get("custom_id", "")))
        if match is None:
            return
        try:
            if not await accepting_work(interaction):
                return
            if not await defer_public(interaction):
                return  # another gateway session answered it and runs it
            prompt = submitted_value(data.get("components"), "prompt") or ""
            await _start_again(interaction, int(match["job"]), prompt=prompt)
        except Exception as exc:
            await send_ephemeral(interaction, unexpected("the edit-prompt form", exc))


async def setup(bot: VeoBot) -> None:
    bot.add_dynamic_items(*DYNAMIC_ITEMS)
    await bot.add_cog(Buttons(bot))


async def teardown(bot: VeoBot) -> None:
    bot.remove_dynamic_items(*DYNAMIC_ITEMS)
