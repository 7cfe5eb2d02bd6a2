"""Sharding settings and Discord's sharding rules: which shards a node runs, where a guild's
events arrive, the IDENTIFY buckets, and the client the bot builds from them."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import discord
import discord.gateway
import discord.http
import pytest
from discord import app_commands

from bot.chat.app import ShardedVeoBot, VeoBot, make_bot
from bot.chat.intake import _start
from bot.chat.replies import acknowledged_elsewhere, first_response
from bot.config import SettingsError, load_settings
from bot.params import VeoParams
from bot.quota import LimitDefaults, LimitOverride
from bot.request import VeoRequest
from bot.shards import ShardPlan, identify_bucket, parse_shard_ids, shard_for_guild
from bot.store import ReserveRequest, open_store
from harness.bot_process import wait_until
from harness.discord_emulator import DiscordEmulator, point_discord_py_at
from tests.lifecycle_support import CHANNEL, GUILD, MEMBER, MODERATOR, make_service


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("DISCORD_", "SEGMIND_", "VEO_")):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("text", "ids"),
    [("0", (0,)), ("0-3", (0, 1, 2, 3)), ("0,2", (0, 2)), (" 4 , 0-1 ", (0, 1, 4))],
)
def test_shard_ids_are_read_as_lists_and_ranges(text: str, ids: tuple[int, ...]) -> None:
    assert parse_shard_ids(text) == ids


@pytest.mark.parametrize(
    ("count", "ids", "named"),
    [
        ("2", "2", "shard 2 is not below the shard count 2"),
        ("4", "0,x", "'x' is not a shard id"),
        ("4", "3-1", "runs backwards"),
        ("4", "0,,1", "'' is not a shard id"),
        ("4", "-1", "'-1' is not a shard id"),
        ("4", "1,0-2", "shard 1 is listed twice"),
        (None, "0", "DISCORD_SHARD_IDS needs DISCORD_SHARD_COUNT"),
        ("0", None, "DISCORD_SHARD_COUNT"),
    ],
)
def test_a_bad_shard_setting_stops_start_up_in_one_line(
    monkeypatch: pytest.MonkeyPatch, count: str | None, ids: str | None, named: str
) -> None:
    if count is not None:
        monkeypatch.setenv("DISCORD_SHARD_COUNT", count)
    if ids is not None:
        monkeypatch.setenv("DISCORD_SHARD_IDS", ids)
    with pytest.raises(SettingsError) as info:
        load_settings(None)
    assert named in str(info.value)
    assert "\n" not in str(info.value)


def test_a_count_alone_runs_every_shard_and_nothing_set_runs_one_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings(None).shard_plan is None
    monkeypatch.setenv("DISCORD_SHARD_COUNT", "3")
    assert load_settings(None).shard_plan == ShardPlan(3, (0, 1, 2))
    monkeypatch.setenv("DISCORD_SHARD_IDS", "1-2")
    plan = load_settings(None).shard_plan
    assert plan == ShardPlan(3, (1, 2)) and not plan.syncs_commands
    assert ShardPlan(3, (0,)).syncs_commands


def test_guilds_and_dms_land_on_discords_shard() -> None:
    # Discord's formula: (guild_id >> 22) % shard_count; DMs on shard 0.
    guild = (123_456 << 22) | 0x3FFFFF
    assert shard_for_guild(guild, 4) == 123_456 % 4
    assert shard_for_guild(None, 4) == 0
    assert [identify_bucket(s, 16) for s in (0, 15, 16, 17)] == [0, 15, 0, 1]
    assert identify_bucket(5, 1) == 0


def test_the_bot_shards_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = make_bot(load_settings(None))
    assert type(plain) is VeoBot and not isinstance(plain, discord.AutoShardedClient)
    assert plain.shard_count is None
    monkeypatch.setenv("DISCORD_SHARD_COUNT", "4")
    monkeypatch.setenv("DISCORD_SHARD_IDS", "1,3")
    sharded = make_bot(load_settings(None))
    assert isinstance(sharded, ShardedVeoBot) and isinstance(sharded, VeoBot)
    assert isinstance(sharded, discord.AutoShardedClient)
    assert (sharded.shard_count, sharded.shard_ids) == (4, [1, 3])


def already_acknowledged() -> discord.HTTPException:
    response = SimpleNamespace(status=400, reason="Bad Request")
    return discord.HTTPException(
        response,  # type: ignore[arg-type]
        {"code": 40060, "message": "Interaction has already been acknowledged."},
    )


def test_a_second_acknowledgement_is_recognised_however_it_is_wrapped() -> None:
    error = already_acknowledged()
    assert acknowledged_elsewhere(error)
    assert acknowledged_elsewhere(app_commands.CommandInvokeError(_command(), error))
    other = discord.HTTPException(
        SimpleNamespace(status=404, reason="Not Found"),  # type: ignore[arg-type]
        {"code": 10062, "message": "Unknown interaction"},
    )
    assert not acknowledged_elsewhere(other)
    assert not acknowledged_elsewhere(ValueError("40060"))


async def test_the_loser_of_a_race_to_answer_stops_with_one_info_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    interaction = SimpleNamespace(id=4242)

    async def refused() -> None:
        raise already_acknowledged()

    async def accepted() -> None:
        return None

    with caplog.at_level(logging.INFO, logger="bot.chat.replies"):
        assert not await first_response(interaction, refused())  # type: ignore[arg-type]
        assert await first_response(interaction, accepted())  # type: ignore[arg-type]
    assert [(r.levelno, r.exc_info) for r in caplog.records] == [(logging.INFO, None)]
    assert "4242" in caplog.records[0].getMessage()

    async def broken() -> None:
        raise discord.HTTPException(
            SimpleNamespace(status=500, reason="Server Error"),  # type: ignore[arg-type]
            {"code": 0, "message": "boom"},
        )

    with pytest.raises(discord.HTTPException):  # anything else is still an error
        await first_response(interaction, broken())  # type: ignore[arg-type]


def _command() -> app_commands.Command[Any, Any, None]:
    async def veo(interaction: discord.Interaction) -> None: ...

    return app_commands.Command(name="veo", description="x", callback=veo)


@pytest.fixture
async def emu() -> AsyncIterator[DiscordEmulator]:
    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    async with DiscordEmulator() as emulator:
        point_discord_py_at(emulator.api_base, emulator.gateway_url)
        yield emulator
    discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved


async def test_a_stopping_node_leaves_the_gateway_before_it_drains(
    emu: DiscordEmulator, tmp_path: Path
) -> None:
    """In a deploy the new node runs the same shard: the old one's sessions must be gone
    while it still drains, so the shard's next /veo reaches the new node rather than being
    answered "restarting" by the old."""
    settings = load_settings(
        None,
        discord_shard_count=1,
        veo_db_path=tmp_path / "veo.sqlite3",
        veo_work_dir=tmp_path / "work",
    )
    bot = make_bot(settings)
    await bot.login(emu.token)
    running = asyncio.create_task(bot.connect())
    await emu.wait_for_shards([(0, 1)])
    await emu.wait_for_command("veo")

    jobs = bot.services.jobs
    drain = jobs.stop
    draining, released = asyncio.Event(), asyncio.Event()

    async def held_drain() -> None:
        draining.set()
        await released.wait()
        await drain()

    jobs.stop = held_drain  # type: ignore[method-assign]
    closing = asyncio.create_task(bot.close())
    try:
        await asyncio.wait_for(draining.wait(), 5)
        await wait_until(lambda: not emu.connected_shards(), timeout=5, what="no session left")
        assert not released.is_set()  # still draining
    finally:
        released.set()
        await asyncio.wait_for(closing, 10)
        await asyncio.wait_for(running, 10)


# ------------------------------------------------------------------- one job per Discord event


async def test_the_twin_of_an_event_stays_quiet_whichever_check_sees_the_first_job(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Intake on the second session of a shard: its twin's job either holds the member's
    slot already (the read-only precheck refuses — not to be told, the member has their job)
    or is found by the reservation itself. Either way nothing is said and nothing charged;
    a different event of the same member is refused as ever."""
    store = await open_store(tmp_path / "veo.sqlite3")
    jobs = make_service(store, None, None, tmp_path / "work", defaults=LimitDefaults())  # type: ignore[arg-type]
    # No approval lane, no rules in this guild, credits left: intake's reservation goes
    # straight to the job core.
    lane = SimpleNamespace(enqueue=jobs.enqueue)
    services = SimpleNamespace(
        store=store, jobs=jobs, approvals=lane, balance=SimpleNamespace(paused=False)
    )
    bot = SimpleNamespace(services=services, settings=load_settings(None))
    told: list[str] = []

    async def refuse_with(text: str) -> None:
        told.append(text)

    async def start(event_id: int) -> int | None:
        async def build(params: VeoParams) -> ReserveRequest:
            return ReserveRequest(GUILD, CHANNEL, MEMBER, (), params, event_id=event_id)

        return await _start(
            bot,  # type: ignore[arg-type]
            VeoRequest(prompt="a heron at dawn"),
            build,
            refuse_with,
            member=(GUILD, MEMBER, ()),
            event_id=event_id,
            channel=(CHANNEL, None),
        )

    try:
        with caplog.at_level(logging.INFO, logger="bot.chat.intake"):
            first = await start(55)
            assert first is not None and told == []
            # One at a time: the precheck refuses the twin, which then finds its job.
            assert await start(55) is None
            assert told == []
            assert f"event 55 already made job {first}" in caplog.text
            # Another request of the same member is refused and told, as ever.
            assert await start(56) is None
            assert len(told) == 1 and "One video at a time" in told[0]
            # With room for more, the reservation itself finds the twin's job.
            await store.set_user_override(
                GUILD, MEMBER, LimitOverride(concurrency=5), actor_id=MODERATOR
            )
            second = await start(77)
            assert second is not None
            assert await start(77) is None
            assert f"event 77 already made job {second}" in caplog.text
            assert len(told) == 1
        assert [j.id for j in await store.nonterminal_jobs()] == [first, second]
    finally:
        await store.close()
