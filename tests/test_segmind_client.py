"""The Segmind client against real HTTP on loopback: the fake Segmind, plus tiny servers of our
own where a fault must be exact. Clocks and sleeps are injected, so retries and polling take no
real time; every money rule is checked by counting the POSTs the server saw."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import traceback
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.params import VeoParams
from bot.segmind.client import (
    AuthError,
    BadRequest,
    ContentBlocked,
    Credits,
    DeadlineExceeded,
    DownloadError,
    GenerationFailed,
    InsufficientCredits,
    JobState,
    ModelGone,
    NotFound,
    OutputTooLarge,
    RateLimited,
    SegmindClient,
    SegmindError,
    StatusReport,
    SubmittedJob,
    SubmitUncertain,
    Unavailable,
    looks_blocked,
    output_urls,
    parse_reset,
)
from bot.segmind.fake import FakeSegmind, Fault
from tests.conftest import StartFake

KEY = "sk-test-0123456789abcdef-SECRET"
WALL_START = 1_700_000_000.0


class FakeTime:
    """A clock that only moves when someone sleeps on it; sleeps return at once."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[float], Any] | None = None

    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL_START + (self.now - 1000.0)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
        if self.on_sleep is not None:
            maybe = self.on_sleep(seconds)
            if asyncio.iscoroutine(maybe):
                await maybe
        await asyncio.sleep(0)


@pytest.fixture
def ft() -> FakeTime:
    return FakeTime()


@pytest.fixture
async def fake(start_fake: StartFake, ft: FakeTime) -> FakeSegmind:
    return await start_fake(
        api_key=KEY, queue_seconds=5.0, processing_seconds=60.0, clock=ft.clock, cost_per_job=0.6
    )


def make_client(base_url: str, ft: FakeTime, **kwargs: Any) -> SegmindClient:
    options: dict[str, Any] = {
        "clock": ft.clock,
        "sleep": ft.sleep,
        "wall_clock": ft.wall,
        "rng": random.Random(7),
        "timeout": 2.0,
        "connect_timeout": 1.0,
    }
    options.update(kwargs)
    return SegmindClient(KEY, base_url, **options)


@pytest.fixture
async def client(fake: FakeSegmind, ft: FakeTime) -> AsyncIterator[SegmindClient]:
    async with make_client(fake.base_url, ft) as c:
        yield c


def posts(fake: FakeSegmind) -> int:
    return sum(1 for r in fake.requests if r.method == "POST")


def gets(fake: FakeSegmind, route: str) -> int:
    return sum(1 for r in fake.requests if r.route == route)


PARAMS = VeoParams(prompt="a red fox in the snow")


# --- the happy path and data shapes ---------------------------------------------------------


async def test_submit_wait_result_download(
    client: SegmindClient, fake: FakeSegmind, ft: FakeTime, tmp_path: Path
) -> None:
    job = await client.submit(PARAMS)
    assert job.request_id in fake.jobs
    assert job.status_url.endswith(f"/v2/requests/{job.request_id}/status")
    planned = client.poller.schedule.polls_until(65.0)  # queue 5 s + processing 60 s
    seen: list[JobState] = []
    result = await client.wait(job, on_status=lambda r: seen.append(r.state))
    assert seen[-1] is JobState.COMPLETED
    assert all(not s.is_terminal for s in seen[:-1])
    assert result.cost == pytest.approx(0.6)
    assert result.inference_time == pytest.approx(60.0)
    assert len(result.output_urls) == 1
    dest = tmp_path / "out" / "video.mp4"
    size = await client.download(result.output, dest, max_bytes=50 * 1024 * 1024)
    assert size == dest.stat().st_size > 1000
    assert dest.read_bytes()[4:8] == b"ftyp"
    assert listing(dest.parent) == ["video.mp4"]  # no temp file left
    # Polled exactly on the shared schedule, which leaves the first seconds alone.
    assert gets(fake, "status") == len(planned) == len(seen)
    assert planned[0] >= 15.0
    assert job.submitted_at is not None
    assert ft.now - job.submitted_at == pytest.approx(planned[-1])
    assert client.poller.estimator.observed == 1


