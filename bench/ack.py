"""Acknowledgement under a burst: 200 `/veo` at once, time from INTERACTION_CREATE to the defer.

    .venv/bin/python bench/ack.py [--count 200]

The real bot (`python -m bot`) against the emulator and the fake; the emulator records when it
wrote each INTERACTION_CREATE and when the callback arrived (`handle.defer_latency`). Goal: p99
at most 50 ms (Discord allows 3 s).

200 different members fire at once (one member's 200 would mostly test the one-at-a-time
refusal). The headline figure runs the emulator without OpenAPI validation: validating every
request costs the emulator about a millisecond each in this same process, and during a burst
that queueing lands in the latencies it records — the emulator's cost, not the bot's. The
figure with validation on is printed as well.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import percentile, rig, until


async def burst(count: int = 200, *, validate: bool = False) -> dict[str, float]:
    # Long generations: the burst measures acknowledgement, not the rest of the job.
    async with rig({"SEGMIND_MAX_RPM": "10000"}, processing_seconds=600, validate=validate) as r:
        members = [r.emu.add_user(f"burst{i}") for i in range(count)]
        for member in members:
            r.emu.guild.add_member(member)
        handles = await asyncio.gather(
            *(
                r.emu.dispatch_slash_command("veo", {"prompt": f"burst {i}"}, user=member)
                for i, member in enumerate(members)
            )
        )
        # Polled, not awaited per handle: 200 waiters on the emulator's one condition would
        # slow the emulator itself and inflate the latencies it records.
        await until(lambda: all(h.callback_at is not None for h in handles), 30, "the defers")
        latencies = [1000 * h.defer_latency for h in handles if h.defer_latency is not None]
        return {
            "count": len(latencies),
            "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99),
            "max_ms": max(latencies),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    for validate in (False, True):
        result = asyncio.run(burst(args.count, validate=validate))
        print(
            f"{result['count']:.0f} /veo at once (spec validation {'on' if validate else 'off'}):"
            f" defer latency p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms,"
            f" max {result['max_ms']:.1f} ms (goal p99 <= 50 ms)"
        )


if __name__ == "__main__":
    main()
