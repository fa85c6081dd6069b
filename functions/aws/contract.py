"""The AWS function's environment and its records table: the one place each is spelled.

`to_env` is what `AwsImagePipeline` sets on the Lambda function (its values may be
Pulumi Inputs: nothing here resolves them) and what the dev pipeline gives the real
handler; `from_env` is how the entry point and the tests read it back, every
variable checked before any client is built. The table's key, attributes and
indexes are declared here once, for the component and the emulated stack alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from functions.core.settings import SETTINGS_ENV, PipelineSettings, SettingsError
from functions.core.uploads import API_OPTIONS_ENV, ApiOptions

SETTINGS = SETTINGS_ENV
RENDITIONS_BUCKET = "IMAGEPIPE_RENDITIONS_BUCKET"
RECORDS_TABLE = "IMAGEPIPE_RECORDS_TABLE"
EVENTS_TOPIC = "IMAGEPIPE_EVENTS_TOPIC_ARN"
FUNCTION_NAME = "AWS_LAMBDA_FUNCTION_NAME"  # Lambda's own variable
SERVICE_NAME = "imagepipe"  # Powertools' service and metrics namespace
# The API function's own (it also reads SETTINGS and RECORDS_TABLE).
API_OPTIONS = API_OPTIONS_ENV
UPLOADS_BUCKET = "IMAGEPIPE_UPLOADS_BUCKET"
UPLOADS_PREFIX = "IMAGEPIPE_UPLOADS_PREFIX"
CDN_URL = "IMAGEPIPE_CDN_URL"
# Operations (issue 12): where `originals: archive` moves uploads (set only then), and the
# CloudFront distribution deleted renditions are invalidated in.
ARCHIVE_BUCKET = "IMAGEPIPE_ARCHIVE_BUCKET"
CDN_DISTRIBUTION_ID = "IMAGEPIPE_CDN_DISTRIBUTION_ID"

# Lambda's asynchronous retries (the component's FunctionEventInvokeConfig and the dev
# pipeline's stand-in): the first try and this many more, then the dead-letter queue.
RETRY_ATTEMPTS = 2
MAX_ATTEMPTS = 1 + RETRY_ATTEMPTS
# The work queue (backfill, redrive): a message is received this many times (the SQS
# redrive policy's maxReceiveCount) before it moves to the work queue's dead-letter queue;
# the handler treats the last receive as the last attempt.
WORK_MAX_RECEIVES = MAX_ATTEMPTS
DEFAULT_BACKFILL_CONCURRENCY = 5  # the event source mapping's maximumConcurrency
# Work items per invocation (the event source mapping's batch size): one, so a backfill of
# N objects is N invocations, and one slow image never holds up others in its batch.
WORK_BATCH_SIZE = 1
# S3 notifications the function takes: uploads, and deletes that propagate.
UPLOAD_EVENTS = ("s3:ObjectCreated:*",)
# Lifecycle expiry (originalsExpiryDays) is an event of its own on S3: the function records
# it as plain expiry, as GCP does for the object.v1.deleted its lifecycle rule causes.
DELETE_EVENTS = ("s3:ObjectRemoved:*", "s3:LifecycleExpiration:*")
# What `originals: archive` copies uploads into: Glacier Instant Retrieval, archive pricing
# yet read back in milliseconds. The archive bucket's lifecycle rule moves anything else there.
ARCHIVE_STORAGE_CLASS = "GLACIER_IR"

# What the component points the function at, and the archive must hold.
HANDLER = "functions.aws.main.handler"
HANDLER_FILE = "functions/aws/main.py"
# The upload API's function: the same archive, its own handler behind API Gateway.
API_HANDLER = "functions.aws.api.handler"
API_HANDLER_FILE = "functions/aws/api.py"

# The records table: keyed by record id; `by-status` lists one status, newest first;
# `by-content` finds the finished records of the same bytes, newest first. Its key,
# `completed_sha256`, is the upload's content hash written on COMPLETED records only: a
# GSI holds just the items that have its key attribute, so the index is sparse and holds
# exactly the records whose renditions a new upload of those bytes may take.
# `by-object` finds every record of one object key (`source_object`, "<bucket>/<key>"): a
# delete event without a version names only the key.
# `by-upload` finds the records of one upload API id (`upload_id`, written only on records
# whose key holds one: sparse): GET /images/{id} once the upload itself is gone.
# The same table holds one reference item per content hash (id CONTENT_REFERENCE_PREFIX +
# sha256): the string set of record ids that use those bytes' renditions, and the lease of
# a deleter. It has none of the indexes' key attributes, so no index holds it.
RECORDS_KEY = "id"
CONTENT_ATTRIBUTE = "completed_sha256"
OBJECT_ATTRIBUTE = "source_object"
UPLOAD_ATTRIBUTE = "upload_id"
RECORDS_ATTRIBUTES: dict[str, str] = {
    "id": "S",
    "status": "S",
    "updated_at": "S",
    CONTENT_ATTRIBUTE: "S",
    OBJECT_ATTRIBUTE: "S",
    UPLOAD_ATTRIBUTE: "S",
}
STATUS_INDEX = "by-status"
CONTENT_INDEX = "by-content"
OBJECT_INDEX = "by-object"
UPLOAD_INDEX = "by-upload"
RECORDS_INDEXES: dict[str, tuple[str, str]] = {
    STATUS_INDEX: ("status", "updated_at"),
    CONTENT_INDEX: (CONTENT_ATTRIBUTE, "updated_at"),
    OBJECT_INDEX: (OBJECT_ATTRIBUTE, "updated_at"),
    UPLOAD_INDEX: (UPLOAD_ATTRIBUTE, "updated_at"),
}
CONTENT_REFERENCE_PREFIX = "content#"
CONTENT_HOLDERS = "holders"
CONTENT_DELETING_UNTIL = "deleting_until"


@dataclass(frozen=True)
class FunctionEnvironment:
    """What the function is told about the stack it runs in."""

    settings: PipelineSettings
    renditions_bucket: str
    records_table: str
    events_topic_arn: str
    function_name: str = "local"
    archive_bucket: str | None = None
    cdn_distribution_id: str | None = None


def to_env(
    *,
    settings: PipelineSettings,
    renditions_bucket: Any,
    records_table: Any,
    events_topic_arn: Any,
    archive_bucket: Any = None,
    cdn_distribution_id: Any = None,
) -> dict[str, Any]:
    """The function's environment variables (values may be Pulumi Inputs)."""
    optional = {ARCHIVE_BUCKET: archive_bucket, CDN_DISTRIBUTION_ID: cdn_distribution_id}
    return {
        **{name: value for name, value in optional.items() if value is not None},
        SETTINGS: settings.to_json(),
        RENDITIONS_BUCKET: renditions_bucket,
        RECORDS_TABLE: records_table,
        EVENTS_TOPIC: events_topic_arn,
        "POWERTOOLS_SERVICE_NAME": SERVICE_NAME,
        "POWERTOOLS_METRICS_NAMESPACE": SERVICE_NAME,
    }


