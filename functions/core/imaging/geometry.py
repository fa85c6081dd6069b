"""Pure geometry: where each rendition comes from, how big it is, which one it is cut from.

Arithmetic only, no Pillow: regions are in the *stored* (unrotated) source's pixels,
and an image's `Placement` says which region it covers at how many pixels per
source pixel, so tests state these properties without building a single image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from functions.core.imaging.tuning import DERIVE_MARGIN, DRAFT_MARGIN
from functions.core.settings import RenditionSpec

Box = tuple[float, float, float, float]  # left, top, right, bottom

# EXIF orientations that turn the picture a quarter (the viewer's width is the stored height).
SWAPS_AXES = frozenset({5, 6, 7, 8})
_EPSILON = 1e-6


@dataclass(frozen=True)
class Plan:
    """One rendition's geometry in the stored source's pixel space."""

    spec: RenditionSpec
    region: Box  # the part of the source it shows
    size: tuple[int, int]  # output size before orientation is applied

    @property
    def scale(self) -> float:
        """Output pixels per source pixel (the larger axis, to be safe)."""
        x0, y0, x1, y1 = self.region
        return max(self.size[0] / (x1 - x0), self.size[1] / (y1 - y0))


@dataclass(frozen=True)
class Placement:
    """Where an image's pixels sit in the source: the region they cover and at what scale.

    The scale is explicit, not size / region size: a reduced JPEG decode's last row
    and column are partial pixels, and ignoring that shifts every rendition.
    """

    region: Box
    scale_x: float  # the image's pixels per source pixel, horizontally
    scale_y: float
    size: tuple[int, int]  # the image's pixels

    @property
    def pixels(self) -> int:
        return self.size[0] * self.size[1]


def plan_rendition(
    source_size: tuple[int, int], spec: RenditionSpec, orientation: int | None
) -> Plan:
    """Where a rendition comes from in the source, and how big it is. Never upscales.

    contain: the whole image, scaled to fit the box.
    cover: the centred crop with the box's aspect ratio, scaled to exactly the box;
    a source smaller than the box keeps the crop at its own resolution.
    Computed in stored orientation with the box turned when the EXIF orientation
    swaps axes; centred crops are symmetric, so that is the same region a viewer sees.
    """
    width, height = source_size
    box_w, box_h = (
        (spec.height, spec.width) if orientation in SWAPS_AXES else (spec.width, spec.height)
    )
    if spec.fit == "contain":
        scale = min(box_w / width, box_h / height, 1.0)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return Plan(spec, (0.0, 0.0, float(width), float(height)), size)
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
    return Plan(spec, region, size)


def draft_request(size: tuple[int, int], max_scale: float) -> tuple[int, int] | None:
    """The smallest decode a JPEG's DCT scaling may be asked for, or None when it cannot
    reduce (1/2 is its first step) without leaving LANCZOS too little detail."""
    if max_scale * DRAFT_MARGIN >= 0.5:
        return None
    width, height = size
    return (
        max(1, math.ceil(width * max_scale * DRAFT_MARGIN)),
        max(1, math.ceil(height * max_scale * DRAFT_MARGIN)),
    )


def whole(
    stored_size: tuple[int, int], scale: tuple[float, float], decoded_size: tuple[int, int]
) -> Placement:
    """A decode of the whole source, `scale` decoded pixels per stored pixel."""
    width, height = stored_size
    return Placement((0.0, 0.0, float(width), float(height)), *scale, decoded_size)


def worth_halving(placement: Placement, max_scale: float, margin: float) -> bool:
    """Whether a 2x2 box still leaves every rendition `margin` for LANCZOS afterwards."""
    return (
        min(placement.scale_x, placement.scale_y) >= 2 * margin * max_scale
        and min(placement.size) >= 2
    )


def halved(placement: Placement, size: tuple[int, int]) -> Placement:
    """After a 2x2 box reduce to `size`: the partial last row/column is averaged, so the
    scale is exactly halved, as after a JPEG draft."""
    return Placement(placement.region, placement.scale_x / 2, placement.scale_y / 2, size)


def best_parent(plan: Plan, made: list[Placement]) -> int | None:
    """The index of the smallest image already made that holds the plan's region with
    pixels to spare, or None (cut from the decode)."""
    x0, y0, x1, y1 = plan.region
    best: int | None = None
    for index, placement in enumerate(made):
        px0, py0, px1, py1 = placement.region
        if x0 < px0 - _EPSILON or y0 < py0 - _EPSILON or x1 > px1 + _EPSILON or y1 > py1 + _EPSILON:
            continue
        if min(placement.scale_x, placement.scale_y) < plan.scale * DERIVE_MARGIN:
            continue
        if best is None or placement.pixels < made[best].pixels:
            best = index
    return best


def box_in(parent: Placement, plan: Plan) -> Box:
    """The plan's region in the parent image's pixels, clamped to the image."""
    px0, py0, _, _ = parent.region
    scale_x, scale_y = parent.scale_x, parent.scale_y
    x0, y0, x1, y1 = plan.region
    box = ((x0 - px0) * scale_x, (y0 - py0) * scale_y, (x1 - px0) * scale_x, (y1 - py0) * scale_y)
    return (
        max(0.0, box[0]),
        max(0.0, box[1]),
        min(float(parent.size[0]), box[2]),
        min(float(parent.size[1]), box[3]),
    )


def is_whole(parent: Placement, plan: Plan, box: Box) -> bool:
    """The plan wants the parent exactly as it is: a copy, no resampling."""
    return plan.size == parent.size and box == (0.0, 0.0, *map(float, parent.size))


def placed(plan: Plan) -> Placement:
    """Where a rendition made by `plan` sits."""
    x0, y0, x1, y1 = plan.region
    return Placement(plan.region, plan.size[0] / (x1 - x0), plan.size[1] / (y1 - y0), plan.size)


def strips(
    size: tuple[int, int], box: Box, strip_pixels: int
) -> list[tuple[int, tuple[int, int], Box]] | None:
    """(top row, strip size, source box) of each horizontal strip of output rows, or None
    when one resize's first pass (output width x source rows) is small enough as it is.

    Each strip's box carries the exact source span of its rows, so the strips together
    cover the box exactly once.
    """
    x0, y0, x1, y1 = box
    if size[0] * (y1 - y0) <= 2 * strip_pixels:
        return None
    rows_per_source_row = size[1] / (y1 - y0)
    step = max(16, math.ceil(strip_pixels * rows_per_source_row / size[0]))
    source_per_row = (y1 - y0) / size[1]
    result = []
    for top in range(0, size[1], step):
        bottom = min(size[1], top + step)
        strip_box = (x0, y0 + top * source_per_row, x1, y0 + bottom * source_per_row)
        result.append((top, (size[0], bottom - top), strip_box))
    return result
