"""`Pipeline.process`: one upload's whole lifecycle, the same on every cloud.

`Pipeline` is the only way in: a cloud's entry point, `imagepipe process` and the
tests all build one and hand it each object.

claim (conditional write) -> read -> detect/validate/inspect/render/encode
-> store renditions -> publish the event -> write the final record.

Bytes already rendered with the same specs are not rendered again: after the read,
one lookup of the records store by content hash finds a COMPLETED record of the same
bytes, and when its renditions are still stored under the keys the current specs give,
the new record takes them (stage `reuse` instead of detect ... store).

After COMPLETED, the `originals` setting may delete or archive the upload
(`_dispose_original`); a redelivery of a COMPLETED record finishes a disposal that was
interrupted. `Pipeline.delete` handles an original its owner deleted: the records of it
become DELETED with one `imagepipe.image.deleted` event each, and the renditions go
with the last record that referenced their bytes (`_release_content`).

The event is published *before* the final record is written: if publishing
fails, the record is still claimable and the retry publishes; if the final
write fails after publishing, the retry publishes again with the same event id
(at-least-once, deduplicable). The other order could lose the event for good.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

from functions.core.events import lifecycle_event
from functions.core.imaging import render_image
from functions.core.keys import rendition_key
from functions.core.ports import BlobStore, CdnInvalidator, EventPublisher, RecordStore
from functions.core.records import (
    FINAL_STATUSES,
    ORIGINAL_DELETED,
    ORIGINAL_EXPIRED,
    RETRIES_EXHAUSTED,
    ClaimHeld,
    ErrorInfo,
    ImageMetadata,
    ImageRecord,
    ObjectRef,
    PermanentError,
    PipelineError,
    RecordStoreUnavailable,
    RenditionRecord,
    RenditionsBeingDeleted,
    RetriesExhausted,
    Source,
    Status,
    record_id,
)
from functions.core.settings import PipelineSettings
from functions.core.timing import StageTimer, isoformat, parse_instant, utc_now

if TYPE_CHECKING:
    from functions.core.imaging import RenderResult

log = logging.getLogger("imagepipe")

# Keys are content-addressed, so a rendition never changes once written.
IMMUTABLE_CACHE_CONTROL = "public, max-age=31536000, immutable"
# Written on every rendition: whatever reads the renditions bucket can tell a
# rendition from an upload, and a trigger misrouted to it can refuse to recurse.
RENDITION_MARKER = {"imagepipe-rendition": "true"}
DEFAULT_LEASE = timedelta(minutes=16)  # longer than the longest function timeout (15 min)
# How long a deleter holds the renditions of some bytes while it deletes them: a new upload
# of those bytes waits (retries) meanwhile. Ample for one listing and one batch delete.
DELETION_LEASE = timedelta(minutes=5)
# `ImageRecord.original` of an archived upload: "archived:<archive bucket>/<archive key>".
ORIGINAL_ARCHIVED_PREFIX = "archived:"

Action = Literal["completed", "failed", "deleted", "expired", "duplicate"]


class Reclaim(StrEnum):
    """What a delivery from the work queue (backfill, redrive) may take over besides new
    and retried work, which every delivery may."""

    # COMPLETED with renditions another spec made (`renditions_current` is False).
    STALE = "stale"
    # FAILED with a retryable error (`retries_exhausted`): a redrive.
    FAILED = "failed"


@dataclass(frozen=True)
class Outcome:
    """What this delivery did: finished the image, or found it already finished."""

    action: Action
    record: ImageRecord


@dataclass(frozen=True)
class Pipeline:
    """The core's ports bound to one stack's storage, record store and topic.

    What a cloud's entry point builds once per instance and hands every delivery to.
    """

    settings: PipelineSettings
    blobs: BlobStore
    records: RecordStore
    events: EventPublisher
    renditions_bucket: str
    event_source: str
    lease: timedelta = DEFAULT_LEASE
    # Where the platform stops retrying, so that its last try ends the record FAILED
    # (`retries_exhausted`, retryable) with one failure event instead of leaving it PENDING:
    max_event_age: timedelta | None = None  # GCP: Eventarc retries by age
    max_attempts: int | None = None  # AWS: Lambda makes a fixed number of attempts
    # Every timestamp, lease and event age is read from here: tests turn time by hand.
    clock: Callable[[], datetime] = utc_now
    # Decodes and encodes one upload: tests count the decodes (none for reused renditions).
    renderer: Callable[[bytes, PipelineSettings, StageTimer], RenderResult] = render_image
    # Where `originals: archive` moves uploads (the component makes it only then).
    archive_bucket: str | None = None
    # The CDN in front of the renditions, told when deleted renditions leave it (AWS).
    cdn: CdnInvalidator | None = None

    def __post_init__(self) -> None:
        # At the composition root, once per instance: not a surprise at the first COMPLETED.
        if self.settings.originals == "archive" and not self.archive_bucket:
            raise ValueError("originals: archive needs the pipeline's archive_bucket")

    def process(
        self,
        ref: ObjectRef,
        lease: timedelta | None = None,
        *,
        event_time: datetime | None = None,
        reclaim: frozenset[Reclaim] = frozenset(),
        last_attempt: bool | None = None,
    ) -> Outcome:
        """Process one delivery of `ref` (see `_process_object`); `lease` overrides the
        instance's when the platform says how long this delivery may run (Lambda's
        remaining time). A work-queue delivery says what it may `reclaim`, and whether it
        is the queue's `last_attempt` (the queue counts its own deliveries); otherwise the
        record's attempts are counted against `max_attempts`."""
        return _process_object(
            ref,
            pipeline=self,
            lease=self.lease if lease is None else lease,
            event_time=event_time,
            reclaim=reclaim,
            last_attempt=last_attempt,
        )

    def delete(self, bucket: str, key: str, version: str | None = None) -> list[Outcome]:
        """An original was deleted: its records become DELETED, each with one
        `imagepipe.image.deleted` event, and with the last record that referenced their
        bytes the renditions go too (unless `delete_renditions_with_original` is off).

        `version` names the deleted version when the event does (a GCS generation, an S3
        version deleted for good); without it every record of the key is the original's
        (an unversioned S3 bucket keeps no older version). Records whose upload the
        `originals` setting removed are left alone: that delete was the pipeline's own.
        A redelivery finds the records DELETED and finishes releasing their renditions.
        Raises `ClaimHeld` while a delivery is still processing one of them.
        """
        outcomes = []
        for record in self._records_of(bucket, key, version):
            if record.original is not None:
                continue
            outcomes.append(self._delete_record(record))
        return outcomes

    def replaced(self, ref: ObjectRef) -> list[Outcome]:
        """`ref` replaced the earlier versions of its key in a bucket that keeps none, and the
        platform says nothing of them (an unversioned S3 bucket; GCS sends object.v1.deleted
        for the generation an upload overwrites, and `delete` handles it): their records end
        as their own deletes would. Called once `ref` is processed, so a late event of an
        earlier version, which finds its object gone, never deletes a later one."""
        return [
            self._delete_record(record)
            for record in self.records.for_object(ref.bucket, ref.key)
            if record.source.version != ref.version
            and record.status is not Status.DELETED
            and record.original is None
        ]

    def expire(self, bucket: str, key: str, version: str | None = None) -> list[Outcome]:
        """The uploads bucket's lifecycle rule (`originalsExpiryDays`) removed an original:
        plain expiry. Its records say so (`original` ORIGINAL_EXPIRED) and stay as they are,
        renditions included; no event, nothing else changes. Found as `delete` finds them."""
        outcomes = []
        for record in self._records_of(bucket, key, version):
            if record.original is not None or record.status is Status.DELETED:
                continue
            expired = record.evolve(original=ORIGINAL_EXPIRED, updated_at=isoformat(self.clock()))
            if not self.records.replace(
                expired, expected_status=record.status, expected_attempts=record.attempts
            ):
                raise ClaimHeld(f"{record.source.key} changed while it expired; retrying")
            outcomes.append(Outcome("expired", expired))
        return outcomes

    def _records_of(self, bucket: str, key: str, version: str | None) -> list[ImageRecord]:
        """The records a removal event names: that version's, else every one of the key."""
        if version is not None:
            found = self.records.get(record_id(bucket, key, version))
            if found is not None:
                return [found]
            # A delete marker's id, or a version never processed.
            candidates = self.records.for_object(bucket, key)
            return [r for r in candidates if r.status is not Status.DELETED]
        return sorted(self.records.for_object(bucket, key), key=lambda r: r.created_at)

    def _delete_record(self, record: ImageRecord) -> Outcome:
        now = self.clock()
        if record.status is Status.PROCESSING and not _lease_expired(record, now):
            raise ClaimHeld(
                f"{record.source.key} is being processed until {record.lease_expires_at}; "
                "the delete is retried after"
            )
        action: Action = "duplicate"
        if record.status is not Status.DELETED:
            deleted = record.evolve(
                status=Status.DELETED, lease_expires_at=None, updated_at=isoformat(now)
            )
            self.events.publish(lifecycle_event(deleted, source=self.event_source))
            if not self.records.replace(
                deleted, expected_status=record.status, expected_attempts=record.attempts
            ):
                raise ClaimHeld(f"{record.source.key} changed while it was deleted; retrying")
            record, action = deleted, "deleted"
        if self.settings.delete_renditions_with_original and record.source.sha256:
            self._release_content(record.source.sha256, record.id)
        return Outcome(action, record)

    def _release_content(self, content_sha256: str, holder: str) -> None:
        """Drop `holder`'s reference on these bytes; the last one out deletes their
        renditions, of every spec, and tells the CDN."""
        now = self.clock()
        if not self.records.release_content_reference(
            content_sha256, holder, now=now, deletion_lease_until=now + DELETION_LEASE
        ):
            return
        # Records finished before references were counted hold none: the index still
        # finds them, and their renditions stay.
        legacy = self.records.latest_completed_with_content(content_sha256)
        if legacy is None or legacy.id == holder:
            try:
                deleted = self.blobs.delete_under(self.renditions_bucket, f"{content_sha256}/")
                if self.cdn is not None:
                    # The prefix itself when nothing was left to delete: a retry after the
                    # renditions went, whose first try could not reach the CDN.
                    self.cdn.invalidate(deleted or [f"{content_sha256}/"])
            except Exception:
                # Give the lease back, so the platform's retry deletes and invalidates again
                # instead of finding a live lease and leaving the CDN's copies for a year.
                self.records.finish_content_deletion(content_sha256)
                raise
            log.info("deleted %d renditions of %s", len(deleted), content_sha256)
        self.records.finish_content_deletion(content_sha256)


