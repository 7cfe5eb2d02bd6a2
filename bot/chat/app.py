"""The Bot subclass: owns the process-wide services and loads the cogs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from bot.approvals import ApprovalLane
from bot.balance import BalanceWatch, RecentSpend
from bot.billing import Billing
from bot.chat import spend_report
from bot.chat.alerts import DiscordAlerts
from bot.chat.approvals import DiscordCards
from bot.chat.gallery import Gallery
from bot.chat.notices import LogChannels
from bot.chat.ops import start_ops, stop_ops
from bot.chat.output import DiscordOutput
from bot.chat.replies import (
    accepting_work,
    acknowledged_elsewhere,
    note_acknowledged_elsewhere,
    send_ephemeral,
    unexpected,
)
from bot.chat.rules import allowed_here
from bot.config import Settings
from bot.jobs import JobService
from bot.lease import BudgetRecorder, RunnerLease, lease_name
from bot.ops.health import GatewayWatch
from bot.ops.http import OpsServer
from bot.ops.metrics import Metrics
from bot.params import VeoParams
from bot.pricing import PriceBook
from bot.quota import LimitDefaults
from bot.reconcile import Reconciler, RecordBilled
from bot.segmind import client as sm
from bot.shards import IDENTIFY_CLAIM_SPACING, IDENTIFY_SPACING, ShardPlan, identify_bucket
from bot.store import BilledSource, Lease, Store, StoreUnavailable, open_store

log = logging.getLogger(__name__)

EXTENSIONS = ("cogs.veo", "cogs.admin", "cogs.image", "cogs.buttons", "cogs.approvals")
# Moderators' commands work in every channel, whatever channels the bot is kept to.
ANYWHERE_COMMANDS = frozenset({"veo-admin"})

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
        if not await accepting_work(interaction):
            return False
        # The top-level name: `interaction.command` is not resolved yet at this point.
        data: dict[str, Any] = dict(interaction.data or {})
        name = data.get("name")
        return name in ANYWHERE_COMMANDS or await allowed_here(interaction)

    async def on_error(
        self, interaction: discord.Interaction[VeoBot], error: app_commands.AppCommandError
    ) -> None:
        if acknowledged_elsewhere(error):
            # Another gateway session of this shard answered first (a deploy's overlap).
            note_acknowledged_elsewhere(interaction)
            return
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


def shard_options(plan: ShardPlan | None) -> dict[str, Any]:
    """The client options for a shard plan: none when unsharded (one plain connection)."""
    if plan is None:
        return {}
    return {"shard_count": plan.count, "shard_ids": list(plan.ids)}


@dataclass(frozen=True)
class Services:
    """What the bot runs on, built together by `open_services` (from `setup_hook`)."""

    store: Store
    segmind: sm.SegmindClient
    jobs: JobService
    output: DiscordOutput
    session: aiohttp.ClientSession  # shared by everything that fetches from the web (images)
    approvals: ApprovalLane  # holds the requests a guild wants a moderator to approve
    cards: DiscordCards  # the approval cards in the moderators' channel
    reconciler: Reconciler  # pages Segmind's history in the background
    balance: BalanceWatch  # the Segmind balance, its forecast, and the pause when it ran out
    gallery: Gallery  # announces delivered videos in a guild's gallery channel
    billing: Billing  # the one price book, and every bill recorded through it
    lease: RunnerLease  # whether this node runs jobs or is a standby


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
            **shard_options(settings.shard_plan),
        )
        self.metrics = metrics
        self.gateway_watch = GatewayWatch()
        self.ops: OpsServer | None = None
        self.settings = settings
        self.clock = clock
        self._services: Services | None = None
        # Discord's session-start buckets (`GET /gateway/bot`); read in setup_hook when sharded.
        self.max_concurrency = 1
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
        await self.open_services()
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        plan = self.settings.shard_plan
        if plan is not None:
            self.max_concurrency = await self._max_concurrency()
            log.info("running %s (max_concurrency %d)", plan.describe(), self.max_concurrency)
        if plan is None or plan.syncs_commands:
            await self._sync_commands()
        else:
            log.info("not syncing commands: the node running shard 0 does")
        self._log_invite()
        # Jobs run once this node holds the runner lease: at once when no other node does.
        self.services.lease.start()
        await self.services.approvals.start()
        self.services.balance.start()
        self.ops = await start_ops(
            self,
            settings=self.settings,
            metrics=self.metrics,
            watch=self.gateway_watch,
            store=self.services.store,
            segmind=self.services.segmind,
            runner_role=self._runner_role,
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
        gallery = Gallery(self, store)
        output = DiscordOutput(
            self,
            quote_of=billing.quote_of,
            log_channel=store.get_log_channel,
            announce=gallery.announce,
            edit_interval=settings.veo_edit_interval,
            mention_on_ready=settings.veo_mention_on_ready,
            demo=self.demo,
            clock=self.clock,
        )
        alerts = DiscordAlerts(self, log_channel=store.get_log_channel)
        balance = self._balance_watch(store, segmind, billing)
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
            recovery_window=settings.veo_recovery_window_seconds,
            recovery_interval=settings.veo_recovery_interval_seconds,
            alerts=alerts,
            credits_signal=balance,
            billing=billing,
        )
        cards = DiscordCards(self, output)
        approvals = ApprovalLane(
            store,
            jobs,
            output,
            cards,
            quote=billing.quote,  # the same book that quotes the reservation
            default_expiry=settings.veo_approval_expiry_hours * 3600,
            sweep_interval=settings.veo_approval_sweep_seconds,
            clock=self.clock,
        )
        reconciler = Reconciler(
            store,
            segmind,
            record_billed=self._history_bills(store, billing),
            quote=lambda job: store.job_quote(job.id),
            alerts=alerts,
            interval=settings.veo_reconcile_interval_seconds,
            settle_lag=settings.veo_recovery_window_seconds + 120.0,
            clock=self.clock,
        )
        jobs.queue_poll = settings.veo_queue_poll_seconds
        name = lease_name(key)
        budget = BudgetRecorder(segmind.limiter, name)

        # Paging Segmind's history is the runner's work too: one reader per Segmind key, so
        # nodes never spend the request budget twice on the same pages, nor race to post the
        # same discrepancy.
        async def take_over(lease: Lease) -> None:
            runs = store.fenced(lease)
            await budget.resume(runs)
            await jobs.take_over(runs)
            reconciler.start()
            self.metrics.runner.set(1)

        async def stand_down() -> None:
            self.metrics.runner.set(0)
            await reconciler.stop()
            budget.detach()
            await jobs.stand_down()

        lease = RunnerLease(
            store,
            name=name,
            # Unique per process, never reused: a restarted or duplicated process must wait
            # out (or be fenced from) the term of the one before it.
            owner=f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}",
            seconds=settings.veo_runner_lease_seconds,
            on_acquired=take_over,
            on_lost=stand_down,
        )
        jobs.on_fenced = lease.lost
        self._services = Services(
            store,
            segmind,
            jobs,
            output,
            session,
            approvals,
            cards,
            reconciler,
            balance,
            gallery,
            billing,
            lease,
        )
        return self._services

    def _runner_role(self) -> str:
        lease = self.services.lease.lease
        if lease is None:
            return "standby: takes interactions in; another node runs the jobs"
        return f"runner (lease epoch {lease.epoch})"

    def _balance_watch(
        self, store: Store, segmind: sm.SegmindClient, billing: Billing
    ) -> BalanceWatch:
        """The balance watch over this bot's Segmind account, spend ledger and log channels."""
        settings = self.settings
        # The options a member gets without choosing any: what "one video" costs by default.
        default_video = VeoParams(prompt="the default options")

        async def read_balance() -> float:
            credits = await segmind.credits(background=True)
            # Whether free credits pay for Veo is unverified; they are counted, since a pause
            # that is wrong refuses members who could be served, while Segmind's own 406 still
            # refuses (before billing) a submit the account cannot pay for.
            return credits.credits + credits.free_credits

        async def spent_since(since: float) -> RecentSpend:
            return await spend_report.recent_spend(store, since)

        return BalanceWatch(
            read_balance=read_balance,
            spent_since=spent_since,
            # Until a week has bills: the price book's quote for the default options (the top
            # of Segmind's range until such a video was billed), so the first forecast errs
            # toward fewer videos left.
            fallback_price=lambda: billing.quote(default_video).amount,
            announce=LogChannels(self, store.get_log_channel).post_all,
            # Every node keeps the pause right; only the runner tells the log channels.
            speaks=lambda: self._services is not None and self._services.lease.holding,
            interval=settings.veo_balance_check_seconds,
            warn_videos=settings.veo_balance_warn_videos,
            clock=self.clock,
        )

    @staticmethod
    def _history_bills(store: Store, billing: Billing) -> RecordBilled:
        """The reconciler's writer of Segmind's bills: through the price book, so quotes learn
        from history rows as they do from `metrics.cost`."""

        async def record(
            job_id: int, amount: float, *, source: BilledSource, now: float | None = None
        ) -> bool:
            job = await store.get_job(job_id)
            return job is not None and await billing.record_billed(job, amount, source=source)

        return record

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

    async def _max_concurrency(self) -> int:
        """How many sessions Discord lets the bot start at once; 1 (the strictest) if
        `GET /gateway/bot` cannot be read — slower to start, never refused."""
        try:
            _, _, limits = await self.http.get_bot_gateway()
            return max(1, int(limits["max_concurrency"]))
        except (
            discord.DiscordException,
            aiohttp.ClientError,
            OSError,
            LookupError,
            TypeError,
            ValueError,
        ) as exc:
            log.warning("cannot read max_concurrency from /gateway/bot (%s); using 1", exc)
            return 1

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """Wait for this shard's IDENTIFY slot, claimed in the shared database: one session
        start per `max_concurrency` bucket per 5 s across every node of the bot, as Discord
        requires (too soon is answered with Invalid Session). Unsharded, discord.py's own
        spacing (5 s before any re-IDENTIFY) is enough for the one connection."""
        if self.settings.shard_plan is None or self._services is None:
            await super().before_identify_hook(shard_id, initial=initial)
            return
        bucket = identify_bucket(shard_id or 0, self.max_concurrency)
        store = self._services.store
        while True:
            try:
                wait = await store.claim_identify_slot(bucket, IDENTIFY_CLAIM_SPACING)
            except StoreUnavailable as exc:
                # Not a money path: wait out a full slot locally and go (at worst Discord
                # answers op 9 and discord.py identifies again).
                log.warning("IDENTIFY slot not claimed (%s); waiting %.0f s", exc, IDENTIFY_SPACING)
                await asyncio.sleep(IDENTIFY_SPACING)
                return
            if wait <= 0:
                log.info("shard %s: IDENTIFY (bucket %d)", shard_id, bucket)
                return
            log.info("shard %s: IDENTIFY bucket %d busy for %.1f s", shard_id, bucket, wait)
            await asyncio.sleep(wait)

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
            await self._services.approvals.stop()
            await self._services.reconciler.stop()
            await self._services.balance.stop()
            await self._services.jobs.stop()
            # After the jobs stopped writing: hand the lease to a standby at once.
            await self._services.lease.close()
        await stop_ops(self.ops, self.metrics)
        self.ops = None
        await super().close()
        await self._resources.aclose()


class ShardedVeoBot(VeoBot, commands.AutoShardedBot):
    """The bot over `DISCORD_SHARD_IDS` of `DISCORD_SHARD_COUNT` shards: discord.py's
    auto-sharded client (one gateway connection per shard, one cache) with everything else
    VeoBot's. A subclass of VeoBot, so every `Interaction[VeoBot]` holds either."""

    async def close(self) -> None:
        self.stop_accepting()
        await self._leave_gateway()
        await super().close()

    async def _leave_gateway(self) -> None:
        """Close this node's gateway sessions before the drain. In a deploy the new node runs
        the same shards: once these sessions are gone Discord sends their events only there,
        instead of this stopping node winning a member's /veo just to answer "restarting".
        The drain needs only REST, which stays open until the end."""
        for shard_id, shard in self.shards.items():
            if not shard.is_closed():
                await shard.disconnect()
                log.info("shard %s: left the gateway for the shutdown", shard_id)


def make_bot(settings: Settings, *, clock: Callable[[], float] = time.time) -> VeoBot:
    """The bot the settings ask for: sharded when a shard count is set, else one connection."""
    if settings.shard_plan is None:
        return VeoBot(settings, clock=clock)
    return ShardedVeoBot(settings, clock=clock)
