"""The GCP function's environment: the one place its variable names are spelled.

`to_env` is what `GcpImagePipeline` sets on the function (its values may be Pulumi
Inputs: nothing here resolves them); `from_env` is how the entry point, the local
pipeline and the tests read it back, checked, every variable before any client is
built, so a bad deploy fails on the variable's name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from functions.core.settings import SETTINGS_ENV, PipelineSettings, SettingsError
from functions.core.uploads import API_OPTIONS_ENV, ApiOptions

SETTINGS = SETTINGS_ENV
RENDITIONS_BUCKET = "IMAGEPIPE_RENDITIONS_BUCKET"
RECORDS_COLLECTION = "IMAGEPIPE_RECORDS_COLLECTION"
EVENTS_TOPIC = "IMAGEPIPE_EVENTS_TOPIC"
MAX_EVENT_AGE_SECONDS = "IMAGEPIPE_MAX_EVENT_AGE_SECONDS"
# Eventarc cannot filter storage events by object name, so the function does.
UPLOADS_PREFIX = "IMAGEPIPE_UPLOADS_PREFIX"
UPLOADS_SUFFIX = "IMAGEPIPE_UPLOADS_SUFFIX"
LEASE_SECONDS = "IMAGEPIPE_LEASE_SECONDS"
SDK_RETRY_SECONDS = "IMAGEPIPE_SDK_RETRY_SECONDS"
# The API function's own (it also reads SETTINGS, RECORDS_COLLECTION and UPLOADS_PREFIX).
API_OPTIONS = API_OPTIONS_ENV
UPLOADS_BUCKET = "IMAGEPIPE_UPLOADS_BUCKET"
CDN_URL = "IMAGEPIPE_CDN_URL"
# "true" in delivery mode signed-urls: each rendition URL the API answers is signed.
SIGN_RENDITION_URLS = "IMAGEPIPE_SIGN_RENDITION_URLS"
# Operations (issue 12): where `originals: archive` moves uploads (set only then), and
# the URL map whose Cloud CDN cache deleted renditions are invalidated in (with the CDN).
ARCHIVE_BUCKET = "IMAGEPIPE_ARCHIVE_BUCKET"
CDN_URL_MAP = "IMAGEPIPE_CDN_URL_MAP"
# The uploads bucket's lifecycle age (originalsExpiryDays), set only with one: GCS reports
# a lifecycle deletion as a plain object.v1.deleted, so the function tells one by the
# deleted object's age.
ORIGINALS_EXPIRY_DAYS = "IMAGEPIPE_ORIGINALS_EXPIRY_DAYS"
# What `originals: archive` copies uploads into (also the archive bucket's default class).
ARCHIVE_STORAGE_CLASS = "ARCHIVE"
PROJECT = "GOOGLE_CLOUD_PROJECT"  # Google's own variable; the SDK clients read it too
FUNCTION_NAME = "K_SERVICE"  # Cloud Run's own: a gen2 function is a service of its name

# What the component points at the function, and the function expects.
ENTRY_POINT = "handle_upload"
UPLOAD_EVENT_TYPE = "google.cloud.storage.object.v1.finalized"
# A second Eventarc trigger on the same function: deletes that propagate.
DELETE_EVENT_TYPE = "google.cloud.storage.object.v1.deleted"
# The work queue (backfill, redrive): Cloud Tasks posts each WorkItem to the function's URL
# as a binary-mode CloudEvent of this type, with an OIDC token of the queue's account.
WORK_EVENT_TYPE = "dev.imagepipe.work.v1"
WORK_MAX_ATTEMPTS = 3  # the queue's retry_config.max_attempts: the last is the last attempt
TASK_RETRY_COUNT_HEADER = "X-CloudTasks-TaskRetryCount"  # Cloud Tasks' own: 0 on the first
DEFAULT_BACKFILL_CONCURRENCY = 5  # the queue's max_concurrent_dispatches
# The upload API's function: an HTTP function of its own archive, whose main.py is this file.
API_ENTRY_POINT = "handle_api"
API_ENTRY_POINT_FILE = "functions/gcp/api.py"
RECORDS_COLLECTION_NAME = "images"  # in the (default) database
# Composite indexes of the collection: `by-status` lists one status, newest first;
# `by-content` finds the finished records of the same bytes, newest first. Its field,
# `completed_sha256`, is the upload's content hash written on COMPLETED documents only (as
# on AWS, where a sparse index needs it so). An equality filter with an order on another
# field is a query Firestore serves only from a composite index: the emulator does not
# check, production refuses it (FAILED_PRECONDITION) until the index exists. Newest first
# matters after a change of renditions: the record made with the current specs is found.
CONTENT_FIELD = "completed_sha256"
# "<bucket>/<key>" on every document: a delete event's records by key (one equality
# filter, served by Firestore's automatic single-field index).
OBJECT_FIELD = "source_object"
# The upload API's id on the documents whose key holds one (`uploads.upload_id_in`):
# GET /images/{id} finds the image by it once the upload itself is gone (one equality
# filter, like OBJECT_FIELD).
UPLOAD_FIELD = "upload_id"
# One document per content hash (id: the sha256): the record ids that use those bytes'
# renditions (`holders`) and a deleter's lease (`deleting_until`).
CONTENT_COLLECTION_NAME = "image_content"
CONTENT_HOLDERS = "holders"
CONTENT_DELETING_UNTIL = "deleting_until"
# Who holds that lease: a deleter whose write landed but whose answer was lost knows it won.
CONTENT_DELETER = "deleter"
STATUS_INDEX = "by-status"
CONTENT_INDEX = "by-content"
RECORDS_INDEXES: dict[str, tuple[tuple[str, str], ...]] = {
    STATUS_INDEX: (("status", "ASCENDING"), ("updated_at", "DESCENDING")),
    CONTENT_INDEX: ((CONTENT_FIELD, "ASCENDING"), ("updated_at", "DESCENDING")),
}

# How long the SDK retries one call, when the component did not say: well under any
# function timeout, so an outage ends in a raised error (Eventarc retries) rather than
# a killed instance.
DEFAULT_SDK_RETRY_SECONDS = 20
# A claim outlives the invocation that made it by this much: a redelivery after a crash
# or a timeout finds it expired and takes the image over.
LEASE_MARGIN_SECONDS = 30
_TOPIC = re.compile(r"^projects/([^/]+)/topics/([^/]+)$")


@dataclass(frozen=True)
class FunctionEnvironment:
    """What the function is told about the stack it runs in."""

    settings: PipelineSettings
    renditions_bucket: str
    records_collection: str
    events_topic: str  # projects/<project>/topics/<topic>
    max_event_age_seconds: int
    lease_seconds: int
    project: str
    sdk_retry_seconds: int = DEFAULT_SDK_RETRY_SECONDS
    function_name: str = "local"
    uploads_prefix: str = ""
    uploads_suffix: str = ""
    archive_bucket: str | None = None
    cdn_url_map: str | None = None
    originals_expiry_days: int | None = None

    def watches(self, key: str) -> bool:
        """Whether an object under `key` is an upload to process (S3's filter rule)."""
        return key.startswith(self.uploads_prefix) and key.endswith(self.uploads_suffix)

    def expired(self, created: datetime | None, deleted_at: datetime) -> bool:
        """Whether a deleted upload created at `created` is one the lifecycle rule removed:
        at least `originals_expiry_days` old (the rule's age condition)."""
        if self.originals_expiry_days is None or created is None:
            return False
        return deleted_at - created >= timedelta(days=self.originals_expiry_days)


def to_env(
    *,
    settings: PipelineSettings,
    renditions_bucket: Any,
    records_collection: Any,
    events_topic: Any,
    max_event_age_seconds: int,
    timeout_seconds: int,
    project: Any,
    uploads_prefix: str | None = None,
    uploads_suffix: str | None = None,
    archive_bucket: Any = None,
    cdn_url_map: Any = None,
    originals_expiry_days: int | None = None,
) -> dict[str, Any]:
    """The function's environment variables (values may be Pulumi Inputs)."""
    optional = {
        UPLOADS_PREFIX: uploads_prefix,
        UPLOADS_SUFFIX: uploads_suffix,
        ARCHIVE_BUCKET: archive_bucket,
        CDN_URL_MAP: cdn_url_map,
        ORIGINALS_EXPIRY_DAYS: str(originals_expiry_days) if originals_expiry_days else None,
    }
    return {
        **{name: value for name, value in optional.items() if value},
        SETTINGS: settings.to_json(),
        RENDITIONS_BUCKET: renditions_bucket,
        RECORDS_COLLECTION: records_collection,
        EVENTS_TOPIC: events_topic,
        MAX_EVENT_AGE_SECONDS: str(max_event_age_seconds),
        LEASE_SECONDS: str(timeout_seconds + LEASE_MARGIN_SECONDS),
        PROJECT: project,
    }


def from_env(environ: Mapping[str, str]) -> FunctionEnvironment:
    """The environment `to_env` describes; `SettingsError` names the first bad variable."""

    def required(name: str) -> str:
        value = environ.get(name, "").strip()
        if not value:
            raise SettingsError(f"{name} is not set; the GcpImagePipeline component sets it.")
        return value

    settings = PipelineSettings.from_json(required(SETTINGS))
    archive_bucket = environ.get(ARCHIVE_BUCKET, "").strip() or None
    if settings.originals == "archive" and archive_bucket is None:
        raise SettingsError(
            f"{ARCHIVE_BUCKET} is not set, and originals is archive; the GcpImagePipeline "
            "component sets it."
        )
    topic = required(EVENTS_TOPIC)
    topic_match = _TOPIC.match(topic)
    if not topic_match:
        raise SettingsError(
            f"{EVENTS_TOPIC} {topic[:80]!r} is not projects/<project>/topics/<topic>."
        )
    return FunctionEnvironment(
        settings=settings,
        renditions_bucket=required(RENDITIONS_BUCKET),
        records_collection=required(RECORDS_COLLECTION),
        events_topic=topic,
        max_event_age_seconds=_seconds(required(MAX_EVENT_AGE_SECONDS), MAX_EVENT_AGE_SECONDS),
        lease_seconds=_seconds(required(LEASE_SECONDS), LEASE_SECONDS),
        project=environ.get(PROJECT, "").strip() or topic_match.group(1),
        sdk_retry_seconds=_seconds(
            environ.get(SDK_RETRY_SECONDS, "").strip() or str(DEFAULT_SDK_RETRY_SECONDS),
            SDK_RETRY_SECONDS,
        ),
        function_name=environ.get(FUNCTION_NAME, "").strip() or "local",
        uploads_prefix=environ.get(UPLOADS_PREFIX, ""),
        uploads_suffix=environ.get(UPLOADS_SUFFIX, ""),
        archive_bucket=archive_bucket,
        cdn_url_map=environ.get(CDN_URL_MAP, "").strip() or None,
        originals_expiry_days=(
            _seconds(environ[ORIGINALS_EXPIRY_DAYS].strip(), ORIGINALS_EXPIRY_DAYS, "days")
            if environ.get(ORIGINALS_EXPIRY_DAYS, "").strip()
            else None
        ),
    )


@dataclass(frozen=True)
class ApiEnvironment:
    """What the API function is told about the stack it serves."""

    settings: PipelineSettings
    options: ApiOptions
    uploads_bucket: str
    uploads_prefix: str
    records_collection: str
    cdn_url: str
    sign_rendition_urls: bool
    project: str
    renditions_bucket: str = ""  # what the signed rendition URLs are for
    sdk_retry_seconds: int = DEFAULT_SDK_RETRY_SECONDS


def api_to_env(
    *,
    settings: PipelineSettings,
    options: ApiOptions,
    uploads_bucket: Any,
    uploads_prefix: str | None,
    records_collection: Any,
    cdn_url: Any,
    sign_rendition_urls: bool,
    project: Any,
    renditions_bucket: Any = None,
) -> dict[str, Any]:
    """The API function's environment variables (values may be Pulumi Inputs)."""
    return {
        **({RENDITIONS_BUCKET: renditions_bucket} if renditions_bucket is not None else {}),
        SETTINGS: settings.to_json(),
        API_OPTIONS: options.to_json(),
        UPLOADS_BUCKET: uploads_bucket,
        UPLOADS_PREFIX: uploads_prefix or "",
        RECORDS_COLLECTION: records_collection,
        CDN_URL: cdn_url,
        SIGN_RENDITION_URLS: "true" if sign_rendition_urls else "false",
        PROJECT: project,
    }


def api_from_env(environ: Mapping[str, str]) -> ApiEnvironment:
    """The environment `api_to_env` describes; `SettingsError` names the first bad variable."""

    def required(name: str) -> str:
        value = environ.get(name, "").strip()
        if not value:
            raise SettingsError(f"{name} is not set; the GcpImagePipeline component sets it.")
        return value

    sign = environ.get(SIGN_RENDITION_URLS, "false") == "true"
    return ApiEnvironment(
        settings=PipelineSettings.from_json(required(SETTINGS)),
        options=ApiOptions.from_json(required(API_OPTIONS), API_OPTIONS),
        uploads_bucket=required(UPLOADS_BUCKET),
        uploads_prefix=environ.get(UPLOADS_PREFIX, ""),
        records_collection=required(RECORDS_COLLECTION),
        cdn_url=required(CDN_URL).rstrip("/"),
        sign_rendition_urls=sign,
        project=required(PROJECT),
        renditions_bucket=required(RENDITIONS_BUCKET) if sign else "",
        sdk_retry_seconds=_seconds(
            environ.get(SDK_RETRY_SECONDS, "").strip() or str(DEFAULT_SDK_RETRY_SECONDS),
            SDK_RETRY_SECONDS,
        ),
    )


def _seconds(text: str, name: str, unit: str = "seconds") -> int:
    if not text.isdigit() or int(text) == 0:
        raise SettingsError(
            f"{name} is {text[:80]!r}; it must be a whole number of {unit} above 0."
        )
    return int(text)
