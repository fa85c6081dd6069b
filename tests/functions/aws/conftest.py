"""An emulated AWS stack on 127.0.0.1 (moto's server, real boto3 over HTTP) for the Lambda handler.

One moto server per session; every test starts from an empty emulator holding what the
AwsImagePipeline component creates, as `imagepipe dev` creates it
(`create_pipeline_resources`), under the same names every time, so the handler module's
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
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer
from PIL import Image, ImageDraw

from functions.aws import contract
from functions.aws.bootstrap import build_pipeline
from functions.aws.contract import from_env
from functions.core.settings import PipelineSettings
from functions.local.emulated_aws import PipelineResources, create_pipeline_resources, drain_queue
from functions.local.lambda_service import LambdaContext

log = logging.getLogger(__name__)
# One line per emulated request would bury the lines that explain a failure.
logging.getLogger("werkzeug").setLevel(logging.WARNING)

REGION = "us-east-1"
# The stack's name: its resources are `imagepipe-test-uploads`, `-records`, ...
STACK_NAME = "imagepipe-test"


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
def resources(moto_url: str) -> PipelineResources:
    """The names and addresses of the stack's resources, as every test's fresh stack has them.

    Created once here only to learn them: the handler's environment (and so its module-scope
    pipeline) is built from these before any test runs; `stack` re-creates them per test.
    """
    return create_pipeline_resources(moto_url, name=STACK_NAME)


@pytest.fixture(scope="session")
def aws_env(
    moto_url: str, resources: PipelineResources, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
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
        contract.FUNCTION_NAME: "imagepipe-test-fn",
        **contract.to_env(
            settings=PipelineSettings(),
            renditions_bucket=resources.renditions_bucket,
            records_table=resources.records_table,
            events_topic_arn=resources.events_topic_arn,
        ),
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("AWS_PROFILE", raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        yield env


@pytest.fixture(scope="session")
def handler_module(aws_env: dict[str, str]) -> Iterator[ModuleType]:
    """`functions.aws.main`, imported with the emulator's environment.

    Its module-scope pipeline is rebuilt here in case another suite imported the module
    first with a different environment.
    """
    module = importlib.import_module("functions.aws.main")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "PIPELINE", build_pipeline(from_env(os.environ)))
        yield module


@pytest.fixture(autouse=True)
def no_metrics_left_behind() -> Iterator[None]:
    """A test that calls handle_event directly records metrics no handler flushes; they would
    stay in the module's metric set for a later suite to find."""
    yield
    main = sys.modules.get("functions.aws.main")
    if main is not None:
        main.metrics.clear_metrics()


@pytest.fixture
def lambda_context() -> LambdaContext:
    return LambdaContext(
        function_name="imagepipe-test-fn",
        invoked_function_arn=f"arn:aws:lambda:{REGION}:123456789012:function:imagepipe-test-fn",
    )


class EmulatedStack:
    """What the component creates (`create_pipeline_resources`) on moto, plus test helpers."""

    def __init__(self, env: dict[str, str], resources: PipelineResources, workdir: Path) -> None:
        self.env = env
        self.resources = resources
        self.workdir = workdir
        self.s3 = boto3.client("s3")
        self.dynamodb = boto3.client("dynamodb")
        self.sns = boto3.client("sns")
        self.sqs = boto3.client("sqs")
        self.uploads = resources.uploads_bucket
        self.renditions = resources.renditions_bucket
        self.table = resources.records_table
        self.topic_arn = resources.events_topic_arn
        self.test_events: list[dict[str, Any]] = []

    def create(self) -> None:
        created = create_pipeline_resources(self.env["AWS_ENDPOINT_URL"], name=STACK_NAME)
        # The handler's module-scope pipeline was built from the session's names.
        assert created == self.resources
        # S3 announces a new notification configuration with an s3:TestEvent.
        self.test_events = drain_queue(self.sqs, self.resources.trigger_queue_url)

    def upload(self, key: str, data: bytes, *, with_cli: bool = False) -> dict[str, Any]:
        """Upload, then return the S3 event the upload caused.

        `with_cli` uploads the way the README tells users to (`aws s3 cp`); it costs a
        second or so of CLI start-up, so only the tests about the user's path use it.
        """
        aws = shutil.which("aws") if with_cli else None
        if with_cli and aws is None:
            log.warning("the AWS CLI is not on PATH; uploading %s with boto3 instead", key)
        if aws is None:
            self.s3.put_object(Bucket=self.uploads, Key=key, Body=data)
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
                    f"s3://{self.uploads}/{key}",
                ],
                env={**os.environ, **self.env},
                check=True,
                capture_output=True,
                timeout=60,
            )
        (event,) = drain_queue(self.sqs, self.resources.trigger_queue_url)
        return event

    def published_events(self) -> list[dict[str, Any]]:
        """The events that reached the topic's SQS subscriber, with their `type` attribute.

        The subscription delivers raw messages (as the stack's consumers get them): the body
        is the event itself and SNS's message attributes arrive as SQS message attributes.
        """
        received: list[dict[str, Any]] = []
        while True:
            batch = self.sqs.receive_message(
                QueueUrl=self.resources.events_queue_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=0,
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            if not batch:
                return received
            for message in batch:
                received.append(
                    {
                        "event": json.loads(message["Body"]),
                        "body": message["Body"].encode(),
                        "type_attribute": message["MessageAttributes"]["type"]["StringValue"],
                        "message_bytes": len(message["Body"].encode()),
                    }
                )
                self.sqs.delete_message(
                    QueueUrl=self.resources.events_queue_url,
                    ReceiptHandle=message["ReceiptHandle"],
                )

    def items(self) -> list[dict[str, Any]]:
        """The table's image records (not the content reference items beside them)."""
        return [
            item
            for item in self.all_items()
            if not item["id"]["S"].startswith(contract.CONTENT_REFERENCE_PREFIX)
        ]

    def all_items(self) -> list[dict[str, Any]]:
        return self.dynamodb.scan(TableName=self.table, ConsistentRead=True)["Items"]

    def rendition_keys(self) -> list[str]:
        listing = self.s3.list_objects_v2(Bucket=self.renditions)
        return sorted(entry["Key"] for entry in listing.get("Contents", []))


@pytest.fixture
def stack(aws_env: dict[str, str], resources: PipelineResources, tmp_path: Path) -> EmulatedStack:
    """An empty emulator holding a freshly created stack."""
    reset = urllib.request.Request(f"{aws_env['AWS_ENDPOINT_URL']}/moto-api/reset", method="POST")
    with urllib.request.urlopen(reset, timeout=10):
        pass
    emulated = EmulatedStack(aws_env, resources, tmp_path)
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
