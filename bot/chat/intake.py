"""From a member's request to a queued job: shared by `/veo`, the context menu and mention replies.

Two front doors, one hallway. An interaction (slash command, modal) has already been deferred
publicly (the 3-second rule); a mention in a channel gets a placeholder reply at once, for the
same reason. Then the same checks run in the same order — the moderators' rules (allowed
channels, banned words: `bot.chat.rules`), the limits (read-only), options, the input image
(its head only), the limits for real — and anything refused is told to the member *before*
anything is charged, fetched or sent to Segmind:

- interaction: the public "thinking…" placeholder is removed and the refusal sent privately;
- message: the placeholder reply is edited into the refusal. It stays in the channel (it is a
  reply to the member's own public message, so it explains why nothing happened) and pings
  nobody.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import discord

from bot.chat import rules
from bot.chat.presenter import STORE_DOWN
from bot.chat.replies import acknowledged_elsewhere, note_acknowledged_elsewhere
from bot.chat.reports import message_url
from bot.jobs import AlreadyQueued
from bot.media.images import ImageRejected, inspect_image
from bot.params import InvalidParams, VeoParams
from bot.quota import Refusal, render_refusal
from bot.request import ImageSource, VeoRequest, resolve_params
from bot.segmind.client import InsufficientCredits
from bot.store import ReserveRequest, StoreUnavailable

if TYPE_CHECKING:
    from bot.chat.app import VeoBot

log = logging.getLogger(__name__)

PLACEHOLDER_KEY = "veo_placeholder_id"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".heic", ".avif", ".tiff")
CHECKING_TEXT = "⏳ Checking the image…"
# The same sentence as a submit that Segmind refused for credits (406): one source.
OUT_OF_CREDITS = InsufficientCredits.default_message


class Refused(Exception):
    """The request cannot go ahead; `str()` is the message for the member, `public` the one to
    show where everyone can read it (the same unless it holds something private). `dm`: on a
    public path the member is also sent `str()` by DM (it names a banned word, which the
    channel must not read but the member must)."""

    def __init__(self, text: str, *, public: str | None = None, dm: bool = False) -> None:
        super().__init__(text)
        self.public = text if public is None else public
        self.dm = dm


def image_of(attachment: discord.Attachment) -> ImageSource:
    """An attachment as an image source, with the type and size Discord declared."""
    return ImageSource(attachment.url, attachment.content_type, attachment.size)


def find_image(message: discord.Message) -> ImageSource | None:
    """The first image a message carries: an attachment, else an embed's image — its own, or
    for a forwarded message, the forwarded message's (Discord puts those in its snapshots).

    Anything that looks like a picture is returned — a GIF too — so that the check that follows
    can tell the member exactly why it will not do; files that are plainly not pictures (a .txt,
    a video) are not images at all."""
    # A forward has no attachments of its own; `getattr`: test doubles may lack the field.
    snapshots = getattr(message, "message_snapshots", None) or []
    for carrier in [message, *snapshots]:
        found = _image_in(carrier.attachments, carrier.embeds)
        if found is not None:
            return found
    return None


def _image_in(
    attachments: list[discord.Attachment], embeds: list[discord.Embed]
) -> ImageSource | None:
    for attachment in attachments:
        content_type = (attachment.content_type or "").split(";")[0].strip().lower()
        if content_type.startswith("image/") or (
            not content_type and attachment.filename.lower().endswith(IMAGE_EXTENSIONS)
        ):
            return image_of(attachment)
    for embed in embeds:
        # Prefer Discord's media proxy: the bot then fetches from Discord, not from any site
        # a member linked. A bare `url` is still returned so the check can tell the member
        # it only takes images on Discord; it is never fetched off the allow-list.
        if embed.image.url:
            return ImageSource(embed.image.proxy_url or embed.image.url)
        if embed.type == "image" and embed.thumbnail.url:
            return ImageSource(embed.thumbnail.proxy_url or embed.thumbnail.url)
    return None


async def prepare_params(bot: VeoBot, request: VeoRequest) -> VeoParams:
    """Validate the options and the image (head only); raises `Refused`. No side effects."""
    image_aspect = None
    if request.image is not None:
        image = request.image
        try:
            info = await inspect_image(
                bot.services.session,
                image.url,
                max_bytes=bot.settings.veo_max_image_bytes,
                declared_type=image.content_type,
                declared_size=image.size,
                allowed_hosts=bot.settings.veo_image_hosts,
            )
        except ImageRejected as exc:
            log.info("image refused (%s): %s", image.url.split("?", 1)[0], exc)
            raise Refused(str(exc)) from None
        image_aspect = info.closest_aspect()
    try:
        return resolve_params(request, bot.settings, image_aspect=image_aspect)
    except InvalidParams as exc:
        raise Refused(exc.user_message) from None


async def reserve(bot: VeoBot, request: ReserveRequest) -> int:
    """Check the limits and queue (or hold for a moderator, when the guild's approval lane
    wants that); returns the job id or raises `Refused`."""
    try:
        outcome = await bot.services.approvals.enqueue(request)
    except StoreUnavailable:
        log.exception("database unavailable; refusing a job from user %s", request.user_id)
        raise Refused(STORE_DOWN) from None
    if isinstance(outcome, Refusal):
        raise await _refused(bot, outcome)
    log.info("job %s queued for user %s in guild %s", outcome, request.user_id, request.guild_id)
    return outcome


async def precheck(bot: VeoBot, guild_id: int, user_id: int, role_ids: tuple[int, ...]) -> None:
    """Refuse (raise `Refused`) a blocked member or one already over a limit, read-only, before
    anything is fetched for a request that cannot go ahead. `reserve` still decides for real.

    While the balance watch has seen the owner's credits run out, every request is refused
    here, before anything is reserved, instead of failing at Segmind later."""
    if bot.services.balance.paused:
        log.info("user %s in guild %s refused: Segmind credits ran out", user_id, guild_id)
        raise Refused(OUT_OF_CREDITS)
    try:
        refusal = await bot.services.jobs.precheck(guild_id, user_id, role_ids)
    except StoreUnavailable:
        log.exception("database unavailable; refusing a job from user %s", user_id)
        raise Refused(STORE_DOWN) from None
    if refusal is not None:
        log.info(
            "user %s in guild %s refused before any fetch (%s)", user_id, guild_id, refusal.kind
        )
        raise await _refused(bot, refusal)


async def check_rules(
    bot: VeoBot, guild_id: int, channel: tuple[int, int | None], prompt: str, user_id: int
) -> None:
    """The moderators' rules (`bot.chat.rules.screen`) as a `Refused`; a banned word is also
    posted to the moderators' log channel. `channel` is (channel id, thread parent id)."""
    try:
        await rules.screen(bot.services.store, guild_id, *channel, prompt, user_id)
    except StoreUnavailable:
        log.exception("database unavailable; refusing a job from user %s", user_id)
        raise Refused(STORE_DOWN) from None
    except rules.RuleRefusal as exc:
        if exc.log_line is not None:
            await rules.tell_moderators(bot, bot.services.store, guild_id, exc.log_line)
        raise Refused(str(exc), public=exc.public, dm=exc.log_line is not None) from None


