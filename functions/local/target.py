"""Where `imagepipe upload` and `imagepipe status` send their requests: a pipeline on AWS or
GCP, the dev pipeline on this machine or a deployed stack.

`--dev` reads the outputs file `imagepipe dev` writes; `--stack NAME` asks the Pulumi
CLI for a deployed stack's outputs and uses the cloud's usual credentials. Either way the
outputs' `cloud` ("aws" or "gcp") picks the client (`AwsPipelineTarget` in
`aws_client`, `GcpPipelineTarget` in `gcp_client`), and both answer the same methods,
so the commands never ask which cloud they talk to.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import shutil
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from components import outputs as output_names
from components.config import CLOUDS
from functions.core.records import ImageRecord, ObjectRef, Status

if TYPE_CHECKING:
    from functions.core.settings import PipelineSettings
    from functions.core.work import WorkItem

# Where `imagepipe dev` writes its outputs and `upload`/`status --dev` read them: written
# here, not in the dev pipeline's module, so the clients need not import the pipeline.
DEFAULT_OUTPUTS = Path(".imagepipe-dev.json")


class TargetError(Exception):
    """The pipeline to talk to cannot be found; the message says what to do."""


class RecordSource(Protocol):
    """A pipeline's records store, read-only."""

    def get_many(self, ids: Sequence[str]) -> dict[str, ImageRecord]:
        """The records that exist among `ids`, by id, in as few requests as the store allows."""
        ...

    def by_status(self, status: Status, limit: int) -> list[ImageRecord]:
        """Up to `limit` records with this status, the most recently updated first."""
        ...

    def for_object(self, bucket: str, key: str) -> list[ImageRecord]:
        """Every record of any version of this object, from the records store's by-object
        index: how `imagepipe status KEY` finds the record of an original that is gone."""
        ...


def latest_record(records: Iterable[ImageRecord]) -> ImageRecord | None:
    """The most recently updated of `records` (ISO 8601 UTC stamps sort as text)."""
    return max(records, key=lambda record: (record.updated_at, record.created_at), default=None)


class EventFeed(Protocol):
    """A pipeline's lifecycle events, as the records they carry."""

    def receive(self, wait_seconds: int) -> list[ImageRecord]:
        """The records of the events that arrive within `wait_seconds` (0: only those waiting)."""
        ...


class WorkQueue(Protocol):
    """The pipeline's work queue (SQS on AWS, Cloud Tasks on GCP), to put work on."""

    def enqueue(self, items: Sequence[WorkItem]) -> None:
        """Put every item on the queue, in as few requests as the queue allows (SQS: ten
        per SendMessageBatch). Raises the SDK's error when any item could not be put."""
        ...


@dataclass(frozen=True)
class DeadLetter:
    """One message the function's dead-letter queue holds: the work it stands for, and
    whatever the queue needs to remove that message once the work is enqueued again."""

    items: tuple[WorkItem, ...]  # an S3 event may name several objects
    receipt: Any


class DeadLetterQueue(Protocol):
    def receive(self, max_messages: int) -> list[DeadLetter]:
        """Up to `max_messages` messages, hidden from other readers for a while; an empty
        list when the queue is empty. A message that names no object is removed, and logged."""
        ...

    def remove(self, letters: Sequence[DeadLetter]) -> None:
        """Delete these messages from the queue (after their work was enqueued again)."""
        ...


@dataclass(frozen=True, kw_only=True)
class PipelineTarget(ABC):
    """One pipeline, from its stack outputs: what every cloud's client has in common.

    Built with `from_outputs`; the per-cloud subclass adds its records store, its SDK
    clients (made on first use, so resolving a target sends no request) and its rules
    for record ids.
    """

    cloud: ClassVar[str]
    uploads_bucket: str
    cdn_url: str
    uploads_prefix: str = ""  # keys outside it trigger nothing
    events_topic: str | None = None
    settings_json: str | None = None  # the `settings` output (see `settings_output`)

    @staticmethod
    def from_outputs(outputs: Mapping[str, Any], origin: str) -> PipelineTarget:
        """The client for the cloud the outputs name; `origin` says where they came from."""
        cloud = cloud_of(outputs, origin)
        if cloud == "gcp":
            from functions.local.gcp_client import GcpPipelineTarget

            return GcpPipelineTarget.from_outputs(outputs, origin)
        from functions.local.aws_client import AwsPipelineTarget

        return AwsPipelineTarget.from_outputs(outputs, origin)

    @property
    @abstractmethod
    def is_dev(self) -> bool:
        """True for the pipeline `imagepipe dev` runs on this machine."""

    @property
    @abstractmethod
    def where(self) -> str:
        """The pipeline as a message names it ("the dev pipeline at ...", "AWS")."""

    @property
    @abstractmethod
    def service_errors(self) -> tuple[type[BaseException], ...]:
        """What the cloud's SDK raises when the pipeline cannot be reached or refuses."""

    @property
    @abstractmethod
    def records(self) -> RecordSource:
        """The records store, to read."""

    @abstractmethod
    def put(self, path: Path, key: str) -> str:
        """Upload one file under `key`; the record id the function will give that version."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete the upload under `key`, as its owner would (its deletes propagate)."""

    @abstractmethod
    def current_record_id(self, key: str) -> str | None:
        """The record id of the object's current version; None when there is no such object."""

    @abstractmethod
    def follow_events(self) -> AbstractContextManager[EventFeed | None]:
        """A feed of the pipeline's events while the context lasts, or None where the
        records store is read instead (see `functions.local.upload` for when and why)."""

    @abstractmethod
    def object_url(self, key: str) -> str:
        """The upload's address as the cloud's own tools write it (s3://..., gs://...)."""

    def url(self, key: str) -> str:
        """Where a rendition is served."""
        return f"{self.cdn_url}/{key}"

    # --- Operations: backfill and redrive --------------------------------------------------

    @property
    def settings(self) -> PipelineSettings:
        """The function's settings, from the `settings` output (what `--stale` compares with)."""
        from functions.core.settings import PipelineSettings, SettingsError

        if not self.settings_json:
            raise TargetError(
                f"{self.where} exports no {output_names.SETTINGS} output; deploy this release "
                "of the stack (or restart `imagepipe dev`) first"
            )
        try:
            return PipelineSettings.from_json(self.settings_json)
        except SettingsError as error:
            raise TargetError(
                f"the {output_names.SETTINGS} output is not usable ({self.where}): {error}"
            ) from None

    @abstractmethod
    def list_uploads(self, prefix: str = "") -> Iterator[ObjectRef]:
        """Every object of the uploads bucket under `prefix` (never the renditions bucket),
        page by page, each as the trigger would name it: key, the version the function
        keys its record by (S3 versionId, else the ETag; GCS generation), and size."""

    @abstractmethod
    def work_queue(self) -> WorkQueue:
        """The work queue in front of the function."""

    @abstractmethod
    def dead_letters(self) -> DeadLetterQueue | None:
        """The function's dead-letter queue of trigger events (AWS); None where the platform
        keeps none (GCP: Eventarc drops an event after its retries, and the record says
        FAILED `retries_exhausted` instead)."""


