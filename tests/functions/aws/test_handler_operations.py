"""The Lambda handler's other two events on moto: S3 ObjectRemoved (deletes that propagate)
and SQS batches from the work queue (backfill, redrive), with their partial-batch answer."""

from __future__ import annotations

import io
import logging
import os
import uuid
from types import ModuleType
from typing import Any

import pytest
from PIL import Image

from functions.aws import contract
from functions.aws.adapters import CloudFrontInvalidator
from functions.aws.bootstrap import build_pipeline
from functions.aws.contract import from_env
from functions.aws.trigger import RemovedObject, removed_objects
from functions.core.records import ObjectRef
from functions.core.service import Reclaim
from functions.core.work import WorkItem
from functions.local.emulated_aws import drain_queue

from .conftest import EmulatedStack, LambdaContext
from .test_adapters import closed_port
from .test_handler_e2e import plain_items
from .test_s3_events import s3_record

pytestmark = [
    pytest.mark.emulator,
    pytest.mark.filterwarnings("ignore:No application metrics to publish"),
]


def work_message(body: str, receives: int = 1) -> dict[str, Any]:
    """One SQS message as the work queue's event source mapping delivers it."""
    return {
        "messageId": str(uuid.uuid4()),
        "receiptHandle": "handle",
        "body": body,
        "attributes": {"ApproximateReceiveCount": str(receives)},
        "messageAttributes": {},
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:imagepipe-test-work",
    }


def put(stack: EmulatedStack, key: str, data: bytes) -> ObjectRef:
    """An upload the trigger never saw (its event drained), as a backfill lists it."""
    etag = stack.s3.put_object(Bucket=stack.uploads, Key=key, Body=data)["ETag"]
    drain_queue(stack.sqs, stack.resources.trigger_queue_url)
    return ObjectRef(stack.uploads, key, etag.strip('"'), len(data))


def test_removed_events_name_a_version_only_when_it_is_deleted_for_good() -> None:
    event = {
        "Records": [
            s3_record("a+b.jpg", event_name="ObjectRemoved:Delete"),  # unversioned
            s3_record("v.jpg", event_name="ObjectRemoved:Delete", versionId="3HL4kqtJvjVBH40N"),
            s3_record("m.jpg", event_name="ObjectRemoved:DeleteMarkerCreated", versionId="x1"),
            s3_record("n.jpg", event_name="ObjectRemoved:Delete", versionId="null"),
            s3_record("old.jpg", event_name="LifecycleExpiration:Delete"),
            s3_record("new.jpg"),  # an upload: object_refs' business
        ]
    }
    assert removed_objects(event) == [
        RemovedObject("uploads", "a b.jpg", None),
        RemovedObject("uploads", "v.jpg", "3HL4kqtJvjVBH40N"),
        RemovedObject("uploads", "m.jpg", None),
        RemovedObject("uploads", "n.jpg", None),
        RemovedObject("uploads", "old.jpg", None, expired=True),
    ]


def test_an_original_the_lifecycle_rule_expired_keeps_its_image_and_renditions(
    stack: EmulatedStack,
    handler_module: ModuleType,
    lambda_context: LambdaContext,
    photo_jpeg: bytes,
) -> None:
    handler_module.handler(stack.upload("in/old.jpg", photo_jpeg), lambda_context)
    renditions = stack.rendition_keys()
    stack.s3.delete_object(Bucket=stack.uploads, Key="in/old.jpg")
    drain_queue(stack.sqs, stack.resources.trigger_queue_url)
    # What S3 sends when originalsExpiryDays' rule removes the object (moto runs no lifecycle).
    record = s3_record("in/old.jpg", event_name="LifecycleExpiration:Delete")
    record["s3"]["bucket"]["name"] = stack.uploads
    result = handler_module.handler({"Records": [record]}, lambda_context)
    assert [r["action"] for r in result["records"]] == ["expired"]
    (item,) = plain_items(stack)
    assert (item["status"], item["original"]) == ("COMPLETED", "expired")
    assert stack.rendition_keys() == renditions
    types = [e["type_attribute"] for e in stack.published_events()]
    assert types == ["imagepipe.image.completed"]


