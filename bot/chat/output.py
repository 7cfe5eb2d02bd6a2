"""Shows jobs in Discord: throttled placeholder edits and a delivery that always lands somewhere.

Every edit goes through the stored interaction token while it is alive (so it works after a
restart too, with no live `Interaction` object), then through the channel with the bot token,
then — for the final message only — as a new channel message, then as a DM. A job counts as
delivered only when one of those succeeded.

Exactly once: before each final route is tried its name is recorded (`checkpoint_route`), and
`find_delivery` can tell afterwards — even from another process — whether a route already
landed: the placeholder carries our `veo-<job>.mp4` (or the video link), or a message of ours
in the channel or the DM does. Posts carry the nonce `veo-<job>` (DMs `veo-<job>-dm`), which
Discord deduplicates for a few minutes.

Buttons (Cancel while queued; Again / Edit prompt / Delete on the video) come from
`components`, set by the buttons cog, so this module needs no import from `cogs`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import discord

from bot.chat import reports
from bot.chat.presenter import (
    Delivered,
    failure_text,
    final_text,
    progress_text,
    source_image_embed,
    with_cancel_note,
)
from bot.jobs import (
    PLACEHOLDER_ROUTES,
    DeliveryRoute,
    DeliveryUnclear,
    Finished,
    OutputUnavailable,
    Receipt,
    checkpoint_route,
)
from bot.media.encode import UploadPlan, encoded_path, plan_upload
from bot.pricing import Quote
from bot.progress import Progress, Stage
from bot.store import Job

log = logging.getLogger(__name__)

TOKEN_LIFETIME = 15 * 60.0
TOKEN_SAFE_AGE = 14 * 60.0  # switch to the bot token a minute early: no request races the expiry
INVALID_WEBHOOK_TOKEN = 50027
UNKNOWN_MESSAGE = 10008
MISSING_ACCESS = 50001
MISSING_PERMISSIONS = 50013
FILE_TOO_LARGE = 40005
HISTORY_SEARCHED = 50  # messages looked through for an earlier post after a restart


class JobComponents(Protocol):
    """The buttons shown on a job's messages (implemented by `cogs.buttons`)."""

    def queued(self, job: Job) -> discord.ui.View: ...

    def delivered(self, job: Job) -> discord.ui.View: ...


@dataclass
class _Throttle:
    last_text: str | None = None
    last_sent: float = float("-inf")
    pending: str | None = None
    pending_queued: bool = False  # the pending text is for a job in the bot's queue
    timer: asyncio.Task[None] | None = None


