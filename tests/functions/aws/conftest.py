"""An emulated AWS stack on 127.0.0.1 (moto's server, real boto3 over HTTP) for the Lambda handler.

One moto server per session; every test starts from an empty emulator holding what the
AwsImagePipeline component creates, under fixed names, so the handler module's
module-scope pipeline stays valid from test to test.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer
from PIL import Image, ImageDraw

from functions.core.settings import PipelineSettings
from functions.local.lambda_service import LambdaContext

log = logging.getLogger(__name__)
# One line per emulated request would bury the lines that explain a failure.
logging.getLogger("werkzeug").setLevel(logging.WARNING)

REGION = "us-east-1"
UPLOADS = "imagepipe-test-uploads"
RENDITIONS = "imagepipe-test-renditions"
TABLE = "imagepipe-test-records"
TOPIC = "imagepipe-test-events"
DLQ = "imagepipe-test-dlq"
EVENTS_QUEUE = "imagepipe-test-events-subscriber"
NOTIFICATIONS_QUEUE = "imagepipe-test-uploads-notifications"


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    # Port 0: the OS picks a free port at bind time, so parallel runs never collide.
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def aws_env(moto_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The process environment a deployed function would have, pointed at moto."""
    no_config = tmp_path_factory.mktemp("aws") / "absent"  # ignore ~/.aws on this machine
    env = {
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": str(no_config),
        "AWS_SHARED_CREDENTIALS_FILE": str(no_config),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_LAMBDA_FUNCTION_NAME": "imagepipe-test-fn",
        "IMAGEPIPE_SETTINGS": PipelineSettings().to_json(),
        "IMAGEPIPE_RENDITIONS_BUCKET": RENDITIONS,
        "IMAGEPIPE_RECORDS_TABLE": TABLE,
        "IMAGEPIPE_EVENTS_TOPIC_ARN": f"arn:aws:sns:{REGION}:123456789012:{TOPIC}",
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("AWS_PROFILE", raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        yield env


@pytest.fixture(scope="session")
def handler_module(aws_env: dict[str, str]) -> Iterator[ModuleType]:
    """`functions.aws.handler`, imported with the emulator's environment.

    Its module-scope pipeline is rebuilt here in case another suite imported the module
    first with a different environment.
    """
    module = importlib.import_module("functions.aws.handler")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "PIPELINE", module.build_pipeline(os.environ))
        yield module


@pytest.fixture
def lambda_context() -> LambdaContext:
    return LambdaContext(
        function_name="imagepipe-test-fn",
        invoked_function_arn=f"arn:aws:lambda:{REGION}:123456789012:function:imagepipe-test-fn",
    )


class EmulatedStack:
    """What the component creates, created with boto3 against moto, plus test helpers."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.s3 = boto3.client("s3")
        self.dynamodb = boto3.client("dynamodb")
        self.sns = boto3.client("sns")
        self.sqs = boto3.client("sqs")
        self.topic_arn = env["IMAGEPIPE_EVENTS_TOPIC_ARN"]
        self.test_events: list[dict[str, Any]] = []

    def create(self) -> None:
        for bucket in (UPLOADS, RENDITIONS):
            self.s3.create_bucket(Bucket=bucket)
        self.dynamodb.create_table(
            TableName=TABLE,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[
                {"AttributeName": "id", "AttributeType": "S"},
                {"AttributeName": "status", "AttributeType": "S"},
                {"AttributeName": "updated_at", "AttributeType": "S"},
            ],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": "by-status",
                    "KeySchema": [
                        {"AttributeName": "status", "KeyType": "HASH"},
                        {"AttributeName": "updated_at", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
        )
        assert self.sns.create_topic(Name=TOPIC)["TopicArn"] == self.topic_arn
        self.sqs.create_queue(QueueName=DLQ, Attributes={"MessageRetentionPeriod": "1209600"})
        self.events_queue = self.sqs.create_queue(QueueName=EVENTS_QUEUE)["QueueUrl"]
        # Raw delivery off: the SNS envelope shows the message attributes subscribers filter on.
        self.sns.subscribe(
            TopicArn=self.topic_arn, Protocol="sqs", Endpoint=self._queue_arn(self.events_queue)
        )
        # Stands in for the Lambda trigger: moto cannot run Lambda code without Docker.
        self.notifications_queue = self.sqs.create_queue(QueueName=NOTIFICATIONS_QUEUE)["QueueUrl"]
        self.s3.put_bucket_notification_configuration(
            Bucket=UPLOADS,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {
                        "QueueArn": self._queue_arn(self.notifications_queue),
                        "Events": ["s3:ObjectCreated:*"],
                    }
                ]
            },
        )
        # S3 announces a new notification configuration with an s3:TestEvent.
        self.test_events = self.drain(self.notifications_queue)

    def _queue_arn(self, url: str) -> str:
        attributes = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        return attributes["Attributes"]["QueueArn"]

    def drain(self, queue_url: str) -> list[dict[str, Any]]:
        """Every message now on the queue, parsed and deleted."""
        bodies: list[dict[str, Any]] = []
        while True:
            batch = self.sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            ).get("Messages", [])
            if not batch:
                return bodies
            for message in batch:
                bodies.append(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])

    def upload(self, key: str, data: bytes, *, with_cli: bool = False) -> dict[str, Any]:
        """Upload, then return the S3 event the upload caused.

        `with_cli` uploads the way the README tells users to (`aws s3 cp`); it costs a
        second or so of CLI start-up, so only the tests about the user's path use it.
        """
        aws = shutil.which("aws") if with_cli else None
        if with_cli and aws is None:
            log.warning("the AWS CLI is not on PATH; uploading %s with boto3 instead", key)
        if aws is None:
            self.s3.put_object(Bucket=UPLOADS, Key=key, Body=data)
        else:
            source = self.workdir / "upload.bin"
            source.write_bytes(data)
            subprocess.run(
                [
                    aws,
                    "s3",
                    "cp",
                    "--only-show-errors",
                    "--endpoint-url",
                    self.env["AWS_ENDPOINT_URL"],
                    str(source),
                    f"s3://{UPLOADS}/{key}",
                ],
                env={**os.environ, **self.env},
                check=True,
                capture_output=True,
                timeout=60,
            )
        (event,) = self.drain(self.notifications_queue)
        return event

    def published_events(self) -> list[dict[str, Any]]:
        """The events that reached the topic's SQS subscriber, unwrapped from their envelopes."""
        return [
            {
                "event": json.loads(envelope["Message"]),
                "type_attribute": envelope["MessageAttributes"]["type"]["Value"],
                "message_bytes": len(envelope["Message"].encode()),
            }
            for envelope in self.drain(self.events_queue)
        ]

    def items(self) -> list[dict[str, Any]]:
        return self.dynamodb.scan(TableName=TABLE, ConsistentRead=True)["Items"]

    def rendition_keys(self) -> list[str]:
        listing = self.s3.list_objects_v2(Bucket=RENDITIONS)
        return sorted(entry["Key"] for entry in listing.get("Contents", []))


@pytest.fixture
def stack(aws_env: dict[str, str], tmp_path: Path) -> EmulatedStack:
    """An empty emulator holding a freshly created stack."""
    reset = urllib.request.Request(f"{aws_env['AWS_ENDPOINT_URL']}/moto-api/reset", method="POST")
    with urllib.request.urlopen(reset, timeout=10):
        pass
    emulated = EmulatedStack(aws_env, tmp_path)
    emulated.create()
    return emulated


@pytest.fixture(scope="session")
def photo_jpeg() -> bytes:
    """A 1600x1200 photo-like JPEG: a shape on a gradient, so the encoder has real work to do."""
    width, height = 1600, 1200
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse((width // 4, height // 4, width * 3 // 4, height * 3 // 4), fill=(200, 40, 40))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()
