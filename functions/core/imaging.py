"""The image stages: detect -> validate -> inspect -> render -> encode.

Pillow and the standard library only. Each stage is a small function; `render_image`
runs them in order and times each one. Everything that can go wrong with the
*content* becomes a `PermanentError` with a code from the closed set; nothing
Pillow raises on hostile bytes escapes.

Decode once: the source is decoded a single time, at reduced size where the format
allows it (JPEG DCT scaling via `draft`), and every rendition is cut from that
decode or, when it has pixels enough, from a larger rendition made before it.
"""

from __future__ import annotations

import importlib
import math
import re
import struct
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, lru_cache
from io import BytesIO

from PIL import Image

from functions.core.allocator import memory_returned_when_large
from functions.core.budget import (
    DecodeShape,
    describe_megabytes,
    estimate_peak_bytes,
    memory_budget_bytes,
)
from functions.core.records import ImageMetadata, PermanentError
from functions.core.settings import Limits, PipelineSettings, RenditionSpec
from functions.core.structure import scan_structure
from functions.core.timing import StageTimer

CONTENT_TYPES = {
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "png": "image/png",
    "avif": "image/avif",
    "gif": "image/gif",
}
ALPHA_FORMATS = frozenset({"png", "webp", "avif", "gif"})

# A reduced-size JPEG decode must keep at least this many source pixels per output
# pixel (per axis) for the largest rendition, so LANCZOS still has detail to filter:
# libjpeg's DCT scaling is a crude low-pass, and its chroma more so. Measured on the
# corpus against LANCZOS from a full decode: remaining ratios of 1.1-1.4 give 38-43 dB,
# 1.78 gives 44.3 dB on one sharp 10 MP photo, >= 1.8 stays above 45 dB everywhere.
# 1.8 still lets a 12 MP photo -> 1024x768 decode at 1/2 scale (ratio 1.97).
DRAFT_MARGIN = 1.8
# A smaller rendition is cut from a larger one only when the larger one has at
# least this many pixels per output pixel over the region needed; otherwise (a very
# wide panorama cropped to a square thumb, say) it goes back to the decoded source.
DERIVE_MARGIN = 2.0
# Pillow reduces by an integer factor (box filter, fast) until the remaining LANCZOS
# step is at most this ratio; 3.0 is indistinguishable from LANCZOS alone.
REDUCING_GAP = 3.0
# A full-size decode (PNG, WebP, a JPEG too small for a 1/2-scale draft) is first
# halved with a 2x2 box (`Image.reduce`, a few ms) when LANCZOS still has at least
# this ratio left afterwards; it cuts an 8 MP JPEG's resize from ~120 to ~45 ms.
# Measured against LANCZOS from full size:
# - JPEG photos (corpus): 1.59 left (8 MP -> 1024x768) gives 52-53 dB and 1.78 gives
#   48.5 dB, where the same ratios after a 1/2-scale draft give 44 dB (no 8x8 block
#   edges in a box). A lossy JPEG has no pixel-sharp edges left, so 1.5 is safe.
# - Pixel-sharp graphics (1-px lines, likely in PNG, GIF, lossless WebP): 1.61 left
#   gives 38 dB, 1.78 gives 41, 2.0 gives 45.6, 2.44 gives 55. So 2.0 for those.
JPEG_BOX_HALVING_MARGIN = 1.5
BOX_HALVING_MARGIN = 2.0
# Beyond this ratio of long to short side an image is refused before decoding: no
# rendition of a 1x100,000,000 strip is worth seconds of per-row resampling. Webtoon
# strips and 360-degree panoramas stay well under it.
MAX_ASPECT_RATIO = 100

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
_SWAPS_AXES = frozenset({5, 6, 7, 8})

_EXIF_MAKE, _EXIF_MODEL, _EXIF_ORIENTATION = 0x010F, 0x0110, 0x0112
_EXIF_IFD, _EXIF_DATETIME_ORIGINAL = 0x8769, 0x9003

# What Pillow may raise while parsing or decoding hostile bytes. Caught only around
# Pillow calls, so our own bugs still surface as bugs.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    struct.error,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
)


