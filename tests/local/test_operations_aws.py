"""Operations on the AWS dev pipeline, end to end: deletes that propagate (S3 ObjectRemoved
through the trigger), originals delete and archive, work through the SQS work queue and its
event source mapping, and a redrive of what an outage dead-lettered."""

from __future__ import annotations

import dataclasses
import io
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from functions.aws import contract
from functions.core.records import ORIGINAL_DELETED, RETRIES_EXHAUSTED, ImageRecord, Status
from functions.core.settings import PipelineSettings
from functions.core.work import WorkItem
from functions.local.aws_client import AwsPipelineTarget
from functions.local.dev import DevPipeline
from functions.local.emulated_aws import boto3_client, create_pipeline_resources
from functions.local.lambda_service import EventSourceMapping, LambdaContext
from functions.local.target import EventFeed, PipelineTarget
from functions.local.upload import Upload, upload_and_wait
from tests.local.conftest import UPLOADS_PREFIX, FaultInjection, wait_for

pytestmark = [pytest.mark.emulator, pytest.mark.timeout(60)]

OUTSIDE = "elsewhere/"  # not under the trigger's prefix: uploads there trigger nothing


def unique_jpeg() -> bytes:
    """Bytes no other test uploads: their renditions are this test's alone."""
    image = Image.new("RGB", (160, 120), "white")
    seed = uuid.uuid4().int
    ImageDraw.Draw(image).rectangle(
        (seed % 80, seed % 60, 100, 90), fill=(seed % 256, (seed >> 8) % 256, (seed >> 16) % 256)
    )
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture
def s3(dev_pipeline: DevPipeline) -> Any:
    return boto3_client("s3", dev_pipeline.endpoint)


def aws(target: PipelineTarget) -> AwsPipelineTarget:
    assert isinstance(target, AwsPipelineTarget)
    return target


def records(target: PipelineTarget, ids: list[str]) -> dict[str, ImageRecord]:
    return target.records.get_many(ids)


def wait_for_status(
    target: PipelineTarget, ids: list[str], status: Status, timeout: float = 20
) -> dict[str, ImageRecord]:
    found = wait_for(
        lambda: (
            (got := records(target, ids))
            and len(got) == len(ids)
            and all(r.status is status for r in got.values())
            and got
        ),
        timeout,
    )
    assert found, f"not all {status.value}: {records(target, ids)}"
    return found


def rendition_keys(s3: Any, bucket: str, content_sha256: str) -> list[str]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{content_sha256}/")
    return sorted(entry["Key"] for entry in listed.get("Contents", []))


def events_for(feed: EventFeed, ids: set[str], status: Status, count: int) -> list[ImageRecord]:
    seen: list[ImageRecord] = []

    def enough() -> bool:
        seen.extend(r for r in feed.receive(1) if r.id in ids and r.status is status)
        return len(seen) >= count

    wait_for(enough, timeout=15)
    return seen


def test_the_renditions_go_with_the_last_original_of_their_bytes(
    dev_pipeline: DevPipeline, target: PipelineTarget, s3: Any, tmp_path: Path
) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(unique_jpeg())
    keys = [f"{UPLOADS_PREFIX}ops/first.jpg", f"{UPLOADS_PREFIX}ops/second.jpg"]
    with target.follow_events() as feed:
        assert feed is not None
        results = upload_and_wait(target, [Upload(photo, key) for key in keys], timeout=30)
        assert [r.status for r in results] == ["COMPLETED", "COMPLETED"]
        ids = [r.record_id for r in results]
        sha = results[0].record.source.sha256
        renditions = rendition_keys(s3, dev_pipeline.resources.renditions_bucket, sha)
        assert renditions == sorted(r.key for r in results[0].record.renditions)

        s3.delete_object(Bucket=target.uploads_bucket, Key=keys[0])
        wait_for_status(target, ids[:1], Status.DELETED)
        assert records(target, ids)[ids[1]].status is Status.COMPLETED
        assert rendition_keys(s3, dev_pipeline.resources.renditions_bucket, sha) == renditions
        assert len(events_for(feed, set(ids), Status.DELETED, 1)) == 1

        s3.delete_object(Bucket=target.uploads_bucket, Key=keys[1])
        wait_for_status(target, ids, Status.DELETED)
        assert wait_for(
            lambda: rendition_keys(s3, dev_pipeline.resources.renditions_bucket, sha) == [],
            timeout=10,
        )
        deleted = events_for(feed, {ids[1]}, Status.DELETED, 1)
        assert [r.id for r in deleted] == [ids[1]]  # two deleted events in all, one each


