"""The adapters keep the ports' contracts on the real emulators, and turn outages into the
core's transient errors."""

from __future__ import annotations

import json

import pytest

from functions.core.events import lifecycle_event
from functions.core.records import (
    ErrorInfo,
    ImageMetadata,
    ImageRecord,
    PublisherUnavailable,
    RecordStoreUnavailable,
    RenditionRecord,
    Source,
    Status,
    StorageUnavailable,
)
from functions.gcp.adapters import (
    FirestoreRecordStore,
    GcsBlobStore,
    PubSubEventPublisher,
    sdk_retry,
)
from tests.functions.gcp.gcp_emulators import PROJECT, free_port, pull_messages

pytestmark = pytest.mark.emulator

QUICK_RETRY = sdk_retry(1.0)


def a_record(record_id: str = "rec-1", **changes) -> ImageRecord:
    record = ImageRecord(
        id=record_id,
        source=Source("uploads", "a/b.jpg", "1714557600123456", 2048, None, "image/jpeg"),
        status=Status.PROCESSING,
        attempts=1,
        created_at="2026-05-01T10:00:00.000Z",
        updated_at="2026-05-01T10:00:00.000Z",
        lease_expires_at="2026-05-01T10:16:00.000Z",
    )
    return record.evolve(**changes)


def a_finished_record(record_id: str = "rec-1") -> ImageRecord:
    return a_record(
        record_id,
        status=Status.COMPLETED,
        stage_ms={"read": 1.25, "render": 30.0},
        image=ImageMetadata("JPEG", 640, 480, "RGB", False, 1, True, 6, "Canon", None, None),
        renditions=(RenditionRecord("thumb", "abc/thumb.jpg", 200, 150, "jpeg", 4096),),
        lease_expires_at=None,
    )


@pytest.fixture
def record_store(gcp_clients, gcp_names) -> FirestoreRecordStore:
    return FirestoreRecordStore(gcp_clients.firestore, gcp_names.collection, retry=QUICK_RETRY)


def test_a_record_round_trips_through_firestore_with_maps_lists_and_nulls(record_store):
    finished = a_finished_record()
    assert record_store.create(finished) is True
    assert record_store.get(finished.id) == finished
    failed = a_record("rec-2", status=Status.FAILED, error=ErrorInfo("corrupt_image", "bad", False))
    assert record_store.create(failed) is True
    assert record_store.get("rec-2") == failed
    assert record_store.get("no-such-record") is None


def test_the_document_id_is_the_record_id(record_store, gcp_clients, gcp_names):
    record_store.create(a_record("rec-7"))
    document = gcp_clients.firestore.collection(gcp_names.collection).document("rec-7").get()
    assert document.exists and document.to_dict()["status"] == "PROCESSING"


def test_create_refuses_a_second_record_with_the_same_id(record_store):
    assert record_store.create(a_record()) is True
    competitor = a_record(created_at="2026-05-01T10:00:01.000Z")
    assert record_store.create(competitor) is False
    assert record_store.get("rec-1") == a_record()


def test_a_create_retried_after_it_landed_still_counts_as_the_claim(record_store):
    # The SDK retries a create whose response was lost; the retry meets our own document.
    assert record_store.create(a_record()) is True
    assert record_store.create(a_record()) is True


def test_replace_happens_only_while_status_and_attempts_are_as_expected(record_store):
    record_store.create(a_record())
    finished = a_finished_record()
    assert (
        record_store.replace(finished, expected_status=Status.PENDING, expected_attempts=1) is False
    )
    assert (
        record_store.replace(finished, expected_status=Status.PROCESSING, expected_attempts=2)
        is False
    )
    assert record_store.get("rec-1") == a_record()
    assert (
        record_store.replace(finished, expected_status=Status.PROCESSING, expected_attempts=1)
        is True
    )
    assert record_store.get("rec-1") == finished
    # The first writer won; a late one that read the same state loses.
    assert (
        record_store.replace(a_record(), expected_status=Status.PROCESSING, expected_attempts=1)
        is False
    )


