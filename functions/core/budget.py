"""The memory budget: what a decode will hold at its peak, estimated before it starts.

A 92-byte WebP can declare a 10000x10000 canvas that libwebp holds three times over
(1.2 GB). On a function such an upload is killed for memory, retried, killed again,
and never reaches a FAILED record. So every decode is priced from its header first
and refused (`over_memory_budget`) when the price exceeds a budget derived from the
function's memory: a clear permanent failure instead of an out-of-memory loop.

Pure arithmetic, no Pillow: the numbers per pixel are Pillow 13's, measured by
`bench/memory_bench.py`, which prints each estimate next to the measured peak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIB = 1024 * 1024
# What the runtime itself holds before any image: Python, the SDKs, Pillow (Lambda's
# handler cold-starts at about 100 MB; functions-framework with three Google clients
# at about 120 MB). The rest of the function's memory, less a tenth of headroom for
# the allocator's fragmentation, is what one image may use.
RUNTIME_RESERVE_MB = 128
BUDGET_FRACTION = 0.8
# Pillow allocates 4 bytes per pixel for every mode of 3 or 4 bands (RGB is RGBX).
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
_SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
# pillow-heif's modes: libheif's interleaved output holds these bytes a pixel.
_HEIF_OUTPUT_BYTES = {"L": 1, "I;16": 2, "RGB": 3, "RGBA": 4}
# Python, the format's plugin and LittleCMS's transforms: what any decode adds.
_FIXED_OVERHEAD = 12 * MIB


def memory_budget_bytes(memory_mb: int) -> int:
    """What one image may hold at its peak in a function with `memory_mb` of memory."""
    return int(max(0, memory_mb - RUNTIME_RESERVE_MB) * MIB * BUDGET_FRACTION)


def bytes_per_pixel(mode: str) -> int:
    return _BYTES_PER_PIXEL.get(mode, 4)


@dataclass(frozen=True)
class DecodeShape:
    """What a decode will allocate, read from the header and the render plan."""

    format: str  # as detected: JPEG, PNG, GIF, WEBP, ...
    canvas: tuple[int, int]  # the full stored size (a GIF's screen, a WebP's canvas)
    decoded: tuple[int, int]  # what is decoded: smaller for a reduced-size JPEG decode
    mode: str  # Pillow's mode of the decoded image
    working_mode: str  # the mode it is resized in (RGB, RGBA, L, ...); a copy if it differs
    outputs: tuple[tuple[int, int], ...]  # each rendition's size
    input_bytes: int
    # A progressive JPEG: libjpeg keeps every DCT coefficient of the whole image,
    # two bytes each, whatever the reduced size: one entry per component, its
    # (horizontal, vertical) sampling factor.
    progressive_sampling: tuple[tuple[int, int], ...] = ()


def estimate_peak_bytes(shape: DecodeShape) -> int:
    """The most a render of `shape` holds at one time, rounded up: never below what it uses."""
    decoded_pixels = shape.decoded[0] * shape.decoded[1]
    decoded = decoded_pixels * bytes_per_pixel(shape.mode)
    working = decoded_pixels * bytes_per_pixel(shape.working_mode)
    converts = shape.working_mode != shape.mode
    # While decoding: the decoder's own buffers next to the image it fills.
    if shape.format == "WEBP":
        # libwebp's animation decoder: its canvas, the previous-frame canvas, and the
        # frame it hands over, each 4 bytes per canvas pixel.
        during_decode = 3 * 4 * shape.canvas[0] * shape.canvas[1]
    elif shape.format == "AVIF":
        during_decode = decoded + 6 * decoded_pixels  # YUV planes of up to 12 bits
    elif shape.format == "HEIF":
        during_decode = decoded + _heif_decoder_bytes(shape, decoded_pixels)
    else:
        during_decode = decoded + _coefficient_bytes(shape)
    # Afterwards: the working copy (the decoded image is released once converted),
    # then the 2x2 halvings and Pillow's reduce-before-resize, at most a third more,
    # while each rendition is resized, oriented and converted to sRGB (about four
    # copies of the output at once for an RGBA one) and all of them wait for encoding.
    output_pixels = [width * height for width, height in shape.outputs]
    while_resizing = (
        working
        + math.ceil(working / 3)
        + 4 * sum(output_pixels)
        + 12 * max(output_pixels, default=0)
    )
    converting = decoded + _conversion_bytes(shape, decoded_pixels) if converts else 0
    peak = max(during_decode, converting, while_resizing)
    return peak + shape.input_bytes + _FIXED_OVERHEAD


def _conversion_bytes(shape: DecodeShape, pixels: int) -> int:
    """What the conversion into the working mode holds next to the decoded image."""
    if shape.mode in _SIXTEEN_BIT:
        return 9 * pixels  # to 32-bit, scaled (another 32-bit image), then to 8-bit grey
    if shape.working_mode == "RGBa" and shape.mode not in ("RGBA", "RGBa"):
        return 8 * pixels  # through RGBA, then premultiplied
    return pixels * bytes_per_pixel(shape.working_mode)


def _heif_decoder_bytes(shape: DecodeShape, pixels: int) -> int:
    """What libheif holds beside Pillow's image while pillow-heif decodes a HEIF.

    libheif decodes the tiles into YUV planes, converts them into one interleaved
    8-bit image (3 bytes a pixel, 4 with alpha: pillow-heif scales 10 and 12 bits to 8
    there), which Pillow then copies; pillow-heif also keeps its own copy of the file.
    Measured above Pillow's 4 bytes a pixel: 3.6 for an 8-bit iPhone grid, 4.0 for
    10 bits, 4.7 with alpha; 1.5 bytes a pixel cover the planes and the tile decoders.
    """
    interleaved = _HEIF_OUTPUT_BYTES.get(shape.mode, 4)
    return math.ceil(pixels * (interleaved + 1.5)) + shape.input_bytes


def _coefficient_bytes(shape: DecodeShape) -> int:
    if shape.format != "JPEG" or not shape.progressive_sampling:
        return 0
    width, height = shape.canvas
    max_h = max(h for h, _ in shape.progressive_sampling)
    max_v = max(v for _, v in shape.progressive_sampling)
    total = 0
    for h, v in shape.progressive_sampling:
        blocks_x = math.ceil(math.ceil(width * h / max_h) / 8)
        blocks_y = math.ceil(math.ceil(height * v / max_v) / 8)
        total += blocks_x * blocks_y * 64 * 2
    return total


def describe_megabytes(count: int) -> str:
    return f"{math.ceil(count / MIB)} MB"


@dataclass(frozen=True)
class AnimationShape:
    """What an animated rendition's decode holds: every output frame until it is encoded."""

    format: str  # GIF or WEBP
    canvas: tuple[int, int]  # the composited frame's size (a GIF's screen, a WebP's canvas)
    frames: int
    outputs: tuple[tuple[int, int], ...]  # each animated rendition's frame size
    stills: tuple[tuple[int, int], ...]  # the still renditions, held meanwhile for encoding
    input_bytes: int


