"""AWS Lambda entry point: S3 ObjectCreated notifications in, `process_object` per record.

Errors: a permanent one (bad image, too large, gone) is already a FAILED record and a
failure event when `process_object` returns, so the handler returns normally and nothing
is retried. A transient one (S3, DynamoDB or SNS unavailable, or another invocation's
live claim on the image) is raised after every record of the event had its turn: Lambda
retries the event twice, then sends it to the dead-letter queue. Records finished before
the retry are duplicates the second time, and duplicates change and publish nothing.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging.lambda_context import build_lambda_context_model
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from botocore.config import Config

from functions.aws.adapters import (
    DynamoDbRecordStore,
    S3BlobStore,
    SnsEventPublisher,
    is_test_event,
    object_refs,
)
from functions.core.records import ObjectRef, PipelineError
from functions.core.service import DEFAULT_LEASE, Outcome, Pipeline
from functions.core.settings import SETTINGS_ENV, PipelineSettings, SettingsError

RENDITIONS_BUCKET_ENV = "IMAGEPIPE_RENDITIONS_BUCKET"
RECORDS_TABLE_ENV = "IMAGEPIPE_RECORDS_TABLE"
EVENTS_TOPIC_ENV = "IMAGEPIPE_EVENTS_TOPIC_ARN"
REQUIRED_ENV = (SETTINGS_ENV, RENDITIONS_BUCKET_ENV, RECORDS_TABLE_ENV, EVENTS_TOPIC_ENV)

# Standard mode: jittered exponential backoff and a retry quota shared across calls; its
# default of 3 attempts holds unless AWS_MAX_ATTEMPTS says otherwise (botocore's own knob,
# like AWS_ENDPOINT_URL). Short connect timeout: an unreachable endpoint should fail fast
# enough for the retries to fit in the function's timeout.
SDK_CONFIG = Config(retries={"mode": "standard"}, connect_timeout=3, read_timeout=20)
# A claim outlives the invocation by this much. If the invocation dies (timeout, crash),
# Lambda's own retry comes a minute or more later and finds the claim expired, so it
# takes the work over instead of skipping it as "in progress elsewhere".
LEASE_MARGIN = timedelta(seconds=5)

# Logger(service="imagepipe") formats the core's `logging.getLogger("imagepipe")` too.
logger = Logger(service="imagepipe")
metrics = Metrics(namespace="imagepipe", service="imagepipe")


def build_pipeline(environ: Mapping[str, str]) -> Pipeline:
    """Clients and adapters from the environment the AwsImagePipeline component sets.

    Endpoints, region and credentials come from boto3's own environment variables
    (AWS_ENDPOINT_URL points every client at an emulator).
    """
    missing = [name for name in REQUIRED_ENV if not environ.get(name)]
    if missing:
        raise SettingsError(
            f"environment variable {', '.join(missing)} is not set; "
            "the AwsImagePipeline component sets it on the function."
        )
    function_name = environ.get("AWS_LAMBDA_FUNCTION_NAME", "local")
    return Pipeline(
        settings=PipelineSettings.from_json(environ[SETTINGS_ENV]),
        blobs=S3BlobStore(boto3.client("s3", config=SDK_CONFIG)),
        records=DynamoDbRecordStore(
            boto3.client("dynamodb", config=SDK_CONFIG), environ[RECORDS_TABLE_ENV]
        ),
        events=SnsEventPublisher(boto3.client("sns", config=SDK_CONFIG), environ[EVENTS_TOPIC_ENV]),
        renditions_bucket=environ[RENDITIONS_BUCKET_ENV],
        event_source=f"urn:imagepipe:aws:{function_name}",
    )


PIPELINE = build_pipeline(os.environ)


Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


def _context_keys_per_thread(handler: Handler) -> Handler:
    """The invocation's context keys (request id, function name, ARN, memory), kept per thread.

    `inject_lambda_context` keeps them once per process, which is right in Lambda (one
    invocation per sandbox at a time) and wrong in the dev pipeline, where three workers
    invoke this handler at once on threads: a line would carry whichever request id was
    set last. Powertools' formatter lays thread-safe keys over the process-wide ones, so
    each line carries its own invocation's; in Lambda both hold the same values and the
    lines are unchanged.
    """

    @functools.wraps(handler)
    def with_keys(event: dict[str, Any], context: Any) -> dict[str, Any]:
        logger.thread_safe_clear_keys()
        logger.thread_safe_append_keys(**vars(build_lambda_context_model(context)))
        try:
            return handler(event, context)
        finally:
            logger.thread_safe_clear_keys()

    return with_keys


@logger.inject_lambda_context(clear_state=True)
@_context_keys_per_thread
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return handle_event(event, PIPELINE, lease_for(context))


def lease_for(context: Any) -> timedelta:
    """How long this invocation's claims hold: what is left of its timeout, plus a margin."""
    return timedelta(milliseconds=context.get_remaining_time_in_millis()) + LEASE_MARGIN


