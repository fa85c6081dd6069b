"""Memory bench: the core's decode estimate next to the peak a render really holds.

    .venv/bin/python bench/memory_bench.py [--corpus DIR] [--only TEXT]

For every case (the hostile files of tests/core/hostile_files.py, the corpus's
largest files, a few synthetic modes) a fresh process renders the default
renditions with the budget lifted and reports its peak resident memory above the
baseline it had just before the render (VmHWM after clearing it through
/proc/self/clear_refs). Next to it: the estimate the core checks against the
budget, their ratio (it must never fall below 0.9), what the default settings
(memoryMb 1024, every input format allowed) decide, and how long that takes. Then the hostile header
structures: how long judging each takes. Not a test: it prints, it does not assert.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
DEFAULT_CORPUS = PROJECT_ROOT.parent / "shared" / "corpus" / "photos"
CORPUS_CASES = (
    "jpg_olympus_24mp_UPSCALED_q92.jpg",
    "jpg_olympus_12mp_PROGRESSIVE_q90.jpg",
    "jpg_olympus_ep3_12mp.jpg",
    "jpg_nokia83_9mp.jpg",
    "png_jolla_8mp_FROMJPEG.png",
    "png_scan_4160x870.png",
    "webp_nokia83_9mp_FROMJPEG_q85.webp",
    "webp_iss634_anim_rgba.webp",
    "gif_iphone6_1600_FROMJPEG.gif",
    "gif_chi_anim31.gif",
)
UNLIMITED_MEMORY_MB = 32768  # the largest memoryMb: its budget is far above any case here


def synthetic_cases() -> dict[str, bytes]:
    """Modes the corpus lacks, each large enough for its buffers to dominate."""
    from io import BytesIO

    from PIL import Image, ImageDraw

    def saved(image: Image.Image, fmt: str, **options) -> bytes:
        buffer = BytesIO()
        image.save(buffer, fmt, **options)
        return buffer.getvalue()

    rgba = Image.new("RGBA", (4000, 3000), (20, 120, 200, 255))
    draw = ImageDraw.Draw(rgba)
    for x in range(0, 4000, 40):
        draw.line((x, 0, 4000 - x, 3000), fill=(x % 256, 30, 90, x % 256), width=3)
    grey16 = Image.linear_gradient("L").resize((4000, 3000)).convert("I").point(lambda v: v * 257)
    return {
        "synthetic-rgba-12mp.png": saved(rgba, "PNG", compress_level=1),
        "synthetic-palette-alpha-12mp.png": saved(
            rgba.convert("P", palette=Image.Palette.ADAPTIVE), "PNG", transparency=0
        ),
        "synthetic-grey16-12mp.png": saved(grey16.convert("I;16"), "PNG"),
        "synthetic-cmyk-12mp.jpg": saved(rgba.convert("CMYK"), "JPEG", quality=90),
        "synthetic-rgba-12mp.webp": saved(rgba, "WEBP", quality=80),
        "synthetic-rgb-12mp.avif": saved(rgba.convert("RGB"), "AVIF", quality=60, speed=10),
        "synthetic-rgb-12mp.bmp": saved(rgba.convert("RGB"), "BMP"),
        "synthetic-rgba-12mp.tiff": saved(rgba, "TIFF", compression="tiff_deflate"),
    }


def hostile_cases() -> dict[str, bytes]:
    from tests.core.hostile_files import MEMORY_HOSTILE

    return {name: make() for name, make in MEMORY_HOSTILE.items()}


# --- the worker: one case in a fresh process --------------------------------------------


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(path: str) -> None:
    from functions.core.imaging import detect_format, estimate_render_bytes, render_image
    from functions.core.records import PermanentError
    from functions.core.settings import INPUT_FORMATS, Limits, PipelineSettings
    from functions.core.timing import StageTimer

    data = Path(path).read_bytes()
    default = PipelineSettings(allowed_formats=INPUT_FORMATS)
    unlimited = PipelineSettings(
        allowed_formats=INPUT_FORMATS, limits=Limits(memory_mb=UNLIMITED_MEMORY_MB)
    )
    result: dict[str, object] = {}
    try:
        result["estimate"] = estimate_render_bytes(data, unlimited)
    except PermanentError as error:
        result["estimate_error"] = error.code
    # What the default settings decide, and how long it takes to decide it.
    started = time.perf_counter()
    try:
        render_image(data, default, StageTimer())
        result["default"] = "COMPLETED"
    except PermanentError as error:
        result["default"] = error.code
    result["default_ms"] = (time.perf_counter() - started) * 1000
    detect_format(data)
    # The measured peak: a fresh high-water mark just before the render.
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    baseline = _status("VmRSS")
    try:
        render_image(data, unlimited, StageTimer())
        result["unlimited"] = "COMPLETED"
    except PermanentError as error:
        result["unlimited"] = error.code
    result["peak"] = _status("VmHWM") - baseline
    result["baseline"] = baseline
    print(json.dumps(result))


def run_case(data: bytes) -> dict[str, object]:
    with tempfile.NamedTemporaryFile(suffix=".bin") as handle:
        handle.write(data)
        handle.flush()
        output = subprocess.run(
            [sys.executable, __file__, "--worker", handle.name],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        ).stdout
    return json.loads(output.strip().splitlines()[-1])


def header_timings() -> list[tuple[str, str, float]]:
    from functions.core.imaging import render_image
    from functions.core.records import PermanentError
    from functions.core.settings import PipelineSettings
    from functions.core.timing import StageTimer
    from tests.core.hostile_files import SLOW_HEADERS

    rows = []
    for name, make in SLOW_HEADERS.items():
        data = make()
        started = time.perf_counter()
        try:
            render_image(data, PipelineSettings(), StageTimer())
            outcome = "COMPLETED"
        except PermanentError as error:
            outcome = error.code
        rows.append((f"{name} ({len(data) / 1e6:.0f} MB)", outcome, time.perf_counter() - started))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--only", default="", help="run the cases whose name contains TEXT")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return 0

    from functions.core.budget import MIB, memory_budget_bytes

    cases = hostile_cases()
    if args.corpus.is_dir():
        cases.update({name: (args.corpus / name).read_bytes() for name in CORPUS_CASES})
    else:
        print(f"(corpus not found at {args.corpus}: its cases are left out)")
    cases.update(synthetic_cases())
    budget = memory_budget_bytes(1024)
    print(f"budget at memoryMb 1024: {budget / MIB:.0f} MB\n")
    header = (
        f"{'case':<38} {'bytes':>9} {'estimate':>9} {'peak':>8} {'est/peak':>8}  "
        f"{'memoryMb 1024':<20} {'ms':>7}"
    )
    print(header)
    print("-" * len(header))
    worst = None
    for name, data in cases.items():
        if args.only not in name:
            continue
        result = run_case(data)
        estimate = result.get("estimate")
        peak = int(result["peak"])  # type: ignore[arg-type]
        ratio = estimate / peak if isinstance(estimate, int) and peak > 0 else None
        if ratio is not None and (worst is None or ratio < worst[1]):
            worst = (name, ratio)
        shown_estimate = f"{estimate / MIB:.0f} MB" if isinstance(estimate, int) else "-"
        shown_ratio = f"{ratio:.2f}" if ratio is not None else "-"
        print(
            f"{name:<38} {len(data):>9} {shown_estimate:>9} {peak / MIB:>5.0f} MB {shown_ratio:>8}"
            f"  {result['default']!s:<20} {result['default_ms']:>7.1f}"
        )
    if worst:
        print(f"\nlowest estimate / measured peak: {worst[1]:.2f} ({worst[0]}); must stay >= 0.90")
    print("\nheader structures (validate under the default settings):")
    for name, outcome, seconds in header_timings():
        print(f"  {name:<40} {outcome:<20} {seconds * 1000:7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