def from_env(environ: Mapping[str, str]) -> FunctionEnvironment:
    """The environment `to_env` describes; `SettingsError` names the variables missing."""
    names = (SETTINGS, RENDITIONS_BUCKET, RECORDS_TABLE, EVENTS_TOPIC)
    missing = [name for name in names if not environ.get(name, "").strip()]
    if missing:
        raise SettingsError(
            f"{', '.join(missing)} is not set; the AwsImagePipeline component sets it."
        )
    settings = PipelineSettings.from_json(environ[SETTINGS])
    archive_bucket = environ.get(ARCHIVE_BUCKET, "").strip() or None
    if settings.originals == "archive" and archive_bucket is None:
        raise SettingsError(
            f"{ARCHIVE_BUCKET} is not set, and originals is archive; the AwsImagePipeline "
            "component sets it."
        )
    return FunctionEnvironment(
        settings=settings,
        renditions_bucket=environ[RENDITIONS_BUCKET],
        records_table=environ[RECORDS_TABLE],
        events_topic_arn=environ[EVENTS_TOPIC],
        function_name=environ.get(FUNCTION_NAME, "local"),
        archive_bucket=archive_bucket,
        cdn_distribution_id=environ.get(CDN_DISTRIBUTION_ID, "").strip() or None,
    )


@dataclass(frozen=True)
class ApiEnvironment:
    """What the API function is told about the stack it serves."""

    settings: PipelineSettings
    options: ApiOptions
    uploads_bucket: str
    uploads_prefix: str
    records_table: str
    cdn_url: str


def api_to_env(
    *,
    settings: PipelineSettings,
    options: ApiOptions,
    uploads_bucket: Any,
    uploads_prefix: str | None,
    records_table: Any,
    cdn_url: Any,
) -> dict[str, Any]:
    """The API function's environment variables (values may be Pulumi Inputs)."""
    return {
        SETTINGS: settings.to_json(),
        API_OPTIONS: options.to_json(),
        UPLOADS_BUCKET: uploads_bucket,
        UPLOADS_PREFIX: uploads_prefix or "",
        RECORDS_TABLE: records_table,
        CDN_URL: cdn_url,
        "POWERTOOLS_SERVICE_NAME": SERVICE_NAME,
    }


def api_from_env(environ: Mapping[str, str]) -> ApiEnvironment:
    """The environment `api_to_env` describes; `SettingsError` names the variables missing."""
    names = (SETTINGS, API_OPTIONS, UPLOADS_BUCKET, RECORDS_TABLE, CDN_URL)
    missing = [name for name in names if not environ.get(name, "").strip()]
    if missing:
        raise SettingsError(
            f"{', '.join(missing)} is not set; the AwsImagePipeline component sets it."
        )
    return ApiEnvironment(
        settings=PipelineSettings.from_json(environ[SETTINGS]),
        options=ApiOptions.from_json(environ[API_OPTIONS], API_OPTIONS),
        uploads_bucket=environ[UPLOADS_BUCKET],
        uploads_prefix=environ.get(UPLOADS_PREFIX, ""),
        records_table=environ[RECORDS_TABLE],
        cdn_url=environ[CDN_URL].rstrip("/"),
    )


def dynamodb_table_definition() -> dict[str, Any]:
    """The table as DynamoDB's CreateTable takes it (the emulated stack creates it so)."""
    return {
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": name, "AttributeType": kind}
            for name, kind in RECORDS_ATTRIBUTES.items()
        ],
        "KeySchema": [{"AttributeName": RECORDS_KEY, "KeyType": "HASH"}],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": index,
                "KeySchema": [
                    {"AttributeName": hash_key, "KeyType": "HASH"},
                    {"AttributeName": range_key, "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
            for index, (hash_key, range_key) in RECORDS_INDEXES.items()
        ],
    }
