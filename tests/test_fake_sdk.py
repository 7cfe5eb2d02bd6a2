"""The fake against the OFFICIAL Segmind SDK (segmind==1.3.0): if the SDK is happy, so is the
protocol. The SDK is synchronous (httpx), so its calls run in a worker thread while the fake
serves on the test's event loop.

These tests use the real monotonic clock with sub-second job times because `AsyncJob.wait()`
polls in real time by design; it polls until a terminal state, so nothing here races.
"""

from __future__ import annotations

import asyncio
import importlib
import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from segmind import SegmindClient
from segmind.exceptions import SegmindError
from segmind.v2 import AsyncJob, InferenceFailed

from bot.segmind.fake import FakeSegmind, Fault
from bot.segmind.fake.jobs import BLOCKED_ERROR, INTERNAL_ERROR
from bot.segmind.fake.video import probe
from tests.conftest import StartFake

KEY = "sdk-test-key"
# The module itself: the package's `segmind.generations` attribute is a convenience object that
# shadows it.
SDK_GENERATIONS = importlib.import_module("segmind.generations")


@pytest.fixture
async def fake(start_fake: StartFake) -> FakeSegmind:
    return await start_fake(api_key=KEY, queue_seconds=0.05, processing_seconds=0.2)


@pytest.fixture
def client(fake: FakeSegmind) -> Iterator[SegmindClient]:
    sdk = SegmindClient(api_key=KEY, base_url=f"{fake.base_url}/v1", timeout=10.0)
    yield sdk
    sdk._client.close()  # the SDK never closes its httpx client itself


async def run_to_end(client: SegmindClient, **params: Any) -> dict[str, Any]:
    def work() -> dict[str, Any]:
        job = client.submit_async("veo-3-fast", **params)
        result: dict[str, Any] = job.wait(timeout=20, interval=0.05)
        return result

    return await asyncio.to_thread(work)


async def download(url: str) -> httpx.Response:
    # No API key: the output URL behaves like a CDN link.
    return await asyncio.to_thread(httpx.get, url, timeout=10.0)


