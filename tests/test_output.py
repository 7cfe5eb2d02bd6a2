"""`DiscordOutput` driven by a real `discord.Client` logged in to the Discord emulator.

Each job has a real placeholder: the test client answers a dispatched `/veo` with a public
"thinking…" defer, exactly as the bot does, so the interaction token, its age and the message
are Discord's own. What the member sees is read back from the emulator's messages and
timeline; every request is checked against Discord's OpenAPI spec."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import discord
import discord.gateway
import discord.http
import pytest
from discord import app_commands

from bot.chat.alerts import DiscordAlerts
from bot.chat.output import DiscordOutput
from bot.discrepancies import post_pending
from bot.jobs import DeliveryUnclear, Finished, delivery_checkpoint
from bot.params import VeoParams
from bot.quota import LimitDefaults
from bot.segmind.fake.video import VideoSpec, ensure_rendered, probe
from bot.store import Job, NewDiscrepancy, ReserveRequest, Store, open_store
from harness.discord_emulator import DiscordEmulator, point_discord_py_at
from harness.discord_emulator.world import Channel
from tests.lifecycle_support import MIB, WAIT, OutputUnavailable, Progress, Stage, make_output

WEBHOOK_EDIT = "PATCH /webhooks/{application_id}/{interaction_token}/messages/{message_id}"
CHANNEL_EDIT = "PATCH /channels/{channel_id}/messages/{message_id}"
CHANNEL_GET = "GET /channels/{channel_id}/messages/{message_id}"
CHANNEL_POST = "POST /channels/{channel_id}/messages"
HISTORY = "GET /channels/{channel_id}/messages"
OUTPUT_URL = "https://cdn.segmind.example/outputs/fox.mp4"
TOKEN_TOO_OLD = 14 * 60 + 30  # past the bot's own margin, inside Discord's 15 minutes
UNLIMITED = LimitDefaults(user_limit=1000, concurrency=1000)


class OutputClient(discord.Client):
    """The Discord side the output needs: a logged-in client whose `/veo` defers publicly."""

    def __init__(self) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        super().__init__(
            intents=intents,
            guild_ready_timeout=0.05,
            allowed_mentions=discord.AllowedMentions.none(),
            max_messages=None,
        )
        self.tree = app_commands.CommandTree(self)
        self.deferred: asyncio.Queue[tuple[discord.Interaction, int]] = asyncio.Queue()

        @app_commands.command(name="veo", description="Make a video from a prompt")
        async def veo(interaction: discord.Interaction, prompt: str) -> None:
            callback = await interaction.response.defer(thinking=True)
            assert callback is not None and callback.message_id is not None
            await self.deferred.put((interaction, callback.message_id))

        self.tree.add_command(veo)

    async def setup_hook(self) -> None:
        await self.tree.sync()


@pytest.fixture
async def emu() -> AsyncIterator[DiscordEmulator]:
    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    try:
        async with DiscordEmulator() as emulator:
            point_discord_py_at(emulator.api_base, emulator.gateway_url)
            yield emulator
    finally:
        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved


@pytest.fixture
def log_channel(emu: DiscordEmulator) -> Channel:
    """The moderators' log channel; made before login so the client knows it."""
    return emu.guild.add_text_channel("veo-log")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(tmp_path / "veo.sqlite3")
    yield opened
    await opened.close()


@pytest.fixture
async def client(emu: DiscordEmulator, log_channel: Channel) -> AsyncIterator[OutputClient]:
    made = OutputClient()
    await made.login(emu.token)
    task = asyncio.create_task(made.connect(reconnect=False))
    await asyncio.wait_for(made.wait_until_ready(), WAIT)
    await emu.wait_for_command("veo")
    yield made
    await made.close()
    await asyncio.wait_for(task, WAIT)


@pytest.fixture
def output(client: OutputClient, store: Store) -> DiscordOutput:
    return make_output(client, store)


@pytest.fixture(autouse=True)
def spec_clean(emu: DiscordEmulator) -> Any:
    yield
    emu.assert_no_violations()


