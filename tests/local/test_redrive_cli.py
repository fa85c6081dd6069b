"""`imagepipe redrive` over the in-memory pipeline of tests/local/test_backfill_cli.py: dead
letters leave their queue only once enqueued again, retryable failures and stale claims come
back COMPLETED, permanent failures are left as they are."""

from __future__ import annotations

import io
from typing import Any

import pytest

from functions.core.records import ImageRecord, ObjectRef, Source, Status, StorageUnavailable
from functions.core.work import WorkItem
from functions.local.redrive import RedriveOptions, redrive
from functions.local.target import DeadLetter
from tests.local.test_backfill_cli import CONTROL, FakeCloud, FakeTarget, Ran


def run_redrive(target: FakeTarget, **options: Any) -> Ran:
    out, err = io.StringIO(), io.StringIO()
    options.setdefault("poll_interval", 0.01)
    code = redrive(target, RedriveOptions(**options), out, err)
    return Ran(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cloud() -> FakeCloud:
    return FakeCloud()


@pytest.fixture
def target(cloud: FakeCloud) -> FakeTarget:
    return FakeTarget(fake=cloud)


def ran_out_of_retries(cloud: FakeCloud, key: str, seed: int) -> ObjectRef:
    """An upload whose last attempt met a storage outage: FAILED `retries_exhausted`, and (as
    on AWS) its event in the dead-letter queue."""
    ref = cloud.put(key, seed=seed)
    cloud.blobs.unavailable = True
    with pytest.raises(StorageUnavailable):
        cloud.pipeline().process(ref, last_attempt=True)
    cloud.blobs.unavailable = False
    record = cloud.store.records[ref.record_id]
    assert (record.status, record.error.code, record.error.retryable) == (
        Status.FAILED,
        "retries_exhausted",
        True,
    )
    return ref


def dead_letter(ref: ObjectRef, receipt: str) -> DeadLetter:
    return DeadLetter(items=(WorkItem(ref),), receipt=receipt)


def stale_claim(cloud: FakeCloud, key: str, seed: int) -> ObjectRef:
    """A worker that claimed the upload and died: PROCESSING, its lease long over."""
    ref = cloud.put(key, seed=seed)
    cloud.store.create(
        ImageRecord(
            id=ref.record_id,
            source=cloud_source(ref),
            status=Status.PROCESSING,
            attempts=1,
            created_at="2026-01-01T00:00:00.000Z",
            updated_at="2026-01-01T00:00:00.000Z",
            lease_expires_at="2026-01-01T00:16:00.000Z",
        )
    )
    return ref


def cloud_source(ref: ObjectRef) -> Source:
    return Source(ref.bucket, ref.key, ref.version, ref.size)


def test_dead_letters_come_back_completed_and_leave_the_queue_after_enqueueing(cloud, target):
    refs = [ran_out_of_retries(cloud, f"incoming/{n}.png", seed=n) for n in range(3)]
    cloud.dead_letters.extend(dead_letter(ref, f"r{n}") for n, ref in enumerate(refs))

    ran = run_redrive(target)

    assert ran.code == 0, ran
    assert cloud.dead_letters == [] and len(cloud.removed_letters) == 3
    assert [item.ref for item in cloud.enqueued] == refs
    for ref in refs:
        record = cloud.store.records[ref.record_id]
        assert (record.status, record.error, record.attempts) == (Status.COMPLETED, None, 2)
    # The same records listed FAILED were already on their way: each was enqueued once.
    assert ran.out.splitlines()[0].startswith("found 6, enqueued 3, skipped 3 (duplicate 3), ")
    assert ran.out.splitlines()[1] == "completed 3, failed 0, pending 0 of 3"


def test_dead_letters_stay_when_they_cannot_be_enqueued(cloud, target):
    ref = ran_out_of_retries(cloud, "incoming/a.png", seed=1)
    letter = dead_letter(ref, "r1")
    cloud.dead_letters.append(letter)
    cloud.queue_down = True

    ran = run_redrive(target)

    assert (ran.code, ran.out) == (2, "")
    assert ran.err.splitlines()[-1].endswith("the work queue is unavailable")
    assert cloud.dead_letters == [letter] and cloud.removed_letters == []
    assert cloud.store.records[ref.record_id].status is Status.FAILED

    cloud.queue_down = False
    again = run_redrive(FakeTarget(fake=cloud))  # a new run: the letter is visible again
    assert again.code == 0, again
    assert cloud.removed_letters == [letter]
    assert cloud.store.records[ref.record_id].status is Status.COMPLETED


def test_a_dead_letter_whose_image_is_done_is_removed_without_enqueueing(cloud, target):
    done = cloud.upload("incoming/done.png", seed=4)
    ref = ObjectRef(done.source.bucket, done.source.key, done.source.version, done.source.bytes)
    cloud.dead_letters.append(dead_letter(ref, "r1"))

    ran = run_redrive(target)

    assert ran.code == 0, ran
    assert cloud.enqueued == [] and len(cloud.removed_letters) == 1
    assert ran.out.splitlines()[0].startswith("found 1, enqueued 0, skipped 1 (done 1), ")


def test_retryable_failures_and_stale_claims_come_back_and_permanent_failures_stay(cloud, target):
    cloud.has_dead_letters = False  # as on GCP: the records are all there is
    exhausted = ran_out_of_retries(cloud, "incoming/exhausted.png", seed=1)
    stale = stale_claim(cloud, "incoming/stale.png", seed=2)
    broken = cloud.pipeline().process(cloud.put("incoming/broken.png", b"not an image")).record
    live = cloud.put("incoming/live.png", seed=3)
    cloud.store.create(
        ImageRecord(
            id=live.record_id,
            source=cloud_source(live),
            status=Status.PROCESSING,
            attempts=1,
            lease_expires_at="3000-01-01T00:00:00.000Z",
        )
    )

    ran = run_redrive(target)

    assert ran.code == 0, ran
    assert {item.ref.key for item in cloud.enqueued} == {exhausted.key, stale.key}
    for ref in (exhausted, stale):
        assert cloud.store.records[ref.record_id].status is Status.COMPLETED
    assert cloud.store.records[broken.id] == broken  # untouched
    assert cloud.store.records[live.record_id].status is Status.PROCESSING
    assert ran.out.splitlines()[0].startswith(
        "found 4, enqueued 2, skipped 2 (failed permanently 1, in flight 1), "
    )

    again = run_redrive(target)
    assert again.out.startswith("found 2, enqueued 0, skipped 2 ")
    assert cloud.store.records[broken.id] == broken


def test_what_fails_again_is_printed_with_its_reason(cloud, target):
    cloud.has_dead_letters = False
    ref = ran_out_of_retries(cloud, "incoming/gone.png", seed=5)
    cloud.blobs.delete("uploads", ref.key)  # deleted before the redrive reached it

    ran = run_redrive(target)

    assert ran.code == 1
    lines = ran.out.splitlines()
    assert lines[1] == "completed 0, failed 1, pending 0 of 1"
    assert lines[2].startswith("FAILED incoming/gone.png: object_missing: ")
    record = cloud.store.records[ref.record_id]
    assert (record.status, record.error.retryable) == (Status.FAILED, False)
    for line in (ran.out + ran.err).splitlines():
        assert not CONTROL.search(line), repr(line)


def test_max_caps_what_is_enqueued_and_dead_letters_beyond_it_stay(cloud, target):
    refs = [ran_out_of_retries(cloud, f"incoming/{n}.png", seed=n) for n in range(3)]
    cloud.dead_letters.extend(dead_letter(ref, f"r{n}") for n, ref in enumerate(refs))

    ran = run_redrive(target, max_items=2)

    assert ran.code == 0, ran
    assert [item.ref for item in cloud.enqueued] == refs[:2]
    assert [letter.items[0].ref for letter in cloud.dead_letters] == refs[2:]
    assert cloud.store.records[refs[2].record_id].status is Status.FAILED


def test_dry_run_enqueues_and_removes_nothing(cloud, target):
    refs = [ran_out_of_retries(cloud, f"incoming/{n}.png", seed=n) for n in range(2)]
    cloud.dead_letters.extend(dead_letter(ref, f"r{n}") for n, ref in enumerate(refs))

    ran = run_redrive(target, dry_run=True)

    assert ran.code == 0, ran
    assert ran.out.splitlines()[0].startswith("found 4, would enqueue 2, skipped 2 (duplicate 2)")
    assert (cloud.enqueued, cloud.removed_letters, len(cloud.dead_letters)) == ([], [], 2)


def test_ctrl_c_is_one_line_and_exit_130(cloud, target):
    ref = ran_out_of_retries(cloud, "incoming/a.png", seed=1)
    cloud.dead_letters.append(dead_letter(ref, "r1"))
    cloud.interrupt_on_call = 1

    ran = run_redrive(target)

    assert ran.code == 130
    assert ran.err.splitlines()[-1].startswith(
        "imagepipe redrive: interrupted: found 1, enqueued 0, skipped 0, "
    )
    assert len(cloud.dead_letters) == 1  # interrupted before it was enqueued: it stays


def test_a_stack_without_a_work_queue_is_one_line_and_no_letter_is_touched(cloud, target):
    ref = ran_out_of_retries(cloud, "incoming/a.png", seed=1)
    cloud.dead_letters.append(dead_letter(ref, "r1"))
    cloud.has_work_queue = False

    ran = run_redrive(target)

    assert (ran.code, ran.out) == (2, "")
    assert ran.err == "imagepipe redrive: the fake pipeline exports no workQueue output\n"
    assert len(cloud.dead_letters) == 1 and not target.dead_letters().hidden
