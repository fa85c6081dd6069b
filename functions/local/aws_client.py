"""The local client of a pipeline on AWS: S3 for uploads, the DynamoDB records table, the
SNS events topic followed through an SQS queue of the command's own, and for backfill and
redrive the SQS work queue and the dead-letter queues.

boto3 is imported on first use, not with this module: `imagepipe process` never needs it.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components import outputs as output_names
from functions.aws.contract import OBJECT_INDEX, RECORDS_INDEXES, STATUS_INDEX
from functions.core.records import ImageRecord, MalformedEvent, ObjectRef, Status, record_id
from functions.local.target import (
    DeadLetter,
    EventFeed,
    PipelineTarget,
    TargetError,
    content_type_of,
    records_in_events,
    required_outputs,
    settings_output,
)

if TYPE_CHECKING:
    from functions.core.work import WorkItem

BATCH_GET_LIMIT = 100  # keys per BatchGetItem, DynamoDB's own maximum
SQS_BATCH_LIMIT = 10  # entries per SendMessageBatch / DeleteMessageBatch, and per receive
# How long a received dead letter stays hidden from other readers: ample for enqueueing its
# work again; a redrive that dies meanwhile leaves it to reappear, never lost.
DEAD_LETTER_VISIBILITY_SECONDS = 120

log = logging.getLogger("imagepipe")


def object_version(response: Mapping[str, Any]) -> str:
    """The handler's rule (`functions.aws.trigger`), applied to a PutObject/HeadObject answer."""
    from functions.aws.trigger import object_version as event_object_version

    return event_object_version({"versionId": response.get("VersionId"), "eTag": response["ETag"]})


