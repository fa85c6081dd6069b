"""Backfill on each dev pipeline: objects/s enqueued and completed, and invocations per object.

Starts the dev pipeline in this process (AWS: moto and the real Lambda handler; GCP: the
emulators and the real function), with the uploads prefix `incoming/`, then per cloud:

  baseline  N small images (64x64 PNGs, each its own bytes) put under `incoming/`: the
            trigger processes them; timed from the first put to the last final record
  backfill  N other small images put under `backfill/`, outside the trigger's prefix (on
            GCP the function is still invoked for each, and skips it: those invocations
            are counted before the backfill starts), then the backfill command's own code
            (`functions.local.backfill.backfill_pages` and `follow`) run in this process:
            timed from the start of the listing to the last enqueue, and to the last final
            record
  again     the same backfill a second time: it must enqueue nothing

and prints objects/s enqueued and completed, the completed rate against the baseline's,
and the function's invocations during the backfill against the object count (they must
be equal: one delivery per object, no retry, no fan-out). Not a test: it prints; exit 1
when an image did not complete, the invocations differ from the objects, or the second
run enqueued something.

The invocation count is every invocation of the pipeline's function, trigger deliveries
and work-queue deliveries alike (`invocations` below).

    .venv/bin/python bench/backfill_bench.py [--objects 1000] [--cloud aws|gcp|both]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from functions.core.records import Status  # noqa: E402
from functions.local.backfill import (  # noqa: E402
    DEV_POLL_INTERVAL,
    EnqueueCounts,
    backfill_pages,
    follow,
)
from functions.local.samples import small_png  # noqa: E402
from functions.local.stack_config import LocalStackConfig  # noqa: E402
from functions.local.target import PipelineTarget  # noqa: E402
from functions.local.upload import Upload, upload_all, wait_for_records  # noqa: E402

TRIGGER_PREFIX = "incoming/"
BACKFILL_PREFIX = "backfill/"
# After the backfill objects are written, the invocation count must stand still this long
# (GCP's trigger delivers each write, and the function skips it) before the backfill starts.
SETTLE_SECONDS = 2.0


@contextmanager
def dev_pipeline(cloud: str, folder: Path) -> Iterator[Any]:
    """The cloud's dev pipeline; its function's log lines go to a file in `folder`, not to
    the bench's output."""
    from functions.local.dev import DevPipeline, GcpDevPipeline

    stack = LocalStackConfig(uploads_prefix=TRIGGER_PREFIX)
    pipeline = (
        DevPipeline(port=0, stack=stack, log_level="WARNING")
        if cloud == "aws"
        else GcpDevPipeline(stack=stack, function_log=folder / "function.log")
    )
    with pipeline:
        yield pipeline


def invocations(pipeline: Any) -> int | None:
    """Every invocation of the pipeline's function so far, by its triggers and its work queue.

    AWS `DevPipeline.invocations` counts both; on GCP the Eventarc stand-ins' deliveries and
    the Cloud Tasks stand-in's dispatches are added up (None: a pipeline without counters).
    """
    total = getattr(pipeline, "invocations", None)
    if isinstance(total, int):
        return total
    dispatches = getattr(pipeline, "dispatches", None)
    triggers = [t for t in (getattr(pipeline, "trigger", None),) if t is not None]
    triggers += list(getattr(pipeline, "triggers", None) or ())
    if dispatches is None or not triggers:
        return None
    return int(dispatches) + sum(int(t.deliveries) for t in triggers)


def settled_invocations(pipeline: Any) -> int | None:
    """The count once it has not moved for SETTLE_SECONDS."""
    last, still_since = invocations(pipeline), time.monotonic()
    while last is not None and time.monotonic() - still_since < SETTLE_SECONDS:
        time.sleep(0.2)
        now = invocations(pipeline)
        if now != last:
            last, still_since = now, time.monotonic()
    return last


