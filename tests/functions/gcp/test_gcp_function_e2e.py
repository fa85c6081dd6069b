"""The real Cloud Function, served by functions-framework and called over HTTP with the
`object.v1.finalized` CloudEvent Eventarc would send, on real Firestore, Pub/Sub and GCS
emulators. Each test has its own buckets, collection, topic and function process."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import time
import zlib
from datetime import UTC, datetime, timedelta

import pytest
from PIL import Image, ImageDraw

from functions.core.records import ImageRecord, ObjectRef, Source, Status
from functions.core.service import IMMUTABLE_CACHE_CONTROL, Reclaim, isoformat
from functions.core.work import WorkItem
from functions.gcp import contract
from tests.functions.gcp.gcp_emulators import (
    deleted_event,
    finalized_event,
    free_port,
    pull_messages,
)

pytestmark = pytest.mark.emulator


def a_photo(width: int = 1600, height: int = 1200, *, shade: int = 0) -> bytes:
    """`shade` makes other bytes: the content references (one collection for the whole
    session, as on a stack) then belong to this test alone."""
    image = Image.new("RGB", (width, height), (30, 90, 160 + shade))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width // 4, height // 4, width * 3 // 4, height * 3 // 4), fill=(240, 200, 40))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def a_decompression_bomb(side: int = 60_000) -> bytes:
    """A valid PNG header claiming side x side pixels: tiny on disk, 10 GB once decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\0" * (1 + side * 3) * 4)  # a few rows; the rest is "missing"
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
            + chunk(b"IEND", b""))  # fmt: skip


@pytest.fixture
def upload(gcp_clients, gcp_names):
    def put(name: str, data: bytes, content_type: str = "image/jpeg"):
        blob = gcp_clients.storage.bucket(gcp_names.uploads_bucket).blob(name)
        blob.upload_from_string(data, content_type=content_type)
        blob.reload()
        return blob

    return put


def record_documents(gcp_clients, gcp_names) -> dict[str, dict]:
    collection = gcp_clients.firestore.collection(gcp_names.collection)
    return {snapshot.id: snapshot.to_dict() for snapshot in collection.stream()}


def record_id_of(blob) -> str:
    return ObjectRef(blob.bucket.name, blob.name, str(blob.generation)).record_id


def rendition_names(gcp_clients, gcp_names) -> list[str]:
    return sorted(b.name for b in gcp_clients.storage.list_blobs(gcp_names.renditions_bucket))


def entries_for(function, record_id: str) -> list[dict]:
    return [e for e in function.log_entries() if e.get("record_id") == record_id]


def test_an_upload_gets_renditions_a_completed_document_and_one_event(
    serve_function, gcp_clients, gcp_names, upload
):
    function = serve_function(gcp_names)
    photo = a_photo()
    blob = upload("holiday/beach photo.jpg", photo)

    response = function.deliver(finalized_event(blob))

    assert response.status_code == 200, response.text
    record_id = record_id_of(blob)
    document = record_documents(gcp_clients, gcp_names)[record_id]
    assert document["status"] == "COMPLETED"
    assert document["source"]["sha256"] == hashlib.sha256(photo).hexdigest()
    assert document["source"]["version"] == str(blob.generation)
    sizes = {r["name"]: (r["width"], r["height"]) for r in document["renditions"]}
    assert sizes == {"large": (1024, 768), "thumb": (200, 200)}

    renditions = gcp_clients.storage.bucket(gcp_names.renditions_bucket)
    assert rendition_names(gcp_clients, gcp_names) == sorted(
        r["key"] for r in document["renditions"]
    )
    for rendition in document["renditions"]:
        stored = renditions.get_blob(rendition["key"])
        assert stored.content_type == "image/jpeg"
        assert stored.cache_control == IMMUTABLE_CACHE_CONTROL
        assert stored.metadata == {
            "imagepipe-rendition": "true",
            "imagepipe-source-sha256": document["source"]["sha256"],
        }
        decoded = Image.open(io.BytesIO(renditions.blob(rendition["key"]).download_as_bytes()))
        assert (decoded.format, decoded.size) == ("JPEG", (rendition["width"], rendition["height"]))

    [message] = pull_messages(gcp_clients.subscriber, gcp_names.subscription)
    event = json.loads(message.data)
    assert message.attributes["type"] == "imagepipe.image.completed"
    assert (event["type"], event["subject"]) == ("imagepipe.image.completed", blob.name)
    assert event["id"].startswith(f"{record_id}-completed-")
    # The event goes out before the final write, so only the record has the notify timing;
    # the content index's field is the store's, not the record's.
    store_fields = ("stage_ms", contract.CONTENT_FIELD, contract.OBJECT_FIELD)
    without_timings = {k: v for k, v in document.items() if k not in store_fields}
    assert document[contract.CONTENT_FIELD] == document["source"]["sha256"]
    assert document[contract.OBJECT_FIELD] == f"{blob.bucket.name}/{blob.name}"
    assert {k: v for k, v in event["data"].items() if k != "stage_ms"} == without_timings

    [entry] = entries_for(function, record_id)
    assert (entry["severity"], entry["status"], entry["renditions"]) == ("INFO", "COMPLETED", 2)