async def test_resumed_job_from_request_id_polls_at_once(
    client: SegmindClient, fake: FakeSegmind, ft: FakeTime
) -> None:
    job = await client.submit(PARAMS)
    ft.now += 300.0  # the bot restarted; the job finished meanwhile
    resumed = SubmittedJob.from_request_id(fake.base_url, job.request_id)
    assert resumed == client.job(job.request_id)
    assert resumed.status_url == job.status_url
    before = ft.now
    result = await client.wait(resumed, started_at=ft.now - 300.0)
    assert ft.now == before  # no waiting: checked immediately
    assert gets(fake, "status") == 1
    assert result.output_urls


async def test_status_report_fields(client: SegmindClient, fake: FakeSegmind, ft: FakeTime) -> None:
    job = await client.submit(PARAMS)
    report = await client.status(job)
    assert isinstance(report, StatusReport)
    assert report.state is JobState.QUEUED and not report.state.is_terminal
    ft.now += 10
    assert (await client.status(job)).state is JobState.PROCESSING
    ft.now += 100
    done = await client.status(job)
    assert done.state is JobState.COMPLETED and done.state.is_terminal
    assert done.metrics["cost"] == pytest.approx(0.6)


async def test_credits(client: SegmindClient, fake: FakeSegmind) -> None:
    fake.credits = 12.5
    assert await client.credits() == Credits(credits=12.5, free_credits=0.0)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ("string", 1),
        ("list", 2),
        ("dict", 1),
    ],
)
async def test_output_shapes_download(
    client: SegmindClient,
    fake: FakeSegmind,
    ft: FakeTime,
    tmp_path: Path,
    shape: str,
    expected: int,
) -> None:
    job = await client.submit(PARAMS)
    ft.now += 100
    real = (await client.result(job)).output
    assert isinstance(real, str)
    output: Any = {"string": real, "list": [real, real], "dict": {"video": {"url": real}}}[shape]
    fake.inject(
        "result",
        Fault(body={"status": "COMPLETED", "output": output, "metrics": {"cost": 0.4}}),
    )
    result = await client.result(job)
    assert result.output_urls == [real] * expected
    assert result.cost == pytest.approx(0.4)
    dest = tmp_path / f"{shape}.mp4"
    assert await client.download(result.output, dest, max_bytes=10**8) == dest.stat().st_size


def test_output_urls_shapes() -> None:
    assert output_urls("https://x/a.mp4") == ["https://x/a.mp4"]
    assert output_urls(["https://x/a.mp4", 3, None]) == ["https://x/a.mp4"]
    assert output_urls({"output": {"url": "http://x/b.mp4"}, "other": "https://no"}) == [
        "http://x/b.mp4"
    ]
    assert output_urls({"nothing": 1}) == []
    assert output_urls(None) == []


# --- the 422-FAILED rule --------------------------------------------------------------------


async def test_failed_job_422_on_status_and_result(
    client: SegmindClient, fake: FakeSegmind, ft: FakeTime
) -> None:
    job = await client.submit(VeoParams(prompt="a cat [fake:fail]"))
    ft.now += 100
    report = await client.status(job)  # served as 422 with the FAILED body
    assert report.state is JobState.FAILED
    assert report.error and "Inference failed" in report.error
    with pytest.raises(GenerationFailed) as info:
        await client.result(job)
    assert type(info.value) is GenerationFailed
    assert info.value.reason and "Inference failed" in info.value.reason
    assert info.value.request_id == job.request_id
    assert gets(fake, "status") == 1 and gets(fake, "result") == 1  # 422 was not retried
    with pytest.raises(GenerationFailed):
        await client.wait(job)


async def test_blocked_prompt_is_content_blocked(client: SegmindClient, ft: FakeTime) -> None:
    job = await client.submit(VeoParams(prompt="something [fake:block]"))
    with pytest.raises(ContentBlocked) as info:
        await client.wait(job)
    assert isinstance(info.value, GenerationFailed)
    assert "safety" in info.value.user_message
    assert info.value.reason


