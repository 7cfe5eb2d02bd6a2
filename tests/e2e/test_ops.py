"""Operations end to end: the real bot process serves /healthz, /readyz and /metrics, and its
JSON logs, against the emulator and the fake."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.ops.metrics import DiscordTarget, Endpoint
from bot.segmind.fake import FakeSegmind
from bot.store import ALL_STATES
from harness.bot_process import FAKE_KEY, BotProcess, db_rows
from harness.discord_emulator import DiscordEmulator
from tests.e2e.helpers import final_for

OPS = {"VEO_HTTP_PORT": "0"}  # any free port; the bot logs the one it bound
PROMPT = "a quokka juggling tangerines on a glacier at dawn"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def _ops_url(bot: BotProcess) -> str:
    line = await bot.wait_for_log("ops HTTP listening on", timeout=60)
    found = re.search(r"http://[0-9.]+:\d+", line)
    assert found, line
    return found.group(0)


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def _readyz(url: str) -> tuple[int, dict[str, Any]]:
    status, text = await _get(url + "/readyz")
    return status, json.loads(text)


def _samples(text: str) -> Samples:
    """Every sample of a scrape, parsed by prometheus-client's own parser."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_readyz_is_503_while_the_gateway_is_down_and_200_once_connected(
    emu: DiscordEmulator, fake: FakeSegmind, tmp_path: Path
) -> None:
    # Down from the start: the bot logs in over REST, then its gateway connection hangs.
    # (A refusal here would end the process: discord.py cannot retry a failed first connect.)
    emu.hold_gateway()
    bot = BotProcess(emu, fake, tmp_path, OPS)
    await bot.launch()
    try:
        url = await _ops_url(bot)
        assert (await _get(url + "/healthz"))[0] == 200
        await emu.wait_for_held_gateway()
        status, body = await _readyz(url)
        assert status == 503 and body["ready"] is False
        assert body["checks"]["gateway"]["ok"] is False
        assert body["checks"]["database"]["ok"] is True
        assert body["checks"]["segmind"]["ok"] is True  # the idle bot asked the fake itself

        emu.release_gateway()
        await bot.wait_for_log("logged in as", timeout=30)
        status, body = await _readyz(url)
        assert (status, body["ready"]) == (200, True), body

        # A drop after READY: discord.py still says is_ready(), the bot must not.
        refused = emu.gateway_refusals
        await emu.refuse_gateway()
        await emu.wait_for_gateway_refusal(refused + 1)
        status, body = await _readyz(url)
        assert status == 503 and body["checks"]["gateway"]["ok"] is False
        emu.allow_gateway()
        await emu.wait_for_gateway(lambda f: f.event == "RESUMED", timeout=30)
        # An orchestrator polls readiness; so does this, until the bot has read the RESUMED.
        for _ in range(100):
            status, body = await _readyz(url)
            if status == 200:
                break
            await asyncio.sleep(0.05)
        assert status == 200, body
    finally:
        assert await bot.stop() == 0
    emu.assert_no_violations()


@pytest.mark.bot_env(OPS)
async def test_metrics_move_by_one_per_job_and_carry_no_prompt_name_or_secret(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    url = await _ops_url(bot)
    member = emu.add_user("quokka_keeper_4242", global_name="Quokka Keeper")
    emu.guild.add_member(member)
    status, text = await _get(url + "/metrics")
    assert status == 200
    before = _samples(text)
    # One 429 on the placeholder's edits (with Via, so discord.py retries it).
    emu.inject_rate_limit(
        "PATCH /webhooks/{application_id}/{interaction_token}/messages/{message_id}", times=1
    )

    handle = await emu.dispatch_slash_command("veo", {"prompt": PROMPT}, user=member)
    await handle.wait_for_callback()
    final = await final_for(emu, handle.token)
    assert final.files
    await bot.settled(1)
    status, text = await _get(url + "/metrics")
    after = _samples(text)

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert moved("veo_jobs_finished_total", state="delivered") == 1
    assert sum(moved("veo_jobs_finished_total", state=s) for s in ALL_STATES) == 1
    assert moved("veo_submits_total") == 1
    assert moved("veo_segmind_requests_total", endpoint="submit", status="200") == 1
    assert moved("veo_segmind_requests_total", endpoint="download", status="200") == 1
    assert moved("veo_job_duration_seconds_count", state="delivered") == 1
    assert moved("veo_poll_detection_lag_seconds_count") == 1
    ((charged,),) = db_rows(bot.workdir, "SELECT charged_amount FROM quota_ledger")
    assert moved("veo_spend_usd_total") == pytest.approx(float(charged))  # type: ignore[arg-type]
    assert not any(k[0] == "veo_refunds_total" and v for k, v in after.items())
    patches = [r for r in emu.timeline if r.method == "PATCH" and "/messages/" in r.route]
    edits = [r for r in patches if r.status not in (0, 429)]
    assert moved("veo_discord_edits_total", target="interaction") == len(edits) > 0
    assert moved("veo_discord_rate_limited_total", target="interaction") == 1
    assert len(emu.rate_limited) == 1
    assert _value(after, "veo_queue_length") == 0 and _value(after, "veo_jobs_in_flight") == 0

    for secret in (PROMPT, *PROMPT.split(), FAKE_KEY, emu.token, handle.token):
        if len(secret) > 3:
            assert secret not in text
    assert "quokka" not in text.lower() and "keeper" not in text.lower()
    # Every label value comes from a fixed set (or is an HTTP status / histogram bound).
    allowed = {*ALL_STATES, *Endpoint, *DiscordTarget, "error", "other"}
    for (_name, labels), _v in after.items():
        for key, value in labels:
            fixed = value in allowed or value.isdigit() or key == "le"
            assert fixed, (key, value)


@pytest.mark.bot_env({"VEO_LOG_FORMAT": "json"})
async def test_json_logs_are_one_object_per_line_with_the_job_id_and_no_secret(
    emu: DiscordEmulator, fake: FakeSegmind, bot: BotProcess
) -> None:
    handle = await emu.dispatch_slash_command("veo", {"prompt": "a json fox"}, user=emu.member)
    await handle.wait_for_callback()
    await final_for(emu, handle.token)
    await bot.settled(1)
    entries = [json.loads(line) for line in bot.lines if line.strip()]
    assert all({"time", "level", "logger", "message"} <= e.keys() for e in entries)
    ((job_id,),) = db_rows(bot.workdir, "SELECT id FROM jobs")
    about_job = [e for e in entries if e["message"].startswith(f"job {job_id} ")]
    assert about_job and all(e.get("job_id") == job_id for e in about_job)
    text = "\n".join(bot.lines)
    assert emu.token not in text and FAKE_KEY not in text


async def test_a_taken_port_stops_the_bot_with_one_line_naming_the_setting(
    emu: DiscordEmulator, fake: FakeSegmind, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        bot = BotProcess(emu, fake, tmp_path, {"VEO_HTTP_PORT": str(port)})
        await bot.launch()
        line = await bot.wait_for_log("cannot listen on", timeout=60)
        assert f"setting VEO_HTTP_PORT: cannot listen on 127.0.0.1:{port}" in line
        assert bot.proc is not None
        assert await asyncio.wait_for(bot.proc.wait(), 30) == 1
