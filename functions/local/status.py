"""`imagepipe status KEY`: the record of the current version of one uploaded object."""

from __future__ import annotations

import argparse
import json
import sys

from functions.core.records import ImageRecord, record_id
from functions.local.target import PipelineTarget, TargetError, add_target_arguments, resolve_target
from functions.local.upload import object_version

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("key", metavar="KEY", help="the object's key in the uploads bucket")
    add_target_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the record as one JSON object")


def run(args: argparse.Namespace) -> int:
    try:
        target = resolve_target(args)
    except TargetError as error:
        print(f"imagepipe status: {error}", file=sys.stderr)
        return EXIT_USAGE

    from botocore.exceptions import BotoCoreError, ClientError

    from functions.aws.adapters import DynamoDbRecordStore

    try:
        try:
            head = target.client("s3").head_object(Bucket=target.uploads_bucket, Key=args.key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                print(
                    f"imagepipe status: no such object: s3://{target.uploads_bucket}/{args.key}",
                    file=sys.stderr,
                )
                return EXIT_FAILED
            raise
        rid = record_id(target.uploads_bucket, args.key, object_version(head))
        record = DynamoDbRecordStore(target.client("dynamodb"), target.records_table).get(rid)
    except (BotoCoreError, ClientError) as error:
        where = f"the dev pipeline at {target.endpoint}" if target.endpoint else "AWS"
        print(f"imagepipe status: could not reach {where}: {error}", file=sys.stderr)
        return EXIT_USAGE

    if record is None:
        print(f"imagepipe status: no record yet for {args.key} (record id {rid})", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(record.to_dict(), sort_keys=True))
    else:
        print(describe(record, target))
    return EXIT_OK if record.status.value == "COMPLETED" else EXIT_FAILED


def describe(record: ImageRecord, target: PipelineTarget) -> str:
    lines = [
        f"key         {record.source.key}",
        f"record id   {record.id}",
        f"status      {record.status.value} (attempts {record.attempts})",
        f"updated     {record.updated_at}",
    ]
    if record.image:
        image = record.image
        lines.append(
            f"image       {image.format} {image.width}x{image.height} {image.mode}"
            + (f", {image.frames} frames" if image.frames > 1 else "")
        )
    if record.stage_ms:
        stages = ", ".join(f"{name} {ms:.0f}" for name, ms in record.stage_ms.items())
        lines.append(f"ms          {sum(record.stage_ms.values()):.0f} ({stages})")
    if record.error:
        lines.append(f"error       {record.error.code}: {record.error.message}")
    for rendition in record.renditions:
        lines.append(
            f"{rendition.name:<11} {rendition.width}x{rendition.height} "
            f"{rendition.format} {rendition.bytes} B  {target.url(rendition.key)}"
        )
    return "\n".join(lines)
