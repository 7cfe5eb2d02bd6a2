"""Placeholder edits under Discord's rate limit: edits per job and 429s seen.

    .venv/bin/python bench/edits.py [--jobs 10] [--seconds 20]

The emulator enforces 5 edits per 5 s per interaction token on `@original` (as observed in
the wild); the bot runs with its production edit interval (5 s) and polling. Goal: at most one
progress edit per 5 s per job and no 429 at all.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import dispatch_many, rig, until

ORIGINAL = "PATCH /webhooks/{application_id}/{interaction_token}/messages/@original"


async def run(jobs: int = 10, seconds: float = 20.0) -> dict[str, float]:
    async with rig({"SEGMIND_MAX_RPM": "600"}, processing_seconds=seconds) as r:
        r.emu.set_rate_limit(ORIGINAL, limit=5, window=5.0)
        handles = await dispatch_many(r.emu, jobs, "edits")
        tokens = {h.token for h in handles}

        def finals() -> int:
            return sum(
                1
                for q in r.emu.timeline
                if q.params.get("interaction_token") in tokens and q.method == "PATCH" and q.files
            )

        await until(lambda: finals() >= jobs, seconds * 4 + 60, "every video")
        per_job, worst_window = [], 0
        for token in tokens:
            edits = sorted(
                q.received_at
                for q in r.emu.timeline
                if q.params.get("interaction_token") == token and q.method == "PATCH"
            )
            progress = edits[:-1]  # the last one is the video itself
            span = edits[-1] - edits[0] if len(edits) > 1 else 1.0
            per_job.append(len(progress) / span * 5.0)
            for i, at in enumerate(progress):
                worst_window = max(worst_window, sum(1 for t in progress[i:] if t < at + 5.0))
        return {
            "jobs": jobs,
            "edits_per_job": sum(
                1
                for q in r.emu.timeline
                if q.params.get("interaction_token") in tokens and q.method == "PATCH"
            )
            / jobs,
            "per_5s": max(per_job),
            "worst_window": worst_window,
            "rate_limited": len(r.emu.rate_limited),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    x = asyncio.run(run(args.jobs, args.seconds))
    print(
        f"{x['jobs']:.0f} jobs of {args.seconds:.0f} s: {x['edits_per_job']:.1f} edits per job, "
        f"progress edits per 5 s at most {x['per_5s']:.2f} on average and {x['worst_window']:.0f} "
        f"in any 5-s window; 429s: {x['rate_limited']:.0f} (goal <= 1 per 5 s, 0)"
    )


if __name__ == "__main__":
    main()
