"""The approval lane in Discord: the moderators' card, its decision, and what the requester is
told. Implements `bot.approvals.ApprovalOutput`; every sentence of the lane lives here.

The card is posted with the bot token (any process can edit it later: its ids are stored) and
pings nobody: the prompt is escaped and every message carries `AllowedMentions.none()`.
Approve and Deny come from `components`, set by `cogs.approvals`, so this module imports no
cog.
"""

from __future__ import annotations

import logging
from typing import Protocol

import aiohttp
import discord

from bot.approvals import Card
from bot.chat.output import TOKEN_SAFE_AGE, DiscordOutput
from bot.chat.presenter import params_line, safe_prompt, safe_text
from bot.chat.reports import message_url, when
from bot.jobs import NOT_COUNTED
from bot.store import Approval, ApprovalSettings, Job

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()
CARD_COLOUR = discord.Colour.gold()


class CardComponents(Protocol):
    """Approve and Deny on a card (implemented by `cogs.approvals`)."""

    def card(self, job: Job) -> discord.ui.View: ...


# ------------------------------------------------------------------------------------ texts


def card_head(card: Card) -> str:
    return (
        f"🛂 **Approval needed** — <@{card.job.user_id}> asks for a video quoted at "
        f"**${card.approval.quote:.2f}**. It lapses <t:{int(card.approval.expires_at)}:R> "
        "if nobody decides."
    )


def card_embed(card: Card) -> discord.Embed:
    job, params = card.job, card.job.params_model
    usage = f"{card.used} of {card.limit}" if card.limit is not None else f"{card.used} (no limit)"
    embed = discord.Embed(description=safe_prompt(params.prompt), colour=CARD_COLOUR)
    embed.add_field(name="Options", value=params_line(params), inline=False)
    embed.add_field(name="Quoted price", value=f"${card.approval.quote:.2f}")
    embed.add_field(
        name="Requester",
        value=f"<@{job.user_id}> · {usage} videos in the last {card.window_hours:g} h",
    )
    link = message_url(job)
    if link:
        embed.add_field(name="Request", value=f"[in <#{job.channel_id}>]({link})", inline=False)
    if job.image_url:
        embed.set_thumbnail(url=job.image_url)
    embed.set_footer(text=f"job {job.id}")
    return embed


def decision_line(approval: Approval) -> str:
    """The card's head once decided: who, when, and why."""
    at = when(approval.decided_at or 0.0)
    if approval.decision == "approved":
        return f"✅ **Approved** by <@{approval.decided_by}> {at} — sent to the queue."
    if approval.decision == "denied":
        why = f": {safe_text(approval.reason)}" if approval.reason else "."
        return f"🚫 **Denied** by <@{approval.decided_by}> {at}{why} Refunded."
    if approval.decision is None:  # cancelled while it waited
        return "↩️ **Withdrawn** before anyone decided; released."
    why = safe_text(approval.reason) if approval.reason else "nobody decided in time"
    return f"⌛ **Expired** {at} — {why}; released."


def already_decided_text(approval: Approval | None) -> str:
    """For the second presser (or one pressing after the request ended otherwise)."""
    if approval is None or approval.decision is None:
        return "This request has already ended (its requester withdrew it)."
    if approval.decision == "expired":
        return f"This request already expired {when(approval.decided_at or 0.0)}."
    verb = "approved" if approval.decision == "approved" else "denied"
    return (
        f"This request was already {verb} by <@{approval.decided_by}> "
        f"{when(approval.decided_at or 0.0)}."
    )


NOT_ALLOWED = "Only members with Manage Server or this server's approver role can decide."
NOT_HELD = "That request is no longer waiting for approval."
DECIDED_TEXT = {
    "approved": "Approved: it is in the queue now.",
    "denied": "Denied: the requester was told, and it does not count against their limit.",
}
DENIED_PUBLIC = "A moderator declined this request."
EXPIRED_TEXT = "No moderator decided on this request in time, so it was dropped."


def denied_private(job: Job, reason: str) -> str:
    prompt = safe_prompt(job.params_model.prompt, limit=200)
    return f"A moderator declined your request: {safe_text(reason)}\n{prompt}\n{NOT_COUNTED}"