def write_images(folder: Path, count: int, first_seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        path = folder / f"{first_seed + n:06}.png"
        path.write_bytes(small_png(side=64, seed=first_seed + n))
        paths.append(path)
    return paths


@dataclass(frozen=True)
class CloudResult:
    cloud: str
    objects: int
    baseline_seconds: float
    baseline_completed: int
    enqueue_seconds: float
    enqueued: int
    complete_seconds: float
    completed: int
    invocations: int | None
    again_enqueued: int
    again_listed: int

    @property
    def ok(self) -> bool:
        return (
            self.baseline_completed == self.objects
            and self.completed == self.enqueued == self.objects
            and self.invocations == self.objects
            and self.again_enqueued == 0
        )


def run_cloud(cloud: str, objects: int, timeout: float) -> CloudResult:
    with tempfile.TemporaryDirectory() as tmp, dev_pipeline(cloud, Path(tmp)) as pipeline:
        folder = Path(tmp)
        target = PipelineTarget.from_outputs(pipeline.outputs(), f"the {cloud} dev pipeline")

        # The baseline: the same count through the trigger.
        baseline = [
            Upload(path, f"{TRIGGER_PREFIX}{path.name}")
            for path in write_images(folder / "baseline", objects, 0)
        ]
        started = time.perf_counter()
        ids = upload_all(target, baseline)
        results = wait_for_records(
            target.records, baseline, ids, timeout=timeout, poll_interval=DEV_POLL_INTERVAL
        )
        baseline_seconds = time.perf_counter() - started
        baseline_completed = sum(
            1 for r in results if r.record and r.record.status is Status.COMPLETED
        )

        # Objects outside the trigger's prefix: unprocessed, as if there before the pipeline.
        upload_all(
            target,
            [
                Upload(path, f"{BACKFILL_PREFIX}{path.name}")
                for path in write_images(folder / "backfill", objects, objects)
            ],
        )
        before = settled_invocations(pipeline)

        counts = EnqueueCounts()
        started = time.perf_counter()
        watched = backfill_pages(
            target,
            prefix=BACKFILL_PREFIX,
            stale=False,
            max_items=None,
            dry_run=False,
            counts=counts,
        )
        enqueue_seconds = time.perf_counter() - started
        result = follow(target.records, watched, timeout=timeout, poll_interval=DEV_POLL_INTERVAL)
        complete_seconds = time.perf_counter() - started
        completed = sum(1 for r in result.final.values() if r.status is Status.COMPLETED)
        after = settled_invocations(pipeline)

        again = EnqueueCounts()
        backfill_pages(
            target,
            prefix=BACKFILL_PREFIX,
            stale=False,
            max_items=None,
            dry_run=False,
            counts=again,
        )
    return CloudResult(
        cloud=cloud,
        objects=objects,
        baseline_seconds=baseline_seconds,
        baseline_completed=baseline_completed,
        enqueue_seconds=enqueue_seconds,
        enqueued=counts.enqueued,
        complete_seconds=complete_seconds,
        completed=completed,
        invocations=None if before is None or after is None else after - before,
        again_enqueued=again.enqueued,
        again_listed=again.listed,
    )


def report(result: CloudResult) -> None:
    n = result.objects
    baseline_rate = result.baseline_completed / result.baseline_seconds
    completed_rate = result.completed / result.complete_seconds
    print(
        f"{result.cloud}  baseline  {result.baseline_completed}/{n} COMPLETED through the "
        f"trigger in {result.baseline_seconds:.1f} s: {baseline_rate:.1f} objects/s"
    )
    print(
        f"{result.cloud}  backfill  enqueued {result.enqueued} in {result.enqueue_seconds:.2f} s: "
        f"{result.enqueued / result.enqueue_seconds:.0f} objects/s; {result.completed}/{n} "
        f"COMPLETED in {result.complete_seconds:.1f} s: {completed_rate:.1f} objects/s "
        f"({completed_rate / baseline_rate:.2f}x the baseline's)"
    )
    if result.invocations is None:
        shown = "n/a (this dev pipeline counts no invocations)"
    else:
        shown = f"{result.invocations} for {n} objects ({result.invocations / n:.3f} per object)"
    print(f"{result.cloud}  invocations during the backfill: {shown}")
    print(
        f"{result.cloud}  again     listed {result.again_listed}, enqueued {result.again_enqueued}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1000, help="per cloud (default 1000)")
    parser.add_argument("--cloud", choices=("aws", "gcp", "both"), default="both")
    parser.add_argument(
        "--timeout", type=float, default=1800, help="seconds per wait (default 1800)"
    )
    args = parser.parse_args()
    clouds = ("aws", "gcp") if args.cloud == "both" else (args.cloud,)
    print(
        f"backfill bench: {args.objects} 64x64 PNGs per cloud under {BACKFILL_PREFIX} (outside "
        f"the trigger's prefix {TRIGGER_PREFIX}); baseline: {args.objects} others under "
        f"{TRIGGER_PREFIX}, through the trigger"
    )
    ok = True
    for cloud in clouds:
        result = run_cloud(cloud, args.objects, args.timeout)
        report(result)
        ok = ok and result.ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
