"""The work queue's messages, and what backfill and redrive decide from a record.

Backfill and redrive never process anything themselves: they put one `WorkItem` per
object on the cloud's work queue (SQS on AWS, Cloud Tasks on GCP), and the platform
hands each to the same function, through `Pipeline.process`, at the queue's bounded
concurrency. A backfill is therefore bounded by construction: one message per listed
object, at most `--max` of them, each processed at most once more than the records say.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from functions.core.records import ImageRecord, MalformedEvent, ObjectRef, Status
from functions.core.service import Reclaim, is_stale_claim, renditions_current
from functions.core.settings import PipelineSettings

# Marks a work-queue message, so the function tells it from the platform's own events.
WORK_MESSAGE_KIND = "imagepipe.work.v1"


@dataclass(frozen=True)
class WorkItem:
    """One object version to process, and what its delivery may take over."""

    ref: ObjectRef
    reclaim: frozenset[Reclaim] = frozenset()

    def to_json(self) -> str:
        body: dict[str, Any] = {
            "kind": WORK_MESSAGE_KIND,
            "bucket": self.ref.bucket,
            "key": self.ref.key,
            "version": self.ref.version,
            "reclaim": sorted(self.reclaim),
        }
        if self.ref.size is not None:
            body["size"] = self.ref.size
        return json.dumps(body, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> WorkItem:
        """The item `to_json` wrote; `MalformedEvent` names what is wrong with anything else."""
        try:
            body = json.loads(text)
        except ValueError:
            raise MalformedEvent("the work message is not JSON") from None
        if not is_work_message(body):
            raise MalformedEvent(f"the work message's kind is not {WORK_MESSAGE_KIND}")
        missing = [
            name for name in ("bucket", "key", "version") if not isinstance(body.get(name), str)
        ]
        if missing:
            raise MalformedEvent(f"the work message lacks {', '.join(missing)}")
        size = body.get("size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
            raise MalformedEvent(f"the work message's size is {size!r}; expected bytes")
        try:
            reclaim = frozenset(Reclaim(value) for value in body.get("reclaim") or ())
        except (TypeError, ValueError):
            allowed = ", ".join(Reclaim)
            message = f"the work message's reclaim must be a list of {allowed}"
            raise MalformedEvent(message) from None
        return cls(ObjectRef(body["bucket"], body["key"], body["version"], size), reclaim)


def is_work_message(body: Any) -> bool:
    return isinstance(body, dict) and body.get("kind") == WORK_MESSAGE_KIND


class Decision(StrEnum):
    """What backfill does with one listed object."""

    PROCESS = "process"  # no record: the pipeline never saw it
    RERENDER = "rerender"  # COMPLETED by other specs, and --stale asked for a re-render
    DONE = "done"  # COMPLETED with the current specs (or other specs, without --stale)
    FAILED = "failed"  # FAILED: permanently, or for redrive to bring back
    IN_FLIGHT = "in_flight"  # PENDING or PROCESSING: the platform is still on it


def backfill_decision(
    record: ImageRecord | None, settings: PipelineSettings, *, stale: bool
) -> Decision:
    if record is None:
        return Decision.PROCESS
    if record.status is Status.COMPLETED:
        if stale and record.original is None and not renditions_current(record, settings):
            return Decision.RERENDER
        return Decision.DONE
    if record.status is Status.FAILED:
        return Decision.FAILED
    if record.status is Status.DELETED:
        return Decision.DONE
    return Decision.IN_FLIGHT


def backfill_item(ref: ObjectRef, decision: Decision) -> WorkItem | None:
    """The message backfill enqueues for an object, or None when there is nothing to do."""
    if decision is Decision.PROCESS:
        return WorkItem(ref)
    if decision is Decision.RERENDER:
        return WorkItem(ref, frozenset({Reclaim.STALE}))
    return None


def redrivable(record: ImageRecord, now: datetime) -> bool:
    """What redrive brings back: FAILED with a retryable error (the platform's retries ran
    out), or PROCESSING past its lease (its worker died and no retry is coming)."""
    if record.status is Status.FAILED:
        return record.error is not None and record.error.retryable
    return is_stale_claim(record, now)


def redrive_item(record: ImageRecord) -> WorkItem:
    source = record.source
    ref = ObjectRef(source.bucket, source.key, source.version, source.bytes, source.content_type)
    return WorkItem(ref, frozenset({Reclaim.FAILED}))
