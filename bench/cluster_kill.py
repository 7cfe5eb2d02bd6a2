"""N real bot nodes on one PostgreSQL, a random node SIGKILLed every 10 s and restarted 2 s later.

    .venv/bin/python bench/cluster_kill.py [--nodes 3] [--shards 3] [--jobs 1000] [--members 200]
        [--seed 1] [--kill-every 10] [--restart-after 2] [--lease 15] [--rpm 3000]

One Discord emulator routing events by shard, one guild per shard, node n running shard n
(`--shards 0`: no sharding, every node's session on one shard and each interaction to one live
session), and one Segmind fake. While a node is down its guild's members get no answer (in
Discord: "the application did not respond"); those requests are counted, not jobs.
`--members` members ask for `--jobs` videos in all; meanwhile a seeded RNG picks a node to
SIGKILL every `--kill-every` s and starts it again `--restart-after` s later, until every job
has ended. Then:

- jobs lost: jobs the nodes took in (a row in the database) that never reached an end, or
  ended with their reservation still open;
- submitted twice: jobs with more than one POST at the fake (each prompt is unique);
- delivered twice: jobs whose video Discord accepted more than once, or shown twice;
- ledger exact: every delivered job charged, every other ended one released, none reserved;
- Segmind budget exceeded: more than `--rpm` requests to Segmind's API in any 60 s at the fake
  (the bot's window is 61 s), over the whole run and across every takeover;
- takeover time: from a SIGKILL of the runner until another node holds the lease (p50/p99).

Exits 1 if an invariant broke.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import random
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import percentile, until
from bot.segmind.fake import FakeSegmind
from bot.store import Store, open_store
from harness.bot_process import FAKE_KEY, BotProcess, messages_with_video, video_uploads
from harness.discord_emulator import DiscordEmulator
from harness.postgres import PostgresServer

TERMINAL = {"delivered", "failed", "expired", "unknown", "cancelled"}
OWNER_PID = re.compile(r"-(\d+)-[0-9a-f]+$")


async def lease_holder(store: Store) -> tuple[int | None, int]:
    """(the runner's pid, its epoch), from the lease row; (None, epoch) when it lapsed."""
    rows = await store._fetch(  # type: ignore[attr-defined]
        "SELECT owner, epoch, expires_at > extract(epoch FROM clock_timestamp()) FROM runner_lease"
    )
    if not rows:
        return None, 0
    owner, epoch, live = rows[0]
    found = OWNER_PID.search(str(owner))
    return (int(found.group(1)) if found and live else None), int(epoch)


async def states(store: Store) -> dict[int, tuple[str, str | None]]:
    rows = await store._fetch(  # type: ignore[attr-defined]
        "SELECT j.id, j.state, l.status FROM jobs j LEFT JOIN quota_ledger l ON l.job_id = j.id"
    )
    return {int(r[0]): (str(r[1]), r[2]) for r in rows}


def max_in_window(times: list[float], window: float) -> int:
    ordered = sorted(times)
    return max(
        (bisect.bisect_right(ordered, t + window - 1e-9) - i for i, t in enumerate(ordered)),
        default=0,
    )


async def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    server = PostgresServer.start()
    try:
        url = server.url(await server.create_database())
        with tempfile.TemporaryDirectory(prefix="cluster-kill-") as tmp:
            return await _run(args, rng, url, Path(tmp))
    finally:
        server.stop()


async def _run(args: argparse.Namespace, rng: random.Random, url: str, root: Path) -> int:
    shards = args.shards
    async with (
        DiscordEmulator(shard_count=max(1, shards)) as emu,
        FakeSegmind(
            api_key=FAKE_KEY, queue_seconds=0.5, processing_seconds=args.processing
        ) as fake,
    ):
        fake.credits = 1e9  # thousands of jobs; the default balance buys about 160
        guilds = (
            [emu.add_guild_on_shard(f"shard {n}", shard=n, owner=emu.owner) for n in range(shards)]
            if shards
            else [emu.guild]
        )
        members = [emu.add_user(f"member{n}") for n in range(args.members)]
        for n, user in enumerate(members):
            guilds[n % len(guilds)].add_member(user)
        env = {
            "VEO_DATABASE_URL": url,
            "SEGMIND_MAX_RPM": str(args.rpm),
            "VEO_MAX_CONCURRENT_JOBS": str(args.jobs + 10),
            "VEO_USER_LIMIT": "100000",
            "VEO_USER_CONCURRENCY": "100000",
            "VEO_RUNNER_LEASE_SECONDS": str(args.lease),
            "VEO_QUEUE_POLL_SECONDS": "1.0",
            "VEO_EDIT_INTERVAL": "5.0",
            "VEO_POLL_FLOOR": "1.5",
            "VEO_POLL_CEILING": "20.0",
        }
        nodes = []
        for n in range(args.nodes):
            workdir = root / f"node{n}"
            workdir.mkdir()
            sharding = (
                {"DISCORD_SHARD_COUNT": str(shards), "DISCORD_SHARD_IDS": str(n % shards)}
                if shards
                else {}
            )
            nodes.append(BotProcess(emu, fake, workdir, {**env, **sharding}))
        for node in nodes:
            await node.start()
        await emu.wait_for_command("veo")
        store = await open_store(url)
        started = time.monotonic()
        # Members ask at a steady pace while nodes die: a dead node's sessions get nothing.
        taken_in = 0
        refused = 0

        async def ask() -> None:
            nonlocal taken_in, refused
            for n in range(args.jobs):
                user = members[n % len(members)]
                guild = guilds[(n % len(members)) % len(guilds)]
                channel = next(iter(c for c in guild.channels.values() if c.name == "general"))
                try:
                    handle = await emu.dispatch_slash_command(
                        "veo",
                        {"prompt": f"cluster job {n}", "duration": 8},
                        user=user,
                        guild_id=guild.id,
                        channel_id=channel.id,
                    )
                    await handle.wait_for_callback(timeout=10)
                    taken_in += 1
                except (TimeoutError, AssertionError, IndexError, RuntimeError):
                    # No live session for its shard, or the node died before answering:
                    # the member sees "the application did not respond"; no job exists.
                    refused += 1
                await asyncio.sleep(args.ask_every)

        asker = asyncio.create_task(ask())
        takeovers: list[float] = []
        kills = runner_kills = 0

        async def all_ended() -> bool:
            current = await states(store)
            return asker.done() and all(s in TERMINAL for s, _ in current.values())

        deadline = started + args.timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(args.kill_every)
            if await all_ended():
                break
            victim = rng.randrange(len(nodes))
            node = nodes[victim]
            assert node.proc is not None
            pid = node.proc.pid
            holder, epoch = await lease_holder(store)
            await node.kill()
            kills += 1
            killed_at = time.monotonic()
            restart = asyncio.create_task(_restart_later(node, args.restart_after))
            if holder == pid:
                runner_kills += 1
                while True:
                    now_holder, now_epoch = await lease_holder(store)
                    if now_holder is not None and now_epoch > epoch:
                        takeovers.append(time.monotonic() - killed_at)
                        break
                    await asyncio.sleep(0.05)
            await restart
        await until(lambda: asker.done(), 60, "every member's request")
        end_wait = time.monotonic() + 300
        while not await all_ended() and time.monotonic() < end_wait:  # noqa: ASYNC110  (a bench may poll)
            await asyncio.sleep(0.5)
        elapsed = time.monotonic() - started
        final = await states(store)
        _, last_epoch = await lease_holder(store)
        for node in nodes:
            await node.stop()
        await store.close()

        lost = sum(1 for state, ledger in final.values() if state not in TERMINAL or not ledger)
        prompts = Counter(str(s["prompt"]) for s in fake.submits)
        twice_submitted = sum(1 for c in prompts.values() if c > 1)
        twice_delivered = sum(
            1
            for job_id in final
            if len(video_uploads(emu, job_id)) > 1 or len(messages_with_video(emu, job_id)) > 1
        )
        # Failed jobs may be charged (a video that may have landed is not refunded).
        ledger_exact = all(
            ledger != "reserved"
            and (state != "delivered" or ledger == "charged")
            and (state not in ("cancelled", "expired", "unknown") or ledger == "released")
            for state, ledger in final.values()
        )
        api_times = [r.at for r in fake.requests if r.path.startswith("/v2/")]
        busiest = max_in_window(api_times, 60.0)
        by_state = Counter(state for state, _ in final.values())
        print(
            f"nodes {args.nodes}, shards {shards or 'none'}, "
            f"jobs asked {args.jobs} from {args.members} members, "
            f"taken in {taken_in}, not acknowledged {refused}, lease {args.lease:g} s, "
            f"rpm {args.rpm}, seed {args.seed}, {elapsed:.0f} s"
        )
        print(
            f"kills {kills} (of the runner: {runner_kills}); lease terms {last_epoch} "
            f"(1 + runner kills when no runner stood down by itself); end states {dict(by_state)}"
        )
        print(f"jobs lost:            {lost}")
        print(f"submitted twice:      {twice_submitted}")
        print(f"delivered twice:      {twice_delivered}")
        print(f"ledger exact:         {'yes' if ledger_exact else 'no'}")
        print(
            f"Segmind budget exceeded: {'yes' if busiest > args.rpm else 'no'} "
            f"(busiest 60 s: {busiest} requests of {args.rpm})"
        )
        if takeovers:
            print(
                f"takeover time:        p50 {percentile(takeovers, 50):.2f} s, "
                f"p99 {percentile(takeovers, 99):.2f} s over {len(takeovers)} runner kills"
            )
        broken = lost or twice_submitted or twice_delivered or not ledger_exact
        return 1 if broken or busiest > args.rpm else 0


async def _restart_later(node: BotProcess, delay: float) -> None:
    await asyncio.sleep(delay)
    await node.start()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--shards", type=int, default=3, help="0: unsharded, one shard")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kill-every", type=float, default=10.0)
    parser.add_argument("--restart-after", type=float, default=2.0)
    parser.add_argument("--lease", type=float, default=15.0, help="VEO_RUNNER_LEASE_SECONDS")
    parser.add_argument("--rpm", type=int, default=3000, help="SEGMIND_MAX_RPM")
    parser.add_argument("--processing", type=float, default=8.0, help="fake generation, s")
    parser.add_argument("--ask-every", type=float, default=0.02, help="s between two requests")
    parser.add_argument("--timeout", type=float, default=900.0)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