@dataclass(frozen=True)
class EncodedRendition:
    spec: RenditionSpec
    data: bytes
    width: int
    height: int
    format: str  # resolved output format: jpeg | webp | png | avif | gif
    content_type: str


@dataclass(frozen=True)
class RenderResult:
    metadata: ImageMetadata
    renditions: tuple[EncodedRendition, ...]


@dataclass(frozen=True)
class SourceImage:
    """An upload whose header passed every limit: Pillow's lazy image, nothing decoded yet."""

    image: Image.Image
    format: str  # as detected from the content
    frames: int
    input_bytes: int


def render_image(data: bytes, settings: PipelineSettings, timer: StageTimer) -> RenderResult:
    """Run every stage on one upload's bytes. Raises `PermanentError` for bad content.

    What a large image held is handed back to the OS once its buffers are freed.
    """
    with memory_returned_when_large():
        return _render_stages(data, settings, timer)


def _render_stages(data: bytes, settings: PipelineSettings, timer: StageTimer) -> RenderResult:
    with timer.stage("detect"):
        detected = detect_format(data)
    with timer.stage("validate"):
        if detected not in settings.allowed_formats:
            shown = detected or "unrecognised content"
            raise PermanentError(
                "unsupported_format",
                f"{shown}; allowed: {', '.join(settings.allowed_formats)}",
            )
        source = open_checked(data, detected, settings.limits)
    with timer.stage("inspect"):
        metadata = inspect(source)
    with timer.stage("render"):
        budget = memory_budget_bytes(settings.limits.memory_mb)
        rendered = render(source, metadata, settings.renditions, memory_budget=budget)
    outputs = []
    for spec, picture in rendered:
        with timer.stage("encode"):
            outputs.append(encode(picture, spec, metadata, settings.strip_metadata))
    return RenderResult(metadata, tuple(outputs))


# --- detect -------------------------------------------------------------------------