def _process_object(
    ref: ObjectRef,
    *,
    pipeline: Pipeline,
    lease: timedelta,
    event_time: datetime | None,
    reclaim: frozenset[Reclaim],
    last_attempt: bool | None,
) -> Outcome:
    """Process one uploaded object version exactly once, as far as the outside world can tell.

    Returns normally for success, for permanent failures (record FAILED, failure
    event published) and for duplicates of a finished record. Raises
    `TransientError` (or any unexpected error) so the platform retries; the
    record is left PENDING with the error, ready for the retry to claim, unless this
    is the platform's last attempt (`last_attempt`, else `max_attempts`): then it ends
    FAILED `retries_exhausted` with its failure event before the error is raised, so the
    platform still dead-letters the event for a redrive. An event older than
    `max_event_age` ends the same way without another try, and returns. A live
    claim held by another delivery raises `ClaimHeld` and leaves the record alone:
    only a finished record makes a delivery a no-op, so an image whose worker died
    is taken over by a retry once the lease runs out, never stuck PROCESSING.
    """
    settings, records, events, clock = (
        pipeline.settings,
        pipeline.records,
        pipeline.events,
        pipeline.clock,
    )
    event_source, max_event_age = pipeline.event_source, pipeline.max_event_age
    timer = StageTimer()
    with timer.stage("claim"):
        claimed, current = _claim(ref, records, clock, lease, _reclaimable(reclaim, settings))
    if claimed is None:
        if current.status not in FINAL_STATUSES:
            raise ClaimHeld(
                f"{ref.key} is claimed by another delivery until {current.lease_expires_at}"
            )
        log.info("skipped %s: duplicate (%s)", ref.key, current.status.value)
        if current.status is Status.COMPLETED:
            current = _dispose_original(current, pipeline)  # finish one that was cut short
        return Outcome("duplicate", current)

    referenced: list[str] = []  # the content hash, once this record holds a reference on it
    try:
        if event_time and max_event_age and clock() - event_time > max_event_age:
            last = f" (the last error: {claimed.error.message})" if claimed.error else ""
            raise RetriesExhausted(
                f"the event is older than {int(max_event_age.total_seconds())} s, as long as "
                f"the platform retries{last}"
            )
        source, renditions, image = _render_and_store(ref, claimed, pipeline, timer, referenced)
        final = claimed.evolve(
            status=Status.COMPLETED, source=source, image=image, renditions=renditions, error=None
        )
    except (PermanentError, RetriesExhausted) as error:
        final = claimed.evolve(status=Status.FAILED, error=ErrorInfo.from_error(error))
    except Exception as error:
        if last_attempt is None:
            last_attempt = (
                pipeline.max_attempts is not None and claimed.attempts >= pipeline.max_attempts
            )
        if last_attempt:
            _give_up(claimed, error, records, events, event_source, clock, timer)
            _release_references(referenced, claimed, pipeline)
        else:
            _release_for_retry(claimed, error, records, clock)
        raise

    # A copy: the event carries exactly the record that is stored (no "notify" added later).
    final = final.evolve(
        stage_ms=dict(timer.ms), lease_expires_at=None, updated_at=isoformat(clock())
    )
    try:
        events.publish(lifecycle_event(final, source=event_source))
        if not records.replace(
            final, expected_status=Status.PROCESSING, expected_attempts=claimed.attempts
        ):
            # Our lease ran out and another delivery took over; its result stands.
            log.warning("record %s changed while %s was processed", final.id, ref.key)
    except Exception as error:
        _release_for_retry(claimed, error, records, clock)
        raise
    if final.status is Status.FAILED:
        _release_references(referenced, claimed, pipeline)
        return Outcome("failed", final)
    return Outcome("completed", _dispose_original(final, pipeline))


