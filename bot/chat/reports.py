"""Moderator views of the store, as plain text and CSV (no Discord objects, no I/O)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from datetime import UTC, datetime

from bot.chat.presenter import safe_text
from bot.discrepancies import describe
from bot.quota import (
    EffectiveLimits,
    GuildLimits,
    LimitDefaults,
    LimitOverride,
    UsageSnapshot,
    guild_monthly_budget,
)
from bot.store import AuditEntry, Discrepancy, Job, UsageSummary, UserUsage

DISCORD_WEB = "https://discord.com/channels"
PROMPT_IN_LIST = 60

EXPORT_COLUMNS = (
    "job_id",
    "created_utc",
    "user_id",
    "channel_id",
    "state",
    "prompt",
    "aspect_ratio",
    "duration",
    "fps",
    "resolution",
    "audio",
    "seed",
    "image_url",
    "segmind_request_id",
    "seconds_to_video",
    "cost_usd",
    "charged_usd",
    "ledger",
    "bytes",
    "error",
    "message_url",
)


def message_url(job: Job) -> str | None:
    message_id = job.delivered_message_id or job.placeholder_message_id
    channel_id = job.placeholder_channel_id or job.channel_id
    if message_id is None:
        return None
    return f"{DISCORD_WEB}/{job.guild_id}/{channel_id}/{message_id}"


def when(epoch: float) -> str:
    """Discord renders this in each reader's own time zone."""
    return f"<t:{int(epoch)}:f>"


def money(amount: float | None) -> str:
    return "—" if amount is None else f"${amount:.2f}"


STATE_MARKS = {"delivered": "✅", "cancelled": "🚫", "expired": "⌛", "unknown": "❓"}


def log_line(job: Job) -> str:
    """One line per finished job for the moderators' log channel."""
    prompt = job.prompt.replace("\n", " ").replace("`", "'")
    if len(prompt) > PROMPT_IN_LIST:
        prompt = prompt[: PROMPT_IN_LIST - 1] + "…"
    parts = [
        f"{STATE_MARKS.get(job.state, '❌')} `#{job.id}` <@{job.user_id}> **{job.state}**",
        f"`{prompt}`",
    ]
    if job.charged_amount is not None and job.ledger_status == "charged":
        parts.append(money(job.charged_amount))
    if job.ledger_status == "released":
        parts.append("refunded")
    if job.submitted_at is not None and job.completed_at is not None:
        parts.append(f"{job.completed_at - job.submitted_at:.0f} s")
    link = message_url(job)
    if link:
        parts.append(f"[message](<{link}>)")
    if job.error and job.state != "delivered":
        # The error may quote Segmind's text: escaped, so it can neither ping nor format.
        parts.append("— " + safe_text(job.error.replace("\n", " ")[:200]))
    return _clip(" · ".join(parts))


def usage_text(summary: UsageSummary, *, who: str, days: float) -> str:
    return (
        f"**Usage for {who}, last {days:g} day(s)**\n"
        f"Jobs: {summary.jobs} · delivered {summary.delivered} · failed {summary.failed} · "
        f"cancelled {summary.cancelled} · in progress {summary.in_progress}\n"
        f"Refunded: {summary.refunded} · spent {money(summary.cost)}"
    )


def top_text(rows: list[UserUsage], *, days: float) -> str:
    if not rows:
        return f"No jobs in the last {days:g} day(s)."
    lines = [f"**Top users, last {days:g} day(s)**"]
    for rank, row in enumerate(rows, start=1):
        lines.append(
            f"{rank}. <@{row.user_id}> — {row.jobs} jobs, {row.delivered} delivered, "
            f"{money(row.cost)}"
        )
    return "\n".join(lines)


def jobs_text(jobs: list[Job]) -> str:
    if not jobs:
        return "No jobs yet."
    lines = ["**Recent jobs**"]
    for job in jobs:
        prompt = job.prompt.replace("\n", " ")
        if len(prompt) > PROMPT_IN_LIST:
            prompt = prompt[: PROMPT_IN_LIST - 1] + "…"
        prompt = prompt.replace("`", "'")
        link = message_url(job)
        where = f" · [message](<{link}>)" if link else ""
        image = f" · [image](<{job.image_url}>)" if job.image_url else ""
        lines.append(
            f"`#{job.id}` {when(job.created_at)} <@{job.user_id}> **{job.state}** "
            f"`{prompt}` {money(job.cost)}{where}{image}"
        )
    return _clip("\n".join(lines))


