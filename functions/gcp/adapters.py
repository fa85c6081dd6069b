"""google-cloud adapters for the core's ports: `GcsBlobStore`, `FirestoreRecordStore`,
`PubSubEventPublisher`, and the translation of the SDKs' outages.

SDK retries are google.api_core `Retry` objects passed to each call; when they run
out, the error becomes one of the core's transient errors and the function raises,
so Eventarc retries the event with backoff.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

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

    def create(self, record: ImageRecord) -> bool:
        document = self._collection.document(record.id)
        data = record.to_dict()
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
        data = record.to_dict()

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
