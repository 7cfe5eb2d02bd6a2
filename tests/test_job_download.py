"""The job lifecycle from a finished Segmind job to the file it attaches: what is downloaded,
what is kept, and what a member is (not) charged when the file is no good.

Real pieces only: the SQLite store in a temp dir, the Segmind client against the fake over
loopback, and a recording `JobOutput` in place of Discord."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bot.config import load_settings
from bot.jobs import NOT_COUNTED, Finished, JobService, Receipt
from bot.params import parse_params
from bot.progress import Progress
from bot.quota import LimitDefaults
from bot.segmind.client import SegmindClient
from bot.segmind.fake import FakeSegmind, Fault
from bot.segmind.fake import server as fake_server
from bot.store import Job, ReserveRequest, Store, open_store

KEY = "job-download-test-key-0123456789"
GUILD, CHANNEL, USER = 10, 20, 30


@dataclass
class RecordingOutput:
    """`JobOutput` that remembers what the member would have seen."""

    failures: list[str] = field(default_factory=list)
    deliveries: list[Finished] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    async def progress(self, job: Job, progress: Progress) -> None:
        pass

    async def deliver(self, job: Job, finished: Finished) -> Receipt:
        self.deliveries.append(finished)
        return Receipt(message_id=1, method="channel-post")

    async def find_delivery(self, job: Job) -> Receipt | None:
        return None

    async def failed(self, job: Job, message: str) -> None:
        self.failures.append(message)

    async def finished(self, job: Job) -> None:
        self.ended.set()


@dataclass
class Rig:
    fake: FakeSegmind
    store: Store
    output: RecordingOutput
    service: JobService
    work_dir: Path

    async def run_one(self, prompt: str = "a quiet harbour") -> Job:
        params = parse_params({"prompt": prompt, "duration": 4, "seed": 7})
        job_id = await self.service.enqueue(
            ReserveRequest(
                guild_id=GUILD, channel_id=CHANNEL, user_id=USER, role_ids=(), params=params
            )
        )
        assert isinstance(job_id, int)
        await asyncio.wait_for(self.output.ended.wait(), timeout=30)
        job = await self.store.get_job(job_id)
        assert job is not None
        return job


@pytest.fixture
async def fake() -> AsyncIterator[FakeSegmind]:
    async with FakeSegmind(api_key=KEY, queue_seconds=0.05, processing_seconds=0.1) as server:
        yield server


async def _rig(fake: FakeSegmind, tmp_path: Path, **client_options: float) -> AsyncIterator[Rig]:
    settings = load_settings(env_file=None)
    store = await open_store(tmp_path / "veo.sqlite3")
    client = SegmindClient(KEY, fake.base_url, poll_floor=0.05, poll_ceiling=0.2, **client_options)
    output = RecordingOutput()
    work_dir = tmp_path / "work"
    service = JobService(
        store,
        client,
        output,
        limit_defaults=LimitDefaults.from_settings(settings),
        max_concurrent=2,
        work_dir=work_dir,
        max_video_bytes=50 * 1024 * 1024,
        deadline=60.0,
    )
    rig = Rig(fake, store, output, service, work_dir)
    try:
        yield rig
    finally:
        await service.stop()
        await client.close()
        await store.close()


@pytest.fixture
async def rig(fake: FakeSegmind, tmp_path: Path) -> AsyncIterator[Rig]:
    async for made in _rig(fake, tmp_path):
        await made.service.start()
        yield made


async def _refunded(rig: Rig) -> bool:
    usage = await rig.store.usage(GUILD, USER)
    return usage.refunded == 1 and usage.cost == 0


# --- item 4: partial downloads are cleaned at start-up -----------------------------------------


async def test_item4_partial_downloads_left_by_a_kill_are_removed_at_start(
    fake: FakeSegmind, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    leftovers = [".job-3.mp4.0a1b2c3d.part", "job-4.mp4", "job-4.fit.mp4.part"]
    for name in leftovers:
        (work / name).write_bytes(b"x" * 1000)
    (work / "notes.txt").write_text("not ours")
    async for made in _rig(fake, tmp_path):
        await made.service.start()
        assert sorted(os.listdir(work)) == ["notes.txt"]


# --- item 3: the output download is bounded and checked ----------------------------------------


async def test_item3_a_file_that_is_not_a_video_fails_uncharged_with_the_job_id_logged(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.fake.inject("output", Fault(body=b"<html>this is no video</html>" * 100))
    with caplog.at_level(logging.WARNING, logger="bot.jobs"):
        job = await rig.run_one()
    assert job.state == "failed"
    assert rig.output.deliveries == []
    assert len(rig.output.failures) == 1
    assert "not a playable video" in rig.output.failures[0]
    assert NOT_COUNTED in rig.output.failures[0]
    assert await _refunded(rig)
    assert any(
        f"job {job.id}" in r.getMessage() and "not a playable video" in r.getMessage()
        for r in caplog.records
    )
    assert os.listdir(rig.work_dir) == []


async def test_item3_a_redirect_to_a_non_http_url_is_not_followed(rig: Rig) -> None:
    rig.fake.inject("output", Fault(status=302, headers={"Location": "file:///etc/passwd"}))
    job = await rig.run_one()
    assert job.state == "failed"
    assert rig.output.deliveries == []
    assert NOT_COUNTED in rig.output.failures[0]
    assert await _refunded(rig)


async def test_item3_the_download_has_a_total_time_limit(
    fake: FakeSegmind, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Each hold is under the socket read timeout, so only a limit on the whole download stops
    # a host that keeps the bot waiting.
    fake.inject("output", Fault(status=503, delay=0.4), times=10)
    async for made in _rig(fake, tmp_path, download_timeout=1.0, backoff_base=0.01):
        await made.service.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with caplog.at_level(logging.WARNING, logger="bot.jobs"):
            job = await made.run_one()
        assert job.state == "failed"
        assert loop.time() - started < 4.0
        assert "took too long to download" in made.output.failures[0]
        assert await _refunded(made)
        assert any(
            f"job {job.id}" in r.getMessage() and "longer than 1 s" in r.getMessage()
            for r in caplog.records
        )


async def test_item3_the_first_http_entry_of_the_output_is_the_one_fetched(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    request_id = "0f0e0d0c-0000-4000-8000-000000000001"
    monkeypatch.setattr(fake_server.uuid, "uuid4", lambda: uuid.UUID(request_id))
    real = f"{rig.fake.base_url}/_fake/outputs/{request_id}.mp4"
    # Segmind lists a data: URL before the real file.
    body = {
        "status": "COMPLETED",
        "request_id": request_id,
        "metrics": {"cost": 0.4},
        "output": ["data:video/mp4;base64,AAAA", real],
    }
    rig.fake.inject("result", Fault(body=body))
    job = await rig.run_one()
    assert job.state == "delivered", rig.output.failures
    assert job.output_url == real
    assert rig.output.deliveries[0].output_url == real
