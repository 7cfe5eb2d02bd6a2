"""Input images are judged by their bytes, not their names, before anything is spent."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from bot.media.images import (
    DEFAULT_IMAGE_HOSTS,
    ONLY_DISCORD,
    ImageRejected,
    dimensions,
    inspect_image,
    is_allowed_image_url,
    sniff,
)
from bot.params import Aspect
from tests.imaging import GIF_HEAD, encode_image


@pytest.mark.parametrize("kind", ["png", "jpeg", "webp"])
@pytest.mark.parametrize(("width", "height"), [(320, 180), (90, 160), (200, 200), (1000, 750)])
def test_real_images_are_recognised_with_their_size(kind: str, width: int, height: int) -> None:
    data = encode_image(kind, width, height)
    assert sniff(data) == kind
    assert dimensions(kind, data) == (width, height)


def test_gif_and_text_are_not_images_veo_takes() -> None:
    assert sniff(GIF_HEAD) is None
    assert sniff(b"hello, this is text") is None


LOCAL = ("127.0.0.1",)  # the test CDN's host, allowed the way the e2e bot allows the emulator's


class CDN:
    """A tiny file server that honours Range, like Discord's CDN."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        self.bytes_sent = 0
        self.hits = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        name = request.match_info["name"]
        if name == "moved.png":
            return web.Response(status=302, headers={"Location": request.query["to"]})
        if name not in self.files:
            return web.Response(status=404)
        data, content_type = self.files[name]
        first, last = 0, len(data) - 1
        status = 200
        if "Range" in request.headers:
            spec = request.headers["Range"].removeprefix("bytes=")
            start, _, end = spec.partition("-")
            first, last = int(start), min(int(end or last), len(data) - 1)
            status = 206
        body = data[first : last + 1]
        self.bytes_sent += len(body)
        headers = {"Content-Type": content_type}
        if status == 206:
            headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
        return web.Response(status=status, body=body, headers=headers)


@pytest.fixture
async def cdn() -> AsyncIterator[tuple[CDN, str, aiohttp.ClientSession]]:
    server = CDN()
    app = web.Application()
    app.router.add_get("/{name}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as session:
        yield server, f"http://127.0.0.1:{port}", session
    await runner.cleanup()


async def test_portrait_image_picks_vertical_aspect(
    cdn: tuple[CDN, str, aiohttp.ClientSession],
) -> None:
    server, base, session = cdn
    server.files["p.jpg"] = (encode_image("jpeg", 540, 960), "image/jpeg")
    info = await inspect_image(
        session, allowed_hosts=LOCAL, url=f"{base}/p.jpg", max_bytes=20 * 1024 * 1024
    )
    assert info.kind == "jpeg"
    assert info.closest_aspect() is Aspect.VERTICAL


async def test_renamed_gif_is_refused_by_its_bytes(
    cdn: tuple[CDN, str, aiohttp.ClientSession],
) -> None:
    server, base, session = cdn
    server.files["cat.png"] = (GIF_HEAD, "image/png")  # lies about its type
    with pytest.raises(ImageRejected, match="labelled image/png, but its contents are not"):
        await inspect_image(
            session, allowed_hosts=LOCAL, url=f"{base}/cat.png", max_bytes=20 * 1024 * 1024
        )


async def test_oversized_image_is_refused_after_reading_only_the_head(
    cdn: tuple[CDN, str, aiohttp.ClientSession],
) -> None:
    server, base, session = cdn
    big = encode_image("png", 64, 64) + b"\0" * (3 * 1024 * 1024)
    server.files["big.png"] = (big, "image/png")
    with pytest.raises(ImageRejected, match=r"up to 2\.0 MB"):
        await inspect_image(
            session, allowed_hosts=LOCAL, url=f"{base}/big.png", max_bytes=2 * 1024 * 1024
        )
    assert server.bytes_sent <= 64 * 1024


async def test_declared_type_or_size_refuses_without_fetching(
    cdn: tuple[CDN, str, aiohttp.ClientSession],
) -> None:
    server, base, session = cdn
    with pytest.raises(ImageRejected, match="text/plain"):
        await inspect_image(
            session, allowed_hosts=LOCAL, url=f"{base}/x", max_bytes=100, declared_type="text/plain"
        )
    with pytest.raises(ImageRejected, match=r"9\.5 MB; Veo takes images up to 0\.5 MB"):
        await inspect_image(
            session,
            allowed_hosts=LOCAL,
            url=f"{base}/x",
            max_bytes=524_288,
            declared_size=10_000_000,
        )
    assert server.bytes_sent == 0


async def test_missing_image_says_it_may_be_deleted(
    cdn: tuple[CDN, str, aiohttp.ClientSession],
) -> None:
    _, base, session = cdn
    with pytest.raises(ImageRejected, match="deleted"):
        await inspect_image(session, allowed_hosts=LOCAL, url=f"{base}/gone.png", max_bytes=100)


def test_aspect_follows_the_image() -> None:
    from bot.media.images import ImageInfo

    def pick(w: int, h: int) -> Aspect | None:
        return ImageInfo("http://x", "png", None, w, h).closest_aspect()

    assert pick(1920, 1080) is Aspect.WIDE
    assert pick(1080, 1920) is Aspect.VERTICAL
    assert pick(1000, 1000) is Aspect.SQUARE
    assert pick(1024, 768) is Aspect.CLASSIC
    assert pick(768, 1024) is Aspect.PORTRAIT_CLASSIC
    assert pick(3000, 1000) is Aspect.WIDE  # wider than anything Veo makes: the widest


# --- item 1: images come only from Discord ------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://cdn.discordapp.com/attachments/1/2/cat.png?ex=1&is=2&hm=3",
        "https://media.discordapp.net/attachments/1/2/cat.png?width=400",
        "https://images-ext-1.discordapp.net/external/abc/https/example.com/cat.png",
        "https://images-ext-2.discordapp.net/external/abc/https/example.com/cat.png",
    ],
)
def test_item1_discord_hosts_are_allowed_by_default(url: str) -> None:
    assert is_allowed_image_url(url, DEFAULT_IMAGE_HOSTS)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/cat.png",
        "https://cdn.discordapp.com.evil.example/cat.png",
        "https://user:pw@cdn.discordapp.com/cat.png",
        "ftp://cdn.discordapp.com/cat.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost/cat.png",
        "http://[::1]/cat.png",
    ],
)
async def test_item1_images_only_from_allowed_hosts_refused_without_a_request(
    cdn: tuple[CDN, str, aiohttp.ClientSession], url: str
) -> None:
    server, _, session = cdn
    with pytest.raises(ImageRejected) as info:
        await inspect_image(session, url, max_bytes=20 * 1024 * 1024)
    assert str(info.value) == ONLY_DISCORD
    assert server.hits == 0


