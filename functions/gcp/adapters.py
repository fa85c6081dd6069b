"""GCP adapters (Cloud Storage, Firestore, Pub/Sub), the storage-event parser, the
factory that builds everything once from the environment, and the JSON log format.

Emulators are reached only through the SDKs' own variables (STORAGE_EMULATOR_HOST,
FIRESTORE_EMULATOR_HOST, PUBSUB_EMULATOR_HOST): nothing here knows about them.
SDK retries are google.api_core `Retry` objects passed to each call; when they run
out, the error becomes one of the core's transient errors and the function raises,
so Eventarc retries the event with backoff.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import requests
from google.api_core import exceptions as api_exceptions
from google.api_core import retry as api_retry
from google.auth import exceptions as auth_exceptions
from google.cloud import firestore, pubsub_v1, storage

from functions.core.records import (
    ClaimHeld,
    ImageRecord,
    ObjectRef,
    PipelineError,
    PublisherUnavailable,
    RecordStoreUnavailable,
    Status,
    StorageUnavailable,
    TransientError,
)
from functions.core.service import RENDITION_MARKER, Outcome, Pipeline
from functions.core.settings import SETTINGS_ENV, PipelineSettings, SettingsError

FINALIZED_TYPE = "google.cloud.storage.object.v1.finalized"
DEFAULT_MAX_EVENT_AGE_SECONDS = 3600
# How long a claim holds when the component did not say (it sets the function's
# timeout plus a margin, so a redelivery after a crash takes over minutes sooner).
DEFAULT_LEASE_SECONDS = 16 * 60
# Must stay well under the function timeout, so a retry budget spent on an outage
# ends in a raised error (Eventarc retries) rather than a killed instance.
DEFAULT_SDK_RETRY_SECONDS = 20

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
def _unavailable_as(error_type: type[TransientError], what: str) -> Iterator[None]:
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
        with _unavailable_as(StorageUnavailable, f"reading gs://{bucket}/{key}"):
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
        with _unavailable_as(StorageUnavailable, f"writing gs://{bucket}/{key}"):
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
        with _unavailable_as(RecordStoreUnavailable, f"reading record {record_id}"):
            snapshot = self._collection.document(record_id).get(
                retry=self._retry, timeout=self._timeout
            )
        return ImageRecord.from_dict(snapshot.to_dict()) if snapshot.exists else None

    def create(self, record: ImageRecord) -> bool:
        document = self._collection.document(record.id)
        data = record.to_dict()
        with _unavailable_as(RecordStoreUnavailable, f"creating record {record.id}"):
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

        with _unavailable_as(RecordStoreUnavailable, f"replacing record {record.id}"):
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
        data = json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
        with _unavailable_as(PublisherUnavailable, f"publishing to {self._topic}"):
            future = self._client.publish(
                self._topic, data, retry=self._retry, timeout=self._timeout, type=event["type"]
            )
            # Wait: the record is written final only after the event is out (see service).
            future.result(timeout=self._timeout)


# --- The storage event -------------------------------------------------------------------


class InvalidStorageEvent(ValueError):
    """The event cannot name an object version; retrying cannot fix it."""


@dataclass(frozen=True)
class StorageUpload:
    ref: ObjectRef
    event_time: datetime | None
    is_rendition: bool  # the object carries the rendition marker: never process it again


def parse_storage_event(attributes: Mapping[str, Any], data: Any) -> StorageUpload:
    """The object version an `object.v1.finalized` CloudEvent names, and when it happened."""
    event_type = attributes.get("type")
    if event_type and event_type != FINALIZED_TYPE:
        raise InvalidStorageEvent(
            f"event type {event_type!r} is not handled; expected {FINALIZED_TYPE}"
        )
    if not isinstance(data, Mapping):
        raise InvalidStorageEvent(
            "the event data is not a JSON object with bucket, name, generation"
        )
    missing = [field for field in ("bucket", "name", "generation") if not data.get(field)]
    if missing:
        raise InvalidStorageEvent(f"the event data has no {', '.join(missing)}")
    ref = ObjectRef(
        bucket=str(data["bucket"]),
        key=str(data["name"]),  # GCS names arrive unencoded, unlike S3 keys
        version=_digits(data["generation"], "generation"),
        size=int(_digits(data["size"], "size")) if data.get("size") not in (None, "") else None,
        content_type=data.get("contentType") or None,
    )
    metadata = data.get("metadata") or {}
    is_rendition = all(metadata.get(k) == v for k, v in RENDITION_MARKER.items())
    # The CloudEvent time stays the same on every redelivery, so it measures how long
    # retries have been going on; timeCreated is the fallback for a bare event.
    when = attributes.get("time") or data.get("timeCreated")
    return StorageUpload(ref, _instant(when) if when else None, is_rendition)


def _digits(value: Any, field: str) -> str:
    text = str(value)
    if not text.isdigit():
        raise InvalidStorageEvent(f"the event's {field} {value!r} is not a non-negative integer")
    return text


def _instant(value: Any) -> datetime:
    if isinstance(value, datetime):
        instant = value
    else:
        try:
            instant = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise InvalidStorageEvent(f"the event time {value!r} is not RFC 3339") from None
    if instant.tzinfo is None:
        raise InvalidStorageEvent(f"the event time {value!r} has no time zone")
    return instant


# --- Building it all once ----------------------------------------------------------------


class ConfigError(ValueError):
    """An environment variable the component sets is missing or malformed."""


_TOPIC_PATTERN = re.compile(r"^projects/([^/]+)/topics/([^/]+)$")


def build_pipeline(environ: Mapping[str, str]) -> Pipeline:
    """Read the variables the component sets and build the clients once per instance."""

    def required(name: str) -> str:
        value = environ.get(name, "").strip()
        if not value:
            raise ConfigError(f"{name} is not set; the GcpImagePipeline component sets it.")
        return value

    try:
        settings = PipelineSettings.from_json(required(SETTINGS_ENV))
    except SettingsError as error:
        raise ConfigError(str(error)) from None
    topic = required("IMAGEPIPE_EVENTS_TOPIC")
    topic_match = _TOPIC_PATTERN.match(topic)
    if not topic_match:
        raise ConfigError(
            f"IMAGEPIPE_EVENTS_TOPIC {topic!r} is not projects/<project>/topics/<topic>."
        )
    project = environ.get("GOOGLE_CLOUD_PROJECT") or topic_match.group(1)
    max_age = _positive_int(
        environ, "IMAGEPIPE_MAX_EVENT_AGE_SECONDS", DEFAULT_MAX_EVENT_AGE_SECONDS
    )
    lease_seconds = _positive_int(environ, "IMAGEPIPE_LEASE_SECONDS", DEFAULT_LEASE_SECONDS)
    retry_seconds = _positive_int(environ, "IMAGEPIPE_SDK_RETRY_SECONDS", DEFAULT_SDK_RETRY_SECONDS)
    collection = required("IMAGEPIPE_RECORDS_COLLECTION")
    renditions_bucket = required("IMAGEPIPE_RENDITIONS_BUCKET")
    # Every variable is checked before any client is built: a bad deploy fails on the
    # variable's name, not on a credentials lookup.
    retry = sdk_retry(retry_seconds)
    return Pipeline(
        settings=settings,
        blobs=GcsBlobStore(storage.Client(project=project), retry=retry),
        records=FirestoreRecordStore(firestore.Client(project=project), collection, retry=retry),
        events=PubSubEventPublisher(pubsub_v1.PublisherClient(), topic, retry=retry),
        renditions_bucket=renditions_bucket,
        event_source=f"//pubsub.googleapis.com/{topic}",
        max_event_age=timedelta(seconds=max_age),
        lease=timedelta(seconds=lease_seconds),
    )


def _positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) == 0:
        raise ConfigError(f"{name} is {text!r}; it must be a whole number of seconds above 0.")
    return int(text)


# --- Logs ------------------------------------------------------------------------------------


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: Cloud Logging reads `severity` and `message` from it and
    keeps every other field under jsonPayload (the component's metrics filter on `status`)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "logger": record.name,
        }
        entry.update(getattr(record, "json_fields", {}))
        if record.exc_info and record.levelno >= logging.ERROR:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


def configure_json_logging(stream: Any) -> None:
    """Send the `imagepipe` loggers (core and entry point) to `stream` as JSON lines."""
    logger = logging.getLogger("imagepipe")
    if not any(isinstance(h.formatter, JsonLogFormatter) for h in logger.handlers):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonLogFormatter())
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def outcome_fields(outcome: Outcome) -> dict[str, Any]:
    """The fields of the one log line written per image."""
    record = outcome.record
    return {
        "status": record.status.value,
        "action": outcome.action,
        "record_id": record.id,
        "bucket": record.source.bucket,
        "key": record.source.key,
        "generation": record.source.version,
        "attempts": record.attempts,
        "error_code": record.error.code if record.error else None,
        "renditions": len(record.renditions),
        "stage_ms": record.stage_ms,
    }


def retry_fields(ref: ObjectRef, error: Exception) -> dict[str, Any]:
    """The fields of the log line for a delivery that raised so the platform retries it."""
    # A held claim leaves the record as the holder keeps it; any other error left it PENDING.
    status = Status.PROCESSING if isinstance(error, ClaimHeld) else Status.PENDING
    return {
        "status": status.value,
        "action": "retry",
        "bucket": ref.bucket,
        "key": ref.key,
        "generation": ref.version,
        "error_code": error.code if isinstance(error, PipelineError) else "internal_error",
    }
