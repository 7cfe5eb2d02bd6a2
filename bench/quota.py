"""How many check-and-reserve transactions per second the store sustains on a file database.

    .venv/bin/python bench/quota.py [--reservations 2000] [--synchronous FULL|NORMAL]

Each reservation is the real thing: BEGIN IMMEDIATE, load the member's limits, read the usage,
decide, insert the job and the ledger row, COMMIT (fsync with synchronous=FULL). Callers are
concurrent asyncio tasks on one store, as in the bot. Limits are set so every call is allowed:
the refused path writes nothing and is cheaper. Goal: at least 1,000 reservations/s.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.params import VeoParams
from bot.quota import LimitDefaults  # after the path tweak: runs from anywhere
from bot.store import Reserved, ReserveRequest, SqliteStore

# Realistic per-user limits (each simulated user makes exactly `PER_USER` requests), and
# every guild/global/spend cap set high so all their queries run yet nothing is refused.
PER_USER = 3
DEFAULTS = LimitDefaults(
    user_limit=PER_USER,
    concurrency=PER_USER,
    guild_daily_limit=1_000_000,
    global_daily_limit=1_000_000,
    daily_spend_cap=1e12,
)


async def run(callers: int, total: int, synchronous: Literal["FULL", "NORMAL"]) -> float:
    """Reservations per second for `callers` concurrent tasks sharing `total` reservations."""
    with tempfile.TemporaryDirectory() as tmp:
        store = await SqliteStore.open(Path(tmp) / "bench.sqlite3", synchronous=synchronous)
        try:
            params = VeoParams(prompt="a lighthouse at dusk", duration=8)
            per_caller = max(1, total // callers)
            now = time.time()

            async def caller(index: int) -> int:
                done = 0
                for i in range(per_caller):
                    request = ReserveRequest(
                        guild_id=1 + index % 5,
                        channel_id=10,
                        user_id=1_000_000 * (index + 1) + i // PER_USER,
                        role_ids=(1, 2, 3),
                        params=params,
                        now=now + i * 1e-3,
                    )
                    done += isinstance(await store.reserve(request, DEFAULTS), Reserved)
                return done

            start = time.perf_counter()
            passed = sum(await asyncio.gather(*(caller(c) for c in range(callers))))
            elapsed = time.perf_counter() - start
            assert passed == per_caller * callers, "a reservation was refused"
            return passed / elapsed
        finally:
            await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reservations", type=int, default=2000)
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    args = parser.parse_args()
    synchronous = cast(Literal["FULL", "NORMAL"], args.synchronous)
    print(f"check-and-reserve on a file database, synchronous={synchronous}")
    for callers in (1, 10, 200):
        rate = asyncio.run(run(callers, args.reservations, synchronous))
        print(f"{callers:>4} concurrent callers: {rate:8.0f} reservations/s")


if __name__ == "__main__":
    main()