def test_looks_blocked() -> None:
    assert looks_blocked("Prompt blocked by safety filters")
    assert looks_blocked("Responsible AI practices: RAI filtered")
    assert not looks_blocked("upstream worker returned 500 INTERNAL")
    assert not looks_blocked(None)


async def test_completed_body_under_odd_status_is_the_answer(
    client: SegmindClient, fake: FakeSegmind
) -> None:
    job = await client.submit(PARAMS)
    fake.inject("status", Fault(status=500, body={"status": "COMPLETED", "metrics": {}}))
    assert (await client.status(job)).state is JobState.COMPLETED
    assert gets(fake, "status") == 1


# --- error classes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault(status=400, body={"error": "prompt is required"}), BadRequest),
        (Fault(status=401), AuthError),
        (Fault(status=403), AuthError),
        (Fault(status=406, body={"error": "Invalid content type"}), BadRequest),
        (Fault(status=406), InsufficientCredits),
        (Fault(status=410), ModelGone),
        (Fault(status=500, body={"error": "Invalid value for parameter resolution"}), BadRequest),
        (Fault(status=422, body={"error": "seed must be an integer"}), BadRequest),
        (Fault(status=409, body={"error": "conflict"}), SegmindError),
    ],
)
async def test_submit_error_classes(
    client: SegmindClient, fake: FakeSegmind, fault: Fault, error: type[SegmindError]
) -> None:
    fake.inject("submit", fault)
    with pytest.raises(error) as info:
        await client.submit(PARAMS)
    assert type(info.value) is error
    assert info.value.status == fault.status
    assert info.value.user_message
    assert posts(fake) == 1  # none of these is retried
    assert fake.submits == []


async def test_insufficient_credits_from_the_real_check(
    client: SegmindClient, fake: FakeSegmind
) -> None:
    fake.credits = 0.1
    with pytest.raises(InsufficientCredits) as info:
        await client.submit(PARAMS)
    assert "credits" in (info.value.detail or "").lower()
    assert "out of credits" in info.value.user_message


async def test_wrong_key_is_auth_error(fake: FakeSegmind, ft: FakeTime) -> None:
    wrong = SegmindClient("wrong-key-123456", fake.base_url, clock=ft.clock, sleep=ft.sleep)
    async with wrong as c:
        with pytest.raises(AuthError) as info:
            await c.credits()
    assert info.value.status == 401
    assert gets(fake, "credits") == 1


async def test_unknown_request_is_not_found(client: SegmindClient, fake: FakeSegmind) -> None:
    with pytest.raises(NotFound) as info:
        await client.status(client.job("no-such-id"))
    assert info.value.status == 404
    assert gets(fake, "status") == 1


async def test_not_found_ends_wait(client: SegmindClient) -> None:
    with pytest.raises(NotFound):
        await client.wait(client.job("expired-id"), started_at=0.0)


async def test_deadline_exceeded(client: SegmindClient, fake: FakeSegmind, ft: FakeTime) -> None:
    job = await client.submit(VeoParams(prompt="slow one [fake:slow=5000]"))
    start = ft.now
    with pytest.raises(DeadlineExceeded) as info:
        await client.wait(job, deadline=120.0)
    assert ft.now - start == pytest.approx(120.0, abs=0.01)
    assert info.value.request_id == job.request_id
    assert info.value.elapsed == pytest.approx(120.0, abs=0.01)


async def test_html_and_non_json_bodies_are_unavailable(
    client: SegmindClient, fake: FakeSegmind
) -> None:
    fake.inject("credits", Fault(status=502, html=True), times=5)
    with pytest.raises(Unavailable) as info:
        await client.credits()
    assert "HTML" in (info.value.detail or "")
    assert gets(fake, "credits") == 5  # retried up to max_attempts
    fake.inject("credits", Fault(body="<html>oops</html>", html=True), times=5)
    with pytest.raises(Unavailable):
        await client.credits()


# --- retry rules: GETs ------------------------------------------------------------------------


