"""`imagepipe upload FILE...`: put images in the uploads bucket and wait for their records.

The record id is computed from what S3 answered to the upload (bucket + key +
versionId, else the ETag), by the same rule the handler applies to the event,
so the record can be looked for before it exists.

On the dev pipeline the wait follows the events topic through a queue of the
command's own (`SqsEventFeed`) and reads the records table only as a safety net;
on a deployed stack it reads the table, as creating queues in someone's account
is not an upload's business.
"""

from __future__ import annotations

import argparse
import json
import math
import mimetypes
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from functions.core.records import FINAL_STATUSES, ImageRecord, Status, record_id
from functions.local.emulated_aws import subscribe_queue
from functions.local.target import PipelineTarget, TargetError, add_target_arguments, resolve_target

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_TIMEOUT = 120.0
# How often pending records are read when no event feed is followed. The emulator on
# loopback answers a read in a few milliseconds, so every 10 ms adds 5 ms on average to
# what `upload` reports; a deployed table is read every 50 ms (read units cost money).
DEV_POLL_INTERVAL = 0.01
STACK_POLL_INTERVAL = 0.05
# With an event feed the table is still read, this often, for records whose event the
# feed cannot deliver: one already final before the feed existed, say.
SAFETY_POLL_SECONDS = 1
UPLOAD_THREADS = 8
BATCH_GET_LIMIT = 100  # keys per BatchGetItem


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
    def status(self) -> str:
        if self.record is None:
            return "TIMEOUT"
        return self.record.status.value

    @property
    def milliseconds(self) -> float:
        return round(sum(self.record.stage_ms.values()), 1) if self.record else 0.0


def object_version(response: dict[str, Any]) -> str:
    """The handler's rule, applied to a PutObject/HeadObject answer."""
    from functions.aws.trigger import object_version as event_object_version

    return event_object_version({"versionId": response.get("VersionId"), "eTag": response["ETag"]})


class RecordReader:
    """Reads many records in one request (BatchGetItem), so waiting on 100 costs 1 read, not 100."""

    def __init__(self, client: Any, table: str) -> None:
        from boto3.dynamodb.types import TypeDeserializer

        self._dynamodb = client
        self.table = table
        self._deserialize = TypeDeserializer().deserialize

    @classmethod
    def for_target(cls, target: PipelineTarget) -> RecordReader:
        return cls(target.client("dynamodb"), target.records_table)

    def get_many(self, ids: Sequence[str]) -> dict[str, ImageRecord]:
        """The records that exist among `ids`; a key the table did not get to is read next time."""
        from functions.aws.adapters import from_dynamodb

        found: dict[str, ImageRecord] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), BATCH_GET_LIMIT):
            keys = [{"id": {"S": rid}} for rid in unique[start : start + BATCH_GET_LIMIT]]
            response = self._dynamodb.batch_get_item(
                RequestItems={self.table: {"Keys": keys, "ConsistentRead": True}}
            )
            for item in response.get("Responses", {}).get(self.table, []):
                record = ImageRecord.from_dict(
                    from_dynamodb({name: self._deserialize(v) for name, v in item.items()})
                )
                found[record.id] = record
        return found


class SqsEventFeed:
    """The pipeline's lifecycle events, read through an SQS queue subscribed for this command.

    Why not just read the records table: on the dev pipeline a read every 10 ms keeps
    the emulator and this process busy on a 2-core machine while the handler renders,
    and a record becomes final one DynamoDB write after its event is published. The
    event's `data` is exactly the record that is written next (the core guarantees it),
    so an image is reported the moment its event exists. Measured in bench/local_bench.py.

    The queue is this command's own, so concurrent `imagepipe upload`s never take each
    other's events; it is unsubscribed and deleted on exit.
    """

    def __init__(self, sqs: Any, sns: Any, topic_arn: str) -> None:
        self._sqs = sqs
        self._sns = sns
        self._topic_arn = topic_arn
        self._queue_url: str | None = None
        self._subscription_arn: str | None = None

    @classmethod
    def for_target(cls, target: PipelineTarget) -> SqsEventFeed:
        assert target.events_topic is not None
        return cls(target.client("sqs"), target.client("sns"), target.events_topic)

    def __enter__(self) -> SqsEventFeed:
        name = f"imagepipe-upload-{uuid.uuid4().hex[:12]}"
        self._queue_url = self._sqs.create_queue(QueueName=name)["QueueUrl"]
        try:
            self._subscription_arn = subscribe_queue(
                self._sns, self._sqs, self._topic_arn, self._queue_url
            )
        except Exception:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:  # best effort: the emulator may already be gone, taking both with it
            if self._subscription_arn:
                self._sns.unsubscribe(SubscriptionArn=self._subscription_arn)
            if self._queue_url:
                self._sqs.delete_queue(QueueUrl=self._queue_url)
        except (BotoCoreError, ClientError):
            pass
        self._queue_url = self._subscription_arn = None

    def receive(self, wait_seconds: int) -> list[ImageRecord]:
        """The records carried by the events that arrive within `wait_seconds` (a long poll)."""
        response = self._sqs.receive_message(
            QueueUrl=self._queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_seconds
        )
        messages = response.get("Messages", [])
        if messages:
            self._sqs.delete_message_batch(
                QueueUrl=self._queue_url,
                Entries=[
                    {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]}
                    for n, m in enumerate(messages)
                ],
            )
        found = []
        for message in messages:
            try:
                found.append(ImageRecord.from_dict(json.loads(message["Body"])["data"]))
            except (ValueError, KeyError, TypeError):
                continue  # not a lifecycle event: nothing this command waits for
        return found


