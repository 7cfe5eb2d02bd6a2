"""1,000 jobs waiting at Segmind: the bot's CPU and peak RSS, next to the official SDK's
`job.wait()` in one thread per job for the same number of jobs.

    .venv/bin/python bench/inflight.py [--jobs 1000] [--window 30] [--database-url URL|postgres]

`--database-url` runs the bot on that store (`postgres`: a throw-away PostgreSQL 15 cluster of
`harness/postgres.py`); the default is the bot's own SQLite file.

The bot runs with production polling (2-20 s adaptive) and SEGMIND_MAX_RPM=3000 so the jobs get
submitted in well under a minute; per-user limits and VEO_MAX_CONCURRENT_JOBS are lifted. Once
all jobs are at the fake (generation takes an hour there) and every placeholder shows
"Generating", CPU is averaged over `window` seconds. Goal: <= 5 % of one core and <= 200 MB peak
RSS. SEGMIND_MAX_RPM=3000 is 60 times Segmind's Pro budget: at 50/min the bot would poll (and
spend CPU) 60 times less.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    ROOT,
    cpu_percent,
    dispatch_many,
    memory_kib,
    rig,
    until,
)
from harness.bot_process import FAKE_KEY


async def bot_side(jobs: int, window: float, database_url: str | None = None) -> dict[str, float]:
    env = {"SEGMIND_MAX_RPM": "3000", "VEO_MAX_CONCURRENT_JOBS": str(jobs + 10)}
    if database_url:
        env["VEO_DATABASE_URL"] = database_url
    async with rig(env, processing_seconds=3600) as r:
        started = time.monotonic()
        await dispatch_many(r.emu, jobs, "waiting", batch=100)
        await until(lambda: len(r.fake.submits) >= jobs, 300, "every job at Segmind", step=0.2)
        fill = time.monotonic() - started
        # Steady state: every job has had its first status poll and shows "Generating" (the
        # text then stays put: Discord counts the elapsed time itself).
        await until(
            lambda: _generating(r.emu) >= jobs, 300, "every placeholder at Generating", step=0.5
        )
        await asyncio.sleep(5)
        cpu = await cpu_percent(r.pid, window)
        return {
            "cpu_pct": cpu,
            "peak_rss_mb": memory_kib(r.pid, "VmHWM") / 1024,
            "rss_mb": memory_kib(r.pid) / 1024,
            "fill_s": fill,
            "polls_per_s": _status_rate(r.fake, window),
        }


def _generating(emu: object) -> int:
    return sum(
        1
        for q in emu.timeline  # type: ignore[attr-defined]
        if q.method == "PATCH" and "Generating" in str((q.json or {}).get("content", ""))
    )


def _status_rate(fake: object, window: float) -> float:
    now = time.monotonic()
    recent = [q for q in fake.requests if q.route == "status" and q.at > now - window]  # type: ignore[attr-defined]
    return len(recent) / window


async def sdk_side(jobs: int, window: float) -> dict[str, float]:
    from bot.segmind.fake import FakeSegmind

    async with FakeSegmind(api_key=FAKE_KEY, queue_seconds=0.1, processing_seconds=3600) as fake:
        fake.credits = 1e9
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "bench" / "sdk_peer.py"),
            fake.base_url,
            FAKE_KEY,
            str(jobs),
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 300)
            assert line.strip() == b"ready", line
            await asyncio.sleep(5)
            cpu = await cpu_percent(proc.pid, window)
            return {
                "cpu_pct": cpu,
                "peak_rss_mb": memory_kib(proc.pid, "VmHWM") / 1024,
                "polls_per_s": _status_rate(fake, window),
            }
        finally:
            proc.kill()
            await proc.wait()


async def run(jobs: int = 1000, window: float = 30.0) -> dict[str, dict[str, float]]:
    return {"bot": await bot_side(jobs, window), "sdk": await sdk_side(jobs, window)}


async def bot_only(jobs: int, window: float, database_url: str) -> dict[str, float]:
    if database_url != "postgres":
        return await bot_side(jobs, window, database_url)
    from harness.postgres import PostgresServer

    server = PostgresServer.start()
    try:
        return await bot_side(jobs, window, server.url(await server.create_database()))
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument(
        "--database-url", help="the bot's VEO_DATABASE_URL, or `postgres` (no SDK side then)"
    )
    args = parser.parse_args()
    if args.database_url:
        bot = asyncio.run(bot_only(args.jobs, args.window, args.database_url))
        where = "PostgreSQL" if "postgres" in args.database_url else args.database_url
        print(
            f"{args.jobs} jobs in flight on {where}, runner CPU over {args.window:.0f} s: "
            f"{bot['cpu_pct']:.1f} % of a core, peak RSS {bot['peak_rss_mb']:.0f} MB, "
            f"{bot['polls_per_s']:.1f} polls/s"
        )
        return
    result = asyncio.run(run(args.jobs, args.window))
    bot, sdk = result["bot"], result["sdk"]
    print(f"{args.jobs} jobs in flight, CPU over {args.window:.0f} s:")
    print(
        f"  bot: {bot['cpu_pct']:.1f} % of a core, peak RSS {bot['peak_rss_mb']:.0f} MB, "
        f"{bot['polls_per_s']:.1f} polls/s (goal <= 5 %, <= 200 MB)"
    )
    print(
        f"  SDK job.wait() threads: {sdk['cpu_pct']:.1f} % of a core, peak RSS "
        f"{sdk['peak_rss_mb']:.0f} MB, {sdk['polls_per_s']:.1f} polls/s"
    )
    print(f"  ratio bot/SDK CPU: {bot['cpu_pct'] / max(sdk['cpu_pct'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
