"""Every limit decided from the header, before a pixel is decoded; the decompression-bomb guard.

Pillow's bomb guard is process-global state twice over: the threshold is the module
attribute `PIL.Image.MAX_IMAGE_PIXELS` (89 MP by default) and turning its warning
into an error means changing the global warnings filters (`warnings.catch_warnings`
is documented as not thread-safe). A Cloud Functions gen2 instance serves concurrent
requests on threads, and one process may carry settings that differ from another
caller's, so flipping either for the length of a decode would race and would leak
our limit into unrelated code. So the swap is confined to the header parse: under
`HEADER_LOCK` we set the threshold to this call's `max_pixels`, make the warning an
error, run `Image.open` + the frame count (no pixel is decoded, well under a
millisecond), and restore both. Every limit is decided there; decoding happens
afterwards, outside the lock, and in parallel.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO

from PIL import Image

from functions.core.imaging.errors import pillow_errors_are_corrupt
from functions.core.imaging.formats import load_plugin
from functions.core.imaging.tuning import MAX_ASPECT_RATIO
from functions.core.records import PermanentError
from functions.core.settings import Limits
from functions.core.structure import scan_structure

HEADER_LOCK = threading.Lock()


@dataclass(frozen=True)
class SourceImage:
    """An upload whose header passed every limit: Pillow's lazy image, nothing decoded yet."""

    image: Image.Image
    format: str  # as detected from the content
    frames: int
    input_bytes: int


@contextmanager
def _bomb_guard(max_pixels: int) -> Iterator[None]:
    with HEADER_LOCK, warnings.catch_warnings():
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
    load_plugin(detected)
    unreadable = f"the {detected} data cannot be read"
    try:
        with _bomb_guard(limits.max_pixels):
            with pillow_errors_are_corrupt(unreadable):
                image = Image.open(BytesIO(data), formats=[detected])
            width, height = image.size
            if width * height > limits.max_pixels:  # belt and braces: same limit
                raise _too_many_pixels(width, height, limits)
            # A GIF's frames were counted by the walk; Pillow would step through each.
            if counted_frames:
                frames = counted_frames
            else:
                with pillow_errors_are_corrupt(unreadable):
                    frames = getattr(image, "n_frames", 1)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise PermanentError(
            "too_many_pixels",
            f"the {detected} header claims more than {limits.max_pixels} pixels",
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


def _too_many_pixels(width: int, height: int, limits: Limits) -> PermanentError:
    return PermanentError(
        "too_many_pixels",
        f"the image is {width}x{height} ({width * height} pixels); "
        f"the limit is {limits.max_pixels}",
    )
