"""`imagepipe process FILE... --out DIR`: run the core on local files, write renditions under DIR.

The files go through `Pipeline.process` itself, the same lifecycle as in the cloud,
on in-memory record and event stores and a `DirectoryBlobStore`: uploads are read
from the local file system and renditions written under DIR at their
content-addressed keys (`<sha256>/<name>-<WxH>-<fit>-<digest>.<ext>`). Writing
straight to disk keeps a 50 MB batch from being held twice in memory and leaves
exactly the layout a renditions bucket would have.

A file that cannot be read is a usage error (exit 2, nothing processed): there is
no upload to record. Bad *content* is never a usage error: it is a FAILED record
with a code, like in the cloud.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from functions.core.memory import InMemoryEventPublisher, InMemoryRecordStore
from functions.core.records import ImageRecord, ObjectRef, Status, StorageUnavailable
from functions.core.service import Pipeline
from functions.core.settings import PipelineSettings
from functions.local.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from functions.local.render import Row, print_rows

LOCAL_BUCKET = "local"
EVENT_SOURCE = "imagepipe://local/process"


class DirectoryBlobStore:
    """Uploads are local files (bucket "local", key = path); renditions go under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def read(self, bucket: str, key: str, version: str | None = None) -> bytes:
        try:
            return Path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None
        except OSError as error:
            raise StorageUnavailable(f"cannot read {key} ({error.strerror})") from None

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
        target = self.path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.partial")
            partial.write_bytes(data)
            os.replace(partial, target)  # readers never see half a file
        except OSError as error:
            raise StorageUnavailable(f"cannot write {target} ({error.strerror})") from None

    def path(self, key: str) -> Path:
        return self.root / key


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", type=Path, help="images to process")
    parser.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="where renditions are written"
    )
    parser.add_argument(
        "--stack-config",
        type=Path,
        metavar="YAML",
        help="take the settings from a Pulumi stack file, e.g. stacks/Pulumi.aws-dev.yaml",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON record per input, one per line"
    )


def run(args: argparse.Namespace) -> int:
    settings = PipelineSettings()
    if args.stack_config:
        from functions.local.stack_config import settings_from_stack_config

        settings = settings_from_stack_config(args.stack_config)  # SettingsError -> exit 2
    problem = _unreadable(args.files) or _unwritable(args.out)
    if problem:
        print(f"imagepipe process: {problem}", file=sys.stderr)
        return EXIT_USAGE
    records = process_files(args.files, args.out, settings)
    print_records(records, args.files, sys.stdout, as_json=args.json)
    failed = any(record.status is not Status.COMPLETED for record in records)
    return EXIT_FAILED if failed else EXIT_OK


def process_files(files: list[Path], out: Path, settings: PipelineSettings) -> list[ImageRecord]:
    """Each file's final record, with rendition keys rewritten to the paths written."""
    blobs = DirectoryBlobStore(out)
    pipeline = Pipeline(
        settings=settings,
        blobs=blobs,
        records=InMemoryRecordStore(),
        events=InMemoryEventPublisher(),
        renditions_bucket=str(out),
        event_source=EVENT_SOURCE,
    )
    results = []
    for path in files:
        stat = path.stat()
        ref = ObjectRef(LOCAL_BUCKET, str(path), f"{stat.st_mtime_ns}-{stat.st_size}", stat.st_size)
        outcome = pipeline.process(ref)
        renditions = tuple(
            rendition.__class__(**{**vars(rendition), "key": str(blobs.path(rendition.key))})
            for rendition in outcome.record.renditions
        )
        results.append(outcome.record.evolve(renditions=renditions))
    return results


def _unreadable(files: list[Path]) -> str | None:
    for path in files:
        if not path.exists():
            return f"{path} does not exist."
        if not path.is_file():
            return f"{path} is not a file."
        if not os.access(path, os.R_OK):
            return f"{path} cannot be read (permission denied)."
    return None


def _unwritable(out: Path) -> str | None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"--out {out} cannot be created ({error.strerror})."
    if not os.access(out, os.W_OK):
        return f"--out {out} is not writable."
    return None


def print_records(
    records: list[ImageRecord], files: list[Path], out: TextIO, *, as_json: bool
) -> None:
    """The rendition keys are already the paths written: that is where each one is."""
    rows = [Row.of(record, file=path) for record, path in zip(records, files, strict=True)]
    print_rows(rows, written_path, out, as_json=as_json)


def written_path(key: str) -> str:
    return key
