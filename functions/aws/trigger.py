"""The trigger's event: an S3 ObjectCreated notification -> the object versions it names.

S3 keys arrive URL-encoded ('+' for a space); the version is the versionId when the
bucket is versioned, else the ETag.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

from functions.core.records import MalformedEvent, ObjectRef

TEST_EVENT = "s3:TestEvent"
# An ETag (the version used when the bucket is not versioned): an MD5, or MD5-<parts> for a
# multipart upload. S3 version ids are 32 characters of a wider alphabet and never look like this.
_ETAG = re.compile(r"^[0-9a-f]{32}(-\d+)?$")


def is_test_event(event: Mapping[str, Any]) -> bool:
    """S3 sends one `s3:TestEvent` when a notification is configured; it names no object."""
    return event.get("Event") == TEST_EVENT


def object_refs(event: Mapping[str, Any]) -> list[ObjectRef]:
    """The uploaded object versions an S3 notification reports, in order.

    Records other than ObjectCreated (a misconfigured trigger) are left out.
    """
    if is_test_event(event):
        return []
    records = event.get("Records")
    if not isinstance(records, list):
        raise MalformedEvent("the event has no 'Records' list; expected an S3 event notification")
    return [
        object_ref(record, index)
        for index, record in enumerate(records)
        if str(record.get("eventName", "")).startswith("ObjectCreated:")
    ]


def object_ref(record: Mapping[str, Any], index: int = 0) -> ObjectRef:
    try:
        bucket = record["s3"]["bucket"]["name"]
        obj = record["s3"]["object"]
        raw_key = obj["key"]
    except (KeyError, TypeError):
        raise MalformedEvent(
            f"S3 event record {index} lacks s3.bucket.name or s3.object.key"
        ) from None
    version = object_version(obj)
    if not version:
        raise MalformedEvent(f"S3 event record {index} has neither a versionId nor an eTag")
    size = obj.get("size")
    return ObjectRef(
        bucket=bucket,
        # Keys arrive URL-encoded, with '+' for a space.
        key=unquote_plus(raw_key),
        version=version,
        size=int(size) if size is not None else None,
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
