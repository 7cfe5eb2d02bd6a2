"""Interactions the emulator sent, and turning a test's plain options into typed Discord options."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .timeline import RequestRecord
from .world import Channel, Guild, Role, User

if TYPE_CHECKING:
    from .emulator import DiscordEmulator
    from .messages import StoredMessage

TOKEN_LIFETIME = 15 * 60.0
CALLBACK_DEADLINE = 3.0

# Interaction types and the callback types Discord accepts for each.
PING, APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 1, 2, 3, 4, 5
ALLOWED_CALLBACKS = {
    APPLICATION_COMMAND: {4, 5, 9, 12},
    MESSAGE_COMPONENT: {4, 5, 6, 7, 9, 12},
    AUTOCOMPLETE: {8},
    MODAL_SUBMIT: {4, 5, 6, 7},
}


class OptionType:
    SUB_COMMAND = 1
    SUB_COMMAND_GROUP = 2
    STRING = 3
    INTEGER = 4
    BOOLEAN = 5
    USER = 6
    CHANNEL = 7
    ROLE = 8
    MENTIONABLE = 9
    NUMBER = 10
    ATTACHMENT = 11


@dataclass
class CdnFile:
    """A file the emulator serves over HTTP (an upload, or an image a test lets a user post)."""

    id: int
    filename: str
    content_type: str
    data: bytes = field(repr=False)
    url: str = ""

    @property
    def size(self) -> int:
        return len(self.data)

    def attachment_payload(self, *, ephemeral: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.url,
            "content_type": self.content_type,
        }
        if ephemeral:
            data["ephemeral"] = True
        return data


@dataclass
class InteractionHandle:
    """One interaction sent to the bot; follow what the bot did with it."""

    emulator: DiscordEmulator = field(repr=False)
    id: int
    token: str
    type: int
    payload: dict[str, Any] = field(repr=False)
    user: User
    guild: Guild | None
    channel: Channel
    sent_at: float
    source_message_id: int | None = None
    callback: RequestRecord | None = None
    callback_type: int | None = None
    callback_at: float | None = None
    original_message_id: int | None = None
    modal: dict[str, Any] | None = None
    autocomplete_choices: list[dict[str, Any]] | None = None
    _acknowledged: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def acknowledged(self) -> bool:
        return self._acknowledged.is_set()

    @property
    def expires_at(self) -> float:
        return self.sent_at + TOKEN_LIFETIME

    @property
    def defer_latency(self) -> float | None:
        """Seconds from INTERACTION_CREATE leaving the emulator to the callback arriving."""
        if self.callback_at is None:
            return None
        return self.callback_at - self.sent_at

    async def wait_for_callback(self, timeout: float = 5.0) -> RequestRecord:  # noqa: ASYNC109
        """Wait for the bot's (successful) interaction callback and return its request record."""
        try:
            await asyncio.wait_for(self._acknowledged.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(
                f"the bot did not answer interaction {self.id} within {timeout}s"
            ) from None
        assert self.callback is not None
        return self.callback

    def original_message(self) -> StoredMessage:
        """The message ``@original`` refers to (raises if there is none yet)."""
        if self.original_message_id is None:
            raise LookupError(f"interaction {self.id} has no original response message")
        return self.emulator.message(self.original_message_id)

    def requests(self) -> list[RequestRecord]:
        """Every request the bot made with this interaction's token or id."""
        return [
            r
            for r in self.emulator.timeline
            if r.params.get("interaction_token") == self.token
            or r.params.get("interaction_id") == str(self.id)
        ]


def _option_map(options: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    return {o["name"]: o for o in options or []}


class OptionBuilder:
    """Turns ``{"prompt": "a cat", "image": url}`` into typed options plus ``resolved`` data,
    using the definition the bot synced (Discord only ever sends options it knows)."""

    def __init__(self, emu: DiscordEmulator, guild: Guild | None, channel: Channel) -> None:
        self.emu = emu
        self.guild = guild
        self.channel = channel
        self.resolved: dict[str, dict[str, Any]] = {}

    def build(
        self, schema: list[dict[str, Any]] | None, values: dict[str, Any], where: str
    ) -> list[dict[str, Any]]:
        known = _option_map(schema)
        unknown = set(values) - set(known)
        if unknown:
            raise ValueError(f"{where}: no option(s) {sorted(unknown)}; synced: {sorted(known)}")
        for name, option in known.items():
            if option.get("required") and name not in values:
                raise ValueError(f"{where}: required option {name!r} missing")
        out = []
        for name, value in values.items():
            option = known[name]
            out.append(
                {"name": name, "type": option["type"], "value": self._convert(option, value)}
            )
        return out

    def _add(self, kind: str, key: int, payload: dict[str, Any]) -> None:
        self.resolved.setdefault(kind, {})[str(key)] = payload

    def _convert(self, option: dict[str, Any], value: Any) -> Any:
        kind = option["type"]
        if kind == OptionType.STRING:
            return str(value)
        if kind == OptionType.INTEGER:
            return int(value)
        if kind == OptionType.NUMBER:
            return float(value)
        if kind == OptionType.BOOLEAN:
            return bool(value)
        if kind in (OptionType.USER, OptionType.MENTIONABLE) and isinstance(value, User):
            self._add("users", value.id, value.payload())
            if self.guild is not None and value.id in self.guild.members:
                member = self.guild.members[value.id].payload(
                    permissions=self.guild.channel_permissions(value.id, self.channel.id)
                )
                member.pop("user")
                self._add("members", value.id, member)
            return str(value.id)
        if kind in (OptionType.ROLE, OptionType.MENTIONABLE) and isinstance(value, Role):
            self._add("roles", value.id, value.payload())
            return str(value.id)
        if kind == OptionType.CHANNEL and isinstance(value, Channel):
            payload = value.payload()
            payload["permissions"] = str(self.emu.app_permissions(value.id))
            self._add("channels", value.id, payload)
            return str(value.id)
        if kind == OptionType.ATTACHMENT:
            cdn = self.emu.cdn_file(value)
            self._add("attachments", cdn.id, cdn.attachment_payload(ephemeral=True))
            return str(cdn.id)
        raise TypeError(f"option {option['name']!r} (type {kind}) cannot take {value!r}")

    def build_command(
        self, command: dict[str, Any], path: list[str], values: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Options for ``/root group sub``: nest subcommand (group) options as Discord does."""
        schema = command.get("options")
        if not path:
            return self.build(schema, values, f"/{command['name']}")
        head, rest = path[0], path[1:]
        option = _option_map(schema).get(head)
        if option is None or option["type"] not in (
            OptionType.SUB_COMMAND,
            OptionType.SUB_COMMAND_GROUP,
        ):
            raise ValueError(f"/{command['name']}: no subcommand or group {head!r}")
        inner = self.build_command(option, rest, values)
        return [{"name": head, "type": option["type"], "options": inner}]
