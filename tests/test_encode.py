"""`bot.media.encode` on real files: sizes land under the limit, the result plays, failures
are clean."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from bot.media import encode
from bot.media.encode import (
    CannotFit,
    EncodeFailed,
    fit_to_size,
    human_size,
    plan_bitrates,
    plan_upload,
)
from bot.segmind.fake.video import VideoSpec, ensure_rendered, probe

MIB = 1024 * 1024


def _noise(tmp_path: Path, mb: float, *, audio: bool = True, duration: int = 4) -> Path:
    """A real high-bitrate clip (noise frames) copied into the test's own directory."""
    rendered = ensure_rendered(VideoSpec("16:9", duration, 24, audio, noise_mb=mb))
    return Path(shutil.copy(rendered, tmp_path / "job-1.mp4"))


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != "job-1.mp4")


async def test_a_noisy_clip_lands_under_the_limit_and_plays(tmp_path: Path) -> None:
    src = _noise(tmp_path, 2)
    assert src.stat().st_size > MIB
    before = probe(src)
    fractions: list[float] = []
    result = await fit_to_size(src, tmp_path / "job-1.fit.mp4", MIB, progress=fractions.append)

    assert result.size == (tmp_path / "job-1.fit.mp4").stat().st_size <= MIB
    assert result.attempts == 1
    # Not wastefully small either: the bitrate budget is actually used.
    assert result.size > 0.7 * MIB
    after = probe(result.path)
    assert after["video_codec"] == "h264"
    assert after["pix_fmt"] == "yuv420p"
    assert after["audio"] and after["audio_codec"] == "aac"
    assert (after["width"], after["height"]) == (before["width"], before["height"])
    assert abs(after["duration"] - before["duration"]) < 0.1
    assert after["frames"] == before["frames"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert _leftovers(tmp_path) == ["job-1.fit.mp4"]


async def test_silent_source_gives_silent_output(tmp_path: Path) -> None:
    src = _noise(tmp_path, 1, audio=False)
    result = await fit_to_size(src, tmp_path / "out.mp4", 600 * 1024)
    info = probe(result.path)
    assert not info["audio"]
    assert result.size <= 600 * 1024


async def test_an_overshoot_gets_a_second_smaller_try(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Aim the first try 40 % over budget: it must land over, the retry must correct it.
    monkeypatch.setattr(encode, "FIRST_TRY_MARGIN", 1.4)
    src = _noise(tmp_path, 2)
    result = await fit_to_size(src, tmp_path / "out.mp4", MIB)
    assert result.attempts == 2
    assert result.size <= MIB
    probe(result.path)


async def test_a_limit_too_small_to_watch_is_refused_without_encoding(tmp_path: Path) -> None:
    src = _noise(tmp_path, 1)
    with pytest.raises(CannotFit, match="watchable"):
        await fit_to_size(src, tmp_path / "out.mp4", 60 * 1024)
    assert _leftovers(tmp_path) == []


async def test_every_try_over_the_limit_is_cannot_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(encode, "FIRST_TRY_MARGIN", 3.0)
    src = _noise(tmp_path, 2)
    with pytest.raises(CannotFit, match="still left"):
        await fit_to_size(src, tmp_path / "out.mp4", MIB, attempts=1)
    assert _leftovers(tmp_path) == []


async def test_an_unreadable_file_fails_cleanly(tmp_path: Path) -> None:
    src = tmp_path / "job-1.mp4"
    src.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4000)
    with pytest.raises(EncodeFailed) as caught:
        await fit_to_size(src, tmp_path / "out.mp4", 100 * 1024)
    assert caught.value.reason == "the video could not be re-encoded"
    assert _leftovers(tmp_path) == []


async def test_cancelling_stops_the_worker_and_removes_the_partial_file(tmp_path: Path) -> None:
    src = _noise(tmp_path, 2)
    started = asyncio.Event()
    task = asyncio.create_task(
        fit_to_size(src, tmp_path / "out.mp4", MIB, progress=lambda _: started.set())
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Waits for every worker thread to return: the encode stopped instead of running on.
    begun = time.monotonic()
    await asyncio.get_running_loop().shutdown_default_executor()
    assert time.monotonic() - begun < 1.0
    assert _leftovers(tmp_path) == []


async def test_the_event_loop_stays_responsive_while_encoding(tmp_path: Path) -> None:
    src = _noise(tmp_path, 2)
    encoding = asyncio.create_task(fit_to_size(src, tmp_path / "out.mp4", MIB))
    worst = 0.0
    while not encoding.done():
        before = time.perf_counter()
        await asyncio.sleep(0)  # a bare yield: any delay is the encode holding the loop
        worst = max(worst, time.perf_counter() - before)
    await encoding
    assert worst < 0.1, f"the loop stalled {worst * 1000:.0f} ms"


async def test_plan_upload_attaches_what_fits_without_encoding(tmp_path: Path) -> None:
    src = _noise(tmp_path, 1)
    calls: list[str] = []
    plan = await plan_upload(
        src, src.stat().st_size, 10 * MIB, tmp_path / "fit.mp4", on_encode=lambda: calls.append("")
    )
    assert plan.path == src and plan.fit is None and plan.note is None
    assert plan.link_reason(src.stat().st_size) is None
    assert calls == []


async def test_plan_upload_reencodes_and_says_so(tmp_path: Path) -> None:
    src = _noise(tmp_path, 2)
    calls: list[str] = []

    async def on_encode() -> None:
        calls.append("encoding")

    plan = await plan_upload(
        src, src.stat().st_size, MIB, tmp_path / "fit.mp4", on_encode=on_encode
    )
    assert calls == ["encoding"]
    assert plan.path == tmp_path / "fit.mp4" and plan.size <= MIB
    assert plan.note is not None
    assert "Re-encoded to fit this server's 1 MB upload limit" in plan.note


async def test_plan_upload_links_with_the_reason_when_nothing_fits(tmp_path: Path) -> None:
    src = _noise(tmp_path, 1)
    size = src.stat().st_size
    plan = await plan_upload(src, size, 50 * 1024, tmp_path / "fit.mp4")
    assert plan.path is None
    reason = plan.link_reason(size)
    assert reason is not None
    assert "over this server's 50 KB upload limit" in reason
    assert "watchable" in reason and "7 days" in reason
    assert _leftovers(tmp_path) == []


def test_bitrate_plan_leaves_room_for_audio_and_container() -> None:
    video, audio = plan_bitrates(8.0, 10 * MIB, audio=True)
    assert audio == 128_000
    total_bytes = (video + audio) * 8.0 / 8 + encode.CONTAINER_OVERHEAD
    assert 0.9 * 10 * MIB < total_bytes < 10 * MIB
    silent, none = plan_bitrates(8.0, 10 * MIB, audio=False)
    assert none == 0 and silent > video
    # A padded file whose picture is cheap is not inflated to the limit.
    capped, _ = plan_bitrates(8.0, 10 * MIB, audio=True, source_video_bitrate=300_000)
    assert capped == 300_000
    with pytest.raises(CannotFit):
        plan_bitrates(8.0, 100 * 1024, audio=True)


def test_sizes_read_like_discords_limits() -> None:
    assert human_size(10 * MIB) == "10 MB"
    assert human_size(50 * MIB) == "50 MB"
    assert human_size(int(9.6 * MIB)) == "9.6 MB"
    assert human_size(100 * 1024) == "100 KB"


# --- item 10: re-encoding is bounded, and a delivery retry reuses the encode ---------------


async def test_item10_an_encode_past_its_time_limit_stops_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    src = _noise(tmp_path, 2)
    begun = time.monotonic()
    with pytest.raises(EncodeFailed, match="took too long"):
        await fit_to_size(src, tmp_path / "out.mp4", MIB, time_limit=0.2)
    await asyncio.get_running_loop().shutdown_default_executor()  # the worker has returned
    assert time.monotonic() - begun < 2.0
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "bound", [{"max_pixels": 320 * 180}, {"max_frames": 48}], ids=["pixels", "frames"]
)
async def test_item10_a_video_past_the_pixel_or_frame_bound_is_not_encoded(
    tmp_path: Path, bound: dict[str, int]
) -> None:
    src = _noise(tmp_path, 2)  # 640x360, 4 s at 24 fps: 96 frames
    fractions: list[float] = []
    with pytest.raises(EncodeFailed, match="too large for the bot to re-encode"):
        await fit_to_size(src, tmp_path / "out.mp4", MIB, progress=fractions.append, **bound)
    assert fractions == []  # refused before the first frame
    assert _leftovers(tmp_path) == []


async def test_item10_a_delivery_retry_reuses_the_file_already_encoded(tmp_path: Path) -> None:
    src = _noise(tmp_path, 2)
    size = src.stat().st_size
    dest = tmp_path / "job-1.fit.mp4"  # where the output keeps it (`encode.encoded_path`)
    encodes: list[str] = []
    first = await plan_upload(src, size, MIB, dest, on_encode=lambda: encodes.append("x"))
    assert first.path == dest and first.fit is not None
    made = dest.stat().st_mtime_ns

    begun = time.monotonic()
    again = await plan_upload(src, size, MIB, dest, on_encode=lambda: encodes.append("x"))
    assert time.monotonic() - begun < 0.5
    assert encodes == ["x"]  # the member saw "Re-encoding" once
    assert again.path == dest and dest.stat().st_mtime_ns == made
    assert again.size == first.size and again.note == first.note

    # A smaller limit than the kept file is a new encode, not a file over the limit.
    smaller = await plan_upload(src, size, first.size - 1, dest, on_encode=lambda: None)
    assert smaller.path is None or smaller.size <= first.size - 1