async def test_get_retries_5xx_with_capped_full_jitter(
    client: SegmindClient, fake: FakeSegmind, ft: FakeTime
) -> None:
    fake.inject("credits", Fault(status=503), times=3)
    assert (await client.credits()).credits > 0
    assert gets(fake, "credits") == 4
    assert len(ft.sleeps) == 3
    for attempt, delay in enumerate(ft.sleeps):
        assert 0.0 <= delay <= min(client.max_backoff, client.backoff_base * 2**attempt)


async def test_get_gives_up_after_max_attempts(fake: FakeSegmind, ft: FakeTime) -> None:
    async with make_client(fake.base_url, ft, max_attempts=3) as c:
        fake.inject("credits", Fault(status=500), times=10)
        with pytest.raises(Unavailable):
            await c.credits()
    assert gets(fake, "credits") == 3


async def test_get_429_waits_for_reset_header(
    client: SegmindClient, fake: FakeSegmind, ft: FakeTime
) -> None:
    reset = str(int(ft.wall() + 30))
    fake.inject("credits", Fault(status=429, headers={"x-rate-limit-reset-at-utc": reset}))
    start = ft.now
    await client.credits()
    assert gets(fake, "credits") == 2
    assert ft.now - start >= 30.0  # the retry came after the reset, not before
    assert ft.now - start <= 32.0


@pytest.mark.parametrize(
    ("headers", "low", "high"),
    [
        # Two 429s, each resetting 2 s ahead: retried at each reset (plus the slack), ~5 s.
        ({"x-rate-limit-reset-at-utc": "2"}, 4.0, 6.0),
        ({"Retry-After": "2"}, 4.0, 5.0),
        # Neither header: back off a ceiling each time, as before.
        ({}, 40.0, 41.0),
    ],
)
async def test_item5_a_poll_answered_429_waits_for_the_reset_not_the_ceiling(
    client: SegmindClient,
    fake: FakeSegmind,
    ft: FakeTime,
    headers: dict[str, str],
    low: float,
    high: float,
) -> None:
    job = await client.submit(PARAMS)
    ft.now += 300.0  # finished meanwhile: the first poll is due at once
    fake.inject("status", Fault(status=429, headers=headers), times=2)
    before = ft.now
    result = await client.wait(job, started_at=ft.now - 300.0)
    assert result.output_urls
    assert gets(fake, "status") == 3
    assert low <= ft.now - before <= high


async def test_get_429_retry_after(client: SegmindClient, fake: FakeSegmind, ft: FakeTime) -> None:
    fake.inject("credits", Fault(status=429, headers={"Retry-After": "12"}))
    start = ft.now
    await client.credits()
    assert 12.0 <= ft.now - start <= 12.5


async def test_429_beyond_patience_raises_rate_limited(fake: FakeSegmind, ft: FakeTime) -> None:
    async with make_client(fake.base_url, ft, max_rate_wait=60.0) as c:
        reset = str(ft.wall() + 600)
        fake.inject("credits", Fault(status=429, headers={"x-rate-limit-reset-at-utc": reset}))
        with pytest.raises(RateLimited) as info:
            await c.credits()
    assert info.value.reset_at == pytest.approx(ft.wall() + 600, abs=1)
    assert info.value.status == 429
    assert gets(fake, "credits") == 1


def test_parse_reset_formats() -> None:
    now = 1_700_000_000.0
    assert parse_reset("1700000030", now) == 1_700_000_030
    assert parse_reset("1700000030000", now) == 1_700_000_030
    assert parse_reset("15", now) == now + 15
    moment = datetime(2023, 11, 14, 22, 14, tzinfo=UTC).timestamp()
    assert parse_reset("2023-11-14T22:14:00Z", now) == moment
    assert parse_reset("2023-11-14T22:14:00", now) == moment
    assert parse_reset("Tue, 14 Nov 2023 22:14:00 GMT", now) == moment
    assert parse_reset("garbage", now) is None
    assert parse_reset(None, now) is None


# --- retry rules: the billed POST -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_submit_connect_refused_is_retried(ft: FakeTime) -> None:
    port = free_port()
    server = FakeSegmind(api_key=KEY, clock=ft.clock)

    async def come_up(_: float) -> None:
        if server._runner is None:
            await server.start(host="127.0.0.1", port=port)

    ft.on_sleep = come_up  # Segmind "comes back" during the first back-off
    try:
        async with make_client(f"http://127.0.0.1:{port}", ft) as c:
            job = await c.submit(PARAMS)
        assert len(ft.sleeps) == 1
        assert posts(server) == 1 and len(server.submits) == 1
        assert job.request_id in server.jobs
    finally:
        await server.stop()


