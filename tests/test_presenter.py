"""What members read: prompts echoed safely, progress that says where the job is."""

from __future__ import annotations

import re

from bot.chat.presenter import (
    CONTENT_LIMIT,
    Delivered,
    failure_text,
    final_text,
    ordinal,
    progress_text,
    quote_line,
    safe_prompt,
)
from bot.params import VeoParams
from bot.pricing import Quote
from bot.progress import Progress, Stage

PINGS = (
    "hey @everyone and @here, <@&123456789012345678> <@123456789012345678> <@!123456789012345678>"
)


def _would_ping(text: str) -> bool:
    return bool(re.search(r"@(everyone|here)\b|<@[!&]?\d+>", text))


def test_prompt_mentions_are_neutralised() -> None:
    assert not _would_ping(safe_prompt(PINGS))


def test_final_message_mentions_only_the_requester() -> None:
    text = final_text(
        Delivered(
            VeoParams(prompt=PINGS, seed=7), took=80, cost=0.6, attached=True, mention_user_id=42
        )
    )
    assert re.findall(r"<@!?&?\d+>", text) == ["<@42>"]
    assert "@everyone" not in text.replace("@\u200beveryone", "")


def test_markdown_in_prompt_cannot_break_the_message() -> None:
    prompt = (
        "**bold** __u__ ~~s~~ ||spoiler|| `code` ```block``` [link](http://x) "
        "\n# Header\n-# tiny\n> q"
    )
    shown = safe_prompt(prompt)
    for line in shown.splitlines():
        assert line.startswith("> ")
    assert "**bold**" not in shown and "\\*\\*bold\\*\\*" in shown
    assert "```" not in shown
    assert "> \\# Header" in shown and "> \\-# tiny" in shown


def test_long_prompt_keeps_message_under_discord_limit() -> None:
    params = VeoParams(prompt="x" * 4000)
    for stage in Stage:
        assert len(progress_text(params, Progress(stage, 10, 80, position=3))) <= CONTENT_LIMIT
    done = Delivered(params, took=1, cost=None, attached=False, link="https://e/x.mp4" + "a" * 300)
    assert len(final_text(done)) <= CONTENT_LIMIT
    assert len(failure_text(params, "bad " * 600)) <= CONTENT_LIMIT


def test_progress_says_where_the_job_is() -> None:
    params = VeoParams(prompt="a cat")
    assert "3rd in line" in progress_text(params, Progress(Stage.QUEUED, position=3))
    generating = progress_text(params, Progress(Stage.GENERATING, elapsed=42, estimate=78))
    assert "Generating" in generating and "0:42" in generating and "1:20" in generating


def test_final_message_reports_parameters_seed_time_cost_and_demo() -> None:
    params = VeoParams(prompt="a cat", aspect_ratio="9:16", duration=6, seed=1234)
    text = final_text(Delivered(params, took=95, cost=0.75, attached=True, demo=True))
    assert "9:16" in text and "6 s" in text and "seed 1234" in text
    assert "1:35" in text and "$0.75" in text
    assert "test clip" in text


def test_link_line_says_why() -> None:
    params = VeoParams(prompt="a cat")
    text = final_text(
        Delivered(
            params,
            took=1,
            cost=None,
            attached=False,
            link="https://cdn/x.mp4",
            link_reason="Too big for this server.",
        )
    )
    assert "Too big for this server." in text and "<https://cdn/x.mp4>" in text


def test_generating_text_stays_the_same_while_discord_counts_the_time() -> None:
    params = VeoParams(prompt="a cat")
    first = progress_text(params, Progress(Stage.GENERATING, 5, 81.0, since=1_700_000_000))
    later = progress_text(params, Progress(Stage.GENERATING, 65, 83.9, since=1_700_000_000))
    assert first == later  # no edit needed: the client renders <t:…:R> live
    assert "started <t:1700000000:R>" in first
    assert "about 1:20" in first


def test_ordinals() -> None:
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111)] == [
        "1st",
        "2nd",
        "3rd",
        "4th",
        "11th",
        "12th",
        "13th",
        "21st",
        "22nd",
        "101st",
        "111th",
    ]


SEGMIND_SAYS = "Blocked: **policy** `x` <@123456789012345678> @everyone _see_ ~~this~~"


def test_hardening_13_segmind_error_text_is_escaped_in_the_message() -> None:
    """Segmind's error text is not ours: it can neither ping nor format the failure message."""
    text = failure_text(
        VeoParams(prompt="a cat", seed=7), f"Veo declined this prompt: {SEGMIND_SAYS}"
    )
    head = text.split("\n", 1)[0]
    assert not _would_ping(head)
    assert "**policy**" not in head and "\\*\\*policy\\*\\*" in head
    assert "~~this~~" not in head and "`x`" not in head


def test_hardening_13_segmind_error_text_is_escaped_in_the_log_channel() -> None:
    from bot.chat.reports import log_line
    from bot.store import Job

    fields: dict[str, object] = dict.fromkeys(Job.__dataclass_fields__)
    fields.update(
        id=7,
        guild_id=1,
        channel_id=2,
        user_id=3,
        prompt="a cat",
        params_json="{}",
        state="failed",
        queue_seq=1,
        created_at=0.0,
        updated_at=0.0,
        error=f"Veo declined this prompt: {SEGMIND_SAYS}",
    )
    line = log_line(Job(**fields))  # type: ignore[arg-type]
    error = line.split(" — ", 1)[1]
    assert not _would_ping(error)
    assert "**policy**" not in error and "~~this~~" not in error
    assert line.startswith("❌ `#7` <@3> **failed**")  # our own markup stays


def test_the_placeholder_shows_what_the_video_is_counted_at() -> None:
    params = VeoParams(prompt="a cat")
    queued = Progress(Stage.QUEUED, position=1)
    published = progress_text(params, queued, quote=Quote(1.2, "published"))
    assert "≈ $1.20, the most Segmind bills for these options" in published
    observed = progress_text(params, queued, quote=Quote(0.8, "observed", samples=5))
    assert "about $0.80, from the last 5 videos with these options" in observed
    assert "from the last video with" in quote_line(Quote(0.8, "observed", samples=1))
    assert "similar options" in quote_line(Quote(0.9, "inferred"))
    # Demo mode bills nothing, so no price is shown.
    demo = progress_text(params, queued, demo=True, quote=Quote(1.2, "published"))
    assert "$" not in demo and "Demo mode" in demo
    long = progress_text(VeoParams(prompt="x" * 900), queued, quote=Quote(1.2, "published"))
    assert len(long) <= CONTENT_LIMIT