def _release_references(referenced: list[str], claimed: ImageRecord, pipeline: Pipeline) -> None:
    """A record that ends FAILED uses no renditions: its reference goes, and with the last
    one the renditions it had before (a re-render that failed) or none."""
    for content_sha256 in referenced:
        try:
            pipeline._release_content(content_sha256, claimed.id)
        except Exception:  # noqa: BLE001 - the record's outcome stands; a redrive retries
            log.warning("could not release %s's reference on %s", claimed.id, content_sha256)


def _dispose_original(record: ImageRecord, pipeline: Pipeline) -> ImageRecord:
    """Delete or archive a COMPLETED record's upload, as the `originals` setting says.

    The record says so first (`original`), so the delete event the upload's removal
    causes is known as the pipeline's own; then the upload is copied (archive) and
    deleted. Each step may be repeated: a redelivery of the COMPLETED record finishes
    what a crash cut short. An upload already gone (its owner deleted it) is left be.
    """
    policy = pipeline.settings.originals
    if policy == "keep":
        return record
    source, blobs = record.source, pipeline.blobs
    if record.original is None:
        if policy == "archive":
            assert pipeline.archive_bucket is not None  # checked by Pipeline.process
            day = pipeline.clock().strftime("%Y/%m/%d")
            archive_key = f"{day}/{source.key}"
            try:
                blobs.archive(
                    source.bucket,
                    source.key,
                    source.version,
                    archive_bucket=pipeline.archive_bucket,
                    archive_key=archive_key,
                )
            except KeyError:
                log.info("kept no copy of %s: it was deleted first", source.key)
                return record
            original = f"{ORIGINAL_ARCHIVED_PREFIX}{pipeline.archive_bucket}/{archive_key}"
        else:
            original = ORIGINAL_DELETED
        marked = record.evolve(original=original, updated_at=isoformat(pipeline.clock()))
        if not pipeline.records.replace(
            marked, expected_status=Status.COMPLETED, expected_attempts=record.attempts
        ):
            log.warning("record %s changed before its original was disposed of", record.id)
            return record
        record = marked
    blobs.delete(source.bucket, source.key, source.version)
    log.info("%s the original %s", "archived" if policy == "archive" else "deleted", source.key)
    return record


