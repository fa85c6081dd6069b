"""The memory budget and the header walks: a small file never takes a function down.

Each hostile file is generated here (tests/core/hostile_files.py): canvases that
would cost gigabytes to decode, structures that cost seconds to walk. Every one
ends FAILED with a permanent code, quickly, before a pixel is decoded; ordinary
photos still fit a small function.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from functions.core import imaging
from functions.core.budget import (
    MIB,
    DecodeShape,
    estimate_peak_bytes,
    memory_budget_bytes,
)
from functions.core.imaging import estimate_render_bytes, limits, open_checked
from functions.core.records import PermanentError, Status
from functions.core.settings import Limits, PipelineSettings
from tests.conftest import PROJECT_ROOT
from tests.core.hostile_files import (
    MEMORY_HOSTILE,
    SLOW_HEADERS,
    gif_canvas,
    jpeg_with_app1_segments,
    png_of_zeros,
    webp_canvas,
)
from tests.core.images import FakeStack, encoded, quadrants

# The table: what each ends as under the default memoryMb (1024), and at 512.
AT_1024 = {
    "webp-10000x10000-canvas-1px": "over_memory_budget",  # libwebp: 3 canvases, 1.2 GB
    "png-9999x9999-rgba-zeros": "over_memory_budget",
    "png-1x100000000": "extreme_aspect_ratio",
}
AT_512 = {name: "extreme_aspect_ratio" for name in MEMORY_HOSTILE if "1x1000" in name}


def settings_with(memory_mb: int) -> PipelineSettings:
    return PipelineSettings(limits=Limits(memory_mb=memory_mb))


@pytest.fixture(scope="module")
def hostile() -> dict[str, bytes]:
    return {name: make() for name, make in MEMORY_HOSTILE.items()}


@pytest.mark.parametrize("name", sorted(AT_1024))
def test_a_decode_that_would_not_fit_is_refused_before_it_starts(hostile, name):
    pipeline = FakeStack()
    started = time.perf_counter()
    outcome = pipeline.process(pipeline.upload(name, hostile[name]))
    elapsed = time.perf_counter() - started
    assert outcome.action == "failed"
    assert outcome.record.error.code == AT_1024[name] and not outcome.record.error.retryable
    assert pipeline.renditions() == {}
    assert elapsed < 0.5  # bench/memory_bench.py measures the refusals at well under 50 ms


def test_the_refusal_names_the_estimate_and_the_budget(hostile):
    pipeline = FakeStack()
    outcome = pipeline.process(pipeline.upload("a.webp", hostile["webp-10000x10000-canvas-1px"]))
    message = outcome.record.error.message
    budget_mb = -(-memory_budget_bytes(1024) // MIB)
    assert message.startswith("decoding this 10000x10000 WEBP would hold about ")
    assert f"the budget is {budget_mb} MB (set by memoryMb)" in message
    assert int(message.split("about ")[1].split(" MB")[0]) > 1100


@pytest.mark.parametrize("name", sorted(MEMORY_HOSTILE))
def test_a_smaller_function_refuses_every_canvas_bomb(hostile, name):
    pipeline = FakeStack(settings=settings_with(512))
    outcome = pipeline.process(pipeline.upload(name, hostile[name]))
    assert outcome.record.status is Status.FAILED
    assert outcome.record.error.code == AT_512.get(name, "over_memory_budget")


def test_a_larger_function_decodes_what_a_smaller_one_refuses():
    data = gif_canvas(4000, 4000)  # an 80 MB decode
    assert estimate_render_bytes(data, settings_with(1024)) > memory_budget_bytes(160)
    small = FakeStack(settings=settings_with(160))
    assert small.process(small.upload("a.gif", data)).record.error.code == "over_memory_budget"
    large = FakeStack(settings=settings_with(1024))
    assert large.process(large.upload("a.gif", data)).action == "completed"


def test_ordinary_photos_fit_a_small_function(corpus_photos):
    """A 24 MP JPEG, an 8 MP PNG and a 9 MP WebP all fit 512 MB."""
    for name in (
        "jpg_olympus_24mp_UPSCALED_q92.jpg",
        "png_jolla_8mp_FROMJPEG.png",
        "webp_nokia83_9mp_FROMJPEG_q85.webp",
    ):
        data = (corpus_photos / name).read_bytes()
        assert estimate_render_bytes(data, settings_with(512)) < memory_budget_bytes(512), name


def test_the_budget_grows_with_memory_and_leaves_the_runtime_its_share():
    budgets = [memory_budget_bytes(mb) for mb in (128, 256, 1024, 10240)]
    assert budgets == sorted(budgets) and budgets[0] == 0
    assert memory_budget_bytes(1024) < 1024 * MIB - 128 * MIB


def test_the_estimate_prices_each_decode_path():
    outputs = ((1024, 768),)
    png = estimate_peak_bytes(
        DecodeShape("PNG", (4000, 3000), (4000, 3000), "RGB", "RGB", outputs, 0)
    )
    assert png >= 12_000_000 * 4  # one RGB(X) copy of every pixel, at least
    webp = estimate_peak_bytes(
        DecodeShape("WEBP", (4000, 3000), (4000, 3000), "RGBA", "RGBa", outputs, 0)
    )
    assert webp >= 3 * 4 * 12_000_000  # libwebp's three canvases
    drafted = estimate_peak_bytes(
        DecodeShape("JPEG", (4000, 3000), (2000, 1500), "RGB", "RGB", outputs, 0)
    )
    assert drafted < png / 2  # a half-size decode holds a quarter of the pixels
    sampling = ((2, 2), (1, 1), (1, 1))  # 4:2:0
    progressive = estimate_peak_bytes(
        DecodeShape("JPEG", (4000, 3000), (2000, 1500), "RGB", "RGB", outputs, 0, sampling)
    )
    # libjpeg keeps every coefficient of a progressive image, whatever the decoded size:
    # 1.5 planes of 2 bytes per pixel next to the half-size image.
    assert progressive >= 12_000_000 * 3 + 3_000_000 * 4


# --- header structures ---------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_headers() -> dict[str, bytes]:
    return {name: make() for name, make in SLOW_HEADERS.items()}


EXPECTED_HEADER_CODES = {
    "jpeg-700-app1-segments": "too_much_metadata",
    "gif-2000000-frames": "too_many_frames",
    "png-1000000-chunks": "too_much_metadata",
}


@pytest.mark.parametrize("name", sorted(SLOW_HEADERS))
def test_a_header_that_would_take_seconds_to_walk_is_refused_in_milliseconds(slow_headers, name):
    pipeline = FakeStack()
    started = time.perf_counter()
    outcome = pipeline.process(pipeline.upload(name, slow_headers[name]))
    assert time.perf_counter() - started < 0.5
    assert outcome.record.error.code == EXPECTED_HEADER_CODES[name]
    assert "\n" not in outcome.record.error.message


def test_the_walk_runs_outside_the_header_lock(slow_headers):
    """While another worker holds the lock, hostile headers are still judged at once."""
    results: dict[str, str] = {}

    def judge() -> None:
        for name, data in slow_headers.items():
            fmt = imaging.detect_format(data)
            try:
                open_checked(data, fmt, Limits())
            except PermanentError as error:
                results[name] = error.code

    with limits.HEADER_LOCK:
        worker = threading.Thread(target=judge, daemon=True)
        worker.start()
        worker.join(timeout=5)
        assert not worker.is_alive(), "a hostile header waited for the header lock"
    assert results == EXPECTED_HEADER_CODES


def test_a_gif_cut_into_millions_of_tiny_blocks_is_refused_quickly():
    screen = b"GIF89a" + bytes([1, 0, 1, 0, 0, 0, 0])
    data = screen + b"," + bytes(9) + b"\x02" + b"\x01\x00" * 5_000_000 + b"\x00;"
    pipeline = FakeStack()
    started = time.perf_counter()
    outcome = pipeline.process(pipeline.upload("blocks.gif", data))
    assert time.perf_counter() - started < 0.5
    assert outcome.record.error.code == "corrupt_image"
    assert "data blocks" in outcome.record.error.message


def test_real_metadata_passes_the_walk(corpus_photos):
    for path in sorted(corpus_photos.iterdir()):
        data = path.read_bytes()
        fmt = imaging.detect_format(data)
        open_checked(data, fmt, Limits())  # no structure cap trips on a real file


def test_a_few_exif_segments_still_open():
    data = jpeg_with_app1_segments(3, segment_bytes=1000)
    source = open_checked(data, "JPEG", Limits())
    assert source.image.size == (16, 16)


def test_counted_gif_frames_are_the_metadata_frames():
    pipeline = FakeStack()
    outcome = pipeline.process(pipeline.upload("a.gif", gif_canvas(64, 64, frames=7)))
    assert outcome.record.image.frames == 7


# --- memory handed back ---------------------------------------------------------------

_RETURN_PROBE = """
import sys, threading
from functions.core.imaging import render_image
from functions.core.settings import Limits, PipelineSettings
from functions.core.timing import StageTimer
from tests.core.hostile_files import png_of_zeros, webp_canvas, gif_canvas

