"""The Discord emulator: one aiohttp server with REST under /api/v10, the gateway at / and a CDN.

Start it with ``async with DiscordEmulator() as emu:`` and point the real discord.py client at
``emu.api_base`` / ``emu.gateway_url``. Every REST request lands in ``emu.timeline`` and is checked
against Discord's OpenAPI spec (``emu.violations``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import discord
import discord.gateway
import discord.http
import yarl
from aiohttp import web

from .clock import EmulatorClock, SnowflakeFactory
from .gateway import _INTENT_FLAGS, Gateway, shard_of
from .interactions import (
    APPLICATION_COMMAND,
    MESSAGE_COMPONENT,
    MODAL_SUBMIT,
    CdnFile,
    InteractionHandle,
    OptionBuilder,
)
from .messages import (
    CLIENT_SETTABLE_FLAGS,
    EPHEMERAL,
    LOADING,
    REFERENCE_FORWARD,
    StoredAttachment,
    StoredMessage,
    guess_content_type,
)
from .rest import RestApi
from .spec import OpenApiSpec, load_spec
from .timeline import (
    DiscordError,
    FilePart,
    GatewayFrame,
    Notifier,
    RequestRecord,
    Violation,
)
from .world import (
    DEFAULT_FILE_LIMIT,
    Channel,
    Guild,
    Intents,
    MiB,
    Overwrite,
    Permissions,
    User,
    World,
)


def point_discord_py_at(api_base: str, gateway_url: str) -> None:
    """Make discord.py talk to another server: the REST base and the gateway URL are class
    attributes (``Route.BASE`` is read per request, ``DEFAULT_GATEWAY`` at connect)."""
    discord.http.Route.BASE = api_base.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


@dataclass
class _InjectedFault:
    route: str
    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    remaining: int
    when: Callable[[RequestRecord], bool] | None = None


@dataclass
class _RateLimit:
    route: str
    limit: int
    window: float
    bucket_param: str | None
    hits: dict[str, list[float]] = field(default_factory=dict)


# Discord: with `enforce_nonce`, a message with the same nonce from the same author "in the past
# few minutes" is returned instead of created. The exact window is undocumented (unverified).
NONCE_WINDOW = 300.0


@dataclass
class RequestHold:
    """Parks matching REST requests after their body arrived and before Discord acts on them,
    until the test calls `release()` (the request is then served normally, even if the client
    died meanwhile: Discord finishes what it fully received) or `drop()` (the connection is cut
    and nothing happens: the request never took effect). See `DiscordEmulator.hold_requests`."""

    route: str
    when: Callable[[RequestRecord], bool] | None
    remaining: int
    held: list[RequestRecord] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _decided: asyncio.Event = field(default_factory=asyncio.Event)
    _serve: bool = True

    async def arrived(self, timeout: float = 10.0) -> RequestRecord:  # noqa: ASYNC109
        """The first request parked by this hold (waits for it)."""
        await asyncio.wait_for(self._arrived.wait(), timeout)
        return self.held[0]

    def release(self) -> None:
        self._serve = True
        self._decided.set()

    def drop(self) -> None:
        self._serve = False
        self._decided.set()

    async def park(self, record: RequestRecord) -> bool:
        """True: serve the request; False: drop it."""
        self.held.append(record)
        self._arrived.set()
        await self._decided.wait()
        return self._serve


_MENTION_USER = re.compile(r"<@!?(\d+)>")
_MENTION_ROLE = re.compile(r"<@&(\d+)>")


class DiscordEmulator:
    """An in-process Discord (REST + gateway + CDN) for the real discord.py client."""

    def __init__(
        self,
        *,
        token: str | None = None,
        spec_path: str | None = None,
        validate: bool = True,
        privileged_intents: int = Intents.PRIVILEGED,
        heartbeat_interval_ms: int = 41_250,
        host: str = "127.0.0.1",
        port: int = 0,
        default_world: bool = True,
        shard_count: int = 1,
        max_concurrency: int = 1,
        identify_interval: float | None = None,
    ) -> None:
        self.clock = EmulatorClock()
        self.new_id = SnowflakeFactory(self.clock)
        self.token = token or f"emu.{secrets.token_urlsafe(24)}"
        self.host = host
        self.port = port
        self.privileged_intents = privileged_intents
        self.spec: OpenApiSpec | None = load_spec(spec_path) if validate else None

        self.world = World(self.new_id)
        self.application_id = self.new_id()
        self.bot_user = User(self.application_id, "Veo", global_name="Veo", bot=True)
        self.world.users[self.bot_user.id] = self.bot_user
        self.app_owner = self.world.add_user("app_owner")

        self.timeline: list[RequestRecord] = []
        self.violations: list[Violation] = []
        self.unhandled: list[RequestRecord] = []
        self.gateway_log: list[GatewayFrame] = []
        self.messages: dict[int, StoredMessage] = {}
        self.cdn: dict[int, CdnFile] = {}
        self.cdn_requests: list[str] = []  # "HEAD /attachments/…": what the bot fetched
        self.interactions: dict[str, InteractionHandle] = {}
        self.global_commands: dict[str, dict[str, Any]] = {}
        self.guild_commands: dict[int, dict[str, dict[str, Any]]] = {}
        self.identify_count = 0
        self.resume_count = 0

        self._notifier = Notifier()
        self._arrivals = 0
        self._faults: list[_InjectedFault] = []
        self._holds: list[RequestHold] = []
        # (author id, nonce) -> (message id, emulator time it was created)
        self._nonces: dict[tuple[int, str], tuple[int, float]] = {}
        self._rate_limits: dict[str, _RateLimit] = {}
        self._rate_limited: list[RequestRecord] = []
        # What `GET /gateway/bot` recommends; sessions are routed by the shard they IDENTIFY
        # with, whatever this says (as on Discord).
        self.shard_count = shard_count
        self._gateway = Gateway(
            self,
            heartbeat_interval_ms,
            max_concurrency=max_concurrency,
            identify_interval=identify_interval,
        )
        self._runner: web.AppRunner | None = None
        self._rest = RestApi(self)

        if default_world:
            self._build_default_world()

    # ------------------------------------------------------------------ world
    def _build_default_world(self) -> None:
        self.owner = self.world.add_user("owner", global_name="Guild Owner")
        self.moderator = self.world.add_user("moderator", global_name="Moderator")
        self.member = self.world.add_user("member", global_name="Plain Member")
        self.guild = self.add_guild("Veo Test Guild", owner=self.owner)
        self.moderator_role = self.guild.add_role("Moderator", Permissions.MANAGE_GUILD)
        self.guild.add_member(self.moderator, [self.moderator_role])
        self.guild.add_member(self.member)
        self.channel = self.guild.add_text_channel("general")

    def add_user(self, username: str, *, global_name: str | None = None) -> User:
        return self.world.add_user(username, global_name=global_name)

    def add_guild(self, name: str, *, owner: User, premium_tier: int = 0) -> Guild:
        """A guild with @everyone, the owner and the bot (with a managed role) as members.
        Add it before the bot logs in, or it will not be in the bot's cache."""
        return self.world.add_guild(name, owner, premium_tier=premium_tier, bot_user=self.bot_user)

    def add_guild_on_shard(self, name: str, *, shard: int, owner: User) -> Guild:
        """`add_guild` (with #general) whose id routes to `shard` of `shard_count`. Guild ids
        are snowflakes of the emulator clock, so the clock steps a millisecond until one does."""
        if not 0 <= shard < self.shard_count:
            raise ValueError(f"shard {shard} is not below shard_count {self.shard_count}")
        while True:
            guild = self.add_guild(name, owner=owner)
            if self.shard_of(guild.id) == shard:
                guild.add_text_channel("general")
                return guild
            del self.world.guilds[guild.id]
            self.advance(0.001)

    async def join_guild(self, name: str, *, owner: User, premium_tier: int = 0) -> Guild:
        """Add a guild while the bot is online: it receives GUILD_CREATE, as on an invite."""
        guild = self.add_guild(name, owner=owner, premium_tier=premium_tier)
        guild.add_text_channel("general")
        for session in self._gateway.sessions_for(guild.id):
            await self._gateway.guild_create(session, guild, joined=True)
        return guild

    def dm_channel(self, user: User) -> Channel:
        return self.world.dm_channel_with(user)

    def filesize_limit(self, channel_id: int) -> int:
        found = self.world.channel(channel_id)
        if found is None or found[1] is None:
            return DEFAULT_FILE_LIMIT
        return found[1].filesize_limit

    def app_permissions(self, channel_id: int) -> int:
        found = self.world.channel(channel_id)
        if found is None:
            return 0
        channel, guild = found
        if guild is None:
            return Permissions.EVERYONE_DEFAULT
        return guild.channel_permissions(self.bot_user.id, channel.id)

    @property
    def application_flags(self) -> int:
        flags = 0
        for intent, flag in _INTENT_FLAGS.items():
            if self.privileged_intents & intent:
                flags |= flag
        return flags

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> DiscordEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application(client_max_size=200 * MiB)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest.handle)
        app.router.add_get("/attachments/{channel_id}/{file_id}/{filename}", self._handle_cdn)
        app.router.add_get("/", self._gateway.handle)
        app.router.add_get("/gateway", self._gateway.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        for hold in self._holds:
            hold.drop()
        await self._gateway.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://{self.host}:{self.port}/"

    def point_discord_py(self) -> None:
        point_discord_py_at(self.api_base, self.gateway_url)

    def advance(self, seconds: float) -> None:
        """Move the emulator clock forward (token expiry, rate-limit windows)."""
        self.clock.advance(seconds)

    # ------------------------------------------------------------------ queries
    def requests(
        self,
        route: str | None = None,
        *,
        method: str | None = None,
        status: int | None = None,
    ) -> list[RequestRecord]:
        """Recorded requests, optionally filtered by ``"METHOD /template"``, method or status."""
        return [
            r
            for r in self.timeline
            if (route is None or r.route == route)
            and (method is None or r.method == method)
            and (status is None or r.status == status)
        ]

    def routes_called(self) -> list[str]:
        return [r.route or f"{r.method} {r.path}" for r in self.timeline]

    def message(self, message_id: int) -> StoredMessage:
        return self.messages[int(message_id)]

    def channel_messages(
        self, channel_id: int, *, include_deleted: bool = False
    ) -> list[StoredMessage]:
        return [
            m
            for m in self.messages.values()
            if m.channel_id == channel_id and (include_deleted or not m.deleted)
        ]

    @property
    def rate_limited(self) -> list[RequestRecord]:
        """Requests answered 429 by an injected fault or an emulated rate limit."""
        return list(self._rate_limited)

    def assert_no_violations(self) -> None:
        """Fail with every spec violation and every request to a route the emulator lacks."""
        problems = [str(v) for v in self.violations]
        problems += [f"#{r.index} {r.method} {r.path}: route not emulated" for r in self.unhandled]
        if problems:
            raise AssertionError(
                f"{len(problems)} request problem(s) against Discord's OpenAPI spec:\n  "
                + "\n  ".join(problems)
            )

    # ------------------------------------------------------------------ waiters
    async def wait_for(
        self,
        predicate: Callable[[RequestRecord], bool],
        *,
        timeout: float = 5.0,  # noqa: ASYNC109
        after: int = 0,
    ) -> RequestRecord:
        """First answered request (index >= ``after``) matching ``predicate``; event-driven."""

        def probe() -> RequestRecord | None:
            return next((r for r in self.timeline[after:] if predicate(r)), None)

        return await self._notifier.wait_until(probe, timeout, "a matching request")

    async def wait_for_request(
        self,
        route: str,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109
        after: int = 0,
    ) -> RequestRecord:
        return await self.wait_for(lambda r: r.route == route, timeout=timeout, after=after)

    async def wait_for_gateway(
        self,
        predicate: Callable[[GatewayFrame], bool],
        *,
        timeout: float = 5.0,  # noqa: ASYNC109
        after: int = 0,
    ) -> GatewayFrame:
        def probe() -> GatewayFrame | None:
            return next((f for f in self.gateway_log[after:] if predicate(f)), None)

        return await self._notifier.wait_until(probe, timeout, "a matching gateway frame")

    def connected_shards(self) -> list[tuple[int, int]]:
        """`(shard id, shard count)` of every live gateway session, one entry per session."""
        return [(s.shard_id, s.shard_count) for s in self._gateway.live_sessions]

    def shard_of(self, guild_id: int | None) -> int:
        """The shard of `shard_count` that carries this guild's events (None: DMs, 0)."""
        return shard_of(guild_id, self.shard_count)

    @property
    def identify_refusals(self) -> int:
        """IDENTIFYs answered op 9 Invalid Session for coming too soon in their bucket."""
        return self._gateway.identify_refusals

    async def wait_for_shards(
        self,
        shards: list[tuple[int, int]],
        *,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> None:
        """Until a live session has identified on each `(id, count)` listed (repeat an entry
        to wait for two sessions on one shard)."""

        def probe() -> bool | None:
            live = self.connected_shards()
            return True if all(live.count(s) >= shards.count(s) for s in shards) else None

        await self._notifier.wait_until(probe, timeout, f"sessions on shards {shards}")

    async def wait_for_ready(self, *, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Until a bot has identified and been sent its guilds."""
        await self._notifier.wait_until(
            lambda: True if self._gateway.live_sessions and self.identify_count else None,
            timeout,
            "the bot to IDENTIFY",
        )

    async def wait_for_command(
        self,
        name: str,
        *,
        guild_id: int | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """Until the bot has synced a command called ``name`` (globally or to ``guild_id``)."""

        def probe() -> dict[str, Any] | None:
            if guild_id is not None:
                return self.guild_commands.get(guild_id, {}).get(name)
            return self.global_commands.get(name)

        return await self._notifier.wait_until(probe, timeout, f"command {name!r} to be synced")

    # ------------------------------------------------------------------ fault injection
    def inject_error(
        self,
        route: str,
        status: int,
        code: int,
        message: str,
        *,
        times: int = 1,
        headers: dict[str, str] | None = None,
        when: Callable[[RequestRecord], bool] | None = None,
    ) -> None:
        """Answer the next ``times`` requests to ``route`` ("METHOD /template") with an error."""
        self._check_route(route)
        body = {"message": message, "code": code}
        self._faults.append(_InjectedFault(route, status, body, headers or {}, times, when))

    def inject_rate_limit(
        self,
        route: str,
        *,
        retry_after: float = 0.05,
        times: int = 1,
        is_global: bool = False,
        via: bool = True,
    ) -> None:
        """One-shot 429s. discord.py only retries a 429 carrying ``Via`` (Cloudflare bans lack it);
        ``via=False`` emulates that ban."""
        self._check_route(route)
        headers = self._rate_limit_headers(retry_after, limit=1, remaining=0, bucket=route)
        headers["X-RateLimit-Scope"] = "global" if is_global else "user"
        if is_global:
            headers["X-RateLimit-Global"] = "true"
        if via:
            headers["Via"] = "1.1 google"
        body = {
            "message": "You are being rate limited.",
            "retry_after": retry_after,
            "global": is_global,
        }
        self._faults.append(_InjectedFault(route, 429, body, headers, times))

    def set_rate_limit(
        self, route: str, *, limit: int, window: float, bucket_param: str | None = None
    ) -> None:
        """Emulate a bucket: ``limit`` requests per ``window`` seconds (emulator clock) per
        bucket key (by default the route's major parameter, e.g. the interaction token)."""
        self._check_route(route)
        self._rate_limits[route] = _RateLimit(route, limit, window, bucket_param)

    def deny_channel(self, channel_id: int, code: int = 50013) -> None:
        """Take permissions away from the bot in a channel, via a member overwrite (so REST
        answers 403 and ``app_permissions`` agree): 50013 denies sending/attaching/embedding,
        50001 denies viewing the channel at all."""
        found = self.world.channel(channel_id)
        if found is None or found[1] is None:
            raise KeyError(f"no guild channel {channel_id}")
        channel, _ = found
        if code == 50001:
            deny = Permissions.VIEW_CHANNEL
        elif code == 50013:
            deny = Permissions.SEND_MESSAGES | Permissions.ATTACH_FILES | Permissions.EMBED_LINKS
        else:
            raise ValueError("code must be 50013 (Missing Permissions) or 50001 (Missing Access)")
        channel.overwrites = [o for o in channel.overwrites if o.target_id != self.bot_user.id]
        channel.overwrites.append(Overwrite(self.bot_user.id, 1, deny=deny))

    def hold_requests(
        self,
        route: str,
        *,
        when: Callable[[RequestRecord], bool] | None = None,
        times: int = 1,
    ) -> RequestHold:
        """Park the next ``times`` requests to ``route`` (matching ``when``) once their body has
        arrived, before auth, faults or the handler run: ``await hold.arrived()`` then
        ``hold.release()`` or ``hold.drop()``. Lets a test kill the bot while an upload is on
        the wire and choose whether Discord applied it."""
        self._check_route(route)
        hold = RequestHold(route, when, times)
        self._holds.append(hold)
        return hold

    def _take_hold(self, record: RequestRecord) -> RequestHold | None:
        for hold in self._holds:
            if hold.route != record.route or hold.remaining <= 0:
                continue
            if hold.when is not None and not hold.when(record):
                continue
            hold.remaining -= 1
            return hold
        return None

    def _deduplicated(self, author_id: int, body: dict[str, Any]) -> StoredMessage | None:
        """The message an earlier create with this nonce made, if ``enforce_nonce`` asks for
        deduplication and it is recent and still there."""
        nonce = body.get("nonce")
        if nonce is None or not body.get("enforce_nonce"):
            return None
        seen = self._nonces.get((author_id, str(nonce)))
        if seen is None or self.clock.now() - seen[1] > NONCE_WINDOW:
            return None
        message = self.messages.get(seen[0])
        return None if message is None or message.deleted else message

    def _remember_nonce(self, author_id: int, body: dict[str, Any], message: StoredMessage) -> None:
        nonce = body.get("nonce")
        if nonce is not None and body.get("enforce_nonce"):
            self._nonces[(author_id, str(nonce))] = (message.id, self.clock.now())

    async def announce_channel_update(self, channel_id: int) -> None:
        """Tell connected bots about a changed channel (after ``deny_channel``)."""
        found = self.world.channel(channel_id)
        if found is not None:
            await self._gateway.broadcast(
                "CHANNEL_UPDATE",
                found[0].payload(),
                guild_id=found[1].id if found[1] is not None else None,
                intent=Intents.GUILDS,
            )

    async def announce_channel_create(self, channel_id: int) -> None:
        """Tell connected bots about a channel added while they are online (as Discord does
        when a moderator creates one)."""
        found = self.world.channel(channel_id)
        if found is None:
            raise KeyError(f"no channel {channel_id}")
        await self._gateway.broadcast(
            "CHANNEL_CREATE",
            found[0].payload(),
            guild_id=found[1].id if found[1] is not None else None,
            intent=Intents.GUILDS,
        )

    async def delete_message(self, channel_id: int, message_id: int) -> None:
        """Delete a message as a user or moderator would; later requests for it get 10008."""
        message = self.messages.get(message_id)
        if message is None or message.channel_id != channel_id:
            raise KeyError(f"no message {message_id} in channel {channel_id}")
        message.deleted = True
        await self._broadcast_message("MESSAGE_DELETE", message)

    async def request_reconnect(self) -> None:
        """Send op 7 RECONNECT: discord.py reconnects and RESUMEs."""
        await self._gateway.reconnect_all()

    async def refuse_gateway(self) -> None:
        """Take the gateway down: close every live socket (1001, which discord.py answers by
        reconnecting) and answer every new connection 503 until `allow_gateway()`. REST and
        the CDN keep working, as in a gateway-only outage."""
        self._gateway.refusing = True
        await self._gateway.close_all(code=1001, message=b"gateway going away")

    def hold_gateway(self) -> None:
        """Accept new gateway connections but send no HELLO until `release_gateway()`: the
        client stays "connecting" (discord.py gives up after 60 s). Unlike a refusal, this
        is survivable at start-up — discord.py 2.7.1 crashes if the very first connection is
        refused (`self.ws` is still None when it prepares the RESUME)."""
        self._gateway.hello_allowed.clear()

    def release_gateway(self) -> None:
        self._gateway.hello_allowed.set()

    async def wait_for_held_gateway(self, *, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Until a connection is waiting for its HELLO."""
        await self._notifier.wait_until(
            lambda: True if self._gateway.held else None, timeout, "a held gateway connection"
        )

    def allow_gateway(self) -> None:
        """Bring the gateway back: the bot's next attempt connects (and RESUMEs or IDENTIFYs)."""
        self._gateway.refusing = False

    @property
    def gateway_refusals(self) -> int:
        """Connection attempts refused since the emulator started."""
        return self._gateway.refusals

    async def wait_for_gateway_refusal(
        self,
        count: int = 1,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> None:
        """Until `count` connection attempts in all have been refused."""
        await self._notifier.wait_until(
            lambda: True if self._gateway.refusals >= count else None,
            timeout,
            f"{count} refused gateway connection(s)",
        )

    def _check_route(self, route: str) -> None:
        if route not in {r.key for r in self._rest.routes}:
            known = "\n  ".join(sorted(r.key for r in self._rest.routes))
            raise ValueError(f"unknown route {route!r}; the emulator serves:\n  {known}")

    def _rate_limit_headers(
        self, reset_after: float, *, limit: int, remaining: int, bucket: str
    ) -> dict[str, str]:
        return {
            "Retry-After": str(max(1, math.ceil(reset_after))),
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": f"{self.clock.now() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": secrets.token_hex(8) if not bucket else _bucket_hash(bucket),
        }

    # ------------------------------------------------------------------ CDN
    def add_cdn_file(self, filename: str, data: bytes, content_type: str | None = None) -> str:
        """Serve ``data`` at a CDN-like URL (signed-looking query string included)."""
        return self._store_cdn(0, filename, data, content_type or guess_content_type(filename)).url

    def cdn_file(self, ref: str | int | CdnFile) -> CdnFile:
        """The served file behind a URL (or id) that ``add_cdn_file`` returned."""
        if isinstance(ref, CdnFile):
            return ref
        if isinstance(ref, int):
            return self.cdn[ref]
        match = re.search(r"/attachments/\d+/(\d+)/", ref)
        if match is None or int(match.group(1)) not in self.cdn:
            raise KeyError(f"{ref!r} is not a file this emulator serves")
        return self.cdn[int(match.group(1))]

    def _store_cdn(self, channel_id: int, filename: str, data: bytes, content_type: str) -> CdnFile:
        file_id = self.new_id()
        now = int(self.clock.now())
        query = f"ex={now + 86400:x}&is={now:x}&hm={secrets.token_hex(32)}&"
        url = f"{self.base_url}/attachments/{channel_id}/{file_id}/{filename}?{query}"
        cdn = CdnFile(file_id, filename, content_type, data, url)
        self.cdn[file_id] = cdn
        return cdn

    async def _handle_cdn(self, request: web.Request) -> web.StreamResponse:
        self.cdn_requests.append(f"{request.method} {request.path}")
        cdn = self.cdn.get(int(request.match_info["file_id"]))
        if cdn is None or cdn.filename != request.match_info["filename"]:
            return web.Response(status=404, text="Not Found")
        expires = request.query.get("ex")
        if expires is not None and int(expires, 16) < self.clock.now():
            return web.Response(status=404, text="This content is no longer available.")
        headers = {
            "Content-Type": cdn.content_type,
            "Accept-Ranges": "bytes",
            "Cache-Control": "public, max-age=31536000",
        }
        data = cdn.data
        status = 200
        range_header = request.headers.get("Range")
        if range_header:
            parsed = _parse_range(range_header, len(data))
            if parsed is None:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
            start, end = parsed
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data = data[start : end + 1]
            status = 206
        headers["Content-Length"] = str(len(data))
        if request.method == "HEAD":
            response = web.Response(status=status, headers=headers)
            return response
        return web.Response(body=data, status=status, headers=headers)

    # ------------------------------------------------------------------ messages
    def _check_upload_limit(self, files: list[FilePart], limit: int) -> None:
        for part in files:
            if part.size > limit:
                raise DiscordError(413, 40005, "Request entity too large")

    def _attachments_from(
        self, channel_id: int, files: list[FilePart], entries: list[dict[str, Any]] | None
    ) -> list[StoredAttachment]:
        meta = {str(e.get("id")): e for e in entries or []}
        out = []
        for part in files:
            entry = meta.get(str(part.index), {})
            filename = entry.get("filename") or part.filename
            cdn = self._store_cdn(
                channel_id, filename, part.data, guess_content_type(filename, part.content_type)
            )
            out.append(
                StoredAttachment(
                    id=cdn.id,
                    filename=filename,
                    content_type=cdn.content_type,
                    data=part.data,
                    url=cdn.url,
                    description=entry.get("description"),
                    title=entry.get("title"),
                )
            )
        return out

    def _new_message(
        self,
        channel: Channel,
        guild: Guild | None,
        author: User,
        body: dict[str, Any],
        files: list[FilePart],
    ) -> StoredMessage:
        message = StoredMessage(
            id=self.new_id(),
            channel_id=channel.id,
            guild_id=guild.id if guild else None,
            author=author,
            timestamp=self.clock.iso(),
        )
        message.content = body.get("content") or ""
        message.embeds = list(body.get("embeds") or [])
        message.components = list(body.get("components") or [])
        message.allowed_mentions = body.get("allowed_mentions")
        message.tts = bool(body.get("tts", False))
        message.flags = int(body.get("flags") or 0) & CLIENT_SETTABLE_FLAGS
        message.attachments = self._attachments_from(channel.id, files, body.get("attachments"))
        self._resolve_mentions(message, guild)
        self.messages[message.id] = message
        channel.last_message_id = message.id
        return message

    def _apply_edit(
        self, message: StoredMessage, body: dict[str, Any], files: list[FilePart]
    ) -> None:
        """PATCH semantics: present keys replace, absent keys stay; ``attachments`` lists the
        existing attachments to keep (by id) plus metadata for new uploads (by files[n] index)."""
        if "content" in body:
            message.content = body["content"] or ""
        if "embeds" in body:
            message.embeds = list(body["embeds"] or [])
        if "components" in body:
            message.components = list(body["components"] or [])
        if "allowed_mentions" in body:
            message.allowed_mentions = body["allowed_mentions"]
        if body.get("flags") is not None:
            keep = message.flags & (EPHEMERAL | ~CLIENT_SETTABLE_FLAGS)
            message.flags = keep | (int(body["flags"]) & CLIENT_SETTABLE_FLAGS & ~EPHEMERAL)
        uploads = self._attachments_from(message.channel_id, files, body.get("attachments"))
        if "attachments" in body:
            keep_ids = {str(e.get("id")) for e in body["attachments"] or []}
            message.attachments = [a for a in message.attachments if str(a.id) in keep_ids]
        message.attachments += uploads
        message.flags &= ~LOADING
        message.edited_timestamp = self.clock.iso()
        message.edits += 1
        guild = self.world.guilds.get(message.guild_id or 0)
        self._resolve_mentions(message, guild)

    def _resolve_mentions(self, message: StoredMessage, guild: Guild | None) -> None:
        """Who the message pings, given its content and allowed_mentions (Discord's default,
        with no allowed_mentions, is to parse everything)."""
        allowed = message.allowed_mentions
        parse = (
            set(allowed.get("parse") or [])
            if allowed is not None
            else {"users", "roles", "everyone"}
        )
        users = {str(u) for u in (allowed or {}).get("users") or []}
        roles = {str(r) for r in (allowed or {}).get("roles") or []}
        mentioned = []
        for user_id in _MENTION_USER.findall(message.content):
            user = self.world.users.get(int(user_id))
            if user is not None and ("users" in parse or user_id in users):
                mentioned.append(user)
        if message.message_reference and (allowed is None or allowed.get("replied_user")):
            target = self.messages.get(int(message.message_reference["message_id"]))
            if target is not None and target.author not in mentioned:
                mentioned.append(target.author)
        message.mentions = mentioned
        message.mention_role_ids = [
            int(r)
            for r in _MENTION_ROLE.findall(message.content)
            if guild is not None and int(r) in guild.roles and ("roles" in parse or r in roles)
        ]
        message.mention_everyone = "everyone" in parse and (
            "@everyone" in message.content or "@here" in message.content
        )

    def _render(self, message: StoredMessage, *, hide_content: bool = False) -> dict[str, Any]:
        referenced = None
        if message.message_reference and not message.is_forward:
            referenced = self.messages.get(int(message.message_reference["message_id"]))
        payload = message.payload(referenced=referenced, hide_content=hide_content)
        if message.guild_id is not None:
            payload["guild_id"] = str(message.guild_id)
        return payload

    def _content_visible(self, message: StoredMessage, intents: int) -> bool:
        """Discord's Message Content rule: without the intent a bot sees content only of its own
        messages, DMs, and messages that mention it."""
        if intents & Intents.MESSAGE_CONTENT or message.guild_id is None:
            return True
        if message.author.id == self.bot_user.id:
            return True
        return any(u.id == self.bot_user.id for u in message.mentions)

    async def _broadcast_message(self, event: str, message: StoredMessage) -> None:
        if message.ephemeral:
            return
        intent = Intents.GUILD_MESSAGES if message.guild_id else Intents.DIRECT_MESSAGES
        for session in self._gateway.sessions_for(message.guild_id):
            if not session.has_intent(intent):
                continue
            if event == "MESSAGE_DELETE":
                data: dict[str, Any] = {
                    "id": str(message.id),
                    "channel_id": str(message.channel_id),
                }
                if message.guild_id is not None:
                    data["guild_id"] = str(message.guild_id)
            else:
                hide = not self._content_visible(message, session.intents)
                data = self._render(message, hide_content=hide)
                if data.get("referenced_message") is not None and not hide:
                    referenced = self.messages[int(message.message_reference["message_id"])]  # type: ignore[index]
                    data["referenced_message"] = self._render(
                        referenced,
                        hide_content=not self._content_visible(referenced, session.intents),
                    )
                guild = self.world.guilds.get(message.guild_id or 0)
                if guild is not None and message.author.id in guild.members:
                    member = guild.members[message.author.id].payload()
                    member.pop("user")
                    data["member"] = member
            await self._gateway.dispatch(session, event, data)

    # ------------------------------------------------------------------ driving the bot
    def _require_bot(self) -> None:
        if not self._gateway.live_sessions:
            raise RuntimeError("no bot is connected to the emulator gateway")

    def _find_command(self, name: str, guild: Guild | None, kind: int) -> dict[str, Any]:
        scopes = []
        if guild is not None:
            scopes.append(self.guild_commands.get(guild.id, {}))
        scopes.append(self.global_commands)
        for scope in scopes:
            command = scope.get(name)
            if command is not None and command.get("type", 1) == kind:
                if (
                    guild is None
                    and command.get("contexts") is not None
                    and 1 not in command["contexts"]
                ):
                    raise ValueError(f"command {name!r} is not available in DMs (contexts)")
                return command
        synced = sorted({n for s in scopes for n in s})
        raise ValueError(
            f"the bot has not synced a type-{kind} command {name!r} (synced: {synced})"
        )

    def _where(
        self, user: User | None, guild_id: int | None, channel_id: int | None
    ) -> tuple[User, Guild | None, Channel]:
        user = user or self.member
        if channel_id is not None:
            found = self.world.channel(channel_id)
            if found is None:
                raise KeyError(f"no channel {channel_id}")
            return user, found[1], found[0]
        guild = self.guild if guild_id is None else self.world.guilds[guild_id]
        return user, guild, next(iter(guild.channels.values()))

    async def _send_interaction(
        self,
        kind: int,
        data: dict[str, Any],
        user: User,
        guild: Guild | None,
        channel: Channel,
        *,
        message: StoredMessage | None = None,
        locale: str = "en-US",
    ) -> InteractionHandle:
        self._require_bot()
        interaction_id = self.new_id()
        # Shaped like Discord's: base64url of "interaction:<id>:<secret>", no padding.
        raw = f"interaction:{interaction_id}:{secrets.token_urlsafe(96)}".encode()
        token = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        channel_payload = channel.payload()
        payload: dict[str, Any] = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": kind,
            "data": data,
            "channel_id": str(channel.id),
            "channel": {**channel_payload, "permissions": str(self.app_permissions(channel.id))},
            "token": token,
            "version": 1,
            "locale": locale,
            "app_permissions": str(self.app_permissions(channel.id)),
            "entitlements": [],
            "entitlement_sku_ids": [],
            "attachment_size_limit": self.filesize_limit(channel.id),
        }
        if guild is not None:
            member = guild.members.get(user.id)
            if member is None:
                raise ValueError(f"{user.username} is not a member of {guild.name}")
            payload["guild_id"] = str(guild.id)
            payload["guild"] = guild.interaction_payload()
            payload["guild_locale"] = guild.preferred_locale
            payload["member"] = member.payload(
                permissions=guild.channel_permissions(user.id, channel.id)
            )
            payload["authorizing_integration_owners"] = {"0": str(guild.id)}
            payload["context"] = 0
        else:
            payload["user"] = user.payload()
            payload["authorizing_integration_owners"] = {"0": str(user.id)}
            payload["context"] = 1
        if message is not None:
            payload["message"] = self._render(message)
        handle = InteractionHandle(
            emulator=self,
            id=interaction_id,
            token=token,
            type=kind,
            payload=payload,
            user=user,
            guild=guild,
            channel=channel,
            sent_at=self.clock.now(),
            source_message_id=message.id if message else None,
        )
        self.interactions[token] = handle
        guild_id = guild.id if guild is not None else None
        sessions = self._gateway.sessions_for(guild_id)
        if not sessions:
            raise RuntimeError(
                f"no bot session runs the shard of guild {guild_id} "
                f"(shards connected: {sorted(self.connected_shards())})"
            )
        handle.sent_at = self.clock.now()
        # Every session of the shard gets it (two during a deploy's overlap); only the first
        # callback is accepted, the next is 400 40060.
        for session in sessions:
            await self._gateway.dispatch(session, "INTERACTION_CREATE", payload)
        return handle

    async def dispatch_slash_command(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        user: User | None = None,
        guild_id: int | None = None,
        channel_id: int | None = None,
        attachments: dict[str, str | CdnFile] | None = None,
        dm: bool = False,
        locale: str = "en-US",
    ) -> InteractionHandle:
        """Run ``/name`` (``"group sub"`` paths allowed) as ``user`` (default: the plain member).
        Options are typed from the synced definition; attachment options take a URL from
        ``add_cdn_file`` (in ``options`` or ``attachments``)."""
        user, guild, channel = self._where(user, guild_id, channel_id)
        if dm:
            guild, channel = None, self.dm_channel(user)
        root, *path = name.split()
        command = self._find_command(root, guild, 1)
        builder = OptionBuilder(self, guild, channel)
        values = {**(options or {}), **(attachments or {})}
        data: dict[str, Any] = {
            "id": command["id"],
            "name": root,
            "type": 1,
            "options": builder.build_command(command, path, values),
        }
        if builder.resolved:
            data["resolved"] = builder.resolved
        if "guild_id" in command:
            data["guild_id"] = command["guild_id"]
        return await self._send_interaction(
            APPLICATION_COMMAND, data, user, guild, channel, locale=locale
        )

    async def dispatch_context_menu(
        self,
        name: str,
        target: StoredMessage | User,
        *,
        user: User | None = None,
        locale: str = "en-US",
    ) -> InteractionHandle:
        """A message (or user) context-menu command on ``target``. The target message arrives
        with its content whatever the intents, as on Discord."""
        if isinstance(target, StoredMessage):
            user, guild, channel = self._where(user, None, target.channel_id)
            command = self._find_command(name, guild, 3)
            resolved: dict[str, Any] = {"messages": {str(target.id): self._render(target)}}
        else:
            user, guild, channel = self._where(user, None, None)
            command = self._find_command(name, guild, 2)
            resolved = {"users": {str(target.id): target.payload()}}
            if guild is not None and target.id in guild.members:
                member = guild.members[target.id].payload(
                    permissions=guild.channel_permissions(target.id, channel.id)
                )
                member.pop("user")
                resolved["members"] = {str(target.id): member}
        data: dict[str, Any] = {
            "id": command["id"],
            "name": name,
            "type": command["type"],
            "target_id": str(target.id),
            "resolved": resolved,
        }
        if "guild_id" in command:
            data["guild_id"] = command["guild_id"]
        return await self._send_interaction(
            APPLICATION_COMMAND, data, user, guild, channel, locale=locale
        )

    async def dispatch_component(
        self,
        custom_id: str,
        message: StoredMessage,
        *,
        user: User | None = None,
        values: list[str] | None = None,
    ) -> InteractionHandle:
        """Click a button (or pick ``values`` in a select) on one of the bot's messages."""
        component = _find_component(message.components, custom_id)
        if component is None:
            raise ValueError(f"message {message.id} has no component {custom_id!r}")
        user, guild, channel = self._where(user, None, message.channel_id)
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component["type"]}
        if component["type"] != 2:
            data["values"] = list(values or [])
        return await self._send_interaction(
            MESSAGE_COMPONENT, data, user, guild, channel, message=message
        )

    async def dispatch_modal_submit(
        self,
        custom_id: str,
        values: dict[str, str | list[str]],
        *,
        user: User | None = None,
        channel_id: int | None = None,
    ) -> InteractionHandle:
        """Submit the modal the bot last opened with ``custom_id``; ``values`` maps each text
        input's custom_id to what the user typed. The submit mirrors the modal's layout
        (action rows or labels)."""
        opener = next(
            (
                h
                for h in reversed(list(self.interactions.values()))
                if h.modal is not None and h.modal.get("custom_id") == custom_id
            ),
            None,
        )
        if opener is not None:
            user = user or opener.user
            channel_id = channel_id or opener.channel.id
            rows = _modal_submit_components(opener.modal.get("components", []), values)  # type: ignore[union-attr]
        else:
            rows = [
                {"type": 1, "components": [{"type": 4, "custom_id": k, "value": v}]}
                for k, v in values.items()
            ]
        user, guild, channel = self._where(user, None, channel_id)
        data = {"custom_id": custom_id, "components": rows}
        source = self.messages.get(opener.source_message_id or 0) if opener else None
        return await self._send_interaction(
            MODAL_SUBMIT, data, user, guild, channel, message=source
        )

    async def forward_message(
        self,
        source: StoredMessage,
        *,
        channel_id: int | None = None,
        author: User | None = None,
    ) -> StoredMessage:
        """A user forwards `source` (to `channel_id`, default its own channel): a new message
        with no content of its own, `message_reference.type` FORWARD and a snapshot of
        `source` whose attachments are copied onto the CDN, as Discord does."""
        author = author or self.member
        found = self.world.channel(channel_id or source.channel_id)
        if found is None:
            raise KeyError(f"no channel {channel_id}")
        channel, guild = found
        snapshot = StoredMessage(
            id=source.id,
            channel_id=source.channel_id,
            guild_id=source.guild_id,
            author=source.author,
            content=source.content,
            embeds=list(source.embeds),
            type=source.type,
            timestamp=source.timestamp,
            edited_timestamp=source.edited_timestamp,
            flags=source.flags & ~(EPHEMERAL | LOADING),
        )
        for attachment in source.attachments:
            copy = self._store_cdn(
                channel.id, attachment.filename, attachment.data, attachment.content_type
            )
            snapshot.attachments.append(
                StoredAttachment(copy.id, copy.filename, copy.content_type, copy.data, copy.url)
            )
        message = StoredMessage(
            id=self.new_id(),
            channel_id=channel.id,
            guild_id=guild.id if guild else None,
            author=author,
            timestamp=self.clock.iso(),
            message_reference={
                "type": REFERENCE_FORWARD,
                "message_id": str(source.id),
                "channel_id": str(source.channel_id),
                **({"guild_id": str(source.guild_id)} if source.guild_id else {}),
            },
            snapshot=snapshot,
        )
        self.messages[message.id] = message
        channel.last_message_id = message.id
        await self._broadcast_message("MESSAGE_CREATE", message)
        return message

    async def post_user_message(
        self,
        channel_id: int,
        content: str,
        author: User | None = None,
        *,
        attachments: Iterable[str | CdnFile] = (),
        reference: StoredMessage | int | None = None,
        mentions: Iterable[User] = (),
    ) -> StoredMessage:
        """A user posts in a channel: stored, then MESSAGE_CREATE to bots with the right
        intents, content emptied for bots without Message Content unless DM or mentioned."""
        author = author or self.member
        found = self.world.channel(channel_id)
        if found is None:
            raise KeyError(f"no channel {channel_id}")
        channel, guild = found
        extra = " ".join(u.mention for u in mentions if u.mention not in content)
        message = StoredMessage(
            id=self.new_id(),
            channel_id=channel.id,
            guild_id=guild.id if guild else None,
            author=author,
            content=f"{content} {extra}".strip() if extra else content,
            timestamp=self.clock.iso(),
        )
        for ref in attachments:
            source = self.cdn_file(ref)
            copy = self._store_cdn(channel.id, source.filename, source.data, source.content_type)
            message.attachments.append(
                StoredAttachment(copy.id, copy.filename, copy.content_type, copy.data, copy.url)
            )
        if reference is not None:
            target = reference if isinstance(reference, StoredMessage) else self.message(reference)
            message.type = 19
            message.message_reference = {
                "type": 0,
                "message_id": str(target.id),
                "channel_id": str(target.channel_id),
                **({"guild_id": str(target.guild_id)} if target.guild_id else {}),
            }
        self._resolve_mentions(message, guild)
        self.messages[message.id] = message
        channel.last_message_id = message.id
        await self._broadcast_message("MESSAGE_CREATE", message)
        return message


def _find_component(components: list[dict[str, Any]], custom_id: str) -> dict[str, Any] | None:
    for component in components:
        if component.get("custom_id") == custom_id:
            return component
        for key in ("components", "accessory", "component"):
            inner = component.get(key)
            children = (
                inner if isinstance(inner, list) else [inner] if isinstance(inner, dict) else []
            )
            found = _find_component(children, custom_id)
            if found is not None:
                return found
    return None


def _modal_submit_components(
    layout: list[dict[str, Any]], values: dict[str, Any]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for item in layout:
        if item.get("type") == 1:
            inputs = [
                {
                    "type": c["type"],
                    "custom_id": c["custom_id"],
                    "value": values.get(c["custom_id"], ""),
                }
                for c in item.get("components", [])
                if "custom_id" in c
            ]
            out.append({"type": 1, "components": inputs})
        elif item.get("type") == 18:
            inner = item.get("component", {})
            submitted: dict[str, Any] = {
                "type": inner.get("type"),
                "custom_id": inner.get("custom_id"),
            }
            if inner.get("type") == 4:
                submitted["value"] = values.get(inner.get("custom_id", ""), "")
            else:
                raw: Any = values.get(inner.get("custom_id", ""), [])
                submitted["values"] = raw if isinstance(raw, list) else [raw]
            out.append({"type": 18, "id": item.get("id", 0), "component": submitted})
    return out


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if match is None or size == 0:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        length = int(last)
        return (max(0, size - length), size - 1) if length else None
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        return None
    return start, end


def _bucket_hash(value: str) -> str:
    return hashlib.sha1(value.encode(), usedforsecurity=False).hexdigest()[:16]
