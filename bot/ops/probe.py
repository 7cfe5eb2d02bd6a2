"""`python -m bot.ops.probe`: the container health check (Dockerfile and docker-compose.yml).

Asks this machine's ops server for /healthz, with the bot's own settings; exits 0 on a 200,
else 1 with one line saying why (Docker keeps it in `docker inspect`'s health log). Only the
standard library's urllib: the slim image has no curl.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from bot.config import SettingsError, load_settings
from bot.ops.http import Path

TIMEOUT = 4.0  # under the HEALTHCHECK's --timeout, so the line below is what Docker shows
_ANY_ADDRESS = {"0.0.0.0", "::", ""}


def healthz_url(host: str, port: int) -> str:
    """Where to ask: a server bound to every address answers on loopback."""
    target = "127.0.0.1" if host in _ANY_ADDRESS else host
    shown = f"[{target}]" if ":" in target else target
    return f"http://{shown}:{port}{Path.HEALTHZ}"


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    if not settings.veo_http_port:
        print(
            "unhealthy: VEO_HTTP_PORT is not set, so there is no /healthz to ask", file=sys.stderr
        )
        return 1
    url = healthz_url(settings.veo_http_host, settings.veo_http_port)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:  # noqa: S310 (http only)
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