async def _refused(bot: VeoBot, refusal: Refusal) -> Refused:
    return Refused(
        await _with_link(bot, refusal), public=await _with_link(bot, refusal, public=True)
    )


async def _with_link(bot: VeoBot, refusal: Refusal, *, public: bool = False) -> str:
    """The refusal, with a link to the job still in progress when that is the reason."""
    text = render_refusal(refusal, public=public)
    if refusal.kind != "concurrency" or refusal.in_flight_job_id is None:
        return text
    job = await bot.services.jobs.get(refusal.in_flight_job_id)
    link = message_url(job) if job is not None else None
    return f"{text} ([see it]({link}))" if link else text


async def _start(
    bot: VeoBot,
    request: VeoRequest,
    build: Callable[[VeoParams], Awaitable[ReserveRequest]],
    refuse_with: Callable[[str], Awaitable[None]],
    *,
    member: tuple[int, int, tuple[int, ...]],
    event_id: int,
    channel: tuple[int, int | None],
    public: bool = False,
    tell_privately: Callable[[str], Awaitable[None]] | None = None,
) -> int | None:
    """`member` is (guild id, user id, role ids), `channel` (channel id, thread parent id);
    `event_id` the interaction or message that asked (one job per event); `public`:
    `refuse_with` shows the channel, and `tell_privately` reaches the member alone."""
    guild_id, user_id, _ = member
    try:
        await check_rules(bot, guild_id, channel, request.prompt, user_id)
        await precheck(bot, *member)
        params = await prepare_params(bot, request)
        return await reserve(bot, await build(params))
    except AlreadyQueued as known:
        _leave_to_twin(event_id, known.job_id)
        return None
    except Refused as exc:
        # The twin of this event on another session may have queued it meanwhile, and be the
        # very job that now holds the member's slot: then the member has their answer.
        twin = await _job_made_by(bot, event_id)
        if twin is not None:
            _leave_to_twin(event_id, twin)
            return None
        await refuse_with(exc.public if public else str(exc))
        if public and exc.dm and tell_privately is not None:
            await tell_privately(str(exc))
        return None


