"""The emulated world: users, guilds, roles, channels and members, and their gateway payloads.

Everything here is plain data plus the ``*_payload`` renderers that turn it into the JSON shapes
discord.py parses (``types/guild.py``, ``types/member.py``, ``types/channel.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MiB = 1024 * 1024


class Permissions:
    """The permission bits the emulator reasons about (Discord's bit positions)."""

    CREATE_INSTANT_INVITE = 1 << 0
    ADMINISTRATOR = 1 << 3
    MANAGE_CHANNELS = 1 << 4
    MANAGE_GUILD = 1 << 5
    ADD_REACTIONS = 1 << 6
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    MENTION_EVERYONE = 1 << 17
    USE_EXTERNAL_EMOJIS = 1 << 18
    USE_APPLICATION_COMMANDS = 1 << 31
    SEND_MESSAGES_IN_THREADS = 1 << 38
    ALL = (1 << 51) - 1

    EVERYONE_DEFAULT = (
        CREATE_INSTANT_INVITE
        | ADD_REACTIONS
        | VIEW_CHANNEL
        | SEND_MESSAGES
        | EMBED_LINKS
        | ATTACH_FILES
        | READ_MESSAGE_HISTORY
        | USE_EXTERNAL_EMOJIS
        | USE_APPLICATION_COMMANDS
        | SEND_MESSAGES_IN_THREADS
    )


class Intents:
    """Gateway intent bits the emulator acts on."""

    GUILDS = 1 << 0
    GUILD_MEMBERS = 1 << 1
    GUILD_PRESENCES = 1 << 8
    GUILD_MESSAGES = 1 << 9
    DIRECT_MESSAGES = 1 << 12
    MESSAGE_CONTENT = 1 << 15
    PRIVILEGED = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT


# Per-file upload limit by boost tier; the same table as discord.py's Guild._PREMIUM_GUILD_LIMITS.
PREMIUM_TIER_FILE_LIMIT = {0: 10 * MiB, 1: 10 * MiB, 2: 50 * MiB, 3: 100 * MiB}
DEFAULT_FILE_LIMIT = 10 * MiB


class ChannelType:
    GUILD_TEXT = 0
    DM = 1


@dataclass
class User:
    id: int
    username: str
    global_name: str | None = None
    bot: bool = False

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": None,
            "public_flags": 0,
            "flags": 0,
            "primary_guild": None,
        }
        if self.bot:
            data["bot"] = True
        return data


@dataclass
class Role:
    id: int
    name: str
    permissions: int
    position: int = 0
    managed: bool = False

    @property
    def mention(self) -> str:
        return f"<@&{self.id}>"

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "permissions": str(self.permissions),
            "position": self.position,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "managed": self.managed,
            "mentionable": True,
            "icon": None,
            "unicode_emoji": None,
            "flags": 0,
        }


@dataclass
class Member:
    user: User
    role_ids: list[int] = field(default_factory=list)
    nick: str | None = None
    joined_at: str = "2024-01-01T00:00:00+00:00"

    def payload(self, *, permissions: int | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "user": self.user.payload(),
            "roles": [str(r) for r in self.role_ids],
            "nick": self.nick,
            "avatar": None,
            "banner": None,
            "joined_at": self.joined_at,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "communication_disabled_until": None,
        }
        if permissions is not None:
            data["permissions"] = str(permissions)
        return data


@dataclass
class Overwrite:
    """A per-channel member/role overwrite (type 0 role, 1 member)."""

    target_id: int
    type: int
    allow: int = 0
    deny: int = 0

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.target_id),
            "type": self.type,
            "allow": str(self.allow),
            "deny": str(self.deny),
        }


@dataclass
class Channel:
    id: int
    name: str | None
    type: int = ChannelType.GUILD_TEXT
    guild_id: int | None = None
    position: int = 0
    overwrites: list[Overwrite] = field(default_factory=list)
    recipients: list[User] = field(default_factory=list)
    last_message_id: int | None = None

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"

    def payload(self, *, include_guild_id: bool = True) -> dict[str, Any]:
        if self.type == ChannelType.DM:
            return {
                "id": str(self.id),
                "type": self.type,
                "last_message_id": _opt_str(self.last_message_id),
                "recipients": [u.payload() for u in self.recipients],
                "flags": 0,
            }
        data: dict[str, Any] = {
            "id": str(self.id),
            "type": self.type,
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [o.payload() for o in self.overwrites],
            "topic": None,
            "nsfw": False,
            "parent_id": None,
            "rate_limit_per_user": 0,
            "last_message_id": _opt_str(self.last_message_id),
            "flags": 0,
        }
        if include_guild_id and self.guild_id is not None:
            data["guild_id"] = str(self.guild_id)
        return data


