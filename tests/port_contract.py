"""The ports' contract: what one store promises, every store keeps.

The scenarios are written once, here, and run over every adapter: the in-memory fakes
(tests/core/test_port_contract.py), boto3 on moto (tests/functions/aws/...) and the
google-cloud clients on the emulators (tests/functions/gcp/...). Each of those modules
imports these tests and defines one fixture, `ports`, returning a `Ports`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from functions.core.events import encode_event, lifecycle_event
from functions.core.ports import BlobStore, EventPublisher, RecordStore
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


@dataclass
class Ports:
    """One cloud's three adapters, and how to look behind them."""

    blobs: BlobStore
    records: RecordStore
    events: EventPublisher
    bucket: str  # a bucket the blob store may write to and read from
    published: Callable[[], list[tuple[bytes, str]]]  # (body, type attribute) since the start
    put_upload: Callable[[str, bytes], str]  # store an upload the platform's way -> its version
    unreachable: Callable[[], Ports]  # the same adapters, pointed at a closed port


def a_record(status: Status = Status.PROCESSING, attempts: int = 1) -> ImageRecord:
    return ImageRecord(
        id="contract-" + "r" * 31,
        source=Source("uploads", "dir/photo one.jpg", "0123456789abcdef0123456789abcdef", 1234),
        status=status,
        attempts=attempts,
        created_at="2026-01-01T00:00:00.000Z",
        updated_at="2026-01-01T00:00:01.000Z",
        lease_expires_at="2026-01-01T00:16:00.000Z",
    )


def a_finished_record() -> ImageRecord:
    return a_record(Status.COMPLETED).evolve(
        stage_ms={"read": 1.25, "render": 80.0, "store": 0.1},
        image=ImageMetadata(
            "JPEG", 1600, 1200, "RGB", False, 1, True, 6, "Canon", None, "2026-01-01T10:00:00"
        ),
        renditions=(RenditionRecord("thumb", "abc/thumb.jpg", 200, 200, "jpeg", 5120),),
        error=ErrorInfo("storage_unavailable", "an earlier attempt: é, 東京", True),
        lease_expires_at=None,
    )


# --- RecordStore --------------------------------------------------------------------------


def test_a_record_round_trips_with_floats_nones_unicode_and_nested_values(ports: Ports):
    record = a_finished_record()
    assert ports.records.create(record) is True
    assert ports.records.get(record.id) == record
    assert ports.records.get("contract-absent") is None


def test_create_refuses_another_record_with_the_same_id(ports: Ports):
    assert ports.records.create(a_record()) is True
    assert ports.records.create(a_record(Status.PENDING, attempts=7)) is False
    assert ports.records.get(a_record().id) == a_record()


def test_a_create_repeated_after_it_landed_still_counts_as_the_claim(ports: Ports):
    # An SDK retries a create whose answer was lost; the retry meets the same record.
    assert ports.records.create(a_record()) is True
    assert ports.records.create(a_record()) is True


def test_replace_needs_the_expected_status_and_attempts(ports: Ports):
    ports.records.create(a_record(Status.PROCESSING, attempts=2))
    done = a_finished_record().evolve(attempts=2)
    assert not ports.records.replace(done, expected_status=Status.PENDING, expected_attempts=2)
    assert not ports.records.replace(done, expected_status=Status.PROCESSING, expected_attempts=1)
    assert ports.records.get(done.id) == a_record(Status.PROCESSING, attempts=2)
    assert ports.records.replace(done, expected_status=Status.PROCESSING, expected_attempts=2)
    assert ports.records.get(done.id) == done
    # The first writer won; a late one that read the same state loses.
    late = a_record(Status.PENDING, attempts=2)
    assert not ports.records.replace(late, expected_status=Status.PROCESSING, expected_attempts=2)


def test_replace_of_a_missing_record_is_refused(ports: Ports):
    missing = a_record().evolve(id="contract-never-created")
    assert not ports.records.replace(
        missing, expected_status=Status.PROCESSING, expected_attempts=1
    )
    assert ports.records.get(missing.id) is None


