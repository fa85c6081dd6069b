"""The pure geometry, tested without images: no Pillow here, none in the module either."""

from __future__ import annotations

import ast
import itertools
import math
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from functions.core.imaging import geometry
from functions.core.imaging.geometry import (
    SWAPS_AXES,
    Placement,
    best_parent,
    box_in,
    draft_request,
    placed,
    plan_rendition,
    strips,
)
from functions.core.imaging.tuning import DERIVE_MARGIN, DRAFT_MARGIN
from functions.core.settings import RenditionSpec

sides = st.integers(min_value=1, max_value=20_000)
boxes = st.integers(min_value=1, max_value=8192)
orientations = st.sampled_from([None, 1, 2, 3, 4, 5, 6, 7, 8])
specs = st.builds(
    RenditionSpec,
    name=st.just("r"),
    width=boxes,
    height=boxes,
    fit=st.sampled_from(["contain", "cover"]),
)
GEOMETRY = settings(max_examples=300, deadline=None)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    return names | {
        node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    }


def test_geometry_and_its_constants_import_no_pillow():
    folder = Path(geometry.__file__).parent
    for name in ("geometry.py", "tuning.py"):
        assert not {m for m in imported_modules(folder / name) if m.split(".")[0] == "PIL"}, name


def viewer_box(spec: RenditionSpec, orientation: int | None) -> tuple[int, int]:
    """The box in stored orientation (a quarter turn swaps it)."""
    return (spec.height, spec.width) if orientation in SWAPS_AXES else (spec.width, spec.height)


@GEOMETRY
@given(width=sides, height=sides, spec=specs, orientation=orientations)
def test_a_plan_fits_the_box_never_upscales_and_stays_inside_the_source(
    width, height, spec, orientation
):
    plan = plan_rendition((width, height), spec, orientation)
    box_w, box_h = viewer_box(spec, orientation)
    x0, y0, x1, y1 = plan.region
    out_w, out_h = plan.size
    assert 1 <= out_w <= box_w and 1 <= out_h <= box_h
    assert -1e-9 <= x0 < x1 <= width + 1e-9 and -1e-9 <= y0 < y1 <= height + 1e-9
    # Never upscaled: at most one output pixel per source pixel, give or take rounding.
    assert out_w <= math.ceil(x1 - x0) and out_h <= math.ceil(y1 - y0)


@GEOMETRY
@given(width=sides, height=sides, spec=specs, orientation=orientations)
def test_contain_shows_everything_and_keeps_the_aspect(width, height, spec, orientation):
    spec = RenditionSpec(spec.name, spec.width, spec.height, "contain")
    plan = plan_rendition((width, height), spec, orientation)
    assert plan.region == (0.0, 0.0, float(width), float(height))
    box_w, box_h = viewer_box(spec, orientation)
    assert plan.size[0] == box_w or plan.size[1] == box_h or plan.size == (width, height)
    # Rounding to whole pixels (at least one) moves each side by under a pixel.
    out_w, out_h = plan.size
    assert abs(out_w * height - out_h * width) <= width + height


@GEOMETRY
@given(width=sides, height=sides, spec=specs, orientation=orientations)
def test_cover_is_a_centred_crop_with_the_box_aspect(width, height, spec, orientation):
    spec = RenditionSpec(spec.name, spec.width, spec.height, "cover")
    plan = plan_rendition((width, height), spec, orientation)
    box_w, box_h = viewer_box(spec, orientation)
    x0, y0, x1, y1 = plan.region
    assert math.isclose(x0, width - x1, abs_tol=1e-6) and math.isclose(
        y0, height - y1, abs_tol=1e-6
    )
    # The crop's sides come from subtracting coordinates thousands of pixels out: a relative
    # 1e-6 allows that cancellation (a sliver 0.0002 px tall at y 4096) and nothing visible.
    assert math.isclose((x1 - x0) * box_h, (y1 - y0) * box_w, rel_tol=1e-6)
    if x1 - x0 > box_w:  # enough source: exactly the box
        assert plan.size == (box_w, box_h)


@GEOMETRY
@given(width=sides, height=sides, spec=specs, orientation=orientations)
def test_the_same_plan_every_time(width, height, spec, orientation):
    assert plan_rendition((width, height), spec, orientation) == plan_rendition(
        (width, height), spec, orientation
    )


@GEOMETRY
@given(
    width=sides,
    height=sides,
    specs=st.lists(specs, min_size=1, max_size=6),
    orientation=orientations,
)
def test_a_parent_holds_the_region_with_pixels_to_spare(width, height, specs, orientation):
    plans = sorted(
        (plan_rendition((width, height), spec, orientation) for spec in specs),
        key=lambda plan: plan.scale,
        reverse=True,
    )
    made: list[Placement] = []
    for plan in plans:
        index = best_parent(plan, made)
        if index is not None:
            parent = made[index]
            px0, py0, px1, py1 = parent.region
            x0, y0, x1, y1 = plan.region
            assert px0 - 1e-6 <= x0 and py0 - 1e-6 <= y0 and x1 <= px1 + 1e-6 and y1 <= py1 + 1e-6
            assert min(parent.scale_x, parent.scale_y) >= plan.scale * DERIVE_MARGIN
            assert all(
                other.pixels >= parent.pixels
                for other in made
                if best_parent(plan, [other]) is not None
            )
            bx0, by0, bx1, by1 = box_in(parent, plan)
            assert 0 <= bx0 < bx1 <= parent.size[0] and 0 <= by0 < by1 <= parent.size[1]
        made.append(placed(plan))


@GEOMETRY
@given(width=sides, height=sides, scale=st.floats(min_value=1e-4, max_value=1.0))
def test_a_draft_keeps_the_margin_or_is_not_asked_for(width, height, scale):
    wanted = draft_request((width, height), scale)
    if wanted is None:
        assert scale * DRAFT_MARGIN >= 0.5
    else:
        assert (
            wanted[0] >= width * scale * DRAFT_MARGIN and wanted[1] >= height * scale * DRAFT_MARGIN
        )
        assert wanted[0] <= width and wanted[1] <= height


@GEOMETRY
@given(
    out_w=st.integers(1, 4000),
    out_h=st.integers(1, 4000),
    top=st.floats(0, 100),
    rows=st.floats(1, 20_000),
    strip_pixels=st.integers(1_000, 1_000_000),
)
def test_strips_cover_every_output_row_and_the_source_span_once(
    out_w, out_h, top, rows, strip_pixels
):
    box = (0.0, top, float(out_w), top + rows)
    pieces = strips((out_w, out_h), box, strip_pixels)
    if pieces is None:
        assert out_w * rows <= 2 * strip_pixels
        return
    assert pieces[0][0] == 0 and pieces[0][2][1] == top
    assert sum(size[1] for _, size, _ in pieces) == out_h
    for (top_a, size_a, box_a), (top_b, _, box_b) in itertools.pairwise(pieces):
        assert top_a + size_a[1] == top_b and box_a[3] == box_b[1]
    assert math.isclose(pieces[-1][2][3], top + rows, rel_tol=1e-9)