@dataclass
class Guild:
    id: int
    name: str
    owner_id: int
    premium_tier: int = 0
    roles: dict[int, Role] = field(default_factory=dict)
    channels: dict[int, Channel] = field(default_factory=dict)
    members: dict[int, Member] = field(default_factory=dict)
    preferred_locale: str = "en-US"
    upload_limit: int | None = None  # overrides the premium tier's limit (tests of tiny limits)
    _new_id: Callable[[], int] | None = field(default=None, repr=False)

    @property
    def everyone_role(self) -> Role:
        return self.roles[self.id]

    @property
    def filesize_limit(self) -> int:
        if self.upload_limit is not None:
            return self.upload_limit
        return PREMIUM_TIER_FILE_LIMIT.get(self.premium_tier, DEFAULT_FILE_LIMIT)

    def _mint(self) -> int:
        if self._new_id is None:
            raise RuntimeError("guild was not created through World.add_guild")
        return self._new_id()

    # -- builders -----------------------------------------------------------------------------
    def add_role(self, name: str, permissions: int = 0, *, managed: bool = False) -> Role:
        role = Role(self._mint(), name, permissions, position=len(self.roles), managed=managed)
        self.roles[role.id] = role
        return role

    def add_text_channel(self, name: str) -> Channel:
        channel = Channel(self._mint(), name, guild_id=self.id, position=len(self.channels))
        self.channels[channel.id] = channel
        return channel

    def add_member(
        self, user: User, roles: list[Role] | None = None, nick: str | None = None
    ) -> Member:
        member = Member(user, [r.id for r in roles or []], nick=nick)
        self.members[user.id] = member
        return member

    # -- permissions --------------------------------------------------------------------------
    def base_permissions(self, user_id: int) -> int:
        if user_id == self.owner_id:
            return Permissions.ALL
        member = self.members.get(user_id)
        value = self.everyone_role.permissions
        if member is not None:
            for role_id in member.role_ids:
                role = self.roles.get(role_id)
                if role is not None:
                    value |= role.permissions
        if value & Permissions.ADMINISTRATOR:
            return Permissions.ALL
        return value

    def channel_permissions(self, user_id: int, channel_id: int) -> int:
        """Base permissions with the channel's overwrites applied, in Discord's order."""
        value = self.base_permissions(user_id)
        if value == Permissions.ALL:
            return value
        channel = self.channels.get(channel_id)
        if channel is None:
            return value
        member = self.members.get(user_id)
        role_ids = set(member.role_ids) if member else set()
        for ow in channel.overwrites:
            if ow.type == 0 and ow.target_id == self.id:
                value = (value & ~ow.deny) | ow.allow
        allow = deny = 0
        for ow in channel.overwrites:
            if ow.type == 0 and ow.target_id in role_ids:
                allow |= ow.allow
                deny |= ow.deny
        value = (value & ~deny) | allow
        for ow in channel.overwrites:
            if ow.type == 1 and ow.target_id == user_id:
                value = (value & ~ow.deny) | ow.allow
        return value

    # -- payloads -----------------------------------------------------------------------------
    def create_payload(self, joined_at: str) -> dict[str, Any]:
        """The GUILD_CREATE body for this guild."""
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "features": [],
            "roles": [r.payload() for r in self.roles.values()],
            "emojis": [],
            "stickers": [],
            "soundboard_sounds": [],
            "application_id": None,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "vanity_url_code": None,
            "premium_tier": self.premium_tier,
            "premium_subscription_count": {0: 0, 1: 2, 2: 7, 3: 14}.get(self.premium_tier, 0),
            "premium_progress_bar_enabled": False,
            "preferred_locale": self.preferred_locale,
            "max_members": 500000,
            "max_video_channel_users": 25,
            "joined_at": joined_at,
            "large": False,
            "unavailable": False,
            "member_count": len(self.members),
            "members": [m.payload() for m in self.members.values()],
            "channels": [c.payload(include_guild_id=False) for c in self.channels.values()],
            "threads": [],
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "lazy": True,
        }

    def interaction_payload(self) -> dict[str, Any]:
        """The partial ``guild`` object an interaction carries."""
        return {"id": str(self.id), "locale": self.preferred_locale, "features": []}


class World:
    """All users, guilds and DM channels the emulator knows about."""

    def __init__(self, new_id: Callable[[], int]) -> None:
        self._new_id = new_id
        self.users: dict[int, User] = {}
        self.guilds: dict[int, Guild] = {}
        self.dm_channels: dict[int, Channel] = {}

    def add_user(self, username: str, *, global_name: str | None = None, bot: bool = False) -> User:
        user = User(self._new_id(), username, global_name=global_name, bot=bot)
        self.users[user.id] = user
        return user

    def add_guild(
        self, name: str, owner: User, *, premium_tier: int = 0, bot_user: User | None = None
    ) -> Guild:
        """Create a guild with its @everyone role and its owner (and the bot) as members."""
        guild = Guild(self._new_id(), name, owner.id, premium_tier=premium_tier)
        guild._new_id = self._new_id
        guild.roles[guild.id] = Role(guild.id, "@everyone", Permissions.EVERYONE_DEFAULT)
        guild.add_member(owner)
        if bot_user is not None:
            bot_role = guild.add_role(
                bot_user.username,
                Permissions.EVERYONE_DEFAULT | Permissions.MANAGE_MESSAGES,
                managed=True,
            )
            guild.add_member(bot_user, [bot_role])
        self.guilds[guild.id] = guild
        return guild

    def channel(self, channel_id: int) -> tuple[Channel, Guild | None] | None:
        for guild in self.guilds.values():
            found = guild.channels.get(channel_id)
            if found is not None:
                return found, guild
        dm = self.dm_channels.get(channel_id)
        if dm is not None:
            return dm, None
        return None

    def dm_channel_with(self, user: User) -> Channel:
        """The bot's DM channel with ``user``, created on first use as Discord does."""
        for channel in self.dm_channels.values():
            if any(r.id == user.id for r in channel.recipients):
                return channel
        channel = Channel(self._new_id(), None, type=ChannelType.DM, recipients=[user])
        self.dm_channels[channel.id] = channel
        return channel


def _opt_str(value: int | None) -> str | None:
    return None if value is None else str(value)
