"""Async client for Segmind's serverless v2 API (Veo 3 Fast): submit, poll, fetch, download.

Knows nothing of Discord. One client per process: it owns the aiohttp session (unless given one),
the process-wide request budget (`RateLimiter`) and the central `Poller`, so every job in flight
shares Segmind's per-minute limit.

Money rules, because every submit is a billed job:
- GETs (status, result, credits) are retried on 429, 5xx, timeouts and resets, with full jitter.
- A submit is retried only when it provably never reached Segmind (connection refused, DNS,
  connect timeout: aiohttp's `ClientConnectorError` / `ConnectionTimeoutError`) or on 429 (a rate
  limited request is not billed). After a read timeout, a dropped connection or a lost/garbled 2xx
  the job may exist and be billed: `SubmitUncertain`, never a second POST.
- A 5xx on submit is not retried either. 500 and 503 come from Segmind itself, which chose not to
  hand out a request id, so they are reported as `Unavailable` (most likely not billed). 502 and
  504 come from a gateway that had already forwarded the request to an upstream that may have
  queued it, so they are `SubmitUncertain` (itself an `Unavailable`). Either way the user decides
  whether to try again; the client never does.
- The API key is sent only to `base_url`'s origin and the request history's (`history_url`;
  redirects are not followed, status URLs from another host are rebuilt from the request id) and
  never appears in reprs, errors or logs.
- The request history (`history_row`, `history`) is Segmind's record of what it billed. Its
  pages are paced to a share of the request budget (`history_share`) and wait behind submits
  and result fetches, so reconciling never slows a member's video.
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import ipaddress
import json
import logging
import math
import os
import random
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode, urljoin, urlsplit

import aiohttp

from bot.config import MASK, Settings
from bot.params import MODEL_SLUG, VeoParams
from bot.segmind.history import (
    DEFAULT_HISTORY_URL,
    MAX_PER_PAGE,
    HistoryRow,
    HistoryShapeError,
    HistoryStatus,
    SortOrder,
    date_windows,
    finite_float,
    page_rows,
    single_row,
)
from bot.segmind.polling import DEFAULT_FLOOR, Clock, DeadlineReached, Poller, RateLimiter, Sleep

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.segmind.com"
_MAX_API_BODY = 1 << 20  # API answers are small JSON; never buffer more than this.
_DETAIL_MAX = 300
_CHUNK = 1 << 16
# The request fields (Segmind's names); a 500 whose message names one is a bad value, not an outage.
_PARAM_WORDS = re.compile(
    r"\b(prompt|aspect_ratio|aspect ratio|duration|fps|resolution|generate_audio|seed|image_url|"
    r"image url|parameter|param)\b",
    re.IGNORECASE,
)
# Safety / Responsible-AI refusals arrive as FAILED with free text; these words mark them.
_BLOCK_WORDS = re.compile(
    r"\b(rai|responsible ai|safety|unsafe|blocked|block|policy|policies|prohibited|violat\w*|"
    r"sensitive|inappropriate|nsfw|moderation|harmful|filtered|content filter|celebrit\w*|"
    r"minors?|guidelines)\b",
    re.IGNORECASE,
)
_OUTPUT_KEYS = ("url", "video", "video_url", "output", "uri", "file", "result")
# A JSON array answer travels through `_get_json` under this key, so every GET keeps one type.
_LISTED = "_listed"
_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_REDIRECTS = 5
DEFAULT_DOWNLOAD_TIMEOUT = 300.0  # seconds for the whole download, retries and redirects included
ResolveHost = Callable[[str], Awaitable[list[str]]]


# --- errors ----------------------------------------------------------------------------------


class SegmindError(Exception):
    """Base of every Segmind failure. `user_message` is safe to show in Discord: each class's
    sentence is the one place a member (or the CLI's user) reads about that failure.

    `status` is the HTTP status (None when there was no answer), `detail` Segmind's own message
    (clipped, key-redacted), `request_id` the job when known.
    """

    default_message = "Segmind returned an unexpected error."

    def __init__(
        self,
        detail: str | None = None,
        *,
        status: int | None = None,
        request_id: str | None = None,
        user_message: str | None = None,
    ) -> None:
        self.detail = _clip(detail)
        self.status = status
        self.request_id = request_id
        self.user_message = user_message or self.default_message
        super().__init__(self.detail or self.user_message)

    def __str__(self) -> str:
        parts = [self.detail or self.user_message]
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.request_id:
            parts.append(f"request {self.request_id}")
        return " | ".join(parts)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, detail={self.detail!r}, "
            f"request_id={self.request_id!r})"
        )


class BadRequest(SegmindError):
    """Segmind refused the parameters (400, a 406 "Invalid content type", a 500 naming one)."""

    default_message = "Segmind refused the request parameters."

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault(
            "user_message",
            f"Segmind refused the request: {_clip(detail, 200)}" if detail else None,
        )
        super().__init__(detail, **kwargs)


class AuthError(SegmindError):
    """401/403: the key is missing, wrong, or not allowed to use this model."""

    default_message = (
        "The bot's Segmind key was refused — a moderator needs to check the bot's settings."
    )


class NotFound(SegmindError):
    """404: the request id is unknown or expired (Segmind keeps results for one hour)."""

    default_message = (
        "Segmind no longer has this job (results are kept one hour), so it was dropped."
    )


class InsufficientCredits(SegmindError):
    """406 with a message about credits: the account cannot pay for a video."""

    # Also the answer `/veo` gives at once while the balance watch has seen the credits run
    # out (`bot.chat.intake.precheck`): one sentence for both paths.
    default_message = (
        "Video generation is paused: the bot owner's Segmind credits ran out. The account is "
        "out of credits until the owner tops it up; /veo starts again by itself then."
    )


class ModelGone(SegmindError):
    """410: Segmind retired the model."""

    default_message = "Veo 3 Fast is no longer offered by Segmind."


class GenerationFailed(SegmindError):
    """The job reached FAILED. `reason` is Segmind's `error` text, `raw` its body."""

    default_message = "Veo could not make this video."
    reason_message = "Veo could not make this video: {reason}"  # with Segmind's own words

    def __init__(
        self, reason: str | None = None, *, raw: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> None:
        self.reason = _clip(reason)
        self.raw = dict(raw or {})
        if reason:
            kwargs.setdefault("user_message", self.reason_message.format(reason=_clip(reason, 200)))
        super().__init__(reason, **kwargs)


class ContentBlocked(GenerationFailed):
    """FAILED because a safety / Responsible-AI filter refused the prompt or image."""

    default_message = "Veo declined this prompt: the safety filter blocked it. Try rewording it."
    reason_message = "Veo declined this prompt: {reason}"


class RateLimited(SegmindError):
    """429. `reset_at` is the wall-clock (epoch) time the limit resets, when Segmind said."""

    default_message = "Segmind is busy, try again in a few minutes."

    def __init__(
        self,
        detail: str | None = None,
        *,
        reset_at: float | None = None,
        retry_after: float | None = None,
        **kwargs: Any,
    ) -> None:
        self.reset_at = reset_at
        self.retry_after = retry_after
        super().__init__(detail, **kwargs)


class Unavailable(SegmindError):
    """5xx, timeouts, connection resets, or an answer that is not JSON."""

    default_message = "Segmind cannot be reached right now; please try again later."


class SubmitUncertain(Unavailable):
    """A submit whose outcome is unknown: the job MAY exist and be billed. Do not resubmit."""

    default_message = (
        "Segmind did not confirm the video request. It may still be made and billed, so it was "
        "not sent again; please check before retrying."
    )


class DeadlineExceeded(SegmindError):
    """The job did not finish before the hard deadline (it may still finish on Segmind)."""

    default_message = "Veo took far longer than usual, so the bot stopped waiting for this video."

    def __init__(self, detail: str | None = None, *, elapsed: float = 0.0, **kwargs: Any) -> None:
        self.elapsed = elapsed
        super().__init__(detail, **kwargs)


class DownloadError(SegmindError):
    """The finished video could not be fetched (no usable URL, HTTP error, broken stream)."""

    default_message = "The finished video could not be downloaded."


class OutputTooLarge(DownloadError):
    """The video is bigger than the caller's `max_bytes`."""

    default_message = "The finished video is too large to download."

    def __init__(
        self, detail: str | None = None, *, size: int | None, limit: int, **kwargs: Any
    ) -> None:
        self.size = size
        self.limit = limit
        super().__init__(detail, **kwargs)


def _clip(text: str | None, limit: int = _DETAIL_MAX) -> str | None:
    if text is None:
        return None
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def looks_blocked(reason: str | None) -> bool:
    """Whether a FAILED `error` text reads like a safety / RAI refusal."""
    return bool(reason and _BLOCK_WORDS.search(reason))


# --- data ------------------------------------------------------------------------------------


class JobState(StrEnum):
    """Segmind's job states."""

    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"

    @property
    def is_terminal(self) -> bool:
        """COMPLETED and FAILED never change again."""
        return self in (JobState.COMPLETED, JobState.FAILED)


@dataclass(frozen=True)
class SubmittedJob:
    """A submitted job. Store `request_id`: with it the job can be resumed after a restart.

    `submitted_at` is the client's clock at submit, epoch seconds by default (None when
    rebuilt from a stored id).
    """

    request_id: str
    status_url: str
    response_url: str
    submitted_at: float | None = field(default=None, compare=False)

    @classmethod
    def from_request_id(cls, base_url: str, request_id: str) -> SubmittedJob:
        """Rebuild a job handle from a stored request id."""
        base = base_url.rstrip("/")
        rid = quote(request_id, safe="")
        return cls(request_id, f"{base}/v2/requests/{rid}/status", f"{base}/v2/requests/{rid}")


@dataclass(frozen=True)
class StatusReport:
    """One answer of `GET /v2/requests/{id}/status`."""

    state: JobState
    raw: dict[str, Any]
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobResult:
    """The final body of a COMPLETED job. `cost` is Segmind's real charge when it says."""

    output_urls: list[str]
    metrics: dict[str, Any]
    cost: float | None
    inference_time: float | None
    raw: dict[str, Any]

    @property
    def output(self) -> Any:
        """The raw `output` field, for `SegmindClient.download`."""
        return self.raw.get("output")

    @property
    def video_url(self) -> str | None:
        """The first http(s) URL of the output: the one the bot downloads and may link to."""
        return next((url for url in self.output_urls if _is_http(url)), None)


@dataclass(frozen=True)
class Credits:
    """The account balance from `GET /v1/get-user-credits`."""

    credits: float
    free_credits: float


def output_urls(output: Any) -> list[str]:
    """Every URL-like string in an `output`: a string, a list of them, or a dict holding one."""
    found: list[str] = []

    def walk(value: Any, depth: int) -> None:
        if depth > 4:
            return
        if isinstance(value, str):
            if "://" in value or value.startswith("data:"):
                found.append(value.strip())
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item, depth + 1)
        elif isinstance(value, Mapping):
            for key in _OUTPUT_KEYS:
                if key in value:
                    walk(value[key], depth + 1)

    walk(output, 0)
    return found


def _is_http(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def is_internal_address(address: str) -> bool:
    """Loopback, private, link-local or otherwise not a public host (IPv4-mapped IPv6 too)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def _names_internal_host(url: str) -> bool:
    """Whether a URL's host is, by its very name, an internal address (no DNS asked)."""
    host = (urlsplit(url).hostname or "").lower()
    return host == "localhost" or host.endswith(".localhost") or is_internal_address(host)


async def _resolve_host(host: str) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def parse_reset(value: str | None, now: float) -> float | None:
    """An absolute epoch time from `x-rate-limit-reset-at-utc` (epoch s/ms, ISO 8601, HTTP date).

    A small number is read as seconds from now, since some gateways send a delta.
    """
    if not value:
        return None
    value = value.strip()
    number = finite_float(value)
    if number is not None:
        if number > 1e12:  # milliseconds
            return number / 1000.0
        if number < 1e9:  # a delta in seconds
            return now + max(0.0, number)
        return number
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a `Retry-After` header (seconds or HTTP date)."""
    if not value:
        return None
    number = finite_float(value.strip())
    if number is not None:
        return max(0.0, number)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - now)


# --- transport -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes


class _TransportFailure(Exception):
    """No HTTP answer. `reached_server` is False only when the request provably never left."""

    def __init__(self, description: str, *, reached_server: bool) -> None:
        super().__init__(description)
        self.description = description
        self.reached_server = reached_server


class SegmindClient:
    """The process's one door to Segmind. Use as `async with SegmindClient(...) as client:`.

    `clock`/`sleep`/`rng`/`wall_clock` are injectable so tests run instantly. `clock` is the wall
    clock by default, not a monotonic one, so that a submit time stored in the database (epoch
    seconds) can be handed back to `wait(started_at=...)` after a restart. `max_rpm` is the
    account's budget shared by every request; `max_attempts`, `backoff_base`, `max_backoff` and
    `max_rate_wait` bound the GET retries. `poll_floor`/`poll_ceiling`/`job_deadline` shape `wait`.
    `history_url` is the request-history resource; `history_share` the fraction of `max_rpm`
    that paging it may use.
    """

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        session: aiohttp.ClientSession | None = None,
        max_rpm: int = 50,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        wall_clock: Clock = time.time,
        poll_floor: float = DEFAULT_FLOOR,
        poll_ceiling: float = 20.0,
        job_deadline: float = 1800.0,
        max_attempts: int = 5,
        backoff_base: float = 1.0,
        max_backoff: float = 30.0,
        max_rate_wait: float = 90.0,
        limiter: RateLimiter | None = None,
        poller: Poller | None = None,
        history_url: str = DEFAULT_HISTORY_URL,
        history_share: float = 0.25,
        download_timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
        resolve_host: ResolveHost = _resolve_host,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 < history_share <= 1:
            raise ValueError("history_share must be in (0, 1]")
        self.history_url = history_url.rstrip("/")
        self.history_share = history_share
        self._history_next = -math.inf  # when the next history page may be asked for
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(
            total=timeout + connect_timeout, connect=connect_timeout, sock_read=timeout
        )
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()  # jitter only; not security-sensitive
        self._wall_clock = wall_clock
        self.job_deadline = job_deadline
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.max_backoff = max_backoff
        self.max_rate_wait = max_rate_wait
        self.download_timeout = download_timeout
        self._resolve = resolve_host
        # The output comes from a storage host Segmind names; an internal address there is an
        # attempt to reach our own network — unless Segmind itself is local (tests, demo mode).
        self._internal_downloads_ok = _names_internal_host(self.base_url)
        # One extra second of window absorbs network jitter between our grant and Segmind's count.
        self.limiter = limiter or RateLimiter(max_rpm, window=61.0, clock=clock, sleep=sleep)
        self.poller = poller or Poller(
            self.limiter, floor=poll_floor, ceiling=poll_ceiling, clock=clock, sleep=sleep
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        api_key: str,
        base_url: str,
        *,
        history_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        max_attempts: int = 5,
    ) -> SegmindClient:
        """A client with the request budget, timeouts, polling and history address the
        settings ask for (`history_url` overrides the setting, for the demo fake)."""
        return cls(
            api_key,
            base_url,
            session=session,
            history_url=history_url or settings.segmind_history_url,
            download_timeout=settings.veo_download_timeout,
            max_rpm=settings.segmind_max_rpm,
            timeout=settings.segmind_timeout,
            poll_floor=settings.veo_poll_floor,
            poll_ceiling=settings.veo_poll_ceiling,
            job_deadline=settings.veo_job_deadline,
            max_attempts=max_attempts,
        )

    def __repr__(self) -> str:
        return (
            f"SegmindClient(base_url={self.base_url!r}, max_rpm={self.limiter.max_per_window}, "
            f"api_key={MASK!r})"
        )

    async def __aenter__(self) -> SegmindClient:
        self._get_session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session if this client created it (a borrowed one is the caller's)."""
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()
        if self._owns_session:
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or (self._owns_session and self._session.closed):
            self._session = aiohttp.ClientSession()
            self._owns_session = True
        return self._session

    # -- public API --

    def estimate_seconds(self) -> float:
        """Typical job duration (median of recent ones): "usually ~80 s"."""
        return self.poller.typical_duration()

    def observe_duration(self, seconds: float) -> None:
        """Seed the schedule with a past job's duration (e.g. from the database at start-up)."""
        self.poller.observe(seconds)

    def job(self, request_id: str) -> SubmittedJob:
        """A handle for a stored request id on this client's base URL."""
        return SubmittedJob.from_request_id(self.base_url, request_id)

    async def submit(self, params: VeoParams, *, prepaid: bool = False) -> SubmittedJob:
        """`POST /v2/veo-3-fast`. Never re-sent once it may have reached Segmind.

        `prepaid`: the caller already took the first attempt's slot in the request budget
        (`limiter.acquire`), so the POST goes out at once.

        Raises `SubmitUncertain` when the job may exist (do not resubmit), `RateLimited` when the
        limit outlasts the retries, `Unavailable`, `BadRequest`, `AuthError`,
        `InsufficientCredits`, `ModelGone`.
        """
        url = f"{self.base_url}/v2/{MODEL_SLUG}"
        body = params.to_body()
        for attempt in range(self.max_attempts):
            last_try = attempt + 1 >= self.max_attempts
            if attempt or not prepaid:
                await self.limiter.acquire(RateLimiter.PRIORITY_USER)
            try:
                reply = await self._exchange("POST", url, json_body=body)
            except _TransportFailure as failure:
                if failure.reached_server:
                    log.warning("submit outcome unknown (%s); not resending", failure.description)
                    raise SubmitUncertain(failure.description) from None
                if last_try:
                    raise Unavailable(failure.description) from None
                log.info("submit never reached Segmind (%s); retrying", failure.description)
                await self._sleep(self._backoff(attempt))
                continue
            outcome = self._interpret(reply, method="POST")
            if isinstance(outcome, dict):
                return self._job_from_submit(outcome, reply.status)
            if isinstance(outcome, RateLimited):
                wait = self._rate_wait(outcome, attempt)
                if last_try or wait > self.max_rate_wait:
                    raise outcome
                log.info("submit rate limited; retrying in %.1f s (not billed)", wait)
                self.limiter.pause_until(self._clock() + wait)
                continue
            if isinstance(outcome, Unavailable) and (
                reply.status in (502, 504) or 200 <= reply.status < 300
            ):
                raise SubmitUncertain(outcome.detail, status=reply.status)
            raise outcome
        raise AssertionError("unreachable")  # pragma: no cover

    async def status(self, job: SubmittedJob) -> StatusReport:
        """`GET /v2/requests/{id}/status` (retried on 429/5xx/timeouts)."""
        return await self._status(job, attempts=self.max_attempts, prepaid=False)

    async def result(self, job: SubmittedJob) -> JobResult:
        """`GET /v2/requests/{id}`. Raises `GenerationFailed`/`ContentBlocked` for a FAILED job."""
        body = await self._get_json(
            self._job_url(job.response_url, job, status=False),
            priority=RateLimiter.PRIORITY_USER,
            attempts=self.max_attempts,
            request_id=job.request_id,
        )
        state = body.get("status")
        if state == JobState.FAILED.value:
            raise self._failure(body, job.request_id)
        if state is not None and state != JobState.COMPLETED.value:
            raise SegmindError(
                f"the result was requested while the job is {state}",
                request_id=job.request_id,
            )
        metrics = body.get("metrics") if isinstance(body.get("metrics"), dict) else {}
        assert isinstance(metrics, dict)
        return JobResult(
            output_urls=output_urls(body.get("output")),
            metrics=metrics,
            cost=finite_float(metrics.get("cost", body.get("cost"))),
            inference_time=finite_float(metrics.get("inference_time", body.get("inference_time"))),
            raw=body,
        )

    async def wait(
        self,
        job: SubmittedJob,
        *,
        on_status: Callable[[StatusReport], Awaitable[None] | None] | None = None,
        deadline: float | None = None,
        started_at: float | None = None,
    ) -> JobResult:
        """Poll through the shared poller until the job ends; return its result.

        `started_at` is the submit time on this client's clock — epoch seconds by default
        (default: the job's own `submitted_at`, else now); pass the stored submit time to resume
        a job after a restart.
        `deadline` is seconds after `started_at` (default `job_deadline`). `on_status` sees every
        status report (its failures are logged, not raised). Raises `GenerationFailed` /
        `ContentBlocked` for FAILED, `DeadlineExceeded`, `NotFound`, `AuthError`.
        """
        start = started_at if started_at is not None else job.submitted_at
        if start is None:
            start = self._clock()
        last_pending = start
        detected: float | None = None

        async def seen(report: StatusReport) -> None:
            nonlocal last_pending, detected
            if report.state.is_terminal:
                detected = self._clock()
            else:
                last_pending = self._clock()
            if on_status is not None:
                maybe = on_status(report)
                if inspect.isawaitable(maybe):
                    await maybe

        async def check() -> StatusReport:
            return await self._status(job, attempts=1, prepaid=True)

        try:
            report = await self.poller.wait(
                check,
                done=lambda r: r.state.is_terminal,
                started_at=start,
                deadline=self.job_deadline if deadline is None else deadline,
                on_result=seen,
                retryable=(Unavailable, RateLimited),
                retry_in=self._poll_retry_in,
            )
        except DeadlineReached as exc:
            raise DeadlineExceeded(
                f"gave up waiting after {exc.elapsed:.0f} s",
                elapsed=exc.elapsed,
                request_id=job.request_id,
            ) from None
        if report.state is JobState.FAILED:
            raise self._failure(report.raw, job.request_id)
        result = await self.result(job)
        if detected is not None:
            # The job ended between the last pending poll and the one that saw it finished;
            # the midpoint is an unbiased guess of its duration.
            self.poller.observe((last_pending + detected) / 2 - start)
        return result

    async def credits(self, *, background: bool = False) -> Credits:
        """`GET /v1/get-user-credits`. `background`: a periodic check that must not take a
        slot of the budget ahead of a member's submit."""
        body = await self._get_json(
            f"{self.base_url}/v1/get-user-credits",
            priority=RateLimiter.PRIORITY_POLL if background else RateLimiter.PRIORITY_USER,
            attempts=self.max_attempts,
        )
        paid = finite_float(body.get("credits"))
        if paid is None:
            raise Unavailable("the credits answer has no `credits` number")
        free = finite_float(body.get("free-credits", body.get("free_credits"))) or 0.0
        return Credits(credits=paid, free_credits=free)

    async def history_row(self, request_id: str) -> HistoryRow | None:
        """`GET <history>/<request_id>`: the request's row, of any age (the status route
        forgets a job after an hour; this does not). None when Segmind has no record (yet: a
        row lands a little after its request)."""
        try:
            body = await self._get_json(
                f"{self.history_url}/{quote(request_id, safe='')}",
                priority=RateLimiter.PRIORITY_POLL,
                attempts=self.max_attempts,
                request_id=request_id,
            )
        except NotFound:
            return None
        try:
            return single_row(body)
        except HistoryShapeError as exc:
            raise Unavailable(str(exc), request_id=request_id) from None

    async def history_page(
        self,
        from_date: date,
        to_date: date,
        *,
        page: int = 1,
        per_page: int = MAX_PER_PAGE,
        model_name: str | None = MODEL_SLUG,
        status: HistoryStatus | None = None,
        sort_order: SortOrder = SortOrder.ASC,
    ) -> list[HistoryRow]:
        """One page of `GET <history>` over `from_date..to_date` (inclusive, at most 31 days),
        sorted by creation time. Raises `Unavailable` for a page that cannot be read as rows.

        `model_name` is a substring filter at Segmind: a model whose slug contains ours would
        match too, so a caller summing spend checks each row's `model_name`.
        """
        query: dict[str, str | int] = {
            "page": page,
            "per_page": per_page,
            "from_date": from_date.isoformat(),
            "to_date": to_date.isoformat(),
            "sort_by": "model_created",
            "sort_order": sort_order.value,
        }
        if model_name:
            query["model_name"] = model_name
        if status is not None:
            query["status"] = status.value
        body = await self._get_json(
            f"{self.history_url}?{urlencode(query)}",
            priority=RateLimiter.PRIORITY_POLL,
            attempts=self.max_attempts,
            accept_list=True,
        )
        try:
            return page_rows(body.get(_LISTED, body))
        except HistoryShapeError as exc:
            raise Unavailable(f"the request history is unreadable: {exc}") from None

    async def history(
        self,
        since: date,
        until: date,
        *,
        model_name: str | None = MODEL_SLUG,
        status: HistoryStatus | None = None,
        per_page: int = MAX_PER_PAGE,
    ) -> AsyncIterator[HistoryRow]:
        """Every history row from `since` to `until` (inclusive dates, UTC), oldest first,
        split into the 31-day windows Segmind accepts.

        Pages stop at an empty or short one. Oldest first, because a row that lands while we
        page can then only push the rows after it down a place: a row may come twice
        (`history.dedupe` before summing) but none present from the start is skipped; the
        newcomer itself may be seen only by the next read. Pages are paced so that all history
        readers together use at most `history_share` of the request budget.
        """
        interval = self.limiter.window / (self.limiter.max_per_window * self.history_share)
        for first, last in date_windows(since, until):
            page = 1
            previous: list[str] | None = None
            while True:
                # One pace for every history reader of the process (the reconciler and each
                # lost submit being looked up): a slot is taken before sleeping, so readers at
                # once interleave and together stay inside `history_share` of the budget.
                now = self._clock()
                slot = max(now, self._history_next)
                self._history_next = slot + interval
                if slot > now:
                    await self._sleep(slot - now)
                rows = await self.history_page(
                    first, last, page=page, per_page=per_page, model_name=model_name, status=status
                )
                ids = [row.request_id for row in rows]
                if rows and ids == previous:
                    # A server ignoring `page` would otherwise be paged forever.
                    raise Unavailable("the request history repeats the same page")
                for row in rows:
                    yield row
                if len(rows) < per_page:
                    break
                previous = ids
                page += 1

    async def download(
        self, output: str | list[Any] | dict[str, Any], dest: Path, max_bytes: int
    ) -> int:
        """Stream the video in `output` to `dest` (via a temp file beside it); return its size.

        The first http(s) URL is fetched, without the API key, within `download_timeout`
        seconds in all. Redirects are followed only to http(s) and never to an internal
        (loopback, private, link-local) address unless `base_url` itself is one. Raises
        `OutputTooLarge` past `max_bytes` (from Content-Length up front, or counted while
        streaming) and `DownloadError` for anything else.
        """
        candidates = output_urls(output)
        urls = [u for u in candidates if _is_http(u)]
        if not urls:
            what = "a non-http(s) URL" if candidates else "no URL"
            raise DownloadError(f"the job's output holds {what}; refusing to download it")
        url = urls[0]
        last: DownloadError | None = None
        try:
            async with asyncio.timeout(self.download_timeout):
                for attempt in range(self.max_attempts):
                    if attempt:
                        await self._sleep(self._backoff(attempt - 1))
                    try:
                        return await self._download_once(url, dest, max_bytes)
                    except _RetryableDownload as exc:
                        last = DownloadError(exc.description)
                        log.info("download failed (%s); retrying", exc.description)
        except TimeoutError:
            raise DownloadError(
                f"the download took longer than {self.download_timeout:.0f} s in all",
                user_message="The finished video took too long to download.",
            ) from None
        assert last is not None
        raise last

    # -- internals --

    async def _status(self, job: SubmittedJob, *, attempts: int, prepaid: bool) -> StatusReport:
        body = await self._get_json(
            self._job_url(job.status_url, job, status=True),
            priority=RateLimiter.PRIORITY_POLL if prepaid else RateLimiter.PRIORITY_USER,
            attempts=attempts,
            prepaid=prepaid,
            request_id=job.request_id,
        )
        raw_state = body.get("status")
        if not isinstance(raw_state, str):
            raise Unavailable("the status answer has no `status`", request_id=job.request_id)
        try:
            state = JobState(raw_state.upper())
        except ValueError:
            # An unknown state is not an ending; keep polling rather than fail the job.
            log.warning("unknown Segmind state %r for %s", raw_state, job.request_id)
            state = JobState.PROCESSING
        metrics = body.get("metrics")
        error = body.get("error")
        return StatusReport(
            state=state,
            raw=body,
            error=self._redact(str(error)) if error is not None else None,
            metrics=metrics if isinstance(metrics, dict) else {},
        )

    def _job_url(self, given: str, job: SubmittedJob, *, status: bool) -> str:
        # The key goes only to our own base URL's origin; anything else is rebuilt.
        if given and _origin(given) == _origin(self.base_url):
            return given
        rebuilt = SubmittedJob.from_request_id(self.base_url, job.request_id)
        return rebuilt.status_url if status else rebuilt.response_url

    def _job_from_submit(self, body: dict[str, Any], status: int) -> SubmittedJob:
        request_id = body.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            # Accepted (2xx) but untrackable: the job probably exists and will be billed.
            raise SubmitUncertain(
                "Segmind accepted the submit but returned no request_id", status=status
            )
        rebuilt = SubmittedJob.from_request_id(self.base_url, request_id)
        status_url = body.get("status_url")
        response_url = body.get("response_url")
        return SubmittedJob(
            request_id=request_id,
            status_url=status_url if isinstance(status_url, str) else rebuilt.status_url,
            response_url=response_url if isinstance(response_url, str) else rebuilt.response_url,
            submitted_at=self._clock(),
        )

    async def _get_json(
        self,
        url: str,
        *,
        priority: int,
        attempts: int,
        prepaid: bool = False,
        request_id: str | None = None,
        accept_list: bool = False,
    ) -> dict[str, Any]:
        """GET with retries; a COMPLETED/FAILED body is the answer whatever the HTTP code.

        With `accept_list`, a 2xx JSON array is an answer too, returned under `_LISTED`.
        """
        for attempt in range(attempts):
            last_try = attempt + 1 >= attempts
            if not (prepaid and attempt == 0):
                await self.limiter.acquire(priority)
            try:
                reply = await self._exchange("GET", url)
            except _TransportFailure as failure:
                error: SegmindError = Unavailable(failure.description, request_id=request_id)
            else:
                outcome = self._interpret(
                    reply, method="GET", request_id=request_id, accept_list=accept_list
                )
                if isinstance(outcome, dict):
                    return outcome
                error = outcome
            if isinstance(error, RateLimited):
                wait = self._rate_wait(error, attempt)
                # Everyone waits for the reset, not just this request.
                self.limiter.pause_until(self._clock() + min(wait, self.max_rate_wait))
                if last_try or wait > self.max_rate_wait:
                    raise error
                log.info("rate limited; retrying in %.1f s", wait)
                continue
            if isinstance(error, Unavailable) and not last_try:
                delay = self._backoff(attempt)
                log.info("Segmind unavailable (%s); retrying in %.1f s", error, delay)
                await self._sleep(delay)
                continue
            raise error
        raise AssertionError("unreachable")  # pragma: no cover

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
        return self._rng.uniform(0.0, min(self.max_backoff, self.backoff_base * 2.0**attempt))

    def _poll_retry_in(self, error: BaseException) -> float | None:
        """When a failed poll should be tried again: at a 429's reset (or Retry-After) when
        Segmind named one, capped by our patience; None lets the poller back off as usual."""
        if not isinstance(error, RateLimited):
            return None
        if error.reset_at is None and error.retry_after is None:
            return None
        return min(self._rate_wait(error, 0), self.max_rate_wait)

    def _rate_wait(self, error: RateLimited, attempt: int) -> float:
        if error.reset_at is not None:
            # A little slack: Segmind's clock and ours are not the same clock.
            return max(0.0, error.reset_at - self._wall_clock()) + 0.5
        if error.retry_after is not None:
            return error.retry_after
        return self._backoff(attempt)

    async def _exchange(
        self, method: str, url: str, *, json_body: dict[str, Any] | None = None
    ) -> _Reply:
        """One HTTP request to Segmind's API. Transport failures become `_TransportFailure`."""
        session = self._get_session()
        failure: _TransportFailure
        try:
            async with session.request(
                method,
                url,
                json=json_body,
                headers={"x-api-key": self._api_key, "Accept": "application/json"},
                timeout=self._timeout,
                # A redirect would carry x-api-key to wherever it points.
                allow_redirects=False,
            ) as response:
                data = await response.content.read(_MAX_API_BODY)
                log.debug("%s %s -> %s", method, url, response.status)
                return _Reply(response.status, dict(response.headers), data)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            failure = _TransportFailure(self._describe(exc), reached_server=False)
        except (aiohttp.ClientError, TimeoutError) as exc:
            failure = _TransportFailure(self._describe(exc), reached_server=True)
        # Raised outside the except block so the aiohttp exception (whose text or request_info
        # may echo headers) is not even chained as __context__.
        raise failure

    def _describe(self, exc: BaseException) -> str:
        kind = type(exc).__name__
        if isinstance(exc, TimeoutError) and not isinstance(exc, aiohttp.ClientError):
            return "Segmind did not answer in time (TimeoutError)"
        text = str(exc) if not isinstance(exc, aiohttp.ClientResponseError) else exc.message
        return self._redact(f"could not talk to Segmind ({kind}: {text})")

    def _redact(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, MASK)
        return text

    def _interpret(
        self,
        reply: _Reply,
        *,
        method: str,
        request_id: str | None = None,
        accept_list: bool = False,
    ) -> dict[str, Any] | SegmindError:
        """The JSON body of a usable answer, or the error it stands for."""
        body: Any
        try:
            body = json.loads(reply.body) if reply.body else None
        except (ValueError, UnicodeDecodeError):
            body = None
        code = reply.status
        if (
            method == "GET"
            and isinstance(body, dict)
            and body.get("status") in (JobState.COMPLETED.value, JobState.FAILED.value)
        ):
            return body  # the SDK's rule: a terminal body is the answer, even under 422
        if 200 <= code < 300:
            if isinstance(body, dict):
                return body
            if accept_list and isinstance(body, list):
                return {_LISTED: body}
            return Unavailable(
                "Segmind answered with something that is not a JSON object",
                status=code,
                request_id=request_id,
            )
        message = self._message(body, reply)
        common: dict[str, Any] = {"status": code, "request_id": request_id}
        if code == 429:
            now = self._wall_clock()
            return RateLimited(
                message,
                reset_at=parse_reset(reply.headers.get("x-rate-limit-reset-at-utc"), now),
                retry_after=parse_retry_after(reply.headers.get("Retry-After"), now),
                **common,
            )
        if code >= 500:
            if code == 500 and isinstance(body, dict) and _PARAM_WORDS.search(message or ""):
                return BadRequest(message, **common)
            return Unavailable(message, **common)
        if not isinstance(body, dict):
            # HTML or garbage from a proxy (e.g. a 405 page): nothing of Segmind's to go by.
            return Unavailable(message, **common)
        if code == 400:
            return BadRequest(message, **common)
        if code in (401, 403):
            return AuthError(message, **common)
        if code == 404:
            return NotFound(message, **common)
        if code == 406:
            if message and "credit" in message.lower():
                return InsufficientCredits(message, **common)
            return BadRequest(message, **common)
        if code == 410:
            return ModelGone(message, **common)
        if code == 422:
            if method == "POST":
                return BadRequest(message, **common)
            return self._failure(body, request_id, status=code)
        return SegmindError(message, **common)

    def _message(self, body: Any, reply: _Reply) -> str:
        if isinstance(body, dict):
            for key in ("error", "message", "detail"):
                value = body.get(key)
                if value:
                    return self._redact(str(value) if not isinstance(value, str) else value)
            return f"HTTP {reply.status} without an error message"
        content_type = reply.headers.get("Content-Type", "")
        if "html" in content_type.lower() or reply.body.lstrip()[:1] == b"<":
            return f"HTTP {reply.status} with an HTML page instead of JSON"
        return f"HTTP {reply.status} with a body that is not JSON"

    def _failure(
        self, body: Mapping[str, Any], request_id: str | None, *, status: int | None = None
    ) -> GenerationFailed:
        error = body.get("error")
        reason = self._redact(str(error)) if error else None
        kind = ContentBlocked if looks_blocked(reason) else GenerationFailed
        return kind(reason, raw=body, status=status, request_id=request_id)

    async def _check_download_target(self, url: str) -> None:
        """Refuse a URL the bot must not fetch: not http(s), or an internal address."""
        parts = urlsplit(url)
        host = parts.hostname
        if parts.scheme not in ("http", "https") or not host:
            raise DownloadError(f"the video URL is not http(s) ({parts.scheme or 'no scheme'})")
        if self._internal_downloads_ok:
            return
        if _names_internal_host(url):
            raise DownloadError(f"the video URL names an internal address ({host}); refused")
        try:
            addresses = await self._resolve(host)
        except OSError as exc:
            raise _RetryableDownload(f"could not resolve the video host ({exc})") from None
        if not addresses or any(is_internal_address(a) for a in addresses):
            raise DownloadError(f"the video host {host} resolves to an internal address; refused")

    async def _download_once(self, url: str, dest: Path, max_bytes: int) -> int:
        session = self._get_session()
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self._timeout.connect, sock_read=self._timeout.sock_read
        )
        temp = partial_download_path(dest)
        await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
        handle: BinaryIO | None = None
        failure: _RetryableDownload
        try:
            for _hop in range(_MAX_REDIRECTS + 1):
                await self._check_download_target(url)
                # No x-api-key: the output lives on a storage host, not on Segmind's API.
                # Redirects by hand, so every hop passes the same check as the first URL.
                async with session.get(url, timeout=timeout, allow_redirects=False) as response:
                    if response.status in _REDIRECTS:
                        location = response.headers.get("Location")
                        if not location:
                            raise DownloadError("the video host redirected without a Location")
                        url = urljoin(url, location)
                        continue
                    if response.status >= 500 or response.status == 429:
                        raise _RetryableDownload(f"the video host answered HTTP {response.status}")
                    if response.status >= 400:
                        raise DownloadError(f"the video host answered HTTP {response.status}")
                    length = response.content_length
                    if length is not None and length > max_bytes:
                        raise OutputTooLarge(
                            f"the video is {length} bytes, over the {max_bytes}-byte limit",
                            size=length,
                            limit=max_bytes,
                        )
                    handle = await asyncio.to_thread(_open_for_writing, temp)
                    written = 0
                    async for chunk in response.content.iter_chunked(_CHUNK):
                        written += len(chunk)
                        if written > max_bytes:
                            raise OutputTooLarge(
                                f"the video passed the {max_bytes}-byte limit while downloading",
                                size=None,
                                limit=max_bytes,
                            )
                        await asyncio.to_thread(handle.write, chunk)
                await asyncio.to_thread(handle.close)
                handle = None
                await asyncio.to_thread(os.replace, temp, dest)
                return written
            raise DownloadError(f"the video host redirected more than {_MAX_REDIRECTS} times")
        except (aiohttp.ClientError, TimeoutError) as exc:
            failure = _RetryableDownload(self._redact(f"{type(exc).__name__}: {exc}"))
        finally:
            if handle is not None:
                await asyncio.to_thread(handle.close)
            await asyncio.to_thread(_unlink_quietly, temp)
        raise failure


PARTIAL_PREFIX = "."  # a download in progress is `.<dest name>.<hex>.part` beside `dest`


def partial_download_path(dest: Path) -> Path:
    """Where a download to `dest` is written until it is complete (hidden, unique)."""
    return dest.with_name(f"{PARTIAL_PREFIX}{dest.name}.{secrets.token_hex(4)}.part")


class _RetryableDownload(Exception):
    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


def _open_for_writing(path: Path) -> BinaryIO:
    return path.open("wb")


def _unlink_quietly(path: Path) -> None:
    path.unlink(missing_ok=True)
