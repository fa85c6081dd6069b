"""Encoding: the output format rules (alpha flattened where the format has none), quality,
metadata. Deterministic, and never mutates the image it is given."""

from __future__ import annotations

import math
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING

from PIL import Image

from functions.core.imaging.colour import srgb_profile
from functions.core.imaging.formats import load_plugin
from functions.core.records import ImageMetadata
from functions.core.settings import RenditionSpec

if TYPE_CHECKING:
    from functions.core.imaging.animation import Animation

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


def encode_animation(
    animation: Animation, spec: RenditionSpec, metadata: ImageMetadata, strip_metadata: bool
) -> EncodedRendition:
    """Every frame, its duration and the loop count, as an animated GIF or WebP.

    Deterministic like `encode`. Both encoders write consecutive frames that came out
    identical once, with their durations summed: the same animation in fewer frames.
    """
    fmt = output_format(spec, metadata)
    first, *rest = _animation_frames(animation, fmt)
    options: dict[str, object] = {
        "save_all": True,
        "append_images": rest,
        "duration": list(animation.durations),
    }
    if fmt == "gif":
        # Restore to background after each frame: a pixel that turns transparent would
        # otherwise keep showing the frame before it. No loop count plays once.
        options.update(optimize=True, disposal=2 if first.mode == "RGBA" else 1)
        if animation.loop is not None:
            options["loop"] = animation.loop
    else:
        if not strip_metadata:
            options["icc_profile"] = srgb_profile().tobytes()
        # A GIF without a loop count plays once: a WebP says so with 1 (0 is forever).
        loop = 1 if animation.loop is None else animation.loop
        options.update(quality=spec.quality, method=4, loop=loop, background=(0, 0, 0, 0))
    buffer = BytesIO()
    load_plugin(fmt)
    first.save(buffer, format=fmt.upper(), **options)
    return EncodedRendition(
        spec, buffer.getvalue(), first.width, first.height, fmt, CONTENT_TYPES[fmt]
    )


def _animation_frames(animation: Animation, fmt: str) -> list[Image.Image]:
    """The frames as the encoder takes them: WebP's as they are, GIF's in one palette."""
    if fmt != "gif":
        return [_pixels_only(frame) for frame in animation.frames]
    palette = _shared_palette(animation.frames)
    return [_in_palette(frame, palette) for frame in animation.frames]


# One palette for all frames, so a pixel that does not change keeps its index and the
# writer's frame deltas stay small: a 42-frame 200x200 photo GIF is 187 KB so, 811 KB with
# Pillow's palette per frame (median cut, also 40x slower than octree).
_GIF_QUANTIZER = Image.Quantize.FASTOCTREE
_GIF_PALETTE_SAMPLE_PIXELS = 1_000_000  # the palette is learnt from every frame, reduced to fit
_GIF_COLOURS = 255  # index 255 stays free: transparency, or the writer's unchanged pixels


def _shared_palette(frames: tuple[Image.Image, ...]) -> Image.Image:
    width, height = frames[0].size
    pixels = width * height * len(frames)
    factor = max(1, math.ceil(math.sqrt(pixels / _GIF_PALETTE_SAMPLE_PIXELS)))
    tile_w, tile_h = -(-width // factor), -(-height // factor)
    sample = Image.new("RGB", (tile_w, tile_h * len(frames)))
    for index, frame in enumerate(frames):
        sample.paste(frame.convert("RGB").reduce(factor), (0, index * tile_h))
    return sample.quantize(_GIF_COLOURS, method=_GIF_QUANTIZER)


def _in_palette(frame: Image.Image, palette: Image.Image) -> Image.Image:
    """The frame in the shared palette, undithered (dither noise would change every pixel
    of every frame); alpha cut at half into the one transparent index (a GIF's
    transparency is all or nothing, and half is where a browser's edge would fall)."""
    indexed = frame.convert("RGB").quantize(palette=palette, dither=Image.Dither.NONE)
    if frame.mode == "RGBA":
        transparent = frame.getchannel("A").point(lambda value: 255 if value < 128 else 0, "1")
        indexed.paste(_GIF_COLOURS, mask=transparent)
        indexed.info["transparency"] = _GIF_COLOURS
    return indexed


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
