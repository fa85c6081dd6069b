"""`imagepipe redrive`: bring back what ran out of retries, through the work queue.

Two sources, each record once:

1. The function's dead-letter queue (AWS; `target.dead_letters()`): each message's objects
   are enqueued again, and only then is the message removed. A message whose objects are
   all finished (COMPLETED, DELETED, or FAILED for good) is removed without enqueueing;
   one beyond `--max` is left in the queue, to be received again after its visibility
   timeout.
2. The records: FAILED with a retryable error (`retries_exhausted`: the platform's retries
   ran out) and PROCESSING past their lease (their worker died and no retry is coming),
   `functions.core.work.redrivable`, the newest SCAN_LIMIT of each status.

Then the records are followed to the end as `imagepipe backfill` does, and every image
that still failed is printed, one line each, with its reason.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

from functions.core.records import ImageRecord, Status
from functions.core.service import Reclaim
from functions.core.work import WorkItem, redrivable, redrive_item
from functions.local.backfill import (
    DEFAULT_TIMEOUT,
    EXIT_INTERRUPTED,
    Display,
    EnqueueCounts,
    FollowResult,
    Watched,
    add_operation_arguments,
    check_operation_arguments,
    default_poll_interval,
    follow,
    interrupted_line,
    pages,
    report_outcome,
)
from functions.local.exits import EXIT_OK, EXIT_USAGE
from functions.local.target import (
    DeadLetterQueue,
    PipelineTarget,
    TargetError,
    add_target_arguments,
    resolve_target,
)

# Dead letters received per request (SQS ReceiveMessage returns at most ten).
DEAD_LETTER_BATCH = 10
# Records read per status: the newest first, so the latest failures come back first; an
# older one beyond this is reached by a second run once these are no longer FAILED.
SCAN_LIMIT = 10_000
REDRIVEN_STATUSES = (Status.FAILED, Status.PROCESSING)


@dataclass(frozen=True)
class RedriveOptions:
    max_items: int | None = None
    dry_run: bool = False
    timeout: float = DEFAULT_TIMEOUT
    poll_interval: float | None = None  # None: by target (dev or stack)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser)
    add_operation_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        check_operation_arguments(args)
        target = resolve_target(args)
    except (ValueError, TargetError) as error:
        print(f"imagepipe redrive: {error}", file=sys.stderr)
        return EXIT_USAGE
    options = RedriveOptions(max_items=args.max, dry_run=args.dry_run, timeout=args.timeout)
    return redrive(target, options, sys.stdout, sys.stderr)


def skip_reason(record: ImageRecord | None, now: datetime) -> str | None:
    """None when a record's work is to be enqueued again; else why not."""
    if record is None or record.status is Status.PENDING or redrivable(record, now):
        return None  # PENDING: a last attempt that could not even record its failure
    if record.status in (Status.COMPLETED, Status.DELETED):
        return "done"
    if record.status is Status.FAILED:
        return "failed permanently"
    return "in flight"


