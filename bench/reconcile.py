"""How long reconciling 10,000 history rows takes, in requests, seconds and memory.

    .venv/bin/python bench/reconcile.py [--rows 10000] [--days 60]

The Segmind fake runs here holding `--rows` history rows over the last `--days` days (completed
jobs at mixed prices, failed ones at $0, some with two outputs). A child process — so its RSS is
the client's alone — pages them through `SegmindClient.history` at 100 rows a page, de-duplicates,
sums what was billed, and teaches a `PriceBook` from them. Pacing is off (the whole budget, a
large `max_rpm`) to time the client itself; the time the same number of requests takes at the
production pace (SEGMIND_MAX_RPM=50, a quarter of it for history) is printed beside it.

A second child runs the bot's own `Reconciler` (bot/reconcile.py) over the same rows and a real
SQLite store holding a job for most requests (delivered; 2 % refunded though billed; 5 % not
the bot's): one pass from a cursor 60 days back, every bill recorded, every discrepancy found
and checked against what the fill made.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere

from bot.pricing import PriceBook  # noqa: E402  (after the path tweak)
from bot.reconcile import CURSOR, Reconciler  # noqa: E402
from bot.segmind.client import SegmindClient  # noqa: E402
from bot.segmind.fake import FakeSegmind  # noqa: E402
from bot.segmind.history import MAX_PER_PAGE, dedupe, total_billed  # noqa: E402
from bot.segmind.polling import RateLimiter  # noqa: E402
from bot.store import open_store  # noqa: E402

KEY = "bench-history-key"
DAY = 86_400.0
PRODUCTION_RPM = 50
PRODUCTION_SHARE = 0.25


def _peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise KeyError("VmHWM")


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise KeyError("VmRSS")


def fill(fake: FakeSegmind, rows: int, days: float, rng: random.Random) -> tuple[int, float]:
    """Backfill jobs giving exactly `rows` history rows; returns (requests, dollars billed)."""
    now = fake.now()
    made = requests = 0
    while made < rows:
        kind = rng.random()
        prompt = "a bench clip"
        outputs = 1
        if kind < 0.10:
            prompt += " [fake:fail]"
        elif kind < 0.15 and rows - made >= 2:
            prompt += " [fake:outputs=2]"
            outputs = 2
        body = {
            "prompt": f"{prompt} {requests}",
            "duration": rng.choice((4, 6, 8)),
            "resolution": rng.choice(("720p", "1080p")),
            "generate_audio": rng.random() < 0.5,
            "seed": requests + 1,
        }
        # Finished well before now, so every row is final and inside the window.
        age = 3600.0 + rng.random() * (days * DAY - 7200.0)
        fake.backfill(body, submitted_at=now - age)
        made += outputs
        requests += 1
    later = fake.now()
    billed = sum(job.billed_at(later) for job in fake.jobs.values())
    return requests, billed


async def child(base_url: str, history_url: str, days: int) -> dict[str, float]:
    """Page everything through the real client; report what a reconciliation needs."""
    baseline = _rss_kib()
    until = datetime.now(UTC).date()
    since = until - timedelta(days=days)
    book = PriceBook()
    async with SegmindClient(
        KEY, base_url, history_url=history_url, max_rpm=100_000, history_share=1.0
    ) as client:
        start = time.perf_counter()
        cpu_start = time.process_time()
        rows = [row async for row in client.history(since, until, per_page=MAX_PER_PAGE)]
        paged = time.perf_counter() - start
        unique = dedupe(rows)
        billed = total_billed(rows)
        taught = book.observe_rows(rows)
        total = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        granted = client.limiter.granted
    return {
        "rows": len(rows),
        "requests_seen": len(unique),
        "billed": billed,
        "taught": taught,
        "paged_s": paged,
        "total_s": total,
        "client_cpu_s": cpu,
        "http_requests": granted,
        "baseline_rss_kib": baseline,
        "peak_rss_kib": _peak_rss_kib(),
    }


def seed_store(fake: FakeSegmind, path: Path, rng: random.Random) -> dict[str, int]:
    """The bot's jobs for most of the fake's requests, written straight into a migrated file
    (the reservation path is not what is measured). Returns what the reconciler must find."""
    asyncio.run(_migrate(path))
    later = fake.now()
    wall = fake._wall  # fake clock -> epoch seconds, as its history dates rows
    expect = {"recorded": 0, "billed_but_refunded": 0, "unknown_request": 0}
    jobs: list[tuple[object, ...]] = []
    ledger: list[tuple[object, ...]] = []
    for seq, job in enumerate(fake.jobs.values(), start=1):
        billed = job.billed_at(later)
        pick = rng.random()
        if pick < 0.05:
            expect["unknown_request"] += billed > 0
            continue
        refunded = billed == 0 or pick < 0.07
        expect["recorded"] += 1
        expect["billed_but_refunded"] += refunded and billed > 0
        at = wall(job.submitted_at)
        state, status = ("failed", "released") if refunded else ("delivered", "charged")
        body = json.dumps(job.body)
        jobs.append((seq, 1, 2, 3, job.params.prompt, body, job.request_id, state, seq, *[at] * 4))
        ledger.append((seq, 1, 3, status, 0.8, at))
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO jobs (id, guild_id, channel_id, user_id, prompt, params, request_id, "
            "state, queue_seq, created_at, updated_at, submit_started_at, submitted_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            jobs,
        )
        conn.executemany(
            "INSERT INTO quota_ledger (job_id, guild_id, user_id, status, amount, reserved_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            ledger,
        )
    return expect


async def _migrate(path: Path) -> None:
    store = await open_store(path)
    await store.close()


async def child_reconcile(base_url: str, history_url: str, db: str, days: int) -> dict[str, float]:
    """One `Reconciler` pass over everything; what it cost and what it found."""
    logging.disable(logging.WARNING)  # each planted discrepancy is logged; the count is enough
    baseline = _rss_kib()
    recorded: list[tuple[int, float]] = []

    async def record_billed(
        job_id: int, amount: float, *, source: str, now: float | None = None
    ) -> bool:
        recorded.append((job_id, amount))
        return True

    store = await open_store(db)
    try:
        await store.set_cursor(CURSOR, repr(time.time() - days * DAY - DAY))
        async with SegmindClient(
            KEY, base_url, history_url=history_url, max_rpm=100_000, history_share=1.0
        ) as client:
            reconciler = Reconciler(store, client, record_billed=record_billed, alerts=None)
            start = time.perf_counter()
            cpu_start = time.process_time()
            done = await reconciler.run_once()
            total = time.perf_counter() - start
            cpu = time.process_time() - cpu_start
            granted = client.limiter.granted
        kinds = [d.kind for d in await store.discrepancies(None, limit=100_000)]
    finally:
        await store.close()
    return {
        "rows": done.rows,
        "requests": done.requests,
        "recorded": len(recorded),
        "billed_but_refunded": kinds.count("billed_but_refunded"),
        "unknown_request": kinds.count("unknown_request"),
        "total_s": total,
        "cpu_s": cpu,
        "http_requests": granted,
        "baseline_rss_kib": baseline,
        "peak_rss_kib": _peak_rss_kib(),
    }


async def _child(*args: str) -> dict[str, float]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, *args, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"the child failed with exit code {proc.returncode}")
    result: dict[str, float] = json.loads(out)
    return result


async def run(rows: int, days: int) -> dict[str, float]:
    rng = random.Random(12)
    async with FakeSegmind(api_key=KEY, cost_per_job=None, credits=1e9) as fake:
        requests, billed = fill(fake, rows, days, rng)
        fake_cpu = time.process_time()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--child",
            fake.base_url,
            fake.history_url,
            str(days),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        fake_cpu = time.process_time() - fake_cpu
        if proc.returncode != 0:
            raise SystemExit(f"the child failed with exit code {proc.returncode}")
        result: dict[str, float] = json.loads(out)
        served = sum(1 for r in fake.requests if r.route == "history")
    assert result["rows"] == rows, result
    assert result["requests_seen"] == requests, result
    assert abs(result["billed"] - billed) < 1e-6, (result["billed"], billed)
    assert served == result["http_requests"], (served, result)
    interval = 61.0 / (PRODUCTION_RPM * PRODUCTION_SHARE)
    result["paced_s"] = (served - 1) * interval
    result["true_billed"] = billed
    result["fake_cpu_s"] = fake_cpu
    return result


async def run_reconciler(rows: int, days: int) -> tuple[dict[str, float], dict[str, int]]:
    rng = random.Random(12)
    async with FakeSegmind(api_key=KEY, cost_per_job=None, credits=1e9) as fake:
        fill(fake, rows, days, rng)
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "veo.sqlite3"
            expect = await asyncio.to_thread(seed_store, fake, db, random.Random(7))
            result = await _child(
                "--child-reconcile", fake.base_url, fake.history_url, str(db), str(days)
            )
        served = sum(1 for r in fake.requests if r.route == "history")
    assert result["rows"] == rows, result
    assert served == result["http_requests"], (served, result)
    for key, count in expect.items():
        assert result[key] == count, (key, result[key], count)
    return result, expect


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--child", nargs=3, metavar=("BASE", "HISTORY", "DAYS"), help="internal")
    parser.add_argument(
        "--child-reconcile", nargs=4, metavar=("B", "H", "DB", "D"), help="internal"
    )
    args = parser.parse_args()
    if args.child:
        base, history, days = args.child
        print(json.dumps(asyncio.run(child(base, history, int(days)))))
        return
    if args.child_reconcile:
        base, history, db, days = args.child_reconcile
        print(json.dumps(asyncio.run(child_reconcile(base, history, db, int(days)))))
        return
    r = asyncio.run(run(args.rows, args.days))
    window = RateLimiter(PRODUCTION_RPM, window=61.0).window
    print(
        f"reconcile {r['rows']:.0f} history rows ({r['requests_seen']:.0f} requests, "
        f"${r['billed']:.2f} billed = fake's ${r['true_billed']:.2f}) over {args.days} days:\n"
        f"  {r['http_requests']:.0f} HTTP requests, {r['paged_s']:.2f} s paging, "
        f"{r['total_s']:.2f} s with de-dup, sum and price learning "
        f"({r['taught']:.0f} charges learned); client CPU {r['client_cpu_s']:.2f} s, "
        f"fake CPU {r['fake_cpu_s']:.2f} s\n"
        f"  client peak RSS {r['peak_rss_kib'] / 1024:.1f} MB "
        f"(baseline after imports {r['baseline_rss_kib'] / 1024:.1f} MB)\n"
        f"  at the production pace ({PRODUCTION_RPM}/{window:.0f} s, "
        f"{PRODUCTION_SHARE:.0%} for history): {r['paced_s'] / 60:.1f} min"
    )
    c, _ = asyncio.run(run_reconciler(args.rows, args.days))
    print(
        f"reconciler (bot/reconcile.py) over the same {c['rows']:.0f} rows "
        f"({c['requests']:.0f} requests) and a SQLite store: {c['http_requests']:.0f} HTTP "
        f"requests, {c['total_s']:.2f} s (CPU {c['cpu_s']:.2f} s); {c['recorded']:.0f} bills "
        f"recorded, {c['billed_but_refunded']:.0f} refunded-but-billed and "
        f"{c['unknown_request']:.0f} unknown requests found (= planted)\n"
        f"  peak RSS {c['peak_rss_kib'] / 1024:.1f} MB "
        f"(baseline after imports {c['baseline_rss_kib'] / 1024:.1f} MB)"
    )


if __name__ == "__main__":
    main()