def _reclaimable(
    reclaim: frozenset[Reclaim], settings: PipelineSettings
) -> Callable[[ImageRecord], bool]:
    """Which finished records this delivery may take over (see `Reclaim`)."""

    def may_take_over(record: ImageRecord) -> bool:
        if record.status is Status.COMPLETED:
            return (
                Reclaim.STALE in reclaim
                and record.original is None
                and not renditions_current(record, settings)
            )
        if record.status is Status.FAILED:
            return Reclaim.FAILED in reclaim and record.error is not None and record.error.retryable
        return False

    return may_take_over


def renditions_current(record: ImageRecord, settings: PipelineSettings) -> bool:
    """Whether a COMPLETED record's renditions are exactly what the current specs make:
    the same names, and keys that hold the same spec digests (and render version)."""
    content_sha256 = record.source.sha256
    if not content_sha256:
        return False
    if [r.name for r in record.renditions] != [spec.name for spec in settings.renditions]:
        return False
    return all(
        rendition.key == rendition_key(content_sha256, spec, rendition.format)
        for rendition, spec in zip(record.renditions, settings.renditions, strict=True)
    )


def _claim(
    ref: ObjectRef,
    records: RecordStore,
    clock: Callable[[], datetime],
    lease: timedelta,
    may_take_over: Callable[[ImageRecord], bool],
) -> tuple[ImageRecord | None, ImageRecord]:
    """Take the work with a conditional write. Returns (claimed, current).

    The create is tried first: a first delivery, by far the most common, then costs
    one round trip to the record store instead of a read and a write.
    """
    now = clock()
    stamp = isoformat(now)
    lease_end = isoformat(now + lease)
    fresh = ImageRecord(
        id=ref.record_id,
        source=Source(ref.bucket, ref.key, ref.version, ref.size, None, ref.content_type),
        status=Status.PROCESSING,
        attempts=1,
        created_at=stamp,
        updated_at=stamp,
        lease_expires_at=lease_end,
    )
    if records.create(fresh):
        return fresh, fresh
    current = records.get(ref.record_id)
    if current is None:  # created and gone again: only a manual delete does that
        raise RecordStoreUnavailable(f"record {ref.record_id} vanished while being claimed")

    if current.status in FINAL_STATUSES and not may_take_over(current):
        return None, current
    if current.status is Status.PROCESSING and not _lease_expired(current, now):
        return None, current
    retried = current.evolve(
        status=Status.PROCESSING,
        attempts=current.attempts + 1,
        updated_at=stamp,
        lease_expires_at=lease_end,
    )
    if records.replace(retried, expected_status=current.status, expected_attempts=current.attempts):
        return retried, retried
    return None, records.get(ref.record_id) or current


