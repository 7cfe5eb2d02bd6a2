"""The Discord emulator, driven by the real discord.py client.

A trivial bot defined here logs in over REST + gateway, syncs a slash command and answers it the
way the Veo bot will (defer, then edit @original with an upload). Each fault the emulator can
inject is checked against what discord.py 2.7.1 actually does with it.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import discord
import discord.gateway
import discord.http
import pytest
from discord import app_commands
from discord.ext import commands

from harness.discord_emulator import (
    DiscordEmulator,
    Intents,
    SpecMissingError,
    StoredMessage,
    load_spec,
    point_discord_py_at,
)

ORIGINAL = "/webhooks/{application_id}/{interaction_token}/messages/@original"
CALLBACK = "POST /interactions/{interaction_id}/{interaction_token}/callback"
EDIT_ORIGINAL = f"PATCH {ORIGINAL}"
VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 64


class PromptModal(discord.ui.Modal, title="Your prompt"):
    prompt: discord.ui.TextInput[PromptModal] = discord.ui.TextInput(
        label="Prompt", custom_id="prompt"
    )

    def __init__(self) -> None:
        super().__init__(custom_id="prompt-modal")

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"queued: {self.prompt.value}", ephemeral=True)
        await interaction.followup.send("second note", ephemeral=True)


class PanelView(discord.ui.View):
    @discord.ui.button(label="Open", custom_id="panel:open")
    async def open(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        await interaction.response.send_modal(PromptModal())


class EmuBot(commands.Bot):
    """A stand-in for the Veo bot: one slash command, answered like the real one will be."""

    def __init__(self, *, message_content: bool = False, **options: Any) -> None:
        intents = discord.Intents.default()
        intents.message_content = message_content
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            guild_ready_timeout=0.05,
            allowed_mentions=discord.AllowedMentions.none(),
            **options,  # shard_id / shard_count: one shard's session
        )
        self.outcomes: asyncio.Queue[Any] = asyncio.Queue()
        self.seen_messages: asyncio.Queue[discord.Message] = asyncio.Queue()
        self.upload = VIDEO
        self.gate: asyncio.Event | None = None

        @app_commands.command(name="veo", description="Make a video from a prompt")
        async def veo(
            interaction: discord.Interaction, prompt: str, image: discord.Attachment | None = None
        ) -> None:
            callback = await interaction.response.defer(thinking=True)
            if self.gate is not None:
                await self.gate.wait()
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

        @app_commands.context_menu(name="Animate")
        async def animate(interaction: discord.Interaction, message: discord.Message) -> None:
            urls = " ".join(a.url for a in message.attachments)
            await interaction.response.send_message(f"{message.content}|{urls}", ephemeral=True)

        self.tree.add_command(animate)

        admin = app_commands.Group(name="admin", description="Admin tools")
        quota = app_commands.Group(name="quota", description="Quotas", parent=admin)

        @quota.command(name="set", description="Set a user's quota")
        async def quota_set(
            interaction: discord.Interaction, user: discord.Member, amount: int
        ) -> None:
            perms = interaction.permissions.manage_guild
            await interaction.response.send_message(f"{user.id} {amount} {perms}")

        self.tree.add_command(admin)

        @app_commands.command(name="panel", description="A button that opens a modal")
        async def panel(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("panel", view=PanelView())

        self.tree.add_command(panel)

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
    handle = await emu.dispatch_slash_command(
        "veo", {"prompt": "a cat"}, attachments={"image": image}
    )
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

    async with aiohttp.ClientSession() as http, http.get(stored.url) as got:
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
    bot.gate = asyncio.Event()
    handle = await emu.dispatch_slash_command("veo", {"prompt": "late"})
    await handle.wait_for_callback()
    emu.advance(15 * 60 + 1)
    bot.gate.set()
    outcome = await asyncio.wait_for(bot.outcomes.get(), 5)
    assert isinstance(outcome, discord.HTTPException)
    assert (outcome.status, outcome.code) == (401, 50027)
    # The message itself can still be edited with the bot token, as on Discord.
    channel = bot.get_partial_messageable(emu.channel.id)
    await channel.get_partial_message(handle.original_message_id or 0).edit(content="late")
    assert handle.original_message().content == "late"
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


async def test_wrong_token_is_rejected(emu: DiscordEmulator) -> None:
    client = discord.Client(intents=discord.Intents.none())
    with pytest.raises(discord.LoginFailure):
        await client.login("not-the-token")
    await client.close()
    assert emu.requests("GET /users/@me")[0].auth == "Bot(invalid)"


async def test_missing_permissions_and_access(emu: DiscordEmulator, bot: EmuBot) -> None:
    secret = emu.guild.add_text_channel("secret")
    emu.deny_channel(emu.channel.id, code=50013)
    emu.deny_channel(secret.id, code=50001)
    with pytest.raises(discord.Forbidden) as denied:
        await bot.get_partial_messageable(emu.channel.id).send("hi")
    assert denied.value.code == 50013
    with pytest.raises(discord.Forbidden) as hidden:
        await bot.get_partial_messageable(secret.id).send("hi")
    assert hidden.value.code == 50001
    # Interaction responses do not need channel permissions, but app_permissions tells the bot.
    handle = await emu.dispatch_slash_command("veo", {"prompt": "p"})
    await asyncio.wait_for(bot.outcomes.get(), 5)
    assert handle.original_message().attachments
    assert int(handle.payload["app_permissions"]) & (1 << 11) == 0
    emu.assert_no_violations()


async def test_guild_joined_while_online(emu: DiscordEmulator, bot: EmuBot) -> None:
    waiting = asyncio.create_task(bot.wait_for("guild_join", timeout=5))
    guild = await emu.join_guild("Boosted", owner=emu.owner, premium_tier=3)
    seen = await waiting
    assert seen.id == guild.id and seen.filesize_limit == 100 * 1024 * 1024


async def test_boosted_guild_limit_reaches_the_bot(emu: DiscordEmulator) -> None:
    emu.guild.premium_tier = 2
    client = EmuBot()
    client.upload = b"\x00" * (20 * 1024 * 1024)
    task = await start_bot(emu, client)
    try:
        await emu.dispatch_slash_command("veo", {"prompt": "big"})
        _, limit, _ = await asyncio.wait_for(client.outcomes.get(), 5)
        assert limit == 50 * 1024 * 1024
        assert client.get_guild(emu.guild.id).filesize_limit == limit  # type: ignore[union-attr]
    finally:
        await client.close()
        await asyncio.wait_for(task, 5)


async def test_cdn_serves_head_and_range(emu: DiscordEmulator) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(1000)
    url = emu.add_cdn_file("photo.png", png, "image/png")
    async with aiohttp.ClientSession() as http:
        async with http.head(url) as head:
            assert head.status == 200
            assert head.headers["Content-Type"] == "image/png"
            assert head.headers["Content-Length"] == str(len(png))
        async with http.get(url, headers={"Range": "bytes=0-7"}) as part:
            assert part.status == 206
            assert part.headers["Content-Range"] == f"bytes 0-7/{len(png)}"
            assert await part.read() == png[:8]
        async with http.get(url.replace("photo.png", "other.png")) as missing:
            assert missing.status == 404
    emu.advance(86_400 + 1)  # signed CDN links expire (the ex= query parameter)
    async with aiohttp.ClientSession() as http, http.get(url) as expired:
        assert expired.status == 404
        assert await expired.text() == "This content is no longer available."


async def test_context_menu_sees_content_without_intent(emu: DiscordEmulator, bot: EmuBot) -> None:
    photo = emu.add_cdn_file("dog.jpg", b"\xff\xd8\xff" + bytes(64))
    posted = await emu.post_user_message(emu.channel.id, "make it move", attachments=[photo])
    seen = await asyncio.wait_for(bot.seen_messages.get(), 5)
    assert seen.content == "" and seen.attachments == []  # no Message Content intent
    handle = await emu.dispatch_context_menu("Animate", posted)
    await handle.wait_for_callback()
    reply = handle.original_message()
    assert reply.ephemeral
    assert reply.content == f"make it move|{posted.attachments[0].url}"
    emu.assert_no_violations()


async def test_subcommand_group_options_are_typed(emu: DiscordEmulator, bot: EmuBot) -> None:
    handle = await emu.dispatch_slash_command(
        "admin quota set", {"user": emu.member, "amount": 3}, user=emu.moderator
    )
    await handle.wait_for_callback()
    assert handle.original_message().content == f"{emu.member.id} 3 True"
    with pytest.raises(ValueError, match="required option 'amount'"):
        await emu.dispatch_slash_command("admin quota set", {"user": emu.member})


async def test_button_modal_and_followup(emu: DiscordEmulator, bot: EmuBot) -> None:
    panel = await emu.dispatch_slash_command("panel")
    await panel.wait_for_callback()
    click = await emu.dispatch_component("panel:open", panel.original_message())
    opened = await click.wait_for_callback()
    assert opened.json["type"] == 9 and click.modal is not None
    submit = await emu.dispatch_modal_submit("prompt-modal", {"prompt": "a red kite"})
    await submit.wait_for_callback()
    followup = await emu.wait_for_request("POST /webhooks/{application_id}/{interaction_token}")
    assert followup.status == 200 and followup.query["wait"] == "1"
    replies = [r.content for r in emu.channel_messages(emu.channel.id) if r.ephemeral]
    assert replies == ["queued: a red kite", "second note"]
    emu.assert_no_violations()


async def test_dm_slash_command(emu: DiscordEmulator, bot: EmuBot) -> None:
    handle = await emu.dispatch_slash_command("veo", {"prompt": "dm"}, dm=True)
    await asyncio.wait_for(bot.outcomes.get(), 5)
    assert handle.payload["context"] == 1 and "member" not in handle.payload
    assert handle.original_message().guild_id is None
    emu.assert_no_violations()


async def test_emulated_rate_limit_bucket(emu: DiscordEmulator) -> None:
    route = "POST /channels/{channel_id}/messages"
    emu.set_rate_limit(route, limit=2, window=5.0)
    url = f"{emu.api_base}/channels/{emu.channel.id}/messages"
    headers = {"Authorization": f"Bot {emu.token}"}
    async with aiohttp.ClientSession() as http:
        statuses = []
        for _ in range(3):
            async with http.post(url, json={"content": "x"}, headers=headers) as resp:
                statuses.append(resp.status)
                last = resp
        assert statuses == [200, 200, 429]
        assert last.headers["Via"] == "1.1 google"
        assert last.headers["X-RateLimit-Remaining"] == "0"
        emu.advance(5.0)
        async with http.post(url, json={"content": "x"}, headers=headers) as resp:
            assert resp.status == 200
    assert len(emu.rate_limited) == 1


async def test_gateway_reconnect_resumes(emu: DiscordEmulator, bot: EmuBot) -> None:
    await emu.request_reconnect()
    await emu.wait_for_gateway(lambda f: f.event == "RESUMED")
    assert emu.resume_count == 1 and emu.identify_count == 1
    handle = await emu.dispatch_slash_command("veo", {"prompt": "after resume"})
    await asyncio.wait_for(bot.outcomes.get(), 5)
    assert handle.original_message().attachments


def test_missing_spec_fails_clearly(tmp_path: Any) -> None:
    with pytest.raises(SpecMissingError, match=re.escape("expected at <repo>/../shared/reference")):
        load_spec(str(tmp_path / "nope.json"))


async def test_item12_a_forward_carries_a_snapshot_of_the_message(
    emu: DiscordEmulator, bot: EmuBot
) -> None:
    photo = emu.add_cdn_file("dog.jpg", b"\xff\xd8\xff" + bytes(64))
    posted = await emu.post_user_message(emu.channel.id, "look at him", attachments=[photo])
    await asyncio.wait_for(bot.seen_messages.get(), 5)
    forward = await emu.forward_message(posted, author=emu.owner)
    original_url = posted.attachments[0].url
    snapshot_url = forward.snapshot.attachments[0].url if forward.snapshot else ""
    assert snapshot_url and snapshot_url != original_url  # Discord copies the file

    # Over the gateway, without Message Content: a FORWARD reference, no referenced message,
    # and a snapshot whose content is guarded like the message's own.
    seen = await asyncio.wait_for(bot.seen_messages.get(), 5)
    assert seen.reference is not None
    assert seen.reference.type is discord.MessageReferenceType.forward
    assert seen.reference.message_id == posted.id and seen.reference.resolved is None
    assert seen.content == "" and seen.attachments == []
    (hidden,) = seen.message_snapshots
    assert hidden.attachments == [] and hidden.content == ""

    # Read over REST (and as a context-menu target) the snapshot is whole.
    channel = bot.get_channel(emu.channel.id)
    assert isinstance(channel, discord.TextChannel)
    fetched = await channel.fetch_message(forward.id)
    (snapshot,) = fetched.message_snapshots
    assert snapshot.content == "look at him"
    assert [a.url for a in snapshot.attachments] == [snapshot_url]
    handle = await emu.dispatch_context_menu("Animate", forward)
    resolved = handle.payload["data"]["resolved"]["messages"][str(forward.id)]
    assert resolved["message_snapshots"][0]["message"]["attachments"][0]["url"] == snapshot_url
    assert "referenced_message" not in resolved
    await handle.wait_for_callback()
    emu.assert_no_violations()


async def test_refused_gateway_keeps_the_bot_out_until_allowed(
    emu: DiscordEmulator, bot: EmuBot
) -> None:
    disconnected = asyncio.Event()
    bot.add_listener(_set_on_event(disconnected), "on_disconnect")
    await emu.refuse_gateway()
    await emu.wait_for_gateway_refusal()  # the bot noticed and its reconnect was turned away
    assert disconnected.is_set() and not emu._gateway.live_sessions
    emu.allow_gateway()
    await emu.wait_for_gateway(lambda f: f.event == "RESUMED", timeout=15)
    handle = await emu.dispatch_slash_command("veo", {"prompt": "after the outage"})
    await asyncio.wait_for(bot.outcomes.get(), 5)
    assert handle.original_message().attachments


def _set_on_event(event: asyncio.Event) -> Any:
    async def listener(*_args: object) -> None:
        event.set()

    return listener


# ------------------------------------------------------------------------------------- shards


@pytest.fixture
async def sharded_emu() -> AsyncIterator[DiscordEmulator]:
    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    async with DiscordEmulator(shard_count=2, max_concurrency=2) as emulator:
        point_discord_py_at(emulator.api_base, emulator.gateway_url)
        yield emulator
    discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved


async def start_shard_bots(emu: DiscordEmulator, *shards: tuple[int, int]) -> list[EmuBot]:
    bots = []
    for shard_id, count in shards:
        client = EmuBot(shard_id=shard_id, shard_count=count)
        await client.login(emu.token)
        client.loop.create_task(client.connect(reconnect=False))
        await asyncio.wait_for(client.wait_until_ready(), 5)
        bots.append(client)
    return bots


async def test_each_shard_session_gets_only_its_guilds_events_and_dms_go_to_shard_0(
    sharded_emu: DiscordEmulator,
) -> None:
    emu = sharded_emu
    first = emu.add_guild_on_shard("Shard Zero Guild", shard=0, owner=emu.owner)
    second = emu.add_guild_on_shard("Shard One Guild", shard=1, owner=emu.owner)
    zero, one = await start_shard_bots(emu, (0, 2), (1, 2))
    try:
        await emu.wait_for_command("veo")
        assert sorted(emu.connected_shards()) == [(0, 2), (1, 2)]
        expected: dict[int, set[int]] = {0: set(), 1: set()}
        for guild_id in emu.world.guilds:
            expected[emu.shard_of(guild_id)].add(guild_id)
        assert first.id in expected[0] and second.id in expected[1]
        assert {g.id for g in zero.guilds} == expected[0]
        assert {g.id for g in one.guilds} == expected[1]

        # A command in the shard-1 guild reaches only the shard-1 session.
        handle = await emu.dispatch_slash_command(
            "veo", {"prompt": "on shard one"}, user=emu.owner, guild_id=second.id
        )
        await asyncio.wait_for(one.outcomes.get(), 5)
        assert handle.original_message().attachments
        assert zero.outcomes.empty()

        # So does a message there; a DM goes to shard 0.
        channel = next(iter(second.channels.values()))
        await emu.post_user_message(channel.id, "hello shard one", emu.owner)
        seen = await asyncio.wait_for(one.seen_messages.get(), 5)
        assert seen.guild is not None and seen.guild.id == second.id
        dm = await emu.dispatch_slash_command("veo", {"prompt": "a dm"}, dm=True)
        await asyncio.wait_for(zero.outcomes.get(), 5)
        assert dm.original_message().attachments
        assert one.outcomes.empty()
        seen_by_zero = [zero.seen_messages.get_nowait() for _ in range(zero.seen_messages.qsize())]
        assert seen_by_zero and all(m.guild is None for m in seen_by_zero)  # the DM answer only
        emu.assert_no_violations()
    finally:
        for client in (zero, one):
            await client.close()


async def test_gateway_bot_serves_the_shard_count_and_max_concurrency(
    sharded_emu: DiscordEmulator,
) -> None:
    client = discord.AutoShardedClient(intents=discord.Intents.none())
    await client.login(sharded_emu.token)
    try:
        limits = await client.fetch_session_start_limits()
        shards, url, _ = await client.http.get_bot_gateway()
        assert (shards, limits.max_concurrency) == (2, 2)
        assert url == sharded_emu.gateway_url.rstrip("/")
    finally:
        await client.close()


async def _identify(
    http: aiohttp.ClientSession, emu: DiscordEmulator, shard: list[int]
) -> tuple[int | None, Any]:
    """One raw session: HELLO, then IDENTIFY on `shard`; the op of the answer (None when the
    socket was closed instead) and its data, or the close code."""
    async with http.ws_connect(emu.gateway_url) as ws:
        hello = await ws.receive_json(timeout=5)
        assert hello["op"] == 10
        await ws.send_json({"op": 2, "d": {"token": emu.token, "intents": 1, "shard": shard}})
        msg = await ws.receive(timeout=5)
        if msg.type == aiohttp.WSMsgType.TEXT:
            frame = json.loads(msg.data)
            return frame["op"], frame.get("t") or frame.get("d")
        return None, ws.close_code


async def test_an_identify_too_soon_in_its_bucket_is_answered_invalid_session() -> None:
    async with (
        DiscordEmulator(
            shard_count=4, max_concurrency=2, identify_interval=5.0, validate=False
        ) as emu,
        aiohttp.ClientSession() as http,
    ):
        assert await _identify(http, emu, [0, 4]) == (0, "READY")
        # Shard 2 is in bucket 0 too (2 % 2): within 5 s it is refused, resumable False.
        assert await _identify(http, emu, [2, 4]) == (9, False)
        assert emu.identify_refusals == 1
        assert await _identify(http, emu, [1, 4]) == (0, "READY")  # bucket 1 is free
        emu.advance(5.0)
        assert await _identify(http, emu, [2, 4]) == (0, "READY")
        assert await _identify(http, emu, [4, 4]) == (None, 4010)  # no such shard


async def test_two_sessions_on_one_shard_both_get_the_interaction_and_one_answer_wins(
    sharded_emu: DiscordEmulator,
) -> None:
    """A deploy's overlap: the old and the new process both run shard 1. Both receive the
    interaction; Discord takes the first callback and answers the second 400 40060."""
    emu = sharded_emu
    guild = emu.add_guild_on_shard("Shard One Guild", shard=1, owner=emu.owner)
    old, new = await start_shard_bots(emu, (1, 2), (1, 2))
    try:
        await emu.wait_for_command("veo")
        assert emu.connected_shards() == [(1, 2), (1, 2)]
        handle = await emu.dispatch_slash_command(
            "veo", {"prompt": "twice"}, user=emu.owner, guild_id=guild.id
        )
        await emu.wait_for(lambda r: r.route == CALLBACK and r.status == 400, timeout=5)
        answers = sorted(
            (r.status, (r.response or {}).get("code"))
            for r in emu.requests(CALLBACK)
            if r.params.get("interaction_token") == handle.token
        )
        assert answers == [(200, None), (400, 40060)]
        waits = [asyncio.ensure_future(b.outcomes.get()) for b in (old, new)]
        done, pending = await asyncio.wait(waits, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        for waiting in pending:
            waiting.cancel()
        assert len(done) == 1  # exactly one session answered
        assert handle.original_message().attachments
    finally:
        for client in (old, new):
            await client.close()
