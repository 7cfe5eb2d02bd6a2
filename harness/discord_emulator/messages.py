"""Stored messages and attachments, and their Discord JSON shapes."""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass, field
from typing import Any

from .world import User

EPHEMERAL = 1 << 6
LOADING = 1 << 7
REFERENCE_DEFAULT = 0  # a reply
REFERENCE_FORWARD = 1  # a forward: the message travels as a snapshot, not as `referenced_message`
# Flags a client may set on create/edit (SUPPRESS_EMBEDS, EPHEMERAL, SUPPRESS_NOTIFICATIONS,
# IS_COMPONENTS_V2); the rest are Discord-managed.
CLIENT_SETTABLE_FLAGS = (1 << 2) | EPHEMERAL | (1 << 12) | (1 << 15)


def guess_content_type(filename: str, declared: str | None = None) -> str:
    """Discord derives the type from the file, not from what the uploader declared."""
    guessed, _ = mimetypes.guess_type(filename)
    if guessed:
        return guessed
    if declared and declared != "application/octet-stream":
        return declared
    return "application/octet-stream"


@dataclass
class StoredAttachment:
    id: int
    filename: str
    content_type: str
    data: bytes = field(repr=False)
    url: str = ""
    description: str | None = None
    title: str | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.url,
            "content_type": self.content_type,
        }
        if self.description is not None:
            data["description"] = self.description
        if self.title is not None:
            data["title"] = self.title
        return data


@dataclass
class StoredMessage:
    id: int
    channel_id: int
    guild_id: int | None
    author: User
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[StoredAttachment] = field(default_factory=list)
    allowed_mentions: dict[str, Any] | None = None
    message_reference: dict[str, Any] | None = None
    flags: int = 0
    type: int = 0
    tts: bool = False
    timestamp: str = ""
    edited_timestamp: str | None = None
    webhook_id: int | None = None
    application_id: int | None = None
    interaction_metadata: dict[str, Any] | None = None
    mentions: list[User] = field(default_factory=list)
    mention_role_ids: list[int] = field(default_factory=list)
    mention_everyone: bool = False
    deleted: bool = False
    edits: int = 0
    # A forward's frozen copy of the forwarded message (Discord's `message_snapshots[0]`),
    # taken when it was forwarded: later edits or a deletion of the original do not change it.
    snapshot: StoredMessage | None = None

    @property
    def is_forward(self) -> bool:
        return (self.message_reference or {}).get("type") == REFERENCE_FORWARD

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & LOADING)

    def attachment(self, filename: str) -> StoredAttachment:
        for attachment in self.attachments:
            if attachment.filename == filename:
                return attachment
        raise KeyError(f"message {self.id} has no attachment {filename!r}")

    def payload(
        self, *, referenced: StoredMessage | None = None, hide_content: bool = False
    ) -> dict[str, Any]:
        """The message object; ``hide_content`` empties what the Message Content intent guards."""
        data: dict[str, Any] = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "type": self.type,
            "author": self.author.payload(),
            "content": "" if hide_content else self.content,
            "embeds": [] if hide_content else self.embeds,
            "components": [] if hide_content else self.components,
            "attachments": [] if hide_content else [a.payload() for a in self.attachments],
            "mentions": [u.payload() for u in self.mentions],
            "mention_roles": [str(r) for r in self.mention_role_ids],
            "mention_everyone": self.mention_everyone,
            "pinned": False,
            "tts": self.tts,
            "timestamp": self.timestamp,
            "edited_timestamp": self.edited_timestamp,
            "flags": self.flags,
            "sticker_items": [],
        }
        if self.webhook_id is not None:
            data["webhook_id"] = str(self.webhook_id)
        if self.application_id is not None:
            data["application_id"] = str(self.application_id)
        if self.interaction_metadata is not None:
            data["interaction_metadata"] = self.interaction_metadata
        if self.message_reference is not None:
            data["message_reference"] = self.message_reference
            if referenced is not None and not self.is_forward:
                data["referenced_message"] = referenced.payload(hide_content=hide_content)
        if self.snapshot is not None:
            # The Message Content intent guards the snapshot's content the way it guards the
            # message's own (Discord's docs list message_snapshots among the guarded fields).
            data["message_snapshots"] = [{"message": self.snapshot.snapshot_payload(hide_content)}]
        return data

    def snapshot_payload(self, hide_content: bool = False) -> dict[str, Any]:
        """The minimal message object a forward carries (`MinimalContentMessageResponse`)."""
        return {
            "type": self.type,
            "content": "" if hide_content else self.content,
            "embeds": [] if hide_content else self.embeds,
            "attachments": [] if hide_content else [a.payload() for a in self.attachments],
            "components": [] if hide_content else self.components,
            "mentions": [u.payload() for u in self.mentions],
            "mention_roles": [str(r) for r in self.mention_role_ids],
            "timestamp": self.timestamp,
            "edited_timestamp": self.edited_timestamp,
            "flags": self.flags,
            "sticker_items": [],
        }
