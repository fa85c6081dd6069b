"""The local client of a pipeline on AWS: S3 for uploads, the DynamoDB records table, and
the SNS events topic followed through an SQS queue of the command's own.

boto3 is imported on first use, not with this module: `imagepipe process` never needs it.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components import outputs as output_names
from functions.aws.contract import RECORDS_INDEXES, STATUS_INDEX
from functions.core.records import ImageRecord, Status, record_id
from functions.local.target import (
    EventFeed,
    PipelineTarget,
    content_type_of,
    records_in_events,
    required_outputs,
)

BATCH_GET_LIMIT = 100  # keys per BatchGetItem, DynamoDB's own maximum


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


def _arn_region(arn: str | None) -> str | None:
    """arn:aws:sns:<region>:<account>:<name> -> <region>."""
    parts = (arn or "").split(":")
    if len(parts) > 3 and parts[0] == "arn" and parts[3]:
        return parts[3]
    return None


class DynamoDbRecordReader:
    """Reads the records table: many records in one BatchGetItem (waiting on 100 costs 1
    read, not 100), and one status, newest first, from the `by-status` index."""

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
