"""The stand-in for the Lambda service: asynchronous invocation of the real handler, and
the work queue's SQS event source mapping (`EventSourceMapping`, at the end).

moto cannot run Lambda code without Docker, so the uploads bucket notifies an
SQS queue instead, and these workers do what Lambda's async invoke does with
each event: call the handler, treat an exception as a failed attempt, retry
twice more with backoff, then send the event to the on-failure destination
(the dead-letter queue) in Lambda's destination record shape.

Retries are counted by the queue, not in memory: an attempt is one receive
(`ApproximateReceiveCount`), a failed attempt makes the message visible again
after the backoff, and the message is deleted only once the handler returned
or the event sits in the DLQ. A worker killed mid-attempt loses nothing: the
message reappears when its visibility timeout ends, as a Lambda timeout would.
Lambda waits about 1 and 2 minutes between attempts; here it is 1 and 2 seconds.
An event older than the maximum event age is not invoked again but dead-lettered
(condition `EventAgeExceeded`), as Lambda does.

A worker never dies of a failed call. Whatever goes wrong around an invocation (the
emulator refusing a receive, a delete, a visibility change or the dead-letter send) is
logged in one line, the worker backs off for a moment and goes on. A message whose
delete failed comes back after its visibility timeout and is invoked again, which is
safe because the handler is idempotent (a finished image is a duplicate, a no-op). A
failure that repeats is logged once, then not again until the call works again, so an
emulator that went away does not bury the terminal in tracebacks. A message that is
not a JSON object cannot ever be invoked (Lambda's Invoke refuses such a payload), so it
is dead-lettered at once, as it came, with the condition `InvalidRequestContent`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from time import monotonic
from typing import Any

from functions.aws import contract
from functions.local.workers import WorkerPool

Handler = Callable[[dict[str, Any], Any], Any]

MAX_ATTEMPTS = contract.MAX_ATTEMPTS  # the first try plus the retries the component sets
DEFAULT_RETRY_DELAYS: tuple[int, ...] = (1, 2)  # seconds after attempts 1 and 2
POLL_SECONDS = 1  # long-poll length: also how quickly stop() is noticed

log = logging.getLogger("imagepipe.dev")


@dataclass
class LambdaContext:
    """The attributes of Lambda's context object that handlers and Powertools read."""

    function_name: str
    invoked_function_arn: str
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    memory_limit_in_mb: int = 1024
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = ""
    timeout_seconds: int = 60
    _started: float = field(default_factory=monotonic)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_seconds - (monotonic() - self._started)) * 1000))


def failure_destination_record(
    event: Mapping[str, Any] | str,
    error: BaseException | None,
    *,
    condition: str = "RetriesExhausted",
    request_id: str,
    function_arn: str,
    attempts: int,
) -> dict[str, Any]:
    """What Lambda sends to an on-failure destination once retries are exhausted."""
    record: dict[str, Any] = {
        "version": "1.0",
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "requestContext": {
            "requestId": request_id,
            "functionArn": f"{function_arn}:$LATEST",
            "condition": condition,
            "approximateInvokeCount": attempts,
        },
        # A body that was not JSON is kept as it came, as a string.
        "requestPayload": dict(event) if isinstance(event, Mapping) else event,
    }
    if error is not None:
        record["responseContext"] = {
            "statusCode": 200,
            "executedVersion": "$LATEST",
            "functionError": "Unhandled",
        }
        record["responsePayload"] = {
            "errorMessage": str(error),
            "errorType": type(error).__name__,
            "stackTrace": traceback.format_exception(error)[-5:],
        }
    return record


def _about(context: LambdaContext) -> dict[str, str]:
    """What ties the Lambda service's line about an invocation to the handler's lines of it:
    the request id, under the key Powertools' JSON lines use."""
    return {"function_request_id": context.aws_request_id}


# What each queue call is, and what its failure means, as the log says it.
RECEIVE = "receiving from the trigger queue"
DELETE = "deleting a finished message (it comes back after its visibility timeout)"
DELAY_RETRY = "delaying a retry (the message comes back after its visibility timeout instead)"
DEAD_LETTER = "sending to the dead-letter queue (the message stays on the trigger queue)"
DELIVER = "delivering a message"  # anything else: a bug here, logged with its traceback once
# Pauses after 1, 2, 3 and more failed iterations in a row: brief, growing, bounded.