def handle_event(
    event: Mapping[str, Any], pipeline: Pipeline, lease: timedelta = DEFAULT_LEASE
) -> dict[str, Any]:
    """Process every object of one S3 notification; raise the first transient error at the end."""
    if is_test_event(event):
        logger.info("ignored the s3:TestEvent sent when the notification was configured")
        return {"records": []}
    summaries: list[dict[str, Any]] = []
    first_error: Exception | None = None
    for ref in object_refs(event):
        started = time.perf_counter()
        try:
            outcome = pipeline.process(ref, lease)
        except Exception as error:  # noqa: BLE001 - re-raised below, after the other records
            _report_retry(ref, error, _elapsed_ms(started))
            first_error = first_error or error
            continue
        summaries.append(_report(ref, outcome, _elapsed_ms(started)))
    if first_error is not None:
        raise first_error
    return {"records": summaries}


_OUTCOME_METRICS = {
    "completed": "ImagesCompleted",
    "failed": "ImagesFailed",
    "duplicate": "Duplicates",
}


def _report(ref: ObjectRef, outcome: Outcome, ms: float) -> dict[str, Any]:
    """One log line and the metrics for one processed object; returns its summary."""
    record = outcome.record
    summary = {"action": outcome.action, "id": record.id, "status": record.status.value}
    logger.info(
        f"{outcome.action}: {ref.key}",
        extra={
            **summary,
            "outcome": outcome.action,
            "bucket": ref.bucket,
            "key": ref.key,
            "version": ref.version,
            "ms": ms,
            "error_code": record.error.code if record.error else None,
        },
    )
    _add_metric(_OUTCOME_METRICS[outcome.action], MetricUnit.Count, 1)
    if outcome.action in ("completed", "failed"):
        _add_metric("ProcessingMs", MetricUnit.Milliseconds, ms)
    return summary


def _add_metric(name: str, unit: MetricUnit, value: float) -> None:
    """Record a metric, unless POWERTOOLS_METRICS_DISABLED says metrics are off.

    Disabled, Powertools' flush prints nothing but keeps the metric set, which then grows
    from invocation to invocation until `add_metric` reaches 100 values and prints it
    anyway, EMF blob and all (the dev pipeline disables metrics). So disabled means not
    recorded at all.
    """
    if not is_metrics_disabled():
        metrics.add_metric(name=name, unit=unit, value=value)


def _report_retry(ref: ObjectRef, error: Exception, ms: float) -> None:
    extra = {
        "outcome": "retry",
        "bucket": ref.bucket,
        "key": ref.key,
        "version": ref.version,
        "id": ref.record_id,
        "ms": ms,
    }
    if isinstance(error, PipelineError):
        # Expected outages: the code says which dependency; a traceback would add nothing.
        logger.warning(
            f"retry: {ref.key}: {error.message}", extra={**extra, "error_code": error.code}
        )
    else:
        logger.exception(f"retry: {ref.key}: unexpected {type(error).__name__}", extra=extra)


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