@pytest.mark.parametrize(
    ("aspect", "duration", "fps", "audio", "size"),
    [("16:9", 4, 24, True, (256, 144)), ("9:16", 6, 30, False, (144, 256))],
)
async def test_sdk_runs_a_job_to_a_playable_mp4(
    fake: FakeSegmind,
    client: SegmindClient,
    aspect: str,
    duration: int,
    fps: int,
    audio: bool,
    size: tuple[int, int],
) -> None:
    result = await run_to_end(
        client,
        prompt="a deer in misty woods",
        aspect_ratio=aspect,
        duration=duration,
        fps=fps,
        generate_audio=audio,
        seed=0,
    )

    assert result["status"] == "COMPLETED"
    assert set(result["metrics"]) >= {"inference_time", "cost", "remaining_credits"}
    assert result["metrics"]["cost"] == pytest.approx(0.6)
    response = await download(result["output"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    assert int(response.headers["content-length"]) == len(response.content)
    info = probe(io.BytesIO(response.content))
    assert info["duration"] == pytest.approx(duration, abs=0.1)
    assert info["video_codec"] == "h264"
    assert info["pix_fmt"] == "yuv420p"
    assert info["fps"] == pytest.approx(fps)
    assert (info["width"], info["height"]) == size
    assert info["audio"] is audio
    # The SDK sent exactly what it was given, once.
    assert len(fake.submits) == 1
    assert fake.submits[0]["aspect_ratio"] == aspect


@pytest.mark.parametrize(
    ("token", "detail"), [("[fake:fail]", INTERNAL_ERROR), ("[fake:block]", BLOCKED_ERROR)]
)
async def test_sdk_raises_inference_failed_with_the_detail(
    client: SegmindClient, token: str, detail: str
) -> None:
    with pytest.raises(InferenceFailed) as caught:
        await run_to_end(client, prompt=f"a storm {token}")

    assert caught.value.detail == detail
    assert caught.value.status_body["status"] == "FAILED"
    assert caught.value.status_body["request_id"]


async def test_failed_job_is_http_422_on_both_routes(
    fake: FakeSegmind, client: SegmindClient
) -> None:
    def work() -> tuple[AsyncJob, httpx.Response, httpx.Response, dict[str, Any]]:
        job = client.submit_async("veo-3-fast", prompt="a storm [fake:fail]")
        with pytest.raises(InferenceFailed):
            job.wait(timeout=20, interval=0.05)
        raw = client._client
        return job, raw.get(job.status_url), raw.get(job.response_url), job.result()

    job, status, result, tolerant = await asyncio.to_thread(work)

    for response in (status, result):
        assert response.status_code == 422
        body = response.json()
        assert body["status"] == "FAILED"
        assert body["error"] == INTERNAL_ERROR
        assert body["request_id"] == job.request_id
        assert isinstance(body["metrics"], dict)
    # The SDK accepts the 422 body as an answer, as it does from the real service.
    assert tolerant["status"] == "FAILED"


async def test_unknown_request_id_is_404(fake: FakeSegmind, client: SegmindClient) -> None:
    base = f"{fake.base_url}/v2/requests/no-such-id"
    job = AsyncJob(
        request_id="no-such-id",
        status_url=f"{base}/status",
        response_url=base,
        submit_response={},
        _client=client,
    )

    with pytest.raises(SegmindError) as caught:
        await asyncio.to_thread(job.status)

    assert caught.value.status == 404
    assert caught.value.detail == "Request no-such-id not found"


async def test_expired_result_is_404(fake: FakeSegmind, client: SegmindClient) -> None:
    def finish() -> AsyncJob:
        job = client.submit_async("veo-3-fast", prompt="a lighthouse")
        job.wait(timeout=20, interval=0.05)
        return job

    job = await asyncio.to_thread(finish)
    fake.advance(fake.retention_seconds)

    for call in (job.status, job.result):
        with pytest.raises(SegmindError) as caught:
            await asyncio.to_thread(call)
        assert caught.value.status == 404


async def test_bad_params_are_400_and_not_billed(fake: FakeSegmind, client: SegmindClient) -> None:
    with pytest.raises(SegmindError) as caught:
        await asyncio.to_thread(
            client.submit_async, "veo-3-fast", prompt="a cat", aspect_ratio="21:9"
        )

    assert caught.value.status == 400
    assert caught.value.detail is not None
    assert "aspect_ratio" in caught.value.detail
    assert fake.submits == []


async def test_wrong_key_is_401(fake: FakeSegmind) -> None:
    intruder = SegmindClient(api_key="wrong", base_url=f"{fake.base_url}/v1")

    with pytest.raises(SegmindError) as caught:
        await asyncio.to_thread(intruder.submit_async, "veo-3-fast", prompt="a cat")
    intruder._client.close()

    assert caught.value.status == 401
    assert fake.submits == []


async def test_insufficient_credits_is_406_mentioning_credits(client: SegmindClient) -> None:
    with pytest.raises(SegmindError) as caught:
        await asyncio.to_thread(client.submit_async, "veo-3-fast", prompt="a cat [fake:credits]")

    assert caught.value.status == 406
    assert caught.value.detail is not None
    assert "credits" in caught.value.detail.lower()


async def test_sdk_rejects_a_2xx_submit_without_ids(
    fake: FakeSegmind, client: SegmindClient
) -> None:
    # A body fault without a status keeps the real 200 (and the billed job) but loses the ids.
    fake.inject("submit", Fault(body={"status": "QUEUED"}))

    with pytest.raises(SegmindError) as caught:
        await asyncio.to_thread(client.submit_async, "veo-3-fast", prompt="a cat")

    assert caught.value.status == 200
    assert len(fake.submits) == 1


@pytest.fixture
def sdk_history(fake: FakeSegmind, monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK reads its history address from a module constant on every call.
    monkeypatch.setattr(SDK_GENERATIONS, "REQUEST_HISTORY_URL", fake.history_url)


@pytest.mark.usefixtures("sdk_history")
async def test_sdk_history_lists_billed_and_failed_requests(
    fake: FakeSegmind, client: SegmindClient
) -> None:
    done = await run_to_end(client, prompt="a deer in misty woods", seed=777)
    with pytest.raises(InferenceFailed):
        await run_to_end(client, prompt="a storm [fake:fail]")
    fake.advance(fake.history_delay_seconds)

    listed = await asyncio.to_thread(client.generations.history, per_page=10, model_name="veo")
    failed = await asyncio.to_thread(client.generations.history, status="FAILED")

    rows = listed["data"]
    assert {r["model_status"] for r in rows} == {"COMPLETED", "FAILED"}
    completed = next(r for r in rows if r["model_status"] == "COMPLETED")
    assert completed["credits_deduction"] == pytest.approx(done["metrics"]["cost"])
    assert completed["request_body"]["seed"] == 777
    assert completed["generation_url"] == done["output"]
    [only] = failed["data"]
    assert only["credits_deduction"] == 0
    assert only["error"] == INTERNAL_ERROR


@pytest.mark.usefixtures("sdk_history")
async def test_sdk_get_reads_one_request_of_any_age(
    fake: FakeSegmind, client: SegmindClient
) -> None:
    def finish() -> AsyncJob:
        job = client.submit_async("veo-3-fast", prompt="a lighthouse")
        job.wait(timeout=20, interval=0.05)
        return job

    job = await asyncio.to_thread(finish)
    fake.advance(fake.retention_seconds + 40 * 86_400)

    one = await asyncio.to_thread(client.generations.get, job.request_id)

    assert one["request_id"] == job.request_id
    assert one["model_status"] == "COMPLETED"
    assert one["credits_deduction"] == pytest.approx(0.6)
    with pytest.raises(SegmindError) as caught:
        await asyncio.to_thread(client.generations.get, "no-such-id")
    assert caught.value.status == 404


@pytest.mark.usefixtures("sdk_history")
async def test_sdk_history_refusals_surface_as_sdk_errors(client: SegmindClient) -> None:
    with pytest.raises(SegmindError) as caught:
        await asyncio.to_thread(client.generations.history, per_page=101)

    assert caught.value.status == 400
    assert caught.value.detail is not None
    assert "per_page" in caught.value.detail
