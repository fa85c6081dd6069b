"""What the header and its EXIF say about the image (never GPS), and its orientation applied."""

from __future__ import annotations

import re

from PIL import Image

from functions.core.imaging.decode import has_alpha
from functions.core.imaging.errors import PILLOW_ERRORS
from functions.core.imaging.geometry import SWAPS_AXES
from functions.core.imaging.limits import SourceImage
from functions.core.records import ImageMetadata

# EXIF orientation -> the transpose a viewer applies (as ImageOps.exif_transpose).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_EXIF_MAKE, _EXIF_MODEL, _EXIF_ORIENTATION = 0x010F, 0x0110, 0x0112
_EXIF_IFD, _EXIF_DATETIME_ORIGINAL = 0x8769, 0x9003
_EXIF_DATETIME = re.compile(r"(\d{4}):(\d\d):(\d\d) (\d\d):(\d\d):(\d\d)")


def inspect(source: SourceImage) -> ImageMetadata:
    """What the header says, with width/height as a viewer shows them. Never GPS."""
    image, detected = source.image, source.format
    exif = _read_exif(image, detected)
    orientation = exif.get(_EXIF_ORIENTATION)
    orientation = orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else None
    if detected == "HEIF":
        # HEIF's orientation is its `irot`/`imir` boxes, which libheif applies while
        # decoding and which `image.size` already reflects; the EXIF tag (an iPhone
        # writes 6 beside irot 270) only repeats them, and turning by it too would turn
        # twice. As the HEIF spec says and viewers do, it is not applied.
        orientation = None
    width, height = image.size
    if orientation in SWAPS_AXES:
        width, height = height, width
    return ImageMetadata(
        format=detected,
        width=width,
        height=height,
        mode=image.mode,
        has_alpha=has_alpha(image),
        frames=source.frames,
        has_icc_profile=bool(image.info.get("icc_profile")),
        orientation=orientation,
        camera_make=_exif_text(exif.get(_EXIF_MAKE)),
        camera_model=_exif_text(exif.get(_EXIF_MODEL)),
        captured_at=_captured_at(exif),
    )


def oriented(image: Image.Image, orientation: int | None) -> Image.Image:
    """The image the right way up, as a viewer turns it for its EXIF orientation."""
    if orientation in _ORIENTATION_TRANSPOSE:
        return image.transpose(_ORIENTATION_TRANSPOSE[orientation])
    return image


def _read_exif(image: Image.Image, detected: str) -> Image.Exif:
    # PNG's getexif() decodes the whole image to look for an eXIf chunk after the
    # pixel data; the PNG spec puts eXIf before IDAT, so the header is enough.
    if detected == "PNG" and "exif" not in image.info:
        return Image.Exif()
    try:
        return image.getexif()
    except PILLOW_ERRORS:  # a broken EXIF block does not make a broken image
        return Image.Exif()


def _exif_text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    text = value.replace("\x00", "").strip()
    return text[:64] or None


def _captured_at(exif: Image.Exif) -> str | None:
    try:
        taken = exif.get_ifd(_EXIF_IFD).get(_EXIF_DATETIME_ORIGINAL)
    except PILLOW_ERRORS:  # a broken Exif IFD: no capture time, not a broken image
        return None
    raw = _exif_text(taken)
    if not raw:
        return None
    # Parsed by hand: strptime imports _strptime, locale and calendar (~5 ms of a
    # cold start) for one fixed EXIF layout. datetime validates the ranges.
    match = _EXIF_DATETIME.match(raw)
    if match is None:
        return None
    from datetime import datetime

    try:
        return datetime(*map(int, match.groups())).isoformat()
    except ValueError:  # an impossible date (month 13): no capture time
        return None