def event_feed(target: PipelineTarget) -> AbstractContextManager[SqsEventFeed | None]:
    """A feed on the dev pipeline; None on a deployed stack (the records table is read)."""
    if target.endpoint and target.events_topic:
        return SqsEventFeed.for_target(target)
    return nullcontext()


def default_poll_interval(target: PipelineTarget) -> float:
    return DEV_POLL_INTERVAL if target.endpoint else STACK_POLL_INTERVAL


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
    with event_feed(target) as events:
        ids = upload_all(target, uploads)
        return wait_for_records(
            RecordReader.for_target(target),
            uploads,
            ids,
            timeout=timeout,
            poll_interval=poll_interval,
            on_progress=on_progress,
            events=events,
        )


def upload_all(target: PipelineTarget, uploads: Sequence[Upload]) -> list[str]:
    """Put every file, a few at a time; returns the record id of each, in order."""
    s3 = target.client("s3")

    def put(upload: Upload) -> str:
        content_type = mimetypes.guess_type(upload.path.name)[0] or "application/octet-stream"
        response = s3.put_object(
            Bucket=target.uploads_bucket,
            Key=upload.key,
            Body=upload.path.read_bytes(),
            ContentType=content_type,
        )
        return record_id(target.uploads_bucket, upload.key, object_version(response))

    with ThreadPoolExecutor(max_workers=min(UPLOAD_THREADS, max(1, len(uploads)))) as pool:
        return list(pool.map(put, uploads))


def wait_for_records(
    records: RecordReader,
    uploads: Sequence[Upload],
    ids: Sequence[str],
    *,
    timeout: float,
    poll_interval: float,
    on_progress: Callable[[int, int, int], None] | None = None,
    events: SqsEventFeed | None = None,
) -> list[UploadResult]:
    """Until every record is final or the timeout: from `events` when given, else the table.

    With `events`, the table is still read at the start and every SAFETY_POLL_SECONDS,
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


# --- presentation -----------------------------------------------------------------------------


def result_json(result: UploadResult, target: PipelineTarget) -> dict[str, Any]:
    record = result.record
    summary: dict[str, Any] = {
        "file": str(result.upload.path),
        "key": result.upload.key,
        "id": result.record_id,
        "status": result.status,
    }
    if record is not None:
        summary.update(
            width=record.image.width if record.image else None,
            height=record.image.height if record.image else None,
            ms=result.milliseconds,
            urls={r.name: target.url(r.key) for r in record.renditions},
            error={"code": record.error.code, "message": record.error.message}
            if record.error
            else None,
            record=record.to_dict(),
        )
    return summary


def print_table(results: Sequence[UploadResult], target: PipelineTarget, out: TextIO) -> None:
    rows = [("KEY", "STATUS", "SIZE", "MS", "RENDITIONS / ERROR")]
    for result in results:
        record = result.record
        size = f"{record.image.width}x{record.image.height}" if record and record.image else "-"
        ms = f"{result.milliseconds:.0f}" if record else "-"
        details = _details(result, target)
        rows.append((result.upload.key, result.status, size, ms, details[0]))
        rows.extend(("", "", "", "", line) for line in details[1:])
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [
            row[0].ljust(widths[0]),
            row[1].ljust(widths[1]),
            row[2].ljust(widths[2]),
            row[3].rjust(widths[3]),
            row[4],
        ]
        print("  ".join(cells).rstrip(), file=out)


def _details(result: UploadResult, target: PipelineTarget) -> list[str]:
    record = result.record
    if record is None:
        return [f"no final record yet (record id {result.record_id})"]
    if record.error is not None:
        return [f"{record.error.code}: {record.error.message}"]
    width = max((len(r.name) for r in record.renditions), default=0)
    return [f"{r.name:<{width}}  {target.url(r.key)}" for r in record.renditions] or ["-"]


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

    from botocore.exceptions import BotoCoreError, ClientError

    progress = ProgressLine(sys.stderr, len(uploads))
    try:
        results = upload_and_wait(target, uploads, timeout=args.timeout, on_progress=progress)
    except (BotoCoreError, ClientError) as error:
        progress.close()
        where = f"the dev pipeline at {target.endpoint}" if target.endpoint else "AWS"
        print(f"imagepipe upload: could not reach {where}: {error}", file=sys.stderr)
        return EXIT_USAGE
    progress.close()

    if args.json:
        for result in results:
            print(json.dumps(result_json(result, target), sort_keys=True))
    else:
        print_table(results, target, sys.stdout)
    timed_out = [r for r in results if r.record is None]
    if timed_out:
        print(
            f"imagepipe upload: {len(timed_out)} record(s) not final after {args.timeout:g} s",
            file=sys.stderr,
        )
    return EXIT_OK if all(r.status == "COMPLETED" for r in results) else EXIT_FAILED