@dataclass(frozen=True, kw_only=True)
class AwsPipelineTarget(PipelineTarget):
    cloud = "aws"
    records_table: str
    endpoint: str | None = None  # the emulator; None: real AWS, with the default credential chain
    region: str | None = None
    work_queue_url: str | None = None
    work_dead_letter_queue_url: str | None = None
    dead_letter_queue_url: str | None = None

    @classmethod
    def from_outputs(cls, outputs: Mapping[str, Any], origin: str) -> AwsPipelineTarget:
        required_outputs(
            outputs,
            (output_names.UPLOADS_BUCKET, output_names.RECORDS_TABLE, output_names.CDN_URL),
            origin,
            "aws",
        )
        topic = outputs.get(output_names.EVENTS_TOPIC) or None
        return cls(
            uploads_bucket=str(outputs[output_names.UPLOADS_BUCKET]),
            records_table=str(outputs[output_names.RECORDS_TABLE]),
            cdn_url=str(outputs[output_names.CDN_URL]).rstrip("/"),
            uploads_prefix=str(outputs.get(output_names.UPLOADS_PREFIX) or ""),
            endpoint=outputs.get("endpoint") or None,
            # A deployed stack exports no region; its topic's ARN names the one it lives in.
            region=outputs.get("region") or _arn_region(topic),
            events_topic=topic,
            settings_json=settings_output(outputs),
            work_queue_url=outputs.get(output_names.WORK_QUEUE) or None,
            work_dead_letter_queue_url=outputs.get(output_names.WORK_DEAD_LETTER_QUEUE) or None,
            dead_letter_queue_url=outputs.get(output_names.DEAD_LETTER_QUEUE) or None,
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
            from functions.local.emulated_aws import boto3_client

            return boto3_client(service, self.endpoint, self.region or "us-east-1")
        import boto3
        from botocore.config import Config

        return boto3.client(
            service, region_name=self.region, config=Config(retries={"mode": "standard"})
        )

    @property
    def is_dev(self) -> bool:
        return bool(self.endpoint)

    @property
    def where(self) -> str:
        return f"the dev pipeline at {self.endpoint}" if self.endpoint else "AWS"

    @property
    def service_errors(self) -> tuple[type[BaseException], ...]:
        from botocore.exceptions import BotoCoreError, ClientError

        return (BotoCoreError, ClientError)

    @property
    def records(self) -> DynamoDbRecordReader:
        return DynamoDbRecordReader(self.client("dynamodb"), self.records_table)

    def put(self, path: Path, key: str) -> str:
        response = self.client("s3").put_object(
            Bucket=self.uploads_bucket,
            Key=key,
            Body=path.read_bytes(),
            ContentType=content_type_of(path),
        )
        return record_id(self.uploads_bucket, key, object_version(response))

    def delete(self, key: str) -> None:
        self.client("s3").delete_object(Bucket=self.uploads_bucket, Key=key)

    def current_record_id(self, key: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client("s3").head_object(Bucket=self.uploads_bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return record_id(self.uploads_bucket, key, object_version(head))

    def follow_events(self) -> AbstractContextManager[EventFeed | None]:
        if self.is_dev and self.events_topic:
            return SqsEventFeed.for_target(self)
        return nullcontext()

    def object_url(self, key: str) -> str:
        return f"s3://{self.uploads_bucket}/{key}"

    # --- Operations: backfill and redrive --------------------------------------------------

    def list_uploads(self, prefix: str = "") -> Iterator[ObjectRef]:
        # The uploads bucket is not versioned (components/aws/pipeline.py): an object's
        # version is its ETag, as the trigger's event names it.
        from functions.aws.trigger import object_version as event_object_version

        pages = self.client("s3").get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.uploads_bucket, Prefix=prefix):
            for entry in page.get("Contents", []):
                yield ObjectRef(
                    bucket=self.uploads_bucket,
                    key=entry["Key"],
                    version=event_object_version({"eTag": entry["ETag"]}),
                    size=int(entry["Size"]),
                )

    def work_queue(self) -> SqsWorkQueue:
        if not self.work_queue_url:
            raise TargetError(
                f"{self.where} exports no {output_names.WORK_QUEUE} output; deploy this release "
                "of the stack (or restart `imagepipe dev`) first"
            )
        return SqsWorkQueue(self.client("sqs"), self.work_queue_url)

    def dead_letters(self) -> SqsDeadLetterQueue | None:
        queues = [
            url for url in (self.dead_letter_queue_url, self.work_dead_letter_queue_url) if url
        ]
        return SqsDeadLetterQueue(self.client("sqs"), queues) if queues else None


def _arn_region(arn: str | None) -> str | None:
    """arn:aws:sns:<region>:<account>:<name> -> <region>."""
    parts = (arn or "").split(":")
    if len(parts) > 3 and parts[0] == "arn" and parts[3]:
        return parts[3]
    return None


class DynamoDbRecordReader:
    """Reads the records table: many records in one BatchGetItem (waiting on 100 costs 1
    read, not 100), one status, newest first, from the `by-status` index, and one object
    key's records from `by-object`."""

    def __init__(self, client: Any, table: str) -> None:
        from boto3.dynamodb.types import TypeDeserializer

        self._dynamodb = client
        self.table = table
        self._deserialize = TypeDeserializer().deserialize

    @classmethod
    def for_target(cls, target: AwsPipelineTarget) -> DynamoDbRecordReader:
        return target.records

    def get_many(self, ids: Sequence[str]) -> dict[str, ImageRecord]:
        """The records that exist among `ids`; a key the table did not get to is read next time."""
        found: dict[str, ImageRecord] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), BATCH_GET_LIMIT):
            keys = [{"id": {"S": rid}} for rid in unique[start : start + BATCH_GET_LIMIT]]
            response = self._dynamodb.batch_get_item(
                RequestItems={self.table: {"Keys": keys, "ConsistentRead": True}}
            )
            for item in response.get("Responses", {}).get(self.table, []):
                record = self._record(item)
                found[record.id] = record
        return found

    def by_status(self, status: Status, limit: int) -> list[ImageRecord]:
        return [self._record(item) for item in self._query_by_status(status, limit)]

    def _query_by_status(self, status: Status, limit: int) -> Iterator[dict[str, Any]]:
        # A page stops at 1 MB as well as at Limit: follow the pages until `limit` items.
        status_key, _updated_key = RECORDS_INDEXES[STATUS_INDEX]
        request: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": STATUS_INDEX,
            "KeyConditionExpression": "#s = :s",
            "ExpressionAttributeNames": {"#s": status_key},
            "ExpressionAttributeValues": {":s": {"S": status.value}},
            "ScanIndexForward": False,  # the range key is updated_at: newest first
        }
        left = limit
        while left > 0:
            response = self._dynamodb.query(**request, Limit=left)
            items = response.get("Items", [])
            yield from items[:left]
            left -= len(items)
            if "LastEvaluatedKey" not in response:
                return
            request["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def for_object(self, bucket: str, key: str) -> list[ImageRecord]:
        """Every record of this object key, from the `by-object` index (all its pages)."""
        from functions.aws.adapters import object_name

        object_key, _updated_key = RECORDS_INDEXES[OBJECT_INDEX]
        request: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": OBJECT_INDEX,
            "KeyConditionExpression": "#o = :o",
            "ExpressionAttributeNames": {"#o": object_key},
            "ExpressionAttributeValues": {":o": {"S": object_name(bucket, key)}},
        }
        found: list[ImageRecord] = []
        while True:
            response = self._dynamodb.query(**request)
            found.extend(self._record(item) for item in response.get("Items", []))
            if "LastEvaluatedKey" not in response:
                return found
            request["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def _record(self, item: Mapping[str, Any]) -> ImageRecord:
        from functions.aws.adapters import from_dynamodb

        return ImageRecord.from_dict(
            from_dynamodb({name: self._deserialize(value) for name, value in item.items()})
        )


class SqsEventFeed:
    """The events topic, read through an SQS queue subscribed for this command alone and
    unsubscribed and deleted on exit (why: `functions.local.upload`)."""

    def __init__(self, sqs: Any, sns: Any, topic_arn: str) -> None:
        self._sqs = sqs
        self._sns = sns
        self._topic_arn = topic_arn
        self._queue_url: str | None = None
        self._subscription_arn: str | None = None

    @classmethod
    def for_target(cls, target: AwsPipelineTarget) -> SqsEventFeed:
        assert target.events_topic is not None
        return cls(target.client("sqs"), target.client("sns"), target.events_topic)

    def __enter__(self) -> SqsEventFeed:
        from functions.local.emulated_aws import subscribe_queue

        name = f"imagepipe-upload-{uuid.uuid4().hex[:12]}"
        self._queue_url = self._sqs.create_queue(QueueName=name)["QueueUrl"]
        try:
            self._subscription_arn = subscribe_queue(
                self._sns, self._sqs, self._topic_arn, self._queue_url
            )
        except Exception:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:  # best effort: the emulator may already be gone, taking both with it
            if self._subscription_arn:
                self._sns.unsubscribe(SubscriptionArn=self._subscription_arn)
            if self._queue_url:
                self._sqs.delete_queue(QueueUrl=self._queue_url)
        except (BotoCoreError, ClientError):
            pass
        self._queue_url = self._subscription_arn = None

    def receive(self, wait_seconds: int) -> list[ImageRecord]:
        response = self._sqs.receive_message(
            QueueUrl=self._queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_seconds
        )
        messages = response.get("Messages", [])
        if messages:
            self._sqs.delete_message_batch(
                QueueUrl=self._queue_url,
                Entries=[
                    {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]}
                    for n, m in enumerate(messages)
                ],
            )
        return records_in_events(m["Body"] for m in messages)


