"""`python -m bot generate "prompt" ...` and `python -m bot check`: Segmind without Discord.

Both end with exit code 0 on success and ONE clear line on stderr otherwise (no traceback).
Without SEGMIND_API_KEY (demo mode) they start the in-process fake Segmind, so nothing is billed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import NoReturn, TextIO

from bot.config import Settings, SettingsError, load_settings
from bot.params import (
    ALLOWED_VALUES,
    DURATIONS,
    FPS_VALUES,
    Aspect,
    InvalidParams,
    Resolution,
    VeoParams,
)
from bot.request import ImageSource, VeoRequest, resolve_params
from bot.segmind.client import (
    JobResult,
    SegmindClient,
    SegmindError,
    StatusReport,
    SubmitUncertain,
)

# The demo fake finishes in about a second; tell the schedule so before the first poll.
_DEMO_QUEUE_SECONDS = 0.5
_DEMO_PROCESSING_SECONDS = 2.0
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.prog}: {message}")


class _UsageError(Exception):
    pass


def build_generate_parser() -> argparse.ArgumentParser:
    """The arguments of `python -m bot generate`."""
    parser = _OneLineParser(
        prog="python -m bot generate", description="Make one Veo 3 Fast video from a prompt."
    )
    parser.add_argument("prompt", help="what the video should show")
    parser.add_argument("--aspect", choices=ALLOWED_VALUES["aspect_ratio"], default=None)
    parser.add_argument("--duration", type=int, choices=DURATIONS, default=None)
    parser.add_argument("--fps", type=int, choices=FPS_VALUES, default=None)
    parser.add_argument("--resolution", choices=ALLOWED_VALUES["resolution"], default=None)
    parser.add_argument("--audio", action="store_true", help="generate a soundtrack")
    parser.add_argument("--seed", type=int, default=0, help="0 picks one at random")
    parser.add_argument("--image-url", default=None, help="an http(s) image to animate")
    parser.add_argument("--out", type=Path, default=None, help="where to save the MP4")
    return parser


def params_from_args(args: argparse.Namespace, settings: Settings) -> VeoParams:
    """Command-line options over the settings' /veo defaults; `InvalidParams` if out of range."""
    request = VeoRequest(
        prompt=args.prompt,
        aspect=Aspect(args.aspect) if args.aspect else None,
        duration=args.duration,
        fps=args.fps,
        resolution=Resolution(args.resolution) if args.resolution else None,
        audio=bool(args.audio),  # a flag: absent means no soundtrack, whatever the server's /veo
        seed=args.seed,
        image=ImageSource(args.image_url) if args.image_url else None,
    )
    return resolve_params(request, settings)


class ProgressLine:
    """State and elapsed time on stderr: a \\r-updated bar on a TTY, plain lines otherwise."""

    WIDTH = 24

    def __init__(self, stream: TextIO, *, typical: float) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.typical = max(typical, 1.0)
        self.started = time.monotonic()
        self.state = "SUBMITTING"
        self._last_plain: str | None = None

    def elapsed(self) -> float:
        """Seconds since the line was created."""
        return time.monotonic() - self.started

    def update(self, state: str | None = None) -> None:
        """Redraw (TTY) or print a line when the state changed (plain)."""
        if state is not None:
            self.state = state
        elapsed = self.elapsed()
        if self.tty:
            # Never show a full bar before the job says it is done.
            done = 1.0 if self.state == "COMPLETED" else min(elapsed / self.typical, 0.95)
            filled = round(done * self.WIDTH)
            bar = "#" * filled + "." * (self.WIDTH - filled)
            self.stream.write(
                f"\r[{bar}] {self.state:<11} {elapsed:5.0f}s (usually ~{self.typical:.0f}s) "
            )
            self.stream.flush()
        elif self.state != self._last_plain:
            self._last_plain = self.state
            self.stream.write(f"{self.state} after {elapsed:.0f}s\n")
            self.stream.flush()

    def finish(self) -> None:
        """End the \\r line so later output starts on a fresh one."""
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


@contextlib.asynccontextmanager
async def open_client(
    settings: Settings, *, max_attempts: int = 5
) -> AsyncIterator[tuple[SegmindClient, bool]]:
    """A client for the configured Segmind, or for an in-process fake in demo mode."""
    if not settings.demo_mode:
        assert settings.segmind_api_key is not None
        async with SegmindClient.from_settings(
            settings,
            settings.segmind_api_key.get_secret_value(),
            settings.segmind_base_url,
            max_attempts=max_attempts,
        ) as client:
            yield client, False
        return
    from bot.segmind.fake import DEMO_KEY, FakeSegmind

    fake = FakeSegmind(
        api_key=DEMO_KEY,
        queue_seconds=_DEMO_QUEUE_SECONDS,
        processing_seconds=_DEMO_PROCESSING_SECONDS,
    )
    await fake.start(host="127.0.0.1", port=0)
    try:
        async with SegmindClient(
            DEMO_KEY,
            fake.base_url,
            history_url=fake.history_url,
            max_rpm=settings.segmind_max_rpm,
            timeout=settings.segmind_timeout,
            poll_floor=0.25,
            poll_ceiling=1.0,
            job_deadline=60.0,
        ) as client:
            # Teach the schedule the fake's speed so the demo does not poll like it is Veo.
            for _ in range(20):
                client.observe_duration(_DEMO_QUEUE_SECONDS + _DEMO_PROCESSING_SECONDS)
            yield client, True
    finally:
        await fake.stop()


