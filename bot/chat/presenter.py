"""Every text the bot shows about a job, built from plain data (no Discord objects, no I/O).

Prompts are user text echoed into a channel, so they are escaped for markdown and their mentions
neutralised here; the client-wide `allowed_mentions` is the second lock on the same door.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import discord

from bot.params import Aspect, VeoParams
from bot.pricing import Quote
from bot.progress import Progress, Stage

_LINE_START = re.compile(r"^(\s*)(#|-#|[-*+]\s)")
_NUMBERED = re.compile(r"^(\s*\d+)\.(\s)")
CONTENT_LIMIT = 2000  # Discord's limit on message content.
PROMPT_SHOWN = 600  # Leaves room for the status lines whatever else the message carries.
# How each shape is offered to members (/veo's choices, the animate form), in that order.
ASPECT_LABELS = {
    Aspect.WIDE: "16:9 landscape",
    Aspect.VERTICAL: "9:16 vertical",
    Aspect.SQUARE: "1:1 square",
    Aspect.CLASSIC: "4:3 classic",
    Aspect.PORTRAIT_CLASSIC: "3:4 portrait",
}


def safe_prompt(prompt: str, limit: int = PROMPT_SHOWN) -> str:
    """The prompt as a quoted block that can neither ping nor break the message's markdown."""
    text = prompt.strip()
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    text = discord.utils.escape_markdown(discord.utils.escape_mentions(text))
    # escape_markdown leaves line-start syntax (headers, `-#` subtext, lists) alone.
    lines = (
        _NUMBERED.sub(r"\1\\.\2", _LINE_START.sub(r"\1\\\2", line)) for line in text.splitlines()
    )
    return "\n".join(f"> {line}" if line else ">" for line in lines)


def safe_text(text: str) -> str:
    """Text from elsewhere (Segmind's error messages) shown inline: it can neither ping nor
    format the message it is part of."""
    return discord.utils.escape_markdown(discord.utils.escape_mentions(text))


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def clock(seconds: float) -> str:
    """1:05 for 65 s; used for elapsed and estimated times."""
    total = max(0, round(seconds))
    minutes, secs = divmod(total, 60)
    return f"{minutes}:{secs:02d}"


RECOVERING = "Segmind's answer was lost; looking it up…"


def params_line(params: VeoParams) -> str:
    parts = [
        params.aspect_ratio.value,
        f"{params.duration} s",
        f"{params.fps} fps",
        params.resolution.value,
        "audio" if params.generate_audio else "no audio",
        f"seed {params.seed}" if params.seed else "random seed",
    ]
    if params.image_url:
        parts.append("from image")
    return "`" + " · ".join(parts) + "`"


def quote_line(quote: Quote) -> str:
    """What the video is counted at against the bot's budget, and where that figure comes
    from (`bot.pricing`: the most ever billed for these options, else a neighbour's, else the
    top of Segmind's published range)."""
    if quote.basis == "observed":
        videos = "video" if quote.samples == 1 else f"{quote.samples} videos"
        last = "the last video" if quote.samples == 1 else f"the last {videos}"
        return f"about ${quote.amount:.2f}, from {last} with these options"
    if quote.basis == "inferred":
        return f"about ${quote.amount:.2f}, from videos with similar options"
    return f"≈ ${quote.amount:.2f}, the most Segmind bills for these options"


def progress_text(
    params: VeoParams, progress: Progress, *, demo: bool = False, quote: Quote | None = None
) -> str:
    """The placeholder while the job moves. Changes only when something a user sees changes.
    `quote`: the job's price quote, shown so nobody is surprised by what a video costs (not in
    demo mode, where nothing is billed)."""
    stage = progress.stage
    if stage is Stage.AWAITING_APPROVAL:
        head = (
            "🛂 **Waiting for a moderator** — this server approves requests like this one "
            "before they are sent to Veo. Nothing is charged unless it is approved and made."
        )
    elif stage is Stage.QUEUED:
        where = f"{ordinal(progress.position)} in line" if progress.position else "in line"
        head = f"⏳ **Queued** — {where}. It starts when a slot frees up."
    elif stage is Stage.SUBMITTING:
        head = "⏳ **Queued** — sending to Veo…"
    elif stage is Stage.RECOVERING:
        head = f"🔎 **{RECOVERING}**"
    elif stage is Stage.WAITING:
        head = f"⏳ **Queued at Segmind** — {_elapsed(progress)}"
    elif stage is Stage.GENERATING:
        head = f"🎬 **Generating** — {_elapsed(progress)}"
        if progress.estimate:
            # Rounded, so a learning estimate does not trigger an edit for every second it moves.
            head += f"; it usually takes about {clock(round(progress.estimate / 10) * 10)}"
    elif stage is Stage.DOWNLOADING:
        head = "📥 **Downloading** the video…"
    elif stage is Stage.ENCODING:
        head = "🗜️ **Re-encoding** the video to fit this server's upload limit…"
    else:
        head = "📤 **Uploading** the video…"
    lines = [head, safe_prompt(params.prompt), params_line(params)]
    if demo:
        lines.append("-# Demo mode: a test clip, no Segmind credits used.")
    elif quote is not None:
        lines.append(f"-# Cost: {quote_line(quote)}.")
    return _fit("\n".join(lines))


