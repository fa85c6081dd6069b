"""Pipeline.process's lifecycle: claim, duplicates, leases, transient errors, events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from functions.core.imaging import render_image
from functions.core.memory import InMemoryBlobStore, InMemoryRecordStore
from functions.core.records import (
    ClaimHeld,
    PublisherUnavailable,
    RecordStoreUnavailable,
    Status,
    StorageUnavailable,
)
from functions.core.service import IMMUTABLE_CACHE_CONTROL, Pipeline, is_stale_claim
from functions.core.settings import PipelineSettings, RenditionSpec
from functions.core.timing import StageTimer
from tests.core.images import FakeStack, encoded, quadrants


@pytest.fixture
def pipeline() -> FakeStack:
    return FakeStack()


def test_completes_and_stores_immutable_marked_renditions(pipeline):
    outcome = pipeline.process(pipeline.upload("photos/cat.jpg", encoded(quadrants())))
    assert outcome.action == "completed"
    record = pipeline.records.get(outcome.record.id)
    assert record.status is Status.COMPLETED and record.attempts == 1
    assert [r.name for r in record.renditions] == ["large", "thumb"]
    assert record.source.sha256 and record.image.width == 400
    assert {"detect", "validate", "inspect", "render", "encode", "store"} <= set(record.stage_ms)
    for rendition in record.renditions:
        blob = pipeline.blobs.objects[("renditions", rendition.key)]
        assert blob.cache_control == IMMUTABLE_CACHE_CONTROL
        assert blob.metadata["imagepipe-rendition"] == "true"
        assert blob.content_type == "image/jpeg" and len(blob.data) == rendition.bytes
        assert "cat" not in rendition.key
    assert len(pipeline.events.events) == 1
    event = pipeline.events.events[0]
    assert event["type"] == "imagepipe.image.completed" and event["subject"] == "photos/cat.jpg"
    # The event's data is the stored record, to the last field (stage timings included).
    assert event["data"] == record.to_dict()


def test_a_second_delivery_is_a_duplicate(pipeline):
    ref = pipeline.upload("a.jpg", encoded(quadrants()))
    first = pipeline.process(ref)
    second = pipeline.process(ref)
    assert second.action == "duplicate" and second.record == pipeline.records.get(first.record.id)
    assert len(pipeline.events.events) == 1


def test_same_bytes_under_another_name_reuse_the_rendition_keys(pipeline):
    data = encoded(quadrants())
    a = pipeline.process(pipeline.upload("a.jpg", data))
    b = pipeline.process(pipeline.upload("b.jpg", data))
    assert [r.key for r in a.record.renditions] == [r.key for r in b.record.renditions]
    assert len(pipeline.renditions()) == 2


def claim_of_a_dead_worker(pipeline):
    """A worker claimed an upload and died: PROCESSING, lease until 00:10 (now is 00:00)."""
    ref = pipeline.upload("a.jpg", encoded(quadrants()))
    pipeline.blobs.unavailable = True
    with pytest.raises(StorageUnavailable):
        pipeline.process(ref)
    pipeline.blobs.unavailable = False
    stuck = pipeline.records.get(ref.record_id).evolve(
        status=Status.PROCESSING, lease_expires_at="2026-01-01T00:10:00.000Z"
    )
    pipeline.records.records[ref.record_id] = stuck
    return ref, stuck


def test_a_live_claim_fails_retryably_until_its_lease_expires_then_is_taken_over(pipeline):
    ref, stuck = claim_of_a_dead_worker(pipeline)
    # Not a no-op: returning normally would end the platform's retries with the image stuck.
    with pytest.raises(ClaimHeld) as held:
        pipeline.process(ref)
    assert held.value.retryable and held.value.code == "claim_held"
    assert pipeline.records.get(ref.record_id) == stuck
    assert pipeline.events.events == []
    pipeline.now += timedelta(minutes=11)
    outcome = pipeline.process(ref)
    assert outcome.action == "completed" and outcome.record.attempts == stuck.attempts + 1
    assert [e["type"] for e in pipeline.events.events] == ["imagepipe.image.completed"]


def test_a_claim_past_its_lease_is_stale_and_a_finished_record_never_is(pipeline):
    _, claim = claim_of_a_dead_worker(pipeline)
    at = datetime(2026, 1, 1, 0, 10, tzinfo=UTC)
    assert not is_stale_claim(claim, at - timedelta(seconds=1))
    assert is_stale_claim(claim, at)
    assert not is_stale_claim(claim.evolve(status=Status.COMPLETED), at + timedelta(days=1))
    assert not is_stale_claim(claim.evolve(status=Status.PENDING), at + timedelta(days=1))
    stale = [r for r in pipeline.records.records.values() if is_stale_claim(r, at)]
    assert stale == [claim]


def test_transient_storage_error_leaves_pending_and_raises(pipeline):
    ref = pipeline.upload("a.jpg", encoded(quadrants()))
    pipeline.blobs.unavailable = True
    with pytest.raises(StorageUnavailable):
        pipeline.process(ref)
    record = pipeline.records.get(ref.record_id)
    assert record.status is Status.PENDING
    assert record.error.code == "storage_unavailable" and record.error.retryable
    assert pipeline.events.events == []
    pipeline.blobs.unavailable = False
    outcome = pipeline.process(ref)
    assert outcome.action == "completed" and outcome.record.attempts == 2
    assert outcome.record.error is None


def test_publish_failure_keeps_the_record_claimable_and_the_retry_publishes_once(pipeline):
    ref = pipeline.upload("a.jpg", encoded(quadrants()))
    pipeline.events.unavailable = True
    with pytest.raises(PublisherUnavailable):
        pipeline.process(ref)
    assert pipeline.records.get(ref.record_id).status is Status.PENDING
    pipeline.events.unavailable = False
    assert pipeline.process(ref).action == "completed"
    assert pipeline.process(ref).action == "duplicate"
    assert [e["type"] for e in pipeline.events.events] == ["imagepipe.image.completed"]


def test_record_store_outage_raises(pipeline):
    ref = pipeline.upload("a.jpg", encoded(quadrants()))
    pipeline.records.unavailable = True
    with pytest.raises(RecordStoreUnavailable):
        pipeline.process(ref)
    assert pipeline.events.events == []


def test_an_event_older_than_the_platform_retries_ends_failed_and_retryable(pipeline):
    ref = pipeline.upload("a.jpg", encoded(quadrants()))
    pipeline.blobs.unavailable = True
    with pytest.raises(StorageUnavailable):
        pipeline.process(ref)
    pipeline.blobs.unavailable = False
    outcome = pipeline.process(
        ref, event_time=pipeline.now - timedelta(hours=2), max_event_age=timedelta(hours=1)
    )
    error = outcome.record.error
    assert outcome.action == "failed"
    assert (error.code, error.retryable) == ("retries_exhausted", True)
    assert "storage_unavailable" not in error.message and "storage is unavailable" in error.message
    assert [e["type"] for e in pipeline.events.events] == ["imagepipe.image.failed"]


def test_the_last_attempt_ends_failed_with_one_event_and_still_raises(pipeline):
    """Lambda's third attempt: the record must not stay PENDING; the event is dead-lettered."""
    ref = pipeline.upload("a.jpg", encoded(quadrants()))
    pipeline.blobs.unavailable = True
    for _ in range(2):
        with pytest.raises(StorageUnavailable):
            pipeline.process(ref, max_attempts=3)
        assert pipeline.records.get(ref.record_id).status is Status.PENDING
    with pytest.raises(StorageUnavailable):  # raised, so the platform dead-letters the event
        pipeline.process(ref, max_attempts=3)
    record = pipeline.records.get(ref.record_id)
    assert (record.status, record.attempts) == (Status.FAILED, 3)
    assert (record.error.code, record.error.retryable) == ("retries_exhausted", True)
    assert record.error.message.startswith("3 attempts failed; the last: storage_unavailable")
    assert [e["type"] for e in pipeline.events.events] == ["imagepipe.image.failed"]
    assert pipeline.events.events[0]["data"] == record.to_dict()
    assert pipeline.process(ref, max_attempts=3).action == "duplicate"  # finished: a no-op