def _leave_to_twin(event_id: int, job_id: int) -> None:
    log.info(
        "event %s already made job %s through another gateway session; leaving it to that one",
        event_id,
        job_id,
    )


async def _job_made_by(bot: VeoBot, event_id: int) -> int | None:
    try:
        job = await bot.services.jobs.job_for_event(event_id)
    except StoreUnavailable:
        return None  # the refusal stands (it is what the member would be told anyway)
    return job.id if job is not None else None


def member_role_ids(member: discord.abc.User) -> tuple[int, ...]:
    """Every role id Discord sent with the member. `Member.roles` would silently drop roles
    missing from the guild cache, and a stale cache must never change someone's limits."""
    raw = getattr(member, "_roles", None)  # discord.py's SnowflakeList of the payload's ids
    if raw is not None:
        return tuple(int(role_id) for role_id in raw)
    return tuple(role.id for role in getattr(member, "roles", []))


# ---------------------------------------------------------------------------- interactions


async def start_job(
    bot: VeoBot,
    interaction: discord.Interaction[VeoBot],
    request: VeoRequest,
) -> int | None:
    """Validate, reserve and queue; returns the job id, or None when refused (user told)."""
    if interaction.guild is None or interaction.channel_id is None:
        await refuse(interaction, "Use /veo in a server channel.")
        return None
    guild_id, channel_id = interaction.guild.id, interaction.channel_id

    async def build(params: VeoParams) -> ReserveRequest:
        return ReserveRequest(
            guild_id=guild_id,
            channel_id=channel_id,
            user_id=interaction.user.id,
            role_ids=member_role_ids(interaction.user),
            params=params,
            interaction_token=interaction.token,
            interaction_created_at=interaction.created_at.timestamp(),
            placeholder_channel_id=channel_id,
            placeholder_message_id=await placeholder_id(interaction),
            upload_limit=interaction.filesize_limit,
            event_id=interaction.id,
        )

    async def refuse_with(text: str) -> None:
        await refuse(interaction, text)

    member = (guild_id, interaction.user.id, member_role_ids(interaction.user))
    channel = (channel_id, rules.parent_of(interaction.channel))
    return await _start(
        bot,
        request,
        build,
        refuse_with,
        member=member,
        event_id=interaction.id,
        channel=channel,
    )


async def defer_public(interaction: discord.Interaction[VeoBot]) -> bool:
    """Acknowledge at once with a public "thinking…" placeholder (Discord allows 3 s). False
    when another gateway session acknowledged this interaction first: the caller then does
    nothing more (that session runs the request).

    The callback's answer names the placeholder message, so it is kept for `placeholder_id`
    and no extra request is needed to learn it — it matters when many arrive at once."""
    try:
        callback = await interaction.response.defer(thinking=True)
    except discord.HTTPException as exc:
        if not acknowledged_elsewhere(exc):
            raise
        note_acknowledged_elsewhere(interaction)
        return False
    if callback is not None and callback.message_id is not None:
        interaction.extras[PLACEHOLDER_KEY] = callback.message_id
    return True