class AsyncInvoker(WorkerPool):
    """A small pool of threads that long-poll the trigger queue and invoke `handler`."""

    def __init__(
        self,
        *,
        sqs: Any,
        trigger_queue_url: str,
        dead_letter_queue_url: str,
        handler: Handler,
        function_name: str,
        function_arn: str,
        workers: int = 3,
        retry_delays: Sequence[int] = DEFAULT_RETRY_DELAYS,
        max_event_age_seconds: int,
    ) -> None:
        if len(retry_delays) < MAX_ATTEMPTS - 1:
            raise ValueError(f"retry_delays needs {MAX_ATTEMPTS - 1} entries")
        self._sqs = sqs
        self._trigger = trigger_queue_url
        self._dlq = dead_letter_queue_url
        self._handler = handler
        self._function_name = function_name
        self._function_arn = function_arn
        self._retry_delays = tuple(retry_delays)
        self._max_event_age_ms = max_event_age_seconds * 1000
        super().__init__("lambda-worker", workers, log, DELIVER)
        self.invocations = 0  # attempts made, for tests and the shutdown summary
        self._count_lock = threading.Lock()

    def _work_once(self, session: object) -> None:
        response = self._sqs_call(
            RECEIVE,
            "receive_message",
            QueueUrl=self._trigger,
            MaxNumberOfMessages=1,
            WaitTimeSeconds=POLL_SECONDS,
            AttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        )
        for message in response.get("Messages", []):
            self._deliver(message)

    def _sqs_call(self, call: str, method: str, **arguments: Any) -> Any:
        return self._call(call, getattr(self._sqs, method), **arguments)

    def _deliver(self, message: Mapping[str, Any]) -> None:
        attributes = message.get("Attributes", {})
        attempt = int(attributes.get("ApproximateReceiveCount", "1"))
        receipt = message["ReceiptHandle"]
        context = LambdaContext(self._function_name, self._function_arn)
        try:
            event = json.loads(message["Body"])
            if not isinstance(event, dict):
                raise ValueError(f"the body is a JSON {type(event).__name__}, not an object")
        except ValueError as error:
            # Retrying cannot help; the dead-letter queue keeps it for whoever put it there.
            log.error("a trigger queue message is not an event (%s); dead-lettered", error)
            self._dead_letter(message["Body"], error, context, 0, "InvalidRequestContent", receipt)
            return
        if event.get("Event") == "s3:TestEvent":
            # S3 sends it to queues and topics when a notification is set up, never to a
            # Lambda function: it only exists here because of the queue standing in for Lambda.
            self._sqs_call(DELETE, "delete_message", QueueUrl=self._trigger, ReceiptHandle=receipt)
            return
        age_ms = time.time() * 1000 - int(attributes.get("SentTimestamp", time.time() * 1000))
        if attempt > 1 and age_ms > self._max_event_age_ms:
            log.error(
                "event %s is past the maximum event age; dead-lettered",
                context.aws_request_id,
                extra=_about(context),
            )
            self._dead_letter(event, None, context, attempt - 1, "EventAgeExceeded", receipt)
            return
        with self._count_lock:
            self.invocations += 1
        try:
            self._handler(event, context)
        except (Exception, SystemExit) as error:  # noqa: BLE001 - any of them fails the attempt
            if attempt >= MAX_ATTEMPTS:
                log.error(
                    "invocation %s failed %d times (%s: %s); event sent to the dead-letter queue",
                    context.aws_request_id,
                    attempt,
                    type(error).__name__,
                    error,
                    extra=_about(context),
                )
                self._dead_letter(event, error, context, attempt, "RetriesExhausted", receipt)
            else:
                delay = self._retry_delays[attempt - 1]
                log.warning(
                    "invocation attempt %d failed (%s: %s); retrying in %d s",
                    attempt,
                    type(error).__name__,
                    error,
                    delay,
                    extra=_about(context),
                )
                self._sqs_call(
                    DELAY_RETRY,
                    "change_message_visibility",
                    QueueUrl=self._trigger,
                    ReceiptHandle=receipt,
                    VisibilityTimeout=delay,
                )
            return
        self._sqs_call(DELETE, "delete_message", QueueUrl=self._trigger, ReceiptHandle=receipt)

    def _dead_letter(
        self,
        event: Mapping[str, Any] | str,
        error: BaseException | None,
        context: LambdaContext,
        attempts: int,
        condition: str,
        receipt: str,
    ) -> None:
        """Send to the DLQ first, delete second: a crash in between duplicates, never loses."""
        record = failure_destination_record(
            event,
            error,
            condition=condition,
            request_id=context.aws_request_id,
            function_arn=self._function_arn,
            attempts=attempts,
        )
        self._sqs_call(
            DEAD_LETTER, "send_message", QueueUrl=self._dlq, MessageBody=json.dumps(record)
        )
        self._sqs_call(DELETE, "delete_message", QueueUrl=self._trigger, ReceiptHandle=receipt)


