"""The one decode: at reduced size where the format allows it, into a mode LANCZOS works in.

JPEG is decoded at reduced size with DCT scaling (`draft`); a WebP's first frame is
taken from libwebp without Pillow's extra copies; the decode is refused before it
starts when its estimated peak would not fit the memory budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from functions.core.budget import DecodeShape, describe_megabytes, estimate_peak_bytes
from functions.core.imaging.errors import pillow_errors_are_corrupt
from functions.core.imaging.geometry import Placement, Plan, draft_request, plan_rendition, whole
from functions.core.imaging.limits import SourceImage
from functions.core.records import ImageMetadata, PermanentError
from functions.core.settings import RenditionSpec

# Pillow premultiplies alpha for every resize and reduce of an RGBA image, converting
# the *whole* image each time, even for a box of it: a strip-wise resize of a large
# RGBA source converted it once per strip. Working in premultiplied alpha from the
# start converts once; `straight_alpha` turns each (small) rendition back into RGBA.
_PREMULTIPLIED = {"RGBA": "RGBa", "LA": "La"}
_STRAIGHT = {"RGBa": "RGBA", "La": "LA"}


@dataclass(frozen=True)
class Picture:
    """An image and where its pixels sit in the source (stored orientation)."""

    image: Image.Image
    placement: Placement


@dataclass(frozen=True)
class DecodePlan:
    """What the renditions need from the one decode, decided before any pixel is decoded."""

    stored_size: tuple[int, int]
    plans: list[Plan]
    max_scale: float
    scale: tuple[float, float]  # decoded pixels per stored pixel (a reduced JPEG decode)


def plan_decode(
    source: SourceImage, metadata: ImageMetadata, specs: tuple[RenditionSpec, ...]
) -> DecodePlan:
    stored_size = source.image.size
    plans = [plan_rendition(stored_size, spec, metadata.orientation) for spec in specs]
    max_scale = max(plan.scale for plan in plans)
    return DecodePlan(stored_size, plans, max_scale, _choose_decode_scale(source.image, max_scale))


def _choose_decode_scale(image: Image.Image, max_scale: float) -> tuple[float, float]:
    """Ask for a reduced-size JPEG decode where the renditions allow; nothing is decoded.

    Returns the decoded pixels per stored pixel on each axis. Pillow's `draft` only
    configures the decoder (and shrinks `image.size`), so the budget can be checked
    against the size that will really be decoded.
    """
    wanted = draft_request(image.size, max_scale) if is_jpeg(image) else None
    if wanted is None:
        return 1.0, 1.0
    width, height = image.size
    with pillow_errors_are_corrupt(f"the {image.format} data cannot be read"):
        drafted = image.draft(image.mode, wanted)
    if drafted is None:
        return 1.0, 1.0
    # The box is the original extent in the reduced image's pixels; the last row and
    # column may be partial, so geometry uses the box, not the reduced size.
    _, box = drafted
    return box[2] / width, box[3] / height


def is_jpeg(image: Image.Image) -> bool:
    return image.format in ("JPEG", "MPO")


def check_memory_budget(source: SourceImage, decode: DecodePlan, budget: int) -> None:
    """Refuse (`over_memory_budget`) a decode whose estimated peak exceeds `budget` bytes."""
    estimate = estimate_peak_bytes(decode_shape(source, decode))
    if estimate > budget:
        width, height = decode.stored_size
        raise PermanentError(
            "over_memory_budget",
            f"decoding this {width}x{height} {source.format} would hold about "
            f"{describe_megabytes(estimate)}; the budget is {describe_megabytes(budget)} "
            "(set by memoryMb)",
        )


def decode_shape(source: SourceImage, decode: DecodePlan) -> DecodeShape:
    """What the decode will allocate, from the header and the plans (after `draft`)."""
    image = source.image
    progressive = bool(image.info.get("progressive")) and is_jpeg(image)
    layers = (getattr(image, "layer", None) or ()) if progressive else ()
    return DecodeShape(
        format=source.format,
        canvas=decode.stored_size,
        decoded=image.size,
        mode=image.mode,
        working_mode=working_mode(image),
        outputs=tuple(plan.size for plan in decode.plans),
        input_bytes=source.input_bytes,
        progressive_sampling=tuple((layer[1], layer[2]) for layer in layers),
    )


def decode(image: Image.Image, plan: DecodePlan) -> Picture:
    """The one full decode, into a mode LANCZOS works in; first frame of an animation.

    When that mode needs a conversion, the decoded source is released as soon as the
    converted copy exists, so the two are held together only for a moment.
    """
    try:
        with pillow_errors_are_corrupt(f"the {image.format} data is truncated or corrupt"):
            if image.format == "WEBP" and hasattr(getattr(image, "_decoder", None), "get_next"):
                decoded = _first_webp_frame(image)
            else:
                image.load()
                decoded = image
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise PermanentError("too_many_pixels", "the image data exceeds the pixel limit") from None
    working = resizable(decoded)
    if working is not image:
        image.close()  # drops Pillow's pixels; size, mode and info stay readable
    return Picture(working, whole(plan.stored_size, plan.scale, working.size))


def _first_webp_frame(image: Image.Image) -> Image.Image:
    """The first frame, decoded without the two extra full-size copies `load()` makes.

    Pillow's WebP plugin keeps libwebp's canvas alive, copies it into a bytes object,
    then copies that into the image: three 4-byte-per-pixel buffers at once (about
    110 MB for 9 MP). Here the canvas is released as soon as the frame is out, and
    the image shares the frame's memory (`frombuffer`), so one buffer remains.
    Uses the plugin's `_decoder` (Pillow 13's internals; pinned <14) and falls back
    to `load()` by the caller's check when it is absent.
    """
    frame = image._decoder.get_next()  # type: ignore[attr-defined]
    image._decoder = None  # type: ignore[attr-defined]  # frees libwebp's canvas now
    if frame is None:
        raise EOFError("libwebp could not decode the first frame")
    rawmode = image.rawmode  # type: ignore[attr-defined]  # RGBA, or RGBX without alpha
    return Image.frombuffer(rawmode, image.size, frame[0], "raw", rawmode, 0, 1)


def has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def working_mode(image: Image.Image) -> str:
    """The mode a decoded image is resized in: L, La, RGB, RGBX, RGBa or CMYK."""
    mode = image.mode
    if mode in ("L", "RGB") and "transparency" in image.info:
        return "RGBa"  # a tRNS colour key becomes real alpha
    if mode in ("L", "RGB", "RGBX", "CMYK"):
        return mode
    if mode in _PREMULTIPLIED:
        return _PREMULTIPLIED[mode]
    if mode in ("1",) or mode.startswith("I;16") or mode == "I":
        return "L"
    return "RGBa" if has_alpha(image) else "RGB"


def resizable(image: Image.Image) -> Image.Image:
    """The image in its working mode (`working_mode`), alpha premultiplied."""
    target = working_mode(image)
    if target == image.mode:
        return image
    if image.mode in _PREMULTIPLIED:
        return image.convert(target)
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit greys: Pillow's convert("L") clips at 255; scale to 8 bits instead.
        return image.convert("I").point(lambda value: value / 257).convert("L")
    if target == "RGBa":
        return image.convert("RGBA").convert("RGBa")
    return image.convert(target)


def straight_alpha(image: Image.Image) -> Image.Image:
    """A premultiplied rendition back in straight alpha (RGBA, LA); others as they are."""
    return image.convert(_STRAIGHT[image.mode]) if image.mode in _STRAIGHT else image
