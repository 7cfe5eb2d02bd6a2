"""The Discord emulator: one aiohttp server with REST under /api/v10, the gateway at / and a CDN.

Start it with ``async with DiscordEmulator() as emu:`` and point the real discord.py client at
``emu.api_base`` / ``emu.gateway_url``. Every REST request lands in ``emu.timeline`` and is checked
against Discord's OpenAPI spec (``emu.violations``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import discord
import discord.gateway
import discord.http
import yarl
from aiohttp import web

from .clock import EmulatorClock, SnowflakeFactory
from .gateway import _INTENT_FLAGS, Gateway
from .interactions import (
    ALLOWED_CALLBACKS,
    APPLICATION_COMMAND,
    CALLBACK_DEADLINE,
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
    StoredAttachment,
    StoredMessage,
    guess_content_type,
)
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

Handler = Callable[[RequestRecord], Awaitable[Any]]


def point_discord_py_at(api_base: str, gateway_url: str) -> None:
    """Make discord.py talk to another server: the REST base and the gateway URL are class
    attributes (``Route.BASE`` is read per request, ``DEFAULT_GATEWAY`` at connect)."""
    discord.http.Route.BASE = api_base.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


def _json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    # Exactly "application/json": discord.py's json_or_text() compares the header verbatim, and
    # aiohttp's json_response() would append "; charset=utf-8".
    merged = {"Content-Type": "application/json", **(headers or {})}
    return web.Response(body=json.dumps(data).encode(), status=status, headers=merged)


@dataclass
class _Route:
    method: str
    template: str
    handler: Handler
    auth: str  # "bot" or "none" (webhook/interaction token in the path)
    regex: re.Pattern[str]
    names: list[str]
    literals: int

    @property
    def key(self) -> str:
        return f"{self.method} {self.template}"


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


_MAJOR_PARAMS = ("interaction_token", "channel_id", "guild_id", "application_id")
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
        self.interactions: dict[str, InteractionHandle] = {}
        self.global_commands: dict[str, dict[str, Any]] = {}
        self.guild_commands: dict[int, dict[str, dict[str, Any]]] = {}
        self.identify_count = 0
        self.resume_count = 0

        self._notifier = Notifier()
        self._arrivals = 0
        self._faults: list[_InjectedFault] = []
        self._rate_limits: dict[str, _RateLimit] = {}
        self._rate_limited: list[RequestRecord] = []
        self._gateway = Gateway(self, heartbeat_interval_ms)
        self._runner: web.AppRunner | None = None
        self._routes = self._build_routes()

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

    async def join_guild(self, name: str, *, owner: User, premium_tier: int = 0) -> Guild:
        """Add a guild while the bot is online: it receives GUILD_CREATE, as on an invite."""
        guild = self.add_guild(name, owner=owner, premium_tier=premium_tier)
        guild.add_text_channel("general")
        for session in self._gateway.live_sessions:
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
        app.router.add_route("*", "/api/v10/{tail:.*}", self._handle_rest)
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

    async def announce_channel_update(self, channel_id: int) -> None:
        """Tell connected bots about a changed channel (after ``deny_channel``)."""
        found = self.world.channel(channel_id)
        if found is not None:
            await self._gateway.broadcast(
                "CHANNEL_UPDATE", found[0].payload(), intent=Intents.GUILDS
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

    def _check_route(self, route: str) -> None:
        if route not in {r.key for r in self._routes}:
            known = "\n  ".join(sorted(r.key for r in self._routes))
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

    # ------------------------------------------------------------------ REST plumbing
    def _build_routes(self) -> list[_Route]:
        table: list[tuple[str, str, Handler, str]] = [
            ("GET", "/users/@me", self._get_me, "bot"),
            ("GET", "/users/{user_id}", self._get_user, "bot"),
            ("POST", "/users/@me/channels", self._create_dm, "bot"),
            ("GET", "/oauth2/applications/@me", self._get_application, "bot"),
            ("GET", "/gateway", self._get_gateway, "none"),
            ("GET", "/gateway/bot", self._get_gateway_bot, "bot"),
            ("GET", "/applications/{application_id}/commands", self._get_commands, "bot"),
            ("PUT", "/applications/{application_id}/commands", self._put_commands, "bot"),
            ("POST", "/applications/{application_id}/commands", self._post_command, "bot"),
            (
                "DELETE",
                "/applications/{application_id}/commands/{command_id}",
                self._delete_command,
                "bot",
            ),
            (
                "GET",
                "/applications/{application_id}/guilds/{guild_id}/commands",
                self._get_commands,
                "bot",
            ),
            (
                "PUT",
                "/applications/{application_id}/guilds/{guild_id}/commands",
                self._put_commands,
                "bot",
            ),
            (
                "POST",
                "/applications/{application_id}/guilds/{guild_id}/commands",
                self._post_command,
                "bot",
            ),
            (
                "DELETE",
                "/applications/{application_id}/guilds/{guild_id}/commands/{command_id}",
                self._delete_command,
                "bot",
            ),
            (
                "POST",
                "/interactions/{interaction_id}/{interaction_token}/callback",
                self._interaction_callback,
                "none",
            ),
            (
                "GET",
                "/webhooks/{application_id}/{interaction_token}/messages/@original",
                self._get_webhook_message,
                "none",
            ),
            (
                "PATCH",
                "/webhooks/{application_id}/{interaction_token}/messages/@original",
                self._edit_webhook_message,
                "none",
            ),
            (
                "DELETE",
                "/webhooks/{application_id}/{interaction_token}/messages/@original",
                self._delete_webhook_message,
                "none",
            ),
            ("POST", "/webhooks/{application_id}/{interaction_token}", self._followup, "none"),
            (
                "GET",
                "/webhooks/{application_id}/{interaction_token}/messages/{message_id}",
                self._get_webhook_message,
                "none",
            ),
            (
                "PATCH",
                "/webhooks/{application_id}/{interaction_token}/messages/{message_id}",
                self._edit_webhook_message,
                "none",
            ),
            (
                "DELETE",
                "/webhooks/{application_id}/{interaction_token}/messages/{message_id}",
                self._delete_webhook_message,
                "none",
            ),
            ("GET", "/channels/{channel_id}", self._get_channel, "bot"),
            ("GET", "/channels/{channel_id}/messages", self._list_messages, "bot"),
            ("POST", "/channels/{channel_id}/messages", self._create_channel_message, "bot"),
            (
                "GET",
                "/channels/{channel_id}/messages/{message_id}",
                self._get_channel_message,
                "bot",
            ),
            (
                "PATCH",
                "/channels/{channel_id}/messages/{message_id}",
                self._edit_channel_message,
                "bot",
            ),
            (
                "DELETE",
                "/channels/{channel_id}/messages/{message_id}",
                self._delete_channel_message,
                "bot",
            ),
            ("POST", "/channels/{channel_id}/typing", self._typing, "bot"),
            ("GET", "/guilds/{guild_id}", self._get_guild, "bot"),
            ("GET", "/guilds/{guild_id}/channels", self._get_guild_channels, "bot"),
            ("GET", "/guilds/{guild_id}/members/{user_id}", self._get_member, "bot"),
        ]
        routes = []
        for method, template, handler, auth in table:
            names: list[str] = []
            parts: list[str] = []
            literals = 0
            for segment in template.strip("/").split("/"):
                if segment.startswith("{"):
                    names.append(segment[1:-1])
                    parts.append("([^/]+)")
                else:
                    literals += 1
                    parts.append(re.escape(segment))
            regex = re.compile("/" + "/".join(parts))
            routes.append(_Route(method, template, handler, auth, regex, names, literals))
        return routes

    def _match(self, method: str, path: str) -> tuple[_Route | None, dict[str, str]]:
        best: tuple[_Route | None, dict[str, str]] = (None, {})
        for route in self._routes:
            if route.method != method:
                continue
            found = route.regex.fullmatch(path)
            if found is None:
                continue
            if best[0] is None or route.literals > best[0].literals:
                best = (route, dict(zip(route.names, found.groups(), strict=True)))
        return best

    async def _read_body(
        self, request: web.Request
    ) -> tuple[Any, list[FilePart], dict[str, str], bool]:
        """(json, files, other form fields, has_body); multipart's payload_json is the json."""
        if request.content_type == "multipart/form-data":
            files: list[FilePart] = []
            form: dict[str, str] = {}
            payload: Any = None
            reader = await request.multipart()
            async for part in reader:
                if not isinstance(part, aiohttp.BodyPartReader):
                    continue
                data = await part.read(decode=False)
                name = part.name or ""
                if part.filename is not None:
                    ctype = part.headers.get("Content-Type", "application/octet-stream")
                    files.append(FilePart(name, part.filename, ctype, bytes(data)))
                elif name == "payload_json":
                    try:
                        payload = json.loads(data)
                    except ValueError as exc:
                        raise DiscordError(
                            400, 50109, "The request body contains invalid JSON."
                        ) from exc
                else:
                    form[name] = data.decode("utf-8", "replace")
            return (payload if payload is not None else {}), files, form, True
        raw = await request.read()
        if not raw:
            return None, [], {}, False
        try:
            return json.loads(raw), [], {}, True
        except ValueError as exc:
            raise DiscordError(400, 50109, "The request body contains invalid JSON.") from exc

    async def _handle_rest(self, request: web.Request) -> web.StreamResponse:
        received = self.clock.now()
        path = "/" + request.match_info["tail"]
        method = request.method
        route, params = self._match(method, path)
        auth_header = request.headers.get("Authorization")
        self._arrivals += 1
        record = RequestRecord(
            index=self._arrivals,
            method=method,
            route=route.key if route else "",
            path=path,
            params=params,
            query=dict(request.query),
            auth=self._auth_kind(auth_header),
            audit_log_reason=request.headers.get("X-Audit-Log-Reason"),
            content_type=request.content_type if request.body_exists else None,
            json=None,
            files=[],
            form={},
            received_at=received,
        )
        headers: dict[str, str] = {}
        try:
            try:
                record.json, record.files, record.form, _ = await self._read_body(request)
            finally:
                self._validate(record, has_body=record.json is not None or bool(record.files))
            if route is None:
                self.unhandled.append(record)
                raise DiscordError(404, 0, "404: Not Found")
            if route.auth == "bot" and record.auth != "Bot":
                raise DiscordError(401, 0, "401: Unauthorized")
            self._take_fault(record)
            headers = self._apply_rate_limit(record)
            body_errors = [v for v in record.violations if v.location in ("body", "path")]
            if body_errors:
                raise DiscordError(
                    400,
                    50035,
                    "Invalid Form Body",
                    extra={"errors": {v.pointer or "_": v.message for v in body_errors}},
                )
            result = await route.handler(record)
            status = 204 if result is None else 200
            record.status, record.response = status, result
        except DiscordError as err:
            record.status, record.response = err.status, err.body()
            headers = {**headers, **err.headers}
            if err.status == 429:
                self._rate_limited.append(record)
        record.responded_at = self.clock.now()
        self.timeline.append(record)
        await self._notifier.notify()
        if record.status == 204:
            return web.Response(status=204, headers=headers)
        return _json_response(record.response, record.status, headers)

    def _auth_kind(self, header: str | None) -> str:
        if not header:
            return "none"
        scheme, _, value = header.partition(" ")
        if scheme == "Bot":
            return "Bot" if value == self.token else "Bot(invalid)"
        return scheme

    def _validate(self, record: RequestRecord, *, has_body: bool) -> None:
        if self.spec is None:
            return
        content_type = record.content_type if has_body else None
        op, errors = self.spec.validate(
            record.method, record.path, record.query, content_type, record.json, has_body
        )
        record.spec_operation = op.template if op else None
        for err in errors:
            violation = Violation(
                request_index=record.index,
                method=record.method,
                path=record.path,
                route=record.route,
                spec_route=record.spec_operation,
                location=err.location,
                pointer=err.pointer,
                message=err.message,
                validator=err.validator,
            )
            record.violations.append(violation)
            self.violations.append(violation)

    def _take_fault(self, record: RequestRecord) -> None:
        for fault in self._faults:
            if fault.route != record.route or fault.remaining <= 0:
                continue
            if fault.when is not None and not fault.when(record):
                continue
            fault.remaining -= 1
            body = dict(fault.body)
            raise DiscordError(
                fault.status,
                int(body.pop("code", 0)),
                str(body.pop("message", "")),
                headers=fault.headers,
                extra=body,
            )

    def _apply_rate_limit(self, record: RequestRecord) -> dict[str, str]:
        limit = self._rate_limits.get(record.route)
        if limit is None:
            return {}
        param = limit.bucket_param or next((p for p in _MAJOR_PARAMS if p in record.params), "")
        key = record.params.get(param, "")
        now = self.clock.now()
        hits = [t for t in limit.hits.get(key, []) if t > now - limit.window]
        limit.hits[key] = hits
        bucket = f"{record.route}:{key}"
        if len(hits) >= limit.limit:
            retry_after = max(0.001, hits[0] + limit.window - now)
            headers = self._rate_limit_headers(
                retry_after, limit=limit.limit, remaining=0, bucket=bucket
            )
            headers["Via"] = "1.1 google"
            headers["X-RateLimit-Scope"] = "user"
            raise DiscordError(
                429,
                0,
                "You are being rate limited.",
                headers=headers,
                extra={"retry_after": round(retry_after, 3), "global": False},
            )
        hits.append(now)
        reset_after = hits[0] + limit.window - now
        return self._rate_limit_headers(
            reset_after, limit=limit.limit, remaining=limit.limit - len(hits), bucket=bucket
        )

    # ------------------------------------------------------------------ REST: identity
    async def _get_me(self, record: RequestRecord) -> Any:
        return {
            **self.bot_user.payload(),
            "verified": True,
            "mfa_enabled": False,
            "locale": "en-US",
        }

    async def _get_user(self, record: RequestRecord) -> Any:
        user = self.world.users.get(int(record.params["user_id"]))
        if user is None:
            raise DiscordError(404, 10013, "Unknown User")
        return user.payload()

    async def _get_application(self, record: RequestRecord) -> Any:
        return {
            "id": str(self.application_id),
            "name": self.bot_user.username,
            "icon": None,
            "description": "Veo for Discord (emulated)",
            "summary": "",
            "type": None,
            "bot": self.bot_user.payload(),
            "bot_public": False,
            "bot_require_code_grant": False,
            "verify_key": secrets.token_hex(32),
            "flags": self.application_flags,
            "owner": self.app_owner.payload(),
            "team": None,
            "tags": [],
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "approximate_guild_count": len(self.world.guilds),
            "integration_types_config": {"0": {}, "1": {}},
        }

    async def _get_gateway(self, record: RequestRecord) -> Any:
        return {"url": self.gateway_url.rstrip("/")}

    async def _get_gateway_bot(self, record: RequestRecord) -> Any:
        return {
            "url": self.gateway_url.rstrip("/"),
            "shards": 1,
            "session_start_limit": {
                "total": 1000,
                "remaining": 999,
                "reset_after": 14_400_000,
                "max_concurrency": 1,
            },
        }

    async def _create_dm(self, record: RequestRecord) -> Any:
        body = record.json or {}
        user = self.world.users.get(int(body.get("recipient_id") or 0))
        if user is None:
            raise DiscordError(400, 50035, "Invalid Form Body")
        return self.dm_channel(user).payload()

    # ------------------------------------------------------------------ REST: commands
    def _command_scope(self, record: RequestRecord) -> dict[str, dict[str, Any]]:
        if int(record.params["application_id"]) != self.application_id:
            raise DiscordError(403, 50001, "Missing Access")
        guild_id = record.params.get("guild_id")
        if guild_id is None:
            return self.global_commands
        if int(guild_id) not in self.world.guilds:
            raise DiscordError(403, 50001, "Missing Access")
        return self.guild_commands.setdefault(int(guild_id), {})

    def _store_command(
        self, scope: dict[str, dict[str, Any]], body: dict[str, Any], guild_id: str | None
    ) -> dict[str, Any]:
        previous = scope.get(body["name"])
        command: dict[str, Any] = {
            "id": previous["id"] if previous else str(self.new_id()),
            "application_id": str(self.application_id),
            "version": str(self.new_id()),
            "type": body.get("type") or 1,
            "name": body["name"],
            "description": body.get("description") or "",
            "options": body.get("options") or [],
            "default_member_permissions": _opt_str(body.get("default_member_permissions")),
            "nsfw": bool(body.get("nsfw", False)),
            "contexts": body.get("contexts"),
            "integration_types": body.get("integration_types") or [0],
            "name_localizations": body.get("name_localizations"),
            "description_localizations": body.get("description_localizations"),
        }
        if guild_id is not None:
            command["guild_id"] = guild_id
        scope[body["name"]] = command
        return command

    async def _get_commands(self, record: RequestRecord) -> Any:
        return list(self._command_scope(record).values())

    async def _put_commands(self, record: RequestRecord) -> Any:
        scope = self._command_scope(record)
        old = dict(scope)
        scope.clear()
        result = []
        for body in record.json or []:
            if body["name"] in old:
                scope[body["name"]] = old[body["name"]]
            result.append(self._store_command(scope, body, record.params.get("guild_id")))
        return result

    async def _post_command(self, record: RequestRecord) -> Any:
        return self._store_command(
            self._command_scope(record), record.json or {}, record.params.get("guild_id")
        )

    async def _delete_command(self, record: RequestRecord) -> Any:
        scope = self._command_scope(record)
        for name, command in list(scope.items()):
            if command["id"] == record.params["command_id"]:
                del scope[name]
                return None
        raise DiscordError(404, 10063, "Unknown application command")

    # ------------------------------------------------------------------ REST: channels
    def _channel_or_error(self, channel_id: str) -> tuple[Channel, Guild | None]:
        found = self.world.channel(int(channel_id))
        if found is None:
            raise DiscordError(404, 10003, "Unknown Channel")
        channel, guild = found
        if guild is not None and not self.app_permissions(channel.id) & Permissions.VIEW_CHANNEL:
            raise DiscordError(403, 50001, "Missing Access")
        return channel, guild

    def _require(self, channel: Channel, bits: int) -> None:
        if channel.guild_id is None:
            return
        if self.app_permissions(channel.id) & bits != bits:
            raise DiscordError(403, 50013, "Missing Permissions")

    def _message_or_error(self, channel: Channel, message_id: str) -> StoredMessage:
        message = self.messages.get(int(message_id)) if message_id.isdigit() else None
        if (
            message is None
            or message.deleted
            or message.channel_id != channel.id
            or message.ephemeral
        ):
            raise DiscordError(404, 10008, "Unknown Message")
        return message

    async def _get_channel(self, record: RequestRecord) -> Any:
        channel, _ = self._channel_or_error(record.params["channel_id"])
        return channel.payload()

    async def _list_messages(self, record: RequestRecord) -> Any:
        channel, _ = self._channel_or_error(record.params["channel_id"])
        self._require(channel, Permissions.READ_MESSAGE_HISTORY)
        limit = int(record.query.get("limit", 50))
        found = [m for m in self.channel_messages(channel.id) if not m.ephemeral]
        found.sort(key=lambda m: m.id, reverse=True)
        return [self._render(m) for m in found[:limit]]

    async def _create_channel_message(self, record: RequestRecord) -> Any:
        channel, guild = self._channel_or_error(record.params["channel_id"])
        needed = Permissions.SEND_MESSAGES | (Permissions.ATTACH_FILES if record.files else 0)
        self._require(channel, needed)
        self._check_upload_limit(record.files, self.filesize_limit(channel.id))
        body = record.json or {}
        reference = body.get("message_reference")
        if reference and reference.get("message_id") is not None:
            target = self.messages.get(int(reference["message_id"]))
            if target is None or target.deleted:
                if reference.get("fail_if_not_exists", True):
                    raise DiscordError(
                        400,
                        50035,
                        "Invalid Form Body",
                        extra={"errors": {"message_reference": "Unknown message"}},
                    )
                reference = None
        message = self._new_message(channel, guild, self.bot_user, body, record.files)
        if reference:
            message.type = 19
            message.message_reference = {
                "type": 0,
                "message_id": str(reference["message_id"]),
                "channel_id": str(reference.get("channel_id") or channel.id),
                **({"guild_id": str(guild.id)} if guild else {}),
            }
        await self._broadcast_message("MESSAGE_CREATE", message)
        return self._render(message)

    async def _get_channel_message(self, record: RequestRecord) -> Any:
        channel, _ = self._channel_or_error(record.params["channel_id"])
        self._require(channel, Permissions.READ_MESSAGE_HISTORY)
        return self._render(self._message_or_error(channel, record.params["message_id"]))

    async def _edit_channel_message(self, record: RequestRecord) -> Any:
        channel, _ = self._channel_or_error(record.params["channel_id"])
        message = self._message_or_error(channel, record.params["message_id"])
        if message.author.id != self.bot_user.id:
            raise DiscordError(403, 50005, "Cannot edit a message authored by another user")
        if record.files:
            self._require(channel, Permissions.ATTACH_FILES)
        self._check_upload_limit(record.files, self.filesize_limit(channel.id))
        self._apply_edit(message, record.json or {}, record.files)
        await self._broadcast_message("MESSAGE_UPDATE", message)
        return self._render(message)

    async def _delete_channel_message(self, record: RequestRecord) -> Any:
        channel, _ = self._channel_or_error(record.params["channel_id"])
        message = self._message_or_error(channel, record.params["message_id"])
        if message.author.id != self.bot_user.id:
            self._require(channel, Permissions.MANAGE_MESSAGES)
        message.deleted = True
        await self._broadcast_message("MESSAGE_DELETE", message)
        return None

    async def _typing(self, record: RequestRecord) -> Any:
        channel, _ = self._channel_or_error(record.params["channel_id"])
        self._require(channel, Permissions.SEND_MESSAGES)
        return None

    async def _get_guild(self, record: RequestRecord) -> Any:
        guild = self._guild_or_error(record.params["guild_id"])
        payload = guild.create_payload(self.clock.iso())
        for key in ("members", "channels", "threads", "presences", "voice_states", "joined_at"):
            payload.pop(key, None)
        return payload

    async def _get_guild_channels(self, record: RequestRecord) -> Any:
        guild = self._guild_or_error(record.params["guild_id"])
        return [c.payload() for c in guild.channels.values()]

    async def _get_member(self, record: RequestRecord) -> Any:
        guild = self._guild_or_error(record.params["guild_id"])
        member = guild.members.get(int(record.params["user_id"]))
        if member is None:
            raise DiscordError(404, 10007, "Unknown Member")
        return member.payload()

    def _guild_or_error(self, guild_id: str) -> Guild:
        guild = self.world.guilds.get(int(guild_id))
        if guild is None:
            raise DiscordError(404, 10004, "Unknown Guild")
        return guild

    # ------------------------------------------------------------------ REST: interactions
    def _interaction_for_webhook(self, record: RequestRecord) -> InteractionHandle:
        handle = self.interactions.get(record.params["interaction_token"])
        if handle is None or int(record.params["application_id"]) != self.application_id:
            raise DiscordError(401, 50027, "Invalid Webhook Token")
        if self.clock.now() > handle.expires_at:
            raise DiscordError(401, 50027, "Invalid Webhook Token")
        return handle

    async def _interaction_callback(self, record: RequestRecord) -> Any:
        handle = self.interactions.get(record.params["interaction_token"])
        if handle is None or str(handle.id) != record.params["interaction_id"]:
            raise DiscordError(404, 10062, "Unknown interaction")
        if handle.acknowledged:
            raise DiscordError(400, 40060, "Interaction has already been acknowledged.")
        if self.clock.now() - handle.sent_at > CALLBACK_DEADLINE:
            raise DiscordError(404, 10062, "Unknown interaction")
        body = record.json or {}
        kind = int(body.get("type", 0))
        if kind not in ALLOWED_CALLBACKS.get(handle.type, set()):
            raise DiscordError(
                400,
                50035,
                "Invalid Form Body",
                extra={"errors": {"type": f"callback type {kind} not valid here"}},
            )
        if kind in (7, 6) and handle.source_message_id is None:
            raise DiscordError(400, 40004, "Interaction has no message to update")
        data = body.get("data") or {}
        self._check_upload_limit(record.files, self.filesize_limit(handle.channel.id))
        message: StoredMessage | None = None
        if kind == 4:
            message = self._interaction_message(handle, data, record.files, loading=False)
        elif kind == 5:
            message = self._interaction_message(handle, data, [], loading=True)
        elif kind in (6, 7):
            handle.original_message_id = handle.source_message_id
            if kind == 7:
                message = self.message(handle.source_message_id or 0)
                self._apply_edit(message, data, record.files)
                await self._broadcast_message("MESSAGE_UPDATE", message)
        elif kind == 9:
            handle.modal = data
        elif kind == 8:
            handle.autocomplete_choices = data.get("choices", [])
        if message is not None and kind in (4, 5):
            await self._broadcast_message("MESSAGE_CREATE", message)
        handle.callback = record
        handle.callback_type = kind
        handle.callback_at = record.received_at
        handle._acknowledged.set()
        if not _truthy(record.query.get("with_response")):
            return None
        interaction: dict[str, Any] = {"id": str(handle.id), "type": handle.type}
        response: dict[str, Any] = {"interaction": interaction}
        if kind in (4, 5, 7) and handle.original_message_id is not None:
            original = self.message(handle.original_message_id)
            interaction["response_message_id"] = str(original.id)
            interaction["response_message_loading"] = kind == 5
            interaction["response_message_ephemeral"] = original.ephemeral
            if kind in (4, 7):
                response["resource"] = {"type": kind, "message": self._render(original)}
        return response

    def _interaction_message(
        self,
        handle: InteractionHandle,
        data: dict[str, Any],
        files: list[FilePart],
        *,
        loading: bool,
    ) -> StoredMessage:
        message = self._new_message(handle.channel, handle.guild, self.bot_user, data, files)
        if loading:
            message.flags |= LOADING
        message.webhook_id = self.application_id
        message.application_id = self.application_id
        message.type = 20 if handle.type == APPLICATION_COMMAND else 0
        message.interaction_metadata = {
            "id": str(handle.id),
            "type": handle.type,
            "user": handle.user.payload(),
            "authorizing_integration_owners": handle.payload.get(
                "authorizing_integration_owners", {}
            ),
        }
        handle.original_message_id = message.id
        return message

    def _webhook_target(self, record: RequestRecord, handle: InteractionHandle) -> StoredMessage:
        message_id = record.params.get("message_id")
        if message_id is None:  # @original
            if handle.original_message_id is None:
                raise DiscordError(404, 10008, "Unknown Message")
            message = self.messages[handle.original_message_id]
        else:
            found = self.messages.get(int(message_id)) if message_id.isdigit() else None
            if found is None or found.interaction_metadata is None:
                raise DiscordError(404, 10008, "Unknown Message")
            if found.interaction_metadata.get("id") != str(handle.id):
                raise DiscordError(404, 10008, "Unknown Message")
            message = found
        if message.deleted:
            raise DiscordError(404, 10008, "Unknown Message")
        return message

    async def _get_webhook_message(self, record: RequestRecord) -> Any:
        handle = self._interaction_for_webhook(record)
        return self._render(self._webhook_target(record, handle))

    async def _edit_webhook_message(self, record: RequestRecord) -> Any:
        handle = self._interaction_for_webhook(record)
        message = self._webhook_target(record, handle)
        self._check_upload_limit(record.files, self.filesize_limit(message.channel_id))
        self._apply_edit(message, record.json or {}, record.files)
        if not message.ephemeral:
            await self._broadcast_message("MESSAGE_UPDATE", message)
        return self._render(message)

    async def _delete_webhook_message(self, record: RequestRecord) -> Any:
        handle = self._interaction_for_webhook(record)
        message = self._webhook_target(record, handle)
        message.deleted = True
        if not message.ephemeral:
            await self._broadcast_message("MESSAGE_DELETE", message)
        return None

    async def _followup(self, record: RequestRecord) -> Any:
        handle = self._interaction_for_webhook(record)
        if not handle.acknowledged:
            raise DiscordError(404, 10015, "Unknown Webhook")
        self._check_upload_limit(record.files, self.filesize_limit(handle.channel.id))
        body = record.json or {}
        original = self.messages.get(handle.original_message_id or 0)
        if original is not None and original.loading and not original.deleted:
            # Discord turns the first followup after a "thinking" defer into the edit of that
            # deferred message rather than a second message (see README).
            self._apply_edit(original, body, record.files)
            message = original
            event = "MESSAGE_UPDATE"
        else:
            message = self._interaction_message(handle, body, record.files, loading=False)
            message.type = 0
            handle.original_message_id = original.id if original else message.id
            event = "MESSAGE_CREATE"
        if not message.ephemeral:
            await self._broadcast_message(event, message)
        if not _truthy(record.query.get("wait")):
            return None
        return self._render(message)

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
        if message.message_reference:
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
        for session in self._gateway.live_sessions:
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
        session = self._gateway.live_sessions[0]
        handle.sent_at = self.clock.now()
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


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true")


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)
