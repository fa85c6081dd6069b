"""google-cloud adapters for the core's ports: `GcsBlobStore`, `FirestoreRecordStore`,
`PubSubEventPublisher`, `CloudCdnInvalidator`, the upload API's `GcsUploadBucket` and
`GcsRenditionUrls`, and the translation of the SDKs' outages.

SDK retries are google.api_core `Retry` objects passed to each call; when they run
out, the error becomes one of the core's transient errors and the function raises,
so Eventarc retries the event with backoff.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import requests
from google.api_core import exceptions as api_exceptions
from google.api_core import retry as api_retry
from google.auth import exceptions as auth_exceptions
from google.cloud import firestore

from functions.core.events import encode_event
from functions.core.keys import invalidation_paths
from functions.core.records import (
    ImageRecord,
    PublisherUnavailable,
    RecordStoreUnavailable,
    Status,
    StorageUnavailable,
    TransientError,
)
from functions.core.timing import utc_now
from functions.core.uploads import PresignedPost, StoredUpload, upload_id_in
from functions.gcp.contract import (
    ARCHIVE_STORAGE_CLASS,
    CONTENT_COLLECTION_NAME,
    CONTENT_DELETER,
    CONTENT_DELETING_UNTIL,
    CONTENT_FIELD,
    CONTENT_HOLDERS,
    CONTENT_INDEX,
    OBJECT_FIELD,
    RECORDS_INDEXES,
    UPLOAD_FIELD,
)

# What "the service is having a bad moment" looks like from each SDK, after its own retries.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    api_exceptions.ServerError,  # 500, 502, 503 and 504 / DeadlineExceeded
    api_exceptions.TooManyRequests,  # 429, and gRPC RESOURCE_EXHAUSTED
    api_exceptions.RetryError,  # the retry budget ran out
    auth_exceptions.TransportError,  # the token endpoint could not be reached
    requests.ConnectionError,
    requests.Timeout,
    ConnectionError,
    TimeoutError,  # also concurrent.futures.TimeoutError (a publish future)
)
_RETRYABLE_CALL_ERRORS = (
    api_exceptions.ServerError,
    api_exceptions.TooManyRequests,
    requests.ConnectionError,
    requests.Timeout,
    ConnectionError,
)


def sdk_retry(timeout_seconds: float) -> api_retry.Retry:
    """Exponential backoff with jitter on transient errors, bounded in total time."""
    return api_retry.Retry(
        predicate=api_retry.if_exception_type(*_RETRYABLE_CALL_ERRORS),
        initial=0.2,
        maximum=5.0,
        multiplier=2.0,
        timeout=timeout_seconds,
    )


@contextmanager
def translated_outages(error_type: type[TransientError], what: str) -> Iterator[None]:
    try:
        yield
    except TRANSIENT_ERRORS as error:
        raise error_type(f"{what} failed: {type(error).__name__}: {error}") from error


# --- Cloud Storage ---------------------------------------------------------------------


class GcsBlobStore:
    """Reads uploads by generation, writes and deletes renditions, deletes and archives
    uploads, through google-cloud-storage."""

    def __init__(self, client: Any, *, retry: api_retry.Retry, timeout: float = 60.0) -> None:
        self._client = client
        self._retry = retry
        self._timeout = timeout

    def read(self, bucket: str, key: str, version: str | None = None) -> bytes:
        generation = int(version) if version else None
        blob = self._client.bucket(bucket).blob(key, generation=generation)
        with translated_outages(StorageUnavailable, f"reading gs://{bucket}/{key}"):
            try:
                return blob.download_as_bytes(retry=self._retry, timeout=self._timeout)
            except api_exceptions.NotFound:
                # Deleted, or overwritten: the generation the event named is gone.
                raise KeyError(f"gs://{bucket}/{key}#{generation}") from None

    def write(
        self,
        bucket: str,
        key: str,
        data: bytes,
        *,
        content_type: str,
        cache_control: str,
        metadata: Mapping[str, str],
    ) -> None:
        blob = self._client.bucket(bucket).blob(key)
        blob.cache_control = cache_control
        blob.metadata = dict(metadata)
        with translated_outages(StorageUnavailable, f"writing gs://{bucket}/{key}"):
            # Uploads are retried only with a generation precondition by default. Keys are
            # content-addressed, so a repeated write puts the same bytes in the same place.
            blob.upload_from_string(
                data, content_type=content_type, retry=self._retry, timeout=self._timeout
            )

    def exists(self, bucket: str, key: str) -> bool:
        # A one-name listing, not blob.exists(): the function's renditions role
        # (legacyBucketWriter) may create, delete and list objects but not get one, and a
        # listing from `key` on starts with `key` itself when it is there.
        with translated_outages(StorageUnavailable, f"looking up gs://{bucket}/{key}"):
            listed = list(
                self._client.list_blobs(
                    bucket, prefix=key, max_results=1, retry=self._retry, timeout=self._timeout
                )
            )
        return bool(listed) and listed[0].name == key

    def delete(self, bucket: str, key: str, version: str | None = None) -> None:
        blob = self._client.bucket(bucket).blob(key)
        # Only the generation that was processed; gone already, or replaced by a newer
        # upload (its own image), there is nothing to do.
        gone = (api_exceptions.NotFound, api_exceptions.PreconditionFailed)
        with (
            translated_outages(StorageUnavailable, f"deleting gs://{bucket}/{key}"),
            suppress(*gone),
        ):
            blob.delete(
                if_generation_match=int(version) if version else None,
                retry=self._retry,
                timeout=self._timeout,
            )

    def delete_under(self, bucket: str, prefix: str) -> list[str]:
        deleted: list[str] = []
        with translated_outages(StorageUnavailable, f"deleting gs://{bucket}/{prefix}*"):
            # The listing pages by itself; a retry after an outage lists what is left.
            listed = self._client.list_blobs(
                bucket, prefix=prefix, retry=self._retry, timeout=self._timeout
            )
            for blob in listed:
                try:
                    blob.delete(retry=self._retry, timeout=self._timeout)
                except api_exceptions.NotFound:
                    continue  # another deleter's
                deleted.append(blob.name)
        return sorted(deleted)

    def archive(
        self, bucket: str, key: str, version: str, *, archive_bucket: str, archive_key: str
    ) -> None:
        source = self._client.bucket(bucket).blob(key, generation=int(version))
        target = self._client.bucket(archive_bucket).blob(archive_key)
        target.storage_class = ARCHIVE_STORAGE_CLASS
        what = f"archiving gs://{bucket}/{key} to gs://{archive_bucket}"
        with translated_outages(StorageUnavailable, what):
            try:
                # A server-side copy: the bytes never pass through the function. A large
                # object takes several calls, each continuing from the last one's token.
                token, _, _ = target.rewrite(source, retry=self._retry, timeout=self._timeout)
                while token is not None:
                    token, _, _ = target.rewrite(
                        source, token=token, retry=self._retry, timeout=self._timeout
                    )
            except api_exceptions.NotFound:
                # The generation is gone (deleted, or overwritten), or the archive bucket is:
                # only the first means there is nothing to archive.
                if self._client.bucket(bucket).get_blob(
                    key, generation=int(version), retry=self._retry, timeout=self._timeout
                ):
                    raise
                raise KeyError(f"gs://{bucket}/{key}#{version}") from None


class GcsSigner:
    """What V4 signing needs from the function's credentials, whichever kind they are.

    A service-account key (local runs; `GOOGLE_APPLICATION_CREDENTIALS`) signs in process.
    On Cloud Functions the credentials are the metadata server's, with no private key: the
    library then signs through the IAM credentials API's signBlob, as the account itself,
    given its e-mail and a fresh access token (the account may sign as itself: the
    component grants it roles/iam.serviceAccountTokenCreator on itself).
    """

    def __init__(self, credentials: Any) -> None:
        self._credentials = credentials
        self._lock = threading.Lock()

    def arguments(self) -> dict[str, Any]:
        if hasattr(self._credentials, "sign_bytes") and hasattr(self._credentials, "signer_email"):
            return {"credentials": self._credentials}
        with self._lock:
            if not self._credentials.valid:
                from google.auth.transport.requests import Request

                with translated_outages(StorageUnavailable, "refreshing the signing token"):
                    self._credentials.refresh(Request())
            return {
                "service_account_email": self._credentials.service_account_email,
                "access_token": self._credentials.token,
            }


class GcsUploadBucket:
    """The uploads bucket as the upload API sees it: V4 signed POST policies and finding an
    upload by listing its id's prefix.

    `endpoint` is where browsers POST: storage.googleapis.com on GCP, the emulator locally.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        signer: GcsSigner,
        endpoint: str,
        retry: api_retry.Retry,
    ) -> None:
        self._client = client
        self.name = bucket
        self._signer = signer
        self._endpoint = endpoint.rstrip("/")
        self._retry = retry

    def presigned_post(
        self, key: str, *, content_type: str, max_bytes: int, expires_in: timedelta
    ) -> PresignedPost:
        policy = self._client.generate_signed_post_policy_v4(
            self.name,
            key,
            expiration=expires_in,
            conditions=[{"Content-Type": content_type}, ["content-length-range", 1, max_bytes]],
            fields={"Content-Type": content_type},
            **self._signer.arguments(),
        )
        # The XML API takes a form POST at the bucket's path-style URL.
        return PresignedPost(url=f"{self._endpoint}/{self.name}", fields=dict(policy["fields"]))

    def find(self, prefix: str) -> StoredUpload | None:
        with translated_outages(StorageUnavailable, f"listing gs://{self.name}/{prefix}"):
            blobs = list(
                self._client.list_blobs(
                    self.name, prefix=prefix, max_results=10, retry=self._retry, timeout=10
                )
            )
        if not blobs:
            return None
        newest = max(blobs, key=lambda blob: blob.generation)
        return StoredUpload(key=newest.name, version=str(newest.generation))


