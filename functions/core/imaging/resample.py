"""Resampling: halving a full-size decode with a 2x2 box, and LANCZOS in strips."""

from __future__ import annotations

from PIL import Image

from functions.core.imaging.decode import Picture
from functions.core.imaging.geometry import (
    Plan,
    box_in,
    halved,
    is_whole,
    placed,
    strips,
    worth_halving,
)
from functions.core.imaging.tuning import REDUCING_GAP, STRIP_PIXELS


def halved_while_sharp(picture: Picture, max_scale: float, margin: float) -> Picture:
    """Halve with a 2x2 box (`Image.reduce`, a few ms) while every rendition keeps
    `margin` for LANCZOS after it: far cheaper than LANCZOS over the full size."""
    while worth_halving(picture.placement, max_scale, margin):
        image = picture.image.reduce(2)
        picture = Picture(image, halved(picture.placement, image.size))
    return picture


def cut(parent: Picture, plan: Plan) -> Picture:
    """The plan's rendition, resampled from `parent` (or copied when it is the same)."""
    box = box_in(parent.placement, plan)
    if is_whole(parent.placement, plan, box):
        resized = parent.image.copy()
    else:
        resized = resize_in_strips(parent.image, plan.size, box)
    return Picture(resized, placed(plan))


def resize_in_strips(
    image: Image.Image, size: tuple[int, int], box: tuple[float, float, float, float]
) -> Image.Image:
    """LANCZOS, in horizontal strips of output rows when the first pass would be large.

    Pillow reads filter support from outside each strip's box, so the pixels match one
    resize: identical when strip edges fall on whole source rows, otherwise within
    +-1 from per-strip coefficient rounding (tests/core/test_speed_paths.py).
    """
    pieces = strips(size, box, STRIP_PIXELS)
    if pieces is None:
        return image.resize(size, Image.Resampling.LANCZOS, box=box, reducing_gap=REDUCING_GAP)
    output = Image.new(image.mode, size)
    for top, strip_size, strip_box in pieces:
        strip = image.resize(
            strip_size, Image.Resampling.LANCZOS, box=strip_box, reducing_gap=REDUCING_GAP
        )
        output.paste(strip, (0, top))
    return output
