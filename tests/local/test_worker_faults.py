"""The Lambda workers outlive every failed queue call: they log it once, back off and go on.

The invoker runs here on queues of its own in the package's emulator, through the real
SQS client wrapped in `FaultySqs`, which fails the first calls of the methods it is
told to; the handler is a fake that records what it was invoked with.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError

from functions.local.dev import DevPipeline
from functions.local.emulated_aws import boto3_client, drain_queue
from functions.local.lambda_service import AsyncInvoker
from tests.local.conftest import wait_for

pytestmark = [pytest.mark.emulator, pytest.mark.timeout(60)]

WORKERS = 3


class FaultySqs:
    """The real SQS client, except that the next `fail_next(method, n)` calls of a method fail
    as a call to an emulator that is not answering does, and that `answer_receives` queues
    answers that receive_message gives before asking the real queue."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self._left: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.canned_receives: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()

    def fail_next(self, method: str, times: int) -> None:
        with self._lock:
            self._left[method] += times

    def answer_receives(self, *answers: dict[str, Any]) -> None:
        self.canned_receives.extend(answers)

    def __getattr__(self, method: str) -> Any:
        real = getattr(self._real, method)

        def call(**arguments: Any) -> Any:
            with self._lock:
                fail = self._left[method] > 0
                if fail:
                    self._left[method] -= 1
                    self.failed[method] += 1
            if fail:
                raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9/injected")
            if method == "receive_message":
                try:
                    return self.canned_receives.popleft()
                except IndexError:
                    pass
            return real(**arguments)

        return call


