"""Starting the bot: demo mode without a Segmind key, instant commands in a dev guild."""

from __future__ import annotations

from pathlib import Path

from bot.segmind.fake import FakeSegmind
from harness.bot_process import BotProcess
from harness.discord_emulator import DiscordEmulator
from tests.e2e.helpers import final_for


async def test_demo_mode_without_a_key_says_so_loudly_and_labels_the_clip(
    emu: DiscordEmulator, fake: FakeSegmind, tmp_path: Path
) -> None:
    bot = BotProcess(emu, fake, tmp_path, {"SEGMIND_API_KEY": "", "VEO_DEMO_SECONDS": "0.5"})
    await bot.start()
    try:
        await bot.wait_for_log("DEMO MODE")
        await emu.wait_for_command("veo")
        handle = await emu.dispatch_slash_command("veo", {"prompt": "a demo"}, user=emu.member)
        await handle.wait_for_callback()
        final = await final_for(emu, handle.token)
        assert len(final.files) == 1
        assert "test clip" in final.json["content"]
        assert fake.submits == []  # the built-in fake served it, not the test's
        # The balance watch reads the built-in fake's balance too (the demo's $100).
        await bot.wait_for_log("Segmind balance $")
        assert not any("balance check failed" in line for line in bot.lines)
    finally:
        assert await bot.stop() == 0
    emu.assert_no_violations()


async def test_dev_guild_gets_its_commands_directly(
    emu: DiscordEmulator, fake: FakeSegmind, tmp_path: Path
) -> None:
    bot = BotProcess(emu, fake, tmp_path, {"DISCORD_DEV_GUILD_ID": str(emu.guild.id)})
    await bot.start()
    try:
        await emu.wait_for_command("veo", guild_id=emu.guild.id)
        guild_sync = emu.requests("PUT /applications/{application_id}/guilds/{guild_id}/commands")
        assert len(guild_sync) == 1
        names = {c["name"] for c in guild_sync[0].json}
        assert {"veo", "veo-quota", "veo-admin"} <= names
        await bot.wait_for_log("synced")
        assert any("to guild" in line for line in bot.lines)
    finally:
        assert await bot.stop() == 0
    emu.assert_no_violations()


async def test_start_up_logs_the_invite_url_with_only_the_needed_permissions(
    emu: DiscordEmulator, fake: FakeSegmind, tmp_path: Path
) -> None:
    bot = BotProcess(emu, fake, tmp_path)
    await bot.start()
    try:
        line = await bot.wait_for_log("invite the bot with:")
        assert f"client_id={emu.application_id}" in line
        assert "scope=bot+applications.commands" in line
        # View Channel, Send Messages, Send in Threads, Embed Links, Attach Files, Read History.
        assert "permissions=274878024704" in line
        assert emu.token not in "\n".join(bot.lines)  # the token never reaches the log
    finally:
        assert await bot.stop() == 0