def test_replace_of_a_missing_record_is_refused(record_store):
    assert (
        record_store.replace(a_record(), expected_status=Status.PROCESSING, expected_attempts=1)
        is False
    )


def test_blobs_are_read_back_and_renditions_carry_content_type_cache_and_marker(
    gcp_clients, gcp_names
):
    blobs = GcsBlobStore(gcp_clients.storage, retry=QUICK_RETRY)
    upload = gcp_clients.storage.bucket(gcp_names.uploads_bucket).blob("in/photo one.jpg")
    upload.upload_from_string(b"jpeg bytes")
    upload.reload()
    assert blobs.read(gcp_names.uploads_bucket, "in/photo one.jpg", str(upload.generation)) == (
        b"jpeg bytes"
    )
    with pytest.raises(KeyError):
        blobs.read(gcp_names.uploads_bucket, "in/missing.jpg", "1")

    blobs.write(
        gcp_names.renditions_bucket,
        "abc/thumb.jpg",
        b"thumb bytes",
        content_type="image/jpeg",
        cache_control="public, max-age=31536000, immutable",
        metadata={"imagepipe-rendition": "true"},
    )
    renditions = gcp_clients.storage.bucket(gcp_names.renditions_bucket)
    stored = renditions.get_blob("abc/thumb.jpg")
    assert stored.content_type == "image/jpeg"
    assert stored.cache_control == "public, max-age=31536000, immutable"
    assert stored.metadata == {"imagepipe-rendition": "true"}
    assert renditions.blob("abc/thumb.jpg").download_as_bytes() == b"thumb bytes"


def test_events_are_published_as_json_with_their_type_as_an_attribute(gcp_clients, gcp_names):
    publisher = PubSubEventPublisher(gcp_clients.publisher, gcp_names.topic, retry=QUICK_RETRY)
    event = lifecycle_event(a_finished_record(), source="//test")
    publisher.publish(event)
    [message] = pull_messages(gcp_clients.subscriber, gcp_names.subscription, settle=0.3)
    assert json.loads(message.data) == event
    assert message.attributes["type"] == "imagepipe.image.completed"


# --- Outages: every adapter raises the core's transient error, within its retry budget ---


@pytest.fixture
def closed_port() -> int:
    return free_port()  # nothing listens there


def test_an_unreachable_firestore_is_record_store_unavailable(monkeypatch, closed_port):
    from google.cloud import firestore

    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{closed_port}")
    store = FirestoreRecordStore(firestore.Client(project=PROJECT), "images", retry=QUICK_RETRY)
    with pytest.raises(RecordStoreUnavailable):
        store.get("rec-1")
    with pytest.raises(RecordStoreUnavailable):
        store.create(a_record())


def test_an_unreachable_storage_is_storage_unavailable(monkeypatch, closed_port):
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{closed_port}")
    blobs = GcsBlobStore(storage.Client(project=PROJECT), retry=QUICK_RETRY, timeout=2)
    with pytest.raises(StorageUnavailable):
        blobs.read("uploads", "a.jpg", "1")
    with pytest.raises(StorageUnavailable):
        blobs.write("renditions", "a.jpg", b"x", content_type="image/jpeg", cache_control="",
                    metadata={})  # fmt: skip


def test_an_unreachable_pubsub_is_publisher_unavailable(monkeypatch, closed_port):
    from google.cloud import pubsub_v1

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{closed_port}")
    publisher = PubSubEventPublisher(
        pubsub_v1.PublisherClient(), f"projects/{PROJECT}/topics/events", retry=QUICK_RETRY,
        timeout=3,
    )  # fmt: skip
    with pytest.raises(PublisherUnavailable):
        publisher.publish(lifecycle_event(a_finished_record(), source="//test"))
