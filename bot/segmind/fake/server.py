"""An in-process HTTP fake of Segmind's v2 async API for the Veo 3 Fast model.

It answers the way the official SDK (segmind==1.3.0) and our notes say the real service does —
auth, validation, queued → processing → completed/failed, 422 on FAILED, 404 on unknown or expired
ids, 405 as HTML, 406 for credits — and serves a real MP4 as the output URL. Tests steer it with
one-shot faults, magic prompt tokens and an injectable clock; a separate process (demo mode, a
subprocess test) steers it through the `/_fake/*` admin routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.params import MODEL_SLUG, InvalidParams, parse_params
from bot.segmind.fake.faults import Fault, FaultQueue, Route
from bot.segmind.fake.history import HISTORY_PATH, History, QueryError, parse_query
from bot.segmind.fake.jobs import Job, JobState, parse_magic, price
from bot.segmind.fake.video import VideoSpec, ensure_rendered

log = logging.getLogger(__name__)

_M = TypeVar("_M", bound=BaseModel)
_DROPPED = web.RequestKey("fake_segmind_dropped", bool)

OUTPUT_RETENTION_SECONDS = 7 * 24 * 3600.0  # "the output file lasts longer (7 days)"

# Default texts for status faults injected without a body.
_FAULT_ERRORS: dict[int, str] = {
    400: "Bad request",
    401: "Unauthorized: invalid API key",
    403: "Forbidden: this model is not available for your account",
    404: "Not found",
    406: "Insufficient credits: please add credits to your account to continue",
    410: "This model has been retired",
    422: "Unprocessable request",
    429: "Rate limit exceeded: too many requests, please slow down",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service temporarily unavailable",
    504: "Gateway timeout",
}


@dataclass
class RecordedRequest:
    """One request as the fake saw it.

    `status` is what was answered: None while the handler still runs, and for a dropped
    connection (`dropped` is then True). `at` is `time.monotonic()` on arrival — real time, for
    pacing checks — and `clock` the fake's own (possibly injected) clock at arrival.
    """

    method: str
    path: str
    route: str | None
    at: float
    clock: float
    status: int | None = None
    dropped: bool = False
    finished: float | None = None  # time.monotonic() when an output file was fully sent


_RECORD = web.RequestKey("fake_segmind_record", RecordedRequest)


class _TimedFileResponse(web.FileResponse):
    """A FileResponse that notes in the request log when the whole file was sent, so
    benchmarks can subtract each download from the time a delivery took."""

    def __init__(self, path: Path, *, record: RecordedRequest | None, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._record = record

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        writer = await super().prepare(request)  # aiohttp sends the file in here
        if self._record is not None:
            self._record.finished = time.monotonic()
        return writer


class _InjectBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    route: Route
    status: int | None = Field(default=None, ge=100, le=599)
    body: Any = None
    headers: dict[str, str] = Field(default_factory=dict)
    html: bool = False
    delay: float = Field(default=0.0, ge=0)
    drop: bool = False
    times: int = Field(default=1, ge=1)


class _ConfigBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queue_seconds: float | None = Field(default=None, ge=0)
    processing_seconds: float | None = Field(default=None, ge=0)
    retention_seconds: float | None = Field(default=None, ge=0)
    history_delay_seconds: float | None = Field(default=None, ge=0)
    credits: float | None = None
    cost_per_job: float | None = Field(default=None, ge=0)


class _AdvanceBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(ge=0)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _html_page(status: int) -> str:
    reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    # Shaped like the nginx/gateway pages a client really receives for 405s and 5xx errors.
    return (
        f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    )


# The key the bot and the CLI use with the built-in fake in demo mode: not a secret, nothing is
# billed.
DEMO_KEY = "demo-mode-key"


class FakeSegmind:
    """A loopback Segmind. See `bot/segmind/fake/README.md` for the scenarios it can play.

    `cost_per_job=None` prices each job by its parameters (`jobs.price`, $0.40-$1.20).
    `api_key=None` accepts any request, key or not. `clock` is read for every state decision;
    `advance()` adds to it, for processes that cannot inject one. `wall_clock` is read once, to
    date the history (`clock` readings become epoch seconds at the same pace).
    `history_delay_seconds` is how long after its submit a request appears in the history.
    """

    def __init__(
        self,
        *,
        api_key: str | None = "fake-key",
        queue_seconds: float = 0.2,
        processing_seconds: float = 1.0,
        retention_seconds: float = 3600.0,
        credits: float = 100.0,
        cost_per_job: float | None = 0.6,
        clock: Callable[[], float] = time.monotonic,
        output_retention_seconds: float = OUTPUT_RETENTION_SECONDS,
        public_url: str | None = None,
        history_delay_seconds: float = 1.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.api_key = api_key
        self.queue_seconds = queue_seconds
        self.processing_seconds = processing_seconds
        self.retention_seconds = retention_seconds
        self.cost_per_job = cost_per_job
        self.output_retention_seconds = output_retention_seconds
        self.public_url = public_url.rstrip("/") if public_url else None
        self._clock = clock
        self._clock_offset = 0.0
        self.history_delay_seconds = history_delay_seconds
        self._wall_offset = wall_clock() - clock()
        # Credits are a deposit minus what live jobs hold, so a job that fails is refunded
        # ("failed jobs are said not to be billed") without any background bookkeeping.
        self._deposit = credits

        self.submits: list[dict[str, Any]] = []
        self.requests: list[RecordedRequest] = []
        self.jobs: dict[str, Job] = {}
        self.max_in_flight = 0
        self._faults = FaultQueue()
        self._renders: dict[str, asyncio.Future[Any]] = {}
        self._runner: web.AppRunner | None = None
        # Set by stop() so handlers held by a `delay` fault give up at once instead of
        # stalling shutdown.
        self._stopping = asyncio.Event()
        self._base_url: str | None = None
        self.app = self._build_app()

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on `host:port`; port 0 picks a free one. `base_url` is valid afterwards."""
        if self._runner is not None:
            raise RuntimeError("the fake is already running")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family)
        runner = web.AppRunner(self.app, shutdown_timeout=1.0)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        self._stopping.clear()
        self._runner = runner
        bound_port = sock.getsockname()[1]
        shown = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}.get(host)
        if shown is None:
            shown = f"[{host}]" if ":" in host else host
        self._base_url = f"http://{shown}:{bound_port}"
        log.info("Fake Segmind listening on %s", self._base_url)

    async def stop(self) -> None:
        """Stop listening. Safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            self._stopping.set()
            await runner.cleanup()
            # Let renders still in the executor finish, so no work outlives the fake (or the
            # test's event loop).
            pending = [future for future in self._renders.values() if not future.done()]
            if pending:
                await asyncio.wait(pending)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        """`http://host:port` once started; the SDK wants `f"{base_url}/v1"`."""
        if self._base_url is None:
            raise RuntimeError("the fake is not running; await start() first")
        return self._base_url

    @property
    def history_url(self) -> str:
        """The request-history resource, what `SEGMIND_HISTORY_URL` points at."""
        return f"{self.base_url}{HISTORY_PATH}"

    # ---- steering --------------------------------------------------------------------------

    def now(self) -> float:
        """The fake's clock: the injected clock plus whatever `advance()` added."""
        return self._clock() + self._clock_offset

    def advance(self, seconds: float) -> None:
        """Move the fake's clock forward (for callers that could not inject a clock)."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._clock_offset += seconds

    def inject(self, route: str, fault: Fault, times: int = 1) -> None:
        """Queue `fault` for the next `times` requests on `route` (FIFO, one-shot each).

        Routes: "submit", "status", "result", "credits", "output", "history" (both history
        routes).
        """
        self._faults.push(route, fault, times)

    def clear_faults(self) -> None:
        """Drop every pending fault."""
        self._faults.clear()

    def pending_faults(self) -> dict[str, int]:
        """How many faults wait on each route."""
        return self._faults.pending()

    @property
    def credits(self) -> float:
        """The balance now: the deposit minus what running and completed jobs cost."""
        now = self.now()
        return self._deposit - sum(job.billed_at(now) for job in self.jobs.values())

    @credits.setter
    def credits(self, value: float) -> None:
        now = self.now()
        self._deposit = value + sum(job.billed_at(now) for job in self.jobs.values())

    def in_flight(self) -> int:
        """How many jobs are QUEUED or PROCESSING now."""
        now = self.now()
        return sum(
            job.state_at(now) in (JobState.QUEUED, JobState.PROCESSING)
            for job in self.jobs.values()
        )

    def job_cost(self, params: Any) -> float:
        """What a job with these `VeoParams` costs."""
        return self.cost_per_job if self.cost_per_job is not None else price(params)

    def backfill(self, body: dict[str, Any], *, submitted_at: float) -> Job:
        """Record a billed job as if submitted at `submitted_at` (fake clock), without a request.

        For history tests and benches that need thousands of past requests. Magic tokens apply;
        no clip is rendered, so its output URL answers 404. Not added to `submits`, and not
        refused for want of credits (the balance may go negative).
        """
        params = parse_params(body)
        magic = parse_magic(params.prompt)
        job = Job(
            request_id=str(uuid.uuid4()),
            params=params,
            body=body,
            submitted_at=submitted_at,
            queue_seconds=self.queue_seconds,
            processing_seconds=(
                magic.slow_seconds if magic.slow_seconds is not None else self.processing_seconds
            ),
            cost=self.job_cost(params),
            magic=magic,
            now=self.now,
        )
        self.jobs[job.request_id] = job
        return job

    def snapshot(self) -> dict[str, Any]:
        """Everything `GET /_fake/state` reports, as plain JSON-able data."""
        now = self.now()
        return {
            "submit_count": len(self.submits),
            "submits": self.submits,
            "jobs": {rid: self._describe(job, now) for rid, job in self.jobs.items()},
            "max_in_flight": self.max_in_flight,
            "in_flight": self.in_flight(),
            "credits": round(self.credits, 6),
            "pending_faults": self.pending_faults(),
            "config": self._config(),
            "requests": [
                {
                    "method": r.method,
                    "path": r.path,
                    "route": r.route,
                    "status": r.status,
                    "dropped": r.dropped,
                    "at": r.at,
                }
                for r in self.requests
            ],
        }

    # ---- app -------------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post("/v2/{slug}", self._submit, name="submit")
        app.router.add_get("/v2/requests/{request_id}/status", self._status, name="status")
        app.router.add_get("/v2/requests/{request_id}", self._result, name="result")
        app.router.add_get("/v1/get-user-credits", self._credits, name="credits")
        app.router.add_get("/_fake/outputs/{request_id}.mp4", self._output, name="output")
        app.router.add_get(HISTORY_PATH, self._history_page, name="history")
        app.router.add_get(f"{HISTORY_PATH}/{{request_id}}", self._history_row, name="history-row")
        app.router.add_post("/_fake/inject", self._admin_inject, name="admin-inject")
        app.router.add_delete("/_fake/inject", self._admin_clear, name="admin-clear")
        app.router.add_post("/_fake/config", self._admin_config, name="admin-config")
        app.router.add_post("/_fake/advance", self._admin_advance, name="admin-advance")
        app.router.add_get("/_fake/state", self._admin_state, name="admin-state")
        return app

    @web.middleware
    async def _middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        route = request.match_info.route.name
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            route=route,
            at=time.monotonic(),
            clock=self.now(),
        )
        self.requests.append(record)
        request[_RECORD] = record
        try:
            response = await handler(request)
        except web.HTTPMethodNotAllowed:
            # Segmind's gateway answers a wrong method with an HTML page, not JSON.
            response = web.Response(status=405, text=_html_page(405), content_type="text/html")
        except web.HTTPNotFound:
            response = _error(404, f"Not found: {request.path}")
        if request.get(_DROPPED):
            record.dropped = True
        else:
            record.status = response.status
        return response

    def _authenticate(self, request: web.Request) -> web.Response | None:
        if self.api_key is None:
            return None
        sent = request.headers.get("x-api-key")
        if not sent:
            return _error(401, "Unauthorized: missing API key (send it in the x-api-key header)")
        if not hmac.compare_digest(sent.encode(), self.api_key.encode()):
            return _error(401, "Unauthorized: invalid API key")
        return None

    def _public_base(self, request: web.Request) -> str:
        # Build job URLs from the Host the client used, so they work whatever address it dialled.
        return self.public_url or f"{request.scheme}://{request.host}"

    # ---- fault plumbing --------------------------------------------------------------------

    async def _serve(
        self,
        request: web.Request,
        route: str,
        real: Callable[[], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        fault = self._faults.take(route)
        if fault is None:
            return await real()
        if fault.status is not None:
            # The fault stands in for the service: no work happens, nothing is billed.
            await self._hold(fault.delay)
            if fault.drop:
                return self._drop(request)
            return self._fault_response(fault, fault.status)
        # The real work happens first (a submit creates and bills its job), then the answer is
        # held, lost or altered on its way back.
        response = await real()
        await self._hold(fault.delay)
        if fault.drop:
            return self._drop(request)
        if fault.body is not None or fault.html:
            return self._fault_response(fault, response.status)
        response.headers.update(fault.headers or {})
        return response

    async def _hold(self, delay: float) -> None:
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    def _drop(self, request: web.Request) -> web.Response:
        request[_DROPPED] = True
        if request.transport is not None:
            request.transport.close()
        # aiohttp discards writes to a closed transport; the client sees a disconnect.
        return web.Response(status=500)

    def _fault_response(self, fault: Fault, status: int) -> web.Response:
        response: web.Response
        if fault.html:
            text = fault.body if isinstance(fault.body, str) else _html_page(status)
            response = web.Response(status=status, text=text, content_type="text/html")
        elif isinstance(fault.body, str):
            response = web.Response(status=status, text=fault.body, content_type="text/plain")
        elif isinstance(fault.body, bytes):
            response = web.Response(status=status, body=fault.body)
        elif fault.body is not None:
            response = web.json_response(fault.body, status=status)
        else:
            message = _FAULT_ERRORS.get(status, f"HTTP {status}")
            response = _error(status, message)
        response.headers.update(fault.headers or {})
        return response

    # ---- Segmind routes --------------------------------------------------------------------

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "submit", lambda: self._submit_real(request))

    async def _submit_real(self, request: web.Request) -> web.Response:
        denied = self._authenticate(request)
        if denied is not None:
            return denied
        slug = request.match_info["slug"]
        if slug != MODEL_SLUG:
            return _error(404, f"Model {slug} not found")
        if request.content_type != "application/json":
            return _error(406, "Invalid content type")
        try:
            data = await request.json()
        except ValueError:
            return _error(400, "Invalid JSON in request body")
        if not isinstance(data, dict):
            return _error(400, "The request body must be a JSON object")
        try:
            params = parse_params(data)
        except InvalidParams as exc:
            return _error(400, exc.user_message)

        magic = parse_magic(params.prompt)
        cost = self.job_cost(params)
        balance = self.credits
        if magic.credits or balance < cost:
            return _error(
                406,
                f"Insufficient credits: this request needs ${cost:.2f} and your balance is "
                f"${max(balance, 0.0):.2f}. Please add credits to continue.",
            )

        now = self.now()
        request_id = str(uuid.uuid4())
        job = Job(
            request_id=request_id,
            params=params,
            body=data,
            submitted_at=now,
            queue_seconds=self.queue_seconds,
            processing_seconds=(
                magic.slow_seconds if magic.slow_seconds is not None else self.processing_seconds
            ),
            cost=cost,
            magic=magic,
            now=self.now,
        )
        self.jobs[request_id] = job
        self.submits.append(data)
        # Jobs only ever start at submit time, so the overlap peaks at some submit: checking
        # here gives the exact maximum without watching the clock.
        self.max_in_flight = max(self.max_in_flight, self.in_flight())
        if not job.fails:
            self._start_render(job)

        base = self._public_base(request)
        status_url = f"{base}/v2/requests/{request_id}/status"
        return web.json_response(
            {
                "request_id": request_id,
                "status": JobState.QUEUED.value,
                "status_url": status_url,
                "response_url": f"{base}/v2/requests/{request_id}",
                "poll_url": status_url,
            }
        )

    def _start_render(self, job: Job) -> None:
        # Render while the job "queues", off the event loop, so the download is instant and the
        # server keeps answering polls meanwhile.
        spec = VideoSpec(
            aspect=job.params.aspect_ratio.value,
            duration=job.params.duration,
            fps=job.params.fps,
            audio=job.params.generate_audio,
            big_mb=job.magic.big_mb,
            noise_mb=job.magic.bitrate_mb,
        )
        future = asyncio.get_running_loop().run_in_executor(None, ensure_rendered, spec)
        future.add_done_callback(self._log_render_failure)
        self._renders[job.request_id] = future

    @staticmethod
    def _log_render_failure(future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None:
            log.error("Rendering a fake clip failed", exc_info=future.exception())

    def _live_job(self, request_id: str, now: float) -> Job | None:
        """The job, unless unknown or past its retention (then Segmind answers 404)."""
        job = self.jobs.get(request_id)
        if job is None:
            return None
        if job.state_at(now) in (JobState.COMPLETED, JobState.FAILED) and (
            now >= job.finished_at + self.retention_seconds
        ):
            return None
        return job

    async def _status(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "status", lambda: self._job_answer(request, False))

    async def _result(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "result", lambda: self._job_answer(request, True))

    async def _job_answer(self, request: web.Request, with_output: bool) -> web.Response:
        denied = self._authenticate(request)
        if denied is not None:
            return denied
        request_id = request.match_info["request_id"]
        now = self.now()
        job = self._live_job(request_id, now)
        if job is None:
            return _error(404, f"Request {request_id} not found")
        state = job.state_at(now)
        body: dict[str, Any] = {
            "status": state.value,
            "request_id": request_id,
            "metrics": self._metrics(job, state),
        }
        if state is JobState.FAILED:
            # Heimdall serves FAILED as 422 on both routes, body intact (SDK v2.py).
            body["error"] = job.error
            return web.json_response(body, status=422)
        if state is JobState.COMPLETED and with_output:
            urls = self._output_urls(job, request)
            body["output"] = urls[0] if len(urls) == 1 else urls
        # Unfinished jobs on the result route: 200 with the current status and no output.
        return web.json_response(body)

    def _output_urls(self, job: Job, request: web.Request) -> list[str]:
        first = f"{self._public_base(request)}/_fake/outputs/{job.request_id}.mp4"
        # Extra outputs serve the same clip; the query only makes each URL distinct.
        return [first] + [f"{first}?n={index}" for index in range(2, job.magic.outputs + 1)]

    async def _history_page(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "history", lambda: self._history_page_real(request))

    async def _history_page_real(self, request: web.Request) -> web.Response:
        denied = self._authenticate(request)
        if denied is not None:
            return denied
        history = self._history(request)
        today = datetime.fromtimestamp(self._wall(self.now()), tz=UTC).date()
        try:
            query = parse_query(request.query, today)
        except QueryError as exc:
            return _error(400, str(exc))
        return web.json_response(history.page(query))

    async def _history_row(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "history", lambda: self._history_row_real(request))

    async def _history_row_real(self, request: web.Request) -> web.Response:
        denied = self._authenticate(request)
        if denied is not None:
            return denied
        request_id = request.match_info["request_id"]
        row = self._history(request).get(request_id)
        if row is None:
            return _error(404, f"Request {request_id} not found")
        return web.json_response(row)

    def _history(self, request: web.Request) -> History:
        return History(
            self.jobs.values(),
            now=self.now(),
            delay=self.history_delay_seconds,
            wall=self._wall,
            output_urls=lambda job: self._output_urls(job, request),
        )

    def _wall(self, moment: float) -> float:
        """Epoch seconds for a reading of the fake's clock."""
        return moment + self._wall_offset

    def _metrics(self, job: Job, state: JobState) -> dict[str, Any]:
        if state is JobState.QUEUED:
            return {}
        metrics: dict[str, Any] = {"queue_time": round(job.queue_seconds, 3)}
        if state in (JobState.COMPLETED, JobState.FAILED):
            metrics["inference_time"] = round(job.processing_seconds, 3)
            metrics["cost"] = 0.0 if state is JobState.FAILED else job.cost
            metrics["remaining_credits"] = round(self.credits, 6)
        return metrics

    async def _credits(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "credits", lambda: self._credits_real(request))

    async def _credits_real(self, request: web.Request) -> web.Response:
        denied = self._authenticate(request)
        if denied is not None:
            return denied
        return web.json_response({"credits": round(self.credits, 6), "free-credits": 0.0})

    async def _output(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "output", lambda: self._output_real(request))

    async def _output_real(self, request: web.Request) -> web.StreamResponse:
        # Like a CDN URL: no API key, and it outlives the job's status retention.
        request_id = request.match_info["request_id"]
        now = self.now()
        job = self.jobs.get(request_id)
        render = self._renders.get(request_id)
        if (
            job is None
            or render is None
            or job.state_at(now) is not JobState.COMPLETED
            or now >= job.finished_at + self.output_retention_seconds
        ):
            return _error(404, "Not found")
        # shield: a client hanging up must not cancel the render other downloads wait for.
        path = await asyncio.shield(render)
        record: RecordedRequest | None = request.get(_RECORD)
        return _TimedFileResponse(path, record=record, headers={"Content-Type": "video/mp4"})

    # ---- admin routes ----------------------------------------------------------------------

    async def _admin_inject(self, request: web.Request) -> web.Response:
        parsed = await self._admin_body(request, _InjectBody)
        if isinstance(parsed, web.Response):
            return parsed
        fault = Fault(
            status=parsed.status,
            body=parsed.body,
            headers=parsed.headers,
            html=parsed.html,
            delay=parsed.delay,
            drop=parsed.drop,
        )
        self.inject(parsed.route, fault, parsed.times)
        return web.json_response({"pending_faults": self.pending_faults()})

    async def _admin_clear(self, request: web.Request) -> web.Response:
        self.clear_faults()
        return web.json_response({"pending_faults": self.pending_faults()})

    async def _admin_config(self, request: web.Request) -> web.Response:
        parsed = await self._admin_body(request, _ConfigBody)
        if isinstance(parsed, web.Response):
            return parsed
        given = parsed.model_fields_set
        if "queue_seconds" in given and parsed.queue_seconds is not None:
            self.queue_seconds = parsed.queue_seconds
        if "processing_seconds" in given and parsed.processing_seconds is not None:
            self.processing_seconds = parsed.processing_seconds
        if "retention_seconds" in given and parsed.retention_seconds is not None:
            self.retention_seconds = parsed.retention_seconds
        if "history_delay_seconds" in given and parsed.history_delay_seconds is not None:
            self.history_delay_seconds = parsed.history_delay_seconds
        if "credits" in given and parsed.credits is not None:
            self.credits = parsed.credits
        if "cost_per_job" in given:
            # An explicit null switches to per-parameter pricing.
            self.cost_per_job = parsed.cost_per_job
        return web.json_response(self._config())

    async def _admin_advance(self, request: web.Request) -> web.Response:
        parsed = await self._admin_body(request, _AdvanceBody)
        if isinstance(parsed, web.Response):
            return parsed
        self.advance(parsed.seconds)
        return web.json_response({"now": self.now()})

    async def _admin_state(self, request: web.Request) -> web.Response:
        return web.json_response(self.snapshot())

    @staticmethod
    async def _admin_body(request: web.Request, model: type[_M]) -> _M | web.Response:
        try:
            return model.model_validate(await request.json())
        except ValueError as exc:  # JSONDecodeError and ValidationError are both ValueErrors
            detail = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            return _error(400, f"Bad admin request: {detail}")

    def _config(self) -> dict[str, Any]:
        return {
            "queue_seconds": self.queue_seconds,
            "processing_seconds": self.processing_seconds,
            "retention_seconds": self.retention_seconds,
            "history_delay_seconds": self.history_delay_seconds,
            "credits": round(self.credits, 6),
            "cost_per_job": self.cost_per_job,
            "api_key_required": self.api_key is not None,
        }

    def _describe(self, job: Job, now: float) -> dict[str, Any]:
        state = job.state_at(now)
        return {
            "state": state.value,
            "prompt": job.params.prompt,
            "params": job.body,
            "submitted_at": job.submitted_at,
            "finished_at": job.finished_at,
            "cost": job.cost,
            "error": job.error if state is JobState.FAILED else None,
            "expired": self._live_job(job.request_id, now) is None,
        }
