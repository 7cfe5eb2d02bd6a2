"""The performance suite, by hand: `.venv/bin/python -m bench` (about three minutes).

Runs every bench against the real bot process (`python -m bot`), the Discord emulator and the
Segmind fake, then prints one table; `--with-sims` adds the simulated polling, store and
reconciliation benches (bench/polling.py, quota.py, reconcile.py) as they print themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import ack, delivery, edits, inflight


def main() -> None:
    parser = argparse.ArgumentParser(description="Veo for Discord performance suite")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs in flight (default 1000)")
    parser.add_argument("--window", type=float, default=30.0, help="CPU window, s")
    parser.add_argument("--with-sims", action="store_true", help="also polling, quota, reconcile")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}", flush=True)
    rows: list[tuple[str, str, str, str]] = []

    c = asyncio.run(ack.compare(200, rounds=3))
    b, bare = ack.summary(c.bot), ack.summary(c.bare)
    rows.append(
        (
            "burst: 200 members /veo at once, defer latency",
            f"p50 {b['p50_ms']:.0f} ms, p99 {b['p99_ms']:.0f} ms",
            f"p99 / bare peer's <= {ack.GOAL_RATIO}",
            _verdict(c.ratio <= ack.GOAL_RATIO),
        )
    )
    rows.append(
        (
            "  peer: bare discord.py bot that only defers (alternating runs)",
            f"p50 {bare['p50_ms']:.0f} ms, p99 {bare['p99_ms']:.0f} ms",
            "ratio of p99s bot/bare",
            f"{c.ratio:.2f}",
        )
    )
    v = asyncio.run(ack.burst(200, validate=True))
    rows.append(
        (
            "  same, emulator validating every request",
            f"p50 {v['p50_ms']:.0f} ms, p99 {v['p99_ms']:.0f} ms",
            "(harness cost)",
            "",
        )
    )
    f = asyncio.run(inflight.run(args.jobs, args.window))
    bot, sdk = f["bot"], f["sdk"]
    rows.append(
        (
            f"in flight: {args.jobs} jobs, bot CPU / peak RSS",
            f"{bot['cpu_pct']:.1f} % / {bot['peak_rss_mb']:.0f} MB "
            f"({bot['polls_per_s']:.0f} polls/s)",
            "<= 5 %, <= 200 MB",
            _verdict(bot["cpu_pct"] <= 5 and bot["peak_rss_mb"] <= 200),
        )
    )
    rows.append(
        (
            f"  peer: SDK job.wait() x {args.jobs} threads",
            f"{sdk['cpu_pct']:.1f} % / {sdk['peak_rss_mb']:.0f} MB "
            f"({sdk['polls_per_s']:.0f} polls/s)",
            "ratio bot/SDK CPU",
            f"{bot['cpu_pct'] / max(sdk['cpu_pct'], 1e-9):.2f}",
        )
    )
    one = asyncio.run(delivery.compare(1, 8, rounds=1))
    many = asyncio.run(delivery.compare(10, 8, rounds=1))
    rows.append(
        (
            "delivery: COMPLETED -> upload start - download",
            f"1 video {one['overhead_ms']:.0f} ms; 10 at once {many['overhead_ms']:.0f} ms",
            "<= 200 ms",
            _verdict(one["overhead_ms"] <= 200 and many["overhead_ms"] <= 200),
        )
    )
    rows.append(
        (
            "  peer: bare bot, same bytes through the same fake/emulator",
            f"1 video {one['peer_overhead_ms']:.0f} ms; 10 at once "
            f"{many['peer_overhead_ms']:.0f} ms",
            "bot - peer (bot's own)",
            f"{one['own_ms']:.0f} / {many['own_ms']:.0f} ms",
        )
    )
    rows.append(
        (
            "delivery: peak RSS growth, 10 x 8 MiB at once",
            f"{many['rss_growth_mb']:.1f} MB for {many['in_flight_mb']:.0f} MB "
            f"({many['ratio']:.2f} x)",
            "<= 1.2 x",
            _verdict(many["ratio"] <= 1.2),
        )
    )
    e = asyncio.run(edits.run(10, 20.0))
    rows.append(
        (
            "edits: 10 jobs of 20 s, 5/5 s limit on",
            f"{e['edits_per_job']:.1f} per job, max {e['worst_window']:.0f} per 5 s, "
            f"{e['rate_limited']:.0f} x 429",
            "<= 1 per 5 s, 0",
            _verdict(e["worst_window"] <= 1 and e["rate_limited"] == 0),
        )
    )
    _table(rows)
    if args.with_sims:
        here = Path(__file__).resolve().parent
        for script in ("polling.py", "quota.py", "reconcile.py"):
            print(f"\n$ {script}", flush=True)
            subprocess.run([sys.executable, str(here / script)], check=False)  # noqa: S603


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _table(rows: list[tuple[str, str, str, str]]) -> None:
    head = ("bench", "measured", "goal", "")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"
    print("\n" + line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


if __name__ == "__main__":
    main()