async def placeholder_id(interaction: discord.Interaction[VeoBot]) -> int | None:
    """The id of the public "thinking…" message, so it can be edited after a restart."""
    known = interaction.extras.get(PLACEHOLDER_KEY)
    if isinstance(known, int):
        return known
    try:
        message = await interaction.original_response()
    except discord.HTTPException as exc:
        log.warning("interaction %s: cannot read the placeholder (%s)", interaction.id, exc)
        return None
    return message.id


async def refuse(interaction: discord.Interaction[VeoBot], text: str) -> None:
    """Replace the public placeholder by a private answer."""
    try:
        await interaction.delete_original_response()
    except discord.HTTPException as exc:
        log.info("interaction %s: placeholder not deleted (%s)", interaction.id, exc)
    try:
        await interaction.followup.send(text, ephemeral=True)
    except discord.HTTPException as exc:
        log.warning("interaction %s: refusal not delivered (%s)", interaction.id, exc)


# -------------------------------------------------------------------------------- messages


def reply_nonce(message: discord.Message) -> str:
    """The nonce of the bot's one reply to a member's message (≤ 25 characters): a second
    gateway session with the same message gets Discord's copy of the first reply back
    (nonce + enforce_nonce) instead of posting it again."""
    return f"veo-m{message.id}"


async def reply_quietly(
    message: discord.Message, text: str, *, nonce: str | int | None = None
) -> discord.Message | None:
    """A reply that pings nobody, not even the author; None when it cannot be posted.
    With a `nonce`, Discord returns an earlier reply of the bot with the same one instead of
    posting again."""
    try:
        return await message.reply(
            text,
            mention_author=False,
            allowed_mentions=discord.AllowedMentions.none(),
            # Without one, a random nonce, as discord.py draws itself.
            nonce=nonce if nonce is not None else secrets.randbits(64),
        )
    except discord.HTTPException as exc:
        log.warning(
            "message %s: cannot reply in channel %s (%s %s)",
            message.id,
            message.channel.id,
            exc.status,
            exc.code,
        )
        return None


async def start_job_from_message(
    bot: VeoBot,
    message: discord.Message,
    request: VeoRequest,
) -> int | None:
    """`start_job` for a member's message (a mention): the placeholder is the bot's reply.

    There is no interaction token, so every later edit of the placeholder goes through the
    channel with the bot token, and the upload limit is the guild's."""
    guild = message.guild
    if guild is None:
        await reply_quietly(
            message,
            "Mention me in a server channel to animate an image.",
            nonce=reply_nonce(message),
        )
        return None
    placeholder = await reply_quietly(message, CHECKING_TEXT, nonce=reply_nonce(message))
    if placeholder is None:
        return None

    async def build(params: VeoParams) -> ReserveRequest:
        return ReserveRequest(
            guild_id=guild.id,
            channel_id=message.channel.id,
            user_id=message.author.id,
            role_ids=member_role_ids(message.author),
            params=params,
            placeholder_channel_id=message.channel.id,
            placeholder_message_id=placeholder.id,
            upload_limit=guild.filesize_limit,
            event_id=message.id,
        )

    async def refuse_with(text: str) -> None:
        try:
            await placeholder.edit(content=text, allowed_mentions=discord.AllowedMentions.none())
        except discord.HTTPException as exc:
            log.warning("message %s: refusal not shown (%s %s)", message.id, exc.status, exc.code)

    async def tell_privately(text: str) -> None:
        try:
            await message.author.send(text, allowed_mentions=discord.AllowedMentions.none())
        except discord.HTTPException as exc:
            log.info("message %s: no DM to user %s (%s)", message.id, message.author.id, exc)

    member = (guild.id, message.author.id, member_role_ids(message.author))
    channel = (message.channel.id, rules.parent_of(message.channel))
    return await _start(
        bot,
        request,
        build,
        refuse_with,
        member=member,
        event_id=message.id,
        channel=channel,
        public=True,
        tell_privately=tell_privately,
    )
