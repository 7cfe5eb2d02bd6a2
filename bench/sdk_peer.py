"""The peer for the in-flight bench: N jobs waited on with the official SDK, one thread each.

    python bench/sdk_peer.py BASE_URL KEY JOBS SECONDS

Submits JOBS jobs to the fake with `SegmindClient.submit_async` and calls `job.wait()` (1-s
interval) in one thread per job, as the SDK's docs suggest for many jobs; prints "ready" once all
are submitted, then stays until killed. The bench measures this process from /proc.
"""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from segmind import SegmindClient


def main() -> None:
    base_url, key, jobs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = SegmindClient(api_key=key, base_url=f"{base_url}/v1")
    with ThreadPoolExecutor(max_workers=32) as pool:
        handles = list(
            pool.map(
                lambda i: client.submit_async("veo-3-fast", prompt=f"peer {i}", duration=8),
                range(jobs),
            )
        )
    for job in handles:
        threading.Thread(target=_wait, args=(job,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def _wait(job: object) -> None:
    try:
        job.wait(timeout=3600, interval=1.0)  # type: ignore[attr-defined]
    except Exception as exc:  # a bench peer: report and go on
        print(f"wait failed: {exc}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