def detect_format(data: bytes) -> str | None:
    """The input format from magic bytes alone (never the name or Content-Type).

    Returns one of settings.INPUT_FORMATS, "HEIF" (recognised, never accepted), or
    None for anything unrecognised.
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


# --- validate -----------------------------------------------------------------------

# Pillow's decompression-bomb guard is process-global state twice over: the threshold
# is the module attribute `PIL.Image.MAX_IMAGE_PIXELS` (89 MP by default) and turning
# its warning into an error means changing the global warnings filters
# (`warnings.catch_warnings` is documented as not thread-safe). A Cloud Functions gen2
# instance serves concurrent requests on threads, and one process may carry settings
# that differ from another caller's, so flipping either for the length of a decode
# would race and would leak our limit into unrelated code. So the swap is confined to
# the header parse: under `_HEADER_LOCK` we set the threshold to this call's
# `max_pixels`, make the warning an error, run `Image.open` + the frame count (no
# pixel is decoded, well under a millisecond), and restore both. Every limit is
# decided there; decoding happens afterwards, outside the lock, and in parallel.
_HEADER_LOCK = threading.Lock()


@contextmanager
def _bomb_guard(max_pixels: int) -> Iterator[None]:
    with _HEADER_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def open_checked(data: bytes, detected: str, limits: Limits) -> SourceImage:
    """Walk the structure, parse the header with a one-format allowlist, enforce the limits.

    Nothing is decoded here: a header that claims enormous dimensions is refused
    before any pixel buffer exists. The walk that can take long on hostile files
    (`scan_structure`) runs before the lock; under it, Pillow sees only structures
    it parses in milliseconds.
    """
    counted_frames = scan_structure(data, detected, limits.max_frames)
    try:
        with _bomb_guard(limits.max_pixels):
            _load_plugin(detected)
            image = Image.open(BytesIO(data), formats=[detected])
            width, height = image.size
            if width * height > limits.max_pixels:  # belt and braces: same limit
                raise _too_many_pixels(width, height, limits)
            # A GIF's frames were counted by the walk; Pillow would step through each.
            frames = counted_frames or getattr(image, "n_frames", 1)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise PermanentError(
            "too_many_pixels",
            f"the {detected} header claims more than {limits.max_pixels} pixels",
        ) from None
    except _DECODE_ERRORS as error:
        raise PermanentError(
            "corrupt_image", f"the {detected} data cannot be read ({_describe(error)})"
        ) from None
    if width < 1 or height < 1:
        raise PermanentError("corrupt_image", f"the {detected} header says {width}x{height}")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise PermanentError(
            "extreme_aspect_ratio",
            f"the image is {width}x{height}; one side may be at most {MAX_ASPECT_RATIO} "
            "times the other",
        )
    if frames > limits.max_frames:
        raise PermanentError(
            "too_many_frames", f"the image has {frames} frames; the limit is {limits.max_frames}"
        )
    return SourceImage(image, detected, frames, len(data))


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
def _load_plugin(fmt: str) -> None:
    """Import one format's plugin, so Pillow never falls back to importing all ~45 of
    them (`Image.init()`, tens of milliseconds on a cold start) for WebP or AVIF."""
    importlib.import_module(f"PIL.{_PLUGINS[fmt.upper()]}")


def _too_many_pixels(width: int, height: int, limits: Limits) -> PermanentError:
    return PermanentError(
        "too_many_pixels",
        f"the image is {width}x{height} ({width * height} pixels); "
        f"the limit is {limits.max_pixels}",
    )


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text[:120]}" if text else type(error).__name__


# --- inspect ------------------------------------------------------------------------


def inspect(source: SourceImage) -> ImageMetadata:
    """What the header says, with width/height as a viewer shows them. Never GPS."""
    image, detected = source.image, source.format
    exif = _read_exif(image, detected)
    orientation = exif.get(_EXIF_ORIENTATION)
    orientation = orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else None
    width, height = image.size
    if orientation in _SWAPS_AXES:
        width, height = height, width
    return ImageMetadata(
        format=detected,
        width=width,
        height=height,
        mode=image.mode,
        has_alpha=_has_alpha(image),
        frames=source.frames,
        has_icc_profile=bool(image.info.get("icc_profile")),
        orientation=orientation,
        camera_make=_exif_text(exif.get(_EXIF_MAKE)),
        camera_model=_exif_text(exif.get(_EXIF_MODEL)),
        captured_at=_captured_at(exif),
    )


_EXIF_DATETIME = re.compile(r"(\d{4}):(\d\d):(\d\d) (\d\d):(\d\d):(\d\d)")


def _read_exif(image: Image.Image, detected: str) -> Image.Exif:
    # PNG's getexif() decodes the whole image to look for an eXIf chunk after the
    # pixel data; the PNG spec puts eXIf before IDAT, so the header is enough.
    if detected == "PNG" and "exif" not in image.info:
        return Image.Exif()
    try:
        return image.getexif()
    except _DECODE_ERRORS:  # a broken EXIF block does not make a broken image
        return Image.Exif()


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def _exif_text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    text = value.replace("\x00", "").strip()
    return text[:64] or None


def _captured_at(exif: Image.Exif) -> str | None:
    try:
        raw = _exif_text(exif.get_ifd(_EXIF_IFD).get(_EXIF_DATETIME_ORIGINAL))
    except _DECODE_ERRORS:
        return None
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
    except ValueError:
        return None


# --- render -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """One rendition's geometry in the *stored* (unrotated) source's pixel space."""

    spec: RenditionSpec
    region: tuple[float, float, float, float]  # the part of the source it shows
    size: tuple[int, int]  # output size before orientation is applied

    @property
    def scale(self) -> float:
        """Output pixels per source pixel (the larger axis, to be safe)."""
        x0, y0, x1, y1 = self.region
        return max(self.size[0] / (x1 - x0), self.size[1] / (y1 - y0))


@dataclass(frozen=True)
class _Picture:
    """An image, the source region it covers and its pixels per source pixel (stored orientation).

    The scale is explicit, not image size / region size: a reduced JPEG decode's last
    row and column are partial pixels, and ignoring that shifts every rendition.
    """

    image: Image.Image
    region: tuple[float, float, float, float]
    scale_x: float
    scale_y: float


def plan_rendition(
    source_size: tuple[int, int], spec: RenditionSpec, orientation: int | None
) -> _Plan:
    """Where a rendition comes from in the source, and how big it is. Never upscales.

    contain: the whole image, scaled to fit the box.
    cover: the centred crop with the box's aspect ratio, scaled to exactly the box;
    a source smaller than the box keeps the crop at its own resolution.
    Computed in stored orientation with the box turned when the EXIF orientation
    swaps axes; centred crops are symmetric, so that is the same region a viewer sees.
    """
    width, height = source_size
    box_w, box_h = (
        (spec.height, spec.width) if orientation in _SWAPS_AXES else (spec.width, spec.height)
    )
    if spec.fit == "contain":
        scale = min(box_w / width, box_h / height, 1.0)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return _Plan(spec, (0.0, 0.0, float(width), float(height)), size)
    aspect = box_w / box_h
    if width / height > aspect:
        crop_w, crop_h = height * aspect, float(height)
    else:
        crop_w, crop_h = float(width), width / aspect
    left, top = (width - crop_w) / 2, (height - crop_h) / 2
    region = (left, top, left + crop_w, top + crop_h)
    if crop_w <= box_w:  # the source is smaller than the box: crop only
        size = (max(1, min(box_w, round(crop_w))), max(1, min(box_h, round(crop_h))))
    else:
        size = (box_w, box_h)
    return _Plan(spec, region, size)


def render(
    source: SourceImage,
    metadata: ImageMetadata,
    specs: tuple[RenditionSpec, ...],
    *,
    memory_budget: int | None = None,
) -> list[tuple[RenditionSpec, Image.Image]]:
    """Decode once and cut every rendition: oriented, in sRGB, RGB or RGBA, in spec order.

    With `memory_budget` (bytes), a decode whose estimated peak exceeds it is refused
    before it starts (`over_memory_budget`).
    """
    image = source.image
    icc = image.info.get("icc_profile") or None
    decode = _plan_decode(source, metadata, specs)
    if memory_budget is not None:
        _check_memory_budget(source, decode, memory_budget)
    margin = JPEG_BOX_HALVING_MARGIN if image.format in ("JPEG", "MPO") else BOX_HALVING_MARGIN
    plans, max_scale = decode.plans, decode.max_scale
    base = _halved_while_sharp(_decode(image, decode.stored_size, decode.scale), max_scale, margin)
    made: list[_Picture] = []
    results: dict[str, Image.Image] = {}
    # Largest first, so smaller renditions can be cut from larger ones.
    for plan in sorted(plans, key=lambda p: p.scale, reverse=True):
        parent = _best_parent(plan, made) or base
        picture = _resize(parent, plan)
        made.append(picture)
        results[plan.spec.name] = _finish(picture.image, metadata, plan.spec, icc)
    return [(spec, results[spec.name]) for spec in specs]


@dataclass(frozen=True)
class _DecodePlan:
    """What the renditions need from the one decode, decided before any pixel is decoded."""

    stored_size: tuple[int, int]
    plans: list[_Plan]
    max_scale: float
    scale: tuple[float, float]  # decoded pixels per stored pixel (a reduced JPEG decode)


def _plan_decode(
    source: SourceImage, metadata: ImageMetadata, specs: tuple[RenditionSpec, ...]
) -> _DecodePlan:
    stored_size = source.image.size
    plans = [plan_rendition(stored_size, spec, metadata.orientation) for spec in specs]
    max_scale = max(plan.scale for plan in plans)
    return _DecodePlan(stored_size, plans, max_scale, _choose_decode_scale(source.image, max_scale))


def _choose_decode_scale(image: Image.Image, max_scale: float) -> tuple[float, float]:
    """Ask for a reduced-size JPEG decode where the renditions allow; nothing is decoded.

    Returns the decoded pixels per stored pixel on each axis. Pillow's `draft` only
    configures the decoder (and shrinks `image.size`), so the budget can be checked
    against the size that will really be decoded.
    """
    if image.format not in ("JPEG", "MPO") or max_scale * DRAFT_MARGIN >= 0.5:
        return 1.0, 1.0
    width, height = image.size
    wanted = (
        max(1, math.ceil(width * max_scale * DRAFT_MARGIN)),
        max(1, math.ceil(height * max_scale * DRAFT_MARGIN)),
    )
    try:
        drafted = image.draft(image.mode, wanted)
    except _DECODE_ERRORS as error:
        raise PermanentError(
            "corrupt_image", f"the {image.format} data cannot be read ({_describe(error)})"
        ) from None
    if drafted is None:
        return 1.0, 1.0
    # The box is the original extent in the reduced image's pixels; the last row and
    # column may be partial, so geometry uses the box, not the reduced size.
    _, box = drafted
    return box[2] / width, box[3] / height


def _check_memory_budget(source: SourceImage, decode: _DecodePlan, budget: int) -> None:
    estimate = estimate_peak_bytes(_decode_shape(source, decode))
    if estimate > budget:
        width, height = decode.stored_size
        raise PermanentError(
            "over_memory_budget",
            f"decoding this {width}x{height} {source.format} would hold about "
            f"{describe_megabytes(estimate)}; the budget is {describe_megabytes(budget)} "
            "(set by memoryMb)",
        )


def _decode_shape(source: SourceImage, decode: _DecodePlan) -> DecodeShape:
    """What the decode will allocate, from the header and the plans (after `draft`)."""
    image = source.image
    progressive = bool(image.info.get("progressive")) and image.format in ("JPEG", "MPO")
    layers = (getattr(image, "layer", None) or ()) if progressive else ()
    return DecodeShape(
        format=source.format,
        canvas=decode.stored_size,
        decoded=image.size,
        mode=image.mode,
        working_mode=_working_mode(image),
        outputs=tuple(plan.size for plan in decode.plans),
        input_bytes=source.input_bytes,
        progressive_sampling=tuple((layer[1], layer[2]) for layer in layers),
    )


def estimate_render_bytes(data: bytes, settings: PipelineSettings) -> int:
    """The peak `render_image` would be checked against the budget with; decodes nothing.

    For benchmarks and tests that compare the estimate with what a render really holds.
    """
    detected = detect_format(data)
    if detected is None:
        raise PermanentError("unsupported_format", "unrecognised content")
    source = open_checked(data, detected, settings.limits)
    decode = _plan_decode(source, inspect(source), settings.renditions)
    return estimate_peak_bytes(_decode_shape(source, decode))


def _decode(
    image: Image.Image, stored_size: tuple[int, int], scale: tuple[float, float]
) -> _Picture:
    """The one full decode, into a mode LANCZOS works in; first frame of an animation.

    When that mode needs a conversion, the decoded source is released as soon as the
    converted copy exists, so the two are held together only for a moment.
    """
    width, height = stored_size
    try:
        if image.format == "WEBP" and hasattr(getattr(image, "_decoder", None), "get_next"):
            decoded = _first_webp_frame(image)
        else:
            image.load()
            decoded = image
        working = _resizable(decoded)
        if working is not image:
            image.close()  # drops Pillow's pixels; size, mode and info stay readable
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise PermanentError("too_many_pixels", "the image data exceeds the pixel limit") from None
    except _DECODE_ERRORS as error:
        raise PermanentError(
            "corrupt_image", f"the {image.format} data is truncated or corrupt ({_describe(error)})"
        ) from None
    return _Picture(working, (0.0, 0.0, float(width), float(height)), *scale)


def _halved_while_sharp(picture: _Picture, max_scale: float, margin: float) -> _Picture:
    """Halve with a 2x2 box while every rendition keeps `margin` for LANCZOS after it.

    `Image.reduce` averages the partial last row/column of an odd size, so the scale
    is exactly halved, as after a JPEG draft.
    """
    while (
        min(picture.scale_x, picture.scale_y) >= 2 * margin * max_scale
        and min(picture.image.size) >= 2
    ):
        picture = _Picture(
            picture.image.reduce(2), picture.region, picture.scale_x / 2, picture.scale_y / 2
        )
    return picture


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


# Pillow premultiplies alpha for every resize and reduce of an RGBA image, converting
# the *whole* image each time, even for a box of it: a strip-wise resize of a large
# RGBA source converted it once per strip. Working in premultiplied alpha from the
# start converts once; `_finish` turns each (small) rendition back into RGBA.
_PREMULTIPLIED = {"RGBA": "RGBa", "LA": "La"}


def _working_mode(image: Image.Image) -> str:
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
    return "RGBa" if _has_alpha(image) else "RGB"


def _resizable(image: Image.Image) -> Image.Image:
    """The image in its working mode (`_working_mode`), alpha premultiplied."""
    target = _working_mode(image)
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


def _best_parent(plan: _Plan, made: list[_Picture]) -> _Picture | None:
    """The smallest rendition already made that holds the plan's region with pixels to spare."""
    x0, y0, x1, y1 = plan.region
    best: _Picture | None = None
    for picture in made:
        px0, py0, px1, py1 = picture.region
        epsilon = 1e-6
        if x0 < px0 - epsilon or y0 < py0 - epsilon or x1 > px1 + epsilon or y1 > py1 + epsilon:
            continue
        if min(picture.scale_x, picture.scale_y) < plan.scale * DERIVE_MARGIN:
            continue
        if best is None or picture.image.width * picture.image.height < (
            best.image.width * best.image.height
        ):
            best = picture
    return best