def test_the_latest_completed_record_of_the_same_bytes_is_found(ports: Ports):
    content, other = "c" * 64, "d" * 64

    def finished(number: int, sha256: str, updated_at: str) -> ImageRecord:
        record = a_finished_record().evolve(id=f"contract-content-{number}", updated_at=updated_at)
        return record.evolve(source=Source("uploads", f"copy {number}.jpg", "v1", 1234, sha256))

    older = finished(1, content, "2026-01-01T00:00:02.000Z")
    newer = finished(2, content, "2026-01-01T00:00:05.000Z")
    # Not reusable: the same bytes still processing, failed, or back to PENDING.
    unfinished = [
        finished(3, content, "2026-01-01T00:00:09.000Z").evolve(status=status)
        for status in (Status.PROCESSING, Status.FAILED, Status.PENDING)
    ]
    for number, record in enumerate([older, *unfinished, finished(7, other, "2026-01-02")]):
        assert ports.records.create(record.evolve(id=f"{record.id}-{number}"))
    assert ports.records.latest_completed_with_content("e" * 64) is None
    found = ports.records.latest_completed_with_content(content)
    assert found == older.evolve(id=f"{older.id}-0")

    # A claim with no hash yet, finished by the conditional replace, is found once finished.
    claim = a_record().evolve(id=newer.id)
    assert ports.records.create(claim)
    assert ports.records.latest_completed_with_content(content) == found
    assert ports.records.replace(newer, expected_status=Status.PROCESSING, expected_attempts=1)
    assert ports.records.latest_completed_with_content(content) == newer
    assert ports.records.get(newer.id) == newer  # the index's key is not part of the record


# --- BlobStore ----------------------------------------------------------------------------


def test_a_written_blob_reads_back(ports: Ports):
    ports.blobs.write(
        ports.bucket,
        "contract/thumb.jpg",
        b"\xff\xd8 rendition bytes",
        content_type="image/jpeg",
        cache_control="public, max-age=31536000, immutable",
        metadata={"imagepipe-rendition": "true"},
    )
    assert ports.blobs.read(ports.bucket, "contract/thumb.jpg") == b"\xff\xd8 rendition bytes"


def test_a_blob_exists_under_exactly_its_key(ports: Ports):
    for key in ("contract/abc/thumb.jpg", "contract/abc/thumb.jpg.old"):
        ports.blobs.write(
            ports.bucket,
            key,
            b"rendition bytes",
            content_type="image/jpeg",
            cache_control="public, max-age=31536000, immutable",
            metadata={},
        )
    assert ports.blobs.exists(ports.bucket, "contract/abc/thumb.jpg")
    assert ports.blobs.exists(ports.bucket, "contract/abc/thumb.jpg.old")
    assert not ports.blobs.exists(ports.bucket, "contract/abc/thumb.jp")  # a prefix of both
    assert not ports.blobs.exists(ports.bucket, "contract/abc/large.jpg")


def test_an_upload_reads_by_its_version_and_a_missing_one_is_a_key_error(ports: Ports):
    version = ports.put_upload("contract/upload one.jpg", b"first")
    assert ports.blobs.read(ports.bucket, "contract/upload one.jpg", version) == b"first"
    with pytest.raises(KeyError):
        ports.blobs.read(ports.bucket, "contract/never-uploaded.jpg", version)


def test_a_version_overwritten_since_is_a_key_error(ports: Ports):
    first = ports.put_upload("contract/overwritten.jpg", b"first")
    ports.put_upload("contract/overwritten.jpg", b"second")
    with pytest.raises(KeyError):  # its own event names the second version
        ports.blobs.read(ports.bucket, "contract/overwritten.jpg", first)


# --- EventPublisher -----------------------------------------------------------------------


def test_an_event_goes_out_as_the_one_serialisation_with_its_type(ports: Ports):
    event = lifecycle_event(a_finished_record(), source="urn:imagepipe:test:contract")
    ports.events.publish(event)
    [(body, event_type)] = ports.published()
    assert body == encode_event(event)  # byte for byte the same on every bus
    assert json.loads(body) == event
    assert event_type == "imagepipe.image.completed"


# --- outages ------------------------------------------------------------------------------


def test_every_port_turns_an_outage_into_its_transient_error(ports: Ports):
    down = ports.unreachable()
    with pytest.raises(StorageUnavailable):
        down.blobs.read(down.bucket, "a.jpg", None)
    with pytest.raises(RecordStoreUnavailable):
        down.records.get("contract-x")
    with pytest.raises(RecordStoreUnavailable):
        down.records.create(a_record())
    with pytest.raises(PublisherUnavailable):
        down.events.publish(lifecycle_event(a_finished_record(), source="urn:test"))
    with pytest.raises(StorageUnavailable):
        down.blobs.exists(down.bucket, "a.jpg")
    with pytest.raises(RecordStoreUnavailable):
        down.records.latest_completed_with_content("c" * 64)