def records_in_events(bodies: Iterable[str | bytes]) -> list[ImageRecord]:
    """The records carried by lifecycle CloudEvents (structured JSON, one serialisation on
    both clouds); anything else is skipped."""
    found = []
    for body in bodies:
        try:
            found.append(ImageRecord.from_dict(json.loads(body)["data"]))
        except (ValueError, KeyError, TypeError):
            continue  # not a lifecycle event: nothing a command waits for
    return found


def settings_output(outputs: Mapping[str, Any]) -> str | None:
    """The `settings` output as JSON text: a string as the components export it, or the
    object `pulumi stack output --json` may hand back for it."""
    value = outputs.get(output_names.SETTINGS)
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else json.dumps(value)


def content_type_of(path: Path) -> str:
    """What an upload is labelled: informational only, the function decides by content."""
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def cloud_of(outputs: Mapping[str, Any], origin: str) -> str:
    """The outputs' `cloud`. Without one (files and stacks from before it was written),
    a records collection means GCP and anything else AWS, the only cloud there was."""
    cloud = outputs.get("cloud")
    if cloud is None:
        only_gcp = outputs.get(output_names.RECORDS_COLLECTION) and not outputs.get(
            output_names.RECORDS_TABLE
        )
        return "gcp" if only_gcp else "aws"
    if cloud not in CLOUDS:
        raise TargetError(
            f"{origin} names cloud {str(cloud)[:40]!r}; expected {' or '.join(CLOUDS)}"
        )
    return str(cloud)


def required_outputs(
    outputs: Mapping[str, Any], names: Sequence[str], origin: str, cloud: str
) -> None:
    missing = [name for name in names if not outputs.get(name)]
    if missing:
        raise TargetError(
            f"{origin} has no {', '.join(missing)} output; is it an imagepipe stack on "
            f"{cloud.upper()}?"
        )


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--dev",
        action="store_true",
        help="the pipeline `imagepipe dev` runs on this machine (the default)",
    )
    where.add_argument(
        "--stack", metavar="NAME", help="a deployed stack (AWS or GCP), via `pulumi stack output`"
    )
    parser.add_argument(
        "--outputs",
        type=Path,
        default=DEFAULT_OUTPUTS,
        help=f"the outputs file `imagepipe dev` wrote (default {DEFAULT_OUTPUTS})",
    )


def resolve_target(args: argparse.Namespace) -> PipelineTarget:
    if args.stack:
        return PipelineTarget.from_outputs(stack_outputs(args.stack), f"stack {args.stack}")
    path: Path = args.outputs
    try:
        outputs = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TargetError(
            f"no dev pipeline outputs at {path}; start one with `imagepipe dev` "
            "(or pass --outputs FILE, or --stack NAME for a deployed stack)"
        ) from None
    except (OSError, ValueError) as error:
        raise TargetError(
            f"{path} is not an outputs file written by `imagepipe dev` ({error})"
        ) from None
    if not isinstance(outputs, dict):
        raise TargetError(f"{path} is not an outputs file written by `imagepipe dev`")
    target = PipelineTarget.from_outputs(outputs, str(path))
    if not target.is_dev:
        raise TargetError(
            f"{path} has no emulator address, so it was not written by `imagepipe dev`; "
            "for a deployed stack use --stack NAME"
        )
    return target


def stack_outputs(stack: str) -> dict[str, Any]:
    pulumi = shutil.which("pulumi")
    if pulumi is None:
        raise TargetError(
            f"the pulumi CLI is not installed; it is needed to read the outputs of stack {stack} "
            "(https://www.pulumi.com/docs/install/), or use --dev for the local pipeline"
        )
    result = subprocess.run(
        [pulumi, "stack", "output", "--json", "--stack", stack],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no reason given"])[-1]
        raise TargetError(f"`pulumi stack output --stack {stack}` failed: {reason}")
    try:
        outputs = json.loads(result.stdout)
    except ValueError:
        raise TargetError(f"`pulumi stack output --stack {stack}` did not print JSON") from None
    return outputs if isinstance(outputs, dict) else {}