# --- The work queue's event source mapping ----------------------------------------------------

WORK_RECEIVE = "receiving from the work queue"
WORK_DELETE = "deleting processed work messages (they come back after their visibility timeout)"
WORK_DELIVER = "delivering a work batch"


def sqs_event_record(message: Mapping[str, Any], queue_arn: str) -> dict[str, Any]:
    """One received SQS message as Lambda's event source mapping hands it to the function."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": dict(message.get("Attributes", {})),
        "messageAttributes": {},
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": queue_arn.split(":")[3] if queue_arn.count(":") >= 5 else "",
    }


class EventSourceMapping(WorkerPool):
    """Lambda's SQS event source mapping for the work queue: at most `concurrency` handler
    invocations at once (the mapping's maximumConcurrency: one poller thread each), each
    with a batch of `batch_size` messages.

    The handler answers ReportBatchItemFailures; the messages it does not name are deleted,
    the ones it names (all of them, if it raised) are left for SQS, which delivers them
    again after the queue's visibility timeout and, once received WORK_MAX_RECEIVES times,
    moves them to the work queue's dead-letter queue by its own redrive policy.
    """

    def __init__(
        self,
        *,
        sqs: Any,
        queue_url: str,
        queue_arn: str,
        handler: Handler,
        function_name: str,
        function_arn: str,
        concurrency: int = contract.DEFAULT_BACKFILL_CONCURRENCY,
        batch_size: int = contract.WORK_BATCH_SIZE,
    ) -> None:
        self._sqs = sqs
        self._queue_url = queue_url
        self._queue_arn = queue_arn
        self._handler = handler
        self._function_name = function_name
        self._function_arn = function_arn
        self._batch_size = batch_size
        super().__init__("work-poller", concurrency, log, WORK_DELIVER)
        self.invocations = 0  # handler calls, each one Lambda invocation
        self._count_lock = threading.Lock()

    def _work_once(self, session: object) -> None:
        response = self._call(
            WORK_RECEIVE,
            self._sqs.receive_message,
            QueueUrl=self._queue_url,
            MaxNumberOfMessages=self._batch_size,
            WaitTimeSeconds=POLL_SECONDS,
            AttributeNames=["All"],
        )
        messages = response.get("Messages", [])  # type: ignore[attr-defined]
        if messages:
            self._invoke(messages)

    def _invoke(self, messages: Sequence[Mapping[str, Any]]) -> None:
        context = LambdaContext(self._function_name, self._function_arn)
        event = {"Records": [sqs_event_record(m, self._queue_arn) for m in messages]}
        with self._count_lock:
            self.invocations += 1
        try:
            result = self._handler(event, context)
            failed = {
                str(failure.get("itemIdentifier"))
                for failure in (result or {}).get("batchItemFailures", [])
            }
        except (Exception, SystemExit) as error:  # noqa: BLE001 - the whole batch failed
            log.warning(
                "work invocation %s failed (%s: %s); its %d messages come back after their "
                "visibility timeout",
                context.aws_request_id,
                type(error).__name__,
                error,
                len(messages),
                extra=_about(context),
            )
            return
        done = [m for m in messages if m["MessageId"] not in failed]
        if done:
            self._call(
                WORK_DELETE,
                self._sqs.delete_message_batch,
                QueueUrl=self._queue_url,
                Entries=[
                    {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(done)
                ],
            )