async def test_submit_connect_refused_every_time_is_unavailable(ft: FakeTime) -> None:
    port = free_port()
    async with make_client(f"http://127.0.0.1:{port}", ft, max_attempts=3) as c:
        with pytest.raises(Unavailable) as info:
            await c.submit(PARAMS)
    assert not isinstance(info.value, SubmitUncertain)
    assert len(ft.sleeps) == 2


async def test_submit_429_is_retried_after_reset(
    client: SegmindClient, fake: FakeSegmind, ft: FakeTime
) -> None:
    reset = str(ft.wall() + 20)
    fake.inject("submit", Fault(status=429, headers={"x-rate-limit-reset-at-utc": reset}))
    start = ft.now
    job = await client.submit(PARAMS)
    assert posts(fake) == 2
    assert len(fake.submits) == 1  # the 429 was not billed, the retry was
    assert ft.now - start >= 20.0
    assert job.request_id in fake.jobs


@pytest.mark.parametrize("status", [500, 503])
async def test_submit_5xx_is_not_retried(
    client: SegmindClient, fake: FakeSegmind, status: int
) -> None:
    fake.inject("submit", Fault(status=status))
    with pytest.raises(Unavailable) as info:
        await client.submit(PARAMS)
    assert not isinstance(info.value, SubmitUncertain)
    assert posts(fake) == 1


@pytest.mark.parametrize("status", [502, 504])
async def test_submit_gateway_error_is_uncertain(
    client: SegmindClient, fake: FakeSegmind, status: int
) -> None:
    fake.inject("submit", Fault(status=status, html=True))
    with pytest.raises(SubmitUncertain) as info:
        await client.submit(PARAMS)
    assert isinstance(info.value, Unavailable)
    assert posts(fake) == 1


async def test_submit_read_timeout_is_uncertain_one_post(fake: FakeSegmind, ft: FakeTime) -> None:
    fake.inject("submit", Fault(delay=5.0))  # job created and billed, answer held back
    async with make_client(fake.base_url, ft, timeout=0.3) as c:
        with pytest.raises(SubmitUncertain) as info:
            await c.submit(PARAMS)
    assert posts(fake) == 1
    assert len(fake.submits) == 1  # it WAS billed: resubmitting would double-charge
    assert "not sent again" in info.value.user_message


async def test_submit_dropped_response_is_uncertain_one_post(
    client: SegmindClient, fake: FakeSegmind
) -> None:
    fake.inject("submit", Fault(drop=True))
    with pytest.raises(SubmitUncertain):
        await client.submit(PARAMS)
    assert posts(fake) == 1
    assert len(fake.submits) == 1


async def test_submit_garbled_2xx_is_uncertain(client: SegmindClient, fake: FakeSegmind) -> None:
    fake.inject("submit", Fault(body="<html>hi</html>", html=True))
    with pytest.raises(SubmitUncertain):
        await client.submit(PARAMS)
    fake.inject("submit", Fault(body={"status": "QUEUED"}))
    with pytest.raises(SubmitUncertain):
        await client.submit(PARAMS)
    assert posts(fake) == 2


async def test_status_url_on_foreign_host_is_not_trusted(
    client: SegmindClient, fake: FakeSegmind
) -> None:
    fake.inject(
        "submit",
        Fault(
            body={
                "request_id": "abc",
                "status": "QUEUED",
                "status_url": "https://evil.example/v2/requests/abc/status",
                "response_url": "https://evil.example/v2/requests/abc",
            }
        ),
    )
    job = await client.submit(PARAMS)
    with pytest.raises(NotFound):  # asked our own host, which does not know "abc"
        await client.status(job)
    assert gets(fake, "status") == 1


# --- download -------------------------------------------------------------------------------


