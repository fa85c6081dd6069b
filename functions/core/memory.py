"""In-memory adapters: the fakes the tests use and the stores `imagepipe process` runs on.

They keep the ports' contracts exactly (conditional create and replace), and
can be told to fail, so tests reach the transient paths without patching.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from functions.core.records import (
    ImageRecord,
    PublisherUnavailable,
    RecordStoreUnavailable,
    Status,
    StorageUnavailable,
)


@dataclass(frozen=True)
class StoredBlob:
    data: bytes
    content_type: str
    cache_control: str
    metadata: Mapping[str, str]
    version: str = "v1"


@dataclass
class InMemoryBlobStore:
    """Each write makes a new version (v1, v2, ...), as S3 ETags and GCS generations do."""

    objects: dict[tuple[str, str], StoredBlob] = field(default_factory=dict)
    unavailable: bool = False
    _written: int = 0

    def put_upload(self, bucket: str, key: str, data: bytes, version: str | None = None) -> str:
        """Store an upload as a client would; returns its version (or keeps the one given)."""
        version = version or self._next_version()
        self.objects[(bucket, key)] = StoredBlob(data, "application/octet-stream", "", {}, version)
        return version

    def read(self, bucket: str, key: str, version: str | None = None) -> bytes:
        if self.unavailable:
            raise StorageUnavailable(f"storage is unavailable (reading {bucket}/{key})")
        stored = self.objects[(bucket, key)]
        if version is not None and stored.version != version:
            raise KeyError(f"{bucket}/{key} version {version}")  # overwritten since
        return stored.data

    def _next_version(self) -> str:
        self._written += 1
        return f"v{self._written}"

    def write(
        self,
        bucket: str,
        key: str,
        data: bytes,
        *,
        content_type: str,
        cache_control: str,
        metadata: Mapping[str, str],
    ) -> None:
        if self.unavailable:
            raise StorageUnavailable(f"storage is unavailable (writing {bucket}/{key})")
        self.objects[(bucket, key)] = StoredBlob(
            data, content_type, cache_control, dict(metadata), self._next_version()
        )

    def exists(self, bucket: str, key: str) -> bool:
        if self.unavailable:
            raise StorageUnavailable(f"storage is unavailable (looking up {bucket}/{key})")
        return (bucket, key) in self.objects

    def delete(self, bucket: str, key: str, version: str | None = None) -> None:
        if self.unavailable:
            raise StorageUnavailable(f"storage is unavailable (deleting {bucket}/{key})")
        stored = self.objects.get((bucket, key))
        if stored is not None and version in (None, stored.version):
            del self.objects[(bucket, key)]

    def delete_under(self, bucket: str, prefix: str) -> list[str]:
        if self.unavailable:
            raise StorageUnavailable(f"storage is unavailable (deleting {bucket}/{prefix}*)")
        doomed = [key for (b, key) in self.objects if b == bucket and key.startswith(prefix)]
        for key in doomed:
            del self.objects[(bucket, key)]
        return sorted(doomed)

    def archive(
        self, bucket: str, key: str, version: str, *, archive_bucket: str, archive_key: str
    ) -> None:
        if self.unavailable:
            raise StorageUnavailable(f"storage is unavailable (archiving {bucket}/{key})")
        stored = self.objects.get((bucket, key))
        if stored is None or stored.version != version:
            raise KeyError(f"{bucket}/{key} version {version}")
        self.objects[(archive_bucket, archive_key)] = replace(
            stored, metadata={**stored.metadata, "storage-class": COLD_STORAGE_CLASS}
        )

    def keys(self, bucket: str) -> list[str]:
        return sorted(key for (b, key) in self.objects if b == bucket)


COLD_STORAGE_CLASS = "COLD"  # what an archived copy's metadata says in memory


@dataclass
class ContentReferences:
    """One content hash's reference item: who holds it, and a deleter's lease."""

    holders: set[str] = field(default_factory=set)
    deleting_until: datetime | None = None


@dataclass
class InMemoryRecordStore:
    records: dict[str, ImageRecord] = field(default_factory=dict)
    content: dict[str, ContentReferences] = field(default_factory=dict)
    unavailable: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _check(self) -> None:
        if self.unavailable:
            raise RecordStoreUnavailable("the record store is unavailable")

    def get(self, record_id: str) -> ImageRecord | None:
        self._check()
        return self.records.get(record_id)

    def create(self, record: ImageRecord) -> bool:
        self._check()
        with self._lock:
            if record.id in self.records:
                return self.records[record.id] == record  # a repeated create of the same claim
            self.records[record.id] = record
            return True

    def replace(
        self, record: ImageRecord, *, expected_status: Status, expected_attempts: int
    ) -> bool:
        self._check()
        with self._lock:
            current = self.records.get(record.id)
            if current is None or (current.status, current.attempts) != (
                expected_status,
                expected_attempts,
            ):
                return False
            self.records[record.id] = record
            return True

    def latest_completed_with_content(self, content_sha256: str) -> ImageRecord | None:
        self._check()
        with self._lock:
            found = [
                record
                for record in self.records.values()
                if record.status is Status.COMPLETED and record.source.sha256 == content_sha256
            ]
        return max(found, key=lambda record: record.updated_at, default=None)

    def for_object(self, bucket: str, key: str) -> list[ImageRecord]:
        self._check()
        with self._lock:
            return [
                record
                for record in self.records.values()
                if (record.source.bucket, record.source.key) == (bucket, key)
            ]

    def for_upload(self, upload_id: str) -> list[ImageRecord]:
        from functions.core.uploads import upload_id_in

        self._check()
        with self._lock:
            return [r for r in self.records.values() if upload_id_in(r.source.key) == upload_id]

    def add_content_reference(self, content_sha256: str, record_id: str, now: datetime) -> bool:
        self._check()
        with self._lock:
            item = self.content.setdefault(content_sha256, ContentReferences())
            if item.deleting_until is not None and item.deleting_until > now:
                return False
            item.deleting_until = None  # a deleter that outlived its lease lost it
            item.holders.add(record_id)
            return True

    def release_content_reference(
        self, content_sha256: str, record_id: str, *, now: datetime, deletion_lease_until: datetime
    ) -> bool:
        self._check()
        with self._lock:
            item = self.content.setdefault(content_sha256, ContentReferences())
            item.holders.discard(record_id)
            if item.holders or (item.deleting_until is not None and item.deleting_until > now):
                return False
            item.deleting_until = deletion_lease_until
            return True

    def finish_content_deletion(self, content_sha256: str) -> None:
        self._check()
        with self._lock:
            item = self.content.get(content_sha256)
            if item is not None and not item.holders:
                del self.content[content_sha256]


@dataclass
class InMemoryCdn:
    """Remembers what it was asked to invalidate."""

    invalidated: list[str] = field(default_factory=list)

    def invalidate(self, keys: Sequence[str]) -> None:
        self.invalidated.extend(keys)


@dataclass
class InMemoryEventPublisher:
    events: list[dict[str, Any]] = field(default_factory=list)
    unavailable: bool = False

    def publish(self, event: Mapping[str, Any]) -> None:
        if self.unavailable:
            raise PublisherUnavailable("the event publisher is unavailable")
        self.events.append(dict(event))


if TYPE_CHECKING:  # the upload API's types, imported by its methods: `imagepipe process`
    from functions.core.uploads import PresignedPost, StoredUpload  # never needs them


@dataclass
class InMemoryUploadBucket:
    """The upload API's view of one bucket of an `InMemoryBlobStore`.

    Its POST "policy" is the conditions as JSON, so a test can read what was pinned.
    """

    blobs: InMemoryBlobStore
    name: str = "uploads"
    unavailable: bool = False

    def presigned_post(
        self, key: str, *, content_type: str, max_bytes: int, expires_in: timedelta
    ) -> PresignedPost:
        from functions.core.uploads import PresignedPost

        conditions = {
            "key": key,
            "Content-Type": content_type,
            "content-length-range": [1, max_bytes],
            "expires_in_seconds": int(expires_in.total_seconds()),
        }
        return PresignedPost(
            url=f"memory://{self.name}",
            fields={"key": key, "Content-Type": content_type, "policy": json.dumps(conditions)},
        )

    def find(self, prefix: str) -> StoredUpload | None:
        from functions.core.uploads import StoredUpload

        if self.unavailable:
            raise StorageUnavailable(f"storage is unavailable (listing {self.name}/{prefix})")
        for (bucket, key), stored in self.blobs.objects.items():
            if bucket == self.name and key.startswith(prefix):
                return StoredUpload(key=key, version=stored.version)
        return None