def resident_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20

settings = PipelineSettings(limits=Limits(memory_mb=4096))
small = png_of_zeros(64, 64, rgba=False)
render_image(small, settings, StageTimer())
baseline = resident_mb()
for data in (gif_canvas(9999, 9999), png_of_zeros(6000, 6000, rgba=True), webp_canvas(5000, 5000)):
    # On a worker thread, as functions-framework and the dev pipeline run it.
    worker = threading.Thread(target=render_image, args=(data, settings, StageTimer()))
    worker.start()
    worker.join()
    print(resident_mb() - baseline)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_after_a_large_image_the_process_returns_near_its_baseline():
    output = subprocess.run(
        [sys.executable, "-c", _RETURN_PROBE],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    growth = [float(line) for line in output.split()]
    assert len(growth) == 3 and max(growth) < 50, growth


def test_a_real_png_of_zeros_decodes():
    """The generator makes real files: a small one renders, so the large ones are real too."""
    pipeline = FakeStack()
    outcome = pipeline.process(pipeline.upload("zeros.png", png_of_zeros(300, 200, rgba=True)))
    assert outcome.action == "completed" and outcome.record.image.has_alpha


def test_webp_canvas_files_are_real_animations():
    pipeline = FakeStack()
    outcome = pipeline.process(pipeline.upload("a.webp", webp_canvas(50, 40, frames=3)))
    assert outcome.action == "completed"
    assert (outcome.record.image.width, outcome.record.image.height) == (50, 40)
    assert outcome.record.image.frames == 3


def test_plain_images_still_complete():
    pipeline = FakeStack(settings=settings_with(256))
    outcome = pipeline.process(pipeline.upload("a.jpg", encoded(quadrants((3000, 2000)))))
    assert outcome.action == "completed"