class RecordingHandler:
    """Invoked with `{"key": ...}` events; fails for keys in `failing` (always) and in
    `flaky` (the first time only)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.failing: set[str] = set()
        self.flaky: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        key = event["key"]
        with self._lock:
            self.calls[key] += 1
            first = self.calls[key] == 1
        if key in self.failing or (key in self.flaky and first):
            raise RuntimeError(f"injected failure for {key}")
        return {"ok": key}


class Queues:
    def __init__(self, sqs: Any, trigger: str, dlq: str) -> None:
        self.sqs, self.trigger, self.dlq = sqs, trigger, dlq

    def send(self, *keys: str) -> None:
        for key in keys:
            self.sqs.send_message(QueueUrl=self.trigger, MessageBody=json.dumps({"key": key}))

    def trigger_is_empty(self) -> bool:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.trigger,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return set(attributes.values()) == {"0"}


@pytest.fixture
def queues(dev_pipeline: DevPipeline) -> Iterator[Queues]:
    sqs = boto3_client("sqs", dev_pipeline.endpoint)
    name = f"faults-{uuid.uuid4().hex[:8]}"
    # A one-second visibility timeout: a message whose delete failed is back in a second.
    trigger = sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    yield Queues(sqs, trigger, dlq)
    for url in (trigger, dlq):
        sqs.delete_queue(QueueUrl=url)


@pytest.fixture
def faulty(queues: Queues) -> FaultySqs:
    return FaultySqs(queues.sqs)


@pytest.fixture
def handler() -> RecordingHandler:
    return RecordingHandler()


@pytest.fixture
def invoker(queues: Queues, faulty: FaultySqs, handler: RecordingHandler) -> Iterator[AsyncInvoker]:
    invoker = AsyncInvoker(
        sqs=faulty,
        trigger_queue_url=queues.trigger,
        dead_letter_queue_url=queues.dlq,
        handler=handler,
        function_name="faults-fn",
        function_arn="arn:aws:lambda:us-east-1:123456789012:function:faults-fn",
        workers=WORKERS,
        retry_delays=(1, 1),
        max_event_age_seconds=3600,
    )
    invoker.start()
    yield invoker
    invoker.stop(timeout=10)
    assert invoker.workers_alive == 0


def test_failed_deletes_visibility_changes_and_dead_letter_sends_kill_no_worker(
    queues: Queues, faulty: FaultySqs, handler: RecordingHandler, invoker: AsyncInvoker
) -> None:
    # More failed deletes than there are workers: each of them used to end a worker.
    faulty.fail_next("delete_message", WORKERS + 1)
    keys = [f"ok-{n}" for n in range(6)]
    queues.send(*keys)
    assert wait_for(lambda: queues.trigger_is_empty() and faulty.failed["delete_message"] > 0, 15)
    assert faulty.failed["delete_message"] == WORKERS + 1
    assert invoker.workers_alive == WORKERS
    # A message whose delete failed came back and was invoked again: a duplicate, not a loss.
    assert set(handler.calls) == set(keys)
    assert sum(handler.calls[k] for k in keys) == len(keys) + WORKERS + 1

    # A failed attempt whose retry delay cannot be set comes back after the visibility timeout.
    handler.flaky.add("flaky")
    faulty.fail_next("change_message_visibility", 1)
    queues.send("flaky")
    assert wait_for(lambda: handler.calls["flaky"] == 2 and queues.trigger_is_empty(), 15)
    assert faulty.failed["change_message_visibility"] == 1

    # Retries exhausted and the dead-letter send fails: the event stays queued, comes back,
    # and reaches the dead-letter queue the next time; it is never dropped.
    handler.failing.add("doomed")
    faulty.fail_next("send_message", 1)
    queues.send("doomed")
    [dead] = wait_for(lambda: drain_queue(queues.sqs, queues.dlq, wait_seconds=1), 20)
    assert faulty.failed["send_message"] == 1
    assert dead["requestPayload"] == {"key": "doomed"}
    assert dead["requestContext"]["condition"] == "RetriesExhausted"
    assert handler.calls["doomed"] == 4  # three attempts, and one more after the failed send

    # A body that is not an event cannot ever be invoked: dead-lettered as it came, at once.
    queues.sqs.send_message(QueueUrl=queues.trigger, MessageBody="{not json")
    [bad] = wait_for(lambda: drain_queue(queues.sqs, queues.dlq, wait_seconds=1), 10)
    assert bad["requestPayload"] == "{not json"
    assert bad["requestContext"]["condition"] == "InvalidRequestContent"
    assert bad["responsePayload"]["errorType"] == "JSONDecodeError"

    # Every worker is still there, and later messages are handled exactly once.
    assert invoker.workers_alive == WORKERS
    later = [f"later-{n}" for n in range(6)]
    queues.send(*later)
    assert wait_for(lambda: all(handler.calls[k] for k in later) and queues.trigger_is_empty(), 15)
    assert [handler.calls[k] for k in later] == [1] * len(later)
    assert queues.trigger_is_empty()


def test_a_receive_outage_is_logged_once_and_its_end_once(
    queues: Queues,
    faulty: FaultySqs,
    handler: RecordingHandler,
    invoker: AsyncInvoker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="imagepipe.dev")
    failures = 3 * WORKERS  # three in a row per worker: 0.2 + 0.5 + 1 s of backing off
    faulty.fail_next("receive_message", failures)
    assert wait_for(lambda: faulty.failed["receive_message"] == failures, 15)
    queues.send("after-the-outage")
    assert wait_for(lambda: handler.calls["after-the-outage"] == 1, 15)

    lines = [r.getMessage() for r in caplog.records if r.name == "imagepipe.dev"]
    assert lines == [
        "receiving from the trigger queue failed (EndpointConnectionError: Could not connect "
        'to the endpoint URL: "http://127.0.0.1:9/injected"); not logged again until it works',
        f"receiving from the trigger queue works again, after {failures} failures "
        f"(EndpointConnectionError) in {lines[1].rsplit(' in ', 1)[1]}",
    ]
    assert all(r.exc_info is None for r in caplog.records)  # no traceback for an outage
    assert invoker.workers_alive == WORKERS


def test_an_unexpected_error_is_logged_with_its_traceback_once_and_the_worker_goes_on(
    queues: Queues,
    faulty: FaultySqs,
    handler: RecordingHandler,
    invoker: AsyncInvoker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="imagepipe.dev")
    # Messages without a receipt handle: a broken assumption of ours, not an outage.
    faulty.answer_receives(*[{"Messages": [{"Body": "{}"}]}] * 4)
    assert wait_for(lambda: not faulty.canned_receives, 10)
    queues.send("still-served")
    assert wait_for(lambda: handler.calls["still-served"] == 1, 15)

    errors = [r for r in caplog.records if r.name == "imagepipe.dev" and r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].getMessage().startswith("delivering a message failed (KeyError:")
    assert errors[0].exc_info is not None
    assert invoker.workers_alive == WORKERS
