"""Invariants of every rendition, over generated sizes, boxes, fits and orientations."""

from __future__ import annotations

from io import BytesIO

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from functions.core.imaging import render_image
from functions.core.imaging.tuning import MAX_ASPECT_RATIO
from functions.core.settings import PipelineSettings, RenditionSpec
from functions.core.timing import StageTimer
from tests.core.images import dominant, encoded, jpeg_with_exif, quadrants

SWAPPING = {5, 6, 7, 8}
sides = st.integers(min_value=8, max_value=1400)
boxes = st.integers(min_value=1, max_value=900)
specs = st.builds(
    RenditionSpec,
    name=st.just("r"),
    width=boxes,
    height=boxes,
    fit=st.sampled_from(["contain", "cover"]),
    format=st.sampled_from(["jpeg", "png", "webp"]),
    quality=st.integers(min_value=40, max_value=95),
)
PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def renderable(width: int, height: int) -> bool:
    """Within the aspect-ratio rule; beyond it an image is refused (tests/core/test_budget.py)."""
    return max(width, height) <= MAX_ASPECT_RATIO * min(width, height)


def render_one(data: bytes, spec: RenditionSpec):
    result = render_image(data, PipelineSettings(renditions=(spec,)), StageTimer())
    return result.metadata, result.renditions[0]


@PROPERTY
@given(width=sides, height=sides, spec=specs)
def test_fits_the_box_keeps_the_aspect_never_upscales(width, height, spec):
    assume(renderable(width, height))
    _, out = render_one(encoded(quadrants((width, height)), "PNG"), spec)
    assert (out.width, out.height) == Image.open(BytesIO(out.data)).size
    assert out.width <= spec.width and out.height <= spec.height
    assert out.width <= width and out.height <= height
    if spec.fit == "contain":
        # the aspect is kept to within one pixel of rounding on the shorter side
        assert abs(out.width * height - out.height * width) <= max(width, height)
        assert (
            out.width == spec.width
            or out.height == spec.height
            or (out.width, out.height)
            == (
                width,
                height,
            )
        )
    else:
        if width >= spec.width and height >= spec.height:
            assert (out.width, out.height) == (spec.width, spec.height)
        else:  # the centred crop at the box's aspect, not enlarged
            assert abs(out.width * spec.height - out.height * spec.width) <= max(
                spec.width, spec.height
            )


@PROPERTY
@given(
    width=st.integers(min_value=40, max_value=600),
    height=st.integers(min_value=40, max_value=600),
    orientation=st.integers(min_value=1, max_value=8),
)
def test_orientation_is_applied(width, height, orientation):
    data = jpeg_with_exif(quadrants((width, height)), **{str(0x0112): orientation})
    spec = RenditionSpec("r", 2000, 2000, "contain", "png")
    meta, out = render_one(data, spec)
    shown = (height, width) if orientation in SWAPPING else (width, height)
    assert (out.width, out.height) == shown == (meta.width, meta.height)
    # The corner a viewer shows top-left holds the colour the transpose puts there.
    from PIL import ImageOps

    viewer = ImageOps.exif_transpose(Image.open(BytesIO(data))).convert("RGB")
    image = Image.open(BytesIO(out.data)).convert("RGB")
    corner = (2, 2, 12, 12)
    assert dominant(image, corner) == dominant(viewer, corner)


@settings(max_examples=15, deadline=None)
@given(width=sides, height=sides, spec=specs)
def test_same_input_same_bytes(width, height, spec):
    assume(renderable(width, height))
    data = encoded(quadrants((width, height)))
    assert render_one(data, spec)[1].data == render_one(data, spec)[1].data
