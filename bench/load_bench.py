"""Load on the local pipeline: many uploads at once, and whether every one ends once.

Runs `imagepipe dev` in its own process, as a user does (`local_bench.dev_process`:
moto in a third process, the real Lambda handler, 3 workers, default settings), then
from this process uploads --small 320x320 images (PNG and JPEG, alternately) and
--large 12 MP JPEGs, shuffled together, from --threads threads. Each image has its own
bytes, so none reuses another's renditions. It waits, as `imagepipe upload --dev`
does, by following the events topic, reading the records table every 2 s as a safety
net, then prints:

  COMPLETED / FAILED / missing   final records (missing: none before --timeout)
  duplicates                     records with attempts > 1, images with more than one event
  dead-lettered                  events in the dead-letter queue
  wall time, images/s            from the first upload to the last final record
  latency p50/p95                upload start -> event, per kind of image

The 12 MP JPEG is ../shared/corpus/photos/jpg_olympus_ep3_12mp.jpg when present (read
from there, each upload made distinct by a JPEG comment segment), else a synthetic
photo. Not a test: it prints, it asserts nothing; exit 1 if an image did not complete
exactly once.

    .venv/bin/python bench/load_bench.py [--small 500] [--large 50] [--threads 16]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from bench.local_bench import CORPUS_JPEG, dev_process, percentile  # noqa: E402
from components import outputs as output_names  # noqa: E402
from functions.core.records import FINAL_STATUSES, ImageRecord, Status, record_id  # noqa: E402
from functions.local.aws_client import SqsEventFeed, object_version  # noqa: E402
from functions.local.samples import small_png, synthetic_photo  # noqa: E402
from functions.local.target import PipelineTarget  # noqa: E402

SAFETY_POLL_SECONDS = 2
LATE_EVENTS_SECONDS = 2  # after the last record, how long to wait for duplicate events


@dataclass(frozen=True)
class Planned:
    key: str
    kind: str  # "small" or "large"
    seed: int


def small_image(seed: int) -> bytes:
    if seed % 2 == 0:
        return small_png(side=320, seed=seed)
    out = io.BytesIO()
    synthetic_photo(320, 320, seed=seed).save(out, "JPEG", quality=85)
    return out.getvalue()


def large_source() -> tuple[bytes, str]:
    if CORPUS_JPEG.is_file():
        return CORPUS_JPEG.read_bytes(), CORPUS_JPEG.name
    out = io.BytesIO()
    synthetic_photo(4000, 3000, seed=12).save(out, "JPEG", quality=88)
    return out.getvalue(), f"synthetic 4000x3000 (absent: {CORPUS_JPEG})"


def distinct_jpeg(jpeg: bytes, seed: int) -> bytes:
    """The same picture with a comment (COM) segment after SOI: other bytes, same decode."""
    comment = f"imagepipe load bench {seed}".encode()
    return jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:]


def plan(small: int, large: int, prefix: str) -> list[Planned]:
    images = [
        Planned(f"{prefix}small-{n:04}.{'png' if n % 2 == 0 else 'jpg'}", "small", n)
        for n in range(small)
    ]
    images += [Planned(f"{prefix}large-{n:03}.jpg", "large", n) for n in range(large)]
    random.Random(550).shuffle(images)  # the large among the small, in the same order each run
    return images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=500, help="320x320 images (default 500)")
    parser.add_argument("--large", type=int, default=50, help="12 MP JPEGs (default 50)")
    parser.add_argument("--threads", type=int, default=16, help="upload threads (default 16)")
    parser.add_argument(
        "--timeout", type=float, default=900, help="seconds to wait for the records (default 900)"
    )
    args = parser.parse_args()

    large_jpeg, large_name = large_source() if args.large else (b"", "-")
    print(
        f"load: {args.small} small (320x320 PNG/JPEG) + {args.large} large (12 MP JPEG, "
        f"{large_name}) from {args.threads} threads; `imagepipe dev` in its own process"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with dev_process(folder) as target, SqsEventFeed.for_target(target) as feed:
            outputs = json.loads((folder / "outputs.json").read_text(encoding="utf-8"))
            images = plan(args.small, args.large, f"{target.uploads_prefix}load/")
            small = {p.seed: small_image(p.seed) for p in images if p.kind == "small"}
            run = LoadRun(target, feed, args.threads)
            started = time.perf_counter()
            run.upload(
                images,
                lambda image: (
                    small[image.seed]
                    if image.kind == "small"
                    else distinct_jpeg(large_jpeg, image.seed)
                ),  # made as sent: 3 MB each
            )
            uploaded = time.perf_counter() - started
            run.wait(args.timeout)
            wall = run.last_final - started if run.last_final else time.perf_counter() - started
            run.collect_late_events(LATE_EVENTS_SECONDS)
            records = target.records.get_many(list(run.ids.values()))
            dead = dead_lettered(target, outputs[output_names.DEAD_LETTER_QUEUE])
        log_text = (folder / "dev.log").read_text(errors="replace")
    return report(run, images, records, dead, uploaded, wall, log_text)


class LoadRun:
    """Uploads from a pool of threads, then follows the events until every record is final."""

    def __init__(self, target: PipelineTarget, feed: SqsEventFeed, threads: int) -> None:
        self._target = target
        self._feed = feed
        self._threads = threads
        self.ids: dict[str, str] = {}  # key -> record id
        self.put_at: dict[str, float] = {}  # record id -> when its upload started
        self.final_at: dict[str, float] = {}  # record id -> when its final event arrived
        self.final: dict[str, ImageRecord] = {}
        self.events: Counter[str] = Counter()  # record id -> events received
        self.last_final = 0.0
        self._lock = threading.Lock()

    def upload(self, images: list[Planned], body: Any) -> None:
        s3 = self._target.client("s3")

        def put(image: Planned) -> None:
            data = body(image)
            started = time.perf_counter()
            response = s3.put_object(Bucket=self._target.uploads_bucket, Key=image.key, Body=data)
            rid = record_id(self._target.uploads_bucket, image.key, object_version(response))
            with self._lock:
                self.ids[image.key] = rid
                self.put_at[rid] = started

        with ThreadPoolExecutor(max_workers=self._threads) as pool:
            list(pool.map(put, images))  # list(): raise the first upload error here

    def wait(self, timeout: float) -> None:
        deadline = time.perf_counter() + timeout
        wanted = set(self.ids.values())
        next_read = 0.0
        while len(self.final) < len(wanted) and time.perf_counter() < deadline:
            for record in self._feed.receive(wait_seconds=1):
                self._seen(record, wanted)
            if time.perf_counter() >= next_read:  # records whose event the feed missed
                pending = [rid for rid in wanted if rid not in self.final]
                for record in self._target.records.get_many(pending).values():
                    if record.status in FINAL_STATUSES and record.id not in self.final:
                        self._final(record)
                next_read = time.perf_counter() + SAFETY_POLL_SECONDS

    def collect_late_events(self, seconds: float) -> None:
        wanted = set(self.ids.values())
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            for record in self._feed.receive(wait_seconds=1):
                self._seen(record, wanted)

    def _seen(self, record: ImageRecord, wanted: set[str]) -> None:
        if record.id not in wanted:
            return
        self.events[record.id] += 1
        if record.status in FINAL_STATUSES and record.id not in self.final:
            self._final(record)

    def _final(self, record: ImageRecord) -> None:
        now = time.perf_counter()
        self.final[record.id] = record
        self.final_at[record.id] = now
        self.last_final = max(self.last_final, now)


def dead_lettered(target: PipelineTarget, queue_url: str) -> int:
    attributes = target.client("sqs").get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(value) for value in attributes.values())


def report(
    run: LoadRun,
    images: list[Planned],
    records: dict[str, ImageRecord],
    dead: int,
    uploaded: float,
    wall: float,
    log_text: str,
) -> int:
    statuses = Counter(
        records[rid].status.value if rid in records and rid in run.final else "missing"
        for rid in run.ids.values()
    )
    retried = sorted(r.source.key for r in records.values() if r.attempts > 1)
    repeated = sorted(key for key, rid in run.ids.items() if run.events[rid] > 1)
    done = len(run.final)
    print(f"uploaded {len(images)} in {uploaded:.1f} s")
    print(
        f"COMPLETED {statuses['COMPLETED']}  FAILED {statuses['FAILED']}  "
        f"missing {statuses['missing']}  dead-lettered {dead}"
    )
    print(
        f"duplicates: {len(retried)} records with attempts > 1, "
        f"{len(repeated)} images with more than one event"
    )
    for name, keys in (("attempts > 1", retried), ("more than one event", repeated)):
        if keys:
            print(f"  {name}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}")
    print(
        f"wall {wall:.1f} s from the first upload to the last final record: "
        f"{done / wall if wall else 0:.1f} images/s"
    )
    for kind in ("small", "large"):
        latencies = [
            (run.final_at[rid] - run.put_at[rid]) * 1000
            for image in images
            if image.kind == kind and (rid := run.ids[image.key]) in run.final_at
        ]
        if latencies:
            print(
                f"latency {kind:<5} upload -> final: p50 {statistics.median(latencies):7.0f} ms  "
                f"p95 {percentile(latencies, 0.95):7.0f} ms  (n={len(latencies)})"
            )
    tracebacks = log_text.count("Traceback")
    print(f"imagepipe dev log: {len(log_text.splitlines())} lines, {tracebacks} tracebacks")
    once = statuses["COMPLETED"] == len(images) and not retried and not repeated and not dead
    return 0 if once and all(r.status is Status.COMPLETED for r in records.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
