"""Where `imagepipe upload` and `imagepipe status` send their requests: the dev pipeline or a stack.

`--dev` reads the outputs file `imagepipe dev` writes; `--stack NAME` asks the
Pulumi CLI for a deployed stack's outputs and uses the usual AWS credentials.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from functions.local.dev import DEFAULT_OUTPUTS
from functions.local.emulated_aws import boto3_client


class TargetError(Exception):
    """The pipeline to talk to cannot be found; the message says what to do."""


@dataclass(frozen=True)
class PipelineTarget:
    uploads_bucket: str
    records_table: str
    cdn_url: str
    uploads_prefix: str = ""  # keys outside it trigger nothing
    endpoint: str | None = None  # None: real AWS, with the default credential chain
    region: str | None = None
    events_topic: str | None = None

    @classmethod
    def from_outputs(cls, outputs: dict[str, Any], origin: str) -> PipelineTarget:
        missing = [k for k in ("uploadsBucket", "recordsTable", "cdnUrl") if not outputs.get(k)]
        if missing:
            raise TargetError(f"{origin} has no {', '.join(missing)} output; is it an AWS stack?")
        return cls(
            uploads_bucket=str(outputs["uploadsBucket"]),
            records_table=str(outputs["recordsTable"]),
            cdn_url=str(outputs["cdnUrl"]).rstrip("/"),
            uploads_prefix=str(outputs.get("uploadsPrefix") or ""),
            endpoint=outputs.get("endpoint"),
            region=outputs.get("region"),
            events_topic=outputs.get("eventsTopic"),
        )

    # One client per service, made on first use: making a boto3 client takes ~15 ms, more
    # than an upload to the local pipeline, and clients are safe to share between threads.
    _clients: dict[str, Any] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )
    _clients_lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False, hash=False
    )

    def client(self, service: str) -> Any:
        with self._clients_lock:
            if service not in self._clients:
                self._clients[service] = self._new_client(service)
            return self._clients[service]

    def _new_client(self, service: str) -> Any:
        if self.endpoint:
            return boto3_client(service, self.endpoint, self.region or "us-east-1")
        import boto3
        from botocore.config import Config

        return boto3.client(
            service, region_name=self.region, config=Config(retries={"mode": "standard"})
        )

    def url(self, key: str) -> str:
        return f"{self.cdn_url}/{key}"


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--dev",
        action="store_true",
        help="the pipeline `imagepipe dev` runs on this machine (the default)",
    )
    where.add_argument(
        "--stack", metavar="NAME", help="a deployed AWS stack, via `pulumi stack output`"
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
    if not isinstance(outputs, dict) or not outputs.get("endpoint"):
        raise TargetError(f"{path} is not an outputs file written by `imagepipe dev`")
    return PipelineTarget.from_outputs(outputs, str(path))


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