async def a_job(
    emu: DiscordEmulator,
    client: OutputClient,
    store: Store,
    *,
    prompt: str = "a red fox in the snow",
    upload_limit: int | None = None,
    **fields: Any,
) -> Job:
    """A queued job behind a real deferred `/veo` placeholder; `fields` override the row."""
    handle = await emu.dispatch_slash_command("veo", {"prompt": prompt})
    interaction, message_id = await asyncio.wait_for(client.deferred.get(), WAIT)
    await handle.wait_for_callback()
    assert handle.original_message_id == message_id
    reserved = await store.reserve(
        ReserveRequest(
            guild_id=emu.guild.id,
            channel_id=emu.channel.id,
            user_id=emu.member.id,
            role_ids=(),
            params=VeoParams(prompt=prompt),
            now=time.time(),
            interaction_token=interaction.token,
            interaction_created_at=interaction.created_at.timestamp(),
            placeholder_channel_id=emu.channel.id,
            placeholder_message_id=message_id,
            upload_limit=upload_limit or interaction.filesize_limit,
        ),
        UNLIMITED,
    )
    assert not isinstance(reserved, Exception) and hasattr(reserved, "job_id")
    job = await store.get_job(reserved.job_id)
    assert job is not None
    return replace(job, output_url=OUTPUT_URL, **fields)


def finished(tmp_path: Path, job: Job, *, noise_mb: float | None = None) -> Finished:
    """The downloaded video, where the lifecycle leaves it."""
    rendered = ensure_rendered(VideoSpec("16:9", 4, 24, False, noise_mb=noise_mb))
    video = Path(shutil.copy(rendered, tmp_path / f"job-{job.id}.mp4"))
    size = video.stat().st_size
    return Finished(video=video, size=size, output_url=OUTPUT_URL, took=83.0, cost=0.6)


def routes(emu: DiscordEmulator, after: int = 0) -> list[tuple[str, int]]:
    """What the bot asked Discord after request #`after`, and what Discord answered."""
    return [(r.route, r.status) for r in emu.timeline if r.index >= after]


def mark(emu: DiscordEmulator) -> int:
    """The arrival number the next request will get (the timeline is in completion order)."""
    return max((r.index for r in emu.timeline), default=-1) + 1


async def deliver_recording_routes(
    output: DiscordOutput, job: Job, done: Finished
) -> tuple[Any, list[str]]:
    """Deliver as the lifecycle does, with its write-ahead hook recording each route tried."""
    tried: list[str] = []

    async def checkpoint(route: str) -> None:
        tried.append(route)

    async def run() -> Any:
        delivery_checkpoint.set(checkpoint)  # this task's context only, as in a job task
        return await output.deliver(job, done)

    return await asyncio.create_task(run()), tried


def the_video(emu: DiscordEmulator, message_id: int, job: Job, done: Finished) -> None:
    message = emu.message(message_id)
    assert message.attachment(f"veo-{job.id}.mp4").data == done.video.read_bytes()
    assert "Your video is ready" in message.content or "your video is ready" in message.content


# ---------------------------------------------------------------------------------- progress


async def test_progress_edits_are_throttled_and_the_newest_pending_text_wins(
    emu: DiscordEmulator, client: OutputClient, store: Store
) -> None:
    output = make_output(client, store, edit_interval=0.3)
    job = await a_job(emu, client, store)
    start = mark(emu)
    await output.progress(job, Progress(Stage.QUEUED, position=2))
    await output.progress(job, Progress(Stage.QUEUED, position=2))  # unchanged: not sent
    await output.progress(job, Progress(Stage.QUEUED, position=1))  # too soon: held...
    await output.progress(job, Progress(Stage.SUBMITTING))  # ...and replaced by the newest
    await emu.wait_for(
        lambda r: r.route == WEBHOOK_EDIT and "sending to Veo" in r.json["content"],
        after=start,
        timeout=WAIT,
    )
    edits = emu.requests(WEBHOOK_EDIT)
    assert [r.json["content"].splitlines()[0] for r in edits] == [
        "⏳ **Queued** — 2nd in line. It starts when a slot frees up.",
        "⏳ **Queued** — sending to Veo…",
    ]
    assert edits[1].received_at - edits[0].received_at >= 0.25
    assert all(r.auth == "none" for r in edits)  # the interaction token, not the bot's
    placeholder = emu.message(job.placeholder_message_id or 0)
    assert placeholder.content == edits[1].json["content"]
    assert "can no longer be cancelled" in placeholder.content
    assert placeholder.allowed_mentions == {"parse": []}