def jobs_csv(jobs: Iterable[Job]) -> bytes:
    """One row per job; prompts are user text, so cells that a spreadsheet would run as a
    formula are prefixed with a quote."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    for job in jobs:
        params = job.params
        took = (
            job.completed_at - job.submitted_at
            if job.completed_at is not None and job.submitted_at is not None
            else None
        )
        writer.writerow(
            [
                job.id,
                datetime.fromtimestamp(job.created_at, UTC).isoformat(timespec="seconds"),
                job.user_id,
                job.channel_id,
                job.state,
                _cell(job.prompt),
                params.get("aspect_ratio", ""),
                params.get("duration", ""),
                params.get("fps", ""),
                params.get("resolution", ""),
                params.get("generate_audio", ""),
                params.get("seed", ""),
                job.image_url or "",
                job.request_id or "",
                "" if took is None else f"{took:.1f}",
                "" if job.cost is None else f"{job.cost:.4f}",
                "" if job.charged_amount is None else f"{job.charged_amount:.4f}",
                job.ledger_status or "",
                job.bytes or "",
                _cell(job.error or ""),
                message_url(job) or "",
            ]
        )
    return buffer.getvalue().encode("utf-8")


def limits_text(
    guild: GuildLimits,
    defaults: LimitDefaults,
    roles: dict[int, LimitOverride],
    users: dict[int, LimitOverride],
    exempt: frozenset[int],
    log_channel: int | None,
    *,
    month_spent: float | None = None,
) -> str:
    """`month_spent`: the server's spend this calendar month (billed plus held quotes)."""

    def pick(value: object, default: object) -> str:
        return f"{value} (server)" if value is not None else f"{default} (default)"

    lines = [
        "**Limits on this server**",
        f"Per user: {pick(guild.user_limit, defaults.user_limit)} videos per "
        f"{pick(guild.window_hours, defaults.window_hours)} h",
        f"At once per user: {pick(guild.concurrency, defaults.concurrency)}",
        f"Server daily cap: {pick(guild.daily_limit, defaults.guild_daily_limit or 'none')}",
        f"Server spend cap per day: {pick(guild.spend_cap, defaults.daily_spend_cap or 'none')}",
        _monthly_line(guild, defaults, month_spent),
        "Bot-wide spend caps: "
        f"{_dollars(defaults.daily_spend_cap)} per rolling 24 h, "
        f"{_dollars(defaults.monthly_spend_cap)} per calendar month (UTC)",
        f"Log channel: {f'<#{log_channel}>' if log_channel else 'none'}",
    ]
    if roles:
        lines.append("**Role overrides** (the most generous role wins)")
        lines += [f"<@&{role}>: {_override(o)}" for role, o in roles.items()]
    if exempt:
        lines.append("**Exempt roles**: " + ", ".join(f"<@&{r}>" for r in sorted(exempt)))
    if users:
        lines.append("**User overrides**")
        lines += [f"<@{user}>: {_override(o)}" for user, o in users.items()]
    return _clip("\n".join(lines))


def audit_text(entries: list[AuditEntry]) -> str:
    if not entries:
        return "No moderator changes recorded yet."
    lines = ["**Moderator changes**"]
    for entry in entries:
        lines.append(
            f"{when(entry.created_at)} <@{entry.actor_id}> **{entry.action}** "
            + _audit_detail(entry.detail)
        )
    return _clip("\n".join(lines))


def discrepancies_text(found: list[Discrepancy], *, days: int) -> str:
    """Where Segmind's record and the bot's disagreed, newest first (`/veo-admin
    discrepancies`; the spend view lists the same rows)."""
    if not found:
        return f"No disagreement with Segmind's record in the last {days} day(s)."
    lines = [f"**Disagreements with Segmind's record** (last {days} day(s))"]
    lines.extend(f"{when(item.created_at)} {describe(item)}" for item in found)
    return _clip("\n".join(lines))


def _audit_detail(detail: dict[str, object]) -> str:
    """Who or what was changed, and for limit changes only the fields that moved."""
    parts: list[str] = []
    old, new = detail.get("old"), detail.get("new")
    targets_first = sorted(detail, key=lambda k: k not in ("user_id", "role_id", "channel_id"))
    for key in targets_first:
        value = detail[key]
        if key in ("old", "new"):
            continue
        if key == "user_id":
            parts.append(f"<@{value}>")
        elif key == "role_id":
            parts.append(f"<@&{value}>")
        elif key == "channel_id":
            parts.append(f"<#{value}>" if value else "no channel")
        else:
            parts.append(f"{key.replace('_', ' ')}: {value}")
    if isinstance(old, dict) or isinstance(new, dict):
        before = old if isinstance(old, dict) else {}
        after = new if isinstance(new, dict) else {}
        for field in sorted(set(before) | set(after)):
            if before.get(field) != after.get(field):
                parts.append(
                    f"{field.replace('_', ' ')} {_or_default(before.get(field))} → "
                    f"{_or_default(after.get(field))}"
                )
    return ", ".join(parts)


def _or_default(value: object) -> str:
    return "default" if value is None else str(value)


