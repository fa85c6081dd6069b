"""The function's events: an S3 notification -> the object versions it created and the
objects it removed; an SQS batch from the work queue -> its messages.

S3 keys arrive URL-encoded ('+' for a space); the version is the versionId when the
bucket is versioned, else the ETag.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from functions.core.records import MalformedEvent, ObjectRef

TEST_EVENT = "s3:TestEvent"
SQS_EVENT_SOURCE = "aws:sqs"
# The one removal that names a version gone for good; a delete marker (a versioned bucket's
# plain delete) hides the object but keeps every version.
PERMANENT_DELETE = "ObjectRemoved:Delete"
REMOVED = "ObjectRemoved:"
# The uploads bucket's lifecycle rule (originalsExpiryDays) removed the object: plain expiry.
EXPIRED = "LifecycleExpiration:"
# An ETag (the version used when the bucket is not versioned): an MD5, or MD5-<parts> for a
# multipart upload. S3 version ids are 32 characters of a wider alphabet and never look like this.
_ETAG = re.compile(r"^[0-9a-f]{32}(-\d+)?$")


def is_test_event(event: Mapping[str, Any]) -> bool:
    """S3 sends one `s3:TestEvent` when a notification is configured; it names no object."""
    return event.get("Event") == TEST_EVENT


def is_sqs_event(event: Mapping[str, Any]) -> bool:
    """A batch from an SQS event source mapping (the work queue), not an S3 notification."""
    records = event.get("Records")
    return (
        isinstance(records, list)
        and bool(records)
        and all(
            isinstance(r, Mapping) and r.get("eventSource") == SQS_EVENT_SOURCE for r in records
        )
    )


def object_refs(event: Mapping[str, Any]) -> list[ObjectRef]:
    """The uploaded object versions an S3 notification reports, in order.

    Records other than ObjectCreated (removals: `removed_objects`) are left out.
    """
    return [
        object_ref(record, index)
        for index, record in _s3_records(event)
        if str(record.get("eventName", "")).startswith("ObjectCreated:")
    ]


@dataclass(frozen=True)
class RemovedObject:
    """An object an S3 notification says was removed."""

    bucket: str
    key: str
    version: str | None  # the versionId deleted for good; None when the event names none
    expired: bool = False  # by the bucket's lifecycle rule, not by its owner


def removed_objects(event: Mapping[str, Any]) -> list[RemovedObject]:
    """The objects an S3 notification reports removed (ObjectRemoved:*, or expired by the
    lifecycle rule: LifecycleExpiration:*), in order.

    Only `ObjectRemoved:Delete` of a versioned object names a version: a delete marker
    leaves every version in place, and an unversioned bucket's delete removes the key.
    """
    removed = []
    for index, record in _s3_records(event):
        name = str(record.get("eventName", ""))
        if not name.startswith((REMOVED, EXPIRED)):
            continue
        ref = _located(record, index)
        version_id = record["s3"]["object"].get("versionId")
        permanent = name == PERMANENT_DELETE and version_id and version_id != "null"
        removed.append(
            RemovedObject(
                ref[0],
                ref[1],
                str(version_id) if permanent else None,
                expired=name.startswith(EXPIRED),
            )
        )
    return removed


def _s3_records(event: Mapping[str, Any]) -> list[tuple[int, Mapping[str, Any]]]:
    if is_test_event(event):
        return []
    records = event.get("Records")
    if not isinstance(records, list):
        raise MalformedEvent("the event has no 'Records' list; expected an S3 event notification")
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise MalformedEvent(f"S3 event record {index} is not an object")
    return list(enumerate(records))


def _located(record: Mapping[str, Any], index: int) -> tuple[str, str]:
    """(bucket, decoded key) of one S3 event record."""
    try:
        bucket = record["s3"]["bucket"]["name"]
        raw_key = record["s3"]["object"]["key"]
    except (KeyError, TypeError):
        raise MalformedEvent(
            f"S3 event record {index} lacks s3.bucket.name or s3.object.key"
        ) from None
    # Keys arrive URL-encoded, with '+' for a space.
    return str(bucket), unquote_plus(raw_key)


def object_ref(record: Mapping[str, Any], index: int = 0) -> ObjectRef:
    bucket, key = _located(record, index)
    obj = record["s3"]["object"]
    version = object_version(obj)
    if not version:
        raise MalformedEvent(f"S3 event record {index} has neither a versionId nor an eTag")
    size = obj.get("size")
    return ObjectRef(
        bucket=bucket, key=key, version=version, size=int(size) if size is not None else None
    )


def object_version(obj: Mapping[str, Any]) -> str:
    """versionId when the bucket is versioned, else the ETag without its quotes.

    S3 writes the literal versionId "null" for objects put while versioning was off or suspended.
    """
    version_id = obj.get("versionId")
    if version_id and version_id != "null":
        return str(version_id)
    return str(obj.get("eTag") or obj.get("etag") or "").strip('"')


def looks_like_etag(version: str) -> bool:
    return bool(_ETAG.match(version))
