"""CloudEvents 1.0 (structured JSON) for the end of an image's lifecycle.

One serialisation for every bus: `encode_event` is what SNS and Pub/Sub carry, byte
for byte, and `event_source` is built the same way on both clouds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from functions.core.records import ImageRecord, Status

COMPLETED_TYPE = "imagepipe.image.completed"
FAILED_TYPE = "imagepipe.image.failed"
DELETED_TYPE = "imagepipe.image.deleted"
EVENT_TYPES = {
    Status.COMPLETED: COMPLETED_TYPE,
    Status.FAILED: FAILED_TYPE,
    Status.DELETED: DELETED_TYPE,
}


def event_source(cloud: str, function_name: str) -> str:
    """`urn:imagepipe:<cloud>:<function>`: which deployed function announced the image."""
    return f"urn:imagepipe:{cloud}:{function_name}"


def encode_event(event: Mapping[str, Any]) -> bytes:
    """The event's bytes on the wire: compact JSON, keys sorted, UTF-8 unescaped."""
    return json.dumps(event, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def lifecycle_event(record: ImageRecord, *, source: str) -> dict[str, Any]:
    """The event for a record that reached COMPLETED, FAILED or DELETED.

    The id is derived from the record and its final status, so a redelivery that
    publishes again carries the same id and consumers can drop the duplicate. A
    COMPLETED id also names the renditions: re-rendering after a change of specs is news
    (a new id), a redelivery of either render is not.
    """
    if record.status not in EVENT_TYPES:
        raise ValueError(f"no lifecycle event for status {record.status.value}")
    event_id = f"{record.id}-{record.status.value.lower()}"
    if record.status is Status.COMPLETED:
        keys = "\0".join(rendition.key for rendition in record.renditions)
        event_id += "-" + hashlib.sha256(keys.encode()).hexdigest()[:12]
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": EVENT_TYPES[record.status],
        "subject": record.source.key,
        "time": record.updated_at,
        "datacontenttype": "application/json",
        "data": record.to_dict(),
    }
