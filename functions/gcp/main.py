"""Cloud Functions gen2 entry point: Eventarc's `object.v1.finalized` and `object.v1.deleted`
events and the work queue's tasks -> the core.

The deploy archive puts a copy of this file at its root as `main.py`, so it imports
only `functions.core` and `functions.gcp`. Clients are built once per instance.
A transient error is raised: functions-framework answers 500 and Eventarc (or Cloud Tasks)
retries with backoff until the core records the image FAILED (`retries_exhausted`).
Permanent failures and duplicates answer 200; an image another delivery holds a live claim
on answers 409, so it is redelivered until that claim is finished or its lease runs out.

Three kinds of event reach the one function, told apart by their type: uploads (the
trigger), deletes (a second trigger on the same bucket), and work items that backfill and
redrive put on the Cloud Tasks queue, which posts each as a binary-mode CloudEvent.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from datetime import datetime
from typing import TYPE_CHECKING

import flask
import functions_framework
from cloudevents.http import CloudEvent

from functions.core.records import ClaimHeld, MalformedEvent, ObjectRef
from functions.core.settings import SettingsError
from functions.core.timing import utc_now
from functions.gcp.bootstrap import (
    build_pipeline,
    configure_json_logging,
    outcome_fields,
    retry_fields,
    skipped_fields,
)
from functions.gcp.contract import (
    TASK_RETRY_COUNT_HEADER,
    WORK_EVENT_TYPE,
    WORK_MAX_ATTEMPTS,
    from_env,
)
from functions.gcp.trigger import parse_storage_event, parse_work_event

if TYPE_CHECKING:
    from functions.core.service import Reclaim

configure_json_logging(sys.stdout)
log = logging.getLogger("imagepipe.gcp")
try:
    ENVIRONMENT = from_env(os.environ)
    PIPELINE = build_pipeline(ENVIRONMENT)
except SettingsError as error:  # a deploy mistake: one clear line, then no instance at all
    log.critical("cannot start: %s", error)
    raise SystemExit(1) from None


@functions_framework.cloud_event
def handle_upload(cloud_event: CloudEvent) -> None:
    if cloud_event.get("type") == WORK_EVENT_TYPE:
        return handle_work(cloud_event)
    try:
        event = parse_storage_event(cloud_event.get_attributes(), cloud_event.get_data())
    except MalformedEvent as error:  # retrying cannot fix it: acknowledge and say why
        log.error("ignored event %s: %s", cloud_event.get("id"), error)
        return None
    ref = event.ref
    if event.is_rendition:  # a trigger pointed at the renditions bucket must not recurse
        fields = skipped_fields(ref, "a rendition")
        log.warning(
            "ignored rendition gs://%s/%s", ref.bucket, ref.key, extra={"json_fields": fields}
        )
        return None
    if not ENVIRONMENT.watches(ref.key):  # Eventarc cannot filter by name; the function does
        fields = skipped_fields(ref, "outside the uploads prefix or suffix")
        log.info("skipped gs://%s/%s", ref.bucket, ref.key, extra={"json_fields": fields})
        return None
    if event.deleted:
        deleted_at = event.event_time or utc_now()
        return handle_delete(ref, expired=ENVIRONMENT.expired(event.created, deleted_at))
    return process(ref, event_time=event.event_time)


def handle_work(cloud_event: CloudEvent) -> None:
    """A work item from the queue: processed whatever the trigger's prefix, and the queue's
    own retry count says whether this is its last attempt."""
    try:
        item = parse_work_event(cloud_event.get_data())
    except MalformedEvent as error:  # a retry would bring the same body: acknowledge it
        log.error("ignored work event %s: %s", cloud_event.get("id"), error)
        return
    retries = flask.request.headers.get(TASK_RETRY_COUNT_HEADER, "")
    last_attempt = int(retries) + 1 >= WORK_MAX_ATTEMPTS if retries.isdigit() else None
    process(item.ref, reclaim=item.reclaim, last_attempt=last_attempt)


def process(
    ref: ObjectRef,
    *,
    event_time: datetime | None = None,
    reclaim: frozenset[Reclaim] = frozenset(),
    last_attempt: bool | None = None,
) -> None:
    started = time.perf_counter()
    try:
        outcome = PIPELINE.process(
            ref, event_time=event_time, reclaim=reclaim, last_attempt=last_attempt
        )
    except ClaimHeld as error:
        # Acknowledging would strand the image if the worker holding the claim died.
        fields = retry_fields(ref, error)
        log.info("will retry %s: %s", ref.key, error, extra={"json_fields": fields})
        flask.abort(409, description=error.message)
    except Exception as error:
        fields = retry_fields(ref, error)
        log.error("will retry %s: %s", ref.key, error, extra={"json_fields": fields})
        raise
    level = logging.WARNING if outcome.record.error else logging.INFO
    fields = outcome_fields(outcome, round((time.perf_counter() - started) * 1000, 1))
    log.log(level, "%s %s", outcome.action, ref.key, extra={"json_fields": fields})


def handle_delete(ref: ObjectRef, *, expired: bool) -> None:
    """An original was deleted (`DELETE_EVENT_TYPE`): its records become DELETED, unless the
    lifecycle rule `expired` it (plain expiry: the image stays)."""
    started = time.perf_counter()
    remove = PIPELINE.expire if expired else PIPELINE.delete
    try:
        outcomes = remove(ref.bucket, ref.key, ref.version)
    except ClaimHeld as error:  # still being processed: the delete comes back after
        fields = retry_fields(ref, error)
        log.info("will retry the delete of %s: %s", ref.key, error, extra={"json_fields": fields})
        flask.abort(409, description=error.message)
    except Exception as error:
        fields = retry_fields(ref, error)
        log.error("will retry the delete of %s: %s", ref.key, error, extra={"json_fields": fields})
        raise
    ms = round((time.perf_counter() - started) * 1000, 1)
    if not outcomes:  # never processed, or removed by the pipeline itself (`originals`)
        fields = skipped_fields(ref, "no record to delete")
        log.info("skipped the delete of %s", ref.key, extra={"json_fields": fields})
    for outcome in outcomes:
        fields = outcome_fields(outcome, ms)
        log.info("%s %s", outcome.action, ref.key, extra={"json_fields": fields})
