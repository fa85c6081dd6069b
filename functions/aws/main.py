"""AWS Lambda entry point, one function for three kinds of event: S3 ObjectCreated
(`Pipeline.process` per record), S3 ObjectRemoved (`Pipeline.delete` per record) and SQS
batches from the work queue (backfill, redrive: `Pipeline.process` per WorkItem).

Errors: a permanent one (bad image, too large, gone) is already a FAILED record and a
failure event when `Pipeline.process` returns, so the handler returns normally and nothing
is retried. A transient one (S3, DynamoDB or SNS unavailable, or another invocation's
live claim on the image) is raised after every record of an S3 event had its turn: Lambda
retries the event twice, then sends it to the dead-letter queue. Records finished before
the retry are duplicates the second time, and duplicates change and publish nothing.
From the work queue, the messages that met one are answered as batch item failures: SQS
delivers them again, and after WORK_MAX_RECEIVES receives moves them to the work queue's
dead-letter queue; the rest of the batch is done. A work message that is no WorkItem is
logged and dropped: no redelivery can make it one.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging.lambda_context import build_lambda_context_model
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.metrics.functions import is_metrics_disabled

from functions.aws.bootstrap import build_pipeline
from functions.aws.contract import SERVICE_NAME, WORK_MAX_RECEIVES, from_env
from functions.aws.trigger import (
    RemovedObject,
    is_sqs_event,
    is_test_event,
    looks_like_etag,
    object_refs,
    removed_objects,
)
from functions.core.metrics import (
    ACTION_COUNTERS,
    ERROR_CODE,
    IMAGES_FAILED,
    PROCESSING_MS,
    TIMED_ACTIONS,
)
from functions.core.records import MalformedEvent, ObjectRef, PipelineError
from functions.core.service import DEFAULT_LEASE, Outcome, Pipeline
from functions.core.work import WorkItem

# A claim outlives the invocation by this much. If the invocation dies (timeout, crash),
# Lambda's own retry comes a minute or more later and finds the claim expired, so it
# takes the work over instead of failing again because the claim still holds.
LEASE_MARGIN = timedelta(seconds=5)

# Logger(service="imagepipe") formats the core's `logging.getLogger("imagepipe")` too.
logger = Logger(service=SERVICE_NAME)
metrics = Metrics(namespace=SERVICE_NAME, service=SERVICE_NAME)


PIPELINE = build_pipeline(from_env(os.environ))


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
    """Handle one S3 notification or one work-queue batch (see the module's docstring)."""
    if is_test_event(event):
        logger.info("ignored the s3:TestEvent sent when the notification was configured")
        return {"records": []}
    if is_sqs_event(event):
        return handle_work(event["Records"], pipeline, lease)
    summaries: list[dict[str, Any]] = []
    first_error: Exception | None = None
    for ref in object_refs(event):
        started = time.perf_counter()
        try:
            outcome = pipeline.process(ref, lease)
            summaries.append(_report(ref, outcome, _elapsed_ms(started)))
            if _replaces_earlier_versions(ref, outcome):
                for replaced in pipeline.replaced(ref):
                    earlier = ObjectRef(ref.bucket, ref.key, replaced.record.source.version)
                    summaries.append(_report(earlier, replaced, _elapsed_ms(started)))
        except Exception as error:  # noqa: BLE001 - re-raised below, after the other records
            _report_retry(ref, error, _elapsed_ms(started))
            first_error = first_error or error
            continue
    for removed in removed_objects(event):
        started = time.perf_counter()
        try:
            remove = pipeline.expire if removed.expired else pipeline.delete
            outcomes = remove(removed.bucket, removed.key, removed.version)
        except Exception as error:  # noqa: BLE001 - re-raised below, after the other records
            _report_retry(_removed_ref(removed), error, _elapsed_ms(started))
            first_error = first_error or error
            continue
        summaries.extend(_report_deleted(removed, outcomes, _elapsed_ms(started)))
    if first_error is not None:
        raise first_error
    return {"records": summaries}


def _replaces_earlier_versions(ref: ObjectRef, outcome: Outcome) -> bool:
    """An upload to the unversioned uploads bucket (its version is an ETag) overwrote whatever
    the key held before, and S3 sends no removal for that: `Pipeline.replaced` ends those
    records as GCS's object.v1.deleted does. Not for an upload found gone already: a later
    one replaced it, not the other way round."""
    error = outcome.record.error
    return looks_like_etag(ref.version) and not (error and error.code == "object_missing")


def handle_work(
    messages: list[Mapping[str, Any]], pipeline: Pipeline, lease: timedelta
) -> dict[str, Any]:
    """Process each WorkItem of an SQS batch; answer the ones that met a transient error
    as batch item failures (the event source mapping's ReportBatchItemFailures)."""
    failures: list[dict[str, str]] = []
    for message in messages:
        message_id = str(message.get("messageId", ""))
        try:
            body = message.get("body")
            if not isinstance(body, str):
                raise MalformedEvent("the work message has no body")
            item = WorkItem.from_json(body)
        except MalformedEvent as error:
            logger.error(
                f"dropped work message {message_id}: {error}",
                extra={"outcome": "malformed", "message_id": message_id},
            )
            continue
        receives = _receive_count(message)
        started = time.perf_counter()
        try:
            outcome = pipeline.process(
                item.ref,
                lease,
                reclaim=item.reclaim,
                last_attempt=receives >= WORK_MAX_RECEIVES,
            )
        except Exception as error:  # noqa: BLE001 - SQS delivers it again
            _report_retry(item.ref, error, _elapsed_ms(started))
            failures.append({"itemIdentifier": message_id})
            continue
        _report(item.ref, outcome, _elapsed_ms(started))
    return {"batchItemFailures": failures}


def _receive_count(message: Mapping[str, Any]) -> int:
    try:
        return int(message.get("attributes", {}).get("ApproximateReceiveCount", 1))
    except (TypeError, ValueError, AttributeError):
        return 1  # no count to go by: not the last receive, so a failure is retried


def _removed_ref(removed: RemovedObject, version: str | None = None) -> ObjectRef:
    """A removed object as the log lines name objects (its record's version, if known)."""
    return ObjectRef(removed.bucket, removed.key, version or removed.version or "")


def _report_deleted(
    removed: RemovedObject, outcomes: list[Outcome], ms: float
) -> list[dict[str, Any]]:
    if not outcomes:
        # Never processed, or removed by the `originals` setting: nothing of ours to change.
        logger.info(
            f"nothing to delete: {removed.key} (never processed, or removed by the pipeline)",
            extra={"outcome": "ignored", "bucket": removed.bucket, "key": removed.key, "ms": ms},
        )
        return []
    return [
        _report(_removed_ref(removed, outcome.record.source.version), outcome, ms)
        for outcome in outcomes
    ]


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
    _add_metric(ACTION_COUNTERS[outcome.action], MetricUnit.Count, 1)
    if outcome.action == "failed" and record.error is not None:
        _add_failure_by_code(record.error.code)
    if outcome.action in TIMED_ACTIONS:
        _add_metric(PROCESSING_MS, MetricUnit.Milliseconds, ms)
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


def _add_failure_by_code(code: str) -> None:
    """ImagesFailed once more, with the error code as a dimension: a metric of its own in
    CloudWatch (the alarm watches the total, a dashboard can split it by code)."""
    if is_metrics_disabled():
        return
    with single_metric(
        name=IMAGES_FAILED,
        unit=MetricUnit.Count,
        value=1,
        namespace=SERVICE_NAME,
        default_dimensions={"service": SERVICE_NAME},
    ) as metric:
        metric.add_dimension(name=ERROR_CODE, value=code)


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
