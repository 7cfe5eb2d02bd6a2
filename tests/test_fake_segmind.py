"""Scenarios of the Segmind fake over real loopback HTTP, with an injected clock.

Time only moves when a test says so (`clock.advance`), so job states are exact, never raced.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bot.params import parse_params
from bot.segmind.fake import FakeSegmind, Fault, parse_magic, price, probe
from bot.segmind.fake.jobs import BLOCKED_ERROR, INTERNAL_ERROR, Magic
from bot.segmind.fake.video import MIB
from harness.clocks import ManualClock
from tests.conftest import StartFake

KEY = "test-key"
AUTH = {"x-api-key": KEY}
QUEUE = 2.0
PROCESSING = 10.0


@pytest.fixture
async def fake(start_fake: StartFake, clock: ManualClock) -> FakeSegmind:
    return await start_fake(
        api_key=KEY,
        queue_seconds=QUEUE,
        processing_seconds=PROCESSING,
        retention_seconds=3600.0,
        credits=10.0,
        cost_per_job=0.6,
        clock=clock,
    )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def submit(
    http: aiohttp.ClientSession, fake: FakeSegmind, **params: Any
) -> tuple[int, dict[str, Any]]:
    body = {"prompt": "a red fox in snow", **params}
    async with http.post(f"{fake.base_url}/v2/veo-3-fast", json=body, headers=AUTH) as resp:
        return resp.status, await resp.json()


async def get(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
    async with http.get(url, headers=AUTH if headers is None else headers) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json(), resp.headers
        if resp.content_type.startswith("text/"):
            return resp.status, await resp.text(), resp.headers
        return resp.status, await resp.read(), resp.headers


async def submitted_id(http: aiohttp.ClientSession, fake: FakeSegmind, **params: Any) -> str:
    status, body = await submit(http, fake, **params)
    assert status == 200, body
    return str(body["request_id"])


def job_url(fake: FakeSegmind, request_id: str, suffix: str = "") -> str:
    return f"{fake.base_url}/v2/requests/{request_id}{suffix}"


# ---- the faithful path --------------------------------------------------------------------


async def test_submit_answers_with_segmind_ids(
    fake: FakeSegmind, http: aiohttp.ClientSession
) -> None:
    status, body = await submit(http, fake, aspect_ratio="9:16", generate_audio=True)

    assert status == 200
    request_id = body["request_id"]
    assert str(uuid.UUID(request_id)) == request_id
    assert body["status"] == "QUEUED"
    assert body["status_url"] == job_url(fake, request_id, "/status")
    assert body["response_url"] == job_url(fake, request_id)
    assert body["poll_url"] == body["status_url"]
    assert fake.submits == [
        {"prompt": "a red fox in snow", "aspect_ratio": "9:16", "generate_audio": True}
    ]
    assert fake.jobs[request_id].state == "QUEUED"


async def test_job_moves_with_the_clock(
    fake: FakeSegmind, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    request_id = await submitted_id(http, fake)

    status, body, _ = await get(http, job_url(fake, request_id, "/status"))
    assert (status, body["status"], body["request_id"]) == (200, "QUEUED", request_id)
    # The result route before the end: 200 with the current status and no output.
    status, body, _ = await get(http, job_url(fake, request_id))
    assert (status, body["status"]) == (200, "QUEUED")
    assert "output" not in body

    clock.advance(QUEUE)
    _, body, _ = await get(http, job_url(fake, request_id, "/status"))
    assert body["status"] == "PROCESSING"

    clock.advance(PROCESSING)
    status, body, _ = await get(http, job_url(fake, request_id, "/status"))
    assert (status, body["status"]) == (200, "COMPLETED")
    assert "output" not in body
    status, body, _ = await get(http, job_url(fake, request_id))
    assert (status, body["status"]) == (200, "COMPLETED")
    assert body["output"] == f"{fake.base_url}/_fake/outputs/{request_id}.mp4"
    assert body["metrics"] == {
        "queue_time": QUEUE,
        "inference_time": PROCESSING,
        "cost": 0.6,
        "remaining_credits": pytest.approx(9.4),
    }


async def test_output_is_a_playable_mp4_served_without_a_key(
    fake: FakeSegmind, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    request_id = await submitted_id(
        http, fake, aspect_ratio="1:1", duration=6, fps=30, generate_audio=True
    )
    output = f"{fake.base_url}/_fake/outputs/{request_id}.mp4"
    status, _, _ = await get(http, output, headers={})
    assert status == 404  # not finished yet

    clock.advance(QUEUE + PROCESSING)
    async with http.get(output) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "video/mp4"
        data = await resp.read()
        assert int(resp.headers["Content-Length"]) == len(data)

    info = probe(io.BytesIO(data))
    assert info["duration"] == pytest.approx(6, abs=0.1)
    assert (info["video_codec"], info["width"], info["height"]) == ("h264", 144, 144)
    assert info["fps"] == pytest.approx(30)
    assert info["audio"] is True
    assert info["audio_codec"] == "aac"


async def test_results_expire_after_retention_but_the_file_stays(
    fake: FakeSegmind, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    request_id = await submitted_id(http, fake)
    clock.advance(QUEUE + PROCESSING + 3600.0 - 1)
    status, _, _ = await get(http, job_url(fake, request_id))
    assert status == 200

    clock.advance(1)
    for url in (job_url(fake, request_id, "/status"), job_url(fake, request_id)):
        status, body, _ = await get(http, url)
        assert (status, body) == (404, {"error": f"Request {request_id} not found"})
    status, _, _ = await get(http, f"{fake.base_url}/_fake/outputs/{request_id}.mp4", {})
    assert status == 200


async def test_unknown_request_is_404(fake: FakeSegmind, http: aiohttp.ClientSession) -> None:
    status, body, _ = await get(http, job_url(fake, "nope", "/status"))
    assert (status, body) == (404, {"error": "Request nope not found"})


# ---- magic prompts ------------------------------------------------------------------------


@pytest.mark.parametrize(("token", "error"), [("fail", INTERNAL_ERROR), ("block", BLOCKED_ERROR)])
async def test_failing_prompts_end_failed_as_422_and_are_refunded(
    fake: FakeSegmind, http: aiohttp.ClientSession, clock: ManualClock, token: str, error: str
) -> None:
    request_id = await submitted_id(http, fake, prompt=f"a castle [fake:{token}]")
    assert fake.credits == pytest.approx(9.4)  # held while it runs

    clock.advance(QUEUE + PROCESSING)
    for url in (job_url(fake, request_id, "/status"), job_url(fake, request_id)):
        status, body, _ = await get(http, url)
        assert status == 422
        assert body["status"] == "FAILED"
        assert body["error"] == error
        assert body["request_id"] == request_id
        assert body["metrics"]["cost"] == 0.0
    assert fake.credits == pytest.approx(10.0)
    assert len(fake.submits) == 1  # accepted, then failed


async def test_block_text_reads_like_a_safety_block() -> None:
    assert BLOCKED_ERROR.startswith("Prompt blocked by safety filters:")


async def test_slow_prompt_processes_for_n_seconds(
    fake: FakeSegmind, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    request_id = await submitted_id(http, fake, prompt="a glacier [fake:slow=30]")

    clock.advance(QUEUE + 29.9)
    assert fake.jobs[request_id].state == "PROCESSING"
    clock.advance(0.1)
    assert fake.jobs[request_id].state == "COMPLETED"


async def test_credits_prompt_is_refused_with_406(
    fake: FakeSegmind, http: aiohttp.ClientSession
) -> None:
    status, body = await submit(http, fake, prompt="a city [fake:credits]")

    assert status == 406
    assert "credits" in body["error"].lower()
    assert fake.submits == []
    assert fake.jobs == {}


async def test_big_prompt_pads_the_mp4_and_it_still_plays(
    fake: FakeSegmind, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    request_id = await submitted_id(http, fake, prompt="a wave [fake:bigMB=3]", duration=4)
    clock.advance(QUEUE + PROCESSING)

    async with http.get(f"{fake.base_url}/_fake/outputs/{request_id}.mp4") as resp:
        assert int(resp.headers["Content-Length"]) == 3 * MIB
        data = await resp.read()
    assert len(data) == 3 * MIB
    assert probe(io.BytesIO(data))["duration"] == pytest.approx(4, abs=0.1)


def test_parse_magic_reads_every_token() -> None:
    prompt = "x [fake:FAIL] [fake:block] [fake:credits] [fake:slow=2.5] [fake:bigMB=12] [fake:zap]"
    assert parse_magic(prompt) == Magic(
        fail=True, block=True, credits=True, slow_seconds=2.5, big_mb=12.0
    )
    assert parse_magic("[fake:slow] [fake:bigMB=0]") == Magic()


def test_price_spans_the_published_band() -> None:
    cheapest = parse_params({"prompt": "x", "duration": 4})
    dearest = parse_params(
        {"prompt": "x", "duration": 8, "generate_audio": True, "resolution": "1080p"}
    )
    assert (price(cheapest), price(dearest)) == (0.4, 1.2)


# ---- credits ------------------------------------------------------------------------------


async def test_credits_fall_per_job_until_refused(
    fake: FakeSegmind, http: aiohttp.ClientSession
) -> None:
    fake.credits = 1.0
    await submitted_id(http, fake)

    status, body, _ = await get(http, f"{fake.base_url}/v1/get-user-credits")
    assert (status, body) == (200, {"credits": pytest.approx(0.4), "free-credits": 0.0})
    status, body = await submit(http, fake)
    assert status == 406
    assert body["error"].startswith("Insufficient credits")
    assert len(fake.submits) == 1


async def test_cost_by_parameters(clock: ManualClock, http: aiohttp.ClientSession) -> None:
    async with FakeSegmind(api_key=KEY, cost_per_job=None, clock=clock) as fake:
        request_id = await submitted_id(
            http, fake, duration=8, generate_audio=True, resolution="1080p"
        )
        assert fake.jobs[request_id].cost == 1.2
        assert fake.credits == pytest.approx(98.8)


# ---- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong"}])
async def test_api_routes_need_the_key(
    fake: FakeSegmind, http: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    request_id = await submitted_id(http, fake)
    for method, url in [
        ("POST", f"{fake.base_url}/v2/veo-3-fast"),
        ("GET", job_url(fake, request_id, "/status")),
        ("GET", job_url(fake, request_id)),
        ("GET", f"{fake.base_url}/v1/get-user-credits"),
    ]:
        async with http.request(method, url, json={"prompt": "x"}, headers=headers) as resp:
            assert resp.status == 401
            assert "error" in await resp.json()
    assert len(fake.submits) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x", "aspect_ratio": "21:9"}, "aspect_ratio"),
        ({"prompt": "x", "duration": 5}, "duration"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x", "steps": 3}, "steps"),
    ],
)
async def test_bad_params_are_400_with_the_user_message(
    fake: FakeSegmind, http: aiohttp.ClientSession, body: dict[str, Any], field: str
) -> None:
    async with http.post(f"{fake.base_url}/v2/veo-3-fast", json=body, headers=AUTH) as resp:
        assert resp.status == 400
        message = (await resp.json())["error"]
    assert field in message or (field == "prompt" and "prompt" in message.lower())
    assert fake.submits == []


async def test_body_format_errors(fake: FakeSegmind, http: aiohttp.ClientSession) -> None:
    url = f"{fake.base_url}/v2/veo-3-fast"
    async with http.post(url, data="prompt=x", headers=AUTH) as resp:
        assert (resp.status, await resp.json()) == (406, {"error": "Invalid content type"})
    json_headers = {**AUTH, "Content-Type": "application/json"}
    async with http.post(url, data="{not json", headers=json_headers) as resp:
        assert resp.status == 400
    async with http.post(url, data="[1, 2]", headers=json_headers) as resp:
        assert resp.status == 400
    async with http.post(f"{fake.base_url}/v2/kling-2", json={"prompt": "x"}, headers=AUTH) as r:
        assert r.status == 404
        assert "error" in await r.json()
    assert fake.submits == []


async def test_wrong_method_is_an_html_405(fake: FakeSegmind, http: aiohttp.ClientSession) -> None:
    for method, path in [("GET", "/v2/veo-3-fast"), ("POST", "/v2/requests/abc/status")]:
        async with http.request(method, f"{fake.base_url}{path}", headers=AUTH) as resp:
            assert resp.status == 405
            assert resp.content_type == "text/html"
            assert "405" in await resp.text()


# ---- faults -------------------------------------------------------------------------------


async def test_status_fault_on_submit_is_not_billed(
    fake: FakeSegmind, http: aiohttp.ClientSession
) -> None:
    reset = "2030-01-01T00:00:05Z"
    fake.inject(
        "submit",
        Fault(status=429, headers={"x-rate-limit-reset-at-utc": reset, "Retry-After": "2"}),
    )

    async with http.post(
        f"{fake.base_url}/v2/veo-3-fast", json={"prompt": "x"}, headers=AUTH
    ) as resp:
        assert resp.status == 429
        assert resp.headers["x-rate-limit-reset-at-utc"] == reset
        assert resp.headers["Retry-After"] == "2"
        assert "error" in await resp.json()
    assert fake.submits == []
    assert fake.credits == 10.0
    # One-shot: the next submit goes through.
    status, _ = await submit(http, fake)
    assert status == 200


async def test_faults_are_served_in_order(fake: FakeSegmind, http: aiohttp.ClientSession) -> None:
    fake.inject("submit", Fault(status=500))
    fake.inject("submit", Fault(status=502, html=True), times=2)
    fake.inject("submit", Fault(status=406, body={"error": "Insufficient credits"}))

    seen = []
    for _ in range(5):
        async with http.post(
            f"{fake.base_url}/v2/veo-3-fast", json={"prompt": "x"}, headers=AUTH
        ) as resp:
            seen.append((resp.status, resp.content_type))
    assert seen == [
        (500, "application/json"),
        (502, "text/html"),
        (502, "text/html"),
        (406, "application/json"),
        (200, "application/json"),
    ]
    assert len(fake.submits) == 1
    assert fake.pending_faults()["submit"] == 0


async def test_dropped_submit_response_is_still_billed(
    fake: FakeSegmind, http: aiohttp.ClientSession
) -> None:
    fake.inject("submit", Fault(drop=True))

    with pytest.raises(aiohttp.ServerDisconnectedError):
        await submit(http, fake)

    assert len(fake.submits) == 1
    assert fake.credits == pytest.approx(9.4)
    (job,) = fake.jobs.values()
    assert job.state == "QUEUED"
    (record,) = [r for r in fake.requests if r.route == "submit"]
    assert (record.dropped, record.status) == (True, None)


async def test_drop_with_status_never_reaches_segmind(
    fake: FakeSegmind, http: aiohttp.ClientSession
) -> None:
    fake.inject("submit", Fault(status=502, drop=True))

    with pytest.raises(aiohttp.ServerDisconnectedError):
        await submit(http, fake)

    assert fake.submits == []


async def test_delayed_submit_times_out_but_is_billed(
    fake: FakeSegmind, http: aiohttp.ClientSession
) -> None:
    # The delay dwarfs the client timeout, so the outcome is certain, and stop() cuts it short.
    fake.inject("submit", Fault(delay=60.0))

    with pytest.raises(asyncio.TimeoutError):
        async with http.post(
            f"{fake.base_url}/v2/veo-3-fast",
            json={"prompt": "x"},
            headers=AUTH,
            timeout=aiohttp.ClientTimeout(total=0.2),
        ):
            pass

    assert len(fake.submits) == 1
    assert len(fake.jobs) == 1


async def test_get_faults_replace_drop_or_alter_the_answer(
    fake: FakeSegmind, http: aiohttp.ClientSession
) -> None:
    request_id = await submitted_id(http, fake)
    status_url = job_url(fake, request_id, "/status")
    fake.inject("status", Fault(status=503, headers={"Retry-After": "1"}))
    # aiohttp retries an idempotent GET once when the server hangs up, so drop it twice.
    fake.inject("status", Fault(drop=True), times=2)
    fake.inject("status", Fault(body={"status": "WEIRD"}))
    fake.inject("status", Fault(delay=0.01, headers={"x-extra": "yes"}))

    status, body, headers = await get(http, status_url)
    assert (status, body["error"], headers["Retry-After"]) == (
        503,
        "Service temporarily unavailable",
        "1",
    )
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await get(http, status_url)
    assert [r.dropped for r in fake.requests if r.route == "status"] == [False, True, True]
    status, body, _ = await get(http, status_url)
    assert (status, body) == (200, {"status": "WEIRD"})
    status, body, headers = await get(http, status_url)
    assert (status, body["status"], headers["x-extra"]) == (200, "QUEUED", "yes")
    status, body, _ = await get(http, status_url)
    assert (status, body["status"]) == (200, "QUEUED")


@pytest.mark.parametrize(
    ("route", "path"),
    [
        ("result", "/v2/requests/{id}"),
        ("credits", "/v1/get-user-credits"),
        ("output", "/_fake/outputs/{id}.mp4"),
    ],
)
async def test_every_route_takes_faults(
    fake: FakeSegmind,
    http: aiohttp.ClientSession,
    clock: ManualClock,
    route: str,
    path: str,
) -> None:
    request_id = await submitted_id(http, fake)
    clock.advance(QUEUE + PROCESSING)
    fake.inject(route, Fault(status=502, html=True))

    url = fake.base_url + path.format(id=request_id)
    status, body, headers = await get(http, url)
    assert (status, headers["Content-Type"].split(";")[0]) == (502, "text/html")
    assert "502 Bad Gateway" in body
    status, _, _ = await get(http, url)
    assert status == 200


def test_inject_refuses_an_unknown_route(fake: FakeSegmind) -> None:
    with pytest.raises(ValueError, match="unknown route"):
        fake.inject("webhook", Fault(status=500))


# ---- bookkeeping --------------------------------------------------------------------------


async def test_max_in_flight_counts_overlapping_jobs(
    fake: FakeSegmind, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    for _ in range(3):
        await submitted_id(http, fake)
    assert (fake.in_flight(), fake.max_in_flight) == (3, 3)

    clock.advance(QUEUE + PROCESSING)
    assert fake.in_flight() == 0
    await submitted_id(http, fake)
    clock.advance(QUEUE)
    await submitted_id(http, fake)
    assert (fake.in_flight(), fake.max_in_flight) == (2, 3)


async def test_requests_are_recorded_with_their_answer(
    fake: FakeSegmind, http: aiohttp.ClientSession
) -> None:
    request_id = await submitted_id(http, fake)
    await get(http, job_url(fake, request_id, "/status"))
    await get(http, job_url(fake, "missing"))

    assert [(r.method, r.route, r.status) for r in fake.requests] == [
        ("POST", "submit", 200),
        ("GET", "status", 200),
        ("GET", "result", 404),
    ]
    assert fake.requests[0].path == "/v2/veo-3-fast"
    assert fake.requests[0].at <= fake.requests[1].at


# ---- admin API ----------------------------------------------------------------------------


async def test_admin_api_steers_a_running_fake(
    fake: FakeSegmind, http: aiohttp.ClientSession
) -> None:
    admin = f"{fake.base_url}/_fake"
    async with http.post(f"{admin}/inject", json={"route": "submit", "status": 500}) as resp:
        assert (await resp.json())["pending_faults"]["submit"] == 1
    async with http.post(
        f"{admin}/config", json={"processing_seconds": 1.0, "queue_seconds": 0.0, "credits": 5.0}
    ) as resp:
        config = await resp.json()
    assert (config["processing_seconds"], config["queue_seconds"], config["credits"]) == (
        1.0,
        0.0,
        5.0,
    )

    status, _ = await submit(http, fake)
    assert status == 500
    request_id = await submitted_id(http, fake)
    async with http.post(f"{admin}/advance", json={"seconds": 1.0}) as resp:
        assert resp.status == 200

    status, state, _ = await get(http, f"{admin}/state", headers={})
    assert status == 200
    assert state["submit_count"] == 1
    assert state["submits"] == [{"prompt": "a red fox in snow"}]
    assert state["jobs"][request_id]["state"] == "COMPLETED"
    assert (state["max_in_flight"], state["in_flight"]) == (1, 0)
    assert state["credits"] == pytest.approx(4.4)
    assert [r["status"] for r in state["requests"] if r["route"] == "submit"] == [500, 200]


async def test_admin_api_rejects_bad_input_and_clears_faults(
    fake: FakeSegmind, http: aiohttp.ClientSession
) -> None:
    admin = f"{fake.base_url}/_fake"
    for body in ({"route": "nowhere"}, {"route": "status", "times": 0}, {"bogus": 1}):
        async with http.post(f"{admin}/inject", json=body) as resp:
            assert resp.status == 400
    async with http.post(f"{admin}/config", json={"queue_seconds": -1}) as resp:
        assert resp.status == 400

    fake.inject("status", Fault(status=500), times=3)
    async with http.delete(f"{admin}/inject") as resp:
        assert (await resp.json())["pending_faults"]["status"] == 0


async def test_cli_serves_in_a_separate_process(http: aiohttp.ClientSession) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.segmind.fake",
        "--port",
        "0",
        "--api-key",
        "cli-key",
        "--queue-seconds",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        base = line.rsplit(" ", 1)[-1].strip()
        assert base.startswith("http://127.0.0.1:")
        async with http.get(f"{base}/v1/get-user-credits", headers={"x-api-key": "cli-key"}) as r:
            assert await r.json() == {"credits": 100.0, "free-credits": 0.0}
        async with http.get(f"{base}/_fake/state") as resp:
            state = await resp.json()
        assert state["config"]["queue_seconds"] == 0.0
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 30) == 0


def test_state_snapshot_is_json(fake: FakeSegmind) -> None:
    json.dumps(fake.snapshot())
