"""Placeholder benchmark: ThumbHash + dominant colour per thumb against the thumb's JPEG encode.

    .venv/bin/python bench/placeholder_bench.py [--corpus DIR] [--rounds N]

Thumbs: every corpus photo (../shared/corpus/photos when present, else generated
images) through the core's default renditions; the smallest (200x200 cover) is decoded
back to pixels, as the core holds it before encoding. For each thumb, interleaved round
by round so machine noise hits both alike:

  placeholder  functions.core.placeholders.placeholder_and_colour
  baseline     the same thumb encoded as the pipeline does next (JPEG q82, optimize)

Pinned to one CPU; medians reported. Not a test: it prints, it does not assert.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from io import BytesIO
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
DEFAULT_CORPUS = PROJECT_ROOT.parent / "shared" / "corpus" / "photos"
BUDGET_MS = 2.0


def corpus_inputs(corpus: Path) -> dict[str, bytes]:
    if corpus.is_dir():
        return {path.name: path.read_bytes() for path in sorted(corpus.iterdir()) if path.is_file()}
    from PIL import Image, ImageDraw

    inputs = {}
    for name, size in (("generated-12mp.jpg", (4000, 3000)), ("generated-vga.jpg", (640, 480))):
        image = Image.new("RGB", size, (30, 90, 160))
        ImageDraw.Draw(image).ellipse(
            (size[0] // 5, size[1] // 6, size[0] // 2, size[1] // 2), fill=(250, 200, 40)
        )
        buffer = BytesIO()
        image.save(buffer, "JPEG", quality=90)
        inputs[name] = buffer.getvalue()
    return inputs


def thumbs(inputs: dict[str, bytes]):
    from PIL import Image

    from functions.core.imaging import render_image
    from functions.core.records import PermanentError
    from functions.core.settings import PipelineSettings
    from functions.core.timing import StageTimer

    for name, data in inputs.items():
        try:
            result = render_image(data, PipelineSettings(), StageTimer())
        except PermanentError as error:
            print(f"  skipped {name}: {error.code}")
            continue
        smallest = min(result.renditions, key=lambda r: r.width * r.height)
        image = Image.open(BytesIO(smallest.data))
        yield name, image.convert("RGBA" if "A" in image.getbands() else "RGB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})

    from functions.core.placeholders import placeholder_and_colour

    cases = list(thumbs(corpus_inputs(args.corpus)))
    ours: dict[str, list[float]] = {name: [] for name, _ in cases}
    base: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _ in range(args.rounds):
        for name, image in cases:
            start = time.perf_counter()
            placeholder_and_colour(image)
            ours[name].append(time.perf_counter() - start)
            start = time.perf_counter()
            image.convert("RGB").save(BytesIO(), "JPEG", quality=82, optimize=True)
            base[name].append(time.perf_counter() - start)

    print(f"{'THUMB':40} {'SIZE':>8} {'PLACEHOLDER':>12} {'JPEG ENCODE':>12} {'RATIO':>6}  RESULT")
    for name, image in cases:
        placeholder, colour = placeholder_and_colour(image)
        a, b = statistics.median(ours[name]) * 1e3, statistics.median(base[name]) * 1e3
        size = f"{image.width}x{image.height}"
        print(f"{name:40} {size:>8} {a:10.3f}ms {b:10.3f}ms {a / b:6.2f}  {colour} {placeholder}")
    every_ours = statistics.median(t for times in ours.values() for t in times) * 1e3
    every_base = statistics.median(t for times in base.values() for t in times) * 1e3
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\nmedian per thumb over {len(cases)} thumbs x {args.rounds} rounds: placeholder"
        f" {every_ours:.3f} ms, JPEG encode of the same thumb {every_base:.3f} ms"
        f" (ratio {every_ours / every_base:.2f}); budget {BUDGET_MS} ms:"
        f" {'within' if every_ours < BUDGET_MS else 'OVER'}; load average {load:.1f}"
    )


if __name__ == "__main__":
    main()