def _lease_expired(record: ImageRecord, now: datetime) -> bool:
    return record.lease_expires_at is None or parse_instant(record.lease_expires_at) <= now


def is_stale_claim(record: ImageRecord, now: datetime) -> bool:
    """PROCESSING past its lease: the worker that claimed it died or ran out of time, and
    the next delivery of its event takes it over. What a status listing flags as stale."""
    return record.status is Status.PROCESSING and _lease_expired(record, now)


def _render_and_store(
    ref: ObjectRef,
    claimed: ImageRecord,
    pipeline: Pipeline,
    timer: StageTimer,
    referenced: list[str],
) -> tuple[Source, tuple[RenditionRecord, ...], ImageMetadata]:
    settings, blobs, records = pipeline.settings, pipeline.blobs, pipeline.records
    renditions_bucket, renderer = pipeline.renditions_bucket, pipeline.renderer
    limit = settings.limits.max_bytes
    if ref.size == 0:
        raise PermanentError("empty_object", "the object is empty (0 bytes)")
    if ref.size is not None and ref.size > limit:
        raise PermanentError("too_large", f"the object is {ref.size} bytes; the limit is {limit}")
    with timer.stage("read"):
        try:
            data = blobs.read(ref.bucket, ref.key, ref.version)
        except KeyError:
            raise PermanentError(
                "object_missing", f"{ref.key} (version {ref.version}) no longer exists"
            ) from None
    if not data:
        raise PermanentError("empty_object", "the object is empty (0 bytes)")
    if len(data) > limit:
        raise PermanentError("too_large", f"the object is {len(data)} bytes; the limit is {limit}")
    content_sha256 = hashlib.sha256(data).hexdigest()
    source = Source(ref.bucket, ref.key, ref.version, len(data), content_sha256, ref.content_type)
    # Before the renditions are looked up or written: a deleter that took the last
    # reference away an instant earlier is then seen (and waited for), never raced.
    if not records.add_content_reference(content_sha256, claimed.id, pipeline.clock()):
        raise RenditionsBeingDeleted(
            f"the renditions of {ref.key}'s bytes are being deleted with another original"
        )
    referenced.append(content_sha256)
    with timer.stage("lookup"):
        reusable = _reusable(content_sha256, settings, records, blobs, renditions_bucket)
    if reusable is not None:
        timer.ms["reuse"] = timer.ms.pop("lookup")  # the lookup was all the work there was
        log.info("reused the renditions of record %s for %s", reusable.id, ref.key)
        assert reusable.image is not None  # checked by _reusable
        return source, reusable.renditions, reusable.image
    result = renderer(data, settings, timer)

    stored: list[RenditionRecord] = []
    with timer.stage("store"):
        for output in result.renditions:
            key = rendition_key(content_sha256, output.spec, output.format)
            blobs.write(
                renditions_bucket,
                key,
                output.data,
                content_type=output.content_type,
                cache_control=IMMUTABLE_CACHE_CONTROL,
                metadata={**RENDITION_MARKER, "imagepipe-source-sha256": content_sha256},
            )
            stored.append(
                RenditionRecord(
                    output.spec.name,
                    key,
                    output.width,
                    output.height,
                    output.format,
                    len(output.data),
                )
            )
    return source, tuple(stored), result.metadata


