"""`/veo-quota` for members and `/veo-admin` for moderators: usage, cost, limits, blocks, audit.

`/veo-admin` is hidden from members by `default_permissions(manage_guild)`, but a server owner can
change that default in the Integrations settings; the runtime check below cannot be changed.
"""

from __future__ import annotations

import io
import logging
from dataclasses import replace
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.chat import approvals as lane_texts
from bot.chat import reports, spend_report
from bot.chat.intake import member_role_ids
from bot.quota import (
    GuildLimits,
    LimitDefaults,
    LimitOverride,
    Refusal,
    budget_over_max,
    month_start,
    render_refusal,
)
from cogs.admin_rules import RuleCommands

if TYPE_CHECKING:
    from bot.chat.app import VeoBot
    from bot.store import Store

log = logging.getLogger(__name__)

Interaction = discord.Interaction["VeoBot"]


def _store(interaction: Interaction) -> Store:
    return interaction.client.services.store


def _defaults(interaction: Interaction) -> LimitDefaults:
    return LimitDefaults.from_settings(interaction.client.settings)


def _guild_id(interaction: Interaction) -> int:
    assert interaction.guild_id is not None  # every command here is guild_only
    return interaction.guild_id


class Quota(commands.Cog):
    def __init__(self, bot: VeoBot) -> None:
        self.bot = bot

    @app_commands.command(name="veo-quota", description="How many videos you can still make")
    @app_commands.guild_only()
    async def veo_quota(self, interaction: Interaction) -> None:
        await interaction.response.defer(ephemeral=True)
        member = interaction.user
        view = await _store(interaction).quota_view(
            _guild_id(interaction), member.id, member_role_ids(member), _defaults(interaction)
        )
        limits, usage = view.limits, view.usage
        used = usage.user_window.count
        if limits.user_limit is None:
            lines = [
                f"You have made {used} videos in the last {limits.window_hours:g} h (no limit)."
            ]
        else:
            lines = [
                f"You have used **{used} of {limits.user_limit}** videos in the last "
                f"{limits.window_hours:g} h."
            ]
        if usage.in_flight_job_ids:
            in_flight = len(usage.in_flight_job_ids)
            lines.append(f"In progress: {in_flight} (at most {limits.concurrency} at once).")
        lines += reports.monthly_budget_lines(limits, usage)
        if isinstance(view.decision, Refusal):
            lines.append("Right now: " + render_refusal(view.decision) + ".")
        else:
            lines.append("You can start a video now with /veo.")
        await interaction.followup.send("\n".join(lines), ephemeral=True)


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class VeoAdmin(
    RuleCommands, commands.GroupCog, group_name="veo-admin", group_description="Moderate /veo"
):
    limits = app_commands.Group(name="limits", description="Show and set /veo limits")
    approvals = app_commands.Group(
        name="approvals", description="Have moderators approve requests before they cost money"
    )

    def __init__(self, bot: VeoBot) -> None:
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: Interaction) -> bool:  # type: ignore[override]
        if interaction.guild is None or not interaction.permissions.manage_guild:
            raise app_commands.CheckFailure(
                "Only members with the Manage Server permission can use /veo-admin."
            )
        return True

    # --------------------------------------------------------------------------- reading

    @app_commands.command(name="usage", description="Jobs, deliveries, failures and cost")
    @app_commands.describe(user="Only this member (default: the whole server)", days="How far back")
    async def usage(
        self,
        interaction: Interaction,
        user: discord.User | None = None,
        days: app_commands.Range[int, 1, 365] = 7,
    ) -> None:
        await interaction.response.defer(ephemeral=True)
        summary = await _store(interaction).usage(
            _guild_id(interaction), user.id if user else None, days
        )
        who = user.mention if user else "this server"
        await interaction.followup.send(
            reports.usage_text(summary, who=who, days=days), ephemeral=True
        )

    @app_commands.command(name="top", description="Members who made the most videos")
    @app_commands.describe(days="How many days back to count")
    async def top(
        self, interaction: Interaction, days: app_commands.Range[int, 1, 365] = 7
    ) -> None:
        await interaction.response.defer(ephemeral=True)
        rows = await _store(interaction).top_users(_guild_id(interaction), days, limit=10)
        await interaction.followup.send(reports.top_text(rows, days=days), ephemeral=True)

    @app_commands.command(name="jobs", description="Recent jobs with links to their messages")
    @app_commands.describe(user="Only this member's jobs", limit="How many jobs to list")
    async def jobs(
        self,
        interaction: Interaction,
        user: discord.User | None = None,
        limit: app_commands.Range[int, 1, 25] = 10,
    ) -> None:
        await interaction.response.defer(ephemeral=True)
        rows = await _store(interaction).recent_jobs(
            _guild_id(interaction), user.id if user else None, limit
        )
        await interaction.followup.send(reports.jobs_text(rows), ephemeral=True)

    @app_commands.command(name="export", description="All jobs of this server as a CSV file")
    @app_commands.describe(days="Jobs from how many days back")
    async def export(
        self, interaction: Interaction, days: app_commands.Range[int, 1, 3650] = 30
    ) -> None:
        await interaction.response.defer(ephemeral=True)
        rows = await _store(interaction).export_jobs(_guild_id(interaction), days)
        data = reports.jobs_csv(rows)
        file = discord.File(io.BytesIO(data), filename=f"veo-jobs-{days}d.csv")
        await interaction.followup.send(
            f"{len(rows)} jobs from the last {days} day(s).", file=file, ephemeral=True
        )

    @app_commands.command(name="spend", description="What Segmind billed, per day, with a chart")
    @app_commands.describe(days="How many UTC days back, today included")
    async def spend(
        self,
        interaction: Interaction,
        days: app_commands.Range[int, 1, spend_report.MAX_DAYS] = spend_report.DEFAULT_DAYS,
    ) -> None:
        await interaction.response.defer(ephemeral=True)
        bot = interaction.client
        report = await spend_report.gather(
            bot.services.store,
            _guild_id(interaction),
            days,
            defaults=_defaults(interaction),
            watch=bot.services.balance,
            now=bot.clock(),
        )
        try:
            png: bytes | None = await spend_report.chart_png(report, days=days)
        except Exception:
            # The figures still answer the question; the picture is a convenience.
            log.exception("spend chart for guild %s not drawn", interaction.guild_id)
            png = None
        embed = spend_report.spend_embed(report, days=days, chart=png is not None)
        file = (
            discord.File(io.BytesIO(png), filename=spend_report.CHART_NAME)
            if png is not None
            else discord.utils.MISSING
        )
        await interaction.followup.send(
            embed=embed, file=file, ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )

    @app_commands.command(name="audit", description="Recent changes moderators made")
    @app_commands.describe(limit="How many changes to list")
    async def audit(
        self, interaction: Interaction, limit: app_commands.Range[int, 1, 50] = 20
    ) -> None:
        await interaction.response.defer(ephemeral=True)
        entries = await _store(interaction).audit_entries(_guild_id(interaction), limit)
        await interaction.followup.send(reports.audit_text(entries), ephemeral=True)

    @app_commands.command(
        name="discrepancies", description="Where Segmind's billing and the bot's record disagree"
    )
    @app_commands.describe(days="How far back", limit="How many to list")
    async def discrepancies(
        self,
        interaction: Interaction,
        days: app_commands.Range[int, 1, 365] = 30,
        limit: app_commands.Range[int, 1, 25] = 10,
    ) -> None:
        await interaction.response.defer(ephemeral=True)
        since = interaction.client.clock() - days * 86_400
        found = await _store(interaction).discrepancies(
            _guild_id(interaction), since=since, limit=limit
        )
        await interaction.followup.send(
            reports.discrepancies_text(found, days=days), ephemeral=True
        )

    # --------------------------------------------------------------------------- members

    @app_commands.command(name="block", description="Stop a member from using /veo here")
    @app_commands.describe(user="The member to block", reason="Shown to them when they try")
    async def block(
        self, interaction: Interaction, user: discord.User, reason: str | None = None
    ) -> None:
        await _store(interaction).block_user(
            _guild_id(interaction), user.id, reason=reason, actor_id=interaction.user.id
        )
        await interaction.response.send_message(
            f"{user.mention} can no longer use /veo here.", ephemeral=True
        )

    @app_commands.command(name="unblock", description="Let a blocked member use /veo again")
    @app_commands.describe(user="The member to unblock")
    async def unblock(self, interaction: Interaction, user: discord.User) -> None:
        done = await _store(interaction).unblock_user(
            _guild_id(interaction), user.id, actor_id=interaction.user.id
        )
        text = f"{user.mention} can use /veo again." if done else f"{user.mention} was not blocked."
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(name="reset", description="Clear a member's usage window")
    @app_commands.describe(user="Whose usage window to clear")
    async def reset(self, interaction: Interaction, user: discord.User) -> None:
        await _store(interaction).reset_user_window(
            _guild_id(interaction), user.id, actor_id=interaction.user.id
        )
        await interaction.response.send_message(
            f"{user.mention}'s window is cleared: they can make videos again now.", ephemeral=True
        )

    # ---------------------------------------------------------------------------- limits

    @limits.command(name="show", description="The limits in force on this server")
    async def limits_show(self, interaction: Interaction) -> None:
        await interaction.response.defer(ephemeral=True)
        store, guild_id = _store(interaction), _guild_id(interaction)
        month = await store.spend_by_day(guild_id, month_start(interaction.client.clock()))
        text = reports.limits_text(
            await store.get_guild_limits(guild_id),
            _defaults(interaction),
            await store.role_overrides(guild_id),
            await store.user_overrides(guild_id),
            await store.exempt_roles(guild_id),
            await store.get_log_channel(guild_id),
            month_spent=sum(day.billed + day.held for day in month),
        )
        lane = lane_texts.settings_text(
            await store.get_approval_settings(guild_id), _default_expiry(interaction)
        )
        rules = reports.rules_text(
            await store.banned_words(guild_id),
            await store.allowed_channels(guild_id),
            await store.get_gallery_channel(guild_id),
        )
        await interaction.followup.send(reports.clip(f"{text}\n{lane}\n{rules}"), ephemeral=True)

    @limits.command(name="set", description="Server-wide limits (empty options stay as they are)")
    @app_commands.describe(
        videos="Videos per member per window",
        window_hours="Length of the rolling window in hours",
        at_once="Jobs one member may have in progress",
        daily_cap="Videos per day for the whole server (0 = none)",
        spend_cap="Dollars per day for the whole server (0 = none)",
        monthly_budget="Dollars per calendar month (UTC) for the whole server (0 = none)",
    )
    async def limits_set(
        self,
        interaction: Interaction,
        videos: app_commands.Range[int, 0, 1000] | None = None,
        window_hours: app_commands.Range[float, 0.1, 720.0] | None = None,
        at_once: app_commands.Range[int, 1, 20] | None = None,
        daily_cap: app_commands.Range[int, 0, 100000] | None = None,
        spend_cap: app_commands.Range[float, 0.0, 100000.0] | None = None,
        monthly_budget: app_commands.Range[float, 0.0, 100000.0] | None = None,
    ) -> None:
        store, guild_id = _store(interaction), _guild_id(interaction)
        defaults = _defaults(interaction)
        if budget_over_max(monthly_budget, defaults):
            # Refused whole: saving the other options alone would look like the budget took.
            await interaction.response.send_message(
                reports.budget_over_max_text(monthly_budget or 0.0, defaults), ephemeral=True
            )
            return
        current = await store.get_guild_limits(guild_id)
        updated = GuildLimits(
            user_limit=current.user_limit if videos is None else videos,
            window_hours=current.window_hours if window_hours is None else window_hours,
            concurrency=current.concurrency if at_once is None else at_once,
            daily_limit=current.daily_limit if daily_cap is None else (daily_cap or None),
            spend_cap=current.spend_cap if spend_cap is None else (spend_cap or None),
            monthly_budget=current.monthly_budget
            if monthly_budget is None
            else (monthly_budget or None),
        )
        await store.set_guild_limits(guild_id, updated, actor_id=interaction.user.id)
        await interaction.response.send_message(
            "Saved. " + _guild_summary(updated, defaults), ephemeral=True
        )

    @limits.command(name="role", description="Limits for members with a role")
    @app_commands.describe(
        role="The role these limits apply to",
        videos="Videos per member per window",
        window_hours="Length of the rolling window in hours",
        at_once="Jobs one member may have in progress",
        exempt="No count limit for this role",
        clear="Remove this role's override",
    )
    async def limits_role(
        self,
        interaction: Interaction,
        role: discord.Role,
        videos: app_commands.Range[int, 0, 1000] | None = None,
        window_hours: app_commands.Range[float, 0.1, 720.0] | None = None,
        at_once: app_commands.Range[int, 1, 20] | None = None,
        exempt: bool | None = None,
        clear: bool = False,
    ) -> None:
        store, guild_id, actor = _store(interaction), _guild_id(interaction), interaction.user.id
        override = None if clear else LimitOverride(videos, window_hours, at_once)
        await store.set_role_override(
            guild_id,
            role.id,
            override if override and not override.is_empty else None,
            actor_id=actor,
        )
        if exempt is not None or clear:
            await store.set_role_exempt(
                guild_id, role.id, bool(exempt) and not clear, actor_id=actor
            )
        await interaction.response.send_message(
            f"Saved the limits for {role.mention}.",
            ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none(),
        )

    @limits.command(name="user", description="Limits for one member (beats their roles)")
    @app_commands.describe(
        user="The member these limits apply to",
        videos="Videos per window for this member",
        window_hours="Length of the rolling window in hours",
        at_once="Jobs this member may have in progress",
        clear="Remove this member's override",
    )
    async def limits_user(
        self,
        interaction: Interaction,
        user: discord.User,
        videos: app_commands.Range[int, 0, 1000] | None = None,
        window_hours: app_commands.Range[float, 0.1, 720.0] | None = None,
        at_once: app_commands.Range[int, 1, 20] | None = None,
        clear: bool = False,
    ) -> None:
        override = None if clear else LimitOverride(videos, window_hours, at_once)
        await _store(interaction).set_user_override(
            _guild_id(interaction),
            user.id,
            override if override and not override.is_empty else None,
            actor_id=interaction.user.id,
        )
        await interaction.response.send_message(
            f"Saved the limits for {user.mention}.", ephemeral=True
        )

    @limits.command(name="log-channel", description="Where finished jobs are posted for moderators")
    @app_commands.describe(channel="Leave empty to stop posting")
    async def limits_log_channel(
        self, interaction: Interaction, channel: discord.TextChannel | None = None
    ) -> None:
        await _store(interaction).set_log_channel(
            _guild_id(interaction), channel.id if channel else None, actor_id=interaction.user.id
        )
        text = (
            f"Finished jobs will be posted in {channel.mention}."
            if channel
            else ("Finished jobs will no longer be posted.")
        )
        await interaction.response.send_message(text, ephemeral=True)

    # ------------------------------------------------------------------------- approvals

    @approvals.command(name="on", description="Hold requests for a moderator's approval")
    @app_commands.describe(
        channel="Where the approval cards are posted for moderators",
        above="Only requests quoted above this many dollars (0 = every request)",
        approver="A role that may approve besides Manage Server",
        expiry_minutes="Undecided requests are dropped (and refunded) after this long",
    )
    async def approvals_on(
        self,
        interaction: Interaction,
        channel: discord.TextChannel,
        above: app_commands.Range[float, 0.0, 1000.0] | None = None,
        approver: discord.Role | None = None,
        expiry_minutes: app_commands.Range[float, 0.05, 43200.0] | None = None,
    ) -> None:
        store, guild_id = _store(interaction), _guild_id(interaction)
        current = await store.get_approval_settings(guild_id)
        updated = replace(
            current,
            enabled=True,
            channel_id=channel.id,
            threshold=current.threshold if above is None else above,
            approver_role_id=approver.id if approver else current.approver_role_id,
            expiry_seconds=(
                current.expiry_seconds if expiry_minutes is None else expiry_minutes * 60
            ),
        )
        await store.set_approval_settings(guild_id, updated, actor_id=interaction.user.id)
        await interaction.response.send_message(
            "Saved. " + lane_texts.settings_text(updated, _default_expiry(interaction)),
            ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none(),
        )

    @approvals.command(name="off", description="Stop holding requests for approval")
    async def approvals_off(self, interaction: Interaction) -> None:
        store, guild_id = _store(interaction), _guild_id(interaction)
        current = await store.get_approval_settings(guild_id)
        await store.set_approval_settings(
            guild_id, replace(current, enabled=False), actor_id=interaction.user.id
        )
        await interaction.response.send_message(
            "Approvals are off: new requests go straight to the queue. Requests already "
            "waiting still need a decision (or lapse).",
            ephemeral=True,
        )

    @approvals.command(name="show", description="The approval settings of this server")
    async def approvals_show(self, interaction: Interaction) -> None:
        settings = await _store(interaction).get_approval_settings(_guild_id(interaction))
        await interaction.response.send_message(
            lane_texts.settings_text(settings, _default_expiry(interaction)),
            ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none(),
        )

    @approvals.command(name="exempt", description="A role whose requests never need approval")
    @app_commands.describe(role="The role", remove="Make its requests need approval again")
    async def approvals_exempt(
        self, interaction: Interaction, role: discord.Role, remove: bool = False
    ) -> None:
        store, guild_id = _store(interaction), _guild_id(interaction)
        current = await store.get_approval_settings(guild_id)
        roles = current.exempt_roles - {role.id} if remove else current.exempt_roles | {role.id}
        await store.set_approval_settings(
            guild_id, replace(current, exempt_roles=roles), actor_id=interaction.user.id
        )
        text = (
            f"Requests by {role.mention} need approval again."
            if remove
            else f"Requests by {role.mention} never need approval."
        )
        await interaction.response.send_message(
            text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )


def _default_expiry(interaction: Interaction) -> float:
    return interaction.client.settings.veo_approval_expiry_hours * 3600


def _guild_summary(limits: GuildLimits, defaults: LimitDefaults) -> str:
    videos = limits.user_limit if limits.user_limit is not None else defaults.user_limit
    hours = limits.window_hours if limits.window_hours is not None else defaults.window_hours
    at_once = limits.concurrency if limits.concurrency is not None else defaults.concurrency
    return f"Members may make {videos} videos per {hours:g} h, {at_once} at once."


async def setup(bot: VeoBot) -> None:
    await bot.add_cog(Quota(bot))
    await bot.add_cog(VeoAdmin(bot))
