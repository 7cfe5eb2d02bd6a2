"""Delivery: from Segmind's COMPLETED to the upload starting, and memory while 10 videos of
8 MiB are delivered at once (attached, no re-encode: they fit the 10 MiB limit).

    .venv/bin/python bench/delivery.py [--videos 10] [--mb 8]

Times come from the fake (when the bot's poll saw COMPLETED, when its download began and ended)
and the emulator (when the upload request arrived), one clock; each job's own download time is
subtracted from its own COMPLETED -> upload interval (median and worst over the jobs). RSS of
the bot is sampled every 5 ms from /proc.
Goals: <= 200 ms besides the download; peak RSS growth <= 1.2 x the bytes in flight.

The same run is repeated, alternating, with the bare peer of `bench/bare_bot.py deliver` (it
submits, polls, downloads to a file and attaches it, nothing else) against the same kind of
fake and emulator: its "besides the download" time is the harness's own copying (the fake
serving, the emulator receiving and parsing the multipart upload, discord.py building it), so
bot minus peer is what the bot itself adds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import dispatch_many, memory_kib, rig, until
from harness.bot_process import db_rows

FAST_POLLS = {"SEGMIND_MAX_RPM": "10000", "VEO_POLL_FLOOR": "0.05", "VEO_POLL_CEILING": "0.2"}


async def run(videos: int = 10, mb: float = 8, *, peer: bool = False) -> dict[str, float]:
    async with rig(FAST_POLLS, processing_seconds=4.0, peer="deliver" if peer else None) as r:
        samples: list[tuple[float, int]] = []
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                samples.append((time.monotonic(), memory_kib(r.pid)))
                await asyncio.sleep(0.005)

        sampler = asyncio.create_task(sample())
        handles = await dispatch_many(r.emu, videos, f"[fake:bitrateMB={mb:g}] delivery")
        tokens = {h.token for h in handles}

        def uploads() -> list:  # type: ignore[type-arg]
            return [
                q
                for q in r.emu.timeline
                if q.params.get("interaction_token") in tokens and q.method == "PATCH" and q.files
            ]

        await until(lambda: len(uploads()) >= videos, 120, "every upload")
        stop.set()
        await sampler

        wall_to_mono = time.time() - time.monotonic()  # the emulator's clock is wall time
        jobs = {job.request_id: job for job in r.fake.jobs.values()}
        seen: dict[str, float] = {}
        started: dict[str, float] = {}
        downloaded: dict[str, float] = {}
        for q in r.fake.requests:
            rid = next((i for i in jobs if i in q.path), None)
            if rid is None:
                continue
            if q.route == "output" and q.finished is not None:
                started.setdefault(rid, q.at)
                downloaded.setdefault(rid, q.finished - q.at)
            elif q.status == 200 and q.at >= jobs[rid].finished_at:
                seen.setdefault(rid, q.at)
        # Each upload names its job (veo-<job id>.mp4); the bot's database maps that to
        # Segmind's request id, so every job is measured against its own download. The peer
        # names the request id itself.
        request_of = {} if peer else dict(db_rows(r.bot.workdir, "SELECT id, request_id FROM jobs"))
        overheads, totals = [], []
        for q in uploads():
            name = q.files[0].filename.removeprefix("veo-").removesuffix(".mp4")
            rid = name if peer else str(request_of[int(name)])
            total = (q.received_at - wall_to_mono) - seen[rid]
            totals.append(total)
            overheads.append(total - downloaded[rid])
        sizes = [q.files[0].size for q in uploads()]
        download = statistics.median(downloaded.values())
        to_download = [started[i] - seen[i] for i in seen if i in started]
        first_download = min(started.values())
        baseline = [kib for at, kib in samples if at <= first_download][-1]
        peak = max(kib for _, kib in samples)
        in_flight = sum(sizes)
        return {
            "videos": len(sizes),
            "total_ms": 1000 * statistics.median(totals),
            "total_max_ms": 1000 * max(totals),
            "download_ms": 1000 * download,
            "overhead_ms": 1000 * statistics.median(overheads),
            "overhead_max_ms": 1000 * max(overheads),
            "to_download_ms": 1000 * statistics.median(to_download),
            "rss_growth_mb": (peak - baseline) / 1024,
            "in_flight_mb": in_flight / 2**20,
            "ratio": (peak - baseline) * 1024 / in_flight,
        }


async def compare(videos: int = 10, mb: float = 8, rounds: int = 2) -> dict[str, float]:
    """Alternating bot / peer runs; medians over the rounds of each side's overhead."""
    bot: list[dict[str, float]] = []
    bare: list[dict[str, float]] = []
    for _ in range(rounds):
        bot.append(await run(videos, mb))
        bare.append(await run(videos, mb, peer=True))

    def med(side: list[dict[str, float]], key: str) -> float:
        return statistics.median(x[key] for x in side)

    return {
        **{key: med(bot, key) for key in bot[0]},
        "peer_overhead_ms": med(bare, "overhead_ms"),
        "peer_overhead_max_ms": med(bare, "overhead_max_ms"),
        "peer_rss_growth_mb": med(bare, "rss_growth_mb"),
        "own_ms": med(bot, "overhead_ms") - med(bare, "overhead_ms"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--videos", type=int, default=10)
    parser.add_argument("--mb", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="alternating bot/peer rounds")
    args = parser.parse_args()
    x = asyncio.run(compare(args.videos, args.mb, args.rounds))
    print(
        f"{x['videos']:.0f} videos at once: COMPLETED seen -> upload start median "
        f"{x['total_ms']:.0f} ms (max {x['total_max_ms']:.0f}); download median "
        f"{x['download_ms']:.0f} ms; besides its download {x['overhead_ms']:.0f} ms "
        f"(worst {x['overhead_max_ms']:.0f} ms) "
        f"(seen -> download start {x['to_download_ms']:.0f} ms) (goal <= 200 ms)"
    )
    print(
        f"peak RSS growth {x['rss_growth_mb']:.1f} MB for {x['in_flight_mb']:.1f} MB in flight "
        f"= {x['ratio']:.2f} x (goal <= 1.2 x)"
    )
    print(
        f"bare peer, same set-up: besides its download {x['peer_overhead_ms']:.0f} ms "
        f"(worst {x['peer_overhead_max_ms']:.0f} ms), peak RSS growth "
        f"{x['peer_rss_growth_mb']:.1f} MB -> the bot's own share: {x['own_ms']:.0f} ms "
        f"(medians of {args.rounds} alternating rounds)"
    )


if __name__ == "__main__":
    main()
