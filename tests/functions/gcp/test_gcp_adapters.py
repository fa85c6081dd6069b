"""The adapters keep the ports' contracts on the real emulators, and turn outages into the
core's transient errors."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from functions.core.memory import InMemoryRecordStore
from functions.core.records import (
    ImageRecord,
    RecordStoreUnavailable,
    Source,
    Status,
    StorageUnavailable,
)
from functions.gcp.adapters import (
    COMPUTE_API,
    CloudCdnInvalidator,
    FirestoreRecordStore,
    GcsBlobStore,
    sdk_retry,
)
from functions.gcp.contract import ARCHIVE_STORAGE_CLASS, OBJECT_FIELD, UPLOAD_FIELD
from tests.functions.gcp.gcp_emulators import PROJECT, free_port

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


# --- Operations: deletes, archive, content references, the CDN ------------------------------


class RecordingSession(requests.Session):
    """A real HTTP session that remembers each request (method, URL, JSON body): what the
    emulator does not check (fake-gcs-server ignores ifGenerationMatch on deletes and the
    storage class of a rewrite), the request still says."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, str, Any]] = []

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        body = kwargs.get("data")
        try:
            parsed = json.loads(body) if body else None
        except (TypeError, ValueError):
            parsed = None
        self.sent.append((method, url, parsed))
        return super().request(method, url, *args, **kwargs)


@pytest.fixture
def recording(emulator_env) -> RecordingSession:
    return RecordingSession()


@pytest.fixture
def blob_store(emulator_env, recording) -> GcsBlobStore:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": emulator_env["STORAGE_EMULATOR_HOST"]},
        _http=recording,
    )
    return GcsBlobStore(client, retry=QUICK_RETRY, timeout=10)


def put(gcp_clients, bucket: str, key: str, data: bytes = b"bytes") -> str:
    blob = gcp_clients.storage.bucket(bucket).blob(key)
    blob.upload_from_string(data, content_type="image/png")
    return str(blob.generation)


def names_in(gcp_clients, bucket: str) -> list[str]:
    return sorted(blob.name for blob in gcp_clients.storage.list_blobs(bucket))


def test_delete_removes_the_generation_named_and_a_missing_object_is_fine(
    blob_store, recording, gcp_clients, gcp_names
):
    generation = put(gcp_clients, gcp_names.uploads_bucket, "in/a.png")
    blob_store.delete(gcp_names.uploads_bucket, "in/a.png", generation)
    assert names_in(gcp_clients, gcp_names.uploads_bucket) == []
    blob_store.delete(gcp_names.uploads_bucket, "in/a.png", generation)  # again: gone, fine
    blob_store.delete(gcp_names.uploads_bucket, "in/never.png")
    deletes = [url for method, url, _ in recording.sent if method == "DELETE"]
    # Only that generation: on GCS a newer upload of the key is refused (412) and kept.
    assert f"ifGenerationMatch={generation}" in deletes[0]
    assert "ifGenerationMatch" not in deletes[-1]


def test_delete_under_removes_every_object_under_the_prefix_page_by_page(
    blob_store, gcp_clients, gcp_names
):
    bucket = gcp_names.renditions_bucket
    doomed = [f"{'ab' * 32}/r{n:02d}.webp" for n in range(5)]
    for key in [*doomed, f"{'cd' * 32}/thumb.jpg", f"{'ab' * 32}x/other.jpg"]:
        put(gcp_clients, bucket, key)
    assert blob_store.delete_under(bucket, f"{'ab' * 32}/") == sorted(doomed)
    assert names_in(gcp_clients, bucket) == [f"{'ab' * 32}x/other.jpg", f"{'cd' * 32}/thumb.jpg"]
    assert blob_store.delete_under(bucket, f"{'ab' * 32}/") == []


def test_archive_copies_the_generation_in_the_archive_class_and_keeps_the_upload(
    blob_store, recording, gcp_clients, gcp_names
):
    generation = put(gcp_clients, gcp_names.uploads_bucket, "in/a.png", b"original bytes")
    blob_store.archive(
        gcp_names.uploads_bucket,
        "in/a.png",
        generation,
        archive_bucket=gcp_names.renditions_bucket,  # any other bucket will do
        archive_key="2026/12/01/in/a.png",
    )
    archived = gcp_clients.storage.bucket(gcp_names.renditions_bucket).blob("2026/12/01/in/a.png")
    assert archived.download_as_bytes() == b"original bytes"
    assert names_in(gcp_clients, gcp_names.uploads_bucket) == ["in/a.png"]  # the core deletes
    rewrites = [(url, body) for method, url, body in recording.sent if "/rewriteTo/" in url]
    assert len(rewrites) == 1 and f"sourceGeneration={generation}" in rewrites[0][0]
    assert rewrites[0][1]["storageClass"] == ARCHIVE_STORAGE_CLASS == "ARCHIVE"


