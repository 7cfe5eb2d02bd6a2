"""Checks an input image before anything is reserved or sent to Segmind.

Only the head of the file is fetched (a Range request): enough to tell PNG, JPEG and WebP apart
by their magic bytes — whatever the name or the declared content type says — and to read the
picture's size, so the aspect ratio can follow the image when the member did not choose one.

Only Discord's own hosts are fetched (an allow-list, `VEO_IMAGE_HOSTS`), and no redirect is
followed: a member's link must never make the bot request an internal address or another site,
and whatever else a member points at gets one sentence, `ONLY_DISCORD`, nothing about what the
far end answered.
"""

from __future__ import annotations

import logging
import math
import re
import struct
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from bot.params import Aspect

log = logging.getLogger(__name__)

HEAD_BYTES = 64 * 1024  # JPEG can put its size after large EXIF blocks; 64 KiB covers most
ACCEPTED = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
# Discord's CDN (attachments), its media proxy (resized attachments) and its external-image
# proxies (the `proxy_url` of an embed's image). Each seen in real attachment/embed URLs.
DEFAULT_IMAGE_HOSTS: tuple[str, ...] = (
    "cdn.discordapp.com",
    "media.discordapp.net",
    "images-ext-1.discordapp.net",
    "images-ext-2.discordapp.net",
)
ONLY_DISCORD = "I can only animate images uploaded to Discord."
_MEDIA_TYPE = re.compile(r"^[\w.+-]{1,40}/[\w.+-]{1,60}$")


class ImageRejected(ValueError):
    """The image cannot be used; the message says why in words a member understands."""


def is_allowed_image_url(url: str, hosts: Collection[str]) -> bool:
    """Whether the bot may fetch `url`: http(s), no credentials, its host on the allow-list.

    An address (127.0.0.1, 10.x, 169.254.x) is fetched only when it is itself listed, as the
    test emulator's is."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.username or parts.password:
        return False
    host = (parts.hostname or "").rstrip(".").lower()
    return bool(host) and host in {h.strip().strip("[]").rstrip(".").lower() for h in hosts}


@dataclass(frozen=True)
class ImageInfo:
    url: str
    kind: str  # "png" | "jpeg" | "webp"
    size: int | None  # bytes, when the server said
    width: int | None
    height: int | None

    def closest_aspect(self) -> Aspect | None:
        if not self.width or not self.height:
            return None
        ratio = self.width / self.height
        # Compare on a log scale so 2:1 is as far from 1:1 as 1:2 is.
        return min(Aspect, key=lambda a: abs(math.log(a.ratio) - math.log(ratio)))


def sniff(head: bytes) -> str | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def dimensions(kind: str, head: bytes) -> tuple[int, int] | None:
    """Width and height from the header, or None when the head is too short to tell."""
    try:
        if kind == "png" and len(head) >= 24:
            width, height = struct.unpack(">II", head[16:24])
            return width, height
        if kind == "webp":
            return _webp_size(head)
        if kind == "jpeg":
            return _jpeg_size(head)
    except struct.error:
        return None
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 " and len(head) >= 30:
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(head) >= 30:
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return width, height
    return None


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    index = 2
    while index + 9 < len(head):
        if head[index] != 0xFF:
            index += 1
            continue
        marker = head[index + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            index += 2
            continue
        length = struct.unpack(">H", head[index + 2 : index + 4])[0]
        # SOF0..SOF15 carry the frame size, except DHT (C4), JPG (C8) and DAC (CC).
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", head[index + 5 : index + 9])
            return width, height
        index += 2 + length
    return None


async def inspect_image(
    session: aiohttp.ClientSession,
    url: str,
    *,
    max_bytes: int,
    declared_type: str | None = None,
    declared_size: int | None = None,
    fetch_timeout: float = 15.0,
    allowed_hosts: Collection[str] = DEFAULT_IMAGE_HOSTS,
) -> ImageInfo:
    """Fetch the head of `url` and decide whether Veo can use it. Raises `ImageRejected`.

    Nothing is fetched unless `url` is on `allowed_hosts`; a redirect is refused, not followed."""
    if not is_allowed_image_url(url, allowed_hosts):
        log.info("image refused: %s is not on the image host allow-list", _where(url))
        raise ImageRejected(ONLY_DISCORD)
    if declared_size is not None and declared_size > max_bytes:
        raise ImageRejected(_too_big(declared_size, max_bytes))
    if declared_type and declared_type.split(";")[0].strip() not in ACCEPTED.values():
        raise ImageRejected(_wrong_type(declared_type))
    headers = {"Range": f"bytes=0-{HEAD_BYTES - 1}"}
    try:
        async with session.get(
            url,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=fetch_timeout),
            allow_redirects=False,  # a redirect could point anywhere, inside our network too
        ) as response:
            if 300 <= response.status < 400:
                log.info("image refused: %s redirected (HTTP %s)", _where(url), response.status)
                raise ImageRejected(ONLY_DISCORD)
            if response.status not in (200, 206):
                log.info("image not fetched: %s answered HTTP %s", _where(url), response.status)
                raise ImageRejected("The image could not be fetched; it may have been deleted.")
            total = _total_size(response)
            if total is not None and total > max_bytes:
                raise ImageRejected(_too_big(total, max_bytes))
            head = await response.content.read(HEAD_BYTES)
            served_type = response.headers.get("Content-Type", "")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ImageRejected("The image could not be fetched; try again in a moment.") from exc
    kind = sniff(head)
    if kind is None:
        served = served_type.split(";")[0].strip()
        # Only a plain media type is repeated to the member, never free text from the server.
        claimed = (declared_type or "").split(";")[0].strip() or (
            served if _MEDIA_TYPE.match(served) else ""
        )
        if claimed in ACCEPTED.values():
            raise ImageRejected(
                f"This file is labelled {claimed}, but its contents are not a PNG, JPEG or WebP "
                "image (a renamed GIF or video?). Veo can only animate those three."
            )
        raise ImageRejected(_wrong_type(claimed or "this file"))
    size = total if total is not None else declared_size
    found = dimensions(kind, head)
    width, height = found if found else (None, None)
    return ImageInfo(url=url, kind=kind, size=size, width=width, height=height)


def _where(url: str) -> str:
    """The URL without its query (Discord's signed parameters), for logs."""
    return url.split("?", 1)[0]


def _total_size(response: aiohttp.ClientResponse) -> int | None:
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        if total.isdigit():
            return int(total)
    if response.status == 200 and response.content_length is not None:
        return response.content_length
    return None


def _too_big(size: int, limit: int) -> str:
    return f"The image is {_mb(size)}; Veo takes images up to {_mb(limit)}. Try a smaller version."


def _mb(size: int) -> str:
    megabytes = size / 1_048_576
    return f"{megabytes:.1f} MB" if megabytes < 10 else f"{megabytes:.0f} MB"


def _wrong_type(what: str) -> str:
    return f"Veo can animate PNG, JPEG or WebP images — {what} is not one of them."
