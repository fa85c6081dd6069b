"""The input format, from the content alone, and loading only that format's Pillow plugin."""

from __future__ import annotations

import importlib
import struct
from functools import cache


def detect_format(data: bytes) -> str | None:
    """The input format from magic bytes alone (never the name or Content-Type).

    Returns one of settings.INPUT_FORMATS or None for anything unrecognised.
    """
    head = data[:32]
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM" and len(head) >= 26:
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[4:8] == b"ftyp":
        return _iso_bmff_format(data)
    return None


def _iso_bmff_format(data: bytes) -> str | None:
    """AVIF or HEIF from the `ftyp` box's major and compatible brands."""
    (box_size,) = struct.unpack(">I", data[:4])
    box_size = min(max(box_size, 16), 256, len(data))
    brands = {data[8:12]} | {data[i : i + 4] for i in range(16, box_size - 3, 4)}
    if brands & {b"avif", b"avis"}:
        return "AVIF"
    if brands & {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}:
        return "HEIF"
    return None


_PLUGINS = {
    "JPEG": "JpegImagePlugin",
    "PNG": "PngImagePlugin",
    "GIF": "GifImagePlugin",
    "WEBP": "WebPImagePlugin",
    "AVIF": "AvifImagePlugin",
    "BMP": "BmpImagePlugin",
    "TIFF": "TiffImagePlugin",
}


@cache
def load_plugin(fmt: str) -> None:
    """Import one format's plugin, so Pillow never falls back to importing all ~45 of
    them (`Image.init()`, tens of milliseconds on a cold start) for WebP or AVIF."""
    if fmt.upper() == "HEIF":
        _register_heif()
    else:
        importlib.import_module(f"PIL.{_PLUGINS[fmt.upper()]}")


def _register_heif() -> None:
    """pillow-heif's opener, registered when the first HEIF arrives: importing it loads
    libheif (about 30 ms), which no other format should pay for.

    Thumbnails, depth maps and auxiliary images (an iPhone's HDR gain map) are never
    listed, so only the primary image is ever decoded. These are pillow-heif's
    process-wide options; nothing else in the process opens HEIF.
    """
    from pillow_heif import register_heif_opener

    register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)
