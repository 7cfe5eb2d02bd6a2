"""`python -m bot.segmind.fake`: run the fake on its own, for demo mode or subprocess tests."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from bot.segmind.fake.server import FakeSegmind

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The command-line options; defaults match `FakeSegmind`'s except the port."""
    parser = argparse.ArgumentParser(
        prog="python -m bot.segmind.fake",
        description="A local fake of Segmind's Veo 3 Fast API that serves real test clips.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port; 0 picks a free one (8765)")
    parser.add_argument("--api-key", default="fake-key", help="expected x-api-key (fake-key)")
    parser.add_argument(
        "--any-key", action="store_true", help="accept every request, with or without a key"
    )
    parser.add_argument("--queue-seconds", type=float, default=0.2, help="time QUEUED (0.2)")
    parser.add_argument(
        "--processing-seconds", type=float, default=1.0, help="time PROCESSING (1.0)"
    )
    parser.add_argument(
        "--retention-seconds", type=float, default=3600.0, help="result lifetime (3600)"
    )
    parser.add_argument(
        "--history-delay-seconds",
        type=float,
        default=1.0,
        help="time before a request appears in the request history (1.0)",
    )
    parser.add_argument("--credits", type=float, default=100.0, help="starting balance (100)")
    parser.add_argument(
        "--cost-per-job",
        type=float,
        default=0.6,
        help="price of a job; a negative value prices by parameters, $0.40-$1.20 (0.6)",
    )
    parser.add_argument(
        "--public-url", default=None, help="base for status/output URLs (default: the Host used)"
    )
    return parser


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeSegmind(
        api_key=None if args.any_key else args.api_key,
        queue_seconds=args.queue_seconds,
        processing_seconds=args.processing_seconds,
        retention_seconds=args.retention_seconds,
        history_delay_seconds=args.history_delay_seconds,
        credits=args.credits,
        cost_per_job=None if args.cost_per_job < 0 else args.cost_per_job,
        public_url=args.public_url,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Not every platform lets a loop own signals; Ctrl-C then ends us via KeyboardInterrupt.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await fake.start(host=args.host, port=args.port)
    try:
        # One parseable line on stdout, so a parent process started with --port 0 learns the URL.
        print(f"Fake Segmind listening on {fake.base_url}", flush=True)
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the fake until SIGINT/SIGTERM; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"fake-segmind: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0
