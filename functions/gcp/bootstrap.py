"""The GCP function's composition root: clients and adapters built once per instance,
from the environment the component sets (`functions.gcp.contract`), and its JSON logs.

Emulators are reached only through the SDKs' own variables (STORAGE_EMULATOR_HOST,
FIRESTORE_EMULATOR_HOST, PUBSUB_EMULATOR_HOST): nothing here knows about them.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from functions.core.events import event_source
from functions.core.records import ClaimHeld, ObjectRef, PipelineError, Status
from functions.core.uploads import UploadApi
from functions.gcp.adapters import (
    CloudCdnInvalidator,
    FirestoreRecordStore,
    GcsBlobStore,
    GcsRenditionUrls,
    GcsSigner,
    GcsUploadBucket,
    PubSubEventPublisher,
    sdk_retry,
)
from functions.gcp.contract import ApiEnvironment, FunctionEnvironment

if TYPE_CHECKING:
    from functions.core.service import Outcome, Pipeline

# Where browsers POST uploads and fetch signed renditions; the SDK's own emulator variable
# says where it is locally.
STORAGE_ENDPOINT = "https://storage.googleapis.com"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


def build_pipeline(env: FunctionEnvironment) -> Pipeline:
    """The core bound to this stack's bucket, collection and topic."""
    # Imported here: the upload API's function is built from this module too, and it never
    # renders, so its cold start need not import the core's imaging and Pillow.
    from google.cloud import firestore, pubsub_v1, storage

    from functions.core.service import Pipeline

    retry = sdk_retry(env.sdk_retry_seconds)
    return Pipeline(
        settings=env.settings,
        blobs=GcsBlobStore(storage.Client(project=env.project), retry=retry),
        records=FirestoreRecordStore(
            firestore.Client(project=env.project), env.records_collection, retry=retry
        ),
        events=PubSubEventPublisher(pubsub_v1.PublisherClient(), env.events_topic, retry=retry),
        renditions_bucket=env.renditions_bucket,
        event_source=event_source("gcp", env.function_name),
        max_event_age=timedelta(seconds=env.max_event_age_seconds),
        lease=timedelta(seconds=env.lease_seconds),
        archive_bucket=env.archive_bucket,
        cdn=build_cdn(env),
    )


def build_cdn(env: FunctionEnvironment, session: Any = None) -> CloudCdnInvalidator | None:
    """The Cloud CDN invalidator when the stack has a CDN (its URL map is set), else None.
    `session` defaults to the function's own credentials, authorized for the compute API."""
    if not env.cdn_url_map:
        return None
    if session is None:
        import google.auth
        from google.auth.transport.requests import AuthorizedSession

        credentials, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
        session = AuthorizedSession(credentials)
    return CloudCdnInvalidator(session, env.project, env.cdn_url_map)


def build_api(env: ApiEnvironment) -> UploadApi:
    """The upload API bound to this stack's uploads bucket, collection and delivery mode."""
    import os

    import google.auth
    from google.cloud import firestore, storage

    retry = sdk_retry(env.sdk_retry_seconds)
    client = storage.Client(project=env.project)
    # The function's own identity signs: a key file locally, the metadata server on GCP.
    signer = GcsSigner(google.auth.default()[0])
    endpoint = os.environ.get("STORAGE_EMULATOR_HOST") or STORAGE_ENDPOINT
    return UploadApi(
        settings=env.settings,
        options=env.options,
        bucket=GcsUploadBucket(
            client, env.uploads_bucket, signer=signer, endpoint=endpoint, retry=retry
        ),
        records=FirestoreRecordStore(
            firestore.Client(project=env.project), env.records_collection, retry=retry
        ),
        rendition_url=GcsRenditionUrls(
            env.cdn_url,
            sign=env.sign_rendition_urls,
            client=client,
            bucket=env.renditions_bucket,
            signer=signer,
            endpoint=endpoint,
        ),
        uploads_prefix=env.uploads_prefix,
    )


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


def outcome_fields(outcome: Outcome, ms: float) -> dict[str, Any]:
    """The fields of the one log line written per image; the log-based metrics
    (`functions.core.metrics`) count its `action` and take `ms` as the processing time."""
    record = outcome.record
    return {
        "ms": ms,
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


def skipped_fields(ref: ObjectRef, why: str) -> dict[str, Any]:
    """The fields of the log line for an object the function leaves alone (ObjectsSkipped)."""
    return {"action": "skipped", "bucket": ref.bucket, "key": ref.key, "reason": why}


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
