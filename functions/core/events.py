"""CloudEvents 1.0 (structured JSON) for the end of an image's lifecycle.

One serialisation for every bus: `encode_event` is what SNS and Pub/Sub carry, byte
for byte, and `event_source` is built the same way on both clouds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from functions.core.records import ImageRecord, Status

COMPLETED_TYPE = "imagepipe.image.completed"
FAILED_TYPE = "imagepipe.image.failed"


def event_source(cloud: str, function_name: str) -> str:
    """`urn:imagepipe:<cloud>:<function>`: which deployed function announced the image."""
    return f"urn:imagepipe:{cloud}:{function_name}"


def encode_event(event: Mapping[str, Any]) -> bytes:
    """The event's bytes on the wire: compact JSON, keys sorted, UTF-8 unescaped."""
    return json.dumps(event, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def lifecycle_event(record: ImageRecord, *, source: str) -> dict[str, Any]:
    """The event for a record that reached COMPLETED or FAILED.

    The id is derived from the record and its final status, so a redelivery that
    publishes again carries the same id and consumers can drop the duplicate.
    """
    if record.status not in (Status.COMPLETED, Status.FAILED):
        raise ValueError(f"no lifecycle event for status {record.status.value}")
    return {
        "specversion": "1.0",
        "id": f"{record.id}-{record.status.value.lower()}",
        "source": source,
        "type": COMPLETED_TYPE if record.status is Status.COMPLETED else FAILED_TYPE,
        "subject": record.source.key,
        "time": record.updated_at,
        "datacontenttype": "application/json",
        "data": record.to_dict(),
    }
