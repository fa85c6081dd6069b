"""`imagepipe backfill` over an in-memory pipeline whose work queue runs the real
`Pipeline.process` on every item it is given: the decisions, the cap, the resume and the
output are the command's own, on records the core itself wrote.

`FakeCloud` and `FakeTarget` are also what tests/local/test_redrive_cli.py and the
deleted-original cases of tests/local/test_status.py run on.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Sequence
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from functions.core.memory import InMemoryBlobStore, InMemoryEventPublisher, InMemoryRecordStore
from functions.core.records import ImageRecord, ObjectRef, Status, record_id
from functions.core.service import Pipeline
from functions.core.settings import PipelineSettings, RenditionSpec
from functions.core.work import WorkItem
from functions.local import backfill as backfill_command
from functions.local.backfill import BackfillOptions, backfill
from functions.local.cli import main
from functions.local.samples import small_png
from functions.local.target import DeadLetter, PipelineTarget, TargetError

UPLOADS, RENDITIONS = "uploads", "renditions"
TRIGGER_PREFIX = "incoming/"
# One small rendition: each image renders in a few milliseconds.
THUMB = RenditionSpec("thumb", 32, 32, "cover", "jpeg", 80)
FAST = PipelineSettings(renditions=(THUMB,))
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")  # anything but a newline


class FakeServiceError(Exception):
    """What the fake cloud's "SDK" raises when a service cannot be reached."""


@dataclass
class FakeCloud:
    """The stores of one pipeline, its work queue (which runs the real pipeline on enqueue,
    as the platform would deliver each message) and its dead-letter queue."""

    settings: PipelineSettings = FAST
    blobs: InMemoryBlobStore = field(default_factory=InMemoryBlobStore)
    store: InMemoryRecordStore = field(default_factory=InMemoryRecordStore)
    events: InMemoryEventPublisher = field(default_factory=InMemoryEventPublisher)
    enqueued: list[WorkItem] = field(default_factory=list)
    enqueue_calls: int = 0
    interrupt_on_call: int | None = None  # Ctrl-C during this enqueue call (1 = the first)
    queue_down: bool = False
    deliver: bool = True  # False: the queue accepts and nothing processes (yet)
    # The platform works while the command goes on: what is enqueued is delivered when the
    # records are next read in a batch (as the command does before deciding and while
    # following), not within the enqueue call, so a listing may still see it unfinished.
    backlog: list[WorkItem] = field(default_factory=list)
    has_dead_letters: bool = True
    has_work_queue: bool = True  # False: a stack deployed before work queues existed
    dead_letters: list[DeadLetter] = field(default_factory=list)
    removed_letters: list[DeadLetter] = field(default_factory=list)

    def pipeline(self) -> Pipeline:
        return Pipeline(
            settings=self.settings,
            blobs=self.blobs,
            records=self.store,
            events=self.events,
            renditions_bucket=RENDITIONS,
            event_source="test",
        )

    def put(self, key: str, data: bytes | None = None, seed: int = 0) -> ObjectRef:
        """An object written straight into the bucket: no trigger, no record."""
        data = small_png(seed=seed) if data is None else data
        version = self.blobs.put_upload(UPLOADS, key, data)
        return ObjectRef(UPLOADS, key, version, len(data))

    def upload(self, key: str, seed: int = 0) -> ImageRecord:
        """An upload the trigger processed."""
        ref = self.put(key, seed=seed)
        return self.pipeline().process(ref).record

    def deliver_items(self, items: Sequence[WorkItem]) -> None:
        for item in items:
            # The queue's last attempt: a transient error ends FAILED (retryable) and raises,
            # and the platform would dead-letter the message.
            with suppress(Exception):
                self.pipeline().process(item.ref, reclaim=item.reclaim, last_attempt=True)

    def run_backlog(self) -> None:
        items, self.backlog = self.backlog, []
        self.deliver_items(items)

    def record(self, key: str) -> ImageRecord | None:
        found = self.store.for_object(UPLOADS, key)
        return max(found, key=lambda r: r.updated_at) if found else None

    def completed_events(self) -> list[dict[str, Any]]:
        return [e for e in self.events.events if e["type"].endswith(".completed")]


