"""Upload -> COMPLETED latency through the local pipeline, against the core alone.

Runs the dev pipeline in this process (moto on 127.0.0.1, the real Lambda
handler, 3 workers), uploads one image at a time N times under new keys, and
times each from the start of PutObject until the record reads COMPLETED
(read every 10 ms, as `imagepipe upload --dev` does). The baseline, measured in the same run on the
same bytes: the core's `process_object` with in-memory stores — the work with
no S3, no queue, no DynamoDB, no SNS. The ratio is the pipeline's overhead.

    .venv/bin/python bench/local_bench.py [-n 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from functions.core.memory import (  # noqa: E402
    InMemoryBlobStore,
    InMemoryEventPublisher,
    InMemoryRecordStore,
)
from functions.core.records import ObjectRef, Status  # noqa: E402
from functions.core.service import process_object  # noqa: E402
from functions.core.settings import PipelineSettings  # noqa: E402
from functions.local.dev import DevPipeline  # noqa: E402
from functions.local.samples import small_png  # noqa: E402
from functions.local.stack_config import LocalStackConfig  # noqa: E402
from functions.local.target import PipelineTarget  # noqa: E402
from functions.local.upload import Upload, upload_and_wait  # noqa: E402

CORPUS_JPEG = PROJECT_ROOT.parent / "shared" / "corpus" / "photos" / "jpg_olympus_ep3_12mp.jpg"
TARGET_P50_MS = 250


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def core_ms(data: bytes, settings: PipelineSettings, runs: int) -> list[float]:
    timings = []
    for n in range(runs):
        blobs = InMemoryBlobStore()
        blobs.put_upload("uploads", f"k{n}", data)
        started = time.perf_counter()
        outcome = process_object(
            ObjectRef("uploads", f"k{n}", "v1", len(data)),
            settings=settings,
            blobs=blobs,
            records=InMemoryRecordStore(),
            events=InMemoryEventPublisher(),
            renditions_bucket="renditions",
            event_source="bench",
        )
        timings.append((time.perf_counter() - started) * 1000)
        assert outcome.record.status is Status.COMPLETED
    return timings


def pipeline_ms(target: PipelineTarget, path: Path, runs: int, tag: str) -> tuple[list, list]:
    latencies, handler_ms = [], []
    for n in range(runs):
        upload = Upload(path, f"{target.uploads_prefix}bench/{tag}-{n:03}{path.suffix}")
        started = time.perf_counter()
        [result] = upload_and_wait(target, [upload], timeout=60)
        latencies.append((time.perf_counter() - started) * 1000)
        if result.status != "COMPLETED":
            raise SystemExit(f"{upload.key} ended {result.status}")
        handler_ms.append(result.milliseconds)
    return latencies, handler_ms


def report(name: str, latencies: list[float], handler: list[float], core: list[float]) -> float:
    p50, p95 = statistics.median(latencies), percentile(latencies, 0.95)
    core_p50 = statistics.median(core)
    print(
        f"{name:<28} upload->COMPLETED p50 {p50:7.1f} ms  p95 {p95:7.1f} ms | "
        f"core stages p50 {statistics.median(handler):6.1f} ms | "
        f"core alone p50 {core_p50:6.1f} ms | pipeline/core {p50 / core_p50:4.2f}x"
    )
    return p50


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20, help="uploads per image (default 20)")
    args = parser.parse_args()
    settings = PipelineSettings()  # the default renditions: large 1024x768, thumb 200x200

    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "small.png"
        png.write_bytes(small_png(side=320, seed=5))
        images = [("small PNG 320x320", png)]
        if CORPUS_JPEG.is_file():
            images.insert(0, ("12 MP JPEG (olympus ep3)", CORPUS_JPEG))
        else:
            print(f"skipped the 12 MP JPEG: {CORPUS_JPEG} is absent (../shared/corpus)")

        print(f"local pipeline latency, {args.n} sequential uploads per image, default renditions")
        with DevPipeline(
            port=0, stack=LocalStackConfig(settings=settings), log_level="WARNING"
        ) as pipeline:
            target = PipelineTarget.from_outputs(pipeline.outputs(), "bench pipeline")
            # Warm-up: the first invocation pays imports and connection set-up (a cold start).
            upload_and_wait(target, [Upload(png, "warmup.png")], timeout=60)
            for index, (name, path) in enumerate(images):
                data = path.read_bytes()
                core = core_ms(data, settings, args.n)
                latencies, handler = pipeline_ms(target, path, args.n, f"img{index}")
                p50 = report(name, latencies, handler, core)
                if path == CORPUS_JPEG:
                    verdict = "meets" if p50 <= TARGET_P50_MS else "misses"
                    print(f"{'':<28} target p50 <= {TARGET_P50_MS} ms: {verdict} it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
