"""The operations HTTP server, on the bot's own event loop: /healthz, /readyz, /metrics.

Because it shares the loop with the bot, /healthz answering at all proves the loop is not
stuck, which is what a container runtime's health check needs to know.
"""

from __future__ import annotations

import json
import logging
from enum import StrEnum

from aiohttp import web

from bot.ops.health import Readiness
from bot.ops.metrics import CONTENT_TYPE, Metrics, Sampled

log = logging.getLogger(__name__)


class Path(StrEnum):
    HEALTHZ = "/healthz"
    READYZ = "/readyz"
    METRICS = "/metrics"


def _json(body: object, status: int) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json")


class OpsServer:
    """Serves the three routes on `host:port` (port 0: any free one, see `url`)."""

    def __init__(self, readiness: Readiness, metrics: Metrics, store: Sampled | None) -> None:
        self._readiness = readiness
        self._metrics = metrics
        self._store = store
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(Path.HEALTHZ, self._healthz)
        app.router.add_get(Path.READYZ, self._readyz)
        app.router.add_get(Path.METRICS, self._metrics_page)
        return app

    async def start(self, host: str, port: int) -> str:
        # No access log: an orchestrator asking every few seconds would drown the bot's lines.
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        addresses = self._runner.addresses
        bound = int(addresses[0][1]) if addresses else port
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound}"
        log.info("ops HTTP listening on %s (/healthz, /readyz, /metrics)", self.url)
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _request: web.Request) -> web.Response:
        return _json({"ok": True}, 200)

    async def _readyz(self, _request: web.Request) -> web.Response:
        report = await self._readiness.report()
        return _json(report.body(), 200 if report.ready else 503)

    async def _metrics_page(self, _request: web.Request) -> web.Response:
        body = await self._metrics.render(self._store)
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE
        return response