# Per canvas pixel while one frame is decoded and made resizable. GIF: Pillow's frame,
# the previous frame it composites onto and the disposal region (4 bytes each), our RGBA
# copy and its premultiplied copy. WebP: libwebp's three canvases, Pillow's bytes copy and
# image, and our premultiplied copy.
_FRAME_BYTES_PER_CANVAS_PIXEL = {"GIF": 20, "WEBP": 24}


def estimate_animation_bytes(shape: AnimationShape) -> int:
    """The most an animated render holds at one time, rounded up, before any frame is decoded.

    Every output frame (4 bytes a pixel) is held until its rendition is encoded; next to
    them, either one frame being decoded and resized, or an encoder: for GIF our palette
    copy of every frame and the writer's own (1 byte a pixel each, and its deltas), the
    palette's sample (at most 1 MP) and two frames compared in RGB; libwebp keeps a few
    canvases of the output and the frames it has encoded.
    """
    canvas_pixels = shape.canvas[0] * shape.canvas[1]
    frame_pixels = [width * height for width, height in shape.outputs]
    held = 4 * shape.frames * sum(frame_pixels)
    per_canvas = _FRAME_BYTES_PER_CANVAS_PIXEL.get(shape.format, 24)
    decoding = (
        per_canvas * canvas_pixels
        + math.ceil(4 * canvas_pixels / 3)  # the 2x2 halvings
        + 12 * max(frame_pixels, default=0)  # resize, orientation and sRGB of one frame
    )
    largest = max(frame_pixels, default=0)
    encoding = 3 * shape.frames * largest + 16 * largest + 4 * 1_000_000
    stills = 4 * sum(width * height for width, height in shape.stills)
    return held + max(decoding, encoding) + stills + shape.input_bytes + _FIXED_OVERHEAD