async def generate_command(
    args: argparse.Namespace,
    *,
    settings: Settings | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Submit, follow, download. Returns the exit code; failures are one line on `err`."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        settings = settings or load_settings()
        params = params_from_args(args, settings)
    except (SettingsError, InvalidParams) as exc:
        message = exc.user_message if isinstance(exc, InvalidParams) else str(exc)
        print(f"error: {message}", file=err)
        return EXIT_USAGE
    request_id: str | None = None
    try:
        async with open_client(settings) as (client, demo):
            if demo:
                print("demo mode: no SEGMIND_API_KEY, using the built-in fake (free)", file=err)
            progress = ProgressLine(err, typical=client.estimate_seconds())
            progress.update()
            job = await client.submit(params)
            request_id = job.request_id
            ticker = asyncio.create_task(_tick(progress)) if progress.tty else None

            def on_status(report: StatusReport) -> None:
                progress.update(report.state.value)

            try:
                result: JobResult = await client.wait(job, on_status=on_status)
            finally:
                if ticker is not None:
                    ticker.cancel()
                progress.finish()
            dest = args.out or default_output_path(Path.cwd())
            size = await client.download(result.output, dest, settings.veo_max_video_bytes)
    except SubmitUncertain as exc:
        print(f"error: {exc.user_message}", file=err)
        return EXIT_FAILED
    except SegmindError as exc:
        where = f" (request {request_id})" if request_id else ""
        print(f"error: {exc.user_message}{where}", file=err)
        return EXIT_FAILED
    except OSError as exc:
        print(f"error: could not write the video: {exc.strerror or exc}", file=err)
        return EXIT_FAILED
    cost = f"${result.cost:.2f}" if result.cost is not None else "unknown"
    print(f"request id: {job.request_id}", file=out)
    print(f"cost: {cost}", file=out)
    print(f"saved: {dest} ({size} bytes)", file=out)
    return EXIT_OK


def default_output_path(folder: Path, *, now: float | None = None) -> Path:
    """`veo-<local time>.mp4` in `folder`, never overwriting a file already there.

    Built only from our own clock: Segmind's request id is remote text, and one like
    `../../x` would otherwise choose where the file lands."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    candidate = folder / f"veo-{stamp}.mp4"
    number = 2
    while candidate.exists():
        candidate = folder / f"veo-{stamp}-{number}.mp4"
        number += 1
    return candidate


async def _tick(progress: ProgressLine) -> None:
    """Keep the elapsed seconds moving on a TTY between the (sparse) polls."""
    while True:
        await asyncio.sleep(1.0)
        progress.update()


async def check_command(
    *, settings: Settings | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Validate the settings and reach Segmind (credits). Returns the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        settings = settings or load_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    print("settings: OK", file=out)
    token = settings.discord_token
    if token is None or not token.get_secret_value().strip():
        print("discord: DISCORD_TOKEN is not set (needed for `python -m bot run`)", file=out)
    else:
        print("discord: token set", file=out)
    try:
        # Two tries: a check should answer quickly, not sit through a long back-off.
        async with open_client(settings, max_attempts=2) as (client, demo):
            balance = await client.credits()
    except SegmindError as exc:
        print(f"error: Segmind at {settings.segmind_base_url}: {exc.user_message}", file=err)
        return EXIT_FAILED
    if demo:
        print(
            "segmind: DEMO MODE (no SEGMIND_API_KEY): the built-in fake answers, nothing is billed",
            file=out,
        )
    else:
        print(
            f"segmind: reachable at {settings.segmind_base_url}; credits ${balance.credits:.2f}"
            f" (free ${balance.free_credits:.2f}); budget {settings.segmind_max_rpm} requests/min",
            file=out,
        )
    return EXIT_OK


def main_generate(argv: Sequence[str]) -> int:
    """Entry point of `python -m bot generate`."""
    try:
        args = build_generate_parser().parse_args(list(argv))
    except _UsageError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(generate_command(args))
    except KeyboardInterrupt:
        print(
            "interrupted: a submitted video may still be made and billed on Segmind",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED


def main_check(argv: Sequence[str]) -> int:
    """Entry point of `python -m bot check`."""
    if list(argv):
        print("python -m bot check: takes no arguments", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(check_command())
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