async def test_item1_loopback_is_fetched_only_when_listed(
    cdn: tuple[CDN, str, aiohttp.ClientSession],
) -> None:
    server, base, session = cdn
    server.files["p.png"] = (encode_image("png", 64, 64), "image/png")
    with pytest.raises(ImageRejected, match=ONLY_DISCORD):
        await inspect_image(session, f"{base}/p.png", max_bytes=20 * 1024 * 1024)
    assert server.hits == 0
    info = await inspect_image(session, f"{base}/p.png", max_bytes=10**7, allowed_hosts=LOCAL)
    assert info.kind == "png" and server.hits == 1


async def test_item1_a_redirect_is_refused_not_followed(
    cdn: tuple[CDN, str, aiohttp.ClientSession],
) -> None:
    server, base, session = cdn
    server.files["p.png"] = (encode_image("png", 64, 64), "image/png")
    with pytest.raises(ImageRejected) as info:
        await inspect_image(
            session, f"{base}/moved.png?to={base}/p.png", max_bytes=10**7, allowed_hosts=LOCAL
        )
    assert str(info.value) == ONLY_DISCORD
    assert server.hits == 1  # the redirect itself, never its target


async def test_item1_the_member_is_not_told_the_remote_status_or_free_text_type(
    cdn: tuple[CDN, str, aiohttp.ClientSession],
) -> None:
    server, base, session = cdn
    with pytest.raises(ImageRejected) as gone:
        await inspect_image(session, f"{base}/gone.png", max_bytes=100, allowed_hosts=LOCAL)
    assert "404" not in str(gone.value)
    server.files["odd"] = (b"plain words", "text/html; you have been <b>owned</b>")
    with pytest.raises(ImageRejected) as odd:
        await inspect_image(session, f"{base}/odd", max_bytes=10**6, allowed_hosts=LOCAL)
    # Discord's plain media type may be named; the server's free text never is.
    assert "owned" not in str(odd.value) and "<b>" not in str(odd.value)
