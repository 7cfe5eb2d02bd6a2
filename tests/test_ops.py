"""Readiness and metrics without a bot: the checks' rules and how requests are named."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from bot.ops.health import SEGMIND_FRESH, SEGMIND_PROBE_INTERVAL, GatewayWatch, Readiness
from bot.ops.metrics import Endpoint, Metrics, segmind_endpoint
from bot.params import VeoParams
from bot.quota import LimitDefaults
from bot.store import ReserveRequest, open_store

BASE = "https://api.segmind.com"


class Gateway:
    def __init__(self, *, ready: bool = True, latency: float = 0.04) -> None:
        self.ready, self._latency = ready, latency

    def is_ready(self) -> bool:
        return self.ready

    def is_closed(self) -> bool:
        return False

    @property
    def latency(self) -> float:
        return self._latency


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _readiness(
    clock: Clock, answered: list[float], probes: list[float], **kwargs: object
) -> Readiness:
    watch = GatewayWatch()
    watch.up()

    async def ping() -> None:
        return None

    async def probe() -> None:
        probes.append(clock.now)
        answered.append(clock.now)  # the fake Segmind answers every probe

    return Readiness(
        kwargs.pop("gateway", Gateway()),  # type: ignore[arg-type]
        watch,
        db_ping=kwargs.pop("db_ping", ping),  # type: ignore[arg-type]
        segmind_answered_at=lambda: answered[-1] if answered else None,
        probe_segmind=probe,
        clock=clock,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        (f"{BASE}/v2/veo-3-fast", Endpoint.SUBMIT),
        (f"{BASE}/v2/requests/abc-123/status", Endpoint.STATUS),
        (f"{BASE}/v2/requests/abc-123", Endpoint.RESULT),
        (f"{BASE}/v1/get-user-credits", Endpoint.CREDITS),
        ("https://cdn.segmind.com/outputs/abc-123.mp4", Endpoint.DOWNLOAD),
        ("http://127.0.0.1:5000/v2/veo-3-fast", Endpoint.DOWNLOAD),  # another origin
    ],
)
def test_segmind_requests_are_named_from_the_url_alone(url: str, endpoint: Endpoint) -> None:
    assert segmind_endpoint(url, BASE) is endpoint


async def test_an_idle_bot_probes_segmind_at_most_once_a_minute() -> None:
    clock, answered, probes = Clock(), [], []  # type: ignore[var-annotated]
    readiness = _readiness(clock, answered, probes)
    assert (await readiness.report()).ready  # nothing answered yet: one probe, which answers
    assert len(probes) == 1
    clock.now += SEGMIND_FRESH - 1
    assert (await readiness.report()).ready and len(probes) == 1  # still fresh
    clock.now += 2
    await asyncio.gather(*(readiness.report() for _ in range(20)))  # an eager orchestrator
    assert len(probes) == 2


async def test_segmind_that_stops_answering_makes_the_bot_unready() -> None:
    clock, answered, probes = Clock(), [], []  # type: ignore[var-annotated]
    readiness = _readiness(clock, answered, probes)
    await readiness.report()

    async def silent() -> None:
        probes.append(clock.now)
        raise TimeoutError

    readiness._probe = silent
    clock.now += SEGMIND_FRESH + 1
    report = await readiness.report()
    assert not report.ready and not report.checks["segmind"].ok
    assert "last answered" in report.checks["segmind"].detail
    clock.now += SEGMIND_PROBE_INTERVAL / 2
    await readiness.report()
    assert len(probes) == 2  # the failed probe is not repeated before the interval


async def test_a_database_that_hangs_counts_as_down() -> None:
    async def hang() -> None:
        await asyncio.sleep(10)

    clock, answered, probes = Clock(), [1000.0], []  # type: ignore[var-annotated]
    report = await _readiness(clock, answered, probes, db_ping=hang, db_timeout=0.01).report()
    assert not report.ready
    assert report.body()["checks"]["database"] == {
        "ok": False,
        "detail": "the database did not answer within 0.01 s",
    }


async def test_gateway_without_a_heartbeat_or_after_a_drop_is_down() -> None:
    clock, answered, probes = Clock(), [1000.0], []  # type: ignore[var-annotated]
    report = await _readiness(
        clock, answered, probes, gateway=Gateway(latency=float("inf"))
    ).report()
    assert not report.checks["gateway"].ok
    readiness = _readiness(clock, answered, probes)
    readiness._watch.down()  # discord.py's is_ready() stays true across a drop
    assert not (await readiness.report()).checks["gateway"].ok


async def test_a_job_is_counted_once_however_often_its_end_is_reported(tmp_path: Path) -> None:
    async with await open_store(tmp_path / "veo.sqlite3") as store:
        defaults = LimitDefaults()
        reserved = await store.reserve(
            ReserveRequest(
                guild_id=1,
                channel_id=2,
                user_id=3,
                role_ids=(),
                params=VeoParams(prompt="p"),
                now=1000.0,
            ),
            defaults,
        )
        job_id = reserved.job_id  # type: ignore[union-attr]
        await store.transition(job_id, ("queued",), "cancelled")
        await store.release(job_id, "cancelled", defaults)
        job = await store.get_job(job_id)
    assert job is not None
    metrics = Metrics()
    metrics.finished(job)
    metrics.finished(job)
    metrics.finished(replace(job, state="queued"))  # not an end: ignored
    text = (await metrics.render(None)).decode()
    assert 'veo_jobs_finished_total{state="cancelled"} 1.0' in text
    assert 'veo_refunds_total{reason="cancelled"} 1.0' in text
    assert "veo_spend_usd_total 0.0" in text


async def test_readiness_and_metrics_say_whether_this_node_is_the_runner_or_a_standby() -> None:
    clock, answered, probes = Clock(), [], []  # type: ignore[var-annotated]
    role = ["standby: takes interactions in; another node runs the jobs"]
    readiness = _readiness(clock, answered, probes, runner_role=lambda: role[0])
    report = await readiness.report()
    # A standby is ready: it takes interactions in while the runner runs them.
    assert report.ready and report.body()["checks"]["runner"]["detail"].startswith("standby")
    role[0] = "runner (lease epoch 4)"
    assert (await readiness.report()).checks["runner"].detail == "runner (lease epoch 4)"

    metrics = Metrics()
    assert "veo_runner 0.0" in (await metrics.render(None)).decode()
    metrics.runner.set(1)
    assert "veo_runner 1.0" in (await metrics.render(None)).decode()
