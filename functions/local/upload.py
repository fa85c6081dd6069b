"""`imagepipe upload FILE...`: put images in the uploads bucket and wait for their records.

The record id is computed from what the bucket answered to the upload (S3: bucket +
key + versionId, else the ETag; GCS: bucket + name + generation), by the same rule the
function applies to its event, so the record can be looked for before it exists.

How the wait learns that a record is final, and why:

- On the dev pipeline it follows the events topic, through a queue (AWS: an SQS queue
  subscribed to the SNS topic) or a subscription (GCP: Pub/Sub) of the command's own,
  so concurrent `imagepipe upload`s never take each other's events; it is removed on
  exit. Reading the records store every 10 ms instead keeps the emulator and this
  process busy on a 2-core machine while the function renders, and a record becomes
  final one write after its event is published. The event's `data` is exactly the
  record written next (the core guarantees it), so an image is reported the moment its
  event exists. Measured in bench/local_bench.py.
- The records store is still read, at the start and every SAFETY_POLL_SECONDS, for
  records whose event the feed cannot deliver: one already final before the feed
  existed, say.
- On a deployed stack it reads the records store every 50 ms and creates nothing:
  queues and subscriptions in someone's account are not an upload's business, and
  reads cost little (one batched read per round, whatever the number of files).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from functions.core.records import FINAL_STATUSES, ImageRecord, Status

# The AWS reader, feed and version rule, importable from here as before the clients were
# per cloud: the AWS dev pipeline's tests and benchmarks use them by these names.
from functions.local.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from functions.local.render import RenditionUrl, Row, print_rows
from functions.local.target import (
    EventFeed,
    PipelineTarget,
    RecordSource,
    TargetError,
    add_target_arguments,
    resolve_target,
)

DEFAULT_TIMEOUT = 120.0
# How often pending records are read when no event feed is followed. The emulator on
# loopback answers a read in a few milliseconds, so every 10 ms adds 5 ms on average to
# what `upload` reports; a deployed store is read every 50 ms (reads cost money).
DEV_POLL_INTERVAL = 0.01
STACK_POLL_INTERVAL = 0.05
# With an event feed the records store is still read this often (see the module's doc).
SAFETY_POLL_SECONDS = 1
UPLOAD_THREADS = 8


@dataclass(frozen=True)
class Upload:
    """One file to put under one key."""

    path: Path
    key: str


@dataclass(frozen=True)
class UploadResult:
    upload: Upload
    record_id: str
    record: ImageRecord | None  # None: no final record before the timeout

    @property
    def row(self) -> Row:
        return Row(self.upload.key, self.record_id, self.record, file=self.upload.path)

    @property
    def status(self) -> str:
        return self.row.status

    @property
    def milliseconds(self) -> float:
        return self.row.milliseconds


def default_poll_interval(target: PipelineTarget) -> float:
    return DEV_POLL_INTERVAL if target.is_dev else STACK_POLL_INTERVAL


def upload_and_wait(
    target: PipelineTarget,
    uploads: Sequence[Upload],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    poll_interval: float | None = None,
    on_progress: Callable[[int, int, int], None] | None = None,
) -> list[UploadResult]:
    """Upload concurrently, then wait for every record to be COMPLETED/FAILED, or the timeout."""
    if poll_interval is None:
        poll_interval = default_poll_interval(target)
    # The feed exists before the first upload, so no event can be published unseen.
    with target.follow_events() as events:
        ids = upload_all(target, uploads)
        return wait_for_records(
            target.records,
            uploads,
            ids,
            timeout=timeout,
            poll_interval=poll_interval,
            on_progress=on_progress,
            events=events,
        )


def upload_all(target: PipelineTarget, uploads: Sequence[Upload]) -> list[str]:
    """Put every file, a few at a time; returns the record id of each, in order."""
    with ThreadPoolExecutor(max_workers=min(UPLOAD_THREADS, max(1, len(uploads)))) as pool:
        return list(pool.map(lambda upload: target.put(upload.path, upload.key), uploads))


def wait_for_records(
    records: RecordSource,
    uploads: Sequence[Upload],
    ids: Sequence[str],
    *,
    timeout: float,
    poll_interval: float,
    on_progress: Callable[[int, int, int], None] | None = None,
    events: EventFeed | None = None,
) -> list[UploadResult]:
    """Until every record is final or the timeout: from `events` when given, else the store.

    With `events`, the store is still read at the start and every SAFETY_POLL_SECONDS,
    for records that are final without an event still to come.
    """
    deadline = time.monotonic() + timeout
    wanted = set(ids)
    final: dict[str, ImageRecord] = {}
    next_read = 0.0
    while True:
        pending = [rid for rid in ids if rid not in final]
        if pending and time.monotonic() >= next_read:
            for rid, record in records.get_many(pending).items():
                if record.status in FINAL_STATUSES:
                    final[rid] = record
            if events is not None:
                next_read = time.monotonic() + SAFETY_POLL_SECONDS
        if on_progress is not None:
            failed = sum(1 for r in final.values() if r.status is Status.FAILED)
            on_progress(len(final), len(ids), failed)
        remaining = deadline - time.monotonic()
        if len(final) == len(wanted) or remaining <= 0:
            break
        if events is None:
            time.sleep(min(poll_interval, remaining))
            continue
        wait = max(0, min(SAFETY_POLL_SECONDS, math.floor(remaining)))
        for record in events.receive(wait_seconds=wait):
            if record.id in wanted and record.status in FINAL_STATUSES:
                final.setdefault(record.id, record)
        if wait == 0:  # under a second left: one last table read, then the deadline
            next_read = 0.0
            time.sleep(min(poll_interval, max(0.0, deadline - time.monotonic())))
    return [UploadResult(u, rid, final.get(rid)) for u, rid in zip(uploads, ids, strict=True)]


def print_results(
    results: Sequence[UploadResult], url: RenditionUrl, out: TextIO, *, as_json: bool = False
) -> None:
    print_rows([result.row for result in results], url, out, as_json=as_json)


class ProgressLine:
    """One stderr line, rewritten in place; only on a terminal, only for several files."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self._stream = stream
        self.enabled = total > 1 and stream.isatty()
        self._last = ""

    def __call__(self, done: int, total: int, failed: int) -> None:
        if not self.enabled:
            return
        text = f"processed {done}/{total}" + (f" ({failed} failed)" if failed else "")
        if text != self._last:
            self._stream.write("\r" + text)
            self._stream.flush()
            self._last = text

    def close(self) -> None:
        if self.enabled and self._last:
            self._stream.write("\r" + " " * len(self._last) + "\r")
            self._stream.flush()