class OutputHost:
    """A storage host: a fixed-length file, a chunked stream without length, header capture."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.headers: list[dict[str, str]] = []
        self.runner: web.AppRunner | None = None
        self.base = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/fixed.mp4", self.fixed)
        app.router.add_get("/stream.mp4", self.stream)
        app.router.add_get("/redirect", self.redirect)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        sock = socket.create_server(("127.0.0.1", 0))
        await web.SockSite(self.runner, sock).start()
        self.base = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def fixed(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        return web.Response(body=b"v" * self.size, content_type="video/mp4")

    async def redirect(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        return web.Response(status=302, headers={"Location": request.query["to"]})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        self.headers.append(dict(request.headers))
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(self.size // 1000):
            await response.write(b"v" * 1000)
        await response.write_eof()
        return response


@pytest.fixture
async def host() -> AsyncIterator[OutputHost]:
    server = OutputHost(size=200_000)
    await server.start()
    try:
        yield server
    finally:
        assert server.runner is not None
        await server.runner.cleanup()


async def test_download_content_length_over_cap(
    client: SegmindClient, host: OutputHost, tmp_path: Path
) -> None:
    dest = tmp_path / "v.mp4"
    with pytest.raises(OutputTooLarge) as info:
        await client.download(f"{host.base}/fixed.mp4", dest, max_bytes=100_000)
    assert info.value.size == 200_000 and info.value.limit == 100_000
    assert listing(tmp_path) == []


async def test_download_streamed_count_over_cap(
    client: SegmindClient, host: OutputHost, tmp_path: Path
) -> None:
    dest = tmp_path / "v.mp4"
    with pytest.raises(OutputTooLarge) as info:
        await client.download([f"{host.base}/stream.mp4"], dest, max_bytes=100_000)
    assert info.value.size is None  # no Content-Length: caught while counting
    assert listing(tmp_path) == []  # the partial temp file is gone


async def test_download_streams_and_sends_no_key(
    client: SegmindClient, host: OutputHost, tmp_path: Path
) -> None:
    dest = tmp_path / "v.mp4"
    assert await client.download({"url": f"{host.base}/stream.mp4"}, dest, max_bytes=200_000) == (
        200_000
    )
    assert dest.stat().st_size == 200_000
    assert all("x-api-key" not in {k.lower() for k in h} for h in host.headers)


@pytest.mark.parametrize(
    "output", ["file:///etc/passwd", ["ftp://x/y.mp4"], {"url": "data:video/mp4;base64,AAAA"}, {}]
)
async def test_download_refuses_non_http(
    client: SegmindClient, tmp_path: Path, output: Any
) -> None:
    with pytest.raises(DownloadError) as info:
        await client.download(output, tmp_path / "v.mp4", max_bytes=10**6)
    assert type(info.value) is DownloadError
    assert listing(tmp_path) == []


async def test_download_404_is_download_error(
    client: SegmindClient, fake: FakeSegmind, tmp_path: Path
) -> None:
    with pytest.raises(DownloadError):
        await client.download(f"{fake.base_url}/_fake/outputs/nope.mp4", tmp_path / "v", 10**6)


class _LoopbackResolver(aiohttp.abc.AbstractResolver):
    """Connects every name to 127.0.0.1, as if DNS pointed a public name at our test host."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": 0,
            }
        ]

    async def close(self) -> None:
        pass


async def _public(host: str) -> list[str]:
    return ["93.184.215.14"]  # what the bot's own check is told the name resolves to


async def test_item3_download_refuses_internal_addresses_when_segmind_is_public(
    ft: FakeTime, host: OutputHost, tmp_path: Path
) -> None:
    port = host.base.rsplit(":", 1)[1]
    async with make_client("https://api.segmind.example", ft) as client:
        for url in (f"{host.base}/fixed.mp4", f"http://localhost:{port}/fixed.mp4"):
            with pytest.raises(DownloadError, match="internal address"):
                await client.download(url, tmp_path / "v.mp4", max_bytes=10**6)
    assert host.headers == []  # never contacted
    assert listing(tmp_path) == []


