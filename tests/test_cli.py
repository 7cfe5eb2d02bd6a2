"""`python -m bot generate` and `python -m bot check` against the fake Segmind over loopback."""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path

import pytest

from bot.__main__ import main as bot_main
from bot.cli import (
    ProgressLine,
    build_generate_parser,
    check_command,
    generate_command,
    main_check,
    main_generate,
)
from bot.config import Settings, load_settings
from bot.params import VeoParams
from bot.segmind.client import SegmindClient, SubmittedJob
from bot.segmind.fake import FakeSegmind, Fault
from tests.conftest import StartFake

KEY = "cli-test-key-0123456789"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No .env, no real key: each test says what it wants."""
    monkeypatch.chdir(tmp_path)
    for name in ("SEGMIND_API_KEY", "SEGMIND_BASE_URL", "DISCORD_TOKEN", "SEGMIND_MAX_RPM"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def fake(start_fake: StartFake) -> FakeSegmind:
    return await start_fake(api_key=KEY, queue_seconds=0.1, processing_seconds=0.3)


def settings_for(fake: FakeSegmind, **overrides: object) -> Settings:
    # A fast schedule for a fake that finishes in 0.4 s.
    values: dict[str, object] = {
        "segmind_api_key": KEY,
        "segmind_base_url": fake.base_url,
        "veo_poll_floor": 0.05,
        "veo_poll_ceiling": 0.2,
    }
    values.update(overrides)
    return load_settings(env_file=None, **values)


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


async def test_generate_against_fake(fake: FakeSegmind, tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    args = build_generate_parser().parse_args(
        [
            "a lighthouse at night",
            "--aspect",
            "9:16",
            "--duration",
            "4",
            "--audio",
            "--out",
            "v.mp4",
        ]
    )
    code = await generate_command(args, settings=settings_for(fake), out=out, err=err)
    assert code == 0, err.getvalue()
    request_id = next(iter(fake.jobs))
    assert f"request id: {request_id}" in out.getvalue()
    assert "cost: $0.60" in out.getvalue()
    assert (tmp_path / "v.mp4").stat().st_size > 1000
    assert fake.submits[0]["aspect_ratio"] == "9:16"
    assert fake.submits[0]["duration"] == 4
    assert fake.submits[0]["generate_audio"] is True
    # Not a TTY: plain lines, one per state, ending with COMPLETED.
    states = [line.split()[0] for line in err.getvalue().splitlines()]
    assert states[0] == "SUBMITTING" and states[-1] == "COMPLETED"
    assert "\r" not in err.getvalue()
    assert KEY not in out.getvalue() + err.getvalue()


async def test_generate_failure_is_one_line(fake: FakeSegmind) -> None:
    out, err = io.StringIO(), io.StringIO()
    args = build_generate_parser().parse_args(["nope [fake:block]"])
    code = await generate_command(args, settings=settings_for(fake), out=out, err=err)
    assert code == 1
    last = err.getvalue().splitlines()[-1]
    assert last.startswith("error: ") and "safety filter" in last
    assert "request" in last
    assert out.getvalue() == ""


async def test_generate_uncertain_submit_says_not_resent(fake: FakeSegmind) -> None:
    fake.inject("submit", Fault(drop=True))
    err = io.StringIO()
    args = build_generate_parser().parse_args(["a cat"])
    code = await generate_command(args, settings=settings_for(fake), out=io.StringIO(), err=err)
    assert code == 1
    assert "not sent again" in err.getvalue().splitlines()[-1]
    assert len([r for r in fake.requests if r.method == "POST"]) == 1


async def test_generate_bad_param_is_usage_error(fake: FakeSegmind) -> None:
    err = io.StringIO()
    args = build_generate_parser().parse_args(["a cat", "--image-url", "ftp://x/y.png"])
    code = await generate_command(args, settings=settings_for(fake), out=io.StringIO(), err=err)
    assert code == 2
    assert "image_url" in one_line(err.getvalue())
    assert fake.requests == []


def test_main_generate_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_generate(["a cat", "--duration", "5"]) == 2
    assert "--duration" in one_line(capsys.readouterr().err)


def test_main_generate_bad_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SEGMIND_MAX_RPM", "0")
    assert main_generate(["a cat"]) == 2
    assert one_line(capsys.readouterr().err).startswith("error: setting SEGMIND_MAX_RPM")


def test_main_generate_demo_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_generate(["a demo fox", "--out", "demo.mp4"]) == 0
    captured = capsys.readouterr()
    assert "demo mode" in captured.err
    assert "saved: demo.mp4" in captured.out
    assert (tmp_path / "demo.mp4").stat().st_size > 1000


async def test_check_reports_credits(fake: FakeSegmind) -> None:
    fake.credits = 42.0
    out, err = io.StringIO(), io.StringIO()
    assert await check_command(settings=settings_for(fake), out=out, err=err) == 0
    assert "credits $42.00" in out.getvalue()
    assert "DISCORD_TOKEN is not set" in out.getvalue()
    assert err.getvalue() == ""


async def test_check_wrong_key_is_one_line(fake: FakeSegmind) -> None:
    out, err = io.StringIO(), io.StringIO()
    settings = settings_for(fake, segmind_api_key="not-the-key-at-all")
    assert await check_command(settings=settings, out=out, err=err) == 1
    line = one_line(err.getvalue())
    assert "key was refused" in line
    assert "not-the-key-at-all" not in line


def test_main_check_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_check([]) == 0
    assert "DEMO MODE" in capsys.readouterr().out


def test_main_check_bad_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SEGMIND_MAX_RPM", "zero")
    assert main_check([]) == 2
    assert one_line(capsys.readouterr().err).startswith("error: setting SEGMIND_MAX_RPM")


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_tty_and_plain() -> None:
    tty = Tty()
    line = ProgressLine(tty, typical=80.0)
    line.update("QUEUED")
    line.update("PROCESSING")
    line.update("COMPLETED")
    line.finish()
    text = tty.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n")
    assert "usually ~80s" in text
    assert "[" + "#" * ProgressLine.WIDTH + "]" in text  # full only once COMPLETED

    plain = io.StringIO()
    line = ProgressLine(plain, typical=80.0)
    for state in ("QUEUED", "QUEUED", "PROCESSING", "COMPLETED"):
        line.update(state)
    assert [s.split()[0] for s in plain.getvalue().splitlines()] == [
        "QUEUED",
        "PROCESSING",
        "COMPLETED",
    ]


async def test_item11_output_name_never_takes_segmind_text(
    fake: FakeSegmind, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request id such as `/../../x` must not choose where the video is written."""
    real_submit = SegmindClient.submit

    async def hostile_submit(self: SegmindClient, params: VeoParams) -> SubmittedJob:
        job = await real_submit(self, params)
        return dataclasses.replace(job, request_id="/../../x")

    monkeypatch.setattr(SegmindClient, "submit", hostile_submit)
    escaped = tmp_path.parent / "x.mp4"  # where `veo-/../../x.mp4` lands
    out, err = io.StringIO(), io.StringIO()
    args = build_generate_parser().parse_args(["a lighthouse"])
    try:
        code = await generate_command(args, settings=settings_for(fake), out=out, err=err)
        assert code == 0, err.getvalue()
        assert not escaped.exists()
        saved = [tmp_path / name for name in os.listdir(tmp_path) if name.endswith(".mp4")]
        assert len(saved) == 1 and saved[0].stat().st_size > 1000
        assert "x" not in saved[0].stem.removeprefix("veo-")
        assert f"saved: {saved[0]}" in out.getvalue()
    finally:
        escaped.unlink(missing_ok=True)


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_item11_help_lists_every_subcommand_and_exits_0(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bot_main([flag]) == 0
    text = capsys.readouterr().out
    for command in ("run", "generate", "check", "fake-segmind"):
        assert f"  {command} " in text
