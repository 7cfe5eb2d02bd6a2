"""The REST half of the emulator: Discord's routes under /api/v10 as discord.py 2.7.1 uses them.

Every request goes through :meth:`RestApi.handle`: parse (JSON or multipart with ``payload_json``),
validate against the OpenAPI spec, check auth, apply injected faults and emulated rate limits,
run the route's handler, then record the exchange in the emulator's timeline.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from .interactions import (
    ALLOWED_CALLBACKS,
    APPLICATION_COMMAND,
    CALLBACK_DEADLINE,
    InteractionHandle,
)
from .messages import LOADING, StoredMessage
from .timeline import DiscordError, FilePart, RequestRecord, Violation
from .world import Channel, Guild, Permissions

if TYPE_CHECKING:
    from .emulator import DiscordEmulator

Handler = Callable[[RequestRecord], Awaitable[Any]]
_MAJOR_PARAMS = ("interaction_token", "channel_id", "guild_id", "application_id")


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    # Exactly "application/json": discord.py's json_or_text() compares the header verbatim, and
    # aiohttp's json_response() would append "; charset=utf-8".
    merged = {"Content-Type": "application/json", **(headers or {})}
    return web.Response(body=json.dumps(data).encode(), status=status, headers=merged)


@dataclass
class Route:
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


class RestApi:
    """Routes and handlers; state lives on the emulator."""

    def __init__(self, emu: DiscordEmulator) -> None:
        self.emu = emu
        self.routes = self._build_routes()

    def _build_routes(self) -> list[Route]:
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
            routes.append(Route(method, template, handler, auth, regex, names, literals))
        return routes

    def _match(self, method: str, path: str) -> tuple[Route | None, dict[str, str]]:
        best: tuple[Route | None, dict[str, str]] = (None, {})
        for route in self.routes:
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

    async def handle(self, request: web.Request) -> web.StreamResponse:
        received = self.emu.clock.now()
        path = "/" + request.match_info["tail"]
        method = request.method
        route, params = self._match(method, path)
        auth_header = request.headers.get("Authorization")
        self.emu._arrivals += 1
        record = RequestRecord(
            index=self.emu._arrivals,
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
                self.emu.unhandled.append(record)
                raise DiscordError(404, 0, "404: Not Found")
            hold = self.emu._take_hold(record)
            if hold is not None and not await hold.park(record):
                raise _Dropped
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
                self.emu._rate_limited.append(record)
        except _Dropped:
            # A hold dropped it: recorded with status 0, never acted on, connection cut.
            record.responded_at = self.emu.clock.now()
            self.emu.timeline.append(record)
            await self.emu._notifier.notify()
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)
        record.responded_at = self.emu.clock.now()
        self.emu.timeline.append(record)
        await self.emu._notifier.notify()
        if record.status == 204:
            return web.Response(status=204, headers=headers)
        return json_response(record.response, record.status, headers)

    def _auth_kind(self, header: str | None) -> str:
        if not header:
            return "none"
        scheme, _, value = header.partition(" ")
        if scheme == "Bot":
            return "Bot" if value == self.emu.token else "Bot(invalid)"
        return scheme

    def _validate(self, record: RequestRecord, *, has_body: bool) -> None:
        if self.emu.spec is None:
            return
        content_type = record.content_type if has_body else None
        op, errors = self.emu.spec.validate(
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
            self.emu.violations.append(violation)

    def _take_fault(self, record: RequestRecord) -> None:
        for fault in self.emu._faults:
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
        limit = self.emu._rate_limits.get(record.route)
        if limit is None:
            return {}
        param = limit.bucket_param or next((p for p in _MAJOR_PARAMS if p in record.params), "")
        key = record.params.get(param, "")
        now = self.emu.clock.now()
        hits = [t for t in limit.hits.get(key, []) if t > now - limit.window]
        limit.hits[key] = hits
        bucket = f"{record.route}:{key}"
        if len(hits) >= limit.limit:
            retry_after = max(0.001, hits[0] + limit.window - now)
            headers = self.emu._rate_limit_headers(
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
        return self.emu._rate_limit_headers(
            reset_after, limit=limit.limit, remaining=limit.limit - len(hits), bucket=bucket
        )

    # ------------------------------------------------------------------ REST: identity
    async def _get_me(self, record: RequestRecord) -> Any:
        return {
            **self.emu.bot_user.payload(),
            "verified": True,
            "mfa_enabled": False,
            "locale": "en-US",
        }

    async def _get_user(self, record: RequestRecord) -> Any:
        user = self.emu.world.users.get(int(record.params["user_id"]))
        if user is None:
            raise DiscordError(404, 10013, "Unknown User")
        return user.payload()

    async def _get_application(self, record: RequestRecord) -> Any:
        return {
            "id": str(self.emu.application_id),
            "name": self.emu.bot_user.username,
            "icon": None,
            "description": "Veo for Discord (emulated)",
            "summary": "",
            "type": None,
            "bot": self.emu.bot_user.payload(),
            "bot_public": False,
            "bot_require_code_grant": False,
            "verify_key": secrets.token_hex(32),
            "flags": self.emu.application_flags,
            "owner": self.emu.app_owner.payload(),
            "team": None,
            "tags": [],
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "approximate_guild_count": len(self.emu.world.guilds),
            "integration_types_config": {"0": {}, "1": {}},
        }

    async def _get_gateway(self, record: RequestRecord) -> Any:
        return {"url": self.emu.gateway_url.rstrip("/")}

    async def _get_gateway_bot(self, record: RequestRecord) -> Any:
        return {
            "url": self.emu.gateway_url.rstrip("/"),
            "shards": self.emu.shard_count,
            "session_start_limit": {
                "total": 1000,
                "remaining": 999,
                "reset_after": 14_400_000,
                "max_concurrency": self.emu._gateway.max_concurrency,
            },
        }

    async def _create_dm(self, record: RequestRecord) -> Any:
        body = record.json or {}
        user = self.emu.world.users.get(int(body.get("recipient_id") or 0))
        if user is None:
            raise DiscordError(400, 50035, "Invalid Form Body")
        return self.emu.dm_channel(user).payload()

    # ------------------------------------------------------------------ REST: commands
    def _command_scope(self, record: RequestRecord) -> dict[str, dict[str, Any]]:
        if int(record.params["application_id"]) != self.emu.application_id:
            raise DiscordError(403, 50001, "Missing Access")
        guild_id = record.params.get("guild_id")
        if guild_id is None:
            return self.emu.global_commands
        if int(guild_id) not in self.emu.world.guilds:
            raise DiscordError(403, 50001, "Missing Access")
        return self.emu.guild_commands.setdefault(int(guild_id), {})

    def _store_command(
        self, scope: dict[str, dict[str, Any]], body: dict[str, Any], guild_id: str | None
    ) -> dict[str, Any]:
        previous = scope.get(body["name"])
        command: dict[str, Any] = {
            "id": previous["id"] if previous else str(self.emu.new_id()),
            "application_id": str(self.emu.application_id),
            "version": str(self.emu.new_id()),
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
        found = self.emu.world.channel(int(channel_id))
        if found is None:
            raise DiscordError(404, 10003, "Unknown Channel")
        channel, guild = found
        if (
            guild is not None
            and not self.emu.app_permissions(channel.id) & Permissions.VIEW_CHANNEL
        ):
            raise DiscordError(403, 50001, "Missing Access")
        return channel, guild

    def _require(self, channel: Channel, bits: int) -> None:
        if channel.guild_id is None:
            return
        if self.emu.app_permissions(channel.id) & bits != bits:
            raise DiscordError(403, 50013, "Missing Permissions")

    def _message_or_error(self, channel: Channel, message_id: str) -> StoredMessage:
        message = self.emu.messages.get(int(message_id)) if message_id.isdigit() else None
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
        found = [m for m in self.emu.channel_messages(channel.id) if not m.ephemeral]
        found.sort(key=lambda m: m.id, reverse=True)
        return [self.emu._render(m) for m in found[:limit]]

    async def _create_channel_message(self, record: RequestRecord) -> Any:
        channel, guild = self._channel_or_error(record.params["channel_id"])
        needed = Permissions.SEND_MESSAGES | (Permissions.ATTACH_FILES if record.files else 0)
        self._require(channel, needed)
        self.emu._check_upload_limit(record.files, self.emu.filesize_limit(channel.id))
        body = record.json or {}
        existing = self.emu._deduplicated(self.emu.bot_user.id, body)
        if existing is not None:
            return self.emu._render(existing)
        reference = body.get("message_reference")
        if reference and reference.get("message_id") is not None:
            target = self.emu.messages.get(int(reference["message_id"]))
            if target is None or target.deleted:
                if reference.get("fail_if_not_exists", True):
                    raise DiscordError(
                        400,
                        50035,
                        "Invalid Form Body",
                        extra={"errors": {"message_reference": "Unknown message"}},
                    )
                reference = None
        message = self.emu._new_message(channel, guild, self.emu.bot_user, body, record.files)
        if reference:
            message.type = 19
            message.message_reference = {
                "type": 0,
                "message_id": str(reference["message_id"]),
                "channel_id": str(reference.get("channel_id") or channel.id),
                **({"guild_id": str(guild.id)} if guild else {}),
            }
        self.emu._remember_nonce(self.emu.bot_user.id, body, message)
        await self.emu._broadcast_message("MESSAGE_CREATE", message)
        return self.emu._render(message)

    async def _get_channel_message(self, record: RequestRecord) -> Any:
        channel, _ = self._channel_or_error(record.params["channel_id"])
        self._require(channel, Permissions.READ_MESSAGE_HISTORY)
        return self.emu._render(self._message_or_error(channel, record.params["message_id"]))

    async def _edit_channel_message(self, record: RequestRecord) -> Any:
        channel, _ = self._channel_or_error(record.params["channel_id"])
        message = self._message_or_error(channel, record.params["message_id"])
        if message.author.id != self.emu.bot_user.id:
            raise DiscordError(403, 50005, "Cannot edit a message authored by another user")
        if record.files:
            self._require(channel, Permissions.ATTACH_FILES)
        self.emu._check_upload_limit(record.files, self.emu.filesize_limit(channel.id))
        self.emu._apply_edit(message, record.json or {}, record.files)
        await self.emu._broadcast_message("MESSAGE_UPDATE", message)
        return self.emu._render(message)

    async def _delete_channel_message(self, record: RequestRecord) -> Any:
        channel, _ = self._channel_or_error(record.params["channel_id"])
        message = self._message_or_error(channel, record.params["message_id"])
        if message.author.id != self.emu.bot_user.id:
            self._require(channel, Permissions.MANAGE_MESSAGES)
        message.deleted = True
        await self.emu._broadcast_message("MESSAGE_DELETE", message)
        return None

    async def _typing(self, record: RequestRecord) -> Any:
        channel, _ = self._channel_or_error(record.params["channel_id"])
        self._require(channel, Permissions.SEND_MESSAGES)
        return None

    async def _get_guild(self, record: RequestRecord) -> Any:
        guild = self._guild_or_error(record.params["guild_id"])
        payload = guild.create_payload(self.emu.clock.iso())
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
        guild = self.emu.world.guilds.get(int(guild_id))
        if guild is None:
            raise DiscordError(404, 10004, "Unknown Guild")
        return guild

    # ------------------------------------------------------------------ REST: interactions
    def _interaction_for_webhook(self, record: RequestRecord) -> InteractionHandle:
        handle = self.emu.interactions.get(record.params["interaction_token"])
        if handle is None or int(record.params["application_id"]) != self.emu.application_id:
            raise DiscordError(401, 50027, "Invalid Webhook Token")
        if self.emu.clock.now() > handle.expires_at:
            raise DiscordError(401, 50027, "Invalid Webhook Token")
        return handle

    async def _interaction_callback(self, record: RequestRecord) -> Any:
        handle = self.emu.interactions.get(record.params["interaction_token"])
        if handle is None or str(handle.id) != record.params["interaction_id"]:
            raise DiscordError(404, 10062, "Unknown interaction")
        if handle.acknowledged:
            raise DiscordError(400, 40060, "Interaction has already been acknowledged.")
        if self.emu.clock.now() - handle.sent_at > CALLBACK_DEADLINE:
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
        self.emu._check_upload_limit(record.files, self.emu.filesize_limit(handle.channel.id))
        message: StoredMessage | None = None
        if kind == 4:
            message = self._interaction_message(handle, data, record.files, loading=False)
        elif kind == 5:
            message = self._interaction_message(handle, data, [], loading=True)
        elif kind in (6, 7):
            handle.original_message_id = handle.source_message_id
            if kind == 7:
                message = self.emu.message(handle.source_message_id or 0)
                self.emu._apply_edit(message, data, record.files)
                await self.emu._broadcast_message("MESSAGE_UPDATE", message)
        elif kind == 9:
            handle.modal = data
        elif kind == 8:
            handle.autocomplete_choices = data.get("choices", [])
        if message is not None and kind in (4, 5):
            await self.emu._broadcast_message("MESSAGE_CREATE", message)
        handle.callback = record
        handle.callback_type = kind
        handle.callback_at = record.received_at
        handle._acknowledged.set()
        if not _truthy(record.query.get("with_response")):
            return None
        interaction: dict[str, Any] = {"id": str(handle.id), "type": handle.type}
        response: dict[str, Any] = {"interaction": interaction}
        if kind in (4, 5, 7) and handle.original_message_id is not None:
            original = self.emu.message(handle.original_message_id)
            interaction["response_message_id"] = str(original.id)
            interaction["response_message_loading"] = kind == 5
            interaction["response_message_ephemeral"] = original.ephemeral
            if kind in (4, 7):
                response["resource"] = {"type": kind, "message": self.emu._render(original)}
        return response

    def _interaction_message(
        self,
        handle: InteractionHandle,
        data: dict[str, Any],
        files: list[FilePart],
        *,
        loading: bool,
    ) -> StoredMessage:
        message = self.emu._new_message(
            handle.channel, handle.guild, self.emu.bot_user, data, files
        )
        if loading:
            message.flags |= LOADING
        message.webhook_id = self.emu.application_id
        message.application_id = self.emu.application_id
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
            message = self.emu.messages[handle.original_message_id]
        else:
            found = self.emu.messages.get(int(message_id)) if message_id.isdigit() else None
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
        return self.emu._render(self._webhook_target(record, handle))

    async def _edit_webhook_message(self, record: RequestRecord) -> Any:
        handle = self._interaction_for_webhook(record)
        message = self._webhook_target(record, handle)
        self.emu._check_upload_limit(record.files, self.emu.filesize_limit(message.channel_id))
        self.emu._apply_edit(message, record.json or {}, record.files)
        if not message.ephemeral:
            await self.emu._broadcast_message("MESSAGE_UPDATE", message)
        return self.emu._render(message)

    async def _delete_webhook_message(self, record: RequestRecord) -> Any:
        handle = self._interaction_for_webhook(record)
        message = self._webhook_target(record, handle)
        message.deleted = True
        if not message.ephemeral:
            await self.emu._broadcast_message("MESSAGE_DELETE", message)
        return None

    async def _followup(self, record: RequestRecord) -> Any:
        handle = self._interaction_for_webhook(record)
        if not handle.acknowledged:
            raise DiscordError(404, 10015, "Unknown Webhook")
        self.emu._check_upload_limit(record.files, self.emu.filesize_limit(handle.channel.id))
        body = record.json or {}
        original = self.emu.messages.get(handle.original_message_id or 0)
        if original is not None and original.loading and not original.deleted:
            # Discord turns the first followup after a "thinking" defer into the edit of that
            # deferred message rather than a second message (see README).
            self.emu._apply_edit(original, body, record.files)
            message = original
            event = "MESSAGE_UPDATE"
        else:
            message = self._interaction_message(handle, body, record.files, loading=False)
            message.type = 0
            handle.original_message_id = original.id if original else message.id
            event = "MESSAGE_CREATE"
        if not message.ephemeral:
            await self.emu._broadcast_message(event, message)
        if not _truthy(record.query.get("wait")):
            return None
        return self.emu._render(message)


class _Dropped(Exception):
    """A `RequestHold` dropped the request: no answer, no effect."""


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true")


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)
