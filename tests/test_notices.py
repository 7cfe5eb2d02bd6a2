"""Notices to every server's log channel: one refusing channel or unreadable setting does not
keep the others from hearing of it, and nobody is pinged."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import discord

from bot.chat.notices import LogChannels
from bot.store import StoreUnavailable


class Channel:
    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse
        self.sent: list[tuple[str, Any]] = []

    async def send(self, text: str, *, allowed_mentions: Any) -> None:
        if self.refuse:
            response = SimpleNamespace(status=403, reason="Forbidden")
            raise discord.Forbidden(response, {"code": 50001, "message": "Missing Access"})  # type: ignore[arg-type]
        self.sent.append((text, allowed_mentions))


class Client:
    """What `LogChannels` uses of a `discord.Client`."""

    def __init__(self, guild_ids: list[int]) -> None:
        self.guilds = [SimpleNamespace(id=g) for g in guild_ids]
        self.channels: dict[int, Channel] = {}
        self.ready = asyncio.Event()

    async def wait_until_ready(self) -> None:
        await self.ready.wait()

    def get_partial_messageable(self, channel_id: int, *, guild_id: int) -> Channel:
        return self.channels[channel_id]


async def test_every_log_channel_gets_it_once_the_gateway_is_ready() -> None:
    client = Client([1, 2, 3, 4])
    client.channels = {10: Channel(False), 20: Channel(True), 40: Channel(False)}

    async def log_channel(guild_id: int) -> int | None:
        if guild_id == 3:
            raise StoreUnavailable("database is locked")
        return {1: 10, 2: 20, 4: 40}.get(guild_id)

    notices = LogChannels(client, log_channel)  # type: ignore[arg-type]
    posting = asyncio.ensure_future(notices.post_all("⚠️ credits low"))
    await asyncio.sleep(0)
    assert not posting.done()  # the guild list is not known before READY
    client.ready.set()
    assert await posting == 2
    for channel_id in (10, 40):
        ((text, mentions),) = client.channels[channel_id].sent
        assert text == "⚠️ credits low"
        assert mentions.everyone is False and mentions.users is False and mentions.roles is False
    assert client.channels[20].sent == []
