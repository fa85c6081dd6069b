"""The three ports the core talks through. Adapters are named `<Tech><Role>`
(`S3BlobStore`, `FirestoreRecordStore`, ...); tests and the local CLI use the
in-memory ones in `functions.core.memory`.

Adapters translate their SDK's outages (throttling, 5xx, timeouts after the
SDK's own retries) into `StorageUnavailable`, `RecordStoreUnavailable` or
`PublisherUnavailable`, so the core can tell transient from permanent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from functions.core.records import ImageRecord, Status


class BlobStore(Protocol):
    def read(self, bucket: str, key: str, version: str | None = None) -> bytes:
        """The object's bytes. Raises `KeyError` when it no longer exists."""
        ...

    def write(
        self,
        bucket: str,
        key: str,
        data: bytes,
        *,
        content_type: str,
        cache_control: str,
        metadata: Mapping[str, str],
    ) -> None: ...

    def exists(self, bucket: str, key: str) -> bool:
        """Whether an object is stored under exactly `key`, without reading its bytes
        (a HEAD, or a one-name listing): what reusing a rendition checks first."""
        ...

    def delete(self, bucket: str, key: str, version: str | None = None) -> None:
        """Delete the object (that version of it, when given). Already gone is not an error:
        a redelivered delete finds nothing left to do."""
        ...

    def delete_under(self, bucket: str, prefix: str) -> list[str]:
        """Delete every object whose key starts with `prefix` (paginated listing, batched
        deletes); returns the keys deleted."""
        ...

    def archive(
        self, bucket: str, key: str, version: str, *, archive_bucket: str, archive_key: str
    ) -> None:
        """Copy that version of the object to `archive_bucket` under `archive_key`, in the
        cloud's cold storage class (S3 Glacier Instant Retrieval, GCS Archive). Repeating it
        overwrites the copy with the same bytes. Raises `KeyError` when the version is gone."""
        ...


class RecordStore(Protocol):
    def get(self, record_id: str) -> ImageRecord | None: ...

    def create(self, record: ImageRecord) -> bool:
        """Write `record` only if no record has its id; False when another one already does.

        True when this very record is already there: a create the SDK retried after its
        first attempt landed is still the caller's claim.
        """
        ...

    def replace(
        self, record: ImageRecord, *, expected_status: Status, expected_attempts: int
    ) -> bool:
        """Overwrite the stored record only while it still has this status and attempt count.

        False when another delivery changed it first (optimistic concurrency).
        """
        ...

    def latest_completed_with_content(self, content_sha256: str) -> ImageRecord | None:
        """The most recently updated COMPLETED record whose upload had these bytes
        (`source.sha256`), or None. One indexed lookup, possibly eventually consistent: a
        record finished a moment ago may not be found yet, and the caller renders instead.
        """
        ...

    def for_object(self, bucket: str, key: str) -> list[ImageRecord]:
        """Every record of any version of this object (one indexed query): what a delete
        event that names no version finds its records by."""
        ...

    def for_upload(self, upload_id: str) -> list[ImageRecord]:
        """Every record whose key holds this upload API id (`uploads.upload_id_in`): how
        GET /images/{id} finds an image whose upload is no longer in the bucket."""
        ...

    # Rendition reference counting. Rendition keys are content-addressed, so one upload's
    # renditions are every upload's of the same bytes; each record that may use them holds
    # a reference on their content hash, and only releasing the last one deletes them.
    # Each call is one atomic, conditional write of the content's reference item.

    def add_content_reference(self, content_sha256: str, record_id: str, now: datetime) -> bool:
        """Hold a reference for `record_id` (again: idempotent). False while the renditions of
        these bytes are being deleted (a deletion lease that has not run out); the caller
        then retries later, when they are gone and it renders them anew."""
        ...

    def release_content_reference(
        self, content_sha256: str, record_id: str, *, now: datetime, deletion_lease_until: datetime
    ) -> bool:
        """Drop the reference of `record_id` (absent: nothing to drop). True when no reference
        is left and the caller now holds the deletion lease on the content until
        `deletion_lease_until`: it deletes the renditions, then `finish_content_deletion`.
        False while others still hold references (or another deleter holds the lease)."""
        ...

    def finish_content_deletion(self, content_sha256: str) -> None:
        """The renditions are gone (or were kept after all): remove the content's reference
        item, unless a reference was added meanwhile."""
        ...


class CdnInvalidator(Protocol):
    def invalidate(self, keys: Sequence[str]) -> None:
        """Ask the CDN in front of the renditions to drop these objects' cached copies."""
        ...


class EventPublisher(Protocol):
    def publish(self, event: Mapping[str, Any]) -> None:
        """Publish one CloudEvents 1.0 structured-mode event (a JSON-ready mapping)."""
        ...