def _resize(parent: _Picture, plan: _Plan) -> _Picture:
    px0, py0, _, _ = parent.region
    scale_x, scale_y = parent.scale_x, parent.scale_y
    x0, y0, x1, y1 = plan.region
    box = ((x0 - px0) * scale_x, (y0 - py0) * scale_y, (x1 - px0) * scale_x, (y1 - py0) * scale_y)
    box = (
        max(0.0, box[0]),
        max(0.0, box[1]),
        min(float(parent.image.width), box[2]),
        min(float(parent.image.height), box[3]),
    )
    if plan.size == parent.image.size and box == (0.0, 0.0, *map(float, parent.image.size)):
        resized = parent.image.copy()
    else:
        resized = _resize_in_strips(parent.image, plan.size, box)
    return _Picture(
        resized,
        plan.region,
        plan.size[0] / (x1 - x0),
        plan.size[1] / (y1 - y0),
    )


# Pillow resizes in two passes; the first holds output width x source height.
# For a 12 MP JPEG decoded at 1/2 that is 6 MB on top of a 12 MB source, so large
# resizes go in horizontal strips of output rows. Each strip's box carries the exact
# source span of its rows and Pillow reads filter support from outside the box, so
# the pixels match one resize: identical when strip edges fall on whole source rows
# (the 12 MP photo), otherwise within +-1 from per-strip coefficient rounding
# (tests/core/test_speed_paths.py). Same speed within noise (A/B: 56-61 ms both ways).
_STRIP_PIXELS = 400_000


