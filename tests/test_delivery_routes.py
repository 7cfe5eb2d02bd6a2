"""Route names agree between the write-ahead checkpoint, the receipt and `find_delivery`, and a
database from the previous version (whose checkpoint wrote "placeholder") still resumes."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bot.chat.output import DiscordOutput
from bot.params import VeoParams
from bot.quota import LimitDefaults
from bot.store import Job, Reserved, ReserveRequest, open_store
from harness.clocks import ManualClock

BOT_ID = 999
PLACEHOLDER_ID = 555


class _Channel:
    """The one channel read: the placeholder is there, carrying (or not) the job's video."""

    def __init__(self, placeholder: Any) -> None:
        self.placeholder = placeholder
        self.fetched: list[int] = []

    async def fetch_message(self, message_id: int) -> Any:
        self.fetched.append(message_id)
        return self.placeholder


class _Client:
    def __init__(self, channel: _Channel) -> None:
        self.user = SimpleNamespace(id=BOT_ID)
        self.application_id = 1
        self.channel = channel

    def get_partial_messageable(self, channel_id: int, *, guild_id: int | None = None) -> Any:
        return self.channel


def _placeholder(job_id: int, *, with_video: bool) -> Any:
    files = [SimpleNamespace(filename=f"veo-{job_id}.mp4")] if with_video else []
    return SimpleNamespace(
        id=PLACEHOLDER_ID, author=SimpleNamespace(id=BOT_ID), attachments=files, content=""
    )


@pytest.fixture
async def job(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Job]:
    store = await open_store(tmp_path / "veo.db", clock=clock)
    try:
        reserved = await store.reserve(
            ReserveRequest(
                guild_id=1,
                channel_id=2,
                user_id=3,
                role_ids=(),
                params=VeoParams(prompt="a fox"),
                interaction_token="token",
                interaction_created_at=clock(),
                placeholder_channel_id=2,
                placeholder_message_id=PLACEHOLDER_ID,
            ),
            LimitDefaults(),
        )
        assert isinstance(reserved, Reserved)
        row = await store.get_job(reserved.job_id)
        assert row is not None
        yield row
    finally:
        await store.close()


def _output(channel: _Channel, clock: ManualClock) -> DiscordOutput:
    async def no_log_channel(guild_id: int) -> int | None:
        return None

    return DiscordOutput(
        _Client(channel),  # type: ignore[arg-type]
        log_channel=no_log_channel,
        edit_interval=0.0,
        mention_on_ready=False,
        demo=False,
        clock=clock,
    )


@pytest.mark.parametrize(
    ("stored", "receipt"),
    [
        ("channel-edit", "channel-edit"),
        ("interaction", "interaction"),
        # The previous version wrote "placeholder"; the token has expired, so the placeholder
        # is now the bot token's to edit.
        ("placeholder", "channel-edit"),
        (None, "channel-edit"),
    ],
)
async def test_a_video_on_the_placeholder_is_found_under_a_route_name(
    job: Job, clock: ManualClock, stored: str | None, receipt: str
) -> None:
    clock.advance(20 * 60)  # past the interaction token's life: the channel is read
    job = dataclasses.replace(job, state="delivering", delivery_method=stored)
    channel = _Channel(_placeholder(job.id, with_video=True))
    found = await _output(channel, clock).find_delivery(job)
    assert found is not None
    assert (found.message_id, found.method) == (PLACEHOLDER_ID, receipt)
    assert channel.fetched == [PLACEHOLDER_ID]


async def test_a_placeholder_without_the_video_is_not_a_delivery(
    job: Job, clock: ManualClock
) -> None:
    clock.advance(20 * 60)
    job = dataclasses.replace(job, state="delivering", delivery_method="channel-edit")
    channel = _Channel(_placeholder(job.id, with_video=False))
    assert await _output(channel, clock).find_delivery(job) is None
