"""Fixtures for end-to-end tests: emulator + fake in this process, the bot as a subprocess."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.segmind.fake import FakeSegmind
from harness.bot_process import FAKE_KEY, BotProcess
from harness.discord_emulator import DiscordEmulator
from tests.conftest import StartFake


@pytest.fixture
async def emu() -> AsyncIterator[DiscordEmulator]:
    async with DiscordEmulator() as emulator:
        yield emulator


@pytest.fixture
async def fake(start_fake: StartFake) -> FakeSegmind:
    return await start_fake(api_key=FAKE_KEY, queue_seconds=0.1, processing_seconds=0.4)


@pytest.fixture
async def bot(
    emu: DiscordEmulator, fake: FakeSegmind, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[BotProcess]:
    marker = request.node.get_closest_marker("bot_env")
    env = dict(marker.args[0]) if marker else {}
    process = BotProcess(emu, fake, tmp_path, env)
    await process.start()
    await emu.wait_for_command("veo")
    yield process
    code = await process.stop()
    assert code == 0, f"the bot did not shut down cleanly ({code}):\n{process.tail()}"
    emu.assert_no_violations()