def _resize_in_strips(
    image: Image.Image, size: tuple[int, int], box: tuple[float, float, float, float]
) -> Image.Image:
    x0, y0, x1, y1 = box
    first_pass_pixels = size[0] * (y1 - y0)
    if first_pass_pixels <= 2 * _STRIP_PIXELS:
        return image.resize(size, Image.Resampling.LANCZOS, box=box, reducing_gap=REDUCING_GAP)
    rows_per_source_row = size[1] / (y1 - y0)
    step = max(16, math.ceil(_STRIP_PIXELS * rows_per_source_row / size[0]))
    output = Image.new(image.mode, size)
    source_per_row = (y1 - y0) / size[1]
    for top in range(0, size[1], step):
        bottom = min(size[1], top + step)
        strip_box = (x0, y0 + top * source_per_row, x1, y0 + bottom * source_per_row)
        strip = image.resize(
            (size[0], bottom - top),
            Image.Resampling.LANCZOS,
            box=strip_box,
            reducing_gap=REDUCING_GAP,
        )
        output.paste(strip, (0, top))
    return output


def _finish(
    image: Image.Image, metadata: ImageMetadata, spec: RenditionSpec, icc: bytes | None
) -> Image.Image:
    """Orientation applied, colour in sRGB, RGB or RGBA as the output format allows."""
    if image.mode == "RGBa":
        image = image.convert("RGBA")
    elif image.mode == "La":
        image = image.convert("LA")
    if metadata.orientation in _ORIENTATION_TRANSPOSE:
        image = image.transpose(_ORIENTATION_TRANSPOSE[metadata.orientation])
    image = to_srgb(image, icc)
    if image.mode == "RGBA" and output_format(spec, metadata) not in ALPHA_FORMATS:
        flat = Image.new("RGB", image.size, (255, 255, 255))
        flat.paste(image, mask=image.getchannel("A"))
        image = flat
    return image


