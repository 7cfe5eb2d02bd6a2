"""What every bench needs: the emulator and the Segmind fake in this process, the real bot as a
subprocess (`python -m bot`, via the e2e harness), and CPU/RSS read from /proc (no psutil)."""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere, as a script or with `python -m bench`

from bot.segmind.fake import FakeSegmind  # noqa: E402  (after the path tweak)
from harness.bot_process import FAKE_KEY, BotProcess  # noqa: E402
from harness.discord_emulator import DiscordEmulator  # noqa: E402

# The emulator logs every request the bot abandons while it shuts down; not a bench result.
logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Production values for what the e2e harness speeds up, and no per-user caps.
PRODUCTION = {
    "VEO_EDIT_INTERVAL": "5.0",
    "VEO_POLL_FLOOR": "1.5",
    "VEO_POLL_CEILING": "20.0",
    "VEO_USER_LIMIT": "100000",
    "VEO_USER_CONCURRENCY": "100000",
    "VEO_MAX_CONCURRENT_JOBS": "2000",
}


@dataclass
class Rig:
    emu: DiscordEmulator
    fake: FakeSegmind
    bot: BotProcess

    @property
    def pid(self) -> int:
        assert self.bot.proc is not None
        return self.bot.proc.pid


@asynccontextmanager
async def rig(
    env: dict[str, str] | None = None,
    *,
    queue_seconds: float = 0.1,
    processing_seconds: float = 1.0,
    validate: bool = True,
    peer: str | None = None,
) -> AsyncIterator[Rig]:
    """Emulator + fake here, the bot as a subprocess in a throw-away directory. With `peer`
    ("ack" or "deliver"), the bare discord.py bot of `bench/bare_bot.py` runs instead, in
    the same set-up, so a bench can tell the bot's own cost from the harness's."""
    with tempfile.TemporaryDirectory(prefix="veo-bench-") as tmp:
        async with (
            DiscordEmulator(validate=validate) as emu,
            FakeSegmind(
                api_key=FAKE_KEY, queue_seconds=queue_seconds, processing_seconds=processing_seconds
            ) as fake,
        ):
            fake.credits = 1e9  # thousands of jobs; the default balance buys about 160
            command = ("-m", "bot") if peer is None else (str(ROOT / "bench" / "bare_bot.py"), peer)
            bot = BotProcess(emu, fake, Path(tmp), {**PRODUCTION, **(env or {})}, command)
            await bot.start()
            await emu.wait_for_command("veo")
            try:
                yield Rig(emu, fake, bot)
            finally:
                await bot.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_kib(pid: int, key: str = "VmRSS") -> int:
    """A /proc/<pid>/status line in KiB: VmRSS (now) or VmHWM (peak so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


async def cpu_percent(pid: int, seconds: float) -> float:
    """Share of one core the process used over the next `seconds`."""
    before_cpu, before = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return 100 * (cpu_seconds(pid) - before_cpu) / (time.monotonic() - before)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


async def until(predicate: object, timeout: float, what: str, step: float = 0.05) -> None:  # noqa: ASYNC109
    """Poll a cheap condition (a bench may; tests may not)."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(step)


async def dispatch_many(emu: DiscordEmulator, count: int, prompt: str, batch: int = 200) -> list:  # type: ignore[type-arg]
    """`count` /veo interactions, `batch` at once, each batch acknowledged before the next."""
    handles = []
    for start in range(0, count, batch):
        size = min(batch, count - start)
        wave = await asyncio.gather(
            *(
                emu.dispatch_slash_command(
                    "veo", {"prompt": f"{prompt} #{start + i}", "duration": 8}, user=emu.member
                )
                for i in range(size)
            )
        )
        await asyncio.gather(*(h.wait_for_callback(timeout=30) for h in wave))
        handles.extend(wave)
    return handles