def test_a_last_attempt_whose_topic_is_down_stays_pending_for_a_redrive(pipeline):
    ref = pipeline.upload("a.jpg", encoded(quadrants()))
    pipeline.events.unavailable = True
    for _ in range(3):
        with pytest.raises(PublisherUnavailable):
            pipeline.process(ref, max_attempts=3)
    record = pipeline.records.get(ref.record_id)
    assert (record.status, record.error.code) == (Status.PENDING, "publisher_unavailable")


def test_a_deleted_object_fails_as_missing(pipeline):
    ref = pipeline.upload("a.jpg", encoded(quadrants()))
    del pipeline.blobs.objects[("uploads", "a.jpg")]
    assert pipeline.process(ref).record.error.code == "object_missing"


class CountingRecordStore(InMemoryRecordStore):
    """Counts round trips, the cost that matters when the store is across a network."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def get(self, record_id):
        self.calls.append("get")
        return super().get(record_id)

    def create(self, record):
        self.calls.append("create")
        return super().create(record)

    def replace(self, record, **expected):
        self.calls.append("replace")
        return super().replace(record, **expected)


def test_a_first_delivery_costs_one_write_to_claim_and_one_to_finish():
    pipeline = FakeStack(records=CountingRecordStore())
    pipeline.process(pipeline.upload("a.jpg", encoded(quadrants())))
    assert pipeline.records.calls == ["create", "replace"]


def test_a_duplicate_delivery_reads_the_record_and_writes_nothing_more():
    pipeline = FakeStack(records=CountingRecordStore())
    ref = pipeline.upload("a.jpg", encoded(quadrants()))
    pipeline.process(ref)
    pipeline.records.calls.clear()
    assert pipeline.process(ref).action == "duplicate"
    assert pipeline.records.calls == ["create", "get"]


class WriteFailingBlobStore(InMemoryBlobStore):
    """Reads work, writes do not: the renditions bucket is what is down."""

    def write(self, bucket, key, data, **options):
        raise StorageUnavailable(f"cannot write {bucket}/{key}")


def test_a_failed_rendition_write_raises_its_transient_error_and_leaves_the_record_pending():
    pipeline = FakeStack(blobs=WriteFailingBlobStore())
    ref = pipeline.upload("a.jpg", encoded(quadrants()))
    with pytest.raises(StorageUnavailable):
        pipeline.process(ref)
    record = pipeline.records.get(ref.record_id)
    assert record.status is Status.PENDING and record.error.code == "storage_unavailable"
    assert pipeline.events.events == []


def test_the_tests_run_the_pipeline_the_clouds_run_with_its_clock(pipeline):
    assert type(pipeline.pipeline()) is Pipeline
    pipeline.now = datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC)
    record = pipeline.process(pipeline.upload("a.jpg", encoded(quadrants()))).record
    assert record.created_at == record.updated_at == "2030-05-06T07:08:09.000Z"


def test_a_bug_in_our_own_arithmetic_is_a_bug_not_a_corrupt_image():
    """The settings are the seam: a zero-height cover box that `parse_settings` would refuse
    makes the geometry divide by zero. ZeroDivisionError is one of the errors Pillow raises
    on hostile bytes, so a `try` around more than Pillow's calls would call a good JPEG
    corrupt; instead the error surfaces, the record is left PENDING `internal_error` and
    the platform's retries and dead-letter queue keep the event until the bug is fixed."""
    broken = PipelineSettings(renditions=(RenditionSpec("thumb", 200, 0, "cover"),))
    data = encoded(quadrants())
    with pytest.raises(ZeroDivisionError):
        render_image(data, broken, StageTimer())
    pipeline = FakeStack(settings=broken)
    ref = pipeline.upload("good.jpg", data)
    with pytest.raises(ZeroDivisionError):
        pipeline.process(ref)
    record = pipeline.records.get(ref.record_id)
    assert record.status is Status.PENDING and record.error.code == "internal_error"
    assert pipeline.events.events == []