def test_archive_of_a_generation_that_is_gone_is_a_key_error_and_of_a_missing_bucket_not(
    blob_store, gcp_clients, gcp_names
):
    from google.api_core.exceptions import NotFound

    generation = put(gcp_clients, gcp_names.uploads_bucket, "in/a.png")
    put(gcp_clients, gcp_names.uploads_bucket, "in/a.png", b"newer")  # overwritten since
    where = {"archive_bucket": gcp_names.renditions_bucket, "archive_key": "2026/01/01/in/a.png"}
    with pytest.raises(KeyError):
        blob_store.archive(gcp_names.uploads_bucket, "in/a.png", generation, **where)
    current = gcp_clients.storage.bucket(gcp_names.uploads_bucket).get_blob("in/a.png")
    with pytest.raises(NotFound):  # a deploy mistake, not an upload deleted first
        blob_store.archive(
            gcp_names.uploads_bucket,
            "in/a.png",
            str(current.generation),
            archive_bucket="no-such-archive-bucket",
            archive_key="2026/01/01/in/a.png",
        )


def test_every_document_names_its_object_and_for_object_finds_its_records(
    record_store, gcp_clients, gcp_names
):
    first = a_record("rec-1")
    second = a_record("rec-2", source=Source("uploads", "a/b.jpg", "17", 1, None, None))
    other = a_record("rec-3", source=Source("uploads", "a/b.jpg.bak", "18", 1, None, None))
    elsewhere = a_record("rec-4", source=Source("other", "a/b.jpg", "19", 1, None, None))
    for record in (first, second, other, elsewhere):
        record_store.create(record)
    stored = gcp_clients.firestore.collection(gcp_names.collection).document("rec-1").get()
    assert stored.to_dict()[OBJECT_FIELD] == "uploads/a/b.jpg"
    found = record_store.for_object("uploads", "a/b.jpg")
    assert sorted(record.id for record in found) == ["rec-1", "rec-2"]
    assert {record.id: record for record in found}["rec-1"] == first
    assert record_store.for_object("uploads", "missing.jpg") == []


NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(minutes=5)


@pytest.fixture(params=["memory", "firestore"])
def content_store(request, gcp_clients, gcp_names):
    """The same scenarios over the reference semantics and the Firestore adapter."""
    if request.param == "memory":
        return InMemoryRecordStore()
    suffix = gcp_names.collection.removeprefix("images-")
    return FirestoreRecordStore(
        gcp_clients.firestore,
        gcp_names.collection,
        retry=QUICK_RETRY,
        content_collection=f"content-{suffix}",
    )


def release(store, sha: str, holder: str, now: datetime = NOW) -> bool:
    return store.release_content_reference(sha, holder, now=now, deletion_lease_until=now + LEASE)


def test_the_last_holder_out_deletes_and_nobody_joins_while_it_does(content_store):
    sha = "ab" * 32
    assert content_store.add_content_reference(sha, "rec-1", NOW)
    assert content_store.add_content_reference(sha, "rec-2", NOW)
    assert content_store.add_content_reference(sha, "rec-2", NOW)  # a repeat holds once
    assert not release(content_store, sha, "rec-1")  # rec-2 still holds the renditions
    assert release(content_store, sha, "rec-2")  # the last one out: it deletes
    assert not content_store.add_content_reference(sha, "rec-3", NOW + timedelta(minutes=1))
    assert not release(content_store, sha, "rec-2", NOW + timedelta(minutes=1))  # a redelivery
    content_store.finish_content_deletion(sha)
    assert content_store.add_content_reference(sha, "rec-3", NOW + timedelta(minutes=2))


def test_a_deleter_that_outlived_its_lease_loses_it(content_store):
    sha = "cd" * 32
    assert content_store.add_content_reference(sha, "rec-1", NOW)
    assert release(content_store, sha, "rec-1")
    later = NOW + LEASE + timedelta(seconds=1)
    assert content_store.add_content_reference(sha, "rec-2", later)  # the deletion is over
    content_store.finish_content_deletion(sha)  # the late deleter's finish: holders remain
    assert not release(content_store, sha, "rec-9", later)
    assert release(content_store, sha, "rec-2", later)


def test_releasing_bytes_nobody_referenced_starts_their_deletion(content_store):
    # Records finished before references were counted: the core then asks the index.
    assert release(content_store, "ef" * 32, "rec-old")
    assert not release(content_store, "ef" * 32, "rec-other")
    content_store.finish_content_deletion("ef" * 32)
    content_store.finish_content_deletion("ef" * 32)  # again, and of unknown bytes: fine
    content_store.finish_content_deletion("00" * 32)