def test_the_same_event_delivered_twice_gives_one_document_and_one_event(
    serve_function, gcp_clients, gcp_names, upload
):
    function = serve_function(gcp_names)
    blob = upload("twice.jpg", a_photo(800, 600))
    event = finalized_event(blob)

    assert function.deliver(event).status_code == 200
    assert function.deliver(event).status_code == 200

    documents = record_documents(gcp_clients, gcp_names)
    assert list(documents) == [record_id_of(blob)]
    assert documents[record_id_of(blob)]["attempts"] == 1
    assert len(pull_messages(gcp_clients.subscriber, gcp_names.subscription)) == 1
    actions = [e["action"] for e in entries_for(function, record_id_of(blob))]
    assert actions == ["completed", "duplicate"]


def test_a_hostile_object_is_recorded_failed_announced_once_and_acknowledged(
    serve_function, gcp_clients, gcp_names, upload
):
    function = serve_function(gcp_names)
    blob = upload("innocent.png", a_decompression_bomb(), content_type="image/png")

    response = function.deliver(finalized_event(blob))

    assert response.status_code == 200, "a permanent failure must not be retried"
    document = record_documents(gcp_clients, gcp_names)[record_id_of(blob)]
    assert document["status"] == "FAILED"
    assert document["error"]["code"] == "too_many_pixels"
    assert document["error"]["retryable"] is False
    assert rendition_names(gcp_clients, gcp_names) == []
    [message] = pull_messages(gcp_clients.subscriber, gcp_names.subscription)
    assert message.attributes["type"] == "imagepipe.image.failed"
    assert json.loads(message.data)["data"]["error"]["code"] == "too_many_pixels"
    # The line the component's log-based metric counts (jsonPayload.status="FAILED").
    [entry] = entries_for(function, record_id_of(blob))
    assert (entry["severity"], entry["status"], entry["error_code"]) == (
        "WARNING",
        "FAILED",
        "too_many_pixels",
    )


def test_with_the_record_store_down_the_function_fails_retryably_and_a_retry_completes(
    serve_function, gcp_clients, gcp_names, upload
):
    outage = serve_function(
        gcp_names,
        FIRESTORE_EMULATOR_HOST=f"127.0.0.1:{free_port()}",  # nothing listens there
        **{contract.SDK_RETRY_SECONDS: "1"},
    )
    blob = upload("during-outage.jpg", a_photo(640, 480))
    event = finalized_event(blob)

    response = outage.deliver(event)

    assert response.status_code == 500, "Eventarc retries only what fails"
    assert pull_messages(gcp_clients.subscriber, gcp_names.subscription, settle=0.5) == []
    assert rendition_names(gcp_clients, gcp_names) == []
    [entry] = [e for e in outage.log_entries() if e.get("key") == blob.name]
    assert (entry["severity"], entry["status"], entry["error_code"]) == (
        "ERROR",
        "PENDING",
        "record_store_unavailable",
    )

    # Eventarc redelivers the same event once Firestore is back.
    healthy = serve_function(gcp_names)
    assert healthy.deliver(event).status_code == 200
    assert record_documents(gcp_clients, gcp_names)[record_id_of(blob)]["status"] == "COMPLETED"
    assert len(pull_messages(gcp_clients.subscriber, gcp_names.subscription)) == 1


def test_an_event_older_than_the_maximum_age_ends_failed_retryable_and_is_acknowledged(
    serve_function, gcp_clients, gcp_names, upload
):
    function = serve_function(gcp_names, **{contract.MAX_EVENT_AGE_SECONDS: "3600"})
    blob = upload("late.jpg", a_photo(640, 480))
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)

    response = function.deliver(finalized_event(blob, time=two_hours_ago.isoformat()))

    assert response.status_code == 200, "an expired event must stop being retried"
    document = record_documents(gcp_clients, gcp_names)[record_id_of(blob)]
    assert (document["status"], document["error"]["code"]) == ("FAILED", "retries_exhausted")
    assert document["error"]["retryable"] is True  # a redrive may still finish it
    assert rendition_names(gcp_clients, gcp_names) == []
    [message] = pull_messages(gcp_clients.subscriber, gcp_names.subscription)
    assert message.attributes["type"] == "imagepipe.image.failed"


