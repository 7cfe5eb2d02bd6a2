"""The peer of bench/ack.py and bench/delivery.py: a bare discord.py bot with one `/veo`.

    python bench/bare_bot.py ack|deliver      (env as the bot's: DISCORD_*, SEGMIND_*)

`ack` only defers, as the bot's first act. `deliver` then does the least a bot can do with
the same fake and emulator: submit, poll, fetch the result, stream the video to a file and
attach it to the deferred message — no database, no quota, no progress edits. Whatever this
peer costs is the harness's (the emulator, the fake, discord.py, the machine), not the
bot's. Logs "logged in as" like the bot, so the same harness starts it.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import discord
import yarl
from discord import app_commands

POLL = 0.05  # the delivery bench's poll floor for the bot too
MODE = sys.argv[1] if len(sys.argv) > 1 else "ack"


def _first_url(output: Any) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return _first_url(output[0])
    if isinstance(output, dict):
        return _first_url(next(v for v in output.values() if isinstance(v, str | list | dict)))
    raise ValueError(f"no URL in {output!r}")


class Bare(discord.Client):
    def __init__(self) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        intents.guild_messages = True
        super().__init__(intents=intents, max_messages=None, chunk_guilds_at_startup=False)
        self.tree = app_commands.CommandTree(self)
        self.base = os.environ["SEGMIND_BASE_URL"]
        self.headers = {"x-api-key": os.environ["SEGMIND_API_KEY"]}
        self.work = Path(tempfile.mkdtemp(prefix="bare-peer-"))
        self.session: aiohttp.ClientSession | None = None

    async def setup_hook(self) -> None:
        self.session = aiohttp.ClientSession()

        @self.tree.command(name="veo", description="Make a video")
        async def veo(interaction: discord.Interaction, prompt: str, duration: int = 8) -> None:
            await interaction.response.defer(thinking=True)
            if MODE == "deliver":
                await self.deliver(interaction, prompt, duration)

        await self.tree.sync()

    async def deliver(self, interaction: discord.Interaction, prompt: str, duration: int) -> None:
        assert self.session is not None
        http, base, headers = self.session, self.base, self.headers
        body = {"prompt": prompt, "duration": duration}
        async with http.post(f"{base}/v2/veo-3-fast", json=body, headers=headers) as r:
            request_id = (await r.json())["request_id"]
        while True:
            async with http.get(f"{base}/v2/requests/{request_id}/status", headers=headers) as r:
                if (await r.json())["status"] in ("COMPLETED", "FAILED"):
                    break
            await asyncio.sleep(POLL)
        async with http.get(f"{base}/v2/requests/{request_id}", headers=headers) as r:
            url = _first_url((await r.json())["output"])
        path = self.work / f"{request_id}.mp4"
        async with http.get(url) as r:
            with path.open("wb") as out:
                async for chunk in r.content.iter_chunked(1 << 16):
                    out.write(chunk)
        # Named by Segmind's request id: the bench maps the upload to the fake's job by it.
        video = discord.File(path, filename=f"veo-{request_id}.mp4")
        await interaction.edit_original_response(content="ready", attachments=[video])
        path.unlink()

    async def on_ready(self) -> None:
        print(f"logged in as {self.user} (bare peer, {MODE})", flush=True)

    async def close(self) -> None:
        await super().close()
        if self.session is not None:
            await self.session.close()


def main() -> None:
    discord.http.Route.BASE = os.environ["DISCORD_API_BASE_URL"]
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(os.environ["DISCORD_GATEWAY_URL"])
    Bare().run(os.environ["DISCORD_TOKEN"], log_handler=None)


if __name__ == "__main__":
    main()
