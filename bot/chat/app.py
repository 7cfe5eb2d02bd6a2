"""The Bot subclass: owns the process-wide services and loads the cogs."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from bot.billing import Billing
from bot.chat.ops import start_ops, stop_ops
from bot.chat.output import DiscordOutput
from bot.chat.replies import accepting_work, send_ephemeral, unexpected
from bot.config import Settings
from bot.jobs import JobService
from bot.ops.health import GatewayWatch
from bot.ops.http import OpsServer
from bot.ops.metrics import Metrics
from bot.pricing import PriceBook
from bot.quota import LimitDefaults
from bot.segmind import client as sm
from bot.store import Store, open_store

log = logging.getLogger(__name__)

EXTENSIONS = ("cogs.veo", "cogs.admin", "cogs.image", "cogs.buttons")

# Exactly what the bot uses: reading the channel it answers in, posting and editing its own
# messages with a video attached, and reading the message a member replied to.
INVITE_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    embed_links=True,
    attach_files=True,
    read_message_history=True,
)


class VeoTree(app_commands.CommandTree["VeoBot"]):
    """One handler for whatever a command did not handle itself."""

    async def interaction_check(self, interaction: discord.Interaction[VeoBot]) -> bool:
        return await accepting_work(interaction)

    async def on_error(
        self, interaction: discord.Interaction[VeoBot], error: app_commands.AppCommandError
    ) -> None:
        if isinstance(error, app_commands.CheckFailure):
            text = str(error) or "You cannot use this command here."
        elif isinstance(error, app_commands.TransformerError):
            # Usually a channel, role or member the bot cannot see.
            text = (
                f"I can't use `{error.value}` for that option — if it is a channel, give me "
                "View Channel and Send Messages there."
            )
        else:
            command = interaction.command.qualified_name if interaction.command else "?"
            text = unexpected(f"/{command} (interaction {interaction.id})", error)
        await send_ephemeral(interaction, text)


@dataclass(frozen=True)
class Services:
    """What the bot runs on, built together by `open_services` (from `setup_hook`)."""

    store: Store
    segmind: sm.SegmindClient
    jobs: JobService
    output: DiscordOutput
    session: aiohttp.ClientSession  # shared by everything that fetches from the web (images)
    billing: Billing  # the one price book, and every bill recorded through it


class VeoBot(commands.Bot):
    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        # Messages that mention the bot (reply-to-an-image); their content arrives even without
        # the privileged intent, which is asked for only when the owner enabled it.
        intents.guild_messages = True
        intents.message_content = settings.discord_message_content_intent
        metrics = Metrics()  # per bot, on its own registry
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            help_command=None,
            tree_cls=VeoTree,
            # Nobody is pinged unless a message explicitly allows its requester.
            allowed_mentions=discord.AllowedMentions.none(),
            member_cache_flags=discord.MemberCacheFlags.none(),
            # The bot never reads cached messages; without the cache every MESSAGE_UPDATE (one
            # per placeholder edit) is O(1) instead of a scan of the last 1,000 messages.
            max_messages=None,
            chunk_guilds_at_startup=False,
            http_trace=metrics.discord_trace(),  # counts edits and 429s
        )
        self.metrics = metrics
        self.gateway_watch = GatewayWatch()
        self.ops: OpsServer | None = None
        self.settings = settings
        self.clock = clock
        self._services: Services | None = None
        # Whatever setup_hook opened, closed by close() in reverse order, even after a failed
        # start-up.
        self._resources = contextlib.AsyncExitStack()

    @property
    def demo(self) -> bool:
        return self.settings.demo_mode

    # The services exist from setup_hook on, before any command or event can arrive; reading
    # one earlier is a bug, not a state to check for.
    @property
    def services(self) -> Services:
        if self._services is None:
            raise RuntimeError("the bot's services are used before setup_hook built them")
        return self._services

    async def setup_hook(self) -> None:
        jobs = (await self.open_services()).jobs
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        await self._sync_commands()
        self._log_invite()
        await jobs.start()
        self.ops = await start_ops(
            self,
            settings=self.settings,
            metrics=self.metrics,
            watch=self.gateway_watch,
            store=self.services.store,
            segmind=self.services.segmind,
        )

    async def open_services(self) -> Services:
        """Open the store, the Segmind client (or the demo fake) and build the lifecycle and
        the output — no Discord I/O yet, so the cogs can be loaded on top of them in tests."""
        settings = self.settings
        resources = self._resources
        session = aiohttp.ClientSession()
        resources.push_async_callback(session.close)
        store = await open_store(settings.database_url)
        resources.push_async_callback(store.close)
        base_url, key, history_url = await self._segmind_endpoint()
        # The Segmind client's own session, traced for the metrics and the readiness check.
        segmind_session = aiohttp.ClientSession(
            trace_configs=[self.metrics.segmind_trace(base_url)]
        )
        resources.push_async_callback(segmind_session.close)
        segmind = sm.SegmindClient.from_settings(
            settings, key, base_url, history_url=history_url, session=segmind_session
        )
        resources.push_async_callback(segmind.close)
        # Quotes without evidence start at the owner's setting (the top of Segmind's range).
        billing = Billing(store, PriceBook(published_max=settings.veo_price_per_job))
        output = DiscordOutput(
            self,
            quote_of=billing.quote_of,
            log_channel=store.get_log_channel,
            edit_interval=settings.veo_edit_interval,
            mention_on_ready=settings.veo_mention_on_ready,
            demo=self.demo,
            clock=self.clock,
        )
        jobs = JobService(
            store,
            segmind,
            output,
            limit_defaults=LimitDefaults.from_settings(settings),
            max_concurrent=settings.veo_max_concurrent_jobs,
            work_dir=settings.veo_work_dir,
            max_video_bytes=settings.veo_max_video_bytes,
            deadline=settings.veo_job_deadline,
            clock=self.clock,
            events=self.metrics,
            billing=billing,
        )
        self._services = Services(store, segmind, jobs, output, session, billing)
        return self._services

    async def _segmind_endpoint(self) -> tuple[str, str, str]:
        """Segmind's base URL, the key and the request-history URL: the settings', or in demo
        mode a built-in fake's (so the demo key is never sent to the real service)."""
        settings = self.settings
        if not self.demo:
            assert settings.segmind_api_key is not None
            key = settings.segmind_api_key.get_secret_value()
            return settings.segmind_base_url, key, settings.segmind_history_url
        from bot.segmind.fake import DEMO_KEY, FakeSegmind

        # Slow enough that an owner trying the bot sees the placeholder move.
        demo_seconds = settings.veo_demo_seconds
        fake = FakeSegmind(
            api_key=DEMO_KEY, queue_seconds=demo_seconds * 0.15, processing_seconds=demo_seconds
        )
        await fake.start(host="127.0.0.1", port=0)
        self._resources.push_async_callback(fake.stop)
        banner = "=" * 72
        log.warning(
            "\n%s\nDEMO MODE: no SEGMIND_API_KEY is set. A built-in fake Segmind serves test\n"
            "clips; nothing is billed and every video is labelled as a test clip.\n%s",
            banner,
            banner,
        )
        return fake.base_url, DEMO_KEY, fake.history_url

    async def _sync_commands(self) -> None:
        guild_id = self.settings.discord_dev_guild_id
        if guild_id:
            guild = discord.Object(id=guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d commands to guild %s", len(synced), guild_id)
        else:
            synced = await self.tree.sync()
            log.info("synced %d global commands (may take a while to appear)", len(synced))

    def _log_invite(self) -> None:
        if self.application_id is None:
            return
        url = discord.utils.oauth_url(
            self.application_id,
            permissions=INVITE_PERMISSIONS,
            scopes=("bot", "applications.commands"),
        )
        log.info("invite the bot with: %s", url)

    async def on_ready(self) -> None:
        log.info(
            "logged in as %s (%s) in %d guilds",
            self.user,
            self.user and self.user.id,
            len(self.guilds),
        )

    async def on_message(self, message: discord.Message) -> None:
        """No prefix commands: mentions are handled by the image cog's listener. Without this,
        every `@Veo …` would be parsed as a command and logged as CommandNotFound."""

    def stop_accepting(self) -> None:
        """Refuse new work at once: called from the signal handler, before any await, so a
        request arriving while shutdown gets under way is told so instead of queued."""
        if self._services is not None:
            self._services.jobs.stop_accepting()

    async def close(self) -> None:
        self.stop_accepting()
        if self._services is not None:
            await self._services.jobs.stop()
        await stop_ops(self.ops, self.metrics)
        self.ops = None
        await super().close()
        await self._resources.aclose()
