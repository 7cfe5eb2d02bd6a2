"""How many check-and-reserve transactions per second the store sustains, on a SQLite file or
a PostgreSQL server.

    .venv/bin/python bench/quota.py [--reservations 2000] [--synchronous FULL|NORMAL]
    .venv/bin/python bench/quota.py --database-url postgresql://user:pw@host/postgres
    .venv/bin/python bench/quota.py --start-postgres     # a throwaway local server, fsync on

Each reservation is the real thing: load the member's limits, take the locks (SQLite: BEGIN
IMMEDIATE; PostgreSQL: the advisory locks of the scopes whose caps apply), read the usage,
decide, insert the job and the ledger row, COMMIT (fsync with SQLite's synchronous=FULL and
PostgreSQL's defaults). Callers are concurrent asyncio tasks on one store, as in the bot.
Limits are set so every call is allowed: the refused path writes nothing and is cheaper.
With `--database-url` each run gets a scratch database on that server (CREATE DATABASE
rights needed), dropped afterwards: the URL's own database is never written. Goal: at least
1,000 reservations/s.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal, cast
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.params import VeoParams
from bot.quota import LimitDefaults  # after the path tweak: runs from anywhere
from bot.store import Reserved, ReserveRequest, SqliteStore, Store, open_store

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
# Only the per-user limits: on PostgreSQL no global or guild lock is taken, so unrelated
# members' reservations run side by side (SQLite serialises every writer regardless).
USER_CAPS_ONLY = LimitDefaults(user_limit=PER_USER, concurrency=PER_USER)


@asynccontextmanager
async def sqlite_store(synchronous: Literal["FULL", "NORMAL"]) -> AsyncIterator[Store]:
    with tempfile.TemporaryDirectory() as tmp:
        store = await SqliteStore.open(Path(tmp) / "bench.sqlite3", synchronous=synchronous)
        try:
            yield store
        finally:
            await store.close()


@asynccontextmanager
async def sqlite_file(path: Path, synchronous: Literal["FULL", "NORMAL"]) -> AsyncIterator[Store]:
    store = await SqliteStore.open(path, synchronous=synchronous)
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def postgres_store(server_url: str) -> AsyncIterator[Store]:
    """A store on a scratch database of the server at `server_url`, dropped afterwards."""
    import asyncpg

    name = f"veo_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")  # a name made here, not an input
        url = urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
        store = await open_store(url)
        store.bench_url = url  # type: ignore[attr-defined]  # for worker processes
        try:
            yield store
        finally:
            await store.close()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def reserve_all(
    store: Store, callers: int, per_caller: int, defaults: LimitDefaults, process: int = 0
) -> tuple[int, float, float]:
    """`callers` concurrent tasks making `per_caller` reservations each (users and event ids
    of their own, also apart from other processes'); returns (passed, start, end) on the
    wall clock, so processes' runs can be put side by side."""
    params = VeoParams(prompt="a lighthouse at dusk", duration=8)
    now = time.time()
    base = 1_000_000 * (1 + process * 1_000)

    async def caller(index: int) -> int:
        done = 0
        for i in range(per_caller):
            request = ReserveRequest(
                guild_id=1 + index % 5,
                channel_id=10,
                user_id=base + 1_000 * index + i // PER_USER,
                role_ids=(1, 2, 3),
                params=params,
                now=now + i * 1e-3,
                # As the bot sends: the Discord event's id, unique per job (and checked).
                event_id=base + 1_000 * index + i,
            )
            done += isinstance(await store.reserve(request, defaults), Reserved)
        return done

    start = time.time()
    passed = sum(await asyncio.gather(*(caller(c) for c in range(callers))))
    return passed, start, time.time()


async def run(
    callers: int,
    total: int,
    synchronous: Literal["FULL", "NORMAL"],
    database_url: str | None = None,
    defaults: LimitDefaults = DEFAULTS,
) -> float:
    """Reservations per second for `callers` concurrent tasks sharing `total` reservations."""
    opened = postgres_store(database_url) if database_url else sqlite_store(synchronous)
    async with opened as store:
        per_caller = max(1, total // callers)
        passed, start, end = await reserve_all(store, callers, per_caller, defaults)
        assert passed == per_caller * callers, "a reservation was refused"
        return passed / (end - start)


async def run_processes(
    processes: int,
    callers: int,
    total: int,
    synchronous: Literal["FULL", "NORMAL"],
    database_url: str | None,
    caps_only: bool,
) -> float:
    """The same `total`, split over `processes` OS processes on ONE database (each with
    `callers // processes` tasks and its own pool or connection): reservations per second
    from the first start to the last end."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.sqlite3"
        scratch = postgres_store(database_url) if database_url else sqlite_file(path, synchronous)
        async with scratch as store:  # migrated once, before the workers open it
            target = str(getattr(store, "bench_url", path))
            per_caller = max(1, total // callers)
            per_process = max(1, callers // processes)
            workers = [
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    __file__,
                    "--worker",
                    target,
                    str(index),
                    str(per_process),
                    str(per_caller),
                    synchronous,
                    "1" if caps_only else "0",
                    stdout=asyncio.subprocess.PIPE,
                )
                for index in range(processes)
            ]
            outputs = [(await w.communicate())[0].decode().split() for w in workers]
            if any(w.returncode for w in workers):
                raise SystemExit("a worker process failed")
    passed = sum(int(o[0]) for o in outputs)
    assert passed == per_caller * per_process * processes, "a reservation was refused"
    start = min(float(o[1]) for o in outputs)
    end = max(float(o[2]) for o in outputs)
    return passed / (end - start)


async def worker(argv: list[str]) -> None:
    """One process of `run_processes`: prints passed, start and end."""
    target, index, callers, per_caller, synchronous, caps_only = argv
    if target.startswith("postgresql"):
        store = await open_store(target)
    else:
        store = await SqliteStore.open(
            Path(target), synchronous=cast(Literal["FULL", "NORMAL"], synchronous)
        )
    try:
        defaults = USER_CAPS_ONLY if caps_only == "1" else DEFAULTS
        passed, start, end = await reserve_all(
            store, int(callers), int(per_caller), defaults, process=int(index)
        )
    finally:
        await store.close()
    print(passed, repr(start), repr(end))


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        asyncio.run(worker(sys.argv[2:]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reservations", type=int, default=2000)
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--database-url", help="a PostgreSQL server (postgresql://…) instead of a SQLite file"
    )
    target.add_argument(
        "--start-postgres",
        action="store_true",
        help="start a throwaway local PostgreSQL server (defaults, fsync on) and use it",
    )
    parser.add_argument(
        "--user-caps-only",
        action="store_true",
        help="no guild/global/spend caps (no wide lock on PostgreSQL)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="also split the callers over this many OS processes on the same database",
    )
    args = parser.parse_args()
    defaults = USER_CAPS_ONLY if args.user_caps_only else DEFAULTS
    synchronous = cast(Literal["FULL", "NORMAL"], args.synchronous)
    server = None
    url: str | None = args.database_url
    if args.start_postgres:
        from harness.postgres import PostgresServer

        server = PostgresServer.start(durable=True)
        url = server.url()
    try:
        if url:
            print("check-and-reserve on PostgreSQL (a pool of 10 connections)", end="")
        else:
            print(f"check-and-reserve on a file database, synchronous={synchronous}", end="")
        print(", per-user caps only" if args.user_caps_only else ", every cap set")
        for callers in (1, 10, 200):
            rate = asyncio.run(run(callers, args.reservations, synchronous, url, defaults))
            line = f"{callers:>4} concurrent callers: {rate:8.0f} reservations/s"
            if args.processes > 1 and callers >= args.processes:
                split = asyncio.run(
                    run_processes(
                        args.processes,
                        callers,
                        args.reservations,
                        synchronous,
                        url,
                        args.user_caps_only,
                    )
                )
                line += f"; over {args.processes} processes: {split:8.0f} reservations/s"
            print(line)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
