"""The render stage: decode once, cut every rendition, turn each the right way up in sRGB.

Each rendition is cut from the decode or, when it has pixels enough, from a larger
rendition made before it; orientation is applied after resizing (fewer pixels to turn).
"""

from __future__ import annotations

from PIL import Image

from functions.core.imaging.colour import to_srgb
from functions.core.imaging.decode import (
    Picture,
    check_memory_budget,
    decode,
    is_jpeg,
    plan_decode,
    straight_alpha,
)
from functions.core.imaging.exif import oriented
from functions.core.imaging.geometry import Plan, best_parent
from functions.core.imaging.limits import SourceImage
from functions.core.imaging.resample import cut, halved_while_sharp
from functions.core.imaging.tuning import BOX_HALVING_MARGIN, JPEG_BOX_HALVING_MARGIN
from functions.core.records import ImageMetadata
from functions.core.settings import RenditionSpec


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
    plan = plan_decode(source, metadata, specs)
    if memory_budget is not None:
        check_memory_budget(source, plan, memory_budget)
    margin = JPEG_BOX_HALVING_MARGIN if is_jpeg(image) else BOX_HALVING_MARGIN
    base = halved_while_sharp(decode(image, plan), plan.max_scale, margin)
    results = cut_renditions(base, plan.plans, metadata.orientation, icc)
    return [(spec, results[spec.name]) for spec in specs]


def cut_renditions(
    base: Picture, plans: list[Plan], orientation: int | None, icc: bytes | None
) -> dict[str, Image.Image]:
    """Every plan's rendition of one decoded picture (a still, or one frame of an
    animation): oriented, in sRGB, RGB or RGBA, by spec name."""
    made: list[Picture] = []
    results: dict[str, Image.Image] = {}
    # Largest first, so smaller renditions can be cut from larger ones.
    for rendition in sorted(plans, key=lambda p: p.scale, reverse=True):
        parent = best_parent(rendition, [picture.placement for picture in made])
        picture = cut(base if parent is None else made[parent], rendition)
        made.append(picture)
        results[rendition.spec.name] = to_srgb(
            oriented(straight_alpha(picture.image), orientation), icc
        )
    return results
