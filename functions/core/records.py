"""The image record: one schema for every cloud, plus the closed set of error codes.

A record is keyed by bucket + object key + version (S3 versionId or ETag, GCS
generation), so a redelivered event finds the record its first delivery wrote.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    # PENDING: a transient error stopped an attempt; the platform will retry it.
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    # The original was deleted by its owner (not by the `originals` setting): the record
    # stays, so `imagepipe status KEY` still answers what happened to it.
    DELETED = "DELETED"


FINAL_STATUSES = frozenset({Status.COMPLETED, Status.FAILED, Status.DELETED})

# Permanent: retrying cannot help, so the record says FAILED and the function returns.
PERMANENT_CODES = frozenset(
    {
        "empty_object",
        "object_missing",  # deleted (or overwritten by version) before it was processed
        "unsupported_format",
        "corrupt_image",
        "too_large",
        "too_many_pixels",
        "too_many_frames",
        "too_much_metadata",  # more header segments or chunks than any encoder writes
        "extreme_aspect_ratio",  # one side hundreds of times the other (1x100,000,000)
        "over_memory_budget",  # decoding would not fit the function's memory
    }
)
# Terminal but worth another try later: the platform gave up on transient errors (its
# attempts or its maximum event age ran out). The record says FAILED with this code and
# `retryable` true, one failure event goes out, and a redrive may still finish the image.
RETRIES_EXHAUSTED = "retries_exhausted"
# Transient: the function raises and the platform retries with backoff.
TRANSIENT_CODES = frozenset(
    {
        "storage_unavailable",
        "record_store_unavailable",
        "publisher_unavailable",
        "claim_held",
        # The renditions of these bytes are being deleted with the last original that had
        # them: a moment later they are gone and this upload renders them again.
        "renditions_being_deleted",
    }
)


class PipelineError(Exception):
    """An error with a code from the closed set; `message` is one sentence for people."""

    code: str = ""
    retryable: bool = False

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class PermanentError(PipelineError):
    def __init__(self, code: str, message: str) -> None:
        if code not in PERMANENT_CODES:
            raise ValueError(f"{code!r} is not a permanent error code")
        super().__init__(code, message)


class TransientError(PipelineError):
    retryable = True

    def __init__(self, code: str, message: str) -> None:
        if code not in TRANSIENT_CODES:
            raise ValueError(f"{code!r} is not a transient error code")
        super().__init__(code, message)


class StorageUnavailable(TransientError):
    def __init__(self, message: str) -> None:
        super().__init__("storage_unavailable", message)


class RecordStoreUnavailable(TransientError):
    def __init__(self, message: str) -> None:
        super().__init__("record_store_unavailable", message)


class PublisherUnavailable(TransientError):
    def __init__(self, message: str) -> None:
        super().__init__("publisher_unavailable", message)


class RetriesExhausted(PipelineError):
    """The last attempt the platform will make met a transient error, or the event is
    older than the platform retries for. Terminal, yet retryable by a redrive."""

    retryable = True

    def __init__(self, message: str) -> None:
        super().__init__(RETRIES_EXHAUSTED, message)


class ClaimHeld(TransientError):
    """Another delivery holds a live claim on the image: try again later.

    Never a no-op: if the worker holding the claim died, only a later delivery can
    finish the image, once the lease has run out. The record is left as it is.
    """

    def __init__(self, message: str) -> None:
        super().__init__("claim_held", message)


class RenditionsBeingDeleted(TransientError):
    def __init__(self, message: str) -> None:
        super().__init__("renditions_being_deleted", message)


class MalformedEvent(ValueError):
    """The trigger's event names no object version this function can act on.

    Retrying cannot fix it: an entry point logs it in one line and acknowledges.
    """


ORIGINAL_DELETED = "deleted"  # `ImageRecord.original` when originals: delete removed it
# ... when the uploads bucket's lifecycle rule (originalsExpiryDays) removed it: plain expiry,
# the image and its renditions stay.
ORIGINAL_EXPIRED = "expired"


@dataclass(frozen=True)
class ObjectRef:
    """Where an upload lives, as the trigger event reports it."""

    bucket: str
    key: str
    version: str  # S3 versionId, else ETag; GCS generation
    size: int | None = None  # from the event, so oversize objects are refused unread
    content_type: str | None = None  # informational only: content decides the format

    @property
    def record_id(self) -> str:
        return record_id(self.bucket, self.key, self.version)


def record_id(bucket: str, key: str, version: str) -> str:
    """A fixed-length id that is safe as a DynamoDB key and a Firestore document id."""
    digest = hashlib.sha256(f"{bucket}\0{key}\0{version}".encode()).hexdigest()
    return digest[:40]


@dataclass(frozen=True)
class Source:
    bucket: str
    key: str
    version: str
    bytes: int | None = None
    sha256: str | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class ImageMetadata:
    """What inspect found. Never GPS: location is private and never recorded."""

    format: str
    width: int  # after EXIF orientation is applied
    height: int
    mode: str
    has_alpha: bool
    frames: int
    has_icc_profile: bool
    orientation: int | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    captured_at: str | None = None  # ISO 8601, as the camera wrote it (no zone)
    # From the smallest rendition's pixels (functions/core/placeholders.py): a ThumbHash
    # in base64 and the alpha-weighted mean colour, "#rrggbb" sRGB. None in records
    # written before they existed, and the colour when no pixel is visible.
    placeholder: str | None = None
    dominant_colour: str | None = None


@dataclass(frozen=True)
class RenditionRecord:
    name: str
    key: str
    width: int
    height: int
    format: str
    bytes: int


@dataclass(frozen=True)
class ErrorInfo:
    code: str
    message: str
    retryable: bool

    @classmethod
    def from_error(cls, error: PipelineError) -> ErrorInfo:
        return cls(error.code, error.message, error.retryable)


@dataclass(frozen=True)
class ImageRecord:
    id: str
    source: Source
    status: Status
    attempts: int = 0
    stage_ms: dict[str, float] = field(default_factory=dict)
    image: ImageMetadata | None = None
    renditions: tuple[RenditionRecord, ...] = ()
    error: ErrorInfo | None = None
    created_at: str = ""
    updated_at: str = ""
    # While PROCESSING: after this instant another delivery may take the work over
    # (the worker that claimed it died or timed out).
    lease_expires_at: str | None = None
    # What the `originals` setting did with the upload once the image COMPLETED: None
    # while it is kept, ORIGINAL_DELETED, "archived:<bucket>/<key>", or ORIGINAL_EXPIRED.
    # Set before the upload is touched, so the delete event that follows is known as ours.
    original: str | None = None

    def evolve(self, **changes: Any) -> ImageRecord:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        data["renditions"] = [asdict(r) for r in self.renditions]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageRecord:
        """The record `to_dict` wrote. Fields this code does not know are left out: a record
        written by a newer release still reads (a rollback must not break the readers)."""
        image = data.get("image")
        error = data.get("error")
        return cls(
            id=data["id"],
            source=_known(Source, data["source"]),
            status=Status(data["status"]),
            attempts=int(data.get("attempts", 0)),
            stage_ms={k: float(v) for k, v in (data.get("stage_ms") or {}).items()},
            image=_known(ImageMetadata, image) if image else None,
            renditions=tuple(_known(RenditionRecord, r) for r in data.get("renditions") or ()),
            error=_known(ErrorInfo, error) if error else None,
            created_at=data.get("created_at", ""),
            updated_at=data.get("updated_at", ""),
            lease_expires_at=data.get("lease_expires_at"),
            original=data.get("original"),
        )


def _known(kind: type, values: dict[str, Any]) -> Any:
    names = {f.name for f in fields(kind)}
    return kind(**{name: value for name, value in values.items() if name in names})
