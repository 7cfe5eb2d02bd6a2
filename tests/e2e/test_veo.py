"""`/veo` end to end: the real bot process, the real discord.py client, Discord's own spec."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from bot.segmind.fake import FakeSegmind, probe
from harness.bot_process import BotProcess
from harness.discord_emulator import DiscordEmulator, RequestRecord, StoredMessage

STAGES = ("Queued", "Generating", "Downloading", "Uploading", "ready")


def _stage(content: str) -> int | None:
    for index, word in enumerate(STAGES):
        if word in content.split("\n", 1)[0]:
            return index
    return None


def _bot_edits(emu: DiscordEmulator, token: str) -> list[RequestRecord]:
    return [
        r
        for r in emu.timeline
        if r.params.get("interaction_token") == token and r.method == "PATCH"
    ]


async def _final(emu: DiscordEmulator, token: str, timeout: float = 30.0) -> RequestRecord:  # noqa: ASYNC109
    return await emu.wait_for(
        lambda r: (
            r.params.get("interaction_token") == token
            and r.method == "PATCH"
            and r.status == 200
            and (
                "ready" in (r.json or {}).get("content", "")
                or "❌" in (r.json or {}).get("content", "")
            )
        ),
        timeout=timeout,
    )


async def _download(url: str) -> bytes:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return await response.read()


async def test_happy_path_defers_first_shows_progress_and_attaches_the_video(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    handle = await emu.dispatch_slash_command(
        "veo",
        {
            "prompt": "a red fox running through snow",
            "aspect": "9:16",
            "duration": 4,
            "audio": True,
        },
        user=emu.member,
    )
    callback = await handle.wait_for_callback()
    assert handle.callback_type == 5  # deferred, public
    assert not (callback.json or {}).get("data", {}).get("flags")  # not ephemeral

    final = await _final(emu, handle.token)
    # Defer came before anything else the bot did for this interaction, and its answer named
    # the placeholder: no extra request to look it up.
    first = min(handle.requests(), key=lambda r: r.index)
    assert first.route.startswith("POST /interactions/")
    assert not [r for r in handle.requests() if r.method == "GET"]

    # One Segmind job, with the options the member chose.
    assert len(fake.submits) == 1
    body = fake.submits[0]
    assert body["aspect_ratio"] == "9:16"
    assert body["duration"] == 4
    assert body["generate_audio"] is True
    assert body["prompt"] == "a red fox running through snow"
    assert body["seed"] > 0  # chosen by the bot so the message can report it

    # The video attached is byte for byte what Segmind served, and it plays.
    assert len(final.files) == 1
    video = final.files[0]
    assert video.filename.endswith(".mp4")
    job = next(iter(fake.jobs.values()))
    served = await _download(f"{fake.base_url}/_fake/outputs/{job.request_id}.mp4")
    assert video.data == served
    info = probe(__import__("io").BytesIO(video.data))
    assert info["video_codec"] == "h264"
    assert info["audio"]
    assert abs(info["duration"] - 4) < 0.5

    # The final text: who, what, the seed that was used, and the mention of the requester only.
    content = final.json["content"]
    assert f"<@{emu.member.id}>" in content
    assert f"seed {body['seed']}" in content
    assert "9:16" in content
    assert final.json["allowed_mentions"]["users"] in ([emu.member.id], [str(emu.member.id)])

    # Progress moved forward only, and the last edit is the final one.
    stages = [_stage((r.json or {}).get("content", "")) for r in _bot_edits(emu, handle.token)]
    stages = [s for s in stages if s is not None]
    assert stages == sorted(stages), stages
    assert stages[-1] == STAGES.index("ready")
    assert len(stages) >= 2  # at least one progress edit before the video


async def test_prompt_with_mentions_pings_nobody_but_the_requester(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    role = emu.moderator_role
    prompt = f"@everyone @here look <@&{role.id}> and <@{emu.owner.id}> **dance** ~~now~~"
    handle = await emu.dispatch_slash_command("veo", {"prompt": prompt}, user=emu.member)
    await handle.wait_for_callback()
    final = await _final(emu, handle.token)
    message: StoredMessage = handle.original_message()
    pinged = {getattr(u, "id", u) for u in message.mentions}
    assert pinged <= {emu.member.id}
    # Every request the bot sent with a body restricted mentions.
    for record in emu.timeline:
        body: Any = record.json
        if record.method in ("POST", "PATCH") and isinstance(body, dict) and "content" in body:
            mentions = body.get("allowed_mentions")
            assert mentions is not None, record.route
            assert mentions.get("parse", []) == []
            assert set(map(int, mentions.get("roles", []))) == set()
    assert "@everyone" not in final.json["content"].replace("@\u200beveryone", "")
    assert "\\*\\*dance\\*\\*" in final.json["content"]


@pytest.mark.bot_env({"VEO_USER_CONCURRENCY": "10", "VEO_USER_LIMIT": "10"})
async def test_too_large_for_the_guild_is_reencoded_to_fit(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    # 11 MiB of mostly padding: re-encoding drops it (the picture keeps its own bitrate).
    # Real high-bitrate videos and the link fallback: tests/e2e/test_delivery.py.
    handle = await emu.dispatch_slash_command(
        "veo", {"prompt": "a big one [fake:bigMB=11]"}, user=emu.member
    )
    await handle.wait_for_callback()
    final = await _final(emu, handle.token)
    assert len(final.files) == 1
    assert final.files[0].size <= 10 * 1024 * 1024
    assert "Re-encoded to fit this server's 10 MB upload limit" in final.json["content"]
    info = probe(__import__("io").BytesIO(final.files[0].data))
    assert info["video_codec"] == "h264"


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("[fake:block] something", "Veo declined this prompt"),
        ("[fake:fail] something", "Veo could not make this video"),
        ("[fake:credits] something", "credits ran out"),
    ],
)
async def test_each_failure_class_gets_its_message(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess, prompt: str, expected: str
) -> None:
    handle = await emu.dispatch_slash_command("veo", {"prompt": prompt}, user=emu.member)
    await handle.wait_for_callback()
    final = await _final(emu, handle.token)
    assert expected in final.json["content"]
    assert "Traceback" not in final.json["content"]
    await bot.wait_for_log("job 1")