# --- the command ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="images to upload")
    add_target_arguments(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object per file, per line")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds to wait for all records (default {DEFAULT_TIMEOUT:.0f})",
    )
    parser.add_argument(
        "--key-prefix",
        default=None,
        metavar="P",
        help="put each file under P + its file name (default: the stack's uploadsPrefix, "
        "the only keys that trigger processing)",
    )


def plan_uploads(files: Sequence[Path], key_prefix: str) -> list[Upload]:
    """One upload per file; raises ValueError with a one-line reason on bad input."""
    uploads: list[Upload] = []
    seen: dict[str, Path] = {}
    for path in files:
        if not path.is_file():
            raise ValueError(f"{path} is not a file" if path.exists() else f"{path} does not exist")
        key = f"{key_prefix}{path.name}"
        if key in seen:
            raise ValueError(f"{seen[key]} and {path} would both be uploaded as {key}")
        seen[key] = path
        uploads.append(Upload(path, key))
    return uploads


def run(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        print(
            f"imagepipe upload: --timeout is {args.timeout}; use seconds greater than 0.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        target = resolve_target(args)
        prefix = target.uploads_prefix if args.key_prefix is None else args.key_prefix
        uploads = plan_uploads(args.files, prefix)
    except (ValueError, TargetError) as error:
        print(f"imagepipe upload: {error}", file=sys.stderr)
        return EXIT_USAGE

    progress = ProgressLine(sys.stderr, len(uploads))
    try:
        results = upload_and_wait(target, uploads, timeout=args.timeout, on_progress=progress)
    except target.service_errors as error:
        progress.close()
        print(f"imagepipe upload: could not reach {target.where}: {error}", file=sys.stderr)
        return EXIT_USAGE
    progress.close()

    print_results(results, target.url, sys.stdout, as_json=args.json)
    timed_out = [r for r in results if r.record is None]
    if timed_out:
        print(
            f"imagepipe upload: {len(timed_out)} record(s) not final after {args.timeout:g} s",
            file=sys.stderr,
        )
    return EXIT_OK if all(r.status == "COMPLETED" for r in results) else EXIT_FAILED