@pytest.fixture(scope="module")
def archive_bucket(dev_pipeline: DevPipeline) -> str:
    """An archive bucket in the package's emulator (its pipeline keeps originals), made as
    the dev pipeline makes one for originals: archive."""
    resources = create_pipeline_resources(dev_pipeline.endpoint, "ops-archive", archive=True)
    assert resources.archive_bucket == "ops-archive-archive"
    return resources.archive_bucket


@pytest.mark.parametrize("originals", ["delete", "archive"])
def test_originals_are_deleted_or_archived_once_completed(
    originals: str,
    dev_pipeline: DevPipeline,
    target: PipelineTarget,
    s3: Any,
    archive_bucket: str,
) -> None:
    """The real handler with these settings, as the function of such a stack runs it, on the
    dev pipeline's buckets and table; the upload is outside the prefix, so the pipeline's own
    trigger (which keeps originals) never sees it."""
    from functions.aws import main

    key = f"{OUTSIDE}originals/{originals}.jpg"
    s3.put_object(Bucket=target.uploads_bucket, Key=key, Body=unique_jpeg())
    (ref,) = aws(target).list_uploads(key)
    pipeline = dataclasses.replace(
        main.PIPELINE,
        settings=PipelineSettings(originals=originals),
        archive_bucket=archive_bucket if originals == "archive" else None,
    )
    event = {
        "Records": [
            {
                "eventSource": "aws:sqs",
                "messageId": "m1",
                "body": WorkItem(ref).to_json(),
                "attributes": {"ApproximateReceiveCount": "1"},
            }
        ]
    }
    day = datetime.now(UTC).strftime("%Y/%m/%d")
    context = LambdaContext(dev_pipeline.function_name, "arn:aws:lambda:us-east-1:1:function:f")

    assert main.handle_event(event, pipeline, main.lease_for(context)) == {"batchItemFailures": []}

    record = records(target, [ref.record_id])[ref.record_id]
    assert record.status is Status.COMPLETED
    assert "Contents" not in s3.list_objects_v2(Bucket=target.uploads_bucket, Prefix=key)
    assert rendition_keys(s3, dev_pipeline.resources.renditions_bucket, record.source.sha256) == (
        sorted(r.key for r in record.renditions)
    )
    if originals == "delete":
        assert record.original == ORIGINAL_DELETED
    else:
        archive_key = f"{day}/{key}"
        assert record.original == f"archived:{archive_bucket}/{archive_key}"
        head = s3.head_object(Bucket=archive_bucket, Key=archive_key)
        assert head["StorageClass"] == "GLACIER_IR"
        assert head["ContentLength"] == ref.size


def test_an_object_the_trigger_never_saw_is_processed_through_the_work_queue(
    dev_pipeline: DevPipeline, target: PipelineTarget, s3: Any
) -> None:
    keys = [f"{OUTSIDE}backfill/{n}.jpg" for n in range(3)]
    for key in keys:
        s3.put_object(Bucket=target.uploads_bucket, Key=key, Body=unique_jpeg())
    refs = list(target.list_uploads(f"{OUTSIDE}backfill/"))
    assert sorted(ref.key for ref in refs) == keys
    assert records(target, [ref.record_id for ref in refs]) == {}  # the trigger saw nothing
    before = dev_pipeline.work_invocations

    target.work_queue().enqueue([WorkItem(ref) for ref in refs])

    done = wait_for_status(target, [ref.record_id for ref in refs], Status.COMPLETED)
    assert all(record.attempts == 1 for record in done.values())
    assert dev_pipeline.work_invocations - before == len(refs)  # one invocation per object