async def test_a_generating_job_is_not_edited_while_only_the_seconds_move(
    emu: DiscordEmulator, client: OutputClient, store: Store, output: DiscordOutput
) -> None:
    job = await a_job(emu, client, store)
    since = time.time()
    for elapsed in (1.0, 2.0, 3.0):
        await output.progress(
            job, Progress(Stage.GENERATING, elapsed=elapsed, estimate=80, since=since)
        )
    (edit,) = emu.requests(WEBHOOK_EDIT)
    assert f"started <t:{int(since)}:R>" in edit.json["content"]
    assert "about 1:20" in edit.json["content"]


async def test_cancel_is_offered_only_while_the_job_waits_in_the_queue(
    emu: DiscordEmulator,
    client: OutputClient,
    store: Store,
    output: DiscordOutput,
    tmp_path: Path,
) -> None:
    class Buttons:
        def queued(self, job: Job) -> discord.ui.View:
            view = discord.ui.View()
            view.add_item(discord.ui.Button(label="Cancel", custom_id=f"cancel:{job.id}"))
            return view

        def delivered(self, job: Job) -> discord.ui.View:
            view = discord.ui.View()
            view.add_item(discord.ui.Button(label="Again", custom_id=f"again:{job.id}"))
            return view

    output.components = Buttons()
    job = await a_job(emu, client, store)
    placeholder = emu.message(job.placeholder_message_id or 0)

    def buttons() -> list[str]:
        return [c["custom_id"] for row in placeholder.components for c in row["components"]]

    await output.progress(job, Progress(Stage.QUEUED, position=1))
    assert buttons() == [f"cancel:{job.id}"]
    await output.progress(job, Progress(Stage.SUBMITTING))
    assert buttons() == []
    await output.deliver(job, finished(tmp_path, job))
    assert buttons() == [f"again:{job.id}"]  # the video's own buttons


async def test_a_progress_edit_discord_refuses_does_not_stop_the_next_one(
    emu: DiscordEmulator, client: OutputClient, store: Store, output: DiscordOutput
) -> None:
    job = await a_job(emu, client, store)
    emu.inject_error(WEBHOOK_EDIT, 403, 50013, "Missing Permissions")
    await output.progress(job, Progress(Stage.QUEUED, position=1))  # refused: best effort
    await output.progress(job, Progress(Stage.SUBMITTING))
    assert [r.status for r in emu.requests(WEBHOOK_EDIT)] == [403, 200]
    assert "sending to Veo" in emu.message(job.placeholder_message_id or 0).content


async def test_a_progress_edit_waiting_for_its_turn_never_lands_on_the_video(
    emu: DiscordEmulator, client: OutputClient, store: Store, tmp_path: Path
) -> None:
    interval = 0.2
    output = make_output(client, store, edit_interval=interval)
    job = await a_job(emu, client, store)
    await output.progress(job, Progress(Stage.GENERATING, since=time.time()))
    await output.progress(job, Progress(Stage.DOWNLOADING))  # held for its turn
    receipt = await output.deliver(job, finished(tmp_path, job))
    # Past the moment the held edit was due: the video is still the last word.
    await asyncio.sleep(interval * 2)
    contents = [r.json["content"] for r in emu.requests(WEBHOOK_EDIT)]
    assert not any("Downloading" in c for c in contents)
    assert "Your video is ready" in emu.message(receipt.message_id).content


async def test_retire_waits_for_an_edit_in_flight_and_ends_progress(
    emu: DiscordEmulator, client: OutputClient, store: Store, output: DiscordOutput
) -> None:
    job = await a_job(emu, client, store)
    hold = emu.hold_requests(WEBHOOK_EDIT)
    editing = asyncio.create_task(output.progress(job, Progress(Stage.QUEUED, position=1)))
    await hold.arrived()
    retiring = asyncio.create_task(output.retire(job.id))
    await asyncio.sleep(0)  # let retire reach the job's lock
    assert not retiring.done()
    hold.release()
    await asyncio.wait_for(asyncio.gather(editing, retiring), WAIT)

    before = mark(emu)
    await output.progress(job, Progress(Stage.SUBMITTING))
    assert routes(emu, before) == []  # a retired job gets no more progress edits