def test_a_rendition_or_a_malformed_event_is_acknowledged_without_a_record(
    serve_function, gcp_clients, gcp_names, upload
):
    function = serve_function(gcp_names)
    rendition = upload("already/a-rendition.jpg", a_photo(320, 240))
    rendition.metadata = {"imagepipe-rendition": "true"}
    rendition.patch()
    malformed = finalized_event(rendition)
    malformed["data"] = {**malformed["data"], "generation": "not-a-number"}

    assert function.deliver(finalized_event(rendition)).status_code == 200
    assert function.deliver(malformed).status_code == 200

    assert record_documents(gcp_clients, gcp_names) == {}
    assert pull_messages(gcp_clients.subscriber, gcp_names.subscription, settle=0.5) == []
    messages = [e["message"] for e in function.log_entries() if e.get("logger") == "imagepipe.gcp"]
    assert any(m.startswith("ignored rendition") for m in messages)
    assert any("generation 'not-a-number' is not a non-negative integer" in m for m in messages)


def claimed_elsewhere(gcp_clients, gcp_names, blob, *, lease: timedelta) -> ImageRecord:
    """A PROCESSING claim of another delivery on `blob`'s record, holding for `lease`."""
    now = datetime.now(UTC)
    claim = ImageRecord(
        id=record_id_of(blob),
        source=Source(blob.bucket.name, blob.name, str(blob.generation)),
        status=Status.PROCESSING,
        attempts=1,
        created_at=isoformat(now),
        updated_at=isoformat(now),
        lease_expires_at=isoformat(now + lease),
    )
    collection = gcp_clients.firestore.collection(gcp_names.collection)
    collection.document(claim.id).create(claim.to_dict())
    return claim


def test_an_image_another_delivery_is_processing_is_left_to_a_later_retry(
    serve_function, gcp_clients, gcp_names, upload
):
    function = serve_function(gcp_names)
    blob = upload("busy.jpg", a_photo(640, 480))
    held = claimed_elsewhere(gcp_clients, gcp_names, blob, lease=timedelta(minutes=10))

    response = function.deliver(finalized_event(blob))

    # Not 200: if the worker holding the lease died, only a redelivery can finish the image.
    assert response.status_code == 409
    assert record_documents(gcp_clients, gcp_names) == {held.id: held.to_dict()}
    assert pull_messages(gcp_clients.subscriber, gcp_names.subscription, settle=0.5) == []
    [entry] = [e for e in function.log_entries() if e.get("key") == blob.name]
    assert (entry["action"], entry["status"], entry["error_code"]) == (
        "retry",
        "PROCESSING",
        "claim_held",
    )


def test_a_claim_whose_worker_died_is_taken_over_by_a_redelivery_with_one_event(
    serve_function, gcp_clients, gcp_names, upload
):
    function = serve_function(gcp_names)
    blob = upload("died.jpg", a_photo(640, 480))
    # What a worker killed mid-render leaves behind: a claim whose lease runs out soon.
    died = claimed_elsewhere(gcp_clients, gcp_names, blob, lease=timedelta(seconds=2))
    now = datetime.fromisoformat(died.created_at.replace("Z", "+00:00"))
    event = finalized_event(blob)

    assert function.deliver(event).status_code == 409  # Eventarc redelivers it
    time.sleep(max(0.0, (now + timedelta(seconds=2.2) - datetime.now(UTC)).total_seconds()))
    assert function.deliver(event).status_code == 200

    document = record_documents(gcp_clients, gcp_names)[died.id]
    assert (document["status"], document["attempts"]) == ("COMPLETED", 2)
    messages = pull_messages(gcp_clients.subscriber, gcp_names.subscription, settle=0.5)
    assert [m.attributes["type"] for m in messages] == ["imagepipe.image.completed"]
    assert function.deliver(event).status_code == 200  # now a duplicate: acknowledged
    assert pull_messages(gcp_clients.subscriber, gcp_names.subscription, settle=0.5) == []


