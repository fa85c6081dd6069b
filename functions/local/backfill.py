"""`imagepipe backfill`: put every upload the pipeline has not processed (with `--stale`, every
one rendered by other specs) on the pipeline's work queue, then follow the records to the end.

The command decides and enqueues; the platform processes, at the work queue's fixed
concurrency (`backfillConcurrency`), through the same `Pipeline.process` as an upload. One
page of the listing at a time: list up to PAGE objects of the uploads bucket (never the
renditions bucket), read their records in one batched read, decide each with
`functions.core.work.backfill_decision`, enqueue what is to do (SQS: ten per request).
Nothing is enqueued twice by one run and nothing beyond `--max`; a run cut short is
resumed by running it again, since what is done or in flight is skipped, and a message
that did go out twice is a duplicate delivery, a no-op for the pipeline.

Following: the records of what was enqueued are read, in batches, until each is final
*since it was enqueued* (a re-render's record is COMPLETED before it starts), or the
timeout. `imagepipe redrive` shares this module's enqueueing, following and display.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO, TypeVar

from functions.core.records import FINAL_STATUSES, ImageRecord, ObjectRef, Status
from functions.core.work import Decision, WorkItem, backfill_decision, backfill_item
from functions.local.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from functions.local.target import (
    PipelineTarget,
    RecordSource,
    TargetError,
    add_target_arguments,
    resolve_target,
)

if TYPE_CHECKING:
    from functions.core.settings import PipelineSettings

EXIT_INTERRUPTED = 130  # what a shell reports for a command ended by Ctrl-C (128 + SIGINT)
DEFAULT_TIMEOUT = 600.0
# Objects decided and enqueued together: one batched records read (BatchGetItem and
# BatchGetDocuments take 100 keys) and ten SendMessageBatch requests per page.
PAGE = 100
# Records of enqueued work are read this often while following (a round never starts
# sooner than the last one took, so a long backfill is not read faster than it finishes).
DEV_POLL_INTERVAL = 0.2
STACK_POLL_INTERVAL = 2.0
# Records read per round while following: the oldest still pending (see `follow`).
FOLLOW_WINDOW = PAGE
# Without a terminal, a progress line is printed at most this often (and at each phase's end).
PLAIN_REPORT_SECONDS = 10.0

T = TypeVar("T")


# --- what a run counted --------------------------------------------------------------------


@dataclass
class EnqueueCounts:
    """The enqueueing phase so far."""

    listed: int = 0
    enqueued: int = 0  # with --dry-run: what would have been
    skipped: Counter[str] = field(default_factory=Counter)  # by reason
    capped: bool = False  # stopped at --max
    started: float = field(default_factory=time.monotonic)

    def rate(self) -> float:
        """Objects listed per second."""
        return self.listed / max(time.monotonic() - self.started, 1e-6)

    def describe(self, *, dry_run: bool = False, listed_label: str = "listed") -> str:
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(self.skipped.items()) if n)
        text = (
            f"{listed_label} {self.listed}, {'would enqueue' if dry_run else 'enqueued'} "
            f"{self.enqueued}, skipped {skipped}"
        )
        if reasons:
            text += f" ({reasons})"
        return f"{text}, {self.rate():.0f} objects/s"


@dataclass(frozen=True)
class Watched:
    """One enqueued item, and its record as it was when enqueued (None: it had none)."""

    item: WorkItem
    before: ImageRecord | None

    @property
    def record_id(self) -> str:
        return self.item.ref.record_id


@dataclass
class FollowResult:
    """Where the enqueued work stands: final records by id, and the ids still pending."""

    watched: Sequence[Watched]
    final: dict[str, ImageRecord] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    @property
    def completed(self) -> list[ImageRecord]:
        return [r for r in self.final.values() if r.status is not Status.FAILED]

    @property
    def failed(self) -> list[ImageRecord]:
        return [r for r in self.final.values() if r.status is Status.FAILED]

    @property
    def pending(self) -> list[Watched]:
        return [w for w in self.watched if w.record_id not in self.final]

    def describe(self) -> str:
        return (
            f"completed {len(self.completed)}, failed {len(self.failed)}, "
            f"pending {len(self.pending)} of {len(self.watched)}"
        )


def settled(before: ImageRecord | None, now: ImageRecord | None) -> bool:
    """Whether the work enqueued for `before` has finished: a final record that is not the
    one it started from (a re-render starts COMPLETED, a redrive FAILED). Every delivery
    that takes a record over counts an attempt and stamps it, so a changed record is a
    delivery's result."""
    if now is None or now.status not in FINAL_STATUSES:
        return False
    if before is None:
        return True
    return (now.attempts, now.updated_at, now.status) != (
        before.attempts,
        before.updated_at,
        before.status,
    )


