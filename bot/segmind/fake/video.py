"""Real, playable MP4 clips for the fake, rendered with PyAV, plus a `probe` helper for tests.

Clips are tiny (the short side is 144 px) so one renders in well under a second, and are cached on
disk per (aspect, duration, fps, audio, size) for the life of the process: every fake in a test run
shares them. The files live in a private temp directory that is removed at exit.
"""

from __future__ import annotations

import atexit
import math
import random
import shutil
import struct
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import av

from bot.media.encode import media_duration

# Even dimensions: yuv420p subsamples chroma by two in both directions.
FRAME_SIZES: dict[str, tuple[int, int]] = {
    "16:9": (256, 144),
    "4:3": (192, 144),
    "1:1": (144, 144),
    "3:4": (144, 192),
    "9:16": (144, 256),
}
SAMPLE_RATE = 48_000
AUDIO_FRAME_SAMPLES = 1024
# 375 Hz repeats every 128 samples at 48 kHz, so one precomputed AAC frame of samples loops
# seamlessly and the audio costs nothing to synthesise.
TONE_HZ = 375
MIB = 1024 * 1024
# A triangle wave over the legal luma range (16-235), twice as long as the widest frame, so any
# 256-pixel window of it is a smooth gradient and sliding the window animates it.
_RAMP = bytes(16 + (abs((x % 256) - 128) * 219) // 128 for x in range(2 * 256))


@dataclass(frozen=True)
class VideoSpec:
    """What to render. `big_mb` pads the file to that many MiB (see `_pad`)."""

    aspect: str
    duration: int
    fps: int
    audio: bool
    big_mb: float | None = None
    noise_mb: float | None = None

    @property
    def file_name(self) -> str:
        """A cache file name unique to this spec."""
        name = f"{self.aspect.replace(':', 'x')}-{self.duration}s-{self.fps}fps"
        name += "-audio" if self.audio else "-silent"
        if self.big_mb is not None:
            name += f"-{self.big_mb:g}MiB"
        if self.noise_mb is not None:
            name += f"-noise{self.noise_mb:g}MiB"
        return name + ".mp4"


_lock = threading.Lock()
_cache_dir: Path | None = None


def _dir() -> Path:
    global _cache_dir
    if _cache_dir is None:
        _cache_dir = Path(tempfile.mkdtemp(prefix="fake-segmind-"))
        atexit.register(shutil.rmtree, _cache_dir, True)
    return _cache_dir


def ensure_rendered(spec: VideoSpec) -> Path:
    """The path of the clip for `spec`, rendering it first if needed. Blocking; thread-safe.

    Call it from an executor: it encodes video. One lock serialises renders so two jobs with the
    same spec never write the same file at once (a render takes a fraction of a second).
    """
    with _lock:
        return _ensure_locked(spec)


def _ensure_locked(spec: VideoSpec) -> Path:
    path = _dir() / spec.file_name
    if path.exists():
        return path
    # Write beside and rename, so a crash never leaves a truncated clip under the real name.
    partial = path.with_suffix(".part")
    if spec.noise_mb is not None:
        _render_noise(spec, partial, round(spec.noise_mb * MIB))
    elif spec.big_mb is None:
        _render(spec, partial)
    else:
        base = _ensure_locked(VideoSpec(spec.aspect, spec.duration, spec.fps, spec.audio))
        _pad(base, partial, round(spec.big_mb * MIB))
    partial.replace(path)
    return path


# One audio frame of a quiet sine tone, reused for every frame of every clip.
_TONE = struct.pack(
    f"<{AUDIO_FRAME_SAMPLES}f",
    *(0.2 * math.sin(2 * math.pi * TONE_HZ * i / SAMPLE_RATE) for i in range(AUDIO_FRAME_SAMPLES)),
)


def _render(spec: VideoSpec, path: Path) -> None:
    width, height = FRAME_SIZES[spec.aspect]
    frame_count = spec.duration * spec.fps
    with av.open(str(path), "w", format="mp4") as out:
        # ultrafast keeps a 240-frame clip well under a second; quality is irrelevant here.
        video = _h264(out, spec.fps, width, height, {"preset": "ultrafast", "crf": "30"})
        audio = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono") if spec.audio else None
        frames = (_frame(index, width, height, spec.fps) for index in range(frame_count))
        _mux(out, video, audio, frames, spec.fps)


def _h264(out: Any, fps: int, width: int, height: int, options: dict[str, str]) -> Any:
    """The clip's video stream: H.264 in yuv420p, which every Discord client plays."""
    video = out.add_stream("libx264", rate=fps)
    video.width = width
    video.height = height
    video.pix_fmt = "yuv420p"
    video.options = options
    return video


def _mux(out: Any, video: Any, audio: Any, frames: Iterable[Any], fps: int) -> None:
    """Encode `frames` into `video`, with a tone on `audio` (when there is one) interleaved up
    to the end of each video frame so players stream it smoothly; then flush both."""
    audio_pts = 0
    for index, frame in enumerate(frames):
        for packet in video.encode(frame):
            out.mux(packet)
        while audio is not None and audio_pts < (index + 1) * SAMPLE_RATE // fps:
            chunk = av.AudioFrame(format="fltp", layout="mono", samples=AUDIO_FRAME_SAMPLES)
            chunk.planes[0].update(_TONE)
            chunk.sample_rate = SAMPLE_RATE
            chunk.pts = audio_pts
            chunk.time_base = Fraction(1, SAMPLE_RATE)
            audio_pts += AUDIO_FRAME_SAMPLES
            for packet in audio.encode(chunk):
                out.mux(packet)
    for packet in video.encode():
        out.mux(packet)
    if audio is not None:
        for packet in audio.encode():
            out.mux(packet)


def _frame(index: int, width: int, height: int, fps: int) -> Any:
    """A moving luma ramp with a bright square sweeping across, and a slowly shifting tint."""
    frame = av.VideoFrame(width, height, "yuv420p")
    luma, cb, cr = frame.planes
    stride = luma.line_size
    shift = (index * 4) % 256
    row = _RAMP[shift : shift + width] + bytes(stride - width)
    pixels = bytearray(row * height)
    side = height // 4
    left = (index * 3) % (width - side)
    top = (height - side) // 2
    for y in range(top, top + side):
        pixels[y * stride + left : y * stride + left + side] = b"\xeb" * side
    luma.update(bytes(pixels))
    phase = 2 * math.pi * index / (fps * 4)
    cb.update(bytes([128 + round(60 * math.sin(phase))]) * cb.buffer_size)
    cr.update(bytes([128 + round(60 * math.cos(phase))]) * cr.buffer_size)
    frame.pts = index
    return frame


def _render_noise(spec: VideoSpec, path: Path, total_bytes: int) -> None:
    """A clip of random pixels encoded at the bitrate that makes the file about `total_bytes`.

    Unlike `_pad`, every byte is picture: x264 cannot compress noise, so the video really is
    that big at its bitrate and only a lower bitrate makes it smaller — what re-encoding tests
    need. Frames are 2.5x the usual size (640x360 for 16:9) so the bitrate stays plausible.
    """
    base_w, base_h = FRAME_SIZES[spec.aspect]
    width, height = base_w * 5 // 2 // 2 * 2, base_h * 5 // 2 // 2 * 2
    audio_rate = 64_000 if spec.audio else 0
    video_rate = max(int(total_bytes * 8 / spec.duration) - audio_rate, 100_000)
    frame_count = spec.duration * spec.fps
    with av.open(str(path), "w", format="mp4") as out:
        rate = {"preset": "ultrafast", "maxrate": str(video_rate), "bufsize": str(video_rate)}
        video = _h264(out, spec.fps, width, height, rate)
        video.bit_rate = video_rate
        audio = None
        if spec.audio:
            audio = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
            audio.bit_rate = audio_rate
        # Seeded by the clip's own description: the same request renders the same bytes, so
        # tests that re-encode it behave the same on every run.
        noise = random.Random(f"{spec.aspect}-{spec.duration}-{spec.fps}-{total_bytes}")

        def frames() -> Iterator[Any]:
            for index in range(frame_count):
                frame = av.VideoFrame(width, height, "yuv420p")
                for plane in frame.planes:
                    plane.update(noise.randbytes(plane.buffer_size))
                frame.pts = index
                yield frame

        _mux(out, video, audio, frames(), spec.fps)


def _pad(base: Path, path: Path, total_bytes: int) -> None:
    """Copy `base` and append an ISO-BMFF `free` box so the file is `total_bytes` long.

    Players skip `free` boxes by definition, so the clip stays playable and the size is exact —
    what upload-limit tests need — without encoding megabytes of noise.
    """
    data = base.read_bytes()
    padding = max(total_bytes - len(data), 8)
    with path.open("wb") as out:
        out.write(data)
        out.write(struct.pack(">I4s", padding, b"free"))
        remaining = padding - 8
        block = bytes(MIB)
        while remaining > 0:
            out.write(block[: min(remaining, MIB)])
            remaining -= MIB


def probe(path: str | Path | IO[bytes]) -> dict[str, Any]:
    """Open a video with PyAV and describe it; decoding the first frame proves it is playable.

    Returns `duration` (seconds), `video_codec` (e.g. "h264"), `pix_fmt`, `width`, `height`,
    `fps`, `frames`, `audio` (bool) and `audio_codec` (or None). Raises `av.error.FFmpegError`
    (or ValueError when there is no video stream) for anything unplayable.
    """
    source = str(path) if isinstance(path, Path) else path
    with av.open(source, "r") as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        duration = media_duration(container, video)
        if duration is None:
            raise ValueError("the video has no duration")
        info: dict[str, Any] = {
            "duration": duration,
            "video_codec": video.codec_context.name,
            "pix_fmt": video.codec_context.pix_fmt,
            "width": video.codec_context.width,
            "height": video.codec_context.height,
            "fps": float(video.average_rate) if video.average_rate else None,
            "frames": video.frames,
            "audio": audio is not None,
            "audio_codec": audio.codec_context.name if audio is not None else None,
        }
        next(container.decode(video=0))
    return info
