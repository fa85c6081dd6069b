"""`imagepipe status KEY`: the record of the current version of one uploaded object (of an
object no longer there, its latest record: DELETED, or COMPLETED with its original removed);
`imagepipe status --status STATUS`: the records with that status, the newest first.

Both read the records store of whichever cloud the target names (AWS: the table and
its `by-status` index; GCP: the collection, by `status` and `updated_at`). A listing
of PROCESSING records marks the claims whose lease has run out as stale: their worker
died or timed out, and the next delivery of their event takes them over.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from functions.core.records import ImageRecord, Status
from functions.core.service import is_stale_claim
from functions.local.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from functions.local.render import Row, print_rows
from functions.local.target import (
    PipelineTarget,
    TargetError,
    add_target_arguments,
    latest_record,
    resolve_target,
)

DEFAULT_LIMIT = 20
MAX_LIMIT = 1000  # a listing is for reading; more is an export, and costs reads to match


class StatusUsageError(ValueError):
    """The arguments ask for nothing, or for two things at once."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "key", nargs="?", metavar="KEY", help="the object's key in the uploads bucket"
    )
    parser.add_argument(
        "--status",
        type=str.upper,
        choices=[status.value for status in Status],
        help="list the records with this status instead, the most recently updated first",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help=f"with --status: at most N records (default {DEFAULT_LIMIT})",
    )
    add_target_arguments(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object per record, per line")


def check_arguments(args: argparse.Namespace) -> None:
    if (args.key is None) == (args.status is None):
        raise StatusUsageError("give either KEY or --status STATUS")
    if args.limit is not None and args.status is None:
        raise StatusUsageError("--limit applies to --status listings only")
    if args.limit is not None and not 1 <= args.limit <= MAX_LIMIT:
        raise StatusUsageError(f"--limit is {args.limit}; use 1 to {MAX_LIMIT}")


def run(args: argparse.Namespace) -> int:
    try:
        check_arguments(args)
        target = resolve_target(args)
    except (StatusUsageError, TargetError) as error:
        print(f"imagepipe status: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.key is not None:
            return show_one(target, args.key, as_json=args.json)
        return show_status(
            target, Status(args.status), args.limit or DEFAULT_LIMIT, as_json=args.json
        )
    except target.service_errors as error:
        print(f"imagepipe status: could not reach {target.where}: {error}", file=sys.stderr)
        return EXIT_USAGE


def show_one(target: PipelineTarget, key: str, *, as_json: bool) -> int:
    """Exit 0 when the current version's record is COMPLETED, 1 otherwise (DELETED too: the
    image is gone, though its record is printed)."""
    rid = target.current_record_id(key)
    if rid is None:
        # Gone from the bucket: deleted by its owner (DELETED) or by `originals` (COMPLETED,
        # `original` says so). Its records stay, found by key.
        record = latest_record(target.records.for_object(target.uploads_bucket, key))
        if record is None:
            print(f"imagepipe status: no such object: {target.object_url(key)}", file=sys.stderr)
            return EXIT_FAILED
        return print_record(record, target, as_json=as_json)
    record = target.records.get_many([rid]).get(rid)
    if record is None:
        print(f"imagepipe status: no record yet for {key} (record id {rid})", file=sys.stderr)
        return EXIT_FAILED
    return print_record(record, target, as_json=as_json)


def print_record(record: ImageRecord, target: PipelineTarget, *, as_json: bool) -> int:
    row = Row.of(record, stale=is_stale_claim(record, datetime.now(UTC)))
    print_rows([row], target.url, sys.stdout, as_json=as_json)
    return EXIT_OK if record.status is Status.COMPLETED else EXIT_FAILED


def show_status(target: PipelineTarget, status: Status, limit: int, *, as_json: bool) -> int:
    """Exit 0 once listed, however many records there were: a listing is a question, not an
    image's outcome."""
    records = target.records.by_status(status, limit)
    if not records:
        print(f"imagepipe status: no {status.value} records in {target.where}", file=sys.stderr)
        return EXIT_OK
    now = datetime.now(UTC)
    rows = [Row.of(record, stale=is_stale_claim(record, now)) for record in records]
    print_rows(rows, target.url, sys.stdout, as_json=as_json)
    return EXIT_OK
