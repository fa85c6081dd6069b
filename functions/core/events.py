"""CloudEvents 1.0 (structured JSON) for the end of an image's lifecycle."""

from __future__ import annotations

from typing import Any

from functions.core.records import ImageRecord, Status

COMPLETED_TYPE = "imagepipe.image.completed"
FAILED_TYPE = "imagepipe.image.failed"


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