def to_srgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    """RGB or RGBA in sRGB. An embedded profile is honoured; a broken one is ignored."""
    if image.mode == "RGBX":
        image = image.convert("RGB")
    alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else None
    colour = image.convert(image.mode[:-1]) if alpha is not None else image
    converted = None
    if icc:
        transform = _transform_to_srgb(icc, colour.mode)
        if transform is not None:
            from PIL import ImageCms

            converted = ImageCms.applyTransform(colour, transform)
    if converted is None:
        converted = colour if colour.mode == "RGB" else colour.convert("RGB")
    if alpha is not None:
        converted.putalpha(alpha)
    return converted


@lru_cache(maxsize=1)
def _srgb_profile():  # -> ImageCms.ImageCmsProfile (imported lazily: most images have no ICC)
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@lru_cache(maxsize=32)
def _transform_to_srgb(icc: bytes, mode: str):  # -> ImageCms.ImageCmsTransform | None
    """Built once per (profile, mode): building a LittleCMS transform costs milliseconds."""
    from PIL import ImageCms

    try:
        source = ImageCms.ImageCmsProfile(BytesIO(icc))
        return ImageCms.buildTransform(source, _srgb_profile(), mode, "RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as error:
        import logging  # only here: ~10 ms of a cold start for a rare message

        logging.getLogger("imagepipe").info(
            "ignoring an unusable ICC profile (%s)", _describe(error)
        )
        return None


# --- encode -------------------------------------------------------------------------


def output_format(spec: RenditionSpec, metadata: ImageMetadata) -> str:
    """The format a rendition is written in; "source" keeps the input's when the web can show it."""
    if spec.format != "source":
        return spec.format
    web = {"JPEG": "jpeg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "AVIF": "avif"}
    if metadata.format in web:
        return web[metadata.format]
    return "png" if metadata.has_alpha else "jpeg"


def encode(
    image: Image.Image, spec: RenditionSpec, metadata: ImageMetadata, strip_metadata: bool
) -> EncodedRendition:
    """Per-format rules; deterministic: the same pixels and spec give the same bytes.

    Metadata: the pixels are already oriented and in sRGB, so with `strip_metadata`
    nothing else is written: no EXIF (GPS above all), no XMP, no comment and no ICC
    profile (untagged images are shown as sRGB by browsers; a profile would only
    add bytes). Without it, the sRGB profile is embedded so the colour is explicit;
    camera EXIF is still not copied, because its GPS and orientation would be wrong
    or private in a rendition.
    """
    fmt = output_format(spec, metadata)
    image.info.clear()  # resize/convert copy the source's info (exif, icc, xmp, comment)
    options: dict[str, object] = {}
    if not strip_metadata and fmt != "gif":  # GIF has no colour profiles
        options["icc_profile"] = _srgb_profile().tobytes()
    if fmt == "jpeg":
        options.update(quality=spec.quality, optimize=True, progressive=True)
    elif fmt == "webp":
        options.update(quality=spec.quality, method=4)
    elif fmt == "avif":
        options.update(quality=spec.quality)
    elif fmt in ("png", "gif"):
        options.update(optimize=True)
    buffer = BytesIO()
    _load_plugin(fmt)
    image.save(buffer, format=fmt.upper(), **options)
    return EncodedRendition(
        spec, buffer.getvalue(), image.width, image.height, fmt, CONTENT_TYPES[fmt]
    )