async def test_item3_redirects_are_checked_hop_by_hop(
    ft: FakeTime, host: OutputHost, tmp_path: Path
) -> None:
    port = host.base.rsplit(":", 1)[1]
    public = f"http://videos.example:{port}"
    connector = aiohttp.TCPConnector(resolver=_LoopbackResolver())
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        make_client(
            "https://api.segmind.example", ft, session=session, resolve_host=_public
        ) as client,
    ):
        # A redirect to another public URL is followed...
        to_public = f"{public}/redirect?to={public}/fixed.mp4"
        assert await client.download(to_public, tmp_path / "a.mp4", max_bytes=10**6) == 200_000
        # ...one to an internal address, or away from http(s), is not.
        for target in (f"{host.base}/fixed.mp4", "file:///etc/passwd"):
            seen = len(host.headers)
            with pytest.raises(DownloadError):
                await client.download(
                    f"{public}/redirect?to={target}", tmp_path / "b.mp4", max_bytes=10**6
                )
            assert len(host.headers) == seen + 1  # the redirect only, not its target
    assert listing(tmp_path) == ["a.mp4"]


# --- the key never leaks ----------------------------------------------------------------------


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def assert_clean(error: BaseException) -> None:
    rendered = "".join(traceback.format_exception(error))
    for text in (str(error), repr(error), rendered, getattr(error, "user_message", "")):
        assert KEY not in text
    assert error.__cause__ is None


async def test_key_not_in_client_repr(client: SegmindClient) -> None:
    assert KEY not in repr(client)
    assert KEY not in str(client)
    assert "redacted" in repr(client)


async def test_key_echoed_by_server_is_redacted(client: SegmindClient, fake: FakeSegmind) -> None:
    fake.inject("submit", Fault(status=401, body={"error": f"bad key {KEY}"}))
    with pytest.raises(AuthError) as info:
        await client.submit(PARAMS)
    assert_clean(info.value)
    assert "[redacted]" in str(info.value)


class EchoingConnector(aiohttp.TCPConnector):
    """Fails every connection with a message that repeats the request headers."""

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:  # noqa: ASYNC109
        raise aiohttp.ClientOSError(f"connection reset while sending {dict(req.headers)!r}")


async def test_key_in_aiohttp_error_is_redacted(
    fake: FakeSegmind, ft: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with aiohttp.ClientSession(connector=EchoingConnector()) as session:
        c = make_client(fake.base_url, ft, session=session, max_attempts=2)
        with pytest.raises(Unavailable) as info:
            await c.credits()
        assert_clean(info.value)
        assert info.value.__context__ is None  # the echoing aiohttp error is not even chained
        assert "ClientOSError" in str(info.value)
        with pytest.raises(SubmitUncertain) as submit_info:
            await c.submit(PARAMS)
        assert_clean(submit_info.value)
        await c.close()
        assert not session.closed  # a borrowed session stays open
    assert KEY not in caplog.text


async def test_key_never_logged_in_a_full_run(
    client: SegmindClient, fake: FakeSegmind, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.inject("credits", Fault(status=503, body={"error": f"echo {KEY}"}))
    await client.credits()
    job = await client.submit(PARAMS)
    await client.wait(job)
    assert KEY not in caplog.text
    assert caplog.records  # something was logged, so the check means something


async def test_owned_session_closed(fake: FakeSegmind, ft: FakeTime) -> None:
    c = make_client(fake.base_url, ft)
    async with c:
        await c.credits()
        session = c._session
        assert session is not None
    assert session.closed


# --- the shared budget ----------------------------------------------------------------------


async def test_every_request_passes_the_shared_budget(fake: FakeSegmind, ft: FakeTime) -> None:
    async with make_client(fake.base_url, ft, max_rpm=3) as c:
        c.limiter.grant_log = []
        await c.credits()
        job = await c.submit(PARAMS)
        await c.status(job)
        start = ft.now
        await c.credits()  # the fourth request must wait for the window to free a slot
        assert ft.now - start >= 60.0
        assert c.limiter.granted == 4
        await c.wait(job)
        log_ = c.limiter.grant_log
        assert all(sum(1 for t in log_ if a <= t < a + 60) <= 3 for a in log_)
        assert c.limiter.granted == len(fake.requests)
