"""A Discord emulator the real discord.py client logs in to (test support, not shipped).

See README.md in this folder for the API and the spec allowances.
"""

from .clock import EmulatorClock
from .emulator import NONCE_WINDOW, DiscordEmulator, RequestHold, point_discord_py_at
from .interactions import CdnFile, InteractionHandle, OptionType
from .messages import StoredAttachment, StoredMessage
from .spec import ALLOWANCES, DEFAULT_SPEC_PATH, SpecMissingError, load_spec
from .timeline import DiscordError, FilePart, GatewayFrame, RequestRecord, Violation
from .world import Channel, Guild, Intents, Member, Permissions, Role, User

__all__ = [
    "ALLOWANCES",
    "DEFAULT_SPEC_PATH",
    "NONCE_WINDOW",
    "CdnFile",
    "Channel",
    "DiscordEmulator",
    "DiscordError",
    "EmulatorClock",
    "FilePart",
    "GatewayFrame",
    "Guild",
    "Intents",
    "InteractionHandle",
    "Member",
    "OptionType",
    "Permissions",
    "RequestHold",
    "RequestRecord",
    "Role",
    "SpecMissingError",
    "StoredAttachment",
    "StoredMessage",
    "User",
    "Violation",
    "load_spec",
    "point_discord_py_at",
]
