"""Shrinks a video to fit an upload limit: H.264 + AAC in MP4, sized by bitrate, with PyAV.

Pure of Discord: the caller says how many bytes it may send and gets a file that size or less, or
an `EncodeError` saying why not. The CPU work runs in a worker thread (at most
`MAX_CONCURRENT_ENCODES` at once per event loop), streaming packet by packet from disk to disk so
a video is never held in memory whole. Cancelling the awaiting task stops the thread at the next
packet and removes the partial output.

Sizing: the video bitrate is what is left of the limit, spread over the duration, after the
audio and the container's own bytes. x264's average-bitrate mode lands within a few per cent, so
the first try aims a little under; if it still lands over, a second try aims lower by the miss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

log = logging.getLogger(__name__)

MAX_CONCURRENT_ENCODES = 1  # a re-encode keeps the cores busy; more at once only queue in x264
MIN_VIDEO_BITRATE = 100_000  # bits/s; below it the picture is mush: send a link instead
MAX_AUDIO_BITRATE = 128_000
CONTAINER_OVERHEAD = 48 * 1024  # moov (sample tables), mdat header, faststart slack
FIRST_TRY_MARGIN = 0.95  # x264 ABR overshoots by a few per cent at most on 8-s clips
RETRY_MARGIN = 0.92
ATTEMPTS = 2
# Bounds on one re-encode, so a strange file cannot hold the one encode slot for long: a
# wall-clock limit for all its tries, and a size past which it is not tried at all (Veo makes
# 8 s of 1080p at 30 fps: 240 frames of 2.1 Mpx; these leave ample room).
ENCODE_TIME_LIMIT = 300.0  # seconds
MAX_ENCODE_PIXELS = 3840 * 2160
MAX_ENCODE_FRAMES = 60 * 60

Progress = Callable[[float], None]


class EncodeError(Exception):
    """The video could not be made to fit. `reason` is a sentence a member can read."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CannotFit(EncodeError):
    """Even the lowest acceptable bitrate would not fit in the limit (or every try landed over)."""


class EncodeFailed(EncodeError):
    """FFmpeg could not read or write the video."""


class NotAVideo(EncodeError):
    """The file is not a playable video of a sane length (see `probe_video`)."""


# Veo makes 4-8 s clips; anything far outside that is not the video we asked for.
MIN_SANE_SECONDS = 0.5
MAX_SANE_SECONDS = 60.0


def probe_video(path: Path) -> float:
    """The duration of the video at `path`, in seconds; raises `NotAVideo` unless the file
    opens as a container with a video stream lasting a sane time. Blocking: run in a thread."""
    try:
        with av.open(str(path), "r") as container:
            if not container.streams.video:
                raise NotAVideo("the file holds no video stream")
            duration = media_duration(container, container.streams.video[0])
    except av.error.FFmpegError as exc:
        raise NotAVideo(f"the file does not open as a video ({type(exc).__name__})") from None
    if duration is None or not MIN_SANE_SECONDS <= duration <= MAX_SANE_SECONDS:
        shown = "unknown" if duration is None else f"{duration:.1f} s"
        raise NotAVideo(f"the video's length is {shown}")
    return duration


@dataclass(frozen=True)
class FitResult:
    path: Path
    size: int
    limit: int
    source_size: int
    duration: float
    video_bitrate: int  # what the last try aimed at, bits/s
    audio: bool
    attempts: int
    seconds: float  # wall time spent encoding


@dataclass(frozen=True)
class _Source:
    duration: float
    width: int
    height: int
    fps: float | None
    video_bitrate: int | None
    audio: bool
    audio_bitrate: int | None


_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _loop_slots() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    slots = _slots.get(loop)
    if slots is None:
        slots = _slots[loop] = asyncio.Semaphore(MAX_CONCURRENT_ENCODES)
    return slots