class DiscordOutput:
    """`JobOutput` for Discord. One per bot."""

    def __init__(
        self,
        client: discord.Client,
        *,
        log_channel: Callable[[int], Awaitable[int | None]],
        announce: Callable[[Job], Awaitable[None]] | None = None,
        quote_of: Callable[[Job], Quote | None] = lambda job: None,
        edit_interval: float,
        mention_on_ready: bool,
        demo: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.log_channel = log_channel  # a guild's moderator log channel, if it set one
        self.announce = announce  # the gallery's, for a delivered job; never raises
        self.quote_of = quote_of  # what the job is held at against the owner's spend caps
        self.edit_interval = edit_interval
        self.mention_on_ready = mention_on_ready
        self.demo = demo
        self.clock = clock
        self._throttles: dict[int, _Throttle] = {}
        # One lock per job serialises its edits, so a late progress edit can never land on
        # top of the final message; `_closed` jobs get no more progress edits at all.
        self._locks: dict[int, asyncio.Lock] = {}
        self._closed: set[int] = set()
        self.components: JobComponents | None = None

    def _lock(self, job_id: int) -> asyncio.Lock:
        return self._locks.setdefault(job_id, asyncio.Lock())

    async def finished(self, job: Job) -> None:
        """Announce a delivered video in the guild's gallery and post the outcome to its
        moderator log channel, if it has them, and forget the job's throttle and lock (they
        would otherwise grow with every job)."""
        # Retired first: a progress edit still in flight lands before whatever the caller
        # shows next (the Cancel button's "Cancelled"), and nothing is left to re-create state.
        await self.retire(job.id)
        self._locks.pop(job.id, None)
        self._closed.discard(job.id)
        if self.announce is not None and job.state == "delivered":
            await self.announce(job)
        channel_id = await self.log_channel(job.guild_id)
        if channel_id is None:
            return
        channel = self.client.get_partial_messageable(channel_id, guild_id=job.guild_id)
        try:
            await channel.send(
                reports.log_line(job), allowed_mentions=discord.AllowedMentions.none()
            )
        except discord.HTTPException as exc:
            log.warning(
                "job %s: cannot post in the log channel %s (%s %s)",
                job.id,
                channel_id,
                exc.status,
                exc.code,
            )

    async def retire(self, job_id: int) -> None:
        """No more progress edits for this job (cancelled, finished); waits for one in flight."""
        self._closed.add(job_id)
        self._drop_pending(job_id)
        async with self._lock(job_id):
            pass

    # ------------------------------------------------------------------------------ progress

    async def progress(self, job: Job, progress: Progress) -> None:
        if job.id in self._closed:
            return
        text = progress_text(job.params_model, progress, demo=self.demo, quote=self.quote_of(job))
        if progress.stage in (Stage.SUBMITTING, Stage.WAITING, Stage.GENERATING):
            text = with_cancel_note(text)
        throttle = self._throttles.setdefault(job.id, _Throttle())
        if text == throttle.last_text or text == throttle.pending:
            return
        # A held request can be withdrawn too: it is not at Segmind either.
        queued = progress.stage in (Stage.QUEUED, Stage.AWAITING_APPROVAL)
        wait = throttle.last_sent + self.edit_interval - time.monotonic()
        if wait <= 0 and throttle.timer is None:
            await self._send_progress(job, throttle, text, queued)
            return
        # Too soon: keep only the newest text and send it when the interval has passed.
        throttle.pending = text
        throttle.pending_queued = queued
        if throttle.timer is None:
            throttle.timer = asyncio.create_task(
                self._send_later(job, throttle, max(wait, 0.0)), name=f"edit-{job.id}"
            )

    async def _send_later(self, job: Job, throttle: _Throttle, wait: float) -> None:
        await asyncio.sleep(wait)
        throttle.timer = None
        text, throttle.pending = throttle.pending, None
        if text is not None and text != throttle.last_text:
            await self._send_progress(job, throttle, text, throttle.pending_queued)

    async def _send_progress(self, job: Job, throttle: _Throttle, text: str, queued: bool) -> None:
        async with self._lock(job.id):
            if job.id in self._closed:
                return
            throttle.last_sent = time.monotonic()
            throttle.last_text = text
            # Cancel is offered only while the job waits in the bot's own queue.
            view = self.components.queued(job) if queued and self.components else None
            try:
                await self._edit(
                    job, content=text, allowed_mentions=discord.AllowedMentions.none(), view=view
                )
            except discord.HTTPException as exc:
                # Progress is best effort; the final message has its own fallbacks.
                log.info("job %s: progress edit failed (%s %s)", job.id, exc.status, exc.code)

    def _drop_pending(self, job_id: int) -> None:
        """Forget the job's throttle, cancelling an edit that waits for its turn."""
        throttle = self._throttles.pop(job_id, None)
        if throttle is not None and throttle.timer is not None:
            throttle.timer.cancel()

    # ------------------------------------------------------------------------------ endings

    async def failed(self, job: Job, message: str) -> None:
        text = failure_text(job.params_model, message, job_id=job.id)
        await self._final(
            job,
            content=text,
            files=[],
            allowed_mentions=discord.AllowedMentions.none(),
            view=None,  # no Cancel left behind on a failed job
        )

    async def notice(self, job: Job, message: str) -> None:
        """A new message for the requester (pinged): in the job's channel, else by DM. The
        placeholder is not touched: it may carry the video."""
        text = f"<@{job.user_id}> {failure_text(job.params_model, message, job_id=job.id)}"
        mentions = discord.AllowedMentions(users=[discord.Object(job.user_id)])
        channel = self.client.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        try:
            await channel.send(text, allowed_mentions=mentions, nonce=f"veo-{job.id}-notice")
            return
        except (discord.HTTPException, aiohttp.ClientError, TimeoutError) as exc:
            log.info("job %s: notice not posted in the channel (%s); sending a DM", job.id, exc)
        user = await self.client.fetch_user(job.user_id)
        await user.send(text, allowed_mentions=mentions, nonce=f"veo-{job.id}-notice-dm")

    async def deliver(self, job: Job, finished: Finished) -> Receipt:
        # A stale pending edit must not land now; a re-encode may still show its own progress
        # (`_final` then retires the job for good).
        self._drop_pending(job.id)
        # The live interaction's limit (boosts included); with no usable token the upload goes
        # with the bot token, so the guild's own limit applies — as cached here, else as
        # stored with the job (this node may not hold the guild: another runs its shard).
        token_alive = self._token_alive(job)
        guild = self.client.get_guild(job.guild_id)
        limit = (
            job.upload_limit
            if token_alive and job.upload_limit
            else guild.filesize_limit
            if guild is not None
            else job.upload_limit or discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES
        )
        # Named job-* so a crash mid-encode leaves nothing the next start does not clean; kept
        # (the job removes it when it ends) so a retry of this delivery sends it again as is.
        fitted = encoded_path(finished.video)
        plan = await plan_upload(
            finished.video,
            finished.size,
            limit,
            fitted,
            on_encode=lambda: self.progress(job, Progress(Stage.ENCODING)),
            label=f"job {job.id}",
        )
        mention_id = job.user_id if self.mention_on_ready else None
        mentions = discord.AllowedMentions(
            everyone=False,
            roles=False,
            replied_user=False,
            users=[discord.Object(job.user_id)] if mention_id else False,
        )
        # Image-to-video: show the source image beside the video (only when there is one).
        extra = {"embeds": [source_image_embed(job.image_url)]} if job.image_url else {}

        def message(plan: UploadPlan) -> tuple[str, list[discord.File]]:
            text = final_text(
                Delivered(
                    params=job.params_model,
                    took=finished.took,
                    cost=finished.cost,
                    attached=plan.path is not None,
                    link=None if plan.path else finished.output_url,
                    link_reason=plan.link_reason(finished.size),
                    note=plan.note,
                    mention_user_id=mention_id,
                    demo=self.demo,
                )
            )
            files = [discord.File(plan.path, filename=f"veo-{job.id}.mp4")] if plan.path else []
            return text, files

        text, files = message(plan)
        try:
            return await self._final(
                job, content=text, files=files, allowed_mentions=mentions, **extra
            )
        except discord.HTTPException as exc:
            if not files or not (exc.status == 413 or exc.code == FILE_TOO_LARGE):
                raise
            # The route that took the upload had a smaller limit (a DM, a lost boost).
            log.warning("job %s: Discord refused %s as too large", job.id, plan.size)
            plan = UploadPlan(
                path=None, size=finished.size, limit=limit, why_not="Discord refused the file"
            )
            text, files = message(plan)
            return await self._final(
                job, content=text, files=files, allowed_mentions=mentions, **extra
            )

    async def _final(
        self,
        job: Job,
        *,
        content: str,
        files: list[discord.File],
        allowed_mentions: discord.AllowedMentions,
        **extra: Any,
    ) -> Receipt:
        """The last word on a job. A delivery (no `view` given) gets the video's buttons and
        records each route before trying it; transient trouble raises `OutputUnavailable`."""
        await self.retire(job.id)
        delivery = "view" not in extra
        if delivery and self.components is not None:
            extra["view"] = self.components.delivered(job)
        async with self._lock(job.id):
            try:
                return await self._final_routes(
                    job,
                    content=content,
                    files=files,
                    allowed_mentions=allowed_mentions,
                    delivery=delivery,
                    **extra,
                )
            except (discord.DiscordServerError, aiohttp.ClientError, TimeoutError) as exc:
                raise OutputUnavailable(str(exc)) from exc

    async def _final_routes(
        self,
        job: Job,
        *,
        content: str,
        files: list[discord.File],
        allowed_mentions: discord.AllowedMentions,
        delivery: bool,
        **extra: Any,
    ) -> Receipt:
        async def checkpoint(route: DeliveryRoute) -> None:
            if delivery:
                await checkpoint_route(route)

        async def post(to: discord.abc.Messageable, route: DeliveryRoute, nonce: str) -> Receipt:
            await checkpoint(route)
            message = await to.send(
                content, files=files, allowed_mentions=allowed_mentions, nonce=nonce, **extra
            )
            return Receipt(message_id=message.id, method=route)

        if job.placeholder_message_id is not None:
            try:
                route = await self._edit(
                    job,
                    checkpoint=checkpoint,
                    content=content,
                    attachments=files,
                    allowed_mentions=allowed_mentions,
                    **extra,
                )
                assert route is not None  # there is a placeholder
                return Receipt(message_id=job.placeholder_message_id, method=route)
            except discord.HTTPException as exc:
                if not _is_gone(exc):
                    raise
                log.info("job %s: placeholder unusable (%s), posting anew", job.id, exc.code)
            files = _fresh(files)
        channel = self.client.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        try:
            return await post(channel, "channel-post", f"veo-{job.id}")
        except discord.HTTPException as exc:
            if not _is_gone(exc):
                raise
            log.info("job %s: cannot post in channel (%s), sending a DM", job.id, exc.code)
        files = _fresh(files)
        user = await self.client.fetch_user(job.user_id)
        return await post(user, "dm", f"veo-{job.id}-dm")

    # ------------------------------------------------------------------- finding a delivery

    async def find_delivery(self, job: Job) -> Receipt | None:
        """Where an earlier attempt already delivered this job's video, if anywhere.

        Looks only where the write-ahead route says an attempt may have gone: the placeholder
        (always), the channel's recent messages after a channel post was tried, the DM after a
        DM was tried. A channel or DM that is gone or cannot be seen counts as not delivered
        there; our own placeholder that cannot be read back (403/404) may still carry the video,
        so when nothing is found elsewhere that raises `DeliveryUnclear`. Raises on anything
        else (a server error): the caller cannot tell."""
        tried = job.delivery_method
        unreadable = False
        if job.placeholder_message_id is not None:
            message = await self._fetch_placeholder(job)
            unreadable = message is None
            if message is not None and self._carries_video(job, message):
                # A database from an earlier version may say just "placeholder" (or nothing):
                # name the route the placeholder can be edited by now.
                route = _placeholder_route(tried)
                if route is None:
                    route = "interaction" if self._token_alive(job) else "channel-edit"
                return Receipt(message_id=message.id, method=route)
        if tried in ("channel-post", "dm"):
            channel = self.client.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
            found = await self._search(channel, job)
            if found is not None:
                return Receipt(message_id=found.id, method="channel-post")
        if tried == "dm":
            user = await self.client.fetch_user(job.user_id)
            found = await self._search(user.dm_channel or await user.create_dm(), job)
            if found is not None:
                return Receipt(message_id=found.id, method="dm")
        if unreadable:
            raise DeliveryUnclear(f"placeholder {job.placeholder_message_id} cannot be read back")
        return None

    def _token_alive(self, job: Job) -> bool:
        """The job's interaction token can still be used (with a minute to spare)."""
        age = self.clock() - (job.interaction_created_at or 0.0)
        return bool(job.interaction_token) and age < TOKEN_SAFE_AGE

    async def _fetch_placeholder(self, job: Job) -> discord.Message | None:
        assert job.placeholder_message_id is not None
        try:
            if job.interaction_token and self._token_alive(job):
                webhook = discord.Webhook.partial(
                    self.client.application_id or 0, job.interaction_token, client=self.client
                )
                try:
                    return await webhook.fetch_message(job.placeholder_message_id)
                except discord.HTTPException as exc:
                    if not (exc.status == 401 or exc.code == INVALID_WEBHOOK_TOKEN):
                        raise
            channel = self.client.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
            return await channel.fetch_message(job.placeholder_message_id)
        except discord.HTTPException as exc:
            if _is_gone(exc):
                return None
            raise

    async def _search(self, channel: discord.abc.Messageable, job: Job) -> discord.Message | None:
        try:
            async for message in channel.history(limit=HISTORY_SEARCHED):
                if self._carries_video(job, message):
                    return message
        except discord.HTTPException as exc:
            if _is_gone(exc):
                return None
            raise
        return None

    def _carries_video(self, job: Job, message: discord.Message) -> bool:
        """Our message with this job's video attached, or its link."""
        if self.client.user is not None and message.author.id != self.client.user.id:
            return False
        if any(a.filename == f"veo-{job.id}.mp4" for a in message.attachments):
            return True
        return bool(job.output_url) and f"<{job.output_url}>" in message.content

    # ------------------------------------------------------------------------------- editing

    async def _edit(
        self,
        job: Job,
        *,
        checkpoint: Callable[[DeliveryRoute], Awaitable[None]] | None = None,
        **fields: Any,
    ) -> DeliveryRoute | None:
        """Edit the placeholder; returns which route worked (None: the job has no placeholder).
        `checkpoint` hears each route before it is tried. Raises what the last route raised."""
        if job.placeholder_message_id is None:
            return None
        if job.interaction_token and self._token_alive(job):
            if checkpoint is not None:
                await checkpoint("interaction")
            webhook = discord.Webhook.partial(
                self.client.application_id or 0, job.interaction_token, client=self.client
            )
            try:
                await webhook.edit_message(job.placeholder_message_id, **fields)
                return "interaction"
            except discord.HTTPException as exc:
                if not (exc.status == 401 or exc.code == INVALID_WEBHOOK_TOKEN):
                    raise
                log.info("job %s: interaction token expired, editing with the bot token", job.id)
            if "attachments" in fields:
                fields["attachments"] = _fresh(fields["attachments"])
        message = self.client.get_partial_messageable(
            job.channel_id, guild_id=job.guild_id
        ).get_partial_message(job.placeholder_message_id)
        if checkpoint is not None:
            await checkpoint("channel-edit")
        await message.edit(**fields)
        return "channel-edit"


def _fresh(files: list[discord.File]) -> list[discord.File]:
    """Files for the next route: discord.py closes a `File` once a request carried it, so a
    fallback cannot just rewind it; files opened from a path are opened again."""
    fresh = []
    for file in files:
        path = getattr(file.fp, "name", None)
        if isinstance(path, str):
            file.close()
            fresh.append(
                discord.File(
                    path,
                    filename=file.filename,
                    spoiler=file.spoiler,
                    description=file.description,
                )
            )
        else:
            file.reset()
            fresh.append(file)
    return fresh


def _placeholder_route(stored: str | None) -> DeliveryRoute | None:
    """The placeholder route a job's stored `delivery_method` names, if it names one."""
    for route in PLACEHOLDER_ROUTES:
        if stored == route:
            return route
    return None


def _is_gone(exc: discord.HTTPException) -> bool:
    """The message or channel cannot be used any more: try the next route."""
    return exc.code in (UNKNOWN_MESSAGE, MISSING_ACCESS, MISSING_PERMISSIONS) or exc.status in (
        403,
        404,
    )
