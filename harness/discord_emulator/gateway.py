"""The websocket gateway: HELLO, IDENTIFY/RESUME, heartbeats and event dispatch.

Frames are plain JSON text: discord.py only decompresses *binary* frames, so the
``compress=zlib-stream`` in its query can be ignored. One :class:`GatewaySession` outlives its
websocket so that a RESUME on a new connection replays what the bot missed.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from .timeline import GatewayFrame
from .world import Guild, Intents

if TYPE_CHECKING:
    from .emulator import DiscordEmulator

OP_DISPATCH = 0
OP_HEARTBEAT = 1
OP_IDENTIFY = 2
OP_PRESENCE_UPDATE = 3
OP_RESUME = 6
OP_RECONNECT = 7
OP_REQUEST_GUILD_MEMBERS = 8
OP_INVALID_SESSION = 9
OP_HELLO = 10
OP_HEARTBEAT_ACK = 11

CLOSE_AUTHENTICATION_FAILED = 4004
CLOSE_INVALID_SHARD = 4010
CLOSE_DISALLOWED_INTENTS = 4014

# Application flags telling the bot which privileged intents it was granted (the *_LIMITED
# variants are what an unverified bot in < 100 servers has).
_INTENT_FLAGS = {
    Intents.GUILD_PRESENCES: 1 << 13,
    Intents.GUILD_MEMBERS: 1 << 15,
    Intents.MESSAGE_CONTENT: 1 << 19,
}


def shard_of(guild_id: int | None, shard_count: int) -> int:
    """Discord's routing: a guild's events go to shard `(guild_id >> 22) % shard_count`; DMs
    (no guild) to shard 0."""
    return 0 if guild_id is None else (guild_id >> 22) % shard_count


@dataclass
class GatewaySession:
    session_id: str
    intents: int
    identify: dict[str, Any]
    seq: int = 0
    sent: list[dict[str, Any]] = field(default_factory=list)
    ws: web.WebSocketResponse | None = None
    # `shard: [id, count]` from IDENTIFY; a session without one is the whole bot (0 of 1).
    shard_id: int = 0
    shard_count: int = 1

    def has_intent(self, bit: int) -> bool:
        return bool(self.intents & bit)

    def receives(self, guild_id: int | None) -> bool:
        """Whether this session's shard carries events of the guild (None: a DM)."""
        return shard_of(guild_id, self.shard_count) == self.shard_id