def test_deleting_one_of_two_uploads_of_the_same_bytes_keeps_the_renditions_until_the_other(
    stack: EmulatedStack,
    handler_module: ModuleType,
    lambda_context: LambdaContext,
    photo_jpeg: bytes,
) -> None:
    for key in ("in/first.jpg", "in/second.jpg"):
        result = handler_module.handler(stack.upload(key, photo_jpeg), lambda_context)
        assert [r["action"] for r in result["records"]] == ["completed"]
    renditions = stack.rendition_keys()
    assert renditions

    stack.s3.delete_object(Bucket=stack.uploads, Key="in/first.jpg")
    (removed,) = drain_queue(stack.sqs, stack.resources.trigger_queue_url)
    assert removed["Records"][0]["eventName"].startswith("ObjectRemoved:")
    result = handler_module.handler(removed, lambda_context)
    assert [r["action"] for r in result["records"]] == ["deleted"]
    assert stack.rendition_keys() == renditions  # the second upload still uses them
    # A redelivery changes nothing and publishes nothing.
    assert [r["action"] for r in handler_module.handler(removed, lambda_context)["records"]] == [
        "duplicate"
    ]

    stack.s3.delete_object(Bucket=stack.uploads, Key="in/second.jpg")
    (removed,) = drain_queue(stack.sqs, stack.resources.trigger_queue_url)
    handler_module.handler(removed, lambda_context)
    assert stack.rendition_keys() == []
    assert {item["status"] for item in plain_items(stack)} == {"DELETED"}
    types = [e["type_attribute"] for e in stack.published_events()]
    assert types.count("imagepipe.image.completed") == 2
    assert types.count("imagepipe.image.deleted") == 2
    # Nothing is left of the content's reference item.
    assert len(stack.all_items()) == 2


def test_a_delete_of_an_object_never_processed_is_one_line_and_no_error(
    stack: EmulatedStack,
    handler_module: ModuleType,
    lambda_context: LambdaContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="imagepipe")
    event = {"Records": [s3_record("never.jpg", event_name="ObjectRemoved:Delete")]}
    assert handler_module.handler(event, lambda_context) == {"records": []}
    assert [r.getMessage() for r in caplog.records] == [
        "nothing to delete: never.jpg (never processed, or removed by the pipeline)"
    ]


