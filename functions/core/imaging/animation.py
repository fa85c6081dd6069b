"""Animated renditions (opt-in per rendition): every frame of an animated GIF or WebP.

A rendition keeps its frames when its spec says `animated`, the input is a GIF or WebP
of more than one frame, and it is written as GIF or WebP (`webp`, or `source`, which
keeps a GIF a GIF); everything else gets the still rendition of frame 1, as before.
Each frame is Pillow's full composited frame (disposal, blending and transparency
already applied by its GIF and WebP readers), cut by the same plans, halvings and
stages as a still (`renditions.cut_renditions`): oriented, in sRGB. What all the frames
will hold is priced and checked against the memory budget before anything is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from functions.core.budget import AnimationShape, describe_megabytes, estimate_animation_bytes
from functions.core.imaging.decode import Picture, resizable
from functions.core.imaging.encode import output_format
from functions.core.imaging.errors import pillow_errors_are_corrupt
from functions.core.imaging.geometry import plan_rendition, whole
from functions.core.imaging.limits import SourceImage
from functions.core.imaging.renditions import cut_renditions
from functions.core.imaging.resample import halved_while_sharp
from functions.core.imaging.tuning import BOX_HALVING_MARGIN
from functions.core.records import ImageMetadata, PermanentError
from functions.core.settings import RenditionSpec

ANIMATED_INPUTS = frozenset({"GIF", "WEBP"})
ANIMATED_OUTPUTS = frozenset({"gif", "webp"})


@dataclass(frozen=True)
class Animation:
    """An animated rendition before encoding."""

    frames: tuple[Image.Image, ...]  # one mode (RGB or RGBA), sRGB, the right way up
    durations: tuple[int, ...]  # milliseconds each frame shows, as the input says
    loop: int | None  # the input's loop count, 0 forever; None: a GIF without one plays once


def animated_specs(
    source: SourceImage, metadata: ImageMetadata, specs: tuple[RenditionSpec, ...]
) -> tuple[RenditionSpec, ...]:
    """The specs whose renditions of this input keep its frames."""
    if source.frames < 2 or source.format not in ANIMATED_INPUTS:
        return ()
    return tuple(
        spec
        for spec in specs
        if spec.animated and output_format(spec, metadata) in ANIMATED_OUTPUTS
    )


def check_animation_budget(
    source: SourceImage,
    metadata: ImageMetadata,
    specs: tuple[RenditionSpec, ...],
    animated: tuple[RenditionSpec, ...],
    budget: int,
    canvas: tuple[int, int] | None = None,
) -> None:
    """Refuse (`over_memory_budget`) animated renditions whose frames would not fit `budget`.

    Priced from the header alone, before any frame is decoded: every output frame is
    held until encoded, next to the still renditions (frame 1 of every spec).
    """
    if not animated:
        return
    stored = source.image.size
    shape = AnimationShape(
        format=source.format,
        canvas=canvas or stored,
        frames=source.frames,
        outputs=tuple(plan_rendition(stored, spec, metadata.orientation).size for spec in animated),
        stills=tuple(plan_rendition(stored, spec, metadata.orientation).size for spec in specs),
        input_bytes=source.input_bytes,
    )
    estimate = estimate_animation_bytes(shape)
    if estimate > budget:
        width, height = shape.canvas
        raise PermanentError(
            "over_memory_budget",
            f"keeping the {source.frames} frames of this {width}x{height} {source.format} "
            f"would hold about {describe_megabytes(estimate)}; the budget is "
            f"{describe_megabytes(budget)} (set by memoryMb)",
        )


def render_animations(
    source: SourceImage,
    metadata: ImageMetadata,
    specs: tuple[RenditionSpec, ...],
    animated: tuple[RenditionSpec, ...],
    budget: int | None = None,
) -> dict[str, Animation]:
    """Every frame of each animated spec's rendition, by spec name.

    `source` is a fresh, undecoded open of the upload (the still render has consumed
    its own). A GIF frame reaching beyond the logical screen makes Pillow grow its
    canvas: that larger canvas is priced (with `budget`) before it is decoded, and every
    frame is cropped to the screen, as browsers show it, so all frames share one geometry.
    """
    if not animated:
        return {}
    image = source.image
    stored = image.size
    plans = [plan_rendition(stored, spec, metadata.orientation) for spec in animated]
    max_scale = max(plan.scale for plan in plans)
    icc = image.info.get("icc_profile") or None
    frames: dict[str, list[Image.Image]] = {spec.name: [] for spec in animated}
    durations: list[int] = []
    unreadable = f"the {source.format} data is truncated or corrupt"
    canvas = stored
    try:
        for index in range(source.frames):
            with pillow_errors_are_corrupt(unreadable):
                image.seek(index)  # reads the frame's header; decodes the frame before it
            if image.size != canvas:
                canvas = image.size
                if budget is not None:
                    check_animation_budget(source, metadata, specs, animated, budget, canvas)
            with pillow_errors_are_corrupt(unreadable):
                image.load()
                frame = image if image.size == stored else image.crop((0, 0, *stored))
            durations.append(int(image.info.get("duration") or 0))
            working = resizable(frame)
            base = halved_while_sharp(
                Picture(working, whole(stored, (1.0, 1.0), working.size)),
                max_scale,
                BOX_HALVING_MARGIN,
            )
            for name, picture in cut_renditions(base, plans, metadata.orientation, icc).items():
                frames[name].append(picture)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise PermanentError("too_many_pixels", "a frame exceeds the pixel limit") from None
    loop = image.info.get("loop")
    image.close()
    return {
        name: Animation(_one_mode(pictures), tuple(durations), loop)
        for name, pictures in frames.items()
    }


def _one_mode(frames: list[Image.Image]) -> tuple[Image.Image, ...]:
    """RGBA throughout when any frame has alpha (encoders expect one mode per animation)."""
    if all(frame.mode == "RGB" for frame in frames):
        return tuple(frames)
    return tuple(frame if frame.mode == "RGBA" else frame.convert("RGBA") for frame in frames)
