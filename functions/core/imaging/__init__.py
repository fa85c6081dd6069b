"""The image stages: detect -> validate -> inspect -> render -> encode.

Pillow and the standard library only. Each stage is a small function in a module of
its own; `render_image` runs them in order and times each one. Everything that can
go wrong with the *content* becomes a `PermanentError` with a code from the closed
set; nothing Pillow raises on hostile bytes escapes, and nothing of ours is
mistaken for a broken image (`errors.pillow_errors_are_corrupt` wraps Pillow only).

Decode once: the source is decoded a single time, at reduced size where the format
allows it (JPEG DCT scaling via `draft`), and every rendition is cut from that
decode or, when it has pixels enough, from a larger rendition made before it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from functions.core.allocator import memory_returned_when_large
from functions.core.budget import estimate_peak_bytes, memory_budget_bytes
from functions.core.imaging import encode as encoding
from functions.core.imaging.animation import (
    Animation,
    animated_specs,
    check_animation_budget,
    render_animations,
)
from functions.core.imaging.decode import decode_shape, plan_decode
from functions.core.imaging.encode import EncodedRendition
from functions.core.imaging.exif import inspect
from functions.core.imaging.formats import detect_format
from functions.core.imaging.limits import SourceImage, open_checked
from functions.core.imaging.renditions import render
from functions.core.placeholders import placeholder_and_colour
from functions.core.records import ImageMetadata, PermanentError
from functions.core.settings import PipelineSettings, RenditionSpec
from functions.core.timing import StageTimer

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "EncodedRendition",
    "RenderResult",
    "SourceImage",
    "detect_format",
    "estimate_render_bytes",
    "inspect",
    "open_checked",
    "render",
    "render_image",
]


@dataclass(frozen=True)
class RenderResult:
    metadata: ImageMetadata
    renditions: tuple[EncodedRendition, ...]


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
        _check_allowed(detected, settings.allowed_formats)
        source = open_checked(data, detected, settings.limits)
    with timer.stage("inspect"):
        metadata = inspect(source)
    with timer.stage("render"):
        budget = memory_budget_bytes(settings.limits.memory_mb)
        animated = animated_specs(source, metadata, settings.renditions)
        check_animation_budget(source, metadata, settings.renditions, animated, budget)
        rendered = render(source, metadata, settings.renditions, memory_budget=budget)
        metadata = _with_placeholder(metadata, rendered)
        animations = _animations(data, settings, metadata, animated, budget)
    outputs = []
    for spec, picture in rendered:
        with timer.stage("encode"):
            if spec.name in animations:
                outputs.append(
                    encoding.encode_animation(
                        animations.pop(spec.name), spec, metadata, settings.strip_metadata
                    )
                )
            else:
                outputs.append(encoding.encode(picture, spec, metadata, settings.strip_metadata))
    return RenderResult(metadata, tuple(outputs))


def _animations(
    data: bytes,
    settings: PipelineSettings,
    metadata: ImageMetadata,
    animated: tuple[RenditionSpec, ...],
    budget: int,
) -> dict[str, Animation]:
    """The animated renditions' frames, from a second open of the bytes (the still
    render consumed the first); its header passes the same checks again."""
    if not animated:
        return {}
    source = open_checked(data, metadata.format, settings.limits)
    return render_animations(source, metadata, settings.renditions, animated, budget)


def _with_placeholder(
    metadata: ImageMetadata, rendered: list[tuple[RenditionSpec, Image.Image]]
) -> ImageMetadata:
    """The smallest rendition's placeholder and colour, from its pixels before encoding."""
    if not rendered:
        return metadata
    smallest = min((picture for _, picture in rendered), key=lambda p: p.width * p.height)
    placeholder, colour = placeholder_and_colour(smallest)
    return replace(metadata, placeholder=placeholder, dominant_colour=colour)


def _check_allowed(detected: str | None, allowed: tuple[str, ...]) -> None:
    if detected not in allowed:
        shown = detected or "unrecognised content"
        raise PermanentError("unsupported_format", f"{shown}; allowed: {', '.join(allowed)}")


def estimate_render_bytes(data: bytes, settings: PipelineSettings) -> int:
    """The peak `render_image` would be checked against the budget with; decodes nothing.

    For benchmarks and tests that compare the estimate with what a render really holds.
    """
    detected = detect_format(data)
    if detected is None:
        raise PermanentError("unsupported_format", "unrecognised content")
    source = open_checked(data, detected, settings.limits)
    decode = plan_decode(source, inspect(source), settings.renditions)
    return estimate_peak_bytes(decode_shape(source, decode))