# ---------------------------------------------------------------------------------- delivery


async def test_delivery_edits_the_placeholder_through_the_interaction_token(
    emu: DiscordEmulator, client: OutputClient, store: Store, tmp_path: Path
) -> None:
    output = make_output(client, store, mention_on_ready=True)
    image = emu.add_cdn_file("fox.png", b"\x89PNG\r\n\x1a\n" + b"0" * 64, "image/png")
    job = await a_job(emu, client, store, image_url=image)
    done = finished(tmp_path, job)
    receipt, tried = await deliver_recording_routes(output, job, done)

    assert (receipt.method, receipt.message_id) == ("interaction", job.placeholder_message_id)
    assert tried == ["interaction"]
    the_video(emu, receipt.message_id, job, done)
    message = emu.message(receipt.message_id)
    assert [u.id for u in message.mentions] == [emu.member.id]  # the requester, nobody else
    assert "took 1:23" in message.content and "cost $0.60" in message.content
    assert message.embeds[0]["thumbnail"]["url"] == image
    (edit,) = emu.requests(WEBHOOK_EDIT)
    assert edit.auth == "none"
    assert not (tmp_path / f"job-{job.id}.fit.mp4").exists()


async def test_a_token_too_old_to_trust_edits_the_placeholder_with_the_bot_token(
    emu: DiscordEmulator, client: OutputClient, store: Store, tmp_path: Path
) -> None:
    later = make_output(client, store, clock=lambda: time.time() + TOKEN_TOO_OLD)
    job = await a_job(emu, client, store)
    done = finished(tmp_path, job)
    start = mark(emu)
    receipt, tried = await deliver_recording_routes(later, job, done)

    assert (receipt.method, receipt.message_id) == ("channel-edit", job.placeholder_message_id)
    assert tried == ["channel-edit"]
    assert routes(emu, start) == [(CHANNEL_EDIT, 200)]  # the token was not even tried
    assert emu.requests(CHANNEL_EDIT)[0].auth == "Bot"
    the_video(emu, receipt.message_id, job, done)


async def test_a_token_discord_already_expired_falls_back_to_the_bot_token(
    emu: DiscordEmulator,
    client: OutputClient,
    store: Store,
    output: DiscordOutput,
    tmp_path: Path,
) -> None:
    job = await a_job(emu, client, store)
    done = finished(tmp_path, job)
    emu.advance(15 * 60 + 1)  # Discord's clock says the token is dead; ours does not know yet
    start = mark(emu)
    receipt, _ = await deliver_recording_routes(output, job, done)

    assert receipt.method == "channel-edit"
    assert routes(emu, start) == [(WEBHOOK_EDIT, 401), (CHANNEL_EDIT, 200)]
    # The file went again with the second request (discord.py closes a File once sent).
    the_video(emu, receipt.message_id, job, done)


async def test_a_deleted_placeholder_gets_a_new_channel_post_with_a_nonce(
    emu: DiscordEmulator,
    client: OutputClient,
    store: Store,
    output: DiscordOutput,
    tmp_path: Path,
) -> None:
    job = await a_job(emu, client, store)
    done = finished(tmp_path, job)
    await emu.delete_message(emu.channel.id, job.placeholder_message_id or 0)
    start = mark(emu)
    receipt, tried = await deliver_recording_routes(output, job, done)

    assert receipt.method == "channel-post" and receipt.message_id != job.placeholder_message_id
    assert tried == ["interaction", "channel-post"]
    assert routes(emu, start) == [(WEBHOOK_EDIT, 404), (CHANNEL_POST, 200)]
    post = emu.requests(CHANNEL_POST)[0]
    assert post.json["nonce"] == f"veo-{job.id}" and post.json["enforce_nonce"] is True
    the_video(emu, receipt.message_id, job, done)

    # After a restart, the channel's history shows where it went.
    found = await output.find_delivery(replace(job, delivery_method="channel-post"))
    assert found is not None
    assert (found.method, found.message_id) == ("channel-post", receipt.message_id)