def _batch_failed(operation: str, failed: Sequence[Mapping[str, Any]]) -> Exception:
    """A batch call's Failed entries as the SDK's own error, which the commands report."""
    from botocore.exceptions import ClientError

    first = failed[0]
    return ClientError(
        {
            "Error": {
                "Code": str(first.get("Code", "BatchEntryFailed")),
                "Message": f"{len(failed)} entries failed; the first: {first.get('Message', '')}",
            }
        },
        operation,
    )


class SqsWorkQueue:
    """The function's work queue: WorkItems as message bodies, ten per SendMessageBatch."""

    def __init__(self, sqs: Any, queue_url: str) -> None:
        self._sqs = sqs
        self.queue_url = queue_url

    def enqueue(self, items: Sequence[WorkItem]) -> None:
        for start in range(0, len(items), SQS_BATCH_LIMIT):
            batch = items[start : start + SQS_BATCH_LIMIT]
            response = self._sqs.send_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(n), "MessageBody": item.to_json()} for n, item in enumerate(batch)
                ],
            )
            failed = response.get("Failed") or []
            if failed:
                raise _batch_failed("SendMessageBatch", failed)


class SqsDeadLetterQueue:
    """What ran out of retries, from the function's dead-letter queue (the S3 events Lambda
    gave up on) and the work queue's (the work items SQS moved after their last receive).

    A Lambda async DLQ message is the S3 event itself; an on-failure destination's record
    carries it under `requestPayload`; a work DLQ message is the WorkItem. Each comes back
    as work items that may take over the FAILED record its last attempt left.
    """

    def __init__(self, sqs: Any, queue_urls: Sequence[str]) -> None:
        self._sqs = sqs
        self.queue_urls = tuple(queue_urls)

    def receive(self, max_messages: int) -> list[DeadLetter]:
        letters: list[DeadLetter] = []
        for queue_url in self.queue_urls:
            while len(letters) < max_messages:
                response = self._sqs.receive_message(
                    QueueUrl=queue_url,
                    MaxNumberOfMessages=min(SQS_BATCH_LIMIT, max_messages - len(letters)),
                    VisibilityTimeout=DEAD_LETTER_VISIBILITY_SECONDS,
                    WaitTimeSeconds=0,
                )
                messages = response.get("Messages", [])
                if not messages:
                    break
                for message in messages:
                    letter = self._letter(queue_url, message)
                    if letter is not None:
                        letters.append(letter)
        return letters

    def _letter(self, queue_url: str, message: Mapping[str, Any]) -> DeadLetter | None:
        receipt = (queue_url, message["ReceiptHandle"])
        try:
            items = dead_letter_items(message["Body"])
        except MalformedEvent as error:
            log.warning(
                "removed dead letter %s from %s: %s", message.get("MessageId"), queue_url, error
            )
            self._delete(queue_url, [message["ReceiptHandle"]])
            return None
        if not items:
            # An S3 event of deletes only: no work item replays it, and it is not ours to drop.
            log.warning(
                "left dead letter %s in %s: it names no upload to process (a delete event?)",
                message.get("MessageId"),
                queue_url,
            )
            return None
        return DeadLetter(items, receipt)

    def remove(self, letters: Sequence[DeadLetter]) -> None:
        by_queue: dict[str, list[str]] = {}
        for letter in letters:
            queue_url, handle = letter.receipt
            by_queue.setdefault(queue_url, []).append(handle)
        for queue_url, handles in by_queue.items():
            self._delete(queue_url, handles)

    def _delete(self, queue_url: str, handles: Sequence[str]) -> None:
        for start in range(0, len(handles), SQS_BATCH_LIMIT):
            response = self._sqs.delete_message_batch(
                QueueUrl=queue_url,
                Entries=[
                    {"Id": str(n), "ReceiptHandle": handle}
                    for n, handle in enumerate(handles[start : start + SQS_BATCH_LIMIT])
                ],
            )
            failed = response.get("Failed") or []
            if failed:
                raise _batch_failed("DeleteMessageBatch", failed)


def dead_letter_items(body: str) -> tuple[WorkItem, ...]:
    """The work a dead letter stands for, each item allowed to take over a FAILED record;
    `MalformedEvent` (one sentence) when the body is none of the shapes a DLQ holds."""
    from functions.aws.trigger import is_test_event, object_refs
    from functions.core.service import Reclaim
    from functions.core.work import WorkItem, is_work_message

    try:
        message = json.loads(body)
    except ValueError:
        raise MalformedEvent("the message is not JSON") from None
    if is_work_message(message):
        item = WorkItem.from_json(body)
        return (WorkItem(item.ref, item.reclaim | {Reclaim.FAILED}),)
    if isinstance(message, dict) and "requestPayload" in message:
        message = message["requestPayload"]  # an on-failure destination's record
    if not isinstance(message, dict):
        raise MalformedEvent("the message is not an S3 event, a failure record or a work item")
    if is_test_event(message):
        raise MalformedEvent("it is the s3:TestEvent, which names no object")
    try:
        refs = object_refs(message)
    except (AttributeError, TypeError):  # a record that is not an object
        raise MalformedEvent("the S3 event's records are not S3 event records") from None
    return tuple(WorkItem(ref, frozenset({Reclaim.FAILED})) for ref in refs)