def test_objects_outside_the_uploads_prefix_are_acknowledged_counted_and_left_alone(
    serve_function, gcp_clients, gcp_names, upload
):
    function = serve_function(gcp_names, **{contract.UPLOADS_PREFIX: "incoming/"})
    outside = upload("elsewhere/a.jpg", a_photo(320, 240))
    inside = upload("incoming/a.jpg", a_photo(320, 240))

    assert function.deliver(finalized_event(outside)).status_code == 200
    assert function.deliver(finalized_event(inside)).status_code == 200

    documents = record_documents(gcp_clients, gcp_names)
    assert [d["source"]["key"] for d in documents.values()] == ["incoming/a.jpg"]
    actions = {e.get("key"): e.get("action") for e in function.log_entries() if "action" in e}
    assert actions == {"elsewhere/a.jpg": "skipped", "incoming/a.jpg": "completed"}
    [completed] = [e for e in function.log_entries() if e.get("action") == "completed"]
    assert completed["ms"] > 0  # what the ProcessingMs distribution extracts


# --- deletes and the work queue ---------------------------------------------------------------


def event_types(gcp_clients, gcp_names) -> list[str]:
    messages = pull_messages(gcp_clients.subscriber, gcp_names.subscription, settle=0.5)
    return [m.attributes["type"] for m in messages]


def test_a_deleted_original_marks_its_record_deleted_and_takes_its_renditions_along(
    serve_function, gcp_clients, gcp_names, upload
):
    function = serve_function(gcp_names)
    blob = upload("holiday/gone.jpg", a_photo(640, 480, shade=7))
    assert function.deliver(finalized_event(blob)).status_code == 200
    assert rendition_names(gcp_clients, gcp_names)
    assert event_types(gcp_clients, gcp_names) == ["imagepipe.image.completed"]
    blob.delete()

    deleted = deleted_event(blob)
    assert function.deliver(deleted).status_code == 200
    assert function.deliver(deleted).status_code == 200  # Eventarc's at-least-once

    document = record_documents(gcp_clients, gcp_names)[record_id_of(blob)]
    assert document["status"] == "DELETED"
    assert rendition_names(gcp_clients, gcp_names) == []
    assert event_types(gcp_clients, gcp_names) == ["imagepipe.image.deleted"]
    actions = [e["action"] for e in function.log_entries() if e.get("key") == blob.name]
    assert actions == ["completed", "deleted", "duplicate"]


def test_a_delete_of_an_image_being_processed_is_retried_and_of_an_unknown_one_skipped(
    serve_function, gcp_clients, gcp_names, upload
):
    function = serve_function(gcp_names, **{contract.UPLOADS_PREFIX: "incoming/"})
    busy = upload("incoming/busy.jpg", a_photo(320, 240))
    claimed_elsewhere(gcp_clients, gcp_names, busy, lease=timedelta(minutes=10))
    never = upload("incoming/never.jpg", a_photo(320, 240))
    outside = upload("elsewhere/a.jpg", a_photo(320, 240))

    assert function.deliver(deleted_event(busy)).status_code == 409
    assert function.deliver(deleted_event(never)).status_code == 200
    assert function.deliver(deleted_event(outside)).status_code == 200

    statuses = {
        d["source"]["key"]: d["status"] for d in record_documents(gcp_clients, gcp_names).values()
    }
    assert statuses == {"incoming/busy.jpg": "PROCESSING"}
    actions = {
        e["key"]: (e["action"], e.get("reason")) for e in function.log_entries() if "action" in e
    }
    assert actions == {
        "incoming/busy.jpg": ("retry", None),
        "incoming/never.jpg": ("skipped", "no record to delete"),
        "elsewhere/a.jpg": ("skipped", "outside the uploads prefix or suffix"),
    }


def work_event(item: WorkItem, retry_count: int | None = 0) -> tuple[dict[str, str], bytes]:
    """What the Cloud Tasks queue posts for one item (`CloudTasksWorkQueue.task`)."""
    headers = {
        "ce-specversion": "1.0",
        "ce-type": contract.WORK_EVENT_TYPE,
        "ce-source": "//cloudtasks.googleapis.com/projects/p/locations/l/queues/q",
        "ce-id": "task-1",
        "Content-Type": "application/json",
        "X-CloudTasks-QueueName": "q",
        "X-CloudTasks-TaskName": "1234",
    }
    if retry_count is not None:
        headers[contract.TASK_RETRY_COUNT_HEADER] = str(retry_count)
    return headers, item.to_json().encode()


def post(function, headers: dict[str, str], body: bytes):
    import requests

    return requests.post(function.url, data=body, headers=headers, timeout=60)


def test_a_work_item_outside_the_trigger_prefix_is_processed(
    serve_function, gcp_clients, gcp_names, upload
):
    function = serve_function(gcp_names, **{contract.UPLOADS_PREFIX: "incoming/"})
    blob = upload("from-before/old.jpg", a_photo(640, 480))
    ref = ObjectRef(blob.bucket.name, blob.name, str(blob.generation), blob.size)

    assert post(function, *work_event(WorkItem(ref))).status_code == 200
    assert post(function, *work_event(WorkItem(ref))).status_code == 200  # a second backfill

    document = record_documents(gcp_clients, gcp_names)[ref.record_id]
    assert document["status"] == "COMPLETED"
    assert event_types(gcp_clients, gcp_names) == ["imagepipe.image.completed"]
    actions = [e["action"] for e in function.log_entries() if e.get("key") == blob.name]
    assert actions == ["completed", "duplicate"]