async def test_a_placeholder_refused_with_403_gets_a_channel_post(
    emu: DiscordEmulator,
    client: OutputClient,
    store: Store,
    output: DiscordOutput,
    tmp_path: Path,
) -> None:
    job = await a_job(emu, client, store)
    done = finished(tmp_path, job)
    emu.inject_error(WEBHOOK_EDIT, 403, 50001, "Missing Access")
    receipt, tried = await deliver_recording_routes(output, job, done)

    assert receipt.method == "channel-post"
    assert tried == ["interaction", "channel-post"]
    the_video(emu, receipt.message_id, job, done)


async def test_a_channel_that_refuses_the_bot_gets_the_video_by_dm(
    emu: DiscordEmulator, client: OutputClient, store: Store, tmp_path: Path
) -> None:
    later = make_output(client, store, clock=lambda: time.time() + TOKEN_TOO_OLD)
    job = await a_job(emu, client, store)
    done = finished(tmp_path, job)
    emu.deny_channel(emu.channel.id, 50001)
    receipt, tried = await deliver_recording_routes(later, job, done)

    assert receipt.method == "dm"
    assert tried == ["channel-edit", "channel-post", "dm"]
    dm = emu.dm_channel(emu.member)
    (message,) = emu.channel_messages(dm.id)
    assert message.id == receipt.message_id
    the_video(emu, receipt.message_id, job, done)
    post = emu.requests(CHANNEL_POST)[-1]
    assert post.json["nonce"] == f"veo-{job.id}-dm"

    # After a restart: the channel cannot be read, the DM shows the video.
    found = await later.find_delivery(replace(job, delivery_method="dm"))
    assert found is not None
    assert (found.method, found.message_id) == ("dm", receipt.message_id)


async def test_a_file_discord_refuses_as_too_large_goes_as_a_link(
    emu: DiscordEmulator,
    client: OutputClient,
    store: Store,
    output: DiscordOutput,
    tmp_path: Path,
) -> None:
    # The job was accepted with a boosted limit; the guild lost its boost since.
    job = await a_job(emu, client, store, upload_limit=50 * MIB)
    done = finished(tmp_path, job)
    emu.guild.upload_limit = done.size // 2
    start = mark(emu)
    receipt, _ = await deliver_recording_routes(output, job, done)

    assert receipt.method == "interaction"
    assert routes(emu, start) == [(WEBHOOK_EDIT, 413), (WEBHOOK_EDIT, 200)]
    message = emu.message(receipt.message_id)
    assert message.attachments == []
    assert f"<{OUTPUT_URL}>" in message.content and "Discord refused the file" in message.content

    found = await output.find_delivery(replace(job, delivery_method="interaction"))
    assert found is not None and found.method == "interaction"


async def test_a_video_over_the_limit_is_re_encoded_to_fit(
    emu: DiscordEmulator,
    client: OutputClient,
    store: Store,
    output: DiscordOutput,
    tmp_path: Path,
) -> None:
    job = await a_job(emu, client, store, upload_limit=MIB)
    done = finished(tmp_path, job, noise_mb=2)
    assert done.size > MIB
    receipt, _ = await deliver_recording_routes(output, job, done)

    edits = emu.requests(WEBHOOK_EDIT)
    assert "Re-encoding" in edits[0].json["content"]  # the member saw why it takes longer
    message = emu.message(receipt.message_id)
    attachment = message.attachment(f"veo-{job.id}.mp4")
    assert attachment.size <= MIB
    assert "Re-encoded to fit" in message.content
    fitted = tmp_path / "fitted.mp4"
    fitted.write_bytes(attachment.data)
    assert probe(fitted)["video_codec"] == "h264"
    # The encode is kept beside the video for a retry of the delivery (the lifecycle removes
    # both when the job ends), and it is the very file that was uploaded.
    kept = tmp_path / f"job-{job.id}.fit.mp4"
    assert kept.read_bytes() == attachment.data