def plan_bitrates(
    duration: float, limit_bytes: int, *, audio: bool, source_video_bitrate: int | None = None
) -> tuple[int, int]:
    """(video, audio) bits per second that should land under `limit_bytes`.

    Raises `CannotFit` when the video would get less than `MIN_VIDEO_BITRATE`."""
    if duration <= 0:
        raise EncodeFailed("the video has no duration")
    budget_bits = max(limit_bytes - CONTAINER_OVERHEAD, 0) * 8
    total_rate = budget_bits / duration
    audio_rate = 0
    if audio:
        # Audio is cheap next to video; take less of a tight budget.
        audio_rate = min(MAX_AUDIO_BITRATE, max(32_000, int(total_rate * 0.05) // 1000 * 1000))
    video_rate = int((total_rate - audio_rate) * FIRST_TRY_MARGIN)
    if video_rate < MIN_VIDEO_BITRATE:
        raise CannotFit(
            f"a {duration:.0f} s video cannot be squeezed into "
            f"{human_size(limit_bytes)} and still be watchable"
        )
    if source_video_bitrate:
        # Never spend more bits than the source had: a file that is big for another reason
        # (padding, a huge audio track) shrinks without inflating its picture.
        video_rate = min(video_rate, max(source_video_bitrate, MIN_VIDEO_BITRATE))
    return video_rate, audio_rate


async def fit_to_size(
    src: Path,
    dest: Path,
    limit_bytes: int,
    *,
    progress: Progress | None = None,
    attempts: int = ATTEMPTS,
    preset: str = "veryfast",
    time_limit: float | None = ENCODE_TIME_LIMIT,
    max_pixels: int = MAX_ENCODE_PIXELS,
    max_frames: int = MAX_ENCODE_FRAMES,
) -> FitResult:
    """Re-encode `src` into `dest` (H.264 + AAC, MP4) so that it is at most `limit_bytes`.

    `progress(fraction)` is called on the event loop as the encode moves (0.0-1.0, across all
    tries). All tries together get `time_limit` seconds (waiting for the encode slot aside); a
    source over `max_pixels` per frame or `max_frames` frames is refused, not encoded.
    Raises `CannotFit` or `EncodeFailed`; `dest` is removed on any failure.
    """
    loop = asyncio.get_running_loop()
    cancel = threading.Event()

    def report(fraction: float) -> None:
        if progress is not None:
            loop.call_soon_threadsafe(progress, fraction)

    bounds = _Bounds(max_pixels=max_pixels, max_frames=max_frames)
    try:
        async with _loop_slots():
            try:
                async with asyncio.timeout(time_limit):
                    return await _fit(
                        src, dest, limit_bytes, progress, report, attempts, preset, cancel, bounds
                    )
            except TimeoutError:
                cancel.set()  # the worker thread stops at its next packet
                log.warning("re-encoding %s passed its %.0f s limit", src.name, time_limit or 0)
                raise EncodeFailed("re-encoding took too long") from None
    except asyncio.CancelledError:
        cancel.set()  # the worker thread stops at its next packet
        _remove(dest)
        raise
    except EncodeError:
        _remove(dest)
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        _remove(dest)
        log.warning("re-encoding %s failed: %s", src.name, exc)
        raise EncodeFailed("the video could not be re-encoded") from exc


@dataclass(frozen=True)
class _Bounds:
    max_pixels: int
    max_frames: int


async def _fit(
    src: Path,
    dest: Path,
    limit_bytes: int,
    progress: Progress | None,
    report: Progress,
    attempts: int,
    preset: str,
    cancel: threading.Event,
    bounds: _Bounds,
) -> FitResult:
    """The tries of `fit_to_size`, inside its slot and time limit."""
    started = time.monotonic()
    source_size, source = await asyncio.to_thread(_inspect, src)
    _check_bounds(source, bounds)
    video_rate, audio_rate = plan_bitrates(
        source.duration,
        limit_bytes,
        audio=source.audio,
        source_video_bitrate=source.video_bitrate,
    )
    size = 0
    for attempt in range(1, attempts + 1):

        def step(fraction: float, attempt: int = attempt) -> None:
            report(((attempt - 1) + fraction) / attempts)

        size = await asyncio.to_thread(
            _encode,
            src,
            dest,
            source,
            video_rate,
            audio_rate,
            preset,
            cancel,
            step,
            bounds.max_frames,
        )
        log.info(
            "re-encode try %d: %s at %d kbit/s video -> %s (limit %s)",
            attempt,
            human_size(source_size),
            video_rate // 1000,
            human_size(size),
            human_size(limit_bytes),
        )
        if size <= limit_bytes:
            if progress is not None:
                progress(1.0)  # on the loop, after the thread's queued reports
            return FitResult(
                path=dest,
                size=size,
                limit=limit_bytes,
                source_size=source_size,
                duration=source.duration,
                video_bitrate=video_rate,
                audio=source.audio,
                attempts=attempt,
                seconds=time.monotonic() - started,
            )
        # Aim lower by the miss, plus a margin: the overshoot is mostly proportional.
        video_rate = int(video_rate * (limit_bytes / size) * RETRY_MARGIN)
        if video_rate < MIN_VIDEO_BITRATE:
            break
    raise CannotFit(
        f"re-encoding still left {human_size(size)}, over the {human_size(limit_bytes)} limit"
    )


# ------------------------------------------------------------------------ worker thread


class _Cancelled(Exception):
    pass


def media_duration(container: Any, video: Any) -> float | None:
    """Seconds, from the container's header or else the video stream's own; None if neither."""
    if container.duration is not None:
        return float(container.duration / av.time_base)
    if video.duration is not None and video.time_base is not None:
        return float(video.duration * video.time_base)
    return None


def _inspect(src: Path) -> tuple[int, _Source]:
    size = src.stat().st_size
    with av.open(str(src), "r") as container:
        if not container.streams.video:
            raise EncodeFailed("the file holds no video")
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        duration = media_duration(container, video)
        if duration is None:
            raise EncodeFailed("the video has no duration")
        return size, _Source(
            duration=duration,
            width=video.codec_context.width,
            height=video.codec_context.height,
            fps=float(video.average_rate) if video.average_rate else None,
            video_bitrate=video.bit_rate or None,
            audio=audio is not None,
            audio_bitrate=audio.bit_rate or None if audio is not None else None,
        )


def _check_bounds(source: _Source, bounds: _Bounds) -> None:
    """Refuse, before any work, a source bigger than a re-encode is allowed to be."""
    pixels = source.width * source.height
    frames = source.duration * (source.fps or 60.0)
    if pixels > bounds.max_pixels or frames > bounds.max_frames:
        log.warning(
            "not re-encoding a %dx%d, %.0f-frame video (bounds: %d px, %d frames)",
            source.width,
            source.height,
            frames,
            bounds.max_pixels,
            bounds.max_frames,
        )
        raise EncodeFailed("the video is too large for the bot to re-encode")


def _encode(
    src: Path,
    dest: Path,
    source: _Source,
    video_rate: int,
    audio_rate: int,
    preset: str,
    cancel: threading.Event,
    progress: Progress,
    max_frames: int,
) -> int:
    """One pass: decode `src` packet by packet, encode to `dest`; returns the size written.
    Stops past `max_frames` decoded frames: a header can understate the length."""
    partial = dest.with_name(dest.name + ".part")
    try:
        with (
            av.open(str(src), "r") as inp,
            av.open(str(partial), "w", format="mp4", options={"movflags": "+faststart"}) as out,
        ):
            vin = inp.streams.video[0]
            vin.thread_type = "AUTO"
            ain = inp.streams.audio[0] if inp.streams.audio else None
            rate = vin.average_rate or 24
            vout: Any = out.add_stream("libx264", rate=rate)
            # yuv420p needs even sides; odd sources lose one pixel row/column.
            vout.width = source.width - source.width % 2
            vout.height = source.height - source.height % 2
            vout.pix_fmt = "yuv420p"
            vout.bit_rate = video_rate
            vout.thread_count = max(1, (os.cpu_count() or 2))
            vout.options = {
                "preset": preset,
                "maxrate": str(int(video_rate * 1.5)),
                "bufsize": str(int(video_rate * 2)),
                "profile": "high",
            }
            aout: Any = None
            if ain is not None:
                aout = out.add_stream("aac", rate=ain.rate or 48_000)
                aout.layout = ain.layout
                aout.bit_rate = audio_rate
            streams = [vin] if ain is None else [vin, ain]
            duration = max(source.duration, 1e-3)
            last_report = -1.0
            frames_done = 0
            for packet in inp.demux(*streams):
                if cancel.is_set():
                    raise _Cancelled
                if packet.stream is vin:
                    frames: list[Any] = packet.decode()
                    for frame in frames:
                        frames_done += 1
                        if frames_done > max_frames:
                            raise EncodeFailed("the video is too long for the bot to re-encode")
                        if (
                            frame.width != vout.width
                            or frame.height != vout.height
                            or (frame.format.name != "yuv420p")
                        ):
                            frame = frame.reformat(vout.width, vout.height, "yuv420p")
                        frame.pict_type = 0  # let x264 place keyframes, not the source
                        out.mux(vout.encode(frame))
                        if frame.time is not None:
                            done = min(frame.time / duration, 1.0)
                            if done - last_report >= 0.05:
                                last_report = done
                                progress(done)
                elif aout is not None:
                    audio_frames: list[Any] = packet.decode()
                    for audio_frame in audio_frames:
                        audio_frame.pts = None  # PyAV re-times through its frame-size FIFO
                        out.mux(aout.encode(audio_frame))
            out.mux(vout.encode(None))
            if aout is not None:
                out.mux(aout.encode(None))
        partial.replace(dest)
        return dest.stat().st_size
    finally:
        _remove(partial)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


# ------------------------------------------------------------------- the upload decision

LINK_LIFETIME = "about 7 days"  # Segmind's output files; unverified


@dataclass(frozen=True)
class UploadPlan:
    """What to send for a finished video: a file (`path`) or, when `path` is None, a link."""

    path: Path | None
    size: int
    limit: int
    fit: FitResult | None = None  # set when the file is a re-encode
    why_not: str | None = None  # set with a link: why no file fits

    @property
    def note(self) -> str | None:
        """The line for the final message when the video was re-encoded."""
        if self.fit is None:
            return None
        return (
            f"Re-encoded to fit this server's {human_size(self.limit)} upload limit "
            f"(original {human_size(self.fit.source_size)})."
        )

    def link_reason(self, original_size: int) -> str | None:
        if self.path is not None:
            return None
        because = f" — {self.why_not}" if self.why_not else ""
        return (
            f"The video is {human_size(original_size)}, over this server's "
            f"{human_size(self.limit)} upload limit{because}. Here is Segmind's download link "
            f"instead (it should last {LINK_LIFETIME})."
        )


def encoded_path(video: Path) -> Path:
    """Where the re-encode of `video` is kept (`job-N.mp4` → `job-N.fit.mp4`): beside it, under
    the same `job-*` name, so start-up clean-up removes it and the job's end can too."""
    return video.with_name(f"{video.stem}.fit.mp4")


async def plan_upload(
    src: Path,
    size: int,
    limit: int,
    dest: Path,
    *,
    on_encode: Callable[[], Any] | None = None,
    label: str = "video",
    time_limit: float | None = ENCODE_TIME_LIMIT,
) -> UploadPlan:
    """Attach `src` when it fits; else re-encode it into `dest`; else say why a link is needed.

    A `dest` already there from an earlier call (a delivery retry) that fits `limit` is used
    as it is: the same video is not encoded twice. The caller removes `dest` when done.
    `on_encode()` (may return an awaitable) is called once, before a re-encode starts.
    `label` names the video in logs (e.g. "job 12"). Never raises `EncodeError`."""
    if size <= limit:
        return UploadPlan(path=src, size=size, limit=limit)
    earlier = await asyncio.to_thread(_earlier_fit, dest, size, limit)
    if earlier is not None:
        log.info(
            "%s: reusing the re-encode of an earlier attempt (%s)", label, human_size(earlier.size)
        )
        return UploadPlan(path=dest, size=earlier.size, limit=limit, fit=earlier)
    log.info("%s: %s is over the %s limit; re-encoding", label, human_size(size), human_size(limit))
    if on_encode is not None:
        started = on_encode()
        if asyncio.iscoroutine(started) or isinstance(started, asyncio.Future):
            await started
    try:
        fit = await fit_to_size(src, dest, limit, time_limit=time_limit)
    except EncodeError as exc:
        log.warning("%s: cannot fit %s in %s: %s", label, human_size(size), human_size(limit), exc)
        return UploadPlan(path=None, size=size, limit=limit, why_not=exc.reason)
    log.info(
        "%s: re-encoded %s -> %s in %.1f s (%d tries)",
        label,
        human_size(size),
        human_size(fit.size),
        fit.seconds,
        fit.attempts,
    )
    return UploadPlan(path=fit.path, size=fit.size, limit=limit, fit=fit)


def _earlier_fit(dest: Path, source_size: int, limit: int) -> FitResult | None:
    """The finished re-encode at `dest`, if there is one within `limit` (a partial one never
    is: tries write to `.part` and are renamed only when complete)."""
    try:
        size, source = _inspect(dest)
    except (EncodeError, av.error.FFmpegError, OSError):
        return None
    if size > limit:
        return None
    return FitResult(
        path=dest,
        size=size,
        limit=limit,
        source_size=source_size,
        duration=source.duration,
        video_bitrate=source.video_bitrate or 0,
        audio=source.audio,
        attempts=0,  # none this time
        seconds=0.0,
    )


def human_size(size: int) -> str:
    """10 MB for 10 MiB, 9.6 MB for a bit less: the way Discord itself states its limits."""
    mb = size / (1024 * 1024)
    if mb >= 1 and abs(mb - round(mb)) < 0.05:
        return f"{round(mb)} MB"
    if mb < 1:
        return f"{size / 1024:.0f} KB"
    return f"{mb:.1f} MB"
