"""`AwsPipelineTarget`'s operations half on moto: the settings output, the uploads listing,
the SQS work queue and the dead-letter queues redrive reads."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from botocore.exceptions import ClientError

from components import outputs as output_names
from functions.core.records import ObjectRef
from functions.core.service import Reclaim
from functions.core.settings import PipelineSettings
from functions.core.work import WorkItem
from functions.local.aws_client import AwsPipelineTarget, SqsWorkQueue
from functions.local.lambda_service import failure_destination_record
from functions.local.target import TargetError

from .conftest import EmulatedStack
from .test_s3_events import s3_record

pytestmark = pytest.mark.emulator


def a_target(stack: EmulatedStack, **outputs: Any) -> AwsPipelineTarget:
    return AwsPipelineTarget.from_outputs(
        {
            output_names.UPLOADS_BUCKET: stack.uploads,
            output_names.RECORDS_TABLE: stack.table,
            output_names.CDN_URL: "http://127.0.0.1:1",
            output_names.EVENTS_TOPIC: stack.topic_arn,
            output_names.DEAD_LETTER_QUEUE: stack.resources.dead_letter_queue_url,
            "endpoint": stack.env["AWS_ENDPOINT_URL"],
            "region": "us-east-1",
            **outputs,
        },
        "the test outputs",
    )


def received(stack: EmulatedStack, queue_url: str) -> list[str]:
    bodies: list[str] = []
    while batch := stack.sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
    ).get("Messages", []):
        bodies.extend(message["Body"] for message in batch)
    return bodies


def test_the_settings_come_from_the_settings_output(stack: EmulatedStack) -> None:
    settings = PipelineSettings(originals="archive")
    assert a_target(stack, settings=settings.to_json()).settings == settings
    # `pulumi stack output --json` may hand the JSON back as an object.
    as_object = json.loads(settings.to_json())
    assert a_target(stack, settings=as_object).settings == settings
    with pytest.raises(TargetError, match="no settings output"):
        _ = a_target(stack).settings


def test_every_upload_under_the_prefix_is_listed_as_the_trigger_names_it(
    stack: EmulatedStack,
) -> None:
    etags = {}
    for key in ("in/a.jpg", "in/b c.jpg", "elsewhere/c.jpg"):
        etags[key] = stack.s3.put_object(Bucket=stack.uploads, Key=key, Body=key.encode())["ETag"]
    stack.s3.put_object(Bucket=stack.renditions, Key="in/never.jpg", Body=b"x")
    listed = sorted(a_target(stack).list_uploads("in/"), key=lambda ref: ref.key)
    assert listed == [
        ObjectRef(stack.uploads, key, etags[key].strip('"'), len(key))
        for key in ("in/a.jpg", "in/b c.jpg")
    ]
    assert len(list(a_target(stack).list_uploads())) == 3


def test_the_work_queue_takes_items_ten_per_batch(stack: EmulatedStack) -> None:
    queue_url = stack.sqs.create_queue(QueueName="work-test")["QueueUrl"]
    items = [WorkItem(ObjectRef(stack.uploads, f"k{n}.jpg", f"{n:032x}", n + 1)) for n in range(23)]
    items[0] = WorkItem(items[0].ref, frozenset({Reclaim.STALE}))
    a_target(stack, workQueue=queue_url).work_queue().enqueue(items)
    bodies = received(stack, queue_url)
    assert len(bodies) == len(items)
    assert {WorkItem.from_json(body) for body in bodies} == set(items)


def test_a_target_without_a_work_queue_output_says_so(stack: EmulatedStack) -> None:
    with pytest.raises(TargetError, match="no workQueue output"):
        a_target(stack).work_queue()


class RefusingSqs:
    """An SQS client whose SendMessageBatch accepts all but the last entry."""

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
        last = Entries[-1]["Id"]
        return {
            "Successful": [{"Id": e["Id"]} for e in Entries[:-1]],
            "Failed": [{"Id": last, "Code": "InternalError", "Message": "try again"}],
        }


def test_an_entry_the_queue_refused_is_an_error() -> None:
    item = WorkItem(ObjectRef("b", "k", "v"))
    with pytest.raises(ClientError, match="1 entries failed"):
        SqsWorkQueue(RefusingSqs(), "url").enqueue([item, item])


def test_dead_letters_of_every_shape_come_back_as_failed_work(
    stack: EmulatedStack, caplog: pytest.LogCaptureFixture
) -> None:
    dlq = stack.resources.dead_letter_queue_url
    work_dlq = stack.sqs.create_queue(QueueName="work-dlq-test")["QueueUrl"]
    two_uploads = {"Records": [s3_record("a+b.jpg"), s3_record("c.jpg")]}
    for body in (
        two_uploads,  # a Lambda async DLQ message: the event itself
        failure_destination_record(
            {"Records": [s3_record("d.jpg")]},
            RuntimeError("x"),
            request_id="r",
            function_arn="arn:aws:lambda:us-east-1:1:function:f",
            attempts=3,
        ),
        {"Records": [s3_record("gone.jpg", event_name="ObjectRemoved:Delete")]},
        {"Event": "s3:TestEvent"},
        ["not", "an", "event"],
    ):
        stack.sqs.send_message(QueueUrl=dlq, MessageBody=json.dumps(body))
    stack.sqs.send_message(QueueUrl=dlq, MessageBody="{not json")
    work = WorkItem(ObjectRef("uploads", "e.jpg", "e" * 32, 5))
    stack.sqs.send_message(QueueUrl=work_dlq, MessageBody=work.to_json())

    queue = a_target(stack, workDeadLetterQueue=work_dlq).dead_letters()
    assert queue is not None
    with caplog.at_level(logging.WARNING, logger="imagepipe"):
        letters = queue.receive(50)
    keys = sorted(item.ref.key for letter in letters for item in letter.items)
    assert keys == ["a b.jpg", "c.jpg", "d.jpg", "e.jpg"]
    assert all(Reclaim.FAILED in item.reclaim for letter in letters for item in letter.items)
    removed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("removed")]
    assert len(removed) == 3 and all("\n" not in line for line in removed)
    queue.remove(letters)
    # What is left (received, so hidden for now): the delete event, which no work item replays.
    counts = {
        url: stack.sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        for url in (dlq, work_dlq)
    }
    assert sum(int(n) for n in counts[dlq].values()) == 1
    assert sum(int(n) for n in counts[work_dlq].values()) == 0