def test_of_concurrent_releases_exactly_one_deletes(gcp_clients, gcp_names):
    store = FirestoreRecordStore(
        gcp_clients.firestore,
        gcp_names.collection,
        retry=QUICK_RETRY,
        content_collection=f"race-{gcp_names.collection}",
    )
    sha = "12" * 32
    holders = [f"rec-{n}" for n in range(6)]
    for holder in holders:
        assert store.add_content_reference(sha, holder, NOW)
    start = threading.Barrier(len(holders))
    won: list[bool] = []

    def release_one(holder: str) -> None:
        start.wait()
        won.append(release(store, sha, holder))

    threads = [threading.Thread(target=release_one, args=(h,)) for h in holders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(won) == [False] * (len(holders) - 1) + [True]


def test_a_reference_added_while_the_last_one_is_released_either_keeps_or_is_refused(
    gcp_clients, gcp_names
):
    store = FirestoreRecordStore(
        gcp_clients.firestore,
        gcp_names.collection,
        retry=QUICK_RETRY,
        content_collection=f"race2-{gcp_names.collection}",
    )
    for round_number in range(5):
        sha = f"{round_number:02d}" * 32
        assert store.add_content_reference(sha, "rec-old", NOW)
        start = threading.Barrier(2)
        results: dict[str, bool] = {}

        def add(sha: str, start: threading.Barrier, results: dict[str, bool]) -> None:
            start.wait()
            results["added"] = store.add_content_reference(sha, "rec-new", NOW)

        def drop(sha: str, start: threading.Barrier, results: dict[str, bool]) -> None:
            start.wait()
            results["deletes"] = release(store, sha, "rec-old")

        threads = [
            threading.Thread(target=work, args=(sha, start, results)) for work in (add, drop)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        # Never both: a new holder whose renditions are being deleted.
        assert not (results["added"] and results["deletes"]), results
        assert results["added"] or results["deletes"]


def unreachable_blob_store() -> GcsBlobStore:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": f"http://127.0.0.1:{free_port()}"},
    )
    return GcsBlobStore(client, retry=QUICK_RETRY, timeout=2)


def test_outages_of_deletes_archives_and_references_are_transient_errors():
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import firestore

    blobs = unreachable_blob_store()
    with pytest.raises(StorageUnavailable, match="deleting gs://b/k"):
        blobs.delete("b", "k", "1")
    with pytest.raises(StorageUnavailable, match="deleting gs://b/p"):
        blobs.delete_under("b", "p/")
    with pytest.raises(StorageUnavailable, match="archiving gs://b/k"):
        blobs.archive("b", "k", "1", archive_bucket="a", archive_key="2026/01/01/k")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
        client = firestore.Client(project=PROJECT, credentials=AnonymousCredentials())
    records = FirestoreRecordStore(client, "images", retry=QUICK_RETRY, timeout=2)
    with pytest.raises(RecordStoreUnavailable):
        records.add_content_reference("ab" * 32, "rec-1", NOW)
    with pytest.raises(RecordStoreUnavailable):
        release(records, "ab" * 32, "rec-1")
    with pytest.raises(RecordStoreUnavailable):
        records.finish_content_deletion("ab" * 32)
    with pytest.raises(RecordStoreUnavailable):
        records.for_object("uploads", "k")


class FakeComputeSession:
    """An authorized session's stand-in: remembers each POST, answers `status`."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.posts: list[tuple[str, Any]] = []

    def post(self, url: str, json: Any = None, timeout: float | None = None) -> Any:
        self.posts.append((url, json))
        response = requests.Response()
        response.status_code = self.status
        response._content = b'{"kind": "compute#operation"}'
        return response


def test_cloud_cdn_invalidates_one_wildcard_per_content_prefix():
    session = FakeComputeSession()
    cdn = CloudCdnInvalidator(session, "my-project", "imagepipe-cdn")
    sha, other = "ab" * 32, "cd" * 32
    cdn.invalidate([f"{sha}/thumb-200x200.jpg", f"{sha}/large.webp", f"{other}/thumb.jpg"])
    url = f"{COMPUTE_API}/projects/my-project/global/urlMaps/imagepipe-cdn/invalidateCache"
    assert session.posts == [(url, {"path": f"/{sha}/*"}), (url, {"path": f"/{other}/*"})]
    cdn.invalidate([])
    assert len(session.posts) == 2
    whole = CloudCdnInvalidator(session, "ignored", "projects/p/global/urlMaps/m")
    whole.invalidate([f"{sha}/a.jpg"])
    assert session.posts[-1][0] == f"{COMPUTE_API}/projects/p/global/urlMaps/m/invalidateCache"


def test_cloud_cdn_errors_are_transient_for_5xx_and_429_and_plain_otherwise():
    for status in (500, 503, 429):
        with pytest.raises(StorageUnavailable, match=f"HTTP {status}"):
            CloudCdnInvalidator(FakeComputeSession(status), "p", "m").invalidate(["ab/c.jpg"])
    with pytest.raises(RuntimeError, match=r"refused .* HTTP 403"):
        CloudCdnInvalidator(FakeComputeSession(403), "p", "m").invalidate(["ab/c.jpg"])


def test_the_pipeline_gets_the_archive_bucket_and_the_cdn_from_the_environment():
    from functions.core.settings import PipelineSettings
    from functions.gcp.bootstrap import build_cdn
    from functions.gcp.contract import from_env, to_env

    environ = to_env(
        settings=PipelineSettings(),
        renditions_bucket="r",
        records_collection="images",
        events_topic="projects/p/topics/t",
        max_event_age_seconds=60,
        timeout_seconds=60,
        project="p",
        archive_bucket="archive",
        cdn_url_map="imagepipe-cdn",
    )
    env = from_env(environ)
    assert env.archive_bucket == "archive"
    session = FakeComputeSession()
    cdn = build_cdn(env, session)
    assert isinstance(cdn, CloudCdnInvalidator)
    cdn.invalidate(["ab/c.jpg"])
    assert session.posts[0][0].endswith("/projects/p/global/urlMaps/imagepipe-cdn/invalidateCache")
    without = from_env({k: v for k, v in environ.items() if k != "IMAGEPIPE_CDN_URL_MAP"})
    assert build_cdn(without) is None


def test_a_release_whose_write_landed_but_whose_answer_was_lost_still_deletes(
    gcp_clients, gcp_names
):
    store = FirestoreRecordStore(
        gcp_clients.firestore,
        gcp_names.collection,
        retry=QUICK_RETRY,
        content_collection=f"lost-{gcp_names.collection}",
    )
    sha = "34" * 32
    assert store.add_content_reference(sha, "rec-1", NOW)
    assert release(store, sha, "rec-1")
    assert release(store, sha, "rec-1")  # the SDK's retry of that same call: it still won
    assert not release(store, sha, "rec-2")  # anyone else is refused while the lease lasts


def test_records_of_an_upload_api_id_are_found_by_it(record_store, gcp_clients, gcp_names):
    upload_id = "0123456789abcdef" * 2
    key = f"incoming/caller/{upload_id}/photo.jpg"
    api = a_record("rec-api", source=Source("uploads", key, "21", 1, None, None))
    plain = a_record("rec-plain")
    for record in (api, plain):
        record_store.create(record)
    documents = gcp_clients.firestore.collection(gcp_names.collection)
    assert documents.document("rec-api").get().to_dict()[UPLOAD_FIELD] == upload_id
    assert UPLOAD_FIELD not in documents.document("rec-plain").get().to_dict()
    assert record_store.for_upload(upload_id) == [api]
    assert record_store.for_upload("f" * 32) == []


def test_of_concurrent_replaces_from_the_same_state_exactly_one_lands(
    record_store, gcp_clients, gcp_names
):
    claim = a_record("rec-race")
    record_store.create(claim)
    start = threading.Barrier(4)
    landed: list[str] = []

    def finish(n: int) -> None:
        final = claim.evolve(status=Status.COMPLETED, updated_at=f"2026-05-01T10:00:0{n}.000Z")
        start.wait()
        if record_store.replace(final, expected_status=Status.PROCESSING, expected_attempts=1):
            landed.append(final.updated_at)

    threads = [threading.Thread(target=finish, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(landed) == 1
    stored = record_store.get("rec-race")
    assert stored is not None and stored.updated_at == landed[0]
    # The document is the record written, nothing left of the claim (its lease, say).
    document = gcp_clients.firestore.collection(gcp_names.collection).document("rec-race").get()
    assert "lease_expires_at" in document.to_dict()
    assert ImageRecord.from_dict(document.to_dict()) == stored


def test_a_replace_removes_the_fields_the_new_record_no_longer_has(
    record_store, gcp_clients, gcp_names
):
    completed = a_record("rec-fields").evolve(
        status=Status.COMPLETED,
        source=Source("uploads", "a/b.jpg", "1714557600123456", 2048, "ab" * 32, "image/jpeg"),
        lease_expires_at=None,
    )
    record_store.create(completed)
    documents = gcp_clients.firestore.collection(gcp_names.collection)
    assert "completed_sha256" in documents.document("rec-fields").get().to_dict()
    reclaimed = completed.evolve(status=Status.PROCESSING, attempts=2)
    assert record_store.replace(reclaimed, expected_status=Status.COMPLETED, expected_attempts=1)
    assert "completed_sha256" not in documents.document("rec-fields").get().to_dict()
    assert record_store.get("rec-fields") == reclaimed
    assert record_store.latest_completed_with_content("ab" * 32) is None