class FakeWorkQueue:
    def __init__(self, cloud: FakeCloud) -> None:
        self.cloud = cloud

    def enqueue(self, items: Sequence[WorkItem]) -> None:
        cloud = self.cloud
        if cloud.queue_down:
            raise FakeServiceError("the work queue is unavailable")
        cloud.enqueue_calls += 1
        if cloud.enqueue_calls == cloud.interrupt_on_call:
            raise KeyboardInterrupt
        cloud.enqueued.extend(items)
        if cloud.deliver:
            cloud.backlog.extend(items)


class FakeDeadLetterQueue:
    """Received letters stay hidden (as for a visibility timeout longer than the test)."""

    def __init__(self, cloud: FakeCloud) -> None:
        self.cloud = cloud
        self.hidden: set[int] = set()

    def receive(self, max_messages: int) -> list[DeadLetter]:
        visible = [d for d in self.cloud.dead_letters if id(d) not in self.hidden]
        taken = visible[:max_messages]
        self.hidden.update(id(d) for d in taken)
        return taken

    def remove(self, letters: Sequence[DeadLetter]) -> None:
        for letter in letters:
            self.cloud.dead_letters.remove(letter)
            self.cloud.removed_letters.append(letter)


class FakeRecordSource:
    def __init__(self, cloud: FakeCloud) -> None:
        self.cloud = cloud
        self.store = cloud.store

    def get_many(self, ids: Sequence[str]) -> dict[str, ImageRecord]:
        self.cloud.run_backlog()
        return {i: self.store.records[i] for i in ids if i in self.store.records}

    def by_status(self, status: Status, limit: int) -> list[ImageRecord]:
        found = [r for r in self.store.records.values() if r.status is status]
        return sorted(found, key=lambda r: r.updated_at, reverse=True)[:limit]

    def for_object(self, bucket: str, key: str) -> list[ImageRecord]:
        return self.store.for_object(bucket, key)


@dataclass(frozen=True, kw_only=True)
class FakeTarget(PipelineTarget):
    cloud = "memory"  # type: ignore[assignment]
    fake: FakeCloud
    uploads_bucket: str = UPLOADS
    cdn_url: str = "https://cdn.test"
    uploads_prefix: str = TRIGGER_PREFIX
    _dead_letter_queue: list[FakeDeadLetterQueue] = field(default_factory=list, compare=False)

    @property
    def is_dev(self) -> bool:
        return True

    @property
    def where(self) -> str:
        return "the fake pipeline"

    @property
    def service_errors(self) -> tuple[type[BaseException], ...]:
        return (FakeServiceError,)

    @property
    def records(self) -> FakeRecordSource:
        return FakeRecordSource(self.fake)

    def put(self, path: Path, key: str) -> str:
        ref = self.fake.put(key, path.read_bytes())
        return ref.record_id

    def delete(self, key: str) -> None:
        self.fake.blobs.delete(UPLOADS, key)

    def current_record_id(self, key: str) -> str | None:
        stored = self.fake.blobs.objects.get((UPLOADS, key))
        return None if stored is None else record_id(UPLOADS, key, stored.version)

    def follow_events(self) -> Any:
        return nullcontext()

    def object_url(self, key: str) -> str:
        return f"mem://{UPLOADS}/{key}"

    @property
    def settings(self) -> PipelineSettings:
        return self.fake.settings

    def list_uploads(self, prefix: str = "") -> Iterator[ObjectRef]:
        for (bucket, key), blob in sorted(self.fake.blobs.objects.items()):
            if bucket == UPLOADS and key.startswith(prefix):
                yield ObjectRef(bucket, key, blob.version, len(blob.data))

    def work_queue(self) -> FakeWorkQueue:
        if not self.fake.has_work_queue:
            raise TargetError(f"{self.where} exports no workQueue output")
        return FakeWorkQueue(self.fake)

    def dead_letters(self) -> FakeDeadLetterQueue | None:
        if not self.fake.has_dead_letters:
            return None
        if not self._dead_letter_queue:  # one queue per target, as its hidden set is
            self._dead_letter_queue.append(FakeDeadLetterQueue(self.fake))
        return self._dead_letter_queue[0]


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str