async def test_a_guild_on_another_nodes_shard_gets_the_limit_stored_with_its_job(
    emu: DiscordEmulator,
    client: OutputClient,
    store: Store,
    output: DiscordOutput,
    tmp_path: Path,
) -> None:
    """The runner may not hold the guild in its cache (another node runs that guild's shard)
    and the interaction token may be past use: the upload limit recorded when the job was
    accepted decides, not a default the runner would guess."""
    job = await a_job(
        emu,
        client,
        store,
        upload_limit=MIB,
        guild_id=emu.new_id(),  # a guild this client never received
        interaction_created_at=time.time() - 3600,  # the token is of no use any more
    )
    assert client.get_guild(job.guild_id) is None
    done = finished(tmp_path, job, noise_mb=2)
    assert done.size > MIB
    receipt, _ = await deliver_recording_routes(output, job, done)

    assert receipt.method != "interaction"  # delivered with the bot token
    attachment = emu.message(receipt.message_id).attachment(f"veo-{job.id}.mp4")
    assert attachment.size <= MIB  # fitted to the stored limit, not Discord's 10 MiB default


async def test_a_job_without_a_placeholder_is_posted_in_its_channel(
    emu: DiscordEmulator,
    client: OutputClient,
    store: Store,
    output: DiscordOutput,
    tmp_path: Path,
) -> None:
    job = await a_job(emu, client, store, placeholder_message_id=None, interaction_token=None)
    done = finished(tmp_path, job)
    receipt, tried = await deliver_recording_routes(output, job, done)
    assert receipt.method == "channel-post" and tried == ["channel-post"]
    the_video(emu, receipt.message_id, job, done)


@pytest.mark.parametrize(
    "trouble",
    [
        pytest.param("cut", id="connection-cut"),
        pytest.param("503", id="server-error"),
    ],
)
async def test_transient_discord_trouble_is_reported_as_retryable(
    emu: DiscordEmulator,
    client: OutputClient,
    store: Store,
    output: DiscordOutput,
    tmp_path: Path,
    trouble: str,
) -> None:
    job = await a_job(emu, client, store, interaction_token=None)
    done = finished(tmp_path, job)
    if trouble == "cut":
        hold = emu.hold_requests(CHANNEL_EDIT)
        delivering = asyncio.create_task(output.deliver(job, done))
        await hold.arrived()
        hold.drop()
    else:
        emu.inject_error(CHANNEL_EDIT, 503, 0, "Service Unavailable")
        delivering = asyncio.create_task(output.deliver(job, done))
    with pytest.raises(OutputUnavailable):
        await asyncio.wait_for(delivering, WAIT)
    assert emu.requests(CHANNEL_POST) == []  # no fallback post: the edit may yet have landed


# ------------------------------------------------------------------------- finding a delivery


async def test_find_delivery_sees_the_video_on_the_placeholder(
    emu: DiscordEmulator, client: OutputClient, store: Store, tmp_path: Path
) -> None:
    output = make_output(client, store)
    job = await a_job(emu, client, store)
    receipt, _ = await deliver_recording_routes(output, job, finished(tmp_path, job))

    through_token = await output.find_delivery(replace(job, delivery_method="interaction"))
    assert through_token is not None
    assert (through_token.method, through_token.message_id) == ("interaction", receipt.message_id)

    # A restart long after: the token is dead, the bot token reads the placeholder.
    later = make_output(client, store, clock=lambda: time.time() + 3600)
    start = mark(emu)
    found = await later.find_delivery(replace(job, delivery_method=None))
    assert found is not None
    assert (found.method, found.message_id) == ("channel-edit", receipt.message_id)
    assert routes(emu, start) == [(CHANNEL_GET, 200)]


async def test_find_delivery_reports_nothing_when_no_video_of_ours_is_there(
    emu: DiscordEmulator,
    client: OutputClient,
    store: Store,
    output: DiscordOutput,
) -> None:
    job = await a_job(emu, client, store)
    await output.progress(job, Progress(Stage.UPLOADING))
    # A member's message carrying a file of the same name is not our delivery.
    lookalike = emu.add_cdn_file(f"veo-{job.id}.mp4", b"\x00\x00\x00\x18ftypmp42", "video/mp4")
    await emu.post_user_message(emu.channel.id, "look", attachments=[lookalike])

    assert await output.find_delivery(replace(job, delivery_method="channel-post")) is None
    assert await output.find_delivery(replace(job, delivery_method="dm")) is None
    assert emu.requests(HISTORY)  # it did look through the channel


