"""Runs the bot exactly as production does — `python -m bot` in its own process — against the
Discord emulator and the Segmind fake, both living in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bot.segmind.fake import FakeSegmind
from harness.discord_emulator import DiscordEmulator

ROOT = Path(__file__).resolve().parents[1]
FAKE_KEY = "e2e-segmind-key-0123456789"
STARTUP_TIMEOUT = 60.0
SETTLED = r"job \d+ (delivered|failed|expired|unknown|cancelled)\b"


class BotProcess:
    """One bot process; its log lines are collected so a test can wait on them."""

    def __init__(
        self,
        emu: DiscordEmulator,
        fake: FakeSegmind,
        workdir: Path,
        env: dict[str, str] | None = None,
        command: Sequence[str] = ("-m", "bot"),
    ) -> None:
        self.emu = emu
        self.command = tuple(command)  # after the interpreter; a bench runs its peers this way
        self.fake = fake
        self.workdir = workdir
        self.extra_env = env or {}
        self.lines: list[str] = []
        self.made = 0  # jobs a test has seen finish (see `settled`)
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._new_line = asyncio.Condition()
        self.log_path = workdir / "bot.log"

    def environment(self) -> dict[str, str]:
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DISCORD_", "SEGMIND_", "VEO_"))
        }
        return {
            **inherited,
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "DISCORD_TOKEN": self.emu.token,
            "DISCORD_API_BASE_URL": self.emu.api_base,
            "DISCORD_GATEWAY_URL": self.emu.gateway_url,
            "SEGMIND_BASE_URL": self.fake.base_url,
            "SEGMIND_API_KEY": FAKE_KEY,
            "SEGMIND_HISTORY_URL": self.fake.history_url,
            "SEGMIND_MAX_RPM": "6000",
            "VEO_DB_PATH": str(self.workdir / "veo.sqlite3"),
            "VEO_WORK_DIR": str(self.workdir / "work"),
            "VEO_EDIT_INTERVAL": "0.2",
            "VEO_POLL_FLOOR": "0.05",
            "VEO_POLL_CEILING": "0.2",
            # The emulator's CDN stands in for Discord's: its host must be allowed.
            "VEO_IMAGE_HOSTS": "127.0.0.1",
            # A killed bot's runner lease lapses soon, so a restart resumes its jobs quickly.
            "VEO_RUNNER_LEASE_SECONDS": "1.5",
            "VEO_QUEUE_POLL_SECONDS": "0.2",
            **self.extra_env,
        }

    async def start(self) -> None:
        await self.launch()
        await self.wait_for_log("logged in as", timeout=STARTUP_TIMEOUT)

    async def launch(self) -> None:
        """Start the process without waiting for it to reach Discord (see `start`)."""
        self.lines.clear()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *self.command,
            cwd=self.workdir,
            env=self.environment(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read(self.proc))

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        with self.log_path.open("a") as log:
            while line := await proc.stdout.readline():
                text = line.decode(errors="replace").rstrip()
                log.write(text + "\n")
                async with self._new_line:
                    self.lines.append(text)
                    self._new_line.notify_all()
        async with self._new_line:
            self._new_line.notify_all()

    async def wait_for_log(
        self,
        fragment: str,
        *,
        timeout: float = 30.0,  # noqa: ASYNC109
        count: int = 1,
        regex: bool = False,
    ) -> str:
        """Until the bot has logged `count` lines containing `fragment` (a regular expression
        when `regex`); returns the last of them."""

        def matches(line: str) -> bool:
            return bool(re.search(fragment, line)) if regex else fragment in line

        def found() -> str | None:
            matching = [line for line in self.lines if matches(line)]
            return matching[count - 1] if len(matching) >= count else None

        async def until() -> str:
            async with self._new_line:
                while (line := found()) is None:
                    if self.proc is not None and self.proc.returncode is not None:
                        raise AssertionError(
                            f"bot exited ({self.proc.returncode}) before logging {fragment!r}:\n"
                            + self.tail()
                        )
                    await self._new_line.wait()
                return line

        try:
            return await asyncio.wait_for(until(), timeout)
        except TimeoutError:
            raise AssertionError(f"bot never logged {fragment!r}:\n{self.tail()}") from None

    def tail(self, count: int = 40) -> str:
        return "\n".join(self.lines[-count:])

    async def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 20.0) -> int:  # noqa: ASYNC109
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        return code

    async def settled(self, count: int, *, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Until `count` jobs have been recorded as finished. The final message reaches Discord
        a moment before the job is recorded, so a test that starts the same member's next job
        (or reads usage) right after seeing it must wait for this first."""
        await self.wait_for_log(SETTLED, count=count, timeout=timeout, regex=True)

    async def kill(self) -> None:
        await self.stop(signal.SIGKILL)


def final_message_filter(emu: DiscordEmulator, interaction_token: str) -> Callable[..., bool]:
    """A timeline predicate: the bot's edit of this interaction's placeholder with a video."""

    def predicate(record: object) -> bool:
        params = getattr(record, "params", {})
        return bool(
            params.get("interaction_token") == interaction_token
            and getattr(record, "method", "") == "PATCH"
            and getattr(record, "files", None)
        )

    return predicate


# --- restart / exactly-once helpers (tests/e2e/test_restart.py, test_buttons.py, bench) -------


async def wait_until(
    predicate: Callable[[], object],
    *,
    timeout: float = 30.0,  # noqa: ASYNC109
    what: str = "a condition",
) -> None:
    """For state the test process owns but cannot subscribe to (the fake's request log):
    re-check every 10 ms until true. Not a sleep that hides a race: it waits for the fact."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def video_uploads(emu: DiscordEmulator, job_id: int) -> list[object]:
    """Every request Discord accepted that carried this job's video (edits and posts)."""
    name = f"veo-{job_id}.mp4"
    return [r for r in emu.timeline if r.status == 200 and any(f.filename == name for f in r.files)]


def messages_with_video(emu: DiscordEmulator, job_id: int) -> list[object]:
    """Live messages showing this job's video: what a member sees in Discord."""
    name = f"veo-{job_id}.mp4"
    return [
        m
        for m in emu.messages.values()
        if not m.deleted and any(a.filename == name for a in m.attachments)
    ]


def db_rows(workdir: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Read the bot's database (WAL, so safe while it runs)."""
    import sqlite3

    conn = sqlite3.connect(workdir / "veo.sqlite3")
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def db_write(workdir: Path, sql: str, params: tuple[object, ...] = ()) -> None:
    """Change the bot's database behind its back (a row from an older version, say)."""
    import sqlite3

    conn = sqlite3.connect(workdir / "veo.sqlite3")
    try:
        with conn:
            conn.execute(sql, params)
    finally:
        conn.close()


def job_states(workdir: Path) -> dict[int, str]:
    return {int(i): str(s) for i, s in db_rows(workdir, "SELECT id, state FROM jobs")}  # type: ignore[call-overload]


def ledger(workdir: Path) -> dict[int, str]:
    return {
        int(i): str(s)  # type: ignore[call-overload]
        for i, s in db_rows(workdir, "SELECT job_id, status FROM quota_ledger")
    }