def _reusable(
    content_sha256: str,
    settings: PipelineSettings,
    records: RecordStore,
    blobs: BlobStore,
    renditions_bucket: str,
) -> ImageRecord | None:
    """A COMPLETED record of the same bytes whose renditions are what these settings would
    make (same names, same keys: the key holds the spec digest) and are all still stored;
    None when the image must be rendered. The same bytes pass the same content checks, so
    only the settings' own rules are checked again (a format since disallowed, lower
    limits); the memory budget guards a decode, and there is none."""
    found = records.latest_completed_with_content(content_sha256)
    if found is None or found.image is None:
        return None
    image, limits = found.image, settings.limits
    if (
        image.format not in settings.allowed_formats
        or image.width * image.height > limits.max_pixels
        or image.frames > limits.max_frames
    ):
        return None
    if not renditions_current(found, settings):
        return None  # made from other specs or by another render version
    if not all(blobs.exists(renditions_bucket, r.key) for r in found.renditions):
        return None
    return found


def _give_up(
    claimed: ImageRecord,
    error: Exception,
    records: RecordStore,
    events: EventPublisher,
    event_source: str,
    clock: Callable[[], datetime],
    timer: StageTimer,
) -> None:
    """The platform's last attempt failed: FAILED `retries_exhausted`, one failure event.

    Event first, then the record, as for any final record. Best effort: when the
    outage is the topic or the record store itself, the record is left PENDING as
    after any other attempt, and the dead-lettered event still allows a redrive.
    """
    info = ErrorInfo(
        RETRIES_EXHAUSTED,
        f"{claimed.attempts} attempts failed; the last: {_describe_error(error)}",
        True,
    )
    final = claimed.evolve(
        status=Status.FAILED,
        error=info,
        stage_ms=dict(timer.ms),
        lease_expires_at=None,
        updated_at=isoformat(clock()),
    )
    try:
        events.publish(lifecycle_event(final, source=event_source))
        records.replace(
            final, expected_status=Status.PROCESSING, expected_attempts=claimed.attempts
        )
    except Exception:  # noqa: BLE001 - the original error is the one worth raising
        log.warning("could not record %s as FAILED after its last attempt", claimed.id)
        _release_for_retry(claimed, error, records, clock)


def _describe_error(error: Exception) -> str:
    if isinstance(error, PipelineError):
        return f"{error.code}: {error.message}"
    return f"{type(error).__name__}: {error}"


def _release_for_retry(
    claimed: ImageRecord, error: Exception, records: RecordStore, clock: Callable[[], datetime]
) -> None:
    """Leave the record PENDING with the error, so the platform's retry can claim it at once.

    Best effort: when the record store itself is what failed, the lease expiry
    lets the retry take over instead.
    """
    if isinstance(error, PipelineError):
        info = ErrorInfo.from_error(error)
    else:
        # Not in the closed set on purpose: an unexpected error is a bug to fix, and
        # until it is fixed the platform's retries and dead-letter queue keep the event.
        info = ErrorInfo("internal_error", f"{type(error).__name__}: {error}", True)
    pending = claimed.evolve(
        status=Status.PENDING, error=info, lease_expires_at=None, updated_at=isoformat(clock())
    )
    try:
        records.replace(
            pending, expected_status=Status.PROCESSING, expected_attempts=claimed.attempts
        )
    except Exception:  # noqa: BLE001 - the original error is the one worth raising
        log.warning("could not mark %s PENDING after %s", claimed.id, info.code)
