"""Test support for the job lifecycle and the Discord output: one factory per object under test,
one way to queue a job, and a `JobOutput` that records what the lifecycle told it.

Construction lives here (and only here), so a constructor change is one edit, not one per test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bot.balance import NO_SIGNAL, CreditsSignal
from bot.chat.output import DiscordOutput
from bot.discrepancies import Alerts
from bot.jobs import (
    Finished,
    JobOutput,
    JobService,
    OutputUnavailable,
    Progress,
    Receipt,
    Stage,
    checkpoint_route,
)
from bot.params import VeoParams
from bot.quota import Allowed, LimitDefaults, Refusal
from bot.segmind.client import SegmindClient
from bot.segmind.fake import FakeSegmind
from bot.store import Job, ReserveRequest, Store

SEGMIND_KEY = "sk-lifecycle-test-key-0123456789"
GUILD = 100
CHANNEL = 200
MEMBER = 300
OTHER_MEMBER = 301
MODERATOR = 302
PLACEHOLDER = 400
MIB = 1024 * 1024
# One video per window: whether a finished job counts is then exactly whether the member may
# start another one — what they would notice.
ONE_A_DAY = LimitDefaults(user_limit=1, concurrency=5)
WAIT = 20.0  # seconds an awaited outcome may take on a loaded machine before the test fails

__all__ = [
    "CHANNEL",
    "GUILD",
    "MEMBER",
    "MIB",
    "MODERATOR",
    "ONE_A_DAY",
    "OTHER_MEMBER",
    "PLACEHOLDER",
    "SEGMIND_KEY",
    "WAIT",
    "Call",
    "OutputUnavailable",
    "Progress",
    "Receipt",
    "RecordingOutput",
    "Stage",
    "counts_against_limit",
    "enqueue",
    "make_output",
    "make_segmind",
    "make_service",
    "new_job",
]


def make_segmind(fake: FakeSegmind) -> SegmindClient:
    """A real client for the fake, polling every few hundredths of a second."""
    return SegmindClient(
        SEGMIND_KEY,
        fake.base_url,
        history_url=fake.history_url,
        max_rpm=60_000,
        poll_floor=0.02,
        poll_ceiling=0.05,
        backoff_base=0.01,
        max_backoff=0.05,
    )


def make_service(
    store: Store,
    segmind: SegmindClient,
    output: JobOutput,
    work_dir: Path,
    *,
    defaults: LimitDefaults = ONE_A_DAY,
    max_concurrent: int = 2,
    deadline: float = 60.0,
    max_video_bytes: int = 50 * MIB,
    clock: Callable[[], float] = time.time,
    credits_signal: CreditsSignal = NO_SIGNAL,
    recovery_window: float = 3.0,
    recovery_interval: float = 0.05,
    alerts: Alerts | None = None,
) -> JobService:
    """The one place a test builds a `JobService`. A lost submit is looked for in the history
    for a few seconds (the fake's rows land one second after the request)."""
    return JobService(
        store,
        segmind,
        output,
        limit_defaults=defaults,
        max_concurrent=max_concurrent,
        work_dir=work_dir,
        max_video_bytes=max_video_bytes,
        deadline=deadline,
        clock=clock,
        credits_signal=credits_signal,
        recovery_window=recovery_window,
        recovery_interval=recovery_interval,
        alerts=alerts,
    )


def make_output(
    client: Any,
    store: Store,
    *,
    edit_interval: float = 0.0,
    mention_on_ready: bool = False,
    demo: bool = False,
    clock: Callable[[], float] = time.time,
) -> DiscordOutput:
    """The one place a test builds a `DiscordOutput` over a logged-in `discord.Client`."""
    return DiscordOutput(
        client,
        log_channel=store.get_log_channel,
        edit_interval=edit_interval,
        mention_on_ready=mention_on_ready,
        demo=demo,
        clock=clock,
    )


def new_job(
    prompt: str = "a red fox in the snow",
    *,
    user_id: int = MEMBER,
    guild_id: int = GUILD,
    channel_id: int = CHANNEL,
    role_ids: tuple[int, ...] = (),
    message_id: int | None = PLACEHOLDER,
    interaction_token: str | None = None,
    interaction_created_at: float | None = None,
    upload_limit: int | None = None,
    **params: Any,
) -> ReserveRequest:
    """The one place a test builds a request (validated, acknowledged, not yet reserved)."""
    return ReserveRequest(
        guild_id=guild_id,
        channel_id=channel_id,
        user_id=user_id,
        role_ids=role_ids,
        params=VeoParams(prompt=prompt, **params),
        interaction_token=interaction_token,
        interaction_created_at=interaction_created_at,
        placeholder_channel_id=channel_id,
        placeholder_message_id=message_id,
        upload_limit=upload_limit,
    )


async def enqueue(service: JobService, prompt: str = "a red fox in the snow", **kw: Any) -> int:
    """Queue a job through the service, as a command does; fails the test on a refusal."""
    outcome = await service.enqueue(new_job(prompt, **kw))
    assert not isinstance(outcome, Refusal), outcome
    return outcome


async def counts_against_limit(
    store: Store, defaults: LimitDefaults = ONE_A_DAY, user_id: int = MEMBER
) -> bool:
    """Whether the member's finished job still uses up their one video a day: the answer a new
    /veo would get right now."""
    view = await store.quota_view(GUILD, user_id, (), defaults)
    if isinstance(view.decision, Allowed):
        return False
    assert view.decision.kind == "user_window", view.decision
    return True


CallKind = Literal["progress", "deliver", "find_delivery", "failed", "finished"]


@dataclass
class Call:
    kind: CallKind
    job: Job  # the job as the lifecycle handed it over
    detail: Any = None  # Progress, Finished, a failure message, the Receipt reported

    @property
    def job_id(self) -> int:
        return self.job.id


@dataclass
class RecordingOutput:
    """A `JobOutput` that records every call and does what the test scripted.

    `fail_deliver[n]` is raised by the n-th `deliver` (1-based); an attempt listed in `landed`
    reached the requester before it raised, so `find_delivery` reports it from then on — the
    upload that timed out after Discord stored it. `find_error` makes `find_delivery` unable to
    tell; `found` is what it reports for an attempt made before the test began (a restart).
    Each `deliver` first records its route through the lifecycle's write-ahead hook, as the
    Discord output does.
    """

    fail_deliver: dict[int, BaseException] = field(default_factory=dict)
    landed: set[int] = field(default_factory=set)
    found: Receipt | None = None
    find_error: BaseException | None = None
    fail_progress: bool = False
    route: str = "channel-post"
    calls: list[Call] = field(default_factory=list)
    videos: list[bytes] = field(default_factory=list)  # the file each deliver was handed
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def _record(self, call: Call) -> None:
        async with self._changed:
            self.calls.append(call)
            self._changed.notify_all()

    def of(self, kind: CallKind, job_id: int | None = None) -> list[Call]:
        return [c for c in self.calls if c.kind == kind and job_id in (None, c.job_id)]

    def kinds(self, job_id: int, *, progress: bool = False) -> list[CallKind]:
        """The order of the calls about one job (progress left out unless asked for)."""
        return [
            c.kind for c in self.calls if c.job_id == job_id and (progress or c.kind != "progress")
        ]

    def stages(self, job_id: int) -> list[Stage]:
        return [c.detail.stage for c in self.of("progress", job_id)]

    async def wait_for(self, predicate: Callable[[], object], timeout: float = WAIT) -> None:  # noqa: ASYNC109
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout)

    async def settled(self, job_id: int) -> Call:
        """Until the lifecycle reports the job's end (`finished`); returns that call."""
        await self.wait_for(lambda: self.of("finished", job_id))
        return self.of("finished", job_id)[0]

    # ------------------------------------------------------------------------- JobOutput

    async def progress(self, job: Job, progress: Progress) -> None:
        await self._record(Call("progress", job, progress))
        if self.fail_progress:
            raise RuntimeError("Discord is down for progress edits")

    async def deliver(self, job: Job, finished: Finished) -> Receipt:
        attempt = len(self.of("deliver", job.id)) + 1
        self.videos.append(finished.video.read_bytes())
        await self._record(Call("deliver", job, finished))
        await checkpoint_route(self.route)
        receipt = Receipt(message_id=9000 + attempt, method=self.route)
        if attempt in self.landed:
            self.found = receipt
        error = self.fail_deliver.get(attempt)
        if error is not None:
            raise error
        return receipt

    async def find_delivery(self, job: Job) -> Receipt | None:
        await self._record(Call("find_delivery", job, self.found))
        if self.find_error is not None:
            raise self.find_error
        return self.found

    async def failed(self, job: Job, message: str) -> None:
        await self._record(Call("failed", job, message))

    async def finished(self, job: Job) -> None:
        await self._record(Call("finished", job))