# --- the two phases, shared with redrive ------------------------------------------------------


def pages(items: Iterable[T], size: int = PAGE) -> Iterator[list[T]]:
    page: list[T] = []
    for item in items:
        page.append(item)
        if len(page) == size:
            yield page
            page = []
    if page:
        yield page


def backfill_pages(
    target: PipelineTarget,
    *,
    prefix: str,
    stale: bool,
    max_items: int | None,
    dry_run: bool,
    counts: EnqueueCounts,
    on_progress: Callable[[EnqueueCounts], None] = lambda counts: None,
) -> list[Watched]:
    """List, decide and enqueue page by page; returns what was enqueued. `counts` is kept
    up to date as it goes, so an interrupted run can still say how far it got."""
    settings = target.settings
    records = target.records
    # Asked for before anything is listed: a stack without a work queue says so at once.
    queue = None if dry_run else target.work_queue()
    watched: list[Watched] = []
    for page in pages(target.list_uploads(prefix)):
        counts.listed += len(page)
        existing = records.get_many([ref.record_id for ref in page])
        to_enqueue = decide(page, existing, settings, stale=stale, counts=counts)
        if max_items is not None and counts.enqueued + len(to_enqueue) >= max_items:
            to_enqueue = to_enqueue[: max_items - counts.enqueued]
            counts.capped = True
        if to_enqueue and queue is not None:
            queue.enqueue([w.item for w in to_enqueue])
        counts.enqueued += len(to_enqueue)
        watched.extend(to_enqueue)
        on_progress(counts)
        if counts.capped:
            break
    return watched


def decide(
    page: Sequence[ObjectRef],
    existing: dict[str, ImageRecord],
    settings: PipelineSettings,
    *,
    stale: bool,
    counts: EnqueueCounts,
) -> list[Watched]:
    to_enqueue = []
    for ref in page:
        record = existing.get(ref.record_id)
        decision = backfill_decision(record, settings, stale=stale)
        item = backfill_item(ref, decision)
        if item is None:
            counts.skipped[SKIP_REASONS[decision]] += 1
        else:
            to_enqueue.append(Watched(item, record))
    return to_enqueue


SKIP_REASONS = {
    Decision.DONE: "done",
    Decision.FAILED: "failed",
    Decision.IN_FLIGHT: "in flight",
}


def follow(
    records: RecordSource,
    watched: Sequence[Watched],
    *,
    timeout: float,
    poll_interval: float,
    on_progress: Callable[[FollowResult], None] = lambda result: None,
    result: FollowResult | None = None,
) -> FollowResult:
    """Read the records of `watched` until each has `settled`, or `timeout` seconds.

    Each round reads the FOLLOW_WINDOW oldest pending records only: the queue delivers
    roughly in order, so those are the ones finishing, and a million enqueued objects cost
    one read each plus at most FOLLOW_WINDOW per round, not a million per round. At the
    timeout every pending record is read once more, so the counts printed are exact.
    """
    result = result if result is not None else FollowResult(watched)
    deadline = time.monotonic() + timeout
    while True:
        round_started = time.monotonic()
        read_settled(records, result.pending[:FOLLOW_WINDOW], result)
        now = time.monotonic()
        if result.pending and now >= deadline:
            read_settled(records, result.pending, result)
        on_progress(result)
        if not result.pending or now >= deadline:
            return result
        pause = max(poll_interval, now - round_started)
        time.sleep(min(pause, deadline - now))


