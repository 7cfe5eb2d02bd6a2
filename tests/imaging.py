"""Real image files for tests, encoded with PyAV (no image library needed)."""

from __future__ import annotations

import io

import av


def encode_image(kind: str, width: int, height: int) -> bytes:
    """A real PNG, JPEG or WebP of the given size."""
    codec, pix_fmt, fmt = {
        "png": ("png", "rgb24", "image2pipe"),
        "jpeg": ("mjpeg", "yuvj420p", "image2pipe"),
        "webp": ("libwebp", "yuv420p", "webp"),
    }[kind]
    frame = av.VideoFrame(width, height, "rgb24")
    plane = frame.planes[0]
    row = bytes(
        channel for x in range(width) for channel in (x * 255 // width, 128, 255 - x * 255 // width)
    )
    plane.update(row.ljust(plane.line_size, b"\0") * height)
    frame = frame.reformat(format=pix_fmt)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=1)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


GIF_HEAD = b"GIF89a\x10\x00\x10\x00\x80\x00\x00" + b"\x00" * 64
