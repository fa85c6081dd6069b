"""The trigger's event: Eventarc's `object.v1.finalized` CloudEvent -> the object version.

GCS names arrive unencoded (unlike S3 keys) and the generation is the version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from functions.core.records import MalformedEvent, ObjectRef
from functions.core.service import RENDITION_MARKER
from functions.gcp.contract import UPLOAD_EVENT_TYPE


@dataclass(frozen=True)
class StorageUpload:
    ref: ObjectRef
    event_time: datetime | None
    is_rendition: bool  # the object carries the rendition marker: never process it again


def parse_storage_event(attributes: Mapping[str, Any], data: Any) -> StorageUpload:
    """The object version an `object.v1.finalized` CloudEvent names, and when it happened."""
    event_type = attributes.get("type")
    if event_type and event_type != UPLOAD_EVENT_TYPE:
        raise MalformedEvent(
            f"event type {event_type!r} is not handled; expected {UPLOAD_EVENT_TYPE}"
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
    return StorageUpload(ref, _instant(when) if when else None, is_rendition)


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
