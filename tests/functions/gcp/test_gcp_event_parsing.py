"""Parsing the storage CloudEvent and checking the environment (no emulator needed)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from functions.core.records import MalformedEvent, ObjectRef
from functions.core.settings import PipelineSettings, SettingsError
from functions.gcp import contract
from functions.gcp.bootstrap import JsonLogFormatter, build_pipeline
from functions.gcp.contract import UPLOAD_EVENT_TYPE, from_env
from functions.gcp.trigger import parse_storage_event

ATTRIBUTES = {
    "specversion": "1.0",
    "id": "1234567890",
    "type": UPLOAD_EVENT_TYPE,
    "source": "//storage.googleapis.com/projects/_/buckets/uploads",
    "subject": "objects/holiday/beach photo.jpg",
    "time": "2026-05-01T10:00:00.123456Z",
}
DATA = {
    "bucket": "uploads",
    "name": "holiday/beach photo.jpg",
    "generation": "1714557600123456",
    "size": "204800",
    "contentType": "image/jpeg",
    "timeCreated": "2026-05-01T09:59:59.900Z",
}


def test_a_finalized_event_names_the_object_generation_and_the_event_time():
    upload = parse_storage_event(ATTRIBUTES, DATA)
    assert upload.ref == ObjectRef(
        bucket="uploads",
        key="holiday/beach photo.jpg",
        version="1714557600123456",
        size=204800,
        content_type="image/jpeg",
    )
    assert upload.event_time == datetime(2026, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert upload.is_rendition is False


def test_the_record_id_changes_with_the_generation_so_an_overwrite_is_new_work():
    first = parse_storage_event(ATTRIBUTES, DATA).ref
    overwritten = parse_storage_event(ATTRIBUTES, {**DATA, "generation": "1714557600999999"}).ref
    assert first.record_id != overwritten.record_id


def test_nanosecond_event_times_are_accepted():
    upload = parse_storage_event({**ATTRIBUTES, "time": "2026-05-01T10:00:00.123456789Z"}, DATA)
    assert upload.event_time == datetime(2026, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)


def test_without_an_event_time_the_object_creation_time_is_used():
    attributes = {k: v for k, v in ATTRIBUTES.items() if k != "time"}
    upload = parse_storage_event(attributes, DATA)
    assert upload.event_time == datetime(2026, 5, 1, 9, 59, 59, 900000, tzinfo=UTC)


def test_size_and_content_type_are_optional():
    data = {k: v for k, v in DATA.items() if k not in ("size", "contentType")}
    ref = parse_storage_event(ATTRIBUTES, data).ref
    assert (ref.size, ref.content_type) == (None, None)


def test_an_object_carrying_the_rendition_marker_is_flagged():
    data = {**DATA, "metadata": {"imagepipe-rendition": "true", "imagepipe-source-sha256": "ab"}}
    assert parse_storage_event(ATTRIBUTES, data).is_rendition is True


@pytest.mark.parametrize(
    ("attributes", "data", "message"),
    [
        (ATTRIBUTES, {**DATA, "generation": ""}, "has no generation"),
        (ATTRIBUTES, {k: v for k, v in DATA.items() if k != "bucket"}, "has no bucket"),
        (ATTRIBUTES, {**DATA, "generation": "12a"}, "generation '12a' is not a non-negative"),
        (ATTRIBUTES, {**DATA, "size": "-1"}, "size '-1' is not a non-negative"),
        (ATTRIBUTES, "not json", "not a JSON object"),
        ({**ATTRIBUTES, "time": "yesterday"}, DATA, "time 'yesterday' is not RFC 3339"),
        ({**ATTRIBUTES, "time": "2026-05-01T10:00:00"}, DATA, "has no time zone"),
        (
            {**ATTRIBUTES, "type": "google.cloud.storage.object.v1.archived"},
            DATA,
            "is not handled; expected google.cloud.storage.object.v1.finalized or",
        ),
    ],
)
def test_a_malformed_event_is_refused_with_one_line_saying_what_is_wrong(attributes, data, message):
    with pytest.raises(MalformedEvent, match=message) as caught:
        parse_storage_event(attributes, data)
    assert "\n" not in str(caught.value)


MAIN = Path(__file__).resolve().parents[3] / "functions" / "gcp" / "main.py"

COMPONENT_ENV = {
    contract.SETTINGS: '{"renditions": [{"name": "thumb", "width": 64, "height": 64}]}',
    contract.RENDITIONS_BUCKET: "renditions",
    contract.RECORDS_COLLECTION: "images",
    contract.EVENTS_TOPIC: "projects/demo/topics/events",
    contract.MAX_EVENT_AGE_SECONDS: "3600",
    contract.LEASE_SECONDS: "90",
    # No emulator runs here: the clients are built, never called.
    "FIRESTORE_EMULATOR_HOST": "127.0.0.1:9",
    "PUBSUB_EMULATOR_HOST": "127.0.0.1:9",
    "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9",
}


def test_the_pipeline_is_built_from_the_variables_the_component_sets(monkeypatch):
    for name in ("FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST"):
        monkeypatch.setenv(name, COMPONENT_ENV[name])
    pipeline = build_pipeline(from_env({**COMPONENT_ENV, contract.MAX_EVENT_AGE_SECONDS: "600"}))
    assert [r.name for r in pipeline.settings.renditions] == ["thumb"]
    assert pipeline.renditions_bucket == "renditions"
    assert pipeline.max_event_age.total_seconds() == 600
    assert pipeline.lease.total_seconds() == 90
    assert pipeline.event_source == "urn:imagepipe:gcp:local"  # K_SERVICE names it on GCP


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({contract.RENDITIONS_BUCKET: ""}, f"{contract.RENDITIONS_BUCKET} is not set"),
        ({contract.EVENTS_TOPIC: "events"}, "is not projects/<project>/topics/<topic>"),
        ({contract.SETTINGS: "{"}, f"{contract.SETTINGS} is not valid JSON"),
        ({contract.MAX_EVENT_AGE_SECONDS: "1h"}, "must be a whole number of seconds"),
        ({contract.MAX_EVENT_AGE_SECONDS: "0"}, "must be a whole number of seconds above 0"),
        ({contract.ORIGINALS_EXPIRY_DAYS: "a month"}, "must be a whole number of days above 0"),
        (
            {contract.SETTINGS: PipelineSettings(originals="archive").to_json()},
            f"{contract.ARCHIVE_BUCKET} is not set, and originals is archive",
        ),
    ],
)
def test_a_bad_environment_is_refused_with_one_line_naming_the_variable(changes, message):
    with pytest.raises(SettingsError, match=message) as caught:
        from_env({**COMPONENT_ENV, **changes})
    assert "\n" not in str(caught.value)


def test_log_lines_are_json_with_severity_and_the_fields_the_metrics_filter_on():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter())
    logger = logging.getLogger("imagepipe.test-json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("failed %s", "a.jpg", extra={"json_fields": {"status": "FAILED"}})
    finally:
        logger.removeHandler(handler)
    entry = json.loads(stream.getvalue())
    assert entry["severity"] == "WARNING"
    assert entry["message"] == "failed a.jpg"
    assert entry["status"] == "FAILED"


def test_the_function_refuses_to_start_on_a_bad_environment_with_one_json_line():
    # What an instance does when a deploy sets a bad variable: no traceback, one log line.
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEPIPE_")}
    env.update({**COMPONENT_ENV, contract.EVENTS_TOPIC: "events"})
    command = [
        str(Path(sys.executable).parent / "functions-framework"),
        "--target=handle_upload",
        f"--source={MAIN}",
        "--signature-type=cloudevent",
        "--host=127.0.0.1",
        "--port=9",  # never bound: the module fails first
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    [line] = result.stdout.splitlines()
    assert json.loads(line) == {
        "severity": "CRITICAL",
        "message": "cannot start: IMAGEPIPE_EVENTS_TOPIC 'events' is not "
        "projects/<project>/topics/<topic>.",
        "logger": "imagepipe.gcp",
    }
    assert "Traceback" not in result.stderr