def settings_text(settings: ApprovalSettings, default_expiry: float) -> str:
    """The lane's settings, for `/veo-admin approvals show` and `/veo-admin limits show`."""
    if not settings.enabled:
        return "**Approvals**: off"
    expiry = settings.expiry_seconds or default_expiry
    expiry_shown = f"{expiry / 3600:g} h" if expiry >= 3600 else f"{expiry / 60:g} min"
    threshold = (
        "every request"
        if settings.threshold == 0
        else f"requests quoted above ${settings.threshold:.2f}"
    )
    lines = [
        f"**Approvals**: on, for {threshold}, in <#{settings.channel_id}>",
        f"Undecided requests lapse after {expiry_shown}",
        "Approvers: Manage Server"
        + (f" and <@&{settings.approver_role_id}>" if settings.approver_role_id else ""),
    ]
    if settings.exempt_roles:
        lines.append(
            "Never need approval: " + ", ".join(f"<@&{r}>" for r in sorted(settings.exempt_roles))
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- output


class DiscordCards:
    """`bot.approvals.ApprovalOutput` for Discord. One per bot."""

    def __init__(self, client: discord.Client, output: DiscordOutput) -> None:
        self.client = client
        self.output = output  # the requester's placeholder, as for every job
        self.components: CardComponents | None = None

    async def post_card(self, card: Card) -> tuple[int, int] | None:
        job, channel_id = card.job, card.channel_id
        channel = self.client.get_partial_messageable(channel_id, guild_id=job.guild_id)
        # Without the buttons cog nobody could decide: no card, and the lane releases it.
        if self.components is None:
            log.error("job %s: approval buttons are not loaded; no card posted", job.id)
            return None
        try:
            message = await channel.send(
                card_head(card),
                embed=card_embed(card),
                allowed_mentions=NO_MENTIONS,
                nonce=f"veo-{job.id}-card",
                view=self.components.card(job),
            )
        except (discord.HTTPException, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("job %s: approval card not posted in %s (%s)", job.id, channel_id, exc)
            return None
        log.info("job %s: approval card posted in channel %s", job.id, channel_id)
        return channel_id, message.id

    async def close_card(self, job: Job, approval: Approval) -> None:
        if approval.card_channel_id is None or approval.card_message_id is None:
            return
        message = self.client.get_partial_messageable(
            approval.card_channel_id, guild_id=job.guild_id
        ).get_partial_message(approval.card_message_id)
        await message.edit(content=decision_line(approval), view=None, allowed_mentions=NO_MENTIONS)

    async def ended(self, job: Job, approval: Approval) -> None:
        if approval.decision == "expired":
            await self.output.failed(job, f"{EXPIRED_TEXT} {NOT_COUNTED}")
            return
        public = f"{DENIED_PUBLIC} {NOT_COUNTED}"
        if approval.reason:
            try:
                told = await self._tell_privately(job, denied_private(job, approval.reason))
            except Exception:
                # The placeholder below must still say what happened, reason included.
                log.exception("job %s: the denial's reason could not be sent privately", job.id)
                told = False
            if told:
                public = f"{DENIED_PUBLIC} The reason was sent to you privately. {NOT_COUNTED}"
            else:
                public = f"{DENIED_PUBLIC} Reason: {approval.reason}. {NOT_COUNTED}"
        await self.output.failed(job, public)

    async def _tell_privately(self, job: Job, text: str) -> bool:
        """An ephemeral follow-up while the interaction token is valid, else a DM."""
        age = self.output.clock() - (job.interaction_created_at or 0.0)
        if job.interaction_token and age < TOKEN_SAFE_AGE:
            webhook = discord.Webhook.partial(
                self.client.application_id or 0, job.interaction_token, client=self.client
            )
            # The interaction's own webhook (what `Interaction.followup` is): discord.py sends
            # ephemeral messages only through one typed as an application's.
            webhook.type = discord.WebhookType.application
            try:
                await webhook.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
                return True
            except (discord.HTTPException, aiohttp.ClientError, TimeoutError) as exc:
                log.info("job %s: private follow-up failed (%s); trying a DM", job.id, exc)
        try:
            user = await self.client.fetch_user(job.user_id)
            await user.send(text, allowed_mentions=NO_MENTIONS)
            return True
        except (discord.HTTPException, aiohttp.ClientError, TimeoutError) as exc:
            log.info("job %s: the denial's reason could not be sent privately (%s)", job.id, exc)
            return False
