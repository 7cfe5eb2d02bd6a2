"""`python -m bot`: settings → logging → (demo Segmind fake) → the bot, until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

import discord
import yarl

from bot.config import Settings, SettingsError, load_settings, require_discord_token
from bot.database_url import password_of
from bot.logs import setup_logging

log = logging.getLogger("bot")


def point_discord_at(settings: Settings) -> None:
    """Send REST and gateway traffic where the settings say (a proxy, or the test emulator).

    discord.py reads both from class attributes; they are set before login so every request,
    including the login itself, goes there.
    """
    discord.http.Route.BASE = settings.discord_api_base_url
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


def main_run(argv: list[str]) -> int:
    if argv:
        print(f"`python -m bot` takes no arguments (got {' '.join(argv)!r})", file=sys.stderr)
        return 2
    try:
        settings = load_settings()
        token = require_discord_token(settings)
    except SettingsError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 2
    secrets = [token]
    if settings.segmind_api_key is not None:
        secrets.append(settings.segmind_api_key.get_secret_value())
    database_password = password_of(settings.database_url)
    if database_password:
        secrets.append(database_password)
    setup_logging(secrets, log_format=settings.veo_log_format)
    point_discord_at(settings)
    try:
        return asyncio.run(_serve(settings, token))
    except KeyboardInterrupt:
        return 0


async def _serve(settings: Settings, token: str) -> int:
    from bot.chat.app import make_bot

    bot = make_bot(settings)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def request_stop(signame: str) -> None:
        if not stopping.is_set():
            bot.stop_accepting()
            log.info("%s received: finishing up and shutting down", signame)
            stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(sig, request_stop, sig.name)

    async with bot:
        runner = asyncio.create_task(bot.start(token), name="discord-client")
        stopper = asyncio.create_task(stopping.wait(), name="stop-signal")
        done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if runner in done:
            stopper.cancel()
            exc = runner.exception()
            if isinstance(exc, discord.LoginFailure):
                log.error("Discord refused the token: check DISCORD_TOKEN")
                return 2
            if exc is not None:
                log.error("the bot stopped: %s", exc, exc_info=exc)
                return 1
            return 0
        await bot.close()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    return 0
