"""The core's operations: deletes that propagate (with reference-counted renditions), what
happens to originals, and the work queue's reclaims (re-render on a new spec, redrive)."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import timedelta

import pytest

from functions.core.events import COMPLETED_TYPE, DELETED_TYPE, FAILED_TYPE
from functions.core.memory import COLD_STORAGE_CLASS, InMemoryCdn
from functions.core.records import (
    ORIGINAL_DELETED,
    ORIGINAL_EXPIRED,
    ClaimHeld,
    ErrorInfo,
    MalformedEvent,
    ObjectRef,
    RenditionsBeingDeleted,
    Status,
    StorageUnavailable,
)
from functions.core.service import ORIGINAL_ARCHIVED_PREFIX, Reclaim, renditions_current
from functions.core.settings import PipelineSettings, RenditionSpec
from functions.core.work import (
    Decision,
    WorkItem,
    backfill_decision,
    backfill_item,
    redrivable,
    redrive_item,
)
from tests.core.images import FakeStack, encoded, quadrants

PHOTO = encoded(quadrants((320, 240)), "JPEG")
OTHER_PHOTO = encoded(quadrants((240, 320)), "PNG")


def types(stack: FakeStack) -> list[str]:
    return [event["type"] for event in stack.events.events]


# --- Deletes that propagate -------------------------------------------------------------------


def test_renditions_shared_by_two_uploads_go_with_the_second_delete() -> None:
    stack = FakeStack()
    cdn = InMemoryCdn()
    first, second = stack.upload("a.jpg", PHOTO, "v1"), stack.upload("b.jpg", PHOTO, "v2")
    stack.process(first)
    stack.process(second)
    renditions = set(stack.renditions())
    assert len(renditions) == 2  # the same bytes share their renditions

    [outcome] = stack.pipeline(cdn=cdn).delete("uploads", "a.jpg")
    assert outcome.action == "deleted"
    assert outcome.record.status is Status.DELETED
    assert set(stack.renditions()) == renditions  # still used by b.jpg
    assert cdn.invalidated == []

    [outcome] = stack.pipeline(cdn=cdn).delete("uploads", "b.jpg", "v2")
    assert outcome.action == "deleted"
    assert stack.renditions() == {}
    assert sorted(cdn.invalidated) == sorted(renditions)
    assert {r.status for r in stack.records.records.values()} == {Status.DELETED}
    assert types(stack) == [COMPLETED_TYPE, COMPLETED_TYPE, DELETED_TYPE, DELETED_TYPE]
    deleted_ids = [e["id"] for e in stack.events.events if e["type"] == DELETED_TYPE]
    assert deleted_ids == [f"{first.record_id}-deleted", f"{second.record_id}-deleted"]
    assert stack.records.content == {}  # the reference item went with the renditions


def test_a_redelivered_delete_publishes_nothing_and_finishes_the_release() -> None:
    stack = FakeStack()
    ref = stack.upload("a.jpg", PHOTO)
    stack.process(ref)
    stack.blobs.unavailable = True  # the record is DELETED, the renditions not yet
    with pytest.raises(StorageUnavailable):
        stack.pipeline().delete("uploads", "a.jpg")
    assert stack.records.get(ref.record_id).status is Status.DELETED
    assert stack.renditions()  # left for the retry

    stack.blobs.unavailable = False  # at once: the failed try gave its deletion lease back
    [outcome] = stack.pipeline().delete("uploads", "a.jpg")
    assert outcome.action == "duplicate"
    assert stack.renditions() == {}
    assert types(stack).count(DELETED_TYPE) == 1


def test_renditions_stay_when_deleting_is_turned_off() -> None:
    stack = FakeStack(settings=PipelineSettings(delete_renditions_with_original=False))
    ref = stack.upload("a.jpg", PHOTO)
    stack.process(ref)
    stack.pipeline().delete("uploads", "a.jpg")
    assert stack.records.get(ref.record_id).status is Status.DELETED
    assert len(stack.renditions()) == 2


def test_a_record_finished_before_references_were_counted_keeps_its_renditions() -> None:
    stack = FakeStack()
    old, new = stack.upload("old.jpg", PHOTO, "v1"), stack.upload("new.jpg", PHOTO, "v2")
    stack.process(old)
    stack.records.content.clear()  # as written by a release without reference counting
    stack.process(new)
    stack.pipeline().delete("uploads", "new.jpg")
    assert len(stack.renditions()) == 2  # old.jpg's COMPLETED record still uses them


def test_a_delete_waits_for_a_live_claim_and_then_wins() -> None:
    stack = FakeStack()
    ref = stack.upload("a.jpg", PHOTO)
    stack.process(ref)
    record = stack.records.get(ref.record_id)
    in_flight = record.evolve(
        status=Status.PROCESSING, lease_expires_at="2026-01-01T00:10:00.000Z", attempts=2
    )
    stack.records.records[ref.record_id] = in_flight
    with pytest.raises(ClaimHeld):
        stack.pipeline().delete("uploads", "a.jpg")
    stack.now += timedelta(minutes=11)  # the claim's worker died
    [outcome] = stack.pipeline().delete("uploads", "a.jpg")
    assert outcome.record.status is Status.DELETED


def test_a_new_upload_of_bytes_being_deleted_waits_and_then_renders_anew() -> None:
    stack = FakeStack()
    stack.process(stack.upload("a.jpg", PHOTO, "v1"))
    sha = next(iter(stack.records.records.values())).source.sha256
    # A deleter took the last reference a moment ago and is deleting the renditions.
    stack.records.release_content_reference(
        sha,
        next(iter(stack.records.records)),
        now=stack.now,
        deletion_lease_until=stack.now + timedelta(minutes=5),
    )
    second = stack.upload("b.jpg", PHOTO, "v2")
    with pytest.raises(RenditionsBeingDeleted):
        stack.process(second)
    assert stack.records.get(second.record_id).status is Status.PENDING
    stack.blobs.delete_under("renditions", f"{sha}/")  # what the deleter was doing
    stack.records.finish_content_deletion(sha)
    assert stack.process(second).action == "completed"
    assert len(stack.renditions()) == 2  # rendered again, not reused from nothing


def test_only_one_of_two_racing_deleters_deletes() -> None:
    stack = FakeStack()
    records, now = stack.records, stack.now
    for holder in ("a", "b"):
        assert records.add_content_reference("sha", holder, now)
    lease = now + timedelta(minutes=5)
    results: list[bool] = []
    barrier = threading.Barrier(2)

    def release(holder: str) -> None:
        barrier.wait()
        results.append(
            records.release_content_reference("sha", holder, now=now, deletion_lease_until=lease)
        )

    threads = [threading.Thread(target=release, args=(h,)) for h in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, True]
    assert not records.add_content_reference("sha", "c", now)  # while the winner deletes
    assert records.add_content_reference("sha", "c", lease + timedelta(seconds=1))


def test_a_delete_of_an_object_never_processed_changes_nothing() -> None:
    stack = FakeStack()
    assert stack.pipeline().delete("uploads", "never-seen.jpg", "v9") == []
    assert stack.events.events == []


def test_a_failed_image_releases_its_reference() -> None:
    stack = FakeStack(settings=PipelineSettings(allowed_formats=("PNG",)))
    ref = stack.upload("a.jpg", PHOTO)
    assert stack.process(ref).action == "failed"
    assert stack.records.content == {}


# --- Originals ---------------------------------------------------------------------------------


def test_originals_delete_removes_the_upload_after_completed_and_ignores_its_own_delete() -> None:
    stack = FakeStack(settings=PipelineSettings(originals="delete"))
    ref = stack.upload("a.jpg", PHOTO)
    outcome = stack.process(ref)
    assert outcome.action == "completed"
    assert outcome.record.original == ORIGINAL_DELETED
    assert stack.blobs.keys("uploads") == []
    stored = stack.records.get(ref.record_id)
    assert (stored.status, stored.original) == (Status.COMPLETED, ORIGINAL_DELETED)
    # The delete event its removal causes is the pipeline's own: nothing changes.
    assert stack.pipeline().delete("uploads", "a.jpg", ref.version) == []
    assert len(stack.renditions()) == 2
    assert types(stack) == [COMPLETED_TYPE]


def test_originals_archive_moves_the_upload_under_its_day() -> None:
    stack = FakeStack(settings=PipelineSettings(originals="archive"))
    ref = stack.upload("photos/a.jpg", PHOTO)
    outcome = stack.pipeline(archive_bucket="archive").process(ref)
    assert outcome.record.original == f"{ORIGINAL_ARCHIVED_PREFIX}archive/2026/01/01/photos/a.jpg"
    archived = stack.blobs.objects[("archive", "2026/01/01/photos/a.jpg")]
    assert archived.data == PHOTO
    assert archived.metadata["storage-class"] == COLD_STORAGE_CLASS
    assert stack.blobs.keys("uploads") == []


def test_archive_without_an_archive_bucket_is_refused() -> None:
    stack = FakeStack(settings=PipelineSettings(originals="archive"))
    with pytest.raises(ValueError, match="archive_bucket"):
        stack.process(stack.upload("a.jpg", PHOTO))


def test_a_failed_original_is_never_deleted() -> None:
    stack = FakeStack(settings=PipelineSettings(originals="delete"))
    ref = stack.upload("broken.jpg", b"not an image")
    assert stack.process(ref).action == "failed"
    assert stack.blobs.keys("uploads") == ["broken.jpg"]


def test_a_disposal_cut_short_is_finished_by_the_redelivery() -> None:
    stack = FakeStack(settings=PipelineSettings(originals="delete"))
    ref = stack.upload("a.jpg", PHOTO)
    real_delete = stack.blobs.delete

    def outage(*args, **kwargs):
        raise StorageUnavailable("storage is unavailable")

    stack.blobs.delete = outage  # type: ignore[method-assign]
    with pytest.raises(StorageUnavailable):
        stack.process(ref)
    assert stack.records.get(ref.record_id).status is Status.COMPLETED
    assert stack.blobs.keys("uploads") == ["a.jpg"]
    stack.blobs.delete = real_delete  # type: ignore[method-assign]
    assert stack.process(ref).action == "duplicate"
    assert stack.blobs.keys("uploads") == []
    assert types(stack) == [COMPLETED_TYPE]


# --- Reclaims: re-render on a new spec, redrive -----------------------------------------------


def test_a_stale_record_is_re_rendered_only_when_the_work_item_says_so() -> None:
    stack = FakeStack()
    ref = stack.upload("a.jpg", PHOTO)
    first = stack.process(ref).record
    old_keys = set(stack.renditions())
    wider = PipelineSettings(
        renditions=(RenditionSpec("large", 1600, 1200, "contain", "webp", 80),)
    )
    assert not renditions_current(first, wider)

    stack.settings = wider
    assert stack.process(ref).action == "duplicate"  # a plain redelivery changes nothing
    outcome = stack.pipeline().process(ref, reclaim=frozenset({Reclaim.STALE}))
    assert outcome.action == "completed"
    assert renditions_current(outcome.record, wider)
    assert old_keys < set(stack.renditions())  # next to the old ones, under new keys
    completed = [e["id"] for e in stack.events.events if e["type"] == COMPLETED_TYPE]
    assert len(completed) == len(set(completed)) == 2  # one new event, with a new id
    assert stack.pipeline().process(ref, reclaim=frozenset({Reclaim.STALE})).action == ("duplicate")


def test_redrive_brings_back_a_retryable_failure_but_not_a_permanent_one() -> None:
    stack = FakeStack()
    ref = stack.upload("a.jpg", PHOTO)
    stack.blobs.unavailable = True
    with pytest.raises(StorageUnavailable):
        stack.pipeline().process(ref, last_attempt=True)
    failed = stack.records.get(ref.record_id)
    assert (failed.status, failed.error.code) == (Status.FAILED, "retries_exhausted")
    assert redrivable(failed, stack.now)
    assert types(stack) == [FAILED_TYPE]

    stack.blobs.unavailable = False
    assert stack.process(ref).action == "duplicate"
    item = redrive_item(failed)
    outcome = stack.pipeline().process(item.ref, reclaim=item.reclaim)
    assert outcome.action == "completed"

    broken = stack.upload("broken.jpg", b"nope")
    permanent = stack.process(broken).record
    assert not redrivable(permanent, stack.now)
    again = stack.pipeline().process(broken, reclaim=frozenset({Reclaim.FAILED}))
    assert again.action == "duplicate"


def test_last_attempt_from_the_queue_overrides_the_record_count() -> None:
    stack = FakeStack()
    ref = stack.upload("a.jpg", PHOTO)
    stack.blobs.unavailable = True
    with pytest.raises(StorageUnavailable):
        stack.pipeline(max_attempts=3).process(ref, last_attempt=False)
    assert stack.records.get(ref.record_id).status is Status.PENDING


def test_a_stale_claim_is_redrivable() -> None:
    stack = FakeStack()
    ref = stack.upload("a.jpg", PHOTO)
    stack.process(ref)
    record = stack.records.get(ref.record_id).evolve(
        status=Status.PROCESSING, lease_expires_at="2026-01-01T00:05:00.000Z"
    )
    assert not redrivable(record, stack.now)
    assert redrivable(record, stack.now + timedelta(minutes=6))


# --- Work items and backfill decisions ---------------------------------------------------------


def test_work_items_round_trip_and_bad_ones_say_what_is_wrong() -> None:
    item = WorkItem(ObjectRef("b", "k", "v", 12), frozenset({Reclaim.STALE}))
    assert WorkItem.from_json(item.to_json()) == item
    assert WorkItem.from_json(WorkItem(ObjectRef("b", "k", "v")).to_json()).ref.size is None
    for bad, message in [
        ("nope", "not JSON"),
        ('{"kind": "other"}', "kind"),
        ('{"kind": "imagepipe.work.v1", "bucket": "b"}', "key, version"),
        (
            '{"kind": "imagepipe.work.v1", "bucket": "b", "key": "k", "version": "v", "size": "9"}',
            "size",
        ),
        (
            '{"kind": "imagepipe.work.v1", "bucket": "b", "key": "k", "version": "v", '
            '"reclaim": ["all"]}',
            "reclaim",
        ),
    ]:
        with pytest.raises(MalformedEvent, match=message):
            WorkItem.from_json(bad)


def test_backfill_decides_from_the_record() -> None:
    stack = FakeStack()
    ref = stack.upload("a.jpg", PHOTO)
    settings = stack.settings
    assert backfill_decision(None, settings, stale=False) is Decision.PROCESS
    done = stack.process(ref).record
    assert backfill_decision(done, settings, stale=True) is Decision.DONE
    other = replace(settings, renditions=(RenditionSpec("small", 64, 64, "cover", "png", 80),))
    assert backfill_decision(done, other, stale=False) is Decision.DONE
    assert backfill_decision(done, other, stale=True) is Decision.RERENDER
    assert backfill_item(ref, Decision.RERENDER) == WorkItem(ref, frozenset({Reclaim.STALE}))
    assert backfill_item(ref, Decision.PROCESS) == WorkItem(ref)
    assert backfill_item(ref, Decision.DONE) is None
    gone = done.evolve(original=ORIGINAL_DELETED)
    assert backfill_decision(gone, other, stale=True) is Decision.DONE  # nothing to render from
    failed = done.evolve(status=Status.FAILED, error=ErrorInfo("corrupt_image", "bad", False))
    assert backfill_decision(failed, settings, stale=True) is Decision.FAILED
    flying = done.evolve(status=Status.PROCESSING)
    assert backfill_decision(flying, settings, stale=True) is Decision.IN_FLIGHT


def test_plain_expiry_keeps_the_image_and_its_renditions() -> None:
    stack = FakeStack()
    ref = stack.upload("a.jpg", PHOTO)
    stack.process(ref)
    [outcome] = stack.pipeline().expire("uploads", "a.jpg", ref.version)
    assert outcome.action == "expired"
    stored = stack.records.get(ref.record_id)
    assert (stored.status, stored.original) == (Status.COMPLETED, ORIGINAL_EXPIRED)
    assert len(stack.renditions()) == 2
    assert types(stack) == [COMPLETED_TYPE]  # no event: nothing happened to the image
    assert stack.pipeline().expire("uploads", "a.jpg") == []  # a redelivery: already said
    assert stack.pipeline().delete("uploads", "a.jpg") == []  # and no delete follows it


def test_a_cdn_that_could_not_be_told_is_told_by_the_retry() -> None:
    stack = FakeStack()
    ref = stack.upload("a.jpg", PHOTO)
    stack.process(ref)
    sha = stack.records.get(ref.record_id).source.sha256

    class UnreachableCdn:
        def invalidate(self, keys):
            raise StorageUnavailable("the CDN is unavailable")

    with pytest.raises(StorageUnavailable):
        stack.pipeline(cdn=UnreachableCdn()).delete("uploads", "a.jpg")
    assert stack.renditions() == {}  # deleted; only the CDN was not told
    cdn = InMemoryCdn()
    [outcome] = stack.pipeline(cdn=cdn).delete("uploads", "a.jpg")  # at once: no lease left
    assert outcome.action == "duplicate"
    assert cdn.invalidated == [f"{sha}/"]


def test_an_overwrite_in_a_bucket_without_versions_ends_the_earlier_record() -> None:
    stack = FakeStack()
    first = stack.upload("a.jpg", PHOTO, "v1")
    stack.process(first)
    second = stack.upload("a.jpg", OTHER_PHOTO, "v2")
    stack.process(second)
    [outcome] = stack.pipeline().replaced(second)
    assert (outcome.action, outcome.record.id) == ("deleted", first.record_id)
    assert stack.records.get(second.record_id).status is Status.COMPLETED
    assert len(stack.renditions()) == 2  # only the new bytes' renditions are left
    assert stack.pipeline().replaced(second) == []
