"""The three ports the core talks through. Adapters are named `<Tech><Role>`
(`S3BlobStore`, `FirestoreRecordStore`, ...); tests and the local CLI use the
in-memory ones in `functions.core.memory`.

Adapters translate their SDK's outages (throttling, 5xx, timeouts after the
SDK's own retries) into `StorageUnavailable`, `RecordStoreUnavailable` or
`PublisherUnavailable`, so the core can tell transient from permanent.
"""

from __future__ import annotations

from collections.abc import Mapping
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


class EventPublisher(Protocol):
    def publish(self, event: Mapping[str, Any]) -> None:
        """Publish one CloudEvents 1.0 structured-mode event (a JSON-ready mapping)."""
        ...