class Gateway:
    """Serves the gateway websocket for one emulator."""

    def __init__(
        self,
        emu: DiscordEmulator,
        heartbeat_interval_ms: int,
        *,
        max_concurrency: int = 1,
        identify_interval: float | None = None,
    ) -> None:
        self.emu = emu
        self.heartbeat_interval_ms = heartbeat_interval_ms
        # Discord's session-start rule: one IDENTIFY per bucket (shard id % max_concurrency)
        # per `identify_interval` seconds of the emulator clock (5 on Discord; None: not
        # enforced, so tests that restart a bot at once need not wait).
        self.max_concurrency = max_concurrency
        self.identify_interval = identify_interval
        self.last_identify: dict[int, float] = {}  # bucket -> emulator time of the last one
        self.identify_refusals = 0  # IDENTIFYs answered op 9 for coming too soon
        self.sessions: dict[str, GatewaySession] = {}
        self.sockets: set[web.WebSocketResponse] = set()
        self.heartbeats = 0
        # While true the gateway is "down": upgrades are answered 503 (as Discord's edge does in
        # an outage) and counted, so a test can wait until the bot has tried and failed.
        self.refusing = False
        self.refusals = 0
        # While cleared, an accepted connection gets no HELLO: the client sits "connecting".
        self.hello_allowed = asyncio.Event()
        self.hello_allowed.set()
        self.held = 0

    @property
    def live_sessions(self) -> list[GatewaySession]:
        return [s for s in self.sessions.values() if s.ws is not None and not s.ws.closed]

    async def _log(self, direction: str, frame: dict[str, Any]) -> None:
        self.emu.gateway_log.append(
            GatewayFrame(
                direction=direction,
                op=frame.get("op"),
                event=frame.get("t"),
                seq=frame.get("s"),
                data=frame.get("d"),
                at=self.emu.clock.now(),
            )
        )
        await self.emu._notifier.notify()

    async def _send(self, ws: web.WebSocketResponse, frame: dict[str, Any]) -> None:
        if ws.closed:
            return
        await ws.send_str(json.dumps(frame))
        await self._log("send", frame)

    async def dispatch(self, session: GatewaySession, event: str, data: dict[str, Any]) -> None:
        session.seq += 1
        frame = {"op": OP_DISPATCH, "t": event, "s": session.seq, "d": data}
        session.sent.append(frame)
        if session.ws is not None:
            await self._send(session.ws, frame)

    def sessions_for(self, guild_id: int | None) -> list[GatewaySession]:
        """The live sessions on the shard that carries this guild (None: DMs, shard 0)."""
        return [s for s in self.live_sessions if s.receives(guild_id)]

    async def broadcast(
        self, event: str, data: dict[str, Any], *, guild_id: int | None, intent: int = 0
    ) -> None:
        """Send a guild's (or with None, a DM's) event to every connected session on its shard
        that subscribed to ``intent`` (0 = always)."""
        for session in self.sessions_for(guild_id):
            if intent and not session.has_intent(intent):
                continue
            await self.dispatch(session, event, data)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.refusing:
            self.refusals += 1
            await self.emu._notifier.notify()
            return web.Response(status=503, text="gateway unavailable (emulator refusing)")
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        self.sockets.add(ws)
        session: GatewaySession | None = None
        try:
            if not self.hello_allowed.is_set():
                self.held += 1
                await self.emu._notifier.notify()
                await self.hello_allowed.wait()
            await self._send(
                ws, {"op": OP_HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}}
            )
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                await self._log("recv", frame)
                op = frame.get("op")
                data = frame.get("d")
                if op == OP_HEARTBEAT:
                    self.heartbeats += 1
                    await self._send(ws, {"op": OP_HEARTBEAT_ACK})
                elif op == OP_IDENTIFY:
                    session = await self._identify(ws, data)
                elif op == OP_RESUME:
                    session = await self._resume(ws, data)
                elif op == OP_REQUEST_GUILD_MEMBERS and session is not None:
                    await self._members_chunk(session, data)
                # OP_PRESENCE_UPDATE and voice ops need no answer.
        finally:
            self.sockets.discard(ws)
            if session is not None and session.ws is ws:
                session.ws = None
            await self.emu._notifier.notify()
        return ws

    async def _identify(
        self, ws: web.WebSocketResponse, data: dict[str, Any]
    ) -> GatewaySession | None:
        emu = self.emu
        if data.get("token") != emu.token:
            await ws.close(code=CLOSE_AUTHENTICATION_FAILED, message=b"Authentication failed.")
            return None
        intents = int(data.get("intents", 0))
        refused = intents & Intents.PRIVILEGED & ~emu.privileged_intents
        if refused:
            await ws.close(code=CLOSE_DISALLOWED_INTENTS, message=b"Disallowed intent(s).")
            return None
        shard_id, shard_count = data.get("shard") or (0, 1)
        if not (isinstance(shard_id, int) and isinstance(shard_count, int)) or not (
            0 <= shard_id < shard_count
        ):
            await ws.close(code=CLOSE_INVALID_SHARD, message=b"Invalid shard.")
            return None
        if self._too_soon(shard_id):
            # As Discord: the session is not started; the client waits and identifies again.
            self.identify_refusals += 1
            await self._send(ws, {"op": OP_INVALID_SESSION, "d": False})
            await emu._notifier.notify()
            return None
        session = GatewaySession(
            secrets.token_hex(16),
            intents,
            data,
            ws=ws,
            shard_id=shard_id,
            shard_count=shard_count,
        )
        self.sessions[session.session_id] = session
        ready: dict[str, Any] = {
            "v": 10,
            "user": {**emu.bot_user.payload(), "verified": True, "mfa_enabled": False},
            "guilds": [
                {"id": str(g), "unavailable": True} for g in emu.world.guilds if session.receives(g)
            ],
            "session_id": session.session_id,
            "session_type": "normal",
            "resume_gateway_url": emu.gateway_url,
            "application": {"id": str(emu.application_id), "flags": emu.application_flags},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["rotterdam"],
            "_trace": ["discord-emulator"],
        }
        if "shard" in data:
            ready["shard"] = data["shard"]
        await self.dispatch(session, "READY", ready)
        for guild in emu.world.guilds.values():
            if session.receives(guild.id):
                await self.guild_create(session, guild, joined=False)
        emu.identify_count += 1
        await emu._notifier.notify()
        return session

    def _too_soon(self, shard_id: int) -> bool:
        """Whether this IDENTIFY breaks the session-start rule; if not, it takes the slot."""
        bucket = shard_id % max(1, self.max_concurrency)
        now = self.emu.clock.now()
        last = self.last_identify.get(bucket)
        interval = self.identify_interval
        if interval is not None and last is not None and now - last < interval:
            return True
        self.last_identify[bucket] = now
        return False

    async def guild_create(self, session: GatewaySession, guild: Guild, *, joined: bool) -> None:
        payload = guild.create_payload(self.emu.clock.iso())
        if joined:
            # discord.py tells a join (on_guild_join) from a guild becoming available after
            # READY (on_guild_available) by the *absence* of "unavailable".
            del payload["unavailable"]
        if not session.has_intent(Intents.GUILD_MEMBERS):
            # As Discord: without the members intent only the bot's own member is sent.
            own = str(self.emu.bot_user.id)
            payload["members"] = [m for m in payload["members"] if m["user"]["id"] == own]
        await self.dispatch(session, "GUILD_CREATE", payload)

    async def _resume(
        self, ws: web.WebSocketResponse, data: dict[str, Any]
    ) -> GatewaySession | None:
        session = self.sessions.get(str(data.get("session_id")))
        if session is None or data.get("token") != self.emu.token:
            await self._send(ws, {"op": OP_INVALID_SESSION, "d": False})
            return None
        session.ws = ws
        last = int(data.get("seq") or 0)
        for frame in session.sent:
            if frame["s"] > last:
                await self._send(ws, frame)
        await self.dispatch(session, "RESUMED", {"_trace": ["discord-emulator"]})
        self.emu.resume_count += 1
        return session

    async def _members_chunk(self, session: GatewaySession, data: dict[str, Any]) -> None:
        guild = self.emu.world.guilds.get(int(data.get("guild_id", 0)))
        if guild is None:
            return
        chunk: dict[str, Any] = {
            "guild_id": str(guild.id),
            "members": [m.payload() for m in guild.members.values()],
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [],
        }
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        await self.dispatch(session, "GUILD_MEMBERS_CHUNK", chunk)

    async def reconnect_all(self) -> None:
        """Ask every bot to reconnect (op 7); they come back with RESUME."""
        for session in self.live_sessions:
            assert session.ws is not None
            await self._send(session.ws, {"op": OP_RECONNECT, "d": None})

    async def close_all(self, code: int = 1001, message: bytes = b"emulator shutting down") -> None:
        for ws in list(self.sockets):
            await ws.close(code=code, message=message)
