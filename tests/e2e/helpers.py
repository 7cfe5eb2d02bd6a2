"""Small readers over the emulator's timeline shared by the end-to-end tests."""

from __future__ import annotations

from typing import Any

from harness.discord_emulator import DiscordEmulator, RequestRecord, StoredMessage


def content_of(record: RequestRecord) -> str:
    body: Any = record.json
    return body.get("content", "") if isinstance(body, dict) else ""


def is_final(record: RequestRecord) -> bool:
    head = content_of(record).split("\n", 1)[0]
    return record.status == 200 and ("ready" in head or head.startswith("❌"))


async def final_for(
    emu: DiscordEmulator,
    token: str,
    timeout: float = 30.0,  # noqa: ASYNC109
) -> RequestRecord:
    """The bot's last word on an interaction's placeholder: the video, or why not."""
    return await emu.wait_for(
        lambda r: (
            r.params.get("interaction_token") == token and r.method == "PATCH" and is_final(r)
        ),
        timeout=timeout,
    )


def edits_for(emu: DiscordEmulator, token: str) -> list[RequestRecord]:
    return [
        r
        for r in emu.timeline
        if r.params.get("interaction_token") == token and r.method == "PATCH"
    ]


async def private_answer(
    emu: DiscordEmulator,
    token: str,
    timeout: float = 15.0,  # noqa: ASYNC109
) -> StoredMessage:
    """The ephemeral follow-up a refusal ends in (the public placeholder is deleted first)."""
    record = await emu.wait_for(
        lambda r: (
            r.params.get("interaction_token") == token
            and r.method == "POST"
            and r.route.startswith("POST /webhooks/")
            and r.status == 200
        ),
        timeout=timeout,
    )
    message_id = int(record.response["id"])
    return emu.message(message_id)
