"""`imagepipe upload` on the AWS dev pipeline waits on the events topic; the table is the
safety net. (The same on GCP: tests/functions/gcp/test_gcp_client.py.)"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import functions.local.upload as upload_module
from functions.core.events import lifecycle_event
from functions.core.records import ImageRecord, Source, Status
from functions.local.aws_client import AwsPipelineTarget, SqsEventFeed
from functions.local.dev import DevPipeline
from functions.local.samples import small_png
from functions.local.target import PipelineTarget
from functions.local.upload import Upload, upload_and_wait, wait_for_records
from tests.local.conftest import UPLOADS_PREFIX, wait_for

pytestmark = [pytest.mark.emulator, pytest.mark.timeout(60)]


def png_file(tmp_path: Path, name: str, seed: int) -> Path:
    path = tmp_path / name
    path.write_bytes(small_png(side=96, seed=seed))
    return path


def stored_final_record(target: PipelineTarget, rid: str) -> ImageRecord | None:
    """The table's record once it is final (it lands one write after the event), else None."""

    def final() -> ImageRecord | None:
        record = target.records.get_many([rid]).get(rid)
        return record if record is not None and record.status is not Status.PROCESSING else None

    return wait_for(final, timeout=5)  # type: ignore[no-any-return]


def test_the_record_arrives_through_the_event_feed(
    target: PipelineTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The table is read once at the start and then not for a minute: only the event
    # feed can deliver the record within the 20 s timeout.
    monkeypatch.setattr(upload_module, "SAFETY_POLL_SECONDS", 60)
    path = png_file(tmp_path, "feed.png", seed=101)
    started = time.monotonic()
    [result] = upload_and_wait(target, [Upload(path, f"{UPLOADS_PREFIX}feed.png")], timeout=20)
    assert result.status == "COMPLETED"
    assert time.monotonic() - started < 10

    # The event carries exactly the record the handler writes next.
    assert stored_final_record(target, result.record_id) == result.record


def test_the_feed_queue_and_subscription_are_removed_afterwards(
    target: PipelineTarget, tmp_path: Path
) -> None:
    path = png_file(tmp_path, "tidy.png", seed=102)
    [result] = upload_and_wait(target, [Upload(path, f"{UPLOADS_PREFIX}tidy.png")], timeout=20)
    assert result.status == "COMPLETED"

    queues = target.client("sqs").list_queues(QueueNamePrefix="imagepipe-upload-")
    assert queues.get("QueueUrls", []) == []
    subscriptions = target.client("sns").list_subscriptions_by_topic(TopicArn=target.events_topic)
    endpoints = [s["Endpoint"] for s in subscriptions["Subscriptions"]]
    assert endpoints and not [e for e in endpoints if "imagepipe-upload-" in e]


def test_a_record_final_before_the_feed_existed_is_found_in_the_table(
    target: PipelineTarget, tmp_path: Path
) -> None:
    path = png_file(tmp_path, "early.png", seed=103)
    key = f"{UPLOADS_PREFIX}early.png"
    [first] = upload_and_wait(target, [Upload(path, key)], timeout=20)
    assert first.status == "COMPLETED"
    rid = target.current_record_id(key)
    assert rid == first.record_id and stored_final_record(target, rid) is not None

    # Its event went out before this feed subscribed: none will come.
    started = time.monotonic()
    with target.follow_events() as feed:
        assert isinstance(feed, SqsEventFeed)
        [again] = wait_for_records(
            target.records,
            [Upload(path, key)],
            [rid],
            timeout=20,
            poll_interval=0.05,
            events=feed,
        )
    assert again.status == "COMPLETED"
    assert time.monotonic() - started < upload_module.SAFETY_POLL_SECONDS


def test_the_feed_passes_on_lifecycle_events_and_ignores_other_messages(
    target: PipelineTarget, dev_pipeline: DevPipeline
) -> None:
    record = ImageRecord(
        id="feed-test",
        source=Source("uploads", "incoming/x.png", "v1", 10, None, "image/png"),
        status=Status.FAILED,
        attempts=1,
        created_at="2026-11-23T00:00:00.000Z",
        updated_at="2026-11-23T00:00:01.000Z",
    )
    sns = target.client("sns")
    with SqsEventFeed.for_target(target) as feed:
        sns.publish(TopicArn=target.events_topic, Message="not an event")
        sns.publish(TopicArn=target.events_topic, Message=json.dumps({"data": {"id": 1}}))
        sns.publish(
            TopicArn=target.events_topic,
            Message=json.dumps(lifecycle_event(record, source="test")),
        )
        received: list[ImageRecord] = []
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            received.extend(feed.receive(wait_seconds=1))
    assert received == [record]


def test_a_deployed_stack_is_read_from_the_table_not_followed() -> None:
    deployed = AwsPipelineTarget(
        uploads_bucket="u",
        records_table="t",
        cdn_url="https://cdn.example",
        endpoint=None,
        events_topic="arn:aws:sns:eu-west-1:123456789012:imagepipe-events",
    )
    with deployed.follow_events() as feed:
        assert feed is None
    assert upload_module.default_poll_interval(deployed) == upload_module.STACK_POLL_INTERVAL
