"""The real bot process on PostgreSQL (`VEO_DATABASE_URL`): a `/veo` goes from the queue to a
delivered, charged video with every row in the server's database and no SQLite file made."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.segmind.fake import FakeSegmind
from bot.store import open_store
from harness.bot_process import BotProcess
from harness.discord_emulator import DiscordEmulator
from harness.postgres import PostgresServer


def sqlite_files(root: Path) -> list[Path]:
    return list(root.rglob("*.sqlite3"))


@pytest.fixture
async def database_url(postgres_server: PostgresServer) -> str:
    return postgres_server.url(await postgres_server.create_database())  # empty: bot migrates


@pytest.fixture
async def bot_on_postgres(
    emu: DiscordEmulator, fake: FakeSegmind, tmp_path: Path, database_url: str
) -> AsyncIterator[BotProcess]:
    process = BotProcess(emu, fake, tmp_path, {"VEO_DATABASE_URL": database_url})
    await process.start()
    await emu.wait_for_command("veo")
    yield process
    code = await process.stop()
    assert code == 0, f"the bot did not shut down cleanly ({code}):\n{process.tail()}"
    emu.assert_no_violations()


async def test_a_video_is_delivered_and_charged_on_postgres(
    emu: DiscordEmulator, bot_on_postgres: BotProcess, database_url: str, tmp_path: Path
) -> None:
    handle = await emu.dispatch_slash_command(
        "veo", {"prompt": "a red fox running through snow", "duration": 4}, user=emu.member
    )
    await handle.wait_for_callback()
    final = await emu.wait_for(
        lambda r: (
            r.params.get("interaction_token") == handle.token
            and r.method == "PATCH"
            and r.status == 200
            and "ready" in str((r.json or {}).get("content", ""))
        ),
        timeout=40,
    )
    assert final.files, "the video was attached"
    async with await open_store(database_url) as store:
        jobs = await store.recent_jobs(emu.guild.id)
    assert [(j.state, j.ledger_status, j.user_id) for j in jobs] == [
        ("delivered", "charged", emu.member.id)
    ]
    assert not sqlite_files(tmp_path), "no SQLite file beside the PostgreSQL store"
