"""The pipeline's metrics: the same names and dimensions on both clouds.

AWS emits them as CloudWatch embedded metrics from the handler; GCP derives them
from the function's JSON log lines (log-based metrics on the `action` field), so
both entry points log one line per object with the action named here.
"""

from __future__ import annotations

IMAGES_COMPLETED = "ImagesCompleted"
IMAGES_FAILED = "ImagesFailed"  # also per ERROR_CODE, so a dashboard can tell codes apart
IMAGES_DELETED = "ImagesDeleted"  # originals deleted by their owner; records now DELETED
ORIGINALS_EXPIRED = "OriginalsExpired"  # removed by originalsExpiryDays; images kept
DUPLICATES = "Duplicates"  # a delivery of a finished record: changed and published nothing
OBJECTS_SKIPPED = "ObjectsSkipped"  # outside the uploads prefix/suffix, or a rendition
PROCESSING_MS = "ProcessingMs"  # a distribution, for completed and failed images
ERROR_CODE = "ErrorCode"

# The `action` of an entry point's log line -> the counter it adds to.
ACTION_COUNTERS = {
    "completed": IMAGES_COMPLETED,
    "failed": IMAGES_FAILED,
    "deleted": IMAGES_DELETED,
    "expired": ORIGINALS_EXPIRED,
    "duplicate": DUPLICATES,
    "skipped": OBJECTS_SKIPPED,
}
TIMED_ACTIONS = ("completed", "failed")
