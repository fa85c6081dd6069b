"""Small files that claim a lot: each is built here, in milliseconds, never committed.

The hostile uploads of the issue "Nothing lost, nothing stuck": tiny canvases that
would cost a gigabyte to decode, and header structures that cost seconds to walk.
`bench/memory_bench.py` measures them; `tests/core/test_budget.py` refuses them.
"""

from __future__ import annotations

import struct
import zlib
from io import BytesIO

from PIL import Image


def zeros_zlib(count: int) -> bytes:
    """A zlib stream of `count` zero bytes, built from one compressed block repeated.

    After a full flush deflate forgets its history, so one 4 MB block of zeros
    compresses to the same bytes every time: 400 MB costs a few milliseconds, not
    seconds. The Adler-32 of n zeros is (n mod 65521) << 16 | 1.
    """
    block_size = 4 * 1024 * 1024
    whole, rest = divmod(count, block_size)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(b"\x00" * block_size) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.compress(b"\x00" * rest) + compressor.flush(zlib.Z_FINISH)
    adler = ((count % 65521) << 16) | 1
    return b"\x78\xda" + block * whole + tail + struct.pack(">I", adler)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    checksum = struct.pack(">I", zlib.crc32(kind + data))
    return struct.pack(">I", len(data)) + kind + data + checksum


def png_of_zeros(width: int, height: int, *, rgba: bool) -> bytes:
    """A real, decodable PNG of width x height black (transparent) pixels."""
    channels, colour_type = (4, 6) if rgba else (3, 2)
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    pixels = zeros_zlib(height * (1 + channels * width))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", pixels)
        + _png_chunk(b"IEND", b"")
    )


def png_with_chunks(count: int) -> bytes:
    """A 1x1 PNG with `count` empty private chunks before its pixels."""
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    padding = _png_chunk(b"prVt", b"") * count
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + padding
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 4))
        + _png_chunk(b"IEND", b"")
    )


def _riff_chunk(kind: bytes, data: bytes) -> bytes:
    return kind + struct.pack("<I", len(data)) + data + (b"\x00" if len(data) % 2 else b"")


def _vp8l_one_pixel() -> bytes:
    """The VP8L chunk of a lossless 1x1 WebP, as libwebp writes it."""
    buffer = BytesIO()
    Image.new("RGBA", (1, 1), (255, 0, 0, 255)).save(buffer, "WEBP", lossless=True)
    data = buffer.getvalue()
    start = data.index(b"VP8L")
    (size,) = struct.unpack("<I", data[start + 4 : start + 8])
    return data[start : start + 8 + size + (size % 2)]


def _uint24(value: int) -> bytes:
    return struct.pack("<I", value)[:3]


def webp_canvas(width: int, height: int, frames: int = 1) -> bytes:
    """An animated WebP: a width x height canvas of `frames` 1x1 frames (92 bytes for one)."""
    vp8x = bytes([0x12, 0, 0, 0]) + _uint24(width - 1) + _uint24(height - 1)  # anim + alpha
    anim = struct.pack("<IH", 0, 0)  # background colour, loop for ever
    frame = _vp8l_one_pixel()
    anmf = _uint24(0) + _uint24(0) + _uint24(0) + _uint24(0) + _uint24(100) + b"\x00" + frame
    body = (
        b"WEBP"
        + _riff_chunk(b"VP8X", vp8x)
        + _riff_chunk(b"ANIM", anim)
        + _riff_chunk(b"ANMF", anmf) * frames
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


def gif_canvas(width: int, height: int, frames: int = 1) -> bytes:
    """A GIF: a width x height logical screen holding `frames` 1x1 frames (35 bytes for one)."""
    palette = b"\x00" * 3 + b"\xff" * 3
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + palette
    frame = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return screen + frame * frames + b";"


def jpeg_with_app1_segments(count: int, segment_bytes: int = 65_533) -> bytes:
    """A small real JPEG preceded by `count` APP1 Exif segments (about 45 MB for 700)."""
    buffer = BytesIO()
    Image.new("RGB", (16, 16), (255, 0, 0)).save(buffer, "JPEG")
    image = buffer.getvalue()
    payload = b"Exif\x00\x00" + b"\x00" * (segment_bytes - 2 - 6)
    segment = b"\xff\xe1" + struct.pack(">H", segment_bytes) + payload
    return image[:2] + segment * count + image[2:]


# The table of the issue: what each of these cost before the memory budget existed.
MEMORY_HOSTILE = {
    "webp-10000x10000-canvas-1px": lambda: webp_canvas(10_000, 10_000),
    "png-9999x9999-rgba-zeros": lambda: png_of_zeros(9_999, 9_999, rgba=True),
    "png-1x100000000": lambda: png_of_zeros(1, 100_000_000, rgba=False),
    "gif-9999x9999-canvas-1px": lambda: gif_canvas(9_999, 9_999),
    "webp-7000x7000-canvas-1000-frames": lambda: webp_canvas(7_000, 7_000, frames=1000),
}
SLOW_HEADERS = {
    "jpeg-700-app1-segments": lambda: jpeg_with_app1_segments(700),
    "gif-2000000-frames": lambda: gif_canvas(1, 1, frames=2_000_000),
    "png-1000000-chunks": lambda: png_with_chunks(1_000_000),
}
