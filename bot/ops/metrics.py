"""The bot's Prometheus metrics, on a registry of its own.

Fed by three seams, so no call site counts anything by hand: the job lifecycle's `JobEvents`
(final states, refunds, spend, durations, poll lag), an aiohttp `TraceConfig` on the Segmind
session (requests by endpoint and status, and when Segmind last answered), and one on
discord.py's HTTP session (edits and 429s). Gauges that the database knows (queue length, jobs
in flight) are read from it at scrape time, so they cannot drift.

No label carries a prompt, a user name, a token or a URL: every label value comes from a fixed
set named in this module (`Endpoint`, `DiscordTarget`, the store's states and reasons) or is
an HTTP status code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from enum import StrEnum
from types import SimpleNamespace
from typing import Any, Protocol, get_args
from urllib.parse import urlsplit

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from bot.params import MODEL_SLUG
from bot.store import TERMINAL_STATES, Job, ReleaseReason

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LOOP_LAG_INTERVAL = 0.5  # seconds between two event-loop lag probes
_REMEMBERED_JOBS = 10_000  # finished job ids kept so a job is never counted twice

_RELEASE_REASONS: frozenset[str] = frozenset(get_args(ReleaseReason))
_STATUS_PATH = re.compile(r"^/v2/requests/[^/]+/status$")
_RESULT_PATH = re.compile(r"^/v2/requests/[^/]+$")


class Endpoint(StrEnum):
    """What a request to Segmind was for (the label of `veo_segmind_requests_total`)."""

    SUBMIT = "submit"
    STATUS = "status"
    RESULT = "result"
    CREDITS = "credits"
    DOWNLOAD = "download"  # the video file, from wherever Segmind's output URL points


class DiscordTarget(StrEnum):
    """Which kind of Discord route a request went to (never the route itself: it holds tokens)."""

    INTERACTION = "interaction"  # interaction callbacks and webhooks, by token
    CHANNEL = "channel"  # channel messages, by bot token
    OTHER = "other"


class Sampled(Protocol):
    """What the scrape reads from the database."""

    async def count_queued(self) -> int: ...

    async def count_in_flight(self) -> int: ...


def segmind_endpoint(url: str, base_url: str) -> Endpoint:
    """Name a Segmind request from its URL alone (no body is read)."""
    parts, base = urlsplit(url), urlsplit(base_url)
    if (parts.scheme, parts.netloc) != (base.scheme, base.netloc):
        return Endpoint.DOWNLOAD
    path = parts.path[len(base.path.rstrip("/")) :] if base.path.strip("/") else parts.path
    if path == f"/v2/{MODEL_SLUG}":
        return Endpoint.SUBMIT
    if _STATUS_PATH.match(path):
        return Endpoint.STATUS
    if _RESULT_PATH.match(path):
        return Endpoint.RESULT
    if path == "/v1/get-user-credits":
        return Endpoint.CREDITS
    return Endpoint.DOWNLOAD


def discord_target(path: str) -> DiscordTarget:
    if "/webhooks/" in path or "/interactions/" in path:
        return DiscordTarget.INTERACTION
    if "/channels/" in path:
        return DiscordTarget.CHANNEL
    return DiscordTarget.OTHER


class Metrics:
    """Every instrument the bot exports; implements `JobEvents` for the lifecycle."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._clock = clock
        r = self.registry
        self.jobs_finished = Counter(
            "veo_jobs_finished", "Jobs that reached a final state, by state.", ["state"], registry=r
        )
        self.submits = Counter(
            "veo_submits", "Jobs Segmind accepted (each one is billed unless it fails).", registry=r
        )
        self.refunds = Counter(
            "veo_refunds", "Reservations refunded to the member, by reason.", ["reason"], registry=r
        )
        self.spend = Counter(
            "veo_spend_usd", "Dollars charged to the quota ledger for delivered videos.", registry=r
        )
        self.segmind_requests = Counter(
            "veo_segmind_requests",
            "HTTP requests to Segmind by endpoint and status code ('error': no answer).",
            ["endpoint", "status"],
            registry=r,
        )
        self.poll_lag = Histogram(
            "veo_poll_detection_lag_seconds",
            "Upper bound of how late a poll noticed a job had finished: the time since the "
            "last poll that still saw it pending.",
            buckets=(0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 20, 40),
            registry=r,
        )
        self.job_duration = Histogram(
            "veo_job_duration_seconds",
            "From the member's request to the job's final state, by state.",
            ["state"],
            buckets=(1, 5, 15, 30, 60, 90, 120, 180, 300, 600, 1200, 1800),
            registry=r,
        )
        self.discord_edits = Counter(
            "veo_discord_edits",
            "Message edits sent to Discord (progress and delivery), by target.",
            ["target"],
            registry=r,
        )
        self.discord_429s = Counter(
            "veo_discord_rate_limited",
            "Discord answers with HTTP 429, by target.",
            ["target"],
            registry=r,
        )
        self.queue_length = Gauge(
            "veo_queue_length", "Jobs waiting in the bot's own queue.", registry=r
        )
        self.in_flight = Gauge(
            "veo_jobs_in_flight",
            "Jobs submitted or being submitted, downloaded or delivered.",
            registry=r,
        )
        self.runner = Gauge(
            "veo_runner",
            "1 while this node holds the runner lease (submits, polls, delivers), 0 on a standby.",
            registry=r,
        )
        self.loop_lag = Gauge(
            "veo_event_loop_lag_seconds",
            "How late the event loop woke the last lag probe (a busy loop answers late).",
            registry=r,
        )
        self.loop_lag_max = Gauge(
            "veo_event_loop_lag_max_seconds",
            "The worst event-loop lag since the previous scrape.",
            registry=r,
        )
        self.segmind_last_answer: float | None = None  # clock time of Segmind's last answer
        self._last_pending: dict[int, float] = {}
        self._counted: OrderedDict[int, None] = OrderedDict()
        self._worst_lag = 0.0
        self._lag_task: asyncio.Task[None] | None = None

    # -- JobEvents --------------------------------------------------------------------------

    def submitted(self, job_id: int) -> None:
        self.submits.inc()

    def polled(self, job_id: int, *, terminal: bool) -> None:
        now = self._clock()
        if not terminal:
            self._last_pending[job_id] = now
            return
        pending = self._last_pending.pop(job_id, None)
        if pending is not None:  # a job resumed already finished has no pending poll to compare
            self.poll_lag.observe(now - pending)

    def finished(self, job: Job) -> None:
        if job.state not in TERMINAL_STATES or job.id in self._counted:
            return
        self._counted[job.id] = None
        while len(self._counted) > _REMEMBERED_JOBS:
            self._counted.popitem(last=False)
        self._last_pending.pop(job.id, None)
        self.jobs_finished.labels(state=job.state).inc()
        ended = job.delivered_at if job.delivered_at is not None else job.updated_at
        self.job_duration.labels(state=job.state).observe(max(0.0, ended - job.created_at))
        if job.ledger_status == "released":
            reason = job.ledger_reason if job.ledger_reason in _RELEASE_REASONS else "other"
            self.refunds.labels(reason=reason).inc()
        elif job.ledger_status == "charged" and job.charged_amount:
            self.spend.inc(job.charged_amount)

    # -- HTTP seams -------------------------------------------------------------------------

    def segmind_trace(self, base_url: str) -> aiohttp.TraceConfig:
        """For the Segmind session: counts every request and notes when Segmind answered."""
        trace = aiohttp.TraceConfig()

        async def end(_s: aiohttp.ClientSession, _c: SimpleNamespace, params: Any) -> None:
            endpoint = segmind_endpoint(str(params.url), base_url)
            status = params.response.status
            self.segmind_requests.labels(endpoint=endpoint.value, status=str(status)).inc()
            # Any answer below 500 from the API itself shows Segmind is up (even a 401 or 429).
            if endpoint is not Endpoint.DOWNLOAD and status < 500:
                self.segmind_last_answer = self._clock()

        async def failed(_s: aiohttp.ClientSession, _c: SimpleNamespace, params: Any) -> None:
            endpoint = segmind_endpoint(str(params.url), base_url)
            self.segmind_requests.labels(endpoint=endpoint.value, status="error").inc()

        trace.on_request_end.append(end)
        trace.on_request_exception.append(failed)
        return trace

    def discord_trace(self) -> aiohttp.TraceConfig:
        """For discord.py's HTTP session (`http_trace=`): counts edits and 429s."""
        trace = aiohttp.TraceConfig()

        async def end(_s: aiohttp.ClientSession, _c: SimpleNamespace, params: Any) -> None:
            path = params.url.path
            target = discord_target(path).value
            if params.response.status == 429:
                self.discord_429s.labels(target=target).inc()
            elif params.method == "PATCH" and "/messages/" in path:
                self.discord_edits.labels(target=target).inc()

        trace.on_request_end.append(end)
        return trace

    # -- scrape -----------------------------------------------------------------------------

    async def render(self, store: Sampled | None) -> bytes:
        """The text exposition, after reading the gauges the database knows."""
        if store is not None:
            try:
                self.queue_length.set(await store.count_queued())
                self.in_flight.set(await store.count_in_flight())
            except Exception as exc:
                # A scrape must still answer; the readiness check reports the database.
                log.warning("metrics: could not read the queue from the database (%s)", exc)
        self.loop_lag_max.set(self._worst_lag)
        self._worst_lag = 0.0
        return generate_latest(self.registry)

    # -- event-loop lag ---------------------------------------------------------------------

    def start_loop_probe(self) -> None:
        if self._lag_task is None:
            self._lag_task = asyncio.create_task(self._probe_loop(), name="loop-lag-probe")

    async def stop_loop_probe(self) -> None:
        task, self._lag_task = self._lag_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _probe_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LOOP_LAG_INTERVAL)
            lag = max(0.0, loop.time() - before - LOOP_LAG_INTERVAL)
            self.loop_lag.set(lag)
            self._worst_lag = max(self._worst_lag, lag)