def test_the_queues_last_attempt_ends_an_outage_failed_and_a_redrive_completes_it(
    serve_function, gcp_clients, gcp_names, upload
):
    closed = f"http://127.0.0.1:{free_port()}"
    down = serve_function(
        gcp_names, STORAGE_EMULATOR_HOST=closed, **{contract.SDK_RETRY_SECONDS: "1"}
    )
    blob = upload("incoming/outage.jpg", a_photo(320, 240))
    ref = ObjectRef(blob.bucket.name, blob.name, str(blob.generation), blob.size)

    assert post(down, *work_event(WorkItem(ref), retry_count=0)).status_code == 500
    pending = record_documents(gcp_clients, gcp_names)[ref.record_id]
    assert (pending["status"], pending["error"]["code"]) == ("PENDING", "storage_unavailable")
    last = contract.WORK_MAX_ATTEMPTS - 1
    assert post(down, *work_event(WorkItem(ref), retry_count=last)).status_code == 500
    failed = record_documents(gcp_clients, gcp_names)[ref.record_id]
    assert (failed["status"], failed["error"]["code"]) == ("FAILED", "retries_exhausted")
    assert event_types(gcp_clients, gcp_names) == ["imagepipe.image.failed"]

    function = serve_function(gcp_names)
    plain = post(function, *work_event(WorkItem(ref)))  # no reclaim: FAILED stays FAILED
    assert plain.status_code == 200
    assert record_documents(gcp_clients, gcp_names)[ref.record_id]["status"] == "FAILED"
    redrive = WorkItem(ref, frozenset({Reclaim.FAILED}))
    assert post(function, *work_event(redrive)).status_code == 200
    assert record_documents(gcp_clients, gcp_names)[ref.record_id]["status"] == "COMPLETED"
    assert event_types(gcp_clients, gcp_names) == ["imagepipe.image.completed"]


def test_a_malformed_work_body_is_acknowledged_with_one_line(serve_function, gcp_names):
    function = serve_function(gcp_names)
    headers, _ = work_event(WorkItem(ObjectRef("b", "k", "1")))
    bodies = [
        b'{"kind": "something else"}',
        b'{"kind": "imagepipe.work.v1", "bucket": "b"}',
        b'{"kind": "imagepipe.work.v1", "bucket": "b", "key": "k", "version": "1", '
        b'"reclaim": ["all"]}',
    ]
    for body in bodies:
        assert post(function, headers, body).status_code == 200, body
    text = {"Content-Type": "text/plain"}
    assert post(function, {**headers, **text}, b"not json").status_code == 200
    errors = [e["message"] for e in function.log_entries() if e.get("severity") == "ERROR"]
    assert len(errors) == 4 and all(m.startswith("ignored work event task-1") for m in errors)
    assert "lacks key, version" in errors[1] and "reclaim" in errors[2]


def test_a_delete_by_the_lifecycle_rule_is_plain_expiry_and_the_image_stays(
    serve_function, gcp_clients, gcp_names, upload
):
    function = serve_function(gcp_names, **{contract.ORIGINALS_EXPIRY_DAYS: "30"})
    old = upload("incoming/old.jpg", a_photo(320, 240, shade=11))
    young = upload("incoming/young.jpg", a_photo(320, 240, shade=12))
    for blob in (old, young):
        assert function.deliver(finalized_event(blob)).status_code == 200
    event_types(gcp_clients, gcp_names)  # the completed events, read and dropped
    aged = deleted_event(old)
    aged["data"]["timeCreated"] = "2026-01-01T00:00:00Z"  # past the rule's 30 days

    assert function.deliver(aged).status_code == 200
    assert function.deliver(deleted_event(young)).status_code == 200  # a person's delete

    documents = record_documents(gcp_clients, gcp_names)
    kept = documents[record_id_of(old)]
    assert (kept["status"], kept["original"]) == ("COMPLETED", "expired")
    assert documents[record_id_of(young)]["status"] == "DELETED"
    remaining = rendition_names(gcp_clients, gcp_names)
    assert sorted(r["key"] for r in kept["renditions"]) == remaining
    assert event_types(gcp_clients, gcp_names) == ["imagepipe.image.deleted"]
