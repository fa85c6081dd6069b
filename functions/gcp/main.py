"""Cloud Functions gen2 entry point: one `object.v1.finalized` event -> the core.

The deploy archive puts a copy of this file at its root as `main.py`, so it imports
only `functions.core` and `functions.gcp`. Clients are built once per instance.
A transient error is raised: functions-framework answers 500 and Eventarc retries
with backoff until the core records the event FAILED (`retries_exhausted`). Permanent failures
and duplicates answer 200; an image another delivery holds a live claim on answers 409,
so Eventarc redelivers it until that claim is finished or its lease runs out.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import flask
import functions_framework
from cloudevents.http import CloudEvent

from functions.core.records import ClaimHeld, MalformedEvent
from functions.core.settings import SettingsError
from functions.gcp.bootstrap import (
    build_pipeline,
    configure_json_logging,
    outcome_fields,
    retry_fields,
    skipped_fields,
)
from functions.gcp.contract import from_env
from functions.gcp.trigger import parse_storage_event

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
    try:
        upload = parse_storage_event(cloud_event.get_attributes(), cloud_event.get_data())
    except MalformedEvent as error:  # retrying cannot fix it: acknowledge and say why
        log.error("ignored event %s: %s", cloud_event.get("id"), error)
        return
    ref = upload.ref
    if upload.is_rendition:  # a trigger pointed at the renditions bucket must not recurse
        fields = skipped_fields(ref, "a rendition")
        log.warning(
            "ignored rendition gs://%s/%s", ref.bucket, ref.key, extra={"json_fields": fields}
        )
        return
    if not ENVIRONMENT.watches(ref.key):  # Eventarc cannot filter by name; the function does
        fields = skipped_fields(ref, "outside the uploads prefix or suffix")
        log.info("skipped gs://%s/%s", ref.bucket, ref.key, extra={"json_fields": fields})
        return
    started = time.perf_counter()
    try:
        outcome = PIPELINE.process(upload.ref, event_time=upload.event_time)
    except ClaimHeld as error:
        # Acknowledging would strand the image if the worker holding the claim died.
        fields = retry_fields(upload.ref, error)
        log.info("will retry %s: %s", upload.ref.key, error, extra={"json_fields": fields})
        flask.abort(409, description=error.message)
    except Exception as error:
        fields = retry_fields(upload.ref, error)
        log.error("will retry %s: %s", upload.ref.key, error, extra={"json_fields": fields})
        raise
    level = logging.WARNING if outcome.record.error else logging.INFO
    fields = outcome_fields(outcome, round((time.perf_counter() - started) * 1000, 1))
    log.log(level, "%s %s", outcome.action, upload.ref.key, extra={"json_fields": fields})