def test_a_work_batch_processes_each_item_and_names_only_the_failures(
    stack: EmulatedStack,
    handler_module: ModuleType,
    lambda_context: LambdaContext,
    photo_jpeg: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = put(stack, "outside/before-the-pipeline.jpg", photo_jpeg)
    text = put(stack, "outside/not-an-image.jpg", b"plain text, not an image")
    # A live claim of another delivery: transient, so SQS must deliver it again.
    claimed = put(stack, "outside/claimed.jpg", photo_jpeg + b"x")
    handler_module.PIPELINE.records.create(
        _processing(claimed, handler_module.PIPELINE.clock().isoformat())
    )
    messages = [
        work_message(WorkItem(good).to_json()),
        work_message(WorkItem(text).to_json()),
        work_message(WorkItem(claimed).to_json()),
        work_message('{"kind": "something else"}'),
        work_message("not json"),
    ]
    caplog.set_level(logging.INFO, logger="imagepipe")

    answer = handler_module.handler({"Records": messages}, lambda_context)

    assert answer == {"batchItemFailures": [{"itemIdentifier": messages[2]["messageId"]}]}
    statuses = {item["source"]["key"]: item["status"] for item in plain_items(stack)}
    assert statuses == {
        good.key: "COMPLETED",
        text.key: "FAILED",  # permanent: answered, not retried
        claimed.key: "PROCESSING",  # left to its live claim
    }
    dropped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dropped")]
    assert len(dropped) == 2 and all("\n" not in line for line in dropped)


def _processing(ref: ObjectRef, now: str) -> Any:
    from datetime import datetime, timedelta

    from functions.core.records import ImageRecord, Source, Status
    from functions.core.timing import isoformat

    later = isoformat(datetime.fromisoformat(now) + timedelta(minutes=10))
    return ImageRecord(
        id=ref.record_id,
        source=Source(ref.bucket, ref.key, ref.version, ref.size),
        status=Status.PROCESSING,
        attempts=1,
        created_at=isoformat(datetime.fromisoformat(now)),
        updated_at=isoformat(datetime.fromisoformat(now)),
        lease_expires_at=later,
    )


def test_the_last_receive_ends_failed_and_a_redrive_item_completes_it(
    stack: EmulatedStack,
    handler_module: ModuleType,
    lambda_context: LambdaContext,
    photo_jpeg: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ref = put(stack, "outside/outage.jpg", photo_jpeg)
    with monkeypatch.context() as outage:
        outage.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{closed_port()}")
        outage.setenv("AWS_MAX_ATTEMPTS", "1")
        s3_down = build_pipeline(from_env(os.environ))
    body = WorkItem(ref).to_json()
    for receives in range(1, contract.WORK_MAX_RECEIVES + 1):
        message = work_message(body, receives)
        answer = handler_module.handle_event({"Records": [message]}, s3_down)
        assert answer == {"batchItemFailures": [{"itemIdentifier": message["messageId"]}]}
        (item,) = plain_items(stack)
        last = receives == contract.WORK_MAX_RECEIVES
        assert item["status"] == ("FAILED" if last else "PENDING")
    assert item["error"]["code"] == "retries_exhausted"

    # Without the reclaim a delivery leaves the FAILED record be; redrive's item takes it.
    again = work_message(body)
    assert handler_module.handler({"Records": [again]}, lambda_context) == {"batchItemFailures": []}
    assert plain_items(stack)[0]["status"] == "FAILED"
    redriven = work_message(WorkItem(ref, frozenset({Reclaim.FAILED})).to_json())
    handler_module.handler({"Records": [redriven]}, lambda_context)
    (item,) = plain_items(stack)
    assert (item["status"], item["error"]) == ("COMPLETED", None)


def test_the_pipeline_archives_and_invalidates_only_where_the_stack_says(
    aws_env: dict[str, str],
) -> None:
    plain = build_pipeline(from_env(aws_env))
    assert (plain.archive_bucket, plain.cdn) == (None, None)
    named = build_pipeline(
        from_env(
            {**aws_env, contract.ARCHIVE_BUCKET: "the-archive", contract.CDN_DISTRIBUTION_ID: "E2"}
        )
    )
    assert named.archive_bucket == "the-archive"
    assert isinstance(named.cdn, CloudFrontInvalidator)
    assert named.cdn.distribution_id == "E2"


def test_an_overwrite_ends_the_earlier_versions_record_as_its_delete_would(
    stack: EmulatedStack,
    handler_module: ModuleType,
    lambda_context: LambdaContext,
    photo_jpeg: bytes,
) -> None:
    # S3 sends only ObjectCreated for an overwrite; GCS also sends object.v1.deleted for the
    # generation it replaced. Both clouds end the earlier record DELETED, renditions released.
    handler_module.handler(stack.upload("in/same.jpg", photo_jpeg), lambda_context)
    first = stack.rendition_keys()
    other = io.BytesIO()
    Image.new("RGB", (640, 480), (20, 90, 160)).save(other, "PNG")
    overwrite = stack.upload("in/same.jpg", other.getvalue())
    result = handler_module.handler(overwrite, lambda_context)
    assert [r["action"] for r in result["records"]] == ["completed", "deleted"]
    statuses = sorted(item["status"] for item in plain_items(stack))
    assert statuses == ["COMPLETED", "DELETED"]
    assert not set(first) & set(stack.rendition_keys())  # the earlier bytes' renditions went
    types = [e["type_attribute"] for e in stack.published_events()]
    assert types.count("imagepipe.image.deleted") == 1
    # A redelivery of the overwrite changes nothing more.
    again = handler_module.handler(overwrite, lambda_context)
    assert [r["action"] for r in again["records"]] == ["duplicate"]
