"""Parsing S3 event notifications into ObjectRefs: pure, no emulator."""

from __future__ import annotations

from typing import Any

import pytest

from functions.aws.trigger import (
    is_test_event,
    looks_like_etag,
    object_refs,
    object_version,
)
from functions.core.records import MalformedEvent, ObjectRef


def s3_record(key: str, *, event_name: str = "ObjectCreated:Put", **obj: Any) -> dict[str, Any]:
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": event_name,
        "s3": {
            "bucket": {"name": "uploads", "arn": "arn:aws:s3:::uploads"},
            "object": {"key": key, "size": 1234, "eTag": "0123456789abcdef0123456789abcdef", **obj},
        },
    }


def test_a_put_becomes_one_ref_versioned_by_etag() -> None:
    (ref,) = object_refs({"Records": [s3_record("photos/cat.jpg")]})
    assert ref == ObjectRef("uploads", "photos/cat.jpg", "0123456789abcdef0123456789abcdef", 1234)


def test_keys_are_url_decoded_with_plus_as_space() -> None:
    (ref,) = object_refs({"Records": [s3_record("holiday+2024/caf%C3%A9+%2B+sun.jpg")]})
    assert ref.key == "holiday 2024/café + sun.jpg"


def test_every_record_of_an_event_is_kept_in_order() -> None:
    event = {"Records": [s3_record("a.jpg"), s3_record("b.jpg"), s3_record("c.jpg")]}
    assert [ref.key for ref in object_refs(event)] == ["a.jpg", "b.jpg", "c.jpg"]


def test_records_other_than_object_created_are_left_out() -> None:
    event = {
        "Records": [
            s3_record("gone.jpg", event_name="ObjectRemoved:Delete"),
            s3_record("new.jpg", event_name="ObjectCreated:CompleteMultipartUpload"),
        ]
    }
    assert [ref.key for ref in object_refs(event)] == ["new.jpg"]


def test_the_test_event_names_no_object() -> None:
    event = {
        "Service": "Amazon S3",
        "Event": "s3:TestEvent",
        "Time": "2026-01-01T00:00:00.000Z",
        "Bucket": "uploads",
    }
    assert is_test_event(event)
    assert object_refs(event) == []
    assert not is_test_event({"Records": []})


@pytest.mark.parametrize(
    ("obj", "version"),
    [
        (
            {"versionId": "3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrH", "eTag": "aa"},
            "3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrH",
        ),
        # Objects written while versioning was off carry the literal version id "null".
        (
            {"versionId": "null", "eTag": "0123456789abcdef0123456789abcdef"},
            "0123456789abcdef0123456789abcdef",
        ),
        ({"eTag": '"0123456789abcdef0123456789abcdef-3"'}, "0123456789abcdef0123456789abcdef-3"),
        (
            {"versionId": "", "eTag": "0123456789abcdef0123456789abcdef"},
            "0123456789abcdef0123456789abcdef",
        ),
    ],
)
def test_version_is_the_version_id_else_the_unquoted_etag(
    obj: dict[str, str], version: str
) -> None:
    assert object_version(obj) == version


def test_the_same_object_version_always_maps_to_the_same_record_id() -> None:
    first = object_refs({"Records": [s3_record("a%20b.jpg")]})[0]
    again = object_refs({"Records": [s3_record("a+b.jpg")]})[0]
    other_version = object_refs({"Records": [s3_record("a+b.jpg", versionId="v2")]})[0]
    assert first.record_id == again.record_id != other_version.record_id


def test_a_missing_size_stays_unknown() -> None:
    record = s3_record("a.jpg")
    del record["s3"]["object"]["size"]
    assert object_refs({"Records": [record]})[0].size is None


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"detail-type": "Object Created"}, "no 'Records' list"),
        ({"Records": [{"eventName": "ObjectCreated:Put", "s3": {}}]}, "record 0 lacks"),
        ({"Records": [s3_record("a.jpg", eTag="")]}, "neither a versionId nor an eTag"),
    ],
)
def test_malformed_events_say_what_is_missing(event: dict[str, Any], message: str) -> None:
    with pytest.raises(MalformedEvent, match=message):
        object_refs(event)


def test_etags_are_told_from_version_ids() -> None:
    assert looks_like_etag("0123456789abcdef0123456789abcdef")
    assert looks_like_etag("0123456789abcdef0123456789abcdef-12")
    assert not looks_like_etag("3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrH")
    assert not looks_like_etag("b4e5d5a2-5a7e-4f5e-9f5e-5a7e4f5e9f5e")
