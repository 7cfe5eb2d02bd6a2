"""Kill the real bot at random moments and check that no job is lost, doubled or mis-billed.

    .venv/bin/python -m bench.kill_loop [--runs 20] [--seed 1] [--jobs 3]

Each run: a fresh emulator + Segmind fake + database; `--jobs` members ask for a video at once
with VEO_MAX_CONCURRENT_JOBS=1 (so some wait in the bot's queue); after a random delay the bot
gets SIGKILL — during the queue, the submit, generation, download or upload, whatever the dice
hit — and is started again on the same database and work dir, up to `--kills` times per run.
Then, per run: jobs delivered, duplicate deliveries (Discord accepted more than one request
carrying a job's video, or more than one message shows it), submits per job at the fake, and the
ledger (charged == delivered, nothing left reserved). A `submitting` crash leaves a job `unknown`
(correctly never resubmitted): counted, not a failure, as long as it was refunded.

Prints one row per run and a total line; exits 1 if any invariant broke.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bot.segmind.fake import FakeSegmind
from harness.bot_process import (
    FAKE_KEY,
    BotProcess,
    job_states,
    ledger,
    messages_with_video,
    video_uploads,
    wait_until,
)
from harness.discord_emulator import DiscordEmulator

TERMINAL = ("delivered", "failed", "expired", "unknown", "cancelled")


def all_terminal(workdir: Path, jobs: int) -> bool:
    states = job_states(workdir)
    return len(states) == jobs and all(s in TERMINAL for s in states.values())


async def one_run(index: int, rng: random.Random, jobs: int, kills: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix=f"kill-{index}-") as tmp:
        workdir = Path(tmp)
        async with (
            DiscordEmulator() as emu,
            FakeSegmind(api_key=FAKE_KEY, queue_seconds=0.1, processing_seconds=0.6) as fake,
        ):
            env = {
                "VEO_MAX_CONCURRENT_JOBS": "1",
                "VEO_USER_CONCURRENCY": "5",
                "VEO_USER_LIMIT": "50",
            }
            proc = BotProcess(emu, fake, workdir, env)
            await proc.start()
            await emu.wait_for_command("veo")
            users = [emu.member, emu.moderator, emu.owner]
            for n in range(jobs):
                handle = await emu.dispatch_slash_command(
                    "veo", {"prompt": f"run {index} job {n}"}, user=users[n % len(users)]
                )
                await handle.wait_for_callback()
            killed = 0
            for _ in range(kills):
                # Jobs take ~1 s each here; spread kills over the whole life of the queue.
                await asyncio.sleep(rng.uniform(0.0, 1.0 * jobs))
                if all_terminal(workdir, jobs):
                    break
                await proc.kill()
                killed += 1
                await proc.start()
            # The database is the truth (the process log starts over on each restart).
            await wait_until(lambda: all_terminal(workdir, jobs), timeout=90, what="every job")
            await proc.stop()
            states = job_states(workdir)
            books = ledger(workdir)
            delivered = [j for j, s in states.items() if s == "delivered"]
            duplicates = sum(
                max(0, len(video_uploads(emu, j)) - 1)
                + max(0, len(messages_with_video(emu, j)) - 1)
                for j in states
            )
            prompts = Counter(str(s["prompt"]) for s in fake.submits)
            return {
                "run": index,
                "kills": killed,
                "jobs": len(states),
                "delivered": len(delivered),
                "unknown": sum(s == "unknown" for s in states.values()),
                "other": sum(s not in ("delivered", "unknown") for s in states.values()),
                "duplicates": duplicates,
                "max_submits": max(prompts.values(), default=0),
                "charged_ok": sorted(j for j, s in books.items() if s == "charged") == delivered,
                "reserved": sum(s == "reserved" for s in books.values()),
            }


def healthy(row: dict[str, object]) -> bool:
    return (
        row["duplicates"] == 0
        and row["max_submits"] == 1
        and row["charged_ok"] is True
        and row["reserved"] == 0
        and row["other"] == 0
        and row["jobs"] == row["delivered"] + row["unknown"]  # type: ignore[operator]
    )


async def main_async(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    columns = (
        "run",
        "kills",
        "jobs",
        "delivered",
        "unknown",
        "other",
        "duplicates",
        "max_submits",
        "charged_ok",
        "reserved",
    )
    print(" ".join(f"{c:>11}" for c in columns) + "  ok")
    rows = []
    started = time.monotonic()
    for index in range(1, args.runs + 1):
        row = await one_run(index, rng, args.jobs, args.kills)
        rows.append(row)
        print(
            " ".join(f"{row[c]!s:>11}" for c in columns) + f"  {'yes' if healthy(row) else 'NO'}",
            flush=True,
        )
    total = {
        key: sum(int(r[key]) for r in rows)  # type: ignore[call-overload]
        for key in ("kills", "jobs", "delivered", "unknown", "duplicates")
    }
    bad = [r["run"] for r in rows if not healthy(r)]
    print(
        f"\n{len(rows)} runs in {time.monotonic() - started:.0f} s: {total['kills']} kills, "
        f"{total['jobs']} jobs, {total['delivered']} delivered, {total['unknown']} unknown "
        f"(killed mid-submit; refunded, never resubmitted), {total['duplicates']} duplicate "
        f"deliveries, max submits per job {max(int(r['max_submits']) for r in rows)}"  # type: ignore[call-overload]
        f"; broken runs: {bad or 'none'}"
    )
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--kills", type=int, default=2, help="SIGKILLs per run at most")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
