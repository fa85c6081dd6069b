"""Upload -> COMPLETED latency through both local pipelines, against named baselines.

Runs `imagepipe dev` as its own process, as a user does, once per cloud (AWS: moto on
127.0.0.1 and the real Lambda handler, 3 workers; GCP: the emulators and the real
function behind functions-framework and the Eventarc stand-in), with the built-in
default settings, and from this process uploads one image at a time N times under new
keys, timing each from the start of the upload until its record is final, as
`imagepipe upload --dev` waits: following the events topic. The feed is opened once,
as by any long-lived consumer of the topic, so its set-up is not counted as pipeline
latency. Baselines, in the same run on the same bytes:
  poll       the same uploads waited for by reading the records store every 10 ms,
             interleaved with the followed ones so machine noise hits both alike
  core alone `Pipeline.process` with in-memory stores: no storage, queue, database or bus

    .venv/bin/python bench/local_bench.py [-n 20] [--cloud aws|gcp|both]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from functions.core.memory import (  # noqa: E402
    InMemoryBlobStore,
    InMemoryEventPublisher,
    InMemoryRecordStore,
)
from functions.core.records import ObjectRef, Status  # noqa: E402
from functions.core.service import Pipeline  # noqa: E402
from functions.core.settings import PipelineSettings  # noqa: E402
from functions.local.samples import small_png  # noqa: E402
from functions.local.target import EventFeed, PipelineTarget  # noqa: E402
from functions.local.upload import (  # noqa: E402
    DEV_POLL_INTERVAL,
    Upload,
    upload_all,
    wait_for_records,
)

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
        pipeline = Pipeline(
            settings=settings,
            blobs=blobs,
            records=InMemoryRecordStore(),
            events=InMemoryEventPublisher(),
            renditions_bucket="renditions",
            event_source="bench",
        )
        outcome = pipeline.process(ObjectRef("uploads", f"k{n}", "v1", len(data)))
        timings.append((time.perf_counter() - started) * 1000)
        assert outcome.record.status is Status.COMPLETED
    return timings


@contextmanager
def dev_process(folder: Path, cloud: str = "aws") -> Iterator[PipelineTarget]:
    """`imagepipe dev` in a process (group) of its own, with the built-in default settings."""
    outputs, stack_config = folder / "outputs.json", folder / "Pulumi.bench.yaml"
    # The built-in default settings, on the cloud asked for.
    stack_config.write_text(f"config:\n  imagepipe:cloud: {cloud}\n", encoding="utf-8")
    outputs.unlink(missing_ok=True)
    command = [sys.executable, "-m", "functions.local.cli", "dev", "--cloud", cloud]
    command += ["--port", "0", "--api-port", "0"]
    command += ["--outputs", str(outputs), "--stack-config", str(stack_config)]
    log = (folder / "dev.log").open("wb")
    process = subprocess.Popen(
        command, cwd=PROJECT_ROOT, stdout=log, stderr=log, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120  # the GCP emulators take several seconds
        while True:
            try:  # complete JSON: the file is there and fully written
                written = json.loads(outputs.read_text(encoding="utf-8"))
                break
            except (FileNotFoundError, ValueError):
                if process.poll() is not None or time.monotonic() > deadline:
                    said = (folder / "dev.log").read_text(errors="replace")
                    raise SystemExit(f"imagepipe dev did not start:\n{said}") from None
                time.sleep(0.05)
        yield PipelineTarget.from_outputs(written, "bench pipeline")
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have failed to start
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


def timed_upload(
    target: PipelineTarget, path: Path, key: str, events: EventFeed | None
) -> tuple[float, float]:
    """(ms from PutObject to the final record, ms of the handler's timed stages).

    The record is taken from `events`, else read from the table. The stages are the
    record's own timings: claim, read, detect..encode, store.
    """
    upload = Upload(path, key)
    started = time.perf_counter()
    ids = upload_all(target, [upload])
    [result] = wait_for_records(
        target.records,
        [upload],
        ids,
        timeout=60,
        poll_interval=DEV_POLL_INTERVAL,
        events=events,
    )
    elapsed = (time.perf_counter() - started) * 1000
    if result.status != "COMPLETED":
        raise SystemExit(f"{key} ended {result.status}")
    return elapsed, result.milliseconds


def report(
    name: str, followed: list[float], polled: list[float], stages: list[float], core: list[float]
) -> float:
    p50, p95 = statistics.median(followed), percentile(followed, 0.95)
    poll_p50, core_p50 = statistics.median(polled), statistics.median(core)
    print(
        f"{name:<26} p50 {p50:6.1f} ms  p95 {p95:6.1f} ms | "
        f"poll p50 {poll_p50:6.1f} ms (p95 {percentile(polled, 0.95):6.1f}) | "
        f"handler stages p50 {statistics.median(stages):6.1f} ms | "
        f"core alone p50 {core_p50:6.1f} ms | poll/followed {poll_p50 / p50:4.2f}x | "
        f"followed/core {p50 / core_p50:4.2f}x"
    )
    return p50


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20, help="uploads per image and wait (default 20)")
    parser.add_argument("--cloud", choices=("aws", "gcp", "both"), default="both")
    args = parser.parse_args()
    clouds = ["aws", "gcp"] if args.cloud == "both" else [args.cloud]
    settings = PipelineSettings()  # the default renditions: large 1024x768, thumb 200x200

    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "small.png"
        png.write_bytes(small_png(side=320, seed=5))
        images = [("small PNG 320x320", png)]
        if CORPUS_JPEG.is_file():
            images.insert(0, ("12 MP JPEG (olympus ep3)", CORPUS_JPEG))
        else:
            print(f"skipped the 12 MP JPEG: {CORPUS_JPEG} is absent (../shared/corpus)")

        print(
            f"local pipeline latency, upload -> final record, {args.n} sequential uploads per "
            "image and wait, default renditions, `imagepipe dev` in its own process"
        )
        for cloud in clouds:
            print(f"\n{cloud.upper()}:")
            with dev_process(Path(tmp), cloud) as target, target.follow_events() as feed:
                # Warm-up: the first invocation pays imports and connection set-up (a cold start).
                timed_upload(target, png, f"{target.uploads_prefix}warmup.png", feed)
                for index, (name, path) in enumerate(images):
                    core = core_ms(path.read_bytes(), settings, args.n)
                    followed, polled, stages = [], [], []
                    for n in range(args.n):
                        key = f"{target.uploads_prefix}bench/img{index}-{n:03}"
                        elapsed, stage_ms = timed_upload(
                            target, path, f"{key}-f{path.suffix}", feed
                        )
                        followed.append(elapsed)
                        stages.append(stage_ms)
                        polled.append(timed_upload(target, path, f"{key}-p{path.suffix}", None)[0])
                    p50 = report(name, followed, polled, stages, core)
                    if path == CORPUS_JPEG:
                        verdict = "meets" if p50 <= TARGET_P50_MS else "misses"
                        print(f"{'':<26} target p50 <= {TARGET_P50_MS} ms: {verdict} it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