def read_settled(records: RecordSource, watched: Sequence[Watched], result: FollowResult) -> None:
    for page in pages(watched):
        found = records.get_many([w.record_id for w in page])
        for w in page:
            record = found.get(w.record_id)
            if settled(w.before, record):
                assert record is not None
                result.final[w.record_id] = record


def default_poll_interval(target: PipelineTarget) -> float:
    return DEV_POLL_INTERVAL if target.is_dev else STACK_POLL_INTERVAL


def print_failures(failed: Sequence[ImageRecord], out: TextIO) -> None:
    """One line per FAILED record: key, code, message."""
    for record in sorted(failed, key=lambda r: r.source.key):
        error = record.error
        reason = f"{error.code}: {error.message}" if error else "no error recorded"
        retry = " (retryable: `imagepipe redrive` tries again)" if error and error.retryable else ""
        print(f"FAILED {record.source.key}: {reason}{retry}", file=out)


# --- what the person at the terminal sees -----------------------------------------------------


class Display:
    """Progress on `stream` (stderr): a rich display on a terminal, else a plain line now
    and then, without a control character, for logs and CI."""

    def __init__(self, stream: TextIO, command: str) -> None:
        from rich.console import Console

        self._console = Console(file=stream)
        self._stream = stream
        self._command = command
        self._progress = None
        self._tasks: dict[str, int] = {}
        self._last_plain = 0.0
        if self._console.is_terminal:
            from rich.progress import (
                BarColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            # The counts are in the text: a short bar leaves them the width of a terminal.
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(bar_width=16),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                console=self._console,
                transient=False,
            )
            self._progress.start()

    @property
    def rich(self) -> bool:
        return self._progress is not None

    def update(self, phase: str, text: str, done: int, total: int | None, *, final: bool) -> None:
        if self._progress is not None:
            if phase not in self._tasks:
                self._tasks[phase] = self._progress.add_task(phase, total=total, detail="")
            self._progress.update(self._tasks[phase], completed=done, total=total, detail=text)
            return
        now = time.monotonic()
        if final or now - self._last_plain >= PLAIN_REPORT_SECONDS:
            self._last_plain = now
            print(f"imagepipe {self._command}: {phase}: {text}", file=self._stream, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


# --- the command ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BackfillOptions:
    prefix: str | None = None  # None: the stack's uploadsPrefix
    stale: bool = False
    max_items: int | None = None
    dry_run: bool = False
    timeout: float = DEFAULT_TIMEOUT
    poll_interval: float | None = None  # None: by target (dev or stack)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser)
    parser.add_argument(
        "--prefix",
        default=None,
        metavar="P",
        help="backfill the objects whose key starts with P (default: the stack's "
        "uploadsPrefix, the keys its trigger processes; --prefix '' for the whole bucket)",
    )
    parser.add_argument(
        "--stale",
        action="store_true",
        help="also re-render COMPLETED images whose renditions other specs made",
    )
    add_operation_arguments(parser)


def add_operation_arguments(parser: argparse.ArgumentParser) -> None:
    """What backfill and redrive both take."""
    parser.add_argument(
        "--max", type=int, default=None, metavar="N", help="enqueue at most N items (a hard cap)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="count what would be enqueued; enqueue nothing"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds to follow the enqueued work to its end (default {DEFAULT_TIMEOUT:.0f}; "
        "0: do not wait)",
    )


def check_operation_arguments(args: argparse.Namespace) -> None:
    if args.max is not None and args.max < 1:
        raise ValueError(f"--max is {args.max}; use 1 or more")
    if args.timeout < 0:
        raise ValueError(f"--timeout is {args.timeout:g}; use 0 (do not wait) or more seconds")


def run(args: argparse.Namespace) -> int:
    try:
        check_operation_arguments(args)
        target = resolve_target(args)
    except (ValueError, TargetError) as error:
        print(f"imagepipe backfill: {error}", file=sys.stderr)
        return EXIT_USAGE
    options = BackfillOptions(
        prefix=args.prefix,
        stale=args.stale,
        max_items=args.max,
        dry_run=args.dry_run,
        timeout=args.timeout,
    )
    return backfill(target, options, sys.stdout, sys.stderr)


def backfill(target: PipelineTarget, options: BackfillOptions, out: TextIO, err: TextIO) -> int:
    """The whole command on one target: exit 0 when everything enqueued completed (or nothing
    was to do), 1 when some failed or were still pending at the timeout, 2 when the pipeline
    could not be reached, 130 on Ctrl-C."""
    prefix = target.uploads_prefix if options.prefix is None else options.prefix
    counts = EnqueueCounts()
    display = Display(err, "backfill")
    phase = "enqueue"
    result: FollowResult | None = None
    try:
        try:
            watched = backfill_pages(
                target,
                prefix=prefix,
                stale=options.stale,
                max_items=options.max_items,
                dry_run=options.dry_run,
                counts=counts,
                on_progress=lambda c: show_enqueueing(display, c, options, final=False),
            )
            show_enqueueing(display, counts, options, final=True)
            if options.dry_run or not watched or options.timeout == 0:
                display.close()
                return enqueued_only(counts, options, prefix, target, out)
            phase = "follow"
            result = FollowResult(watched)
            follow(
                target.records,
                watched,
                timeout=options.timeout,
                poll_interval=options.poll_interval or default_poll_interval(target),
                on_progress=lambda r: display.update(
                    phase, r.describe(), len(r.final), len(watched), final=not r.pending
                ),
                result=result,
            )
        finally:
            display.close()
    except KeyboardInterrupt:
        print(interrupted_line("backfill", counts, result, options.dry_run), file=err)
        return EXIT_INTERRUPTED
    except TargetError as error:  # the stack lacks an output the operation needs
        print(f"imagepipe backfill: {error}", file=err)
        return EXIT_USAGE
    except target.service_errors as error:
        print(
            f"imagepipe backfill: could not reach {target.where} ({counts.describe()}; run it "
            f"again to resume): {error}",
            file=err,
        )
        return EXIT_USAGE
    return report_outcome(
        "backfill", counts, result, options.timeout, out, err, max_items=options.max_items
    )


def show_enqueueing(
    display: Display, counts: EnqueueCounts, options: BackfillOptions, *, final: bool
) -> None:
    total = options.max_items or (counts.enqueued if final else None)
    text = counts.describe(dry_run=options.dry_run)
    display.update("enqueue", text, counts.enqueued, total, final=final)


def enqueued_only(
    counts: EnqueueCounts,
    options: BackfillOptions,
    prefix: str,
    target: PipelineTarget,
    out: TextIO,
) -> int:
    where = target.object_url(prefix)
    print(f"{counts.describe(dry_run=options.dry_run)} under {where}", file=out)
    if counts.capped:
        print(f"stopped at --max {options.max_items}; run it again for the rest", file=out)
    return EXIT_OK


def report_outcome(
    command: str,
    counts: EnqueueCounts,
    result: FollowResult,
    timeout: float,
    out: TextIO,
    err: TextIO,
    *,
    listed_label: str = "listed",
    max_items: int | None = None,
) -> int:
    print(counts.describe(listed_label=listed_label), file=out)
    if counts.capped:
        print(f"stopped at --max {max_items}; run it again for the rest", file=out)
    print(result.describe(), file=out)
    print_failures(result.failed, out)
    if result.pending:
        print(
            f"imagepipe {command}: {len(result.pending)} not final after {timeout:g} s; the "
            f"queue carries on (`imagepipe status --status PENDING` shows them)",
            file=err,
        )
    return EXIT_OK if not result.failed and not result.pending else EXIT_FAILED


def interrupted_line(
    command: str,
    counts: EnqueueCounts,
    result: FollowResult | None,
    dry_run: bool,
    *,
    listed_label: str = "listed",
) -> str:
    if result is None:
        described = counts.describe(dry_run=dry_run, listed_label=listed_label)
        return (
            f"imagepipe {command}: interrupted: {described}; run it "
            "again to resume (what is done or in flight is skipped)"
        )
    return (
        f"imagepipe {command}: interrupted while following: {result.describe()}; the queue "
        "carries on without this command"
    )