def test_what_an_outage_dead_lettered_is_redriven_to_completed(
    dev_pipeline: DevPipeline,
    target: PipelineTarget,
    faults: FaultInjection,
    sqs: Any,
    tmp_path: Path,
) -> None:
    key = f"{UPLOADS_PREFIX}ops/behind-an-outage.jpg"
    faults.outages[key] = ("s3", contract.MAX_ATTEMPTS)  # every attempt Lambda makes
    photo = tmp_path / "outage.jpg"
    photo.write_bytes(unique_jpeg())
    record_id = target.put(photo, key)
    (failed,) = wait_for_status(target, [record_id], Status.FAILED).values()
    assert failed.error is not None and failed.error.code == RETRIES_EXHAUSTED
    dead_letters = target.dead_letters()
    assert dead_letters is not None

    def mine() -> list[Any]:
        letters = dead_letters.receive(10)
        ours = [letter for letter in letters if any(item.ref.key == key for item in letter.items)]
        for other in (letter for letter in letters if letter not in ours):
            queue_url, handle = other.receipt  # another test's: visible again at once
            sqs.change_message_visibility(
                QueueUrl=queue_url, ReceiptHandle=handle, VisibilityTimeout=0
            )
        return ours

    letters = wait_for(mine, timeout=10)
    assert letters, "the event did not reach the dead-letter queue"
    target.work_queue().enqueue([item for letter in letters for item in letter.items])
    dead_letters.remove(letters)

    (completed,) = wait_for_status(target, [record_id], Status.COMPLETED).values()
    assert completed.error is None and completed.attempts == failed.attempts + 1
    queue_url = dev_pipeline.resources.dead_letter_queue_url
    counts = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert sum(int(n) for n in counts.values()) == 0  # removed, not merely hidden


def test_the_event_source_mapping_stand_in_bounds_concurrency_and_honours_partial_batches(
    dev_pipeline: DevPipeline, sqs: Any
) -> None:
    """Its own work queue (a visibility timeout of 1 s) and a recording handler: never more
    invocations at once than the concurrency, a failure named in batchItemFailures comes
    back until SQS's redrive policy moves it to the work dead-letter queue."""
    resources = create_pipeline_resources(
        dev_pipeline.endpoint, "ops-esm", work_visibility_seconds=1
    )
    lock = threading.Lock()
    running, most, handled = 0, 0, Counter[str]()

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        nonlocal running, most
        (record,) = event["Records"]
        assert record["eventSource"] == "aws:sqs"
        assert record["eventSourceARN"] == resources.work_queue_arn
        with lock:
            running += 1
            most = max(most, running)
            handled[record["body"]] += 1
        time.sleep(0.2)
        with lock:
            running -= 1
        failed = record["body"] == "fails"
        return {"batchItemFailures": [{"itemIdentifier": record["messageId"]}] if failed else []}

    for body in [*(f"ok-{n}" for n in range(6)), "fails"]:
        sqs.send_message(QueueUrl=resources.work_queue_url, MessageBody=body)
    mapping = EventSourceMapping(
        sqs=sqs,
        queue_url=resources.work_queue_url,
        queue_arn=resources.work_queue_arn,
        handler=handler,
        function_name="ops-esm-fn",
        function_arn="arn:aws:lambda:us-east-1:123456789012:function:ops-esm-fn",
        concurrency=2,
    )
    mapping.start()
    try:
        dead = wait_for(
            lambda: sqs.receive_message(
                QueueUrl=resources.work_dead_letter_queue_url, WaitTimeSeconds=1
            ).get("Messages"),
            timeout=20,
        )
    finally:
        mapping.stop(5)
    assert [message["Body"] for message in dead] == ["fails"]
    assert handled == {**{f"ok-{n}": 1 for n in range(6)}, "fails": contract.WORK_MAX_RECEIVES}
    assert most == 2
    assert mapping.invocations == 6 + contract.WORK_MAX_RECEIVES
    left = sqs.get_queue_attributes(
        QueueUrl=resources.work_queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert sum(int(n) for n in left.values()) == 0  # the processed ones were deleted
