"""The Discord emulator, driven by the real discord.py client.

A trivial bot defined here logs in over REST + gateway, syncs a slash command and answers it the
way the Veo bot will (defer, then edit @original with an upload). Each fault the emulator can
inject is checked against what discord.py 2.7.1 actually does with it.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import discord
import discord.gateway
import discord.http
import pytest
from discord import app_commands
from discord.ext import commands

from tests.discord_emulator import DiscordEmulator, Intents, StoredMessage, point_discord_py_at

ORIGINAL = "/webhooks/{application_id}/{interaction_token}/messages/@original"
CALLBACK = "POST /interactions/{interaction_id}/{interaction_token}/callback"
EDIT_ORIGINAL = f"PATCH {ORIGINAL}"
VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 64


class EmuBot(commands.Bot):
    """A stand-in for the Veo bot: one slash command, answered like the real one will be."""

    def __init__(self, *, message_content: bool = False) -> None:
        intents = discord.Intents.default()
        intents.message_content = message_content
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            guild_ready_timeout=0.05,
            allowed_mentions=discord.AllowedMentions.none(),
        )
        self.outcomes: asyncio.Queue[Any] = asyncio.Queue()
        self.seen_messages: asyncio.Queue[discord.Message] = asyncio.Queue()
        self.upload = VIDEO

        @app_commands.command(name="veo", description="Make a video from a prompt")
        async def veo(
            interaction: discord.Interaction, prompt: str, image: discord.Attachment | None = None
        ) -> None:
            callback = await interaction.response.defer(thinking=True)
            try:
                await interaction.edit_original_response(
                    content=f"{interaction.user.mention} done: {prompt}",
                    attachments=[discord.File(io.BytesIO(self.upload), "veo.mp4")],
                    allowed_mentions=discord.AllowedMentions(users=[interaction.user]),
                )
            except discord.HTTPException as exc:
                await self.outcomes.put(exc)
                return
            await self.outcomes.put((callback, interaction.filesize_limit, image))

        self.tree.add_command(veo)

    async def setup_hook(self) -> None:
        await self.tree.sync()

    async def on_message(self, message: discord.Message) -> None:
        await self.seen_messages.put(message)


@pytest.fixture
async def emu() -> AsyncIterator[DiscordEmulator]:
    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    async with DiscordEmulator() as emulator:
        point_discord_py_at(emulator.api_base, emulator.gateway_url)
        yield emulator
    discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved


async def start_bot(emu: DiscordEmulator, bot: EmuBot) -> asyncio.Task[None]:
    await bot.login(emu.token)
    task = asyncio.create_task(bot.connect(reconnect=True))
    await asyncio.wait_for(bot.wait_until_ready(), 5)
    await emu.wait_for_command("veo")
    return task


@pytest.fixture
async def bot(emu: DiscordEmulator) -> AsyncIterator[EmuBot]:
    client = EmuBot()
    task = await start_bot(emu, client)
    yield client
    await client.close()
    await asyncio.wait_for(task, 5)


async def test_slash_command_defer_then_upload_round_trip(
    emu: DiscordEmulator, bot: EmuBot
) -> None:
    assert bot.user is not None and bot.user.id == emu.bot_user.id
    guild = bot.get_guild(emu.guild.id)
    assert guild is not None and guild.me is not None
    assert [r.name for r in guild.me.roles] == ["@everyone", "Veo"]
    assert guild.owner_id == emu.owner.id and guild.premium_tier == 0

    image = emu.add_cdn_file("cat.png", b"\x89PNG\r\n\x1a\n" + b"0" * 100, "image/png")
    handle = await emu.dispatch_slash_command("veo", {"prompt": "a cat"}, attachments={"image": image})
    callback = await handle.wait_for_callback()
    assert callback.json == {"type": 5}
    assert handle.defer_latency is not None and handle.defer_latency < 3

    response, filesize_limit, attachment = await asyncio.wait_for(bot.outcomes.get(), 5)
    assert response.message_id == handle.original_message_id
    assert filesize_limit == 10 * 1024 * 1024
    assert attachment.url == image and attachment.content_type == "image/png"

    edit = emu.requests(EDIT_ORIGINAL)[0]
    assert edit.is_multipart and edit.auth == "none"
    assert edit.json["content"] == f"{emu.member.mention} done: a cat"
    assert edit.json["allowed_mentions"] == {"parse": [], "users": [emu.member.id]}
    assert [(f.filename, f.data) for f in edit.files] == [("veo.mp4", VIDEO)]

    message = handle.original_message()
    assert not message.loading and message.content.endswith("done: a cat")
    stored = message.attachment("veo.mp4")
    assert stored.content_type == "video/mp4" and stored.size == len(VIDEO)
    assert [u.id for u in message.mentions] == [emu.member.id]

    async with aiohttp.ClientSession() as http:
        async with http.get(stored.url) as got:
            assert got.headers["Content-Type"] == "video/mp4"
            assert await got.read() == VIDEO

    login = [
        "GET /users/@me",
        "GET /oauth2/applications/@me",
        "PUT /applications/{application_id}/commands",
    ]
    assert emu.routes_called() == [*login, CALLBACK, EDIT_ORIGINAL]
    emu.assert_no_violations()


async def test_spec_violation_is_caught(emu: DiscordEmulator) -> None:
    url = f"{emu.api_base}/channels/{emu.channel.id}/messages"
    headers = {"Authorization": f"Bot {emu.token}"}
    async with aiohttp.ClientSession() as http:
        bad = {"content": 12, "embeds": [{"title": ["not", "a", "string"]}]}
        async with http.post(url, json=bad, headers=headers) as resp:
            assert resp.status == 400
            assert (await resp.json())["code"] == 50035

    assert [v.pointer for v in emu.violations] == ["/content"]
    with pytest.raises(AssertionError, match=r"POST /channels/\d+/messages .*/content"):
        emu.assert_no_violations()


async def test_rate_limit_with_via_is_retried(emu: DiscordEmulator, bot: EmuBot) -> None:
    emu.inject_rate_limit(EDIT_ORIGINAL, retry_after=0.01)
    handle = await emu.dispatch_slash_command("veo", {"prompt": "retry"})
    outcome = await asyncio.wait_for(bot.outcomes.get(), 5)
    assert not isinstance(outcome, Exception)
    edits = emu.requests(EDIT_ORIGINAL)
    assert [r.status for r in edits] == [429, 200]
    assert edits[0].files[0].data == edits[1].files[0].data == VIDEO
    assert emu.rate_limited == [edits[0]]
    assert handle.original_message().attachment("veo.mp4").size == len(VIDEO)
    emu.assert_no_violations()


async def test_expired_interaction_token_is_401_50027(emu: DiscordEmulator, bot: EmuBot) -> None:
    handle = await emu.dispatch_slash_command("veo", {"prompt": "late"})
    await handle.wait_for_callback()
    emu.advance(15 * 60 + 1)
    # The bot's own PATCH races the clock move; a later edit must fail either way.
    edit = await emu.wait_for_request(EDIT_ORIGINAL)
    assert edit.status in (200, 401)
    await bot.outcomes.get()

    webhook = discord.Webhook.partial(emu.application_id, handle.token, client=bot)
    with pytest.raises(discord.HTTPException) as caught:
        await webhook.edit_message(handle.original_message_id or 0, content="too late")
    assert (caught.value.status, caught.value.code) == (401, 50027)
    emu.assert_no_violations()


async def test_deleted_message_is_404_10008(emu: DiscordEmulator, bot: EmuBot) -> None:
    channel = bot.get_channel(emu.channel.id)
    assert isinstance(channel, discord.TextChannel)
    sent = await channel.send("status: queued")
    await emu.delete_message(emu.channel.id, sent.id)
    with pytest.raises(discord.NotFound) as caught:
        await sent.edit(content="status: done")
    assert caught.value.code == 10008
    emu.assert_no_violations()


async def test_upload_over_guild_limit_is_413(emu: DiscordEmulator, bot: EmuBot) -> None:
    bot.upload = b"\x00" * (10 * 1024 * 1024 + 1)
    handle = await emu.dispatch_slash_command("veo", {"prompt": "too big"})
    outcome = await asyncio.wait_for(bot.outcomes.get(), 5)
    assert isinstance(outcome, discord.HTTPException)
    assert (outcome.status, outcome.code) == (413, 40005)
    assert handle.original_message().loading
    emu.assert_no_violations()


async def test_message_content_intent_is_respected(emu: DiscordEmulator, bot: EmuBot) -> None:
    await emu.post_user_message(emu.channel.id, "hello there")
    plain = await asyncio.wait_for(bot.seen_messages.get(), 5)
    assert plain.content == ""
    await emu.post_user_message(emu.channel.id, "hi bot", mentions=[emu.bot_user])
    mentioned = await asyncio.wait_for(bot.seen_messages.get(), 5)
    assert mentioned.content == f"hi bot {emu.bot_user.mention}"
    assert isinstance(emu.message(mentioned.id), StoredMessage)
    assert Intents.MESSAGE_CONTENT & next(iter(emu._gateway.sessions.values())).intents == 0
