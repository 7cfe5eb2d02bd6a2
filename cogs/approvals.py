"""Approve and Deny on the moderators' approval cards: restart-proof buttons.

Like the job buttons (`cogs.buttons`), each is a `discord.ui.DynamicItem` with the job id in
its `custom_id` (`veo:approve:<job>`, `veo:deny:<job>`), so any process answers a press. Deny
opens a form (`veo:deny-modal:<job>`) for an optional reason; it is sent stopped, so its
submit is handled from the custom id by `Approvals.on_interaction`, after a restart too.

Who may decide and what a decision does live in `bot.approvals`; this module renders.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

from bot.approvals import Decided
from bot.chat import approvals as texts
from bot.chat.intake import member_role_ids
from bot.chat.replies import send_ephemeral, unexpected
from bot.store import Job, StoreUnavailable
from cogs.buttons import _JobButton, submitted_value

if TYPE_CHECKING:
    from bot.chat.app import VeoBot

log = logging.getLogger(__name__)

DENY_MODAL = re.compile(r"veo:deny-modal:(?P<job>[0-9]+)")
REASON_MAX = 500


def _manage_guild(interaction: discord.Interaction[VeoBot]) -> bool:
    return interaction.guild is not None and interaction.permissions.manage_guild


async def _answer(interaction: discord.Interaction[VeoBot], decided: Decided) -> None:
    """Privately, to the moderator who pressed: what came of it."""
    if decided.outcome == "decided" and decided.approval is not None:
        text = texts.DECIDED_TEXT.get(decided.approval.decision or "", "Done.")
    elif decided.outcome == "already_decided":
        text = texts.already_decided_text(decided.approval)
    elif decided.outcome == "not_allowed":
        text = texts.NOT_ALLOWED
    else:
        text = texts.NOT_HELD
    await send_ephemeral(interaction, text)


async def _failed(interaction: discord.Interaction[VeoBot], what: str, exc: Exception) -> None:
    """A decision that could not be made: the moderator is told, the log has the job id."""
    if isinstance(exc, StoreUnavailable):
        log.warning("%s: the database is unavailable (%s)", what, exc)
        await send_ephemeral(interaction, f"{exc.user_message} Nothing was decided.")
        return
    await send_ephemeral(interaction, unexpected(what, exc))


class ApproveButton(_JobButton, template=r"veo:approve:(?P<job>.*)"):
    action = "approve"
    button_label = "Approve"
    button_emoji = "✅"
    button_style = discord.ButtonStyle.success
    refuse_while_stopping = False  # a decision queues nothing new; the job waits its turn

    async def callback(self, interaction: discord.Interaction[VeoBot]) -> None:  # type: ignore[override]
        await interaction.response.defer()  # the card itself is edited by the decision
        try:
            decided = await interaction.client.services.approvals.approve(
                self.job_id,
                actor_id=interaction.user.id,
                role_ids=member_role_ids(interaction.user),
                manage_guild=_manage_guild(interaction),
            )
        except Exception as exc:
            await _failed(interaction, f"approving job {self.job_id}", exc)
            return
        await _answer(interaction, decided)


def deny_modal(job_id: int) -> discord.ui.Modal:
    """The Deny form: an optional reason, shown to the requester privately."""
    modal = discord.ui.Modal(title="Deny this request", custom_id=f"veo:deny-modal:{job_id}")
    modal.add_item(
        discord.ui.TextInput(
            label="Reason (optional, sent to the requester)",
            style=discord.TextStyle.paragraph,
            required=False,
            max_length=REASON_MAX,
            custom_id="reason",
        )
    )
    modal.stop()  # no copy kept in memory: the submit is handled from its custom id
    return modal


class DenyButton(_JobButton, template=r"veo:deny:(?P<job>.*)"):
    action = "deny"
    button_label = "Deny"
    button_emoji = "🚫"
    button_style = discord.ButtonStyle.danger
    refuse_while_stopping = False

    async def callback(self, interaction: discord.Interaction[VeoBot]) -> None:  # type: ignore[override]
        services = interaction.client.services
        # The form must be the first answer: these reads come before it (indexed, far inside
        # the 3 s), so nobody types a reason that cannot count.
        try:
            refused = await services.approvals.may_decide(
                self.job_id,
                role_ids=member_role_ids(interaction.user),
                manage_guild=_manage_guild(interaction),
            )
            approval = await services.store.get_approval(self.job_id)
            job = await services.store.get_job(self.job_id)
        except Exception as exc:
            await _failed(interaction, f"opening the deny form of job {self.job_id}", exc)
            return
        if refused is not None:
            await _answer(interaction, Decided(refused))
            return
        if approval is None or job is None or job.state != "awaiting_approval":
            await send_ephemeral(interaction, texts.already_decided_text(approval))
            return
        await interaction.response.send_modal(deny_modal(self.job_id))


DYNAMIC_ITEMS = (ApproveButton, DenyButton)


class CardButtons:
    """`bot.chat.approvals.CardComponents`: Approve and Deny under a card."""

    def card(self, job: Job) -> discord.ui.View:
        view = discord.ui.View(timeout=None)
        view.add_item(ApproveButton(job.id))
        view.add_item(DenyButton(job.id))
        return view


class Approvals(commands.Cog):
    def __init__(self, bot: VeoBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.services.cards.components = CardButtons()

    async def cog_unload(self) -> None:
        self.bot.services.cards.components = None

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction[VeoBot]) -> None:
        """Submits of the Deny form, whichever process opened it."""
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        data: dict[str, Any] = dict(interaction.data or {})
        match = DENY_MODAL.fullmatch(str(data.get("custom_id", "")))
        if match is None:
            return
        job_id = int(match["job"])
        try:
            await interaction.response.defer()
            job = await self.bot.services.store.get_job(job_id)
            if job is None or job.guild_id != interaction.guild_id:
                await send_ephemeral(interaction, texts.NOT_HELD)
                return
            reason = submitted_value(data.get("components"), "reason")
            decided = await self.bot.services.approvals.deny(
                job_id,
                actor_id=interaction.user.id,
                role_ids=member_role_ids(interaction.user),
                manage_guild=_manage_guild(interaction),
                reason=(reason or "")[:REASON_MAX],
            )
            await _answer(interaction, decided)
        except Exception as exc:
            await _failed(interaction, f"denying job {job_id}", exc)


async def setup(bot: VeoBot) -> None:
    bot.add_dynamic_items(*DYNAMIC_ITEMS)
    await bot.add_cog(Approvals(bot))


async def teardown(bot: VeoBot) -> None:
    bot.remove_dynamic_items(*DYNAMIC_ITEMS)
