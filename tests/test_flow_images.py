"""Which image a message offers to "Animate with Veo" and `@Veo` replies
(`bot.chat.intake.find_image`)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import discord
import pytest

from bot.chat.intake import find_image
from bot.chat.presenter import reply_without_image_hint
from bot.request import ImageSource


def _attachment(filename: str, content_type: str | None, size: int = 1234) -> discord.Attachment:
    data: dict[str, Any] = {
        "id": "1",
        "filename": filename,
        "size": size,
        "url": f"https://cdn.example/{filename}",
        "proxy_url": f"https://media.example/{filename}",
    }
    if content_type is not None:
        data["content_type"] = content_type
    state: Any = SimpleNamespace(http=None)
    return discord.Attachment(data=data, state=state)


def _message(attachments: list[discord.Attachment], embeds: list[dict[str, Any]]) -> Any:
    return SimpleNamespace(
        attachments=attachments, embeds=[discord.Embed.from_dict(e) for e in embeds]
    )


def test_first_image_attachment_wins_over_other_files_and_embeds() -> None:
    message = _message(
        [_attachment("notes.txt", "text/plain"), _attachment("cat.webp", "image/webp", 99)],
        [{"image": {"url": "https://x.example/a.png"}}],
    )
    assert find_image(message) == ImageSource("https://cdn.example/cat.webp", "image/webp", 99)


def test_a_gif_is_offered_so_the_check_can_say_why_not() -> None:
    found = find_image(_message([_attachment("spin.gif", "image/gif")], []))
    assert found is not None and found.content_type == "image/gif"


def test_without_a_content_type_the_name_decides() -> None:
    assert find_image(_message([_attachment("photo.JPG", None)], [])) is not None
    assert find_image(_message([_attachment("clip.mp4", None)], [])) is None


@pytest.mark.parametrize(
    ("embed", "expected"),
    [
        # A rich embed's image, through Discord's media proxy.
        (
            {"image": {"url": "https://x.example/a.png", "proxy_url": "https://proxy/a.png"}},
            "https://proxy/a.png",
        ),
        # A bare image link: Discord makes an "image" embed with the picture as thumbnail.
        (
            {
                "type": "image",
                "url": "https://x.example/b.jpg",
                "thumbnail": {"url": "https://x.example/b.jpg"},
            },
            "https://x.example/b.jpg",
        ),
    ],
)
def test_image_embeds(embed: dict[str, Any], expected: str) -> None:
    found = find_image(_message([], [embed]))
    assert found == ImageSource(expected)


def test_a_rich_embed_thumbnail_is_not_the_message_image() -> None:
    embed = {"type": "rich", "title": "link preview", "thumbnail": {"url": "https://x/icon.png"}}
    assert find_image(_message([_attachment("notes.txt", "text/plain")], [embed])) is None


def test_the_hint_is_one_line_and_names_the_setting_only_when_it_would_help() -> None:
    without = reply_without_image_hint(content_intent=False)
    with_intent = reply_without_image_hint(content_intent=True)
    assert "Animate with Veo" in without and "Animate with Veo" in with_intent
    assert "DISCORD_MESSAGE_CONTENT_INTENT" in without
    assert "DISCORD_MESSAGE_CONTENT_INTENT" not in with_intent
    assert "\n" not in without


def test_item12_a_forward_offers_the_image_of_its_snapshot() -> None:
    state: Any = SimpleNamespace(http=None)
    snapshot = discord.message.MessageSnapshot(
        state,
        {
            "type": 0,
            "content": "",
            "embeds": [],
            "attachments": [
                {
                    "id": "2",
                    "filename": "cat.png",
                    "size": 77,
                    "url": "https://cdn.example/cat.png",
                    "proxy_url": "https://media.example/cat.png",
                    "content_type": "image/png",
                }
            ],
            "timestamp": "2026-01-01T00:00:00+00:00",
            "edited_timestamp": None,
        },
    )
    forward = _message([], [])
    assert find_image(forward) is None
    forward.message_snapshots = [snapshot]
    assert find_image(forward) == ImageSource("https://cdn.example/cat.png", "image/png", 77)
