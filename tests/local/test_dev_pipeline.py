"""The dev pipeline end to end: real clients, the real handler, the retries and the DLQ."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import pytest

from functions.core.records import Status
from functions.local.dev import DevPipeline
from functions.local.emulated_aws import client_environment, drain_queue
from functions.local.samples import alpha_png, camera_jpeg, small_png
from functions.local.target import PipelineTarget
from functions.local.upload import (
    Upload,
    upload_and_wait,
    wait_for_records,
)
from tests.conftest import require
from tests.local.conftest import UPLOADS_PREFIX, FaultInjection, wait_for

pytestmark = [pytest.mark.emulator, pytest.mark.timeout(60)]


def http_get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def upload_one(target: PipelineTarget, path: Path, key: str) -> Any:
    [result] = upload_and_wait(target, [Upload(path, key)], timeout=30)
    return result


def test_aws_cli_upload_is_processed_and_served_by_the_cdn(
    dev_pipeline: DevPipeline, target: PipelineTarget, tmp_path: Path
) -> None:
    aws = shutil.which("aws")
    if aws is None:
        require("the AWS CLI (`aws`) is not installed; it is the real client this test uses")
    photo = tmp_path / "camera photo.jpg"  # a space: keys arrive URL-encoded in the event
    photo.write_bytes(camera_jpeg(1200, 900))
    key = f"{UPLOADS_PREFIX}camera photo.jpg"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        **client_environment(dev_pipeline.endpoint),
    }
    subprocess.run(
        [
            aws,
            "s3",
            "cp",
            str(photo),
            f"s3://{target.uploads_bucket}/{key}",
            "--endpoint-url",
            dev_pipeline.endpoint,
            "--only-show-errors",
        ],
        env=env,
        check=True,
        timeout=30,
        capture_output=True,
    )

    rid = target.current_record_id(key)
    [result] = wait_for_records(
        target.records, [Upload(photo, key)], [rid], timeout=30, poll_interval=0.05
    )
    record = result.record
    assert record is not None and record.status is Status.COMPLETED, record
    assert (record.image.width, record.image.height) == (900, 1200)  # orientation 6 applied
    assert {r.name for r in record.renditions} == {"large", "thumb"}

    thumb = next(r for r in record.renditions if r.name == "thumb")
    status, headers, body = http_get(target.url(thumb.key))
    assert status == 200
    assert headers["Content-Type"] == "image/jpeg"
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert body[:3] == b"\xff\xd8\xff" and len(body) == thumb.bytes
    status, headers, body = http_get(target.url(thumb.key), method="HEAD")
    assert (status, body, headers["Content-Length"]) == (200, b"", str(thumb.bytes))
    assert http_get(target.url(thumb.key.replace("thumb", "nothing")))[0] == 404
    assert http_get(target.url(""))[0] == 404


def test_broken_upload_ends_failed_with_its_code_and_a_failure_event(
    target: PipelineTarget, tmp_path: Path, sqs: Any, dev_pipeline: DevPipeline
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_text("this is text, not a JPEG\n")
    result = upload_one(target, broken, f"{UPLOADS_PREFIX}broken.jpg")
    assert result.status == "FAILED"
    assert result.record.error.code == "unsupported_format"
    assert result.record.renditions == ()

    def failure_event() -> Any:
        events = drain_queue(sqs, dev_pipeline.resources.events_queue_url, wait_seconds=1)
        return [e for e in events if e["subject"] == f"{UPLOADS_PREFIX}broken.jpg"]

    [event] = wait_for(failure_event, timeout=10)
    assert event["type"] == "imagepipe.image.failed"
    assert event["data"]["error"]["code"] == "unsupported_format"


def test_same_bytes_under_a_new_key_reuse_the_renditions(
    target: PipelineTarget, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "logo.png", tmp_path / "b" / "logo-again.png"
    first.write_bytes(alpha_png())
    second.write_bytes(first.read_bytes())
    original = upload_one(target, first, f"{UPLOADS_PREFIX}logo.png")
    duplicate = upload_one(target, second, f"{UPLOADS_PREFIX}logo-again.png")
    assert original.status == duplicate.status == "COMPLETED"
    assert original.record_id != duplicate.record_id
    assert [r.key for r in duplicate.record.renditions] == [
        r.key for r in original.record.renditions
    ]


def test_a_failing_handler_is_retried_then_the_event_is_dead_lettered_intact(
    target: PipelineTarget,
    tmp_path: Path,
    faults: FaultInjection,
    sqs: Any,
    dev_pipeline: DevPipeline,
) -> None:
    key = f"{UPLOADS_PREFIX}doomed.png"
    faults.failing.add(key)
    path = tmp_path / "doomed.png"
    path.write_bytes(small_png(seed=404))
    target.client("s3").put_object(Bucket=target.uploads_bucket, Key=key, Body=path.read_bytes())

    dlq = dev_pipeline.resources.dead_letter_queue_url
    [dead] = wait_for(lambda: drain_queue(sqs, dlq, wait_seconds=1), timeout=20)
    assert faults.attempts[key] == 3  # the first attempt and Lambda's two retries
    assert dead["requestContext"]["condition"] == "RetriesExhausted"
    assert dead["requestContext"]["approximateInvokeCount"] == 3
    assert dead["responsePayload"]["errorType"] == "RuntimeError"
    [s3_record] = dead["requestPayload"]["Records"]
    assert s3_record["s3"]["bucket"]["name"] == target.uploads_bucket
    assert unquote_plus(s3_record["s3"]["object"]["key"]) == key  # the event itself, replayable
    # Nothing left behind or lost: the trigger queue is empty once the DLQ holds the event.
    attributes = sqs.get_queue_attributes(
        QueueUrl=dev_pipeline.resources.trigger_queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert attributes == {
        "ApproximateNumberOfMessages": "0",
        "ApproximateNumberOfMessagesNotVisible": "0",
    }

    # Replaying the dead-lettered event once the fault is gone completes the image.
    faults.failing.discard(key)
    sqs.send_message(
        QueueUrl=dev_pipeline.resources.trigger_queue_url,
        MessageBody=json.dumps(dead["requestPayload"]),
    )
    rid = target.current_record_id(key)
    [result] = wait_for_records(
        target.records, [Upload(path, key)], [rid], timeout=20, poll_interval=0.05
    )
    assert result.status == "COMPLETED"


def test_keys_outside_the_uploads_prefix_trigger_nothing(
    target: PipelineTarget, tmp_path: Path, dev_pipeline: DevPipeline
) -> None:
    invocations = dev_pipeline.invoker.invocations
    path = tmp_path / "elsewhere.png"
    path.write_bytes(small_png(seed=7))
    result = upload_and_wait(target, [Upload(path, "elsewhere.png")], timeout=2)[0]
    assert result.record is None  # the stack's notification filter would not fire either
    assert dev_pipeline.invoker.invocations == invocations
