"""Encoding: the output format rules (alpha flattened where the format has none), quality,
metadata. Deterministic, and never mutates the image it is given."""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO

from PIL import Image

from functions.core.imaging.colour import srgb_profile
from functions.core.imaging.formats import load_plugin
from functions.core.records import ImageMetadata
from functions.core.settings import RenditionSpec

CONTENT_TYPES = {
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "png": "image/png",
    "avif": "image/avif",
    "gif": "image/gif",
}
ALPHA_FORMATS = frozenset({"png", "webp", "avif", "gif"})
_WEB_FORMATS = {"JPEG": "jpeg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "AVIF": "avif"}
_FLATTENED_ONTO = (255, 255, 255)  # what a page behind a transparent image usually is


@dataclass(frozen=True)
class EncodedRendition:
    spec: RenditionSpec
    data: bytes
    width: int
    height: int
    format: str  # resolved output format: jpeg | webp | png | avif | gif
    content_type: str


def output_format(spec: RenditionSpec, metadata: ImageMetadata) -> str:
    """The format a rendition is written in; "source" keeps the input's when the web can show it."""
    if spec.format != "source":
        return spec.format
    if metadata.format in _WEB_FORMATS:
        return _WEB_FORMATS[metadata.format]
    return "png" if metadata.has_alpha else "jpeg"


def encode(
    image: Image.Image, spec: RenditionSpec, metadata: ImageMetadata, strip_metadata: bool
) -> EncodedRendition:
    """Per-format rules; deterministic: the same pixels and spec give the same bytes.

    `image` is RGB or RGBA in sRGB, the right way up. Metadata: with
    `strip_metadata` nothing but pixels is written: no EXIF (GPS above all), no XMP,
    no comment and no ICC profile (untagged images are shown as sRGB by browsers; a
    profile would only add bytes). Without it, the sRGB profile is embedded so the
    colour is explicit; camera EXIF is still not copied, because its GPS and
    orientation would be wrong or private in a rendition.
    """
    fmt = output_format(spec, metadata)
    picture = _flattened(image) if fmt not in ALPHA_FORMATS else _pixels_only(image)
    options: dict[str, object] = {}
    if not strip_metadata and fmt != "gif":  # GIF has no colour profiles
        options["icc_profile"] = srgb_profile().tobytes()
    if fmt == "jpeg":
        options.update(quality=spec.quality, optimize=True, progressive=True)
    elif fmt == "webp":
        options.update(quality=spec.quality, method=4)
    elif fmt == "avif":
        options.update(quality=spec.quality)
    elif fmt in ("png", "gif"):
        options.update(optimize=True)
    buffer = BytesIO()
    load_plugin(fmt)
    picture.save(buffer, format=fmt.upper(), **options)
    return EncodedRendition(
        spec, buffer.getvalue(), picture.width, picture.height, fmt, CONTENT_TYPES[fmt]
    )


def _flattened(image: Image.Image) -> Image.Image:
    """Alpha composited onto white, for a format without transparency (as easy-thumbnails)."""
    if image.mode != "RGBA":
        return _pixels_only(image)
    flat = Image.new("RGB", image.size, _FLATTENED_ONTO)
    flat.paste(image, mask=image.getchannel("A"))
    return flat


def _pixels_only(image: Image.Image) -> Image.Image:
    """The pixels without what resize and convert carried over from the source's `info`
    (EXIF, ICC, XMP, comment), which Pillow's encoders would otherwise write. A copy,
    so the caller's image keeps its own."""
    if not image.info:
        return image
    copy = image.copy()
    copy.info.clear()
    return copy
