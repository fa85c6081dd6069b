"""The Lambda handler end to end on moto: `aws s3 cp` -> S3 notification (via SQS) -> handler
in-process -> renditions in S3, a record in DynamoDB, an event on SNS (read from an SQS subscriber).
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import time
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import pytest
from boto3.dynamodb.types import TypeDeserializer
from PIL import Image

from functions.aws import contract
from functions.aws.bootstrap import build_pipeline
from functions.aws.contract import from_env
from functions.core.records import (
    ClaimHeld,
    ImageRecord,
    PublisherUnavailable,
    RecordStoreUnavailable,
    StorageUnavailable,
    TransientError,
)
from functions.core.service import IMMUTABLE_CACHE_CONTROL, isoformat
from functions.core.settings import DEFAULT_RENDITIONS, PipelineSettings
from functions.local.emulated_aws import PipelineResources

from .conftest import EmulatedStack, LambdaContext

pytestmark = [
    pytest.mark.emulator,
    # Powertools warns when an invocation (the s3:TestEvent, an outage) records no metric.
    pytest.mark.filterwarnings("ignore:No application metrics to publish"),
]


def plain_items(stack: EmulatedStack) -> list[dict[str, Any]]:
    deserialize = TypeDeserializer().deserialize
    return [{name: deserialize(value) for name, value in item.items()} for item in stack.items()]


def test_an_upload_becomes_renditions_a_completed_record_and_one_event(
    stack: EmulatedStack,
    handler_module: ModuleType,
    lambda_context: LambdaContext,
    photo_jpeg: bytes,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    event = stack.upload("photos/cat.jpg", photo_jpeg, with_cli=True)
    # POWERTOOLS_LOG_LEVEL decides the level at import; another suite may have imported quieter.
    caplog.set_level(logging.INFO, logger="imagepipe")
    # With POWERTOOLS_METRICS_DISABLED (the dev pipeline sets it) Powertools keeps, rather
    # than drops, what it did not print; start this invocation from an empty metric set.
    handler_module.metrics.clear_metrics()

    result = handler_module.handler(event, lambda_context)

    (item,) = plain_items(stack)
    assert result == {"records": [{"action": "completed", "id": item["id"], "status": "COMPLETED"}]}
    assert item["status"] == "COMPLETED"
    assert item["attempts"] == 1
    assert item["error"] is None and item["lease_expires_at"] is None
    assert item["source"]["bucket"] == stack.uploads
    assert item["source"]["key"] == "photos/cat.jpg"
    assert item["source"]["bytes"] == len(photo_jpeg)
    assert item["source"]["version"] == event["Records"][0]["s3"]["object"]["eTag"]
    assert (item["image"]["width"], item["image"]["height"]) == (1600, 1200)
    assert set(item["stage_ms"]) >= {"claim", "read", "store"}

    boxes = {spec.name: (spec.width, spec.height) for spec in DEFAULT_RENDITIONS}
    assert sorted(r["name"] for r in item["renditions"]) == sorted(boxes)
    assert stack.rendition_keys() == sorted(r["key"] for r in item["renditions"])
    for rendition in item["renditions"]:
        stored = stack.s3.get_object(Bucket=stack.renditions, Key=rendition["key"])
        assert stored["CacheControl"] == IMMUTABLE_CACHE_CONTROL
        assert stored["ContentType"] == "image/jpeg"
        assert stored["Metadata"]["imagepipe-rendition"] == "true"
        assert stored["Metadata"]["imagepipe-source-sha256"] == item["source"]["sha256"]
        image = Image.open(io.BytesIO(stored["Body"].read()))
        box_width, box_height = boxes[rendition["name"]]
        assert image.format == "JPEG"
        assert image.size == (rendition["width"], rendition["height"])
        assert image.width <= box_width and image.height <= box_height

    (published,) = stack.published_events()
    assert published["type_attribute"] == "imagepipe.image.completed"
    assert published["event"]["type"] == "imagepipe.image.completed"
    assert published["event"]["subject"] == "photos/cat.jpg"
    assert published["event"]["source"] == "urn:imagepipe:aws:imagepipe-test-fn"
    assert published["event"]["data"]["id"] == item["id"]
    # SNS refuses messages over 256 KiB; a record is a few KiB.
    assert published["message_bytes"] < 16 * 1024

    # The log line, as Powertools' JSON formatter writes it to stdout in Lambda.
    formatted = [
        json.loads(handler_module.logger.registered_formatter.format(r)) for r in caplog.records
    ]
    (log_line,) = [line for line in formatted if line.get("outcome") == "completed"]
    assert log_line["key"] == "photos/cat.jpg"
    assert log_line["status"] == "COMPLETED"
    assert log_line["function_request_id"] == lambda_context.aws_request_id
    assert log_line["ms"] > 0
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    (emf,) = [line for line in emitted if "_aws" in line]
    assert emf["ImagesCompleted"] == [1.0]
    assert emf["ProcessingMs"][0] > 0


def test_a_failed_image_counts_in_the_total_and_under_its_error_code(
    stack: EmulatedStack,
    handler_module: ModuleType,
    lambda_context: LambdaContext,
    capsys: pytest.CaptureFixture[str],
) -> None:
    event = stack.upload("notes.jpg", b"just some text, not a photo\n")
    handler_module.metrics.clear_metrics()
    capsys.readouterr()

    handler_module.handler(event, lambda_context)

    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    blobs = [line for line in emitted if "_aws" in line]
    dimension_sets = sorted(
        tuple(sorted(blob["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0])) for blob in blobs
    )
    # The total the alarm watches, and the same metric split by code for dashboards.
    assert dimension_sets == [("ErrorCode", "service"), ("service",)]
    assert all(blob["ImagesFailed"] in ([1.0], 1.0) for blob in blobs)
    assert [b["ErrorCode"] for b in blobs if "ErrorCode" in b] == ["unsupported_format"]


def test_keys_with_spaces_and_unicode_arrive_encoded_and_are_decoded(
    stack: EmulatedStack,
    handler_module: ModuleType,
    lambda_context: LambdaContext,
    photo_jpeg: bytes,
) -> None:
    key = "holiday 2024/café + crème brûlée (1).jpg"
    event = stack.upload(key, photo_jpeg, with_cli=True)
    assert event["Records"][0]["s3"]["object"]["key"] != key  # URL-encoded by S3

    result = handler_module.handler(event, lambda_context)

    assert [summary["action"] for summary in result["records"]] == ["completed"]
    (item,) = plain_items(stack)
    assert item["source"]["key"] == key
    (published,) = stack.published_events()
    assert published["event"]["subject"] == key


def test_the_same_event_delivered_twice_makes_one_record_and_one_event(
    stack: EmulatedStack,
    handler_module: ModuleType,
    lambda_context: LambdaContext,
    photo_jpeg: bytes,
) -> None:
    event = stack.upload("twice.jpg", photo_jpeg)

    first = handler_module.handler(event, lambda_context)
    renditions_after_first = {
        key: stack.s3.head_object(Bucket=stack.renditions, Key=key)["LastModified"]
        for key in stack.rendition_keys()
    }
    second = handler_module.handler(event, lambda_context)

    assert first["records"][0]["action"] == "completed"
    assert second["records"] == [{**first["records"][0], "action": "duplicate"}]
    (item,) = plain_items(stack)
    assert item["attempts"] == 1
    assert len(stack.published_events()) == 1
    assert {
        key: stack.s3.head_object(Bucket=stack.renditions, Key=key)["LastModified"]
        for key in stack.rendition_keys()
    } == renditions_after_first


def test_several_records_in_one_event_are_each_processed(
    stack: EmulatedStack,
    handler_module: ModuleType,
    lambda_context: LambdaContext,
    photo_jpeg: bytes,
) -> None:
    first = stack.upload("one.jpg", photo_jpeg)
    second = stack.upload("two.txt.jpg", b"not an image at all")
    event = {"Records": first["Records"] + second["Records"]}

    result = handler_module.handler(event, lambda_context)

    assert [(r["action"], r["status"]) for r in result["records"]] == [
        ("completed", "COMPLETED"),
        ("failed", "FAILED"),
    ]
    assert sorted(e["event"]["subject"] for e in stack.published_events()) == [
        "one.jpg",
        "two.txt.jpg",
    ]


def test_a_text_file_named_jpg_fails_permanently_without_renditions(
    stack: EmulatedStack, handler_module: ModuleType, lambda_context: LambdaContext
) -> None:
    event = stack.upload("evil.jpg", b"#!/bin/sh\necho this is not a JPEG\n" * 20)

    result = handler_module.handler(event, lambda_context)  # returns: no Lambda retry

    assert [(r["action"], r["status"]) for r in result["records"]] == [("failed", "FAILED")]
    (item,) = plain_items(stack)
    assert item["status"] == "FAILED"
    assert item["error"]["code"] == "unsupported_format"
    assert item["error"]["retryable"] is False
    assert item["renditions"] == []
    assert stack.rendition_keys() == []
    (published,) = stack.published_events()
    assert published["type_attribute"] == "imagepipe.image.failed"
    assert published["event"]["data"]["error"]["code"] == "unsupported_format"
    assert published["event"]["subject"] == "evil.jpg"


def test_an_object_over_the_byte_limit_is_refused_from_the_event_size(
    stack: EmulatedStack,
    handler_module: ModuleType,
    lambda_context: LambdaContext,
    photo_jpeg: bytes,
) -> None:
    event = stack.upload("huge.jpg", photo_jpeg)
    # Pretend S3 announced a 60 MB object: the handler must refuse it without reading it,
    # and the object in the bucket is a valid JPEG, so only the event's size can say no.
    event["Records"][0]["s3"]["object"]["size"] = 60 * 1024 * 1024

    handler_module.handler(event, lambda_context)

    (item,) = plain_items(stack)
    assert item["error"]["code"] == "too_large"
    assert "read" not in item["stage_ms"]


def test_the_s3_test_event_is_ignored(
    stack: EmulatedStack, handler_module: ModuleType, lambda_context: LambdaContext
) -> None:
    (test_event,) = stack.test_events  # what S3 (here moto) sent when the trigger was set up
    assert test_event["Event"] == "s3:TestEvent"

    assert handler_module.handler(test_event, lambda_context) == {"records": []}

    assert stack.items() == []
    assert stack.published_events() == []


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_records_table_raises_a_retryable_error_and_changes_nothing(
    stack: EmulatedStack,
    handler_module: ModuleType,
    photo_jpeg: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    event = stack.upload("later.jpg", photo_jpeg)
    # DynamoDB down, S3 and SNS up: boto3's service-specific endpoint variable moves only
    # DynamoDB to a port nothing listens on.
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    pipeline = build_pipeline(from_env(os.environ))

    with pytest.raises(RecordStoreUnavailable) as raised:
        handler_module.handle_event(event, pipeline)

    assert isinstance(raised.value, TransientError) and raised.value.retryable
    assert stack.rendition_keys() == []
    assert stack.published_events() == []
    assert stack.items() == []


def test_lambdas_last_attempt_ends_the_record_failed_with_one_event_and_still_raises(
    stack: EmulatedStack,
    handler_module: ModuleType,
    photo_jpeg: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    event = stack.upload("stuck-behind-an-outage.jpg", photo_jpeg)
    with monkeypatch.context() as outage:
        outage.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{closed_port()}")
        outage.setenv("AWS_MAX_ATTEMPTS", "1")
        s3_down = build_pipeline(from_env(os.environ))
    assert s3_down.max_attempts == 3  # the first try and the component's two retries
    for _ in range(3):  # each raise is what makes Lambda retry, then dead-letter the event
        with pytest.raises(StorageUnavailable):
            handler_module.handle_event(event, s3_down)
    (item,) = plain_items(stack)
    assert (item["status"], item["attempts"]) == ("FAILED", 3)
    assert (item["error"]["code"], item["error"]["retryable"]) == ("retries_exhausted", True)
    [published] = stack.published_events()
    assert published["type_attribute"] == "imagepipe.image.failed"


def test_after_an_sns_outage_the_retry_completes_and_publishes_once(
    stack: EmulatedStack,
    handler_module: ModuleType,
    lambda_context: LambdaContext,
    photo_jpeg: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    event = stack.upload("retried.jpg", photo_jpeg)
    with monkeypatch.context() as outage:
        outage.setenv("AWS_ENDPOINT_URL_SNS", f"http://127.0.0.1:{closed_port()}")
        outage.setenv("AWS_MAX_ATTEMPTS", "2")
        sns_down = build_pipeline(from_env(os.environ))
    with pytest.raises(PublisherUnavailable):
        handler_module.handle_event(event, sns_down)
    (pending,) = plain_items(stack)
    assert (pending["status"], pending["attempts"]) == ("PENDING", 1)
    assert pending["error"]["code"] == "publisher_unavailable"
    assert stack.published_events() == []

    # Lambda's retry: the same event, the real pipeline, a conditional takeover of the record.
    result = handler_module.handler(event, lambda_context)

    assert [r["action"] for r in result["records"]] == ["completed"]
    (item,) = plain_items(stack)
    assert (item["status"], item["attempts"], item["error"]) == ("COMPLETED", 2, None)
    (published,) = stack.published_events()
    assert published["event"]["id"].startswith(f"{item['id']}-completed-")


def test_a_deleted_records_table_raises_a_retryable_error(
    stack: EmulatedStack,
    handler_module: ModuleType,
    lambda_context: LambdaContext,
    photo_jpeg: bytes,
) -> None:
    event = stack.upload("no-table.jpg", photo_jpeg)
    stack.dynamodb.delete_table(TableName=stack.table)

    with pytest.raises(RecordStoreUnavailable, match=stack.table):
        handler_module.handler(event, lambda_context)

    assert stack.rendition_keys() == []
    assert stack.published_events() == []


def test_the_handler_module_refuses_to_start_without_its_environment(
    handler_module: ModuleType,
) -> None:
    with pytest.raises(ValueError, match=f"{contract.RECORDS_TABLE} is not set"):
        from_env({k: v for k, v in os.environ.items() if k != contract.RECORDS_TABLE})
    archiving = {**os.environ, contract.SETTINGS: PipelineSettings(originals="archive").to_json()}
    with pytest.raises(ValueError, match=f"{contract.ARCHIVE_BUCKET} is not set, and originals"):
        from_env(archiving)
    assert from_env({**archiving, contract.ARCHIVE_BUCKET: "archive"}).archive_bucket == "archive"


def test_clients_use_botocore_standard_retries(handler_module: ModuleType) -> None:
    client = handler_module.PIPELINE.records._dynamodb
    assert client.meta.config.retries["mode"] == "standard"
    assert client.meta.endpoint_url == os.environ["AWS_ENDPOINT_URL"]


def test_lambdas_retry_takes_over_the_claim_of_an_invocation_that_died(
    stack: EmulatedStack,
    handler_module: ModuleType,
    lambda_context: LambdaContext,
    photo_jpeg: bytes,
) -> None:
    event = stack.upload("photos/timeout.jpg", photo_jpeg)
    (ref,) = handler_module.object_refs(event)
    # What an invocation killed by its timeout leaves behind: a PROCESSING claim whose
    # lease (the invocation's remaining time plus a margin) has since run out.
    died = handler_module.PIPELINE.records
    claim = {
        "id": ref.record_id,
        "source": {"bucket": ref.bucket, "key": ref.key, "version": ref.version},
        "status": "PROCESSING",
        "attempts": 1,
        "created_at": "2026-01-01T00:00:00.000Z",
        "updated_at": "2026-01-01T00:00:00.000Z",
        "lease_expires_at": "2026-01-01T00:01:05.000Z",
    }
    assert died.create(ImageRecord.from_dict(claim))

    result = handler_module.handler(event, lambda_context)

    (item,) = plain_items(stack)
    assert result["records"][0]["action"] == "completed"
    assert (item["status"], item["attempts"]) == ("COMPLETED", 2)
    assert len(stack.published_events()) == 1


def test_a_live_claim_of_a_dead_invocation_fails_retryably_then_a_retry_takes_it_over(
    stack: EmulatedStack,
    handler_module: ModuleType,
    lambda_context: LambdaContext,
    photo_jpeg: bytes,
) -> None:
    event = stack.upload("photos/killed.jpg", photo_jpeg)
    (ref,) = handler_module.object_refs(event)
    # An invocation killed for memory two seconds in: its claim still holds for a while.
    lease_end = datetime.now(UTC) + timedelta(seconds=2)
    claim = {
        "id": ref.record_id,
        "source": {"bucket": ref.bucket, "key": ref.key, "version": ref.version},
        "status": "PROCESSING",
        "attempts": 1,
        "created_at": isoformat(datetime.now(UTC)),
        "updated_at": isoformat(datetime.now(UTC)),
        "lease_expires_at": isoformat(lease_end),
    }
    assert handler_module.PIPELINE.records.create(ImageRecord.from_dict(claim))

    # Lambda's first retry: raising is what makes Lambda try again (returning would end it).
    with pytest.raises(ClaimHeld):
        handler_module.handler(event, lambda_context)
    (item,) = plain_items(stack)
    assert (item["status"], item["attempts"]) == ("PROCESSING", 1)
    assert stack.published_events() == []

    time.sleep(max(0.0, (lease_end - datetime.now(UTC)).total_seconds() + 0.2))
    result = handler_module.handler(event, lambda_context)  # Lambda's second retry

    (item,) = plain_items(stack)
    assert result["records"][0]["action"] == "completed"
    assert (item["status"], item["attempts"]) == ("COMPLETED", 2)
    assert [e["type_attribute"] for e in stack.published_events()] == ["imagepipe.image.completed"]


def test_a_live_claim_lasts_the_invocations_remaining_time_not_longer(
    handler_module: ModuleType, lambda_context: LambdaContext, resources: PipelineResources
) -> None:
    lambda_context.timeout_seconds = 30
    leases: list[Any] = []

    class RecordingPipeline:
        def process(self, ref: Any, lease: Any) -> Any:
            leases.append(lease)
            raise RecordStoreUnavailable("stop here: only the lease is under test")

    event = {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": resources.uploads_bucket},
                    "object": {"key": "a.jpg", "size": 10, "eTag": "abc"},
                },
            }
        ]
    }
    with pytest.raises(RecordStoreUnavailable):
        handler_module.handle_event(
            event,
            RecordingPipeline(),
            handler_module.lease_for(lambda_context),
        )
    (lease,) = leases
    assert 30 < lease.total_seconds() <= 35