def _override(override: LimitOverride) -> str:
    parts = []
    if override.user_limit is not None:
        parts.append(f"{override.user_limit} videos")
    if override.window_hours is not None:
        parts.append(f"per {override.window_hours:g} h")
    if override.concurrency is not None:
        parts.append(f"{override.concurrency} at once")
    return ", ".join(parts) or "inherits"


def _cell(text: str) -> str:
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def clip(text: str, limit: int = 2000) -> str:
    """The text cut at a line to fit one Discord message."""
    return _clip(text, limit)


def _clip(text: str, limit: int = 2000) -> str:
    return text if len(text) <= limit else text[: limit - 20].rsplit("\n", 1)[0] + "\n… (more)"


# ------------------------------------------------------------------------ moderators' rules

MESSAGE_MAX = 2000


def rules_text(banned: list[str], allowed: frozenset[int], gallery: int | None) -> str:
    """The rules' part of `/veo-admin limits show`."""
    count = f"{len(banned)} (see /veo-admin banned-words list)" if banned else "none"
    return "\n".join(
        [
            f"Banned words: {count}",
            "Channels: " + (_channel_list(allowed) if allowed else "every channel"),
            f"Gallery: {f'<#{gallery}>' if gallery else 'none'}",
        ]
    )


def _channel_list(channels: frozenset[int]) -> str:
    return ", ".join(f"<#{c}>" for c in sorted(channels))


def banned_list_text(entries: list[str]) -> str:
    if not entries:
        return "No words or phrases are banned here."
    lines = [f"**Banned words and phrases** ({len(entries)})"]
    lines += [f"• {safe_text(entry)}" for entry in entries]
    return "\n".join(lines)


def banned_added_text(entry: str, outcome: str, maximum: int) -> str:
    shown = safe_text(entry)
    if outcome == "exists":
        return f"“{shown}” is already banned (or a spelling of it is)."
    if outcome == "full":
        return f"This server already bans {maximum} entries, the most it can; remove one first."
    return f"Prompts with “{shown}” will be refused (in any spelling, as whole words)."


def banned_removed_text(entry: str, removed: str | None) -> str:
    if removed is None:
        return f"“{safe_text(entry)}” was not banned."
    return f"“{safe_text(removed)}” is no longer banned."


def channels_text(allowed: frozenset[int]) -> str:
    if not allowed:
        return "The bot works in every channel (no list is set)."
    return f"The bot works only in {_channel_list(allowed)} and their threads."


def channel_allowed_text(channel_id: int, outcome: str, allowed: frozenset[int]) -> str:
    if outcome == "full":
        return f"The list is full ({len(allowed)} channels); remove one first."
    head = f"<#{channel_id}> was already allowed." if outcome == "exists" else "Saved."
    return f"{head} {channels_text(allowed)}"


def channel_removed_text(channel_id: int, removed: bool, allowed: frozenset[int]) -> str:
    head = "Removed." if removed else f"<#{channel_id}> was not on the list."
    return f"{head} {channels_text(allowed)}"


def _dollars(amount: float | None) -> str:
    return "none" if amount is None else money(amount)


def _monthly_line(guild: GuildLimits, defaults: LimitDefaults, spent: float | None) -> str:
    budget = guild_monthly_budget(guild, defaults)
    source = "server" if guild.monthly_budget is not None else "default"
    text = f"Server budget per month (UTC): {_dollars(budget)}"
    if budget is not None:
        text += f" ({source})"
        if guild.monthly_budget is not None and budget < guild.monthly_budget:
            text += f" — the server asked for {money(guild.monthly_budget)}, above the maximum"
    if defaults.guild_monthly_budget_max is not None:
        text += f"; the owner allows at most {money(defaults.guild_monthly_budget_max)}"
    if spent is not None:
        text += f"; spent this month: {money(spent)}"
    return text


def budget_over_max_text(budget: float, defaults: LimitDefaults) -> str:
    """The moderator's answer when a monthly budget is above the owner's maximum."""
    cap = defaults.guild_monthly_budget_max
    return (
        f"Not saved: {money(budget)} a month is above the most the bot's owner allows per "
        f"server ({money(cap or 0.0)}). Choose {money(cap or 0.0)} or less."
    )


def monthly_budget_lines(limits: EffectiveLimits, usage: UsageSnapshot) -> list[str]:
    """For a member's quota view: this month's budgets in force and how much is used."""
    lines = []
    if limits.guild_monthly_budget is not None:
        lines.append(
            f"This server's video budget this month: {money(usage.guild_month_spend)} of "
            f"{money(limits.guild_monthly_budget)} used (renews on the 1st, UTC)."
        )
    if limits.global_monthly_cap is not None:
        lines.append(
            f"The bot's video budget this month: {money(usage.global_month_spend)} of "
            f"{money(limits.global_monthly_cap)} used (renews on the 1st, UTC)."
        )
    return lines
