"""google-cloud adapters for the core's ports: `GcsBlobStore`, `FirestoreRecordStore`,
`PubSubEventPublisher`, the upload API's `GcsUploadBucket` and `GcsRenditionUrls`, and the
translation of the SDKs' outages.

SDK retries are google.api_core `Retry` objects passed to each call; when they run
out, the error becomes one of the core's transient errors and the function raises,
so Eventarc retries the event with backoff.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import requests
from google.api_core import exceptions as api_exceptions
from google.api_core import retry as api_retry
from google.auth import exceptions as auth_exceptions
from google.cloud import firestore

from functions.core.events import encode_event
from functions.core.records import (
    ImageRecord,
    PublisherUnavailable,
    RecordStoreUnavailable,
    Status,
    StorageUnavailable,
    TransientError,
)
from functions.core.timing import utc_now
from functions.core.uploads import PresignedPost, StoredUpload
from functions.gcp.contract import CONTENT_FIELD, CONTENT_INDEX, RECORDS_INDEXES

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
    """Reads uploads by generation and writes renditions, through google-cloud-storage."""

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


class FirestoreRecordStore:
    """One document per image, id = record id; writes are conditional and atomic."""

    def __init__(
        self, client: Any, collection: str, *, retry: api_retry.Retry, timeout: float = 20.0
    ) -> None:
        self._client = client
        self._collection = client.collection(collection)
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

        @firestore.transactional
        def replace_if_unchanged(transaction: Any) -> bool:
            snapshot = document.get(transaction=transaction)
            current = snapshot.to_dict() if snapshot.exists else None
            if current is None or (current.get("status"), current.get("attempts")) != (
                expected_status.value,
                expected_attempts,
            ):
                return False
            transaction.set(document, data)
            return True

        with translated_outages(RecordStoreUnavailable, f"replacing record {record.id}"):
            # The transaction re-runs on contention (ABORTED) by itself.
            return replace_if_unchanged(self._client.transaction())


def _document(record: ImageRecord) -> dict[str, Any]:
    data = record.to_dict()
    if record.status is Status.COMPLETED and record.source.sha256:
        # Only finished records carry the `by-content` index's field.
        data[CONTENT_FIELD] = record.source.sha256
    return data


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
