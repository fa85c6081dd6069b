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

from functions.local.dev import DevPipeline
from functions.local.emulated_aws import boto3_client
from functions.local.lambda_service import Handler
from functions.local.stack_config import LocalStackConfig
from functions.local.target import PipelineTarget

UPLOADS_PREFIX = "incoming/"


class FaultInjection:
    """Wraps the real handler: an event naming a key in `failing` raises, as a crash would."""

    def __init__(self) -> None:
        self.failing: set[str] = set()
        self.attempts: dict[str, int] = {}
        self._lock = threading.Lock()

    def wrap(self, real: Handler) -> Handler:
        def handler(event: dict[str, Any], context: Any) -> Any:
            keys = [unquote_plus(r["s3"]["object"]["key"]) for r in event.get("Records", [])]
            for key in keys:
                if key in self.failing:
                    with self._lock:
                        self.attempts[key] = self.attempts.get(key, 0) + 1
                    raise RuntimeError(f"injected failure for {key}")
            return real(event, context)

        return handler


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