def run_backfill(target: FakeTarget, **options: Any) -> Ran:
    out, err = io.StringIO(), io.StringIO()
    options.setdefault("poll_interval", 0.01)
    code = backfill(target, BackfillOptions(**options), out, err)
    return Ran(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cloud() -> FakeCloud:
    return FakeCloud()


@pytest.fixture
def target(cloud: FakeCloud) -> FakeTarget:
    return FakeTarget(fake=cloud)


def put_before(cloud: FakeCloud, count: int, folder: str = "before/") -> list[ObjectRef]:
    """Objects that were in the bucket before the pipeline (outside the trigger's prefix)."""
    return [cloud.put(f"{folder}{n:04}.png", seed=n) for n in range(count)]


# --- what is processed, what is skipped -------------------------------------------------------


def test_objects_without_a_record_are_processed_and_completed_ones_skipped(cloud, target):
    refs = put_before(cloud, 3)
    cloud.upload(f"{TRIGGER_PREFIX}already.png", seed=99)

    ran = run_backfill(target, prefix="")

    assert ran.code == 0, ran
    assert [item.ref for item in cloud.enqueued] == refs
    assert all(cloud.store.records[ref.record_id].status is Status.COMPLETED for ref in refs)
    summary = ran.out.splitlines()
    assert summary[0].startswith("listed 4, enqueued 3, skipped 1 (done 1), ")
    assert summary[1] == "completed 3, failed 0, pending 0 of 3"
    assert len(cloud.completed_events()) == 4  # one per image, the trigger's included


def test_the_default_prefix_is_the_triggers_and_the_renditions_bucket_is_never_listed(
    cloud, target
):
    put_before(cloud, 2)
    done = cloud.upload(f"{TRIGGER_PREFIX}a.png", seed=7)
    cloud.put(f"{TRIGGER_PREFIX}missed.png", seed=8)  # an event that never came

    ran = run_backfill(target)

    assert ran.code == 0, ran
    assert [item.ref.key for item in cloud.enqueued] == [f"{TRIGGER_PREFIX}missed.png"]
    assert "under mem://uploads/incoming/" not in ran.out  # it followed, so no "under" line
    assert ran.out.startswith("listed 2, enqueued 1, skipped 1 (done 1)")
    assert cloud.blobs.keys(RENDITIONS)  # renditions exist and none was listed or enqueued
    assert all(item.ref.bucket == UPLOADS for item in cloud.enqueued)
    assert cloud.store.records[done.id].attempts == 1


def test_a_second_backfill_enqueues_nothing(cloud, target):
    put_before(cloud, 3)
    assert run_backfill(target, prefix="").code == 0
    calls, events = cloud.enqueue_calls, len(cloud.events.events)

    again = run_backfill(target, prefix="")

    assert again.code == 0, again
    assert again.out.startswith("listed 3, enqueued 0, skipped 3 (done 3), ")
    assert (cloud.enqueue_calls, len(cloud.events.events)) == (calls, events)


def test_stale_rerenders_completed_images_of_another_spec_once(cloud, target):
    refs = put_before(cloud, 2)
    assert run_backfill(target, prefix="").code == 0
    old_keys = {ref.key: cloud.record(ref.key).renditions[0].key for ref in refs}
    cloud.settings = PipelineSettings(renditions=(RenditionSpec("thumb", 48, 48, "cover"),))

    without_stale = run_backfill(target, prefix="")
    assert without_stale.out.startswith("listed 2, enqueued 0, skipped 2 (done 2)")

    ran = run_backfill(target, prefix="", stale=True)

    assert ran.code == 0, ran
    assert ran.out.startswith("listed 2, enqueued 2, skipped 0, ")
    assert ran.out.splitlines()[1] == "completed 2, failed 0, pending 0 of 2"
    for ref in refs:
        record = cloud.record(ref.key)
        assert record.status is Status.COMPLETED and record.attempts == 2
        assert (record.renditions[0].width, record.renditions[0].height) == (48, 48)
        new_key = record.renditions[0].key
        assert new_key != old_keys[ref.key]
        # The new renditions are written next to the old ones.
        assert {old_keys[ref.key], new_key} <= set(cloud.blobs.keys(RENDITIONS))
    assert len(cloud.completed_events()) == 4  # two first renders, two re-renders

    again = run_backfill(target, prefix="", stale=True)
    assert again.out.startswith("listed 2, enqueued 0, skipped 2 (done 2)")
    assert len(cloud.completed_events()) == 4


def test_max_is_a_hard_cap_and_the_next_run_takes_the_rest(cloud, target):
    refs = put_before(cloud, 5)

    ran = run_backfill(target, prefix="", max_items=2)

    assert ran.code == 0, ran
    assert [item.ref for item in cloud.enqueued] == refs[:2]
    assert sum(r.status is Status.COMPLETED for r in cloud.store.records.values()) == 2
    assert ran.out.startswith("listed 5, enqueued 2, ")
    assert ran.out.splitlines()[1] == "stopped at --max 2; run it again for the rest"

    rest = run_backfill(target, prefix="", max_items=10)
    assert rest.out.startswith("listed 5, enqueued 3, skipped 2 (done 2)")
    assert len(cloud.enqueued) == 5


def test_max_with_timeout_0_says_where_it_stopped(cloud, target):
    put_before(cloud, 3)
    ran = run_backfill(target, prefix="", max_items=1, timeout=0)
    assert ran.code == 0, ran
    assert ran.out.splitlines()[1:] == ["stopped at --max 1; run it again for the rest"]


def test_dry_run_counts_and_enqueues_nothing(cloud, target):
    put_before(cloud, 3)
    cloud.upload(f"{TRIGGER_PREFIX}done.png", seed=50)

    ran = run_backfill(target, prefix="", dry_run=True)

    assert ran.code == 0, ran
    assert ran.out.splitlines()[0].startswith("listed 4, would enqueue 3, skipped 1 (done 1), ")
    assert ran.out.splitlines()[0].endswith(" under mem://uploads/")
    assert (cloud.enqueue_calls, cloud.enqueued) == (0, [])
    assert len(cloud.store.records) == 1


def test_failed_and_in_flight_records_are_skipped_and_a_failure_is_one_line(cloud, target):
    cloud.put("before/broken.png", b"this is not an image")
    put_before(cloud, 1)

    ran = run_backfill(target, prefix="")

    assert ran.code == 1
    assert ran.out.splitlines()[1] == "completed 1, failed 1, pending 0 of 2"
    failure = ran.out.splitlines()[2]
    assert failure.startswith("FAILED before/broken.png: unsupported_format: ")
    assert "Traceback" not in ran.out + ran.err

    cloud.put("before/slow.png", seed=77)
    cloud.deliver = False  # the queue takes it and the platform has not run it yet
    assert run_backfill(target, prefix="", timeout=0).code == 0
    cloud.deliver = True
    cloud.store.records[cloud.enqueued[-1].ref.record_id] = ImageRecord(
        id=cloud.enqueued[-1].ref.record_id,
        source=cloud.record("before/0000.png").source,
        status=Status.PROCESSING,
        lease_expires_at="3000-01-01T00:00:00.000Z",
    )
    again = run_backfill(target, prefix="")
    assert again.out.startswith("listed 3, enqueued 0, skipped 3 (done 1, failed 1, in flight 1)")


def test_work_not_final_by_the_timeout_exits_1_with_one_line(cloud, target):
    put_before(cloud, 2)
    cloud.deliver = False

    ran = run_backfill(target, prefix="", timeout=0.05)

    assert ran.code == 1
    assert ran.out.splitlines()[1] == "completed 0, failed 0, pending 2 of 2"
    assert ran.err.splitlines()[-1] == (
        "imagepipe backfill: 2 not final after 0.05 s; the queue carries on "
        "(`imagepipe status --status PENDING` shows them)"
    )


# --- Ctrl-C, an unreachable queue, output without a terminal -----------------------------------


def test_ctrl_c_stops_with_one_line_and_a_second_run_resumes(cloud, target):
    refs = put_before(cloud, backfill_command.PAGE + 20)
    cloud.interrupt_on_call = 2  # while the second page is being enqueued

    ran = run_backfill(target, prefix="")

    assert ran.code == 130
    assert ran.out == ""
    lines = ran.err.splitlines()
    assert lines[-1].startswith(
        f"imagepipe backfill: interrupted: listed {len(refs)}, enqueued {backfill_command.PAGE}, "
    )
    assert lines[-1].endswith("run it again to resume (what is done or in flight is skipped)")
    assert len(cloud.store.records) == backfill_command.PAGE

    cloud.interrupt_on_call = None
    resumed = run_backfill(target, prefix="")
    assert resumed.code == 0, resumed
    assert resumed.out.startswith(f"listed {len(refs)}, enqueued 20, skipped 100 (done 100)")
    assert all(r.status is Status.COMPLETED for r in cloud.store.records.values())


def test_an_unreachable_queue_is_one_line_and_exit_2(cloud, target):
    put_before(cloud, 2)
    cloud.queue_down = True

    ran = run_backfill(target, prefix="")

    assert (ran.code, ran.out) == (2, "")
    line = ran.err.splitlines()[-1]
    assert line.startswith(
        "imagepipe backfill: could not reach the fake pipeline (listed 2, enqueued 0, skipped 0, "
    )
    assert line.endswith("; run it again to resume): the work queue is unavailable")
    assert cloud.store.records == {}


def test_a_stack_without_a_work_queue_is_one_line_before_anything_is_listed(cloud, target):
    put_before(cloud, 2)
    cloud.has_work_queue = False

    ran = run_backfill(target, prefix="")

    assert (ran.code, ran.out) == (2, "")
    assert ran.err == "imagepipe backfill: the fake pipeline exports no workQueue output\n"
    assert run_backfill(target, prefix="", dry_run=True).code == 0  # a dry run needs none


def test_without_a_terminal_the_output_is_plain_lines(cloud, target):
    put_before(cloud, 3)

    ran = run_backfill(target, prefix="")

    assert ran.code == 0
    for line in (ran.out + ran.err).splitlines():
        assert not CONTROL.search(line), repr(line)
    progress = ran.err.splitlines()
    assert progress and all(line.startswith("imagepipe backfill: ") for line in progress)
    assert progress[-1] == "imagepipe backfill: follow: completed 3, failed 0, pending 0 of 3"


# --- the command line -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["backfill", "--max", "0"], "--max is 0; use 1 or more"),
        (["backfill", "--timeout", "-1"], "--timeout is -1; use 0 (do not wait) or more seconds"),
        (["redrive", "--max", "-3"], "--max is -3; use 1 or more"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], complaint: str
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", f"imagepipe {argv[0]}: {complaint}\n")


def test_without_a_dev_pipeline_backfill_says_how_to_start_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["backfill", "--outputs", str(tmp_path / "absent.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imagepipe backfill: no dev pipeline outputs at ")
    assert err.count("\n") == 1


def test_following_reads_the_oldest_pending_window_and_everything_once_at_the_timeout(cloud):
    refs = put_before(cloud, backfill_command.FOLLOW_WINDOW + 50)
    watched = [backfill_command.Watched(WorkItem(ref), None) for ref in refs]
    read: list[int] = []

    class CountingRecords(FakeRecordSource):
        def get_many(self, ids: Sequence[str]) -> dict[str, ImageRecord]:
            read.extend(refs.index(next(r for r in refs if r.record_id == i)) for i in ids)
            return super().get_many(ids)

    cloud.deliver = False  # nothing finishes: every round finds the same window pending
    result = backfill_command.follow(
        CountingRecords(cloud), watched, timeout=0.05, poll_interval=0.01
    )

    assert len(result.pending) == len(refs)
    window = backfill_command.FOLLOW_WINDOW
    rounds, sweep = read[: -len(refs)], read[-len(refs) :]
    assert sweep == list(range(len(refs)))  # the last read: everything pending, once
    assert rounds and set(rounds) == set(range(window))  # before it, the oldest window only


def test_on_a_terminal_the_progress_is_rich_and_the_summary_plain(
    cloud, target, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich's own switch: draw as on a terminal
    put_before(cloud, 3)

    ran = run_backfill(target, prefix="")

    assert ran.code == 0, ran
    assert "\x1b[" in ran.err and "enqueue" in ran.err and "follow" in ran.err
    assert "completed 3, failed 0, pending 0 of 3" in ran.err  # the last state is drawn
    assert not CONTROL.search(ran.out)  # stdout stays plain for scripts
