"""The function's events: Eventarc's `object.v1.finalized` and `object.v1.deleted`
CloudEvents -> the object version, and the work queue's -> its `WorkItem`.

GCS names arrive unencoded (unlike S3 keys) and the generation is the version.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from functions.core.records import MalformedEvent, ObjectRef
from functions.core.service import RENDITION_MARKER
from functions.core.work import WorkItem
from functions.gcp.contract import DELETE_EVENT_TYPE, UPLOAD_EVENT_TYPE, WORK_EVENT_TYPE

STORAGE_EVENT_TYPES = (UPLOAD_EVENT_TYPE, DELETE_EVENT_TYPE)
EVENT_TYPES = (*STORAGE_EVENT_TYPES, WORK_EVENT_TYPE)


@dataclass(frozen=True)
class StorageEvent:
    ref: ObjectRef
    event_time: datetime | None
    is_rendition: bool  # the object carries the rendition marker: never process it again
    deleted: bool = False  # `object.v1.deleted`: that generation is gone for good
    created: datetime | None = None  # the generation's timeCreated


def parse_storage_event(attributes: Mapping[str, Any], data: Any) -> StorageEvent:
    """The object version an `object.v1.finalized` (or `.deleted`) CloudEvent names, and
    when it happened."""
    event_type = attributes.get("type") or UPLOAD_EVENT_TYPE
    if event_type not in STORAGE_EVENT_TYPES:
        raise MalformedEvent(
            f"event type {str(event_type)[:80]!r} is not handled; expected "
            f"{' or '.join(STORAGE_EVENT_TYPES)}"
        )
    if not isinstance(data, Mapping):
        raise MalformedEvent("the event data is not a JSON object with bucket, name, generation")
    missing = [field for field in ("bucket", "name", "generation") if not data.get(field)]
    if missing:
        raise MalformedEvent(f"the event data has no {', '.join(missing)}")
    ref = ObjectRef(
        bucket=str(data["bucket"]),
        key=str(data["name"]),  # GCS names arrive unencoded, unlike S3 keys
        version=_digits(data["generation"], "generation"),
        size=int(_digits(data["size"], "size")) if data.get("size") not in (None, "") else None,
        content_type=data.get("contentType") or None,
    )
    metadata = data.get("metadata") or {}
    is_rendition = all(metadata.get(k) == v for k, v in RENDITION_MARKER.items())
    # The CloudEvent time stays the same on every redelivery, so it measures how long
    # retries have been going on; timeCreated is the fallback for a bare event.
    when = attributes.get("time") or data.get("timeCreated")
    created = data.get("timeCreated")
    return StorageEvent(
        ref,
        _instant(when) if when else None,
        is_rendition,
        deleted=event_type == DELETE_EVENT_TYPE,
        created=_instant(created) if created else None,
    )


def parse_work_event(data: Any) -> WorkItem:
    """The `WorkItem` a work-queue CloudEvent carries as its data (functions-framework has
    parsed a JSON body already; anything else arrives as text or bytes)."""
    if isinstance(data, Mapping):
        data = json.dumps(data)
    if not isinstance(data, (str, bytes)):
        raise MalformedEvent("the work event has no data")
    return WorkItem.from_json(data)


def _digits(value: Any, field: str) -> str:
    text = str(value)
    if not text.isdigit():
        raise MalformedEvent(f"the event's {field} {value!r} is not a non-negative integer")
    return text


def _instant(value: Any) -> datetime:
    if isinstance(value, datetime):
        instant = value
    else:
        try:
            instant = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise MalformedEvent(f"the event time {value!r} is not RFC 3339") from None
    if instant.tzinfo is None:
        raise MalformedEvent(f"the event time {value!r} has no time zone")
    return instant