class GcsRenditionUrls:
    """Viewers' URLs of renditions: plain under the CDN (or public bucket) URL, or V4 signed
    GET URLs (delivery mode signed-urls, where the bucket is private).

    A signed URL is kept and handed out again while more than half its lifetime remains:
    on GCP each signature is a signBlob call, and a page polling `GET /images/{id}` asks
    for the same renditions every few hundred milliseconds.
    """

    MAX_KEPT = 4096  # signed URLs kept at once; the oldest half goes when it is full

    def __init__(
        self,
        base_url: str,
        *,
        sign: bool,
        client: Any = None,
        bucket: str = "",
        signer: GcsSigner | None = None,
        endpoint: str = "",
        expires_in: timedelta = timedelta(hours=1),
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._sign = sign
        self._client = client
        self._bucket = bucket
        self._signer = signer
        self._endpoint = endpoint
        self._expires_in = expires_in
        self._clock = clock
        self._kept: dict[str, tuple[datetime, str]] = {}  # key -> (signed at, url)
        self._lock = threading.Lock()

    def __call__(self, key: str) -> str:
        if not self._sign:
            return f"{self._base_url}/{quote(key)}"
        now = self._clock()
        with self._lock:
            kept = self._kept.get(key)
        if kept is not None and now - kept[0] < self._expires_in / 2:
            return kept[1]
        url = self._signed(key)
        with self._lock:
            if len(self._kept) >= self.MAX_KEPT:
                for old in list(self._kept)[: self.MAX_KEPT // 2]:
                    del self._kept[old]
            self._kept[key] = (now, url)
        return url

    def _signed(self, key: str) -> str:
        assert self._signer is not None and self._client is not None
        blob = self._client.bucket(self._bucket).blob(key)
        return blob.generate_signed_url(
            version="v4",
            expiration=self._expires_in,
            method="GET",
            api_access_endpoint=self._endpoint,
            **self._signer.arguments(),
        )


# --- Firestore ---------------------------------------------------------------------------


# Tries of one conditional change (a record's replace, a content reference): each is a few
# ms, and contention means many deliveries of the same object or bytes at once.
CONDITIONAL_WRITE_ATTEMPTS = 20
UNCHANGED = object()  # a content change that writes nothing


class FirestoreRecordStore:
    """One document per image, id = record id; writes are conditional and atomic.

    The content references live beside the records, one document per content hash in
    `content_collection`, changed only in transactions (see `functions.core.memory`'s
    `InMemoryRecordStore` for what each call means).
    """

    def __init__(
        self,
        client: Any,
        collection: str,
        *,
        retry: api_retry.Retry,
        timeout: float = 20.0,
        content_collection: str = CONTENT_COLLECTION_NAME,
    ) -> None:
        self._client = client
        self._collection = client.collection(collection)
        self._content = client.collection(content_collection)
        self._retry = retry
        self._timeout = timeout

    def get(self, record_id: str) -> ImageRecord | None:
        with translated_outages(RecordStoreUnavailable, f"reading record {record_id}"):
            snapshot = self._collection.document(record_id).get(
                retry=self._retry, timeout=self._timeout
            )
        return ImageRecord.from_dict(snapshot.to_dict()) if snapshot.exists else None

    def latest_completed_with_content(self, content_sha256: str) -> ImageRecord | None:
        from google.cloud.firestore_v1.base_query import FieldFilter

        (content_field, _), (order_field, direction) = RECORDS_INDEXES[CONTENT_INDEX]
        query = (
            self._collection.where(filter=FieldFilter(content_field, "==", content_sha256))
            .order_by(order_field, direction=direction)
            .limit(1)
        )
        with translated_outages(RecordStoreUnavailable, "looking up records by content"):
            snapshots = list(query.stream(retry=self._retry, timeout=self._timeout))
        return ImageRecord.from_dict(snapshots[0].to_dict()) if snapshots else None

    def create(self, record: ImageRecord) -> bool:
        document = self._collection.document(record.id)
        data = _document(record)
        with translated_outages(RecordStoreUnavailable, f"creating record {record.id}"):
            try:
                document.create(data, retry=self._retry, timeout=self._timeout)
                return True
            except api_exceptions.Conflict:  # AlreadyExists
                # A retried create whose first attempt landed finds its own document:
                # the claim is ours (the timestamps make the record unique to this call).
                snapshot = document.get(retry=self._retry, timeout=self._timeout)
                return snapshot.exists and snapshot.to_dict() == data

    def replace(
        self, record: ImageRecord, *, expected_status: Status, expected_attempts: int
    ) -> bool:
        document = self._collection.document(record.id)
        data = _document(record)
        calls = {"retry": self._retry, "timeout": self._timeout}
        # A compare-and-set on the document's update time, as `_change_content` does and
        # for the same reason: every call takes this store's retry, so an outage is a
        # RecordStoreUnavailable within the function's budget.
        with translated_outages(RecordStoreUnavailable, f"replacing record {record.id}"):
            for _ in range(CONDITIONAL_WRITE_ATTEMPTS):
                snapshot = document.get(**calls)
                current = snapshot.to_dict() if snapshot.exists else None
                if current == data:
                    return True  # our own write, landed before its answer was lost
                if current is None or (current.get("status"), current.get("attempts")) != (
                    expected_status.value,
                    expected_attempts,
                ):
                    return False
                # The whole document: every field given (a map replaces the whole map),
                # and the ones the new record no longer has removed.
                removed = {name: firestore.DELETE_FIELD for name in current if name not in data}
                unchanged_since = self._client.write_option(last_update_time=snapshot.update_time)
                try:
                    document.update({**data, **removed}, option=unchanged_since, **calls)
                    return True
                except api_exceptions.FailedPrecondition:
                    continue  # written by another delivery in between: decide again
        attempts = CONDITIONAL_WRITE_ATTEMPTS
        raise RecordStoreUnavailable(
            f"replacing record {record.id} failed: {attempts} concurrent writers won"
        )

    def for_object(self, bucket: str, key: str) -> list[ImageRecord]:
        return self._where(OBJECT_FIELD, f"{bucket}/{key}")

    def for_upload(self, upload_id: str) -> list[ImageRecord]:
        return self._where(UPLOAD_FIELD, upload_id)

    def _where(self, field: str, value: str) -> list[ImageRecord]:
        """Every record whose `field` is `value`: one equality filter, which Firestore's
        automatic single-field index serves."""
        from google.cloud.firestore_v1.base_query import FieldFilter

        query = self._collection.where(filter=FieldFilter(field, "==", value))
        with translated_outages(RecordStoreUnavailable, f"looking up the records of {value}"):
            snapshots = list(query.stream(retry=self._retry, timeout=self._timeout))
        return [ImageRecord.from_dict(snapshot.to_dict()) for snapshot in snapshots]

    def add_content_reference(self, content_sha256: str, record_id: str, now: datetime) -> bool:
        def add(item: _ContentItem) -> tuple[bool, Any]:
            if item.deleting_until is not None and item.deleting_until > now:
                return False, UNCHANGED
            # A deleter that outlived its lease lost it.
            return True, _content_data(item.holders | {record_id})

        return self._change_content(content_sha256, add, "adding a reference on")

    def release_content_reference(
        self, content_sha256: str, record_id: str, *, now: datetime, deletion_lease_until: datetime
    ) -> bool:
        def release(item: _ContentItem) -> tuple[bool, Any]:
            if (item.deleter, item.deleting_until) == (record_id, deletion_lease_until):
                return True, UNCHANGED  # our own write, landed before its answer was lost
            holders = item.holders - {record_id}
            if holders or (item.deleting_until is not None and item.deleting_until > now):
                return False, _content_data(holders, item.deleting_until, item.deleter)
            return True, _content_data(holders, deletion_lease_until, record_id)

        return self._change_content(content_sha256, release, "releasing a reference on")

    def finish_content_deletion(self, content_sha256: str) -> None:
        def finish(item: _ContentItem) -> tuple[None, Any]:
            return None, (UNCHANGED if item.holders else None)

        self._change_content(content_sha256, finish, "finishing the deletion of")

    def _change_content(
        self,
        content_sha256: str,
        change: Callable[[_ContentItem], tuple[Any, Any]],
        what: str,
    ) -> Any:
        """Read the content document, `change` it (a result, and the document to write:
        `UNCHANGED`, or None to delete it), and write it only if nobody wrote it since.

        A compare-and-set on the document's update time, as atomic as a transaction on one
        document; unlike the SDK's transactions, every call in it takes this store's retry,
        so an outage ends within the function's budget instead of the SDK's own minute.
        """
        document = self._content.document(content_sha256)
        calls = {"retry": self._retry, "timeout": self._timeout}
        with translated_outages(RecordStoreUnavailable, f"{what} {content_sha256}"):
            for _ in range(CONDITIONAL_WRITE_ATTEMPTS):
                snapshot = document.get(**calls)
                result, data = change(_ContentItem.of(snapshot))
                try:
                    if data is UNCHANGED or (data is None and not snapshot.exists):
                        return result
                    if not snapshot.exists:
                        document.create(data, **calls)
                    else:
                        unchanged_since = self._client.write_option(
                            last_update_time=snapshot.update_time
                        )
                        if data is None:
                            document.delete(option=unchanged_since, **calls)
                        else:
                            document.update(data, option=unchanged_since, **calls)
                    return result
                except (api_exceptions.Conflict, api_exceptions.FailedPrecondition):
                    continue  # written by another delivery in between: read it again
        raise RecordStoreUnavailable(
            f"{what} {content_sha256} failed: {CONDITIONAL_WRITE_ATTEMPTS} concurrent writers won"
        )


@dataclass(frozen=True)
class _ContentItem:
    """One content document: the record ids holding the bytes' renditions, and a deleter's
    lease (nothing, for a document that does not exist)."""

    holders: frozenset[str] = frozenset()
    deleting_until: datetime | None = None
    deleter: str | None = None

    @classmethod
    def of(cls, snapshot: Any) -> _ContentItem:
        data = (snapshot.to_dict() if snapshot.exists else None) or {}
        return cls(
            frozenset(data.get(CONTENT_HOLDERS) or ()),
            data.get(CONTENT_DELETING_UNTIL),
            data.get(CONTENT_DELETER),
        )


def _content_data(
    holders: frozenset[str], deleting_until: datetime | None = None, deleter: str | None = None
) -> dict[str, Any]:
    return {
        CONTENT_HOLDERS: sorted(holders),
        CONTENT_DELETING_UNTIL: deleting_until,
        CONTENT_DELETER: deleter if deleting_until is not None else None,
    }


def _document(record: ImageRecord) -> dict[str, Any]:
    data = record.to_dict()
    data[OBJECT_FIELD] = f"{record.source.bucket}/{record.source.key}"
    upload_id = upload_id_in(record.source.key)
    if upload_id is not None:
        data[UPLOAD_FIELD] = upload_id
    if record.status is Status.COMPLETED and record.source.sha256:
        # Only finished records carry the `by-content` index's field.
        data[CONTENT_FIELD] = record.source.sha256
    return data


# --- Cloud CDN -----------------------------------------------------------------------------

COMPUTE_API = "https://compute.googleapis.com/compute/v1"


class CloudCdnInvalidator:
    """Drops deleted renditions from Cloud CDN's caches: one `urlMaps.invalidateCache` call
    per content prefix (`/<sha256>/*`), which covers every rendition of those bytes.

    `session` is an authorized HTTP session (google-auth's `AuthorizedSession` on GCP);
    `url_map` the URL map's name, or its whole `projects/<p>/global/urlMaps/<name>`.
    """

    def __init__(self, session: Any, project: str, url_map: str, *, timeout: float = 30.0) -> None:
        self._session = session
        path = url_map if "/" in url_map else f"projects/{project}/global/urlMaps/{url_map}"
        self._url = f"{COMPUTE_API}/{path}/invalidateCache"
        self._timeout = timeout

    def invalidate(self, keys: Sequence[str]) -> None:
        for path in invalidation_paths(keys):
            with translated_outages(StorageUnavailable, f"invalidating {path} in Cloud CDN"):
                response = self._session.post(self._url, json={"path": path}, timeout=self._timeout)
            # The call answers a long-running operation at once; the caches drop the
            # objects within minutes, and nothing here waits for that.
            if response.status_code >= 500 or response.status_code == 429:
                raise StorageUnavailable(
                    f"invalidating {path} in Cloud CDN failed: HTTP {response.status_code}"
                )
            if response.status_code >= 400:
                raise RuntimeError(
                    f"Cloud CDN refused to invalidate {path}: HTTP {response.status_code} "
                    f"{response.text[:200]}"
                )


# --- Pub/Sub -------------------------------------------------------------------------------


class PubSubEventPublisher:
    """Publishes one structured-mode CloudEvent (JSON) per message, attribute `type`."""

    def __init__(
        self, client: Any, topic: str, *, retry: api_retry.Retry, timeout: float = 30.0
    ) -> None:
        self._client = client
        self._topic = topic
        self._retry = retry
        self._timeout = timeout

    def publish(self, event: Mapping[str, Any]) -> None:
        data = encode_event(event)
        with translated_outages(PublisherUnavailable, f"publishing to {self._topic}"):
            future = self._client.publish(
                self._topic, data, retry=self._retry, timeout=self._timeout, type=event["type"]
            )
            # Wait: the record is written final only after the event is out (see service).
            future.result(timeout=self._timeout)
