"""The adapters keep the ports' contracts on the real emulators, and turn outages into the
core's transient errors."""

from __future__ import annotations

import pytest

from functions.core.records import (
    ImageRecord,
    Source,
    Status,
)
from functions.gcp.adapters import (
    FirestoreRecordStore,
    GcsBlobStore,
    sdk_retry,
)

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


@pytest.fixture
def record_store(gcp_clients, gcp_names) -> FirestoreRecordStore:
    return FirestoreRecordStore(gcp_clients.firestore, gcp_names.collection, retry=QUICK_RETRY)


def test_the_document_id_is_the_record_id(record_store, gcp_clients, gcp_names):
    record_store.create(a_record("rec-7"))
    document = gcp_clients.firestore.collection(gcp_names.collection).document("rec-7").get()
    assert document.exists and document.to_dict()["status"] == "PROCESSING"


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
