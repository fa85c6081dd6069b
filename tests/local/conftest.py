"""One dev pipeline for the whole tests/local package: moto on a free 127.0.0.1 port, the
real Lambda handler behind a fault injector, the CDN stand-in.

One per package, not per test: a pipeline owns process-wide state (the handler module,
moto's backends, the AWS_* environment), exactly as one Lambda sandbox would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote_plus

import pytest

from functions.local.dev import DevPipeline, GcpDevPipeline
from functions.local.emulated_aws import boto3_client
from functions.local.emulated_gcp import missing_tools
from functions.local.lambda_service import Handler
from functions.local.stack_config import LocalStackConfig
from functions.local.target import PipelineTarget
from tests.conftest import require

UPLOADS_PREFIX = "incoming/"


class FaultInjection:
    """Wraps the real handler: an event naming a key in `failing` raises, as a crash would;
    one naming a key in `outages` meets that AWS service unreachable, for that many attempts
    (the real handler's code, with that service's client pointed at a closed port)."""

    def __init__(self) -> None:
        self.failing: set[str] = set()
        self.attempts: dict[str, int] = {}
        self.outages: dict[str, tuple[str, int]] = {}  # key -> (s3 | dynamodb | sns, attempts)
        self._lock = threading.Lock()

    def wrap(self, real: Handler) -> Handler:
        def handler(event: dict[str, Any], context: Any) -> Any:
            keys = [unquote_plus(r["s3"]["object"]["key"]) for r in event.get("Records", [])]
            for key in keys:
                if key in self.failing:
                    with self._lock:
                        self.attempts[key] = self.attempts.get(key, 0) + 1
                    raise RuntimeError(f"injected failure for {key}")
                if key in self.outages:
                    service, failing_attempts = self.outages[key]
                    with self._lock:
                        self.attempts[key] = self.attempts.get(key, 0) + 1
                        during_outage = self.attempts[key] <= failing_attempts
                    if during_outage:
                        return _with_service_down(service, event, context)
            return real(event, context)

        return handler


def _with_service_down(service: str, event: dict[str, Any], context: Any) -> Any:
    """The handler's own event handling, with one service's client unreachable."""
    import dataclasses
    import socket

    import boto3
    from botocore.config import Config

    from functions.aws import main
    from functions.aws.adapters import DynamoDbRecordStore, S3BlobStore, SnsEventPublisher

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    config = Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=1)
    client = boto3.client(service, endpoint_url=closed, config=config)
    pipeline = main.PIPELINE
    down = {
        "s3": lambda: dataclasses.replace(pipeline, blobs=S3BlobStore(client)),
        "dynamodb": lambda: dataclasses.replace(
            pipeline, records=DynamoDbRecordStore(client, pipeline.records.table)
        ),
        "sns": lambda: dataclasses.replace(
            pipeline, events=SnsEventPublisher(client, pipeline.events.topic_arn)
        ),
    }[service]()
    return main.handle_event(event, down, main.lease_for(context))


@pytest.fixture(scope="package")
def faults() -> FaultInjection:
    return FaultInjection()


@pytest.fixture(scope="package")
def dev_pipeline(faults: FaultInjection) -> Iterator[DevPipeline]:
    pipeline = DevPipeline(
        port=0,
        stack=LocalStackConfig(uploads_prefix=UPLOADS_PREFIX),
        wrap_handler=faults.wrap,
        retry_delays=(1, 1),
        log_level="WARNING",
    )
    with pipeline:
        yield pipeline


@pytest.fixture(scope="package")
def gcp_dev_pipeline() -> Iterator[GcpDevPipeline]:
    """An emulated GCP pipeline shared by the tests that only use it (the API, the page)."""
    missing = missing_tools()
    require(None if missing is None else f"the emulated GCP cannot start here: {missing}")
    with GcpDevPipeline(stack=LocalStackConfig(uploads_prefix=UPLOADS_PREFIX)) as pipeline:
        yield pipeline


@pytest.fixture(scope="package")
def target(dev_pipeline: DevPipeline) -> PipelineTarget:
    return PipelineTarget.from_outputs(dev_pipeline.outputs(), "the test pipeline")


@pytest.fixture
def sqs(dev_pipeline: DevPipeline) -> Any:
    return boto3_client("sqs", dev_pipeline.endpoint)


def wait_for(condition: Any, timeout: float, interval: float = 0.1) -> Any:
    """Poll until `condition()` is truthy; returns its value, or None after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    return None
