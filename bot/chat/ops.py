"""The Discord side of operations: wires the bot's gateway, store and Segmind client into the
readiness checks and, when `VEO_HTTP_PORT` is set, the ops HTTP server."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from discord.ext import commands

from bot.config import Settings, SettingsError
from bot.ops.health import GatewayWatch, Readiness
from bot.ops.http import OpsServer
from bot.ops.metrics import Metrics
from bot.segmind.client import SegmindClient
from bot.store import Store

log = logging.getLogger(__name__)


async def start_ops(
    bot: commands.Bot,
    *,
    settings: Settings,
    metrics: Metrics,
    watch: GatewayWatch,
    store: Store,
    segmind: SegmindClient,
    runner_role: Callable[[], str] | None = None,
) -> OpsServer | None:
    """Follow the gateway, probe the event loop, and serve HTTP if a port is configured."""
    # READY and RESUMED mean connected; discord.py dispatches `disconnect` on every drop.
    bot.add_listener(_on(watch.up), "on_connect")
    bot.add_listener(_on(watch.up), "on_resumed")
    bot.add_listener(_on(watch.down), "on_disconnect")
    metrics.start_loop_probe()
    port = settings.veo_http_port
    if port is None:
        return None
    readiness = Readiness(
        bot,
        watch,
        db_ping=store.ping,
        segmind_answered_at=lambda: metrics.segmind_last_answer,
        probe_segmind=segmind.credits,
        runner_role=runner_role,
    )
    server = OpsServer(readiness, metrics, store)
    host = settings.veo_http_host
    try:
        await server.start(host, port)
    except OSError as exc:
        # Stop with one line naming the setting: a bot whose health check cannot be served
        # would be restarted by its container runtime forever.
        raise SettingsError(
            f"setting VEO_HTTP_PORT: cannot listen on {host}:{port} ({exc.strerror or exc})"
        ) from None
    return server


async def stop_ops(server: OpsServer | None, metrics: Metrics) -> None:
    """Stop serving and probing (either may never have started)."""
    if server is not None:
        await server.stop()
    await metrics.stop_loop_probe()


def _on(action: Callable[[], None]) -> Callable[..., Coroutine[Any, Any, None]]:
    """A discord.py listener (a coroutine function) that runs a plain call."""

    async def listener(*_args: object) -> None:
        action()

    return listener