def _elapsed(progress: Progress) -> str:
    if progress.since is not None:
        return f"started <t:{int(progress.since)}:R>"
    return f"{clock(progress.elapsed)} so far"


@dataclass(frozen=True)
class Delivered:
    params: VeoParams
    took: float
    cost: float | None
    attached: bool
    link: str | None = None
    link_reason: str | None = None
    note: str | None = None  # e.g. "re-encoded to fit this server's 10 MB limit"
    mention_user_id: int | None = None
    demo: bool = False


def final_text(done: Delivered) -> str:
    head = (
        "✅ **Your video is ready**"
        if done.mention_user_id is None
        else (f"✅ <@{done.mention_user_id}> **your video is ready**")
    )
    facts = [f"took {clock(done.took)}"]
    if done.cost is not None:
        facts.append(f"cost ${done.cost:.2f}")
    lines = [
        head,
        safe_prompt(done.params.prompt, limit=900),
        params_line(done.params) + " · " + " · ".join(facts),
    ]
    if done.note:
        lines.append(f"-# {done.note}")
    if not done.attached and done.link:
        reason = done.link_reason or "The video is too large to upload here."
        lines.append(f"{reason} Download: <{done.link}>")
    if done.demo:
        lines.append("-# Demo mode: this is a test clip, not a Veo video. No credits were used.")
    return _fit("\n".join(lines))


def failure_text(params: VeoParams, message: str, *, job_id: int | str | None = None) -> str:
    # The message may quote Segmind's error text, which is not ours to render.
    lines = ["❌ " + safe_text(message), safe_prompt(params.prompt, limit=300)]
    if job_id is not None:
        lines.append(f"-# job {job_id}")
    return _fit("\n".join(lines))


def _fit(text: str) -> str:
    if len(text) <= CONTENT_LIMIT:
        return text
    return text[: CONTENT_LIMIT - 1] + "…"


def source_image_embed(image_url: str) -> discord.Embed:
    """Shows, beside the finished video, the image it was animated from."""
    return discord.Embed(description="Animated from this image").set_thumbnail(url=image_url)


# Image-to-video by mention (`@Veo make the waves crash` in a reply to a picture).
MENTION_USAGE = (
    "To animate an image, reply to it and mention me with what should happen "
    "(`@Veo make the waves crash`), or use **Apps → Animate with Veo** on the message. "
    "For a video from text only, use `/veo`."
)
NO_PROMPT = "Tell me what should happen after the mention, e.g. `@Veo make the waves crash`."
NO_IMAGE_MENU = (
    "This message has no image to animate (Veo takes PNG, JPEG or WebP attachments or image "
    "embeds)."
)
NOT_ACCEPTING = "The bot is restarting — try again in a minute."
STORE_DOWN = (
    "The bot cannot reach its database right now, so /veo is paused to keep limits exact. "
    "Please try again later."
)


def reply_without_image_hint(*, content_intent: bool) -> str:
    """One line for a reply whose target shows no image: point to the context menu, which
    always sees the message, and to the setting that lets the bot see images in replies."""
    text = (
        "I can't see an image in the message you replied to — right-click it "
        "(long-press on mobile) → **Apps → Animate with Veo**."
    )
    if not content_intent:
        text += " (Bot owner: DISCORD_MESSAGE_CONTENT_INTENT=true lets me read images in replies.)"
    return text


# Buttons on a job's messages (cogs/buttons.py).
NOT_CANCELLABLE = "-# It can no longer be cancelled: Veo is working on it."


def with_cancel_note(text: str) -> str:
    """A placeholder past the bot's queue says why its Cancel button is gone."""
    return _fit(f"{text}\n{NOT_CANCELLABLE}")


def cancelled_text(params: VeoParams, *, by_moderator: bool) -> str:
    who = "a moderator" if by_moderator else "its requester"
    lines = [
        f"🚫 **Cancelled** by {who} before it was sent to Veo. Nothing was charged.",
        safe_prompt(params.prompt, limit=300),
    ]
    return _fit("\n".join(lines))