async def test_find_delivery_of_a_deleted_placeholder_cannot_tell(
    emu: DiscordEmulator, client: OutputClient, store: Store, output: DiscordOutput
) -> None:
    # The placeholder may have carried the video before it was deleted: the bot cannot tell,
    # so it must not treat the job as undelivered (that would refund a video that landed).
    job = await a_job(emu, client, store)
    await emu.delete_message(emu.channel.id, job.placeholder_message_id or 0)
    with pytest.raises(DeliveryUnclear):
        await output.find_delivery(replace(job, delivery_method="placeholder"))


async def test_find_delivery_raises_when_discord_cannot_answer(
    emu: DiscordEmulator, client: OutputClient, store: Store
) -> None:
    later = make_output(client, store, clock=lambda: time.time() + 3600)
    job = await a_job(emu, client, store)
    emu.inject_error(CHANNEL_GET, 503, 0, "Service Unavailable")
    with pytest.raises(discord.DiscordServerError):
        await later.find_delivery(job)


# --------------------------------------------------------------------------------- endings


async def test_failed_replaces_the_placeholder_with_the_reason(
    emu: DiscordEmulator, client: OutputClient, store: Store, output: DiscordOutput
) -> None:
    job = await a_job(emu, client, store, prompt="a fox @everyone")
    await output.progress(job, Progress(Stage.QUEUED, position=1))
    await output.failed(job, "Veo declined this prompt: unsafe. This does not count.")

    message = emu.message(job.placeholder_message_id or 0)
    assert message.content.startswith("❌ Veo declined this prompt: unsafe.")
    assert message.content.endswith(f"-# job {job.id}")
    assert message.components == [] and message.attachments == []
    assert message.mentions == [] and not message.mention_everyone
    # No late progress edit lands on top of the final word.
    await output.progress(job, Progress(Stage.GENERATING))
    assert emu.message(job.placeholder_message_id or 0).content == message.content


async def test_finished_posts_the_outcome_to_the_log_channel(
    emu: DiscordEmulator,
    client: OutputClient,
    store: Store,
    output: DiscordOutput,
    log_channel: Channel,
) -> None:
    job = await a_job(emu, client, store)
    start = mark(emu)
    await output.finished(job)
    assert routes(emu, start) == []  # no log channel set: nothing posted

    await store.set_log_channel(emu.guild.id, log_channel.id, actor_id=emu.moderator.id)
    await output.finished(replace(job, state="delivered"))
    (line,) = emu.channel_messages(log_channel.id)
    assert f"`#{job.id}`" in line.content and "**delivered**" in line.content
    assert line.mentions == []  # the requester is named, not pinged

    emu.deny_channel(log_channel.id, 50013)
    await output.finished(replace(job, state="failed"))  # refused: logged, never raised
    assert len(emu.channel_messages(log_channel.id)) == 1


async def test_a_discrepancy_is_posted_once_to_the_log_channels_that_concern_it(
    emu: DiscordEmulator, client: OutputClient, store: Store, log_channel: Channel
) -> None:
    alerts = DiscordAlerts(client, log_channel=store.get_log_channel)
    job = await a_job(emu, client, store)
    await store.record_discrepancy(
        NewDiscrepancy(
            "billed_but_refunded", "rq-1", job_id=job.id, guild_id=emu.guild.id, billed=0.8
        )
    )
    assert await post_pending(store, alerts) == 0  # no log channel yet: kept for later
    assert len(await store.unposted_discrepancies()) == 1

    await store.set_log_channel(emu.guild.id, log_channel.id, actor_id=emu.moderator.id)
    # A billed request no job made concerns every guild's moderators.
    await store.record_discrepancy(NewDiscrepancy("unknown_request", "rq-9", billed=1.2))
    assert await post_pending(store, alerts) == 2
    assert await post_pending(store, alerts) == 0  # never twice
    first, second = emu.channel_messages(log_channel.id)
    assert f"job {job.id}" in first.content and "$0.80" in first.content
    assert "refunded" in first.content
    assert "`rq-9`" in second.content and "no job of this bot" in second.content
    assert first.mentions == [] and second.mentions == []
