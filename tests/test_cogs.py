"""Every extension loads, and the commands it registers are what members and moderators see."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import discord
import pytest
from discord import app_commands

from bot.chat.app import EXTENSIONS, VeoBot
from bot.config import load_settings


@pytest.fixture
async def bot(tmp_path: Path) -> AsyncIterator[VeoBot]:
    # Extensions load on the bot's services without logging in: nothing here talks to Discord,
    # and without a Segmind key the services use the built-in fake.
    settings = load_settings(None, veo_db_path=tmp_path / "veo.db", veo_work_dir=tmp_path / "w")
    veo = VeoBot(settings)
    await veo.open_services()
    yield veo
    await veo.close()


def _walk(commands: list[app_commands.Command | app_commands.Group | app_commands.ContextMenu]):  # type: ignore[no-untyped-def]
    for command in commands:
        yield command
        if isinstance(command, app_commands.Group):
            yield from _walk(list(command.commands))


async def test_every_extension_loads_and_command_names_do_not_collide(bot: VeoBot) -> None:
    for extension in EXTENSIONS:
        await bot.load_extension(extension)
    slash = bot.tree.get_commands(type=discord.AppCommandType.chat_input)
    names = [c.name for c in slash]
    assert len(names) == len(set(names)), names
    assert {"veo", "veo-quota", "veo-admin"} <= set(names)
    menus = bot.tree.get_commands(type=discord.AppCommandType.message)
    assert [m.name for m in menus] == ["Animate with Veo"]
    for command in _walk(slash):
        assert command.description, command.qualified_name  # Discord shows it as help
        # Discord refuses a sync with a description over 100 characters (not in the spec).
        assert len(command.description) <= 100, command.qualified_name
        if isinstance(command, app_commands.Command):
            for parameter in command.parameters:
                assert parameter.description and parameter.description != "…", (
                    command.qualified_name,
                    parameter.name,
                )
                assert len(parameter.description) <= 100, (command.qualified_name, parameter.name)


async def test_moderator_commands_are_hidden_by_default_and_guild_only(bot: VeoBot) -> None:
    for extension in EXTENSIONS:
        await bot.load_extension(extension)
    admin = bot.tree.get_command("veo-admin")
    assert admin is not None
    payload = admin.to_dict(bot.tree)
    assert (
        int(payload["default_member_permissions"]) == discord.Permissions(manage_guild=True).value
    )
    assert payload.get("contexts") == [0] or payload.get("dm_permission") is False


async def test_extensions_unload_cleanly(bot: VeoBot) -> None:
    for extension in EXTENSIONS:
        await bot.load_extension(extension)
    for extension in reversed(EXTENSIONS):
        await bot.unload_extension(extension)
    assert bot.tree.get_commands() == []
    assert bot.tree.get_commands(type=discord.AppCommandType.message) == []