class Redrive:
    """One run's state: what was seen (a record once, whichever source found it first), what
    was enqueued, and the counts the display and the summary show."""

    def __init__(self, target: PipelineTarget, options: RedriveOptions) -> None:
        self.target = target
        self.options = options
        self.counts = EnqueueCounts()
        self.seen: set[str] = set()
        self.watched: list[Watched] = []
        self.truncated: list[Status] = []
        self.now = datetime.now(UTC)
        # Asked for before anything is received: a stack without one says so at once.
        self.queue = None if options.dry_run else target.work_queue()

    def room(self, pending: int = 0) -> int | None:
        """How many more items --max allows, besides `pending` about to be enqueued."""
        if self.options.max_items is None:
            return None
        return self.options.max_items - self.counts.enqueued - pending

    def take(self, candidates: Sequence[Watched], pending: int) -> list[Watched]:
        """`candidates` if they are still within --max, else none (a dead letter is removed
        only once all its items are enqueued)."""
        room = self.room(pending)
        if room is not None and len(candidates) > room:
            self.counts.capped = True
            return []
        return list(candidates)

    def enqueue(self, batch: Sequence[Watched]) -> None:
        if batch and self.queue is not None:
            self.queue.enqueue([w.item for w in batch])
        self.counts.enqueued += len(batch)
        self.watched.extend(batch)

    def dead_letters(self, queue: DeadLetterQueue) -> None:
        while not self.counts.capped:
            letters = queue.receive(DEAD_LETTER_BATCH)
            if not letters:
                return
            records = self.target.records.get_many(
                [item.ref.record_id for letter in letters for item in letter.items]
            )
            handled, batch = [], []
            for letter in letters:
                candidates, skipped = self._letter_candidates(letter.items, records)
                taken = self.take(candidates, len(batch)) if candidates else []
                if candidates and not taken:
                    break  # over --max: this letter and the rest stay in the queue
                self.counts.listed += len(letter.items)
                self.counts.skipped.update(skipped)
                self.seen.update(w.record_id for w in taken)
                batch.extend(taken)
                handled.append(letter)
            self.enqueue(batch)
            if handled and not self.options.dry_run:
                queue.remove(handled)  # after their items were enqueued, never before
            if self.options.dry_run and len(letters) < DEAD_LETTER_BATCH:
                return  # received ones stay hidden a while: do not wait for them to return

    def _letter_candidates(
        self, items: Sequence[WorkItem], records: dict[str, ImageRecord]
    ) -> tuple[list[Watched], Counter[str]]:
        """What of one letter is to enqueue, and why the rest is not."""
        candidates: dict[str, Watched] = {}
        skipped: Counter[str] = Counter()
        for item in items:
            rid = item.ref.record_id
            if rid in self.seen or rid in candidates:
                skipped["duplicate"] += 1
                continue
            record = records.get(rid)
            reason = skip_reason(record, self.now)
            if reason is not None:
                skipped[reason] += 1
                continue
            # The dead-lettered event's record ended FAILED retries_exhausted: take it over.
            candidates[rid] = Watched(WorkItem(item.ref, item.reclaim | {Reclaim.FAILED}), record)
        return list(candidates.values()), skipped

    def records(self) -> None:
        for status in REDRIVEN_STATUSES:
            if self.counts.capped:
                return
            found = self.target.records.by_status(status, SCAN_LIMIT)
            if len(found) >= SCAN_LIMIT:
                self.truncated.append(status)
            candidates = []
            for record in found:
                self.counts.listed += 1
                if record.id in self.seen:
                    self.counts.skipped["duplicate"] += 1
                    continue
                if not redrivable(record, self.now):
                    failed = record.status is Status.FAILED
                    self.counts.skipped["failed permanently" if failed else "in flight"] += 1
                    continue
                self.seen.add(record.id)
                candidates.append(Watched(redrive_item(record), record))
            room = self.room()
            if room is not None and len(candidates) > room:
                candidates = candidates[:room]
                self.counts.capped = True
            for page in pages(candidates):
                self.enqueue(page)


def redrive(target: PipelineTarget, options: RedriveOptions, out: TextIO, err: TextIO) -> int:
    """The whole command on one target; exit codes as `imagepipe backfill`'s."""
    try:
        state = Redrive(target, options)
    except TargetError as error:  # the stack lacks an output the operation needs
        print(f"imagepipe redrive: {error}", file=err)
        return EXIT_USAGE
    display = Display(err, "redrive")
    result: FollowResult | None = None

    def show(final: bool) -> None:
        counts = state.counts
        total = options.max_items or (counts.enqueued if final else None)
        text = counts.describe(dry_run=options.dry_run, listed_label="found")
        display.update("enqueue", text, counts.enqueued, total, final=final)

    try:
        try:
            queue = target.dead_letters()
            if queue is not None:
                state.dead_letters(queue)
                show(final=False)
            state.records()
            show(final=True)
            watched = state.watched
            if options.dry_run or not watched or options.timeout == 0:
                display.close()
                return summary_only(state, out, err)
            result = FollowResult(watched)
            follow(
                target.records,
                watched,
                timeout=options.timeout,
                poll_interval=options.poll_interval or default_poll_interval(target),
                on_progress=lambda r: display.update(
                    "follow", r.describe(), len(r.final), len(watched), final=not r.pending
                ),
                result=result,
            )
        finally:
            display.close()
    except KeyboardInterrupt:
        line = interrupted_line(
            "redrive", state.counts, result, options.dry_run, listed_label="found"
        )
        print(line, file=err)
        return EXIT_INTERRUPTED
    except TargetError as error:  # the stack lacks an output the operation needs
        print(f"imagepipe redrive: {error}", file=err)
        return EXIT_USAGE
    except target.service_errors as error:
        described = state.counts.describe(listed_label="found")
        print(
            f"imagepipe redrive: could not reach {target.where} ({described}; run it again to "
            f"resume): {error}",
            file=err,
        )
        return EXIT_USAGE
    note_truncated(state, err)
    return report_outcome(
        "redrive",
        state.counts,
        result,
        options.timeout,
        out,
        err,
        listed_label="found",
        max_items=options.max_items,
    )


def summary_only(state: Redrive, out: TextIO, err: TextIO) -> int:
    print(state.counts.describe(dry_run=state.options.dry_run, listed_label="found"), file=out)
    if state.counts.capped:
        print(f"stopped at --max {state.options.max_items}; run it again for the rest", file=out)
    note_truncated(state, err)
    return EXIT_OK


def note_truncated(state: Redrive, err: TextIO) -> None:
    for status in state.truncated:
        print(
            f"imagepipe redrive: read the newest {SCAN_LIMIT} {status.value} records only; "
            "run it again for older ones",
            file=err,
        )
