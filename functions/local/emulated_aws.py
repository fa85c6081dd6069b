"""An emulated AWS on 127.0.0.1 (moto's server) and the resources `AwsImagePipeline` creates.

moto runs in this process, in a thread, so starting it takes milliseconds and
stopping it leaves nothing behind. Every client reaches it through botocore's
own `AWS_ENDPOINT_URL` with fake credentials: no request can leave loopback.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import threading
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

HOST = "127.0.0.1"
REGION = "us-east-1"
# moto accepts any credentials; these only have to exist so botocore can sign.
FAKE_CREDENTIALS: Mapping[str, str] = {
    "AWS_ACCESS_KEY_ID": "imagepipe-dev",
    "AWS_SECRET_ACCESS_KEY": "imagepipe-dev",
    "AWS_SESSION_TOKEN": "imagepipe-dev",
}
# Longer than the handler can take (the stack's function timeout), so a message is
# redelivered only when the worker holding it died.
TRIGGER_VISIBILITY_SECONDS = 60


class PortInUse(OSError):
    def __init__(self, port: int) -> None:
        super().__init__(
            f"port {port} on {HOST} is in use (another `imagepipe dev`?); pick another with --port"
        )
        self.port = port


def client_environment(endpoint: str) -> dict[str, str]:
    """The environment that points boto3 and the AWS CLI at the emulator."""
    return {
        **FAKE_CREDENTIALS,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }


def boto3_client(service: str, endpoint: str, region: str = REGION) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=FAKE_CREDENTIALS["AWS_SESSION_TOKEN"],
        config=Config(retries={"mode": "standard"}, max_pool_connections=32),
    )


class MotoServer:
    """moto's server in a thread on 127.0.0.1.

    Built from the same pieces as `moto.server.ThreadedMotoServer`, but binding the
    socket in the caller's thread: a busy port is an error here, not a dead thread.
    """

    def __init__(self, port: int) -> None:
        self.requested_port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._bound_port: int | None = None

    @property
    def port(self) -> int:
        if self._bound_port is None:
            raise RuntimeError("the emulator has not been started")
        return self._bound_port

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        # werkzeug logs every request at INFO; the pipeline's own logs are what matter here.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        app = DomainDispatcherApplication(create_backend_app)
        _ensure_port_free(self.requested_port)
        try:
            self._server = make_server(
                HOST, self.requested_port, app, threaded=True, request_handler=MotoRequestHandler
            )
        except SystemExit:
            # werkzeug prints its own message and exits when the bind fails: the port was
            # taken between the check above and here.
            raise PortInUse(self.requested_port) from None
        self._bound_port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="moto-server", daemon=True
        )
        self._thread.start()

    def stop(self, reset: bool = True) -> None:
        if self._server is None:
            return
        if reset:
            # The backends are process-global: forget this pipeline's buckets, tables and
            # queues, so a later pipeline in the same process starts from nothing.
            request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
            try:
                urllib.request.urlopen(request, timeout=5).close()
            except OSError:
                logging.getLogger("imagepipe.dev").warning("could not reset the emulator's state")
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None


def _ensure_port_free(port: int) -> None:
    """Bind the port the way the server will (SO_REUSEADDR, like werkzeug) to see if it is free."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise PortInUse(port) from None
            raise


@dataclass(frozen=True)
class PipelineResources:
    """Names and addresses of what the stack would create, as the emulator knows them."""

    uploads_bucket: str
    renditions_bucket: str
    records_table: str
    events_topic_arn: str
    dead_letter_queue_url: str
    dead_letter_queue_arn: str
    trigger_queue_url: str  # stands in for the S3 -> Lambda notification
    events_queue_url: str  # subscribed to the events topic, for watching events


def create_pipeline_resources(
    endpoint: str, name: str = "imagepipe", uploads_prefix: str = "", uploads_suffix: str = ""
) -> PipelineResources:
    """Create the component's resources with its role words: `<name>-uploads`, `-records`, ...

    The notification has the stack's prefix/suffix filter: a key outside it triggers nothing.
    """
    s3 = boto3_client("s3", endpoint)
    dynamodb = boto3_client("dynamodb", endpoint)
    sns = boto3_client("sns", endpoint)
    sqs = boto3_client("sqs", endpoint)

    uploads, renditions = f"{name}-uploads", f"{name}-renditions"
    for bucket in (uploads, renditions):
        s3.create_bucket(Bucket=bucket)

    table = f"{name}-records"
    dynamodb.create_table(
        TableName=table,
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

    topic_arn = sns.create_topic(Name=f"{name}-events")["TopicArn"]
    dlq_url = sqs.create_queue(
        QueueName=f"{name}-dlq", Attributes={"MessageRetentionPeriod": str(14 * 24 * 3600)}
    )["QueueUrl"]
    trigger_url = sqs.create_queue(
        QueueName=f"{name}-fn-invocations",
        Attributes={"VisibilityTimeout": str(TRIGGER_VISIBILITY_SECONDS)},
    )["QueueUrl"]
    events_url = sqs.create_queue(QueueName=f"{name}-events-watch")["QueueUrl"]

    notification: dict[str, Any] = {
        "Id": f"{name}-fn",
        "QueueArn": _queue_arn(sqs, trigger_url),
        "Events": ["s3:ObjectCreated:*"],
    }
    rules = [
        {"Name": name_, "Value": value}
        for name_, value in (("prefix", uploads_prefix), ("suffix", uploads_suffix))
        if value
    ]
    if rules:
        notification["Filter"] = {"Key": {"FilterRules": rules}}
    s3.put_bucket_notification_configuration(
        Bucket=uploads, NotificationConfiguration={"QueueConfigurations": [notification]}
    )
    sns.subscribe(
        TopicArn=topic_arn,
        Protocol="sqs",
        Endpoint=_queue_arn(sqs, events_url),
        Attributes={"RawMessageDelivery": "true"},
    )
    return PipelineResources(
        uploads_bucket=uploads,
        renditions_bucket=renditions,
        records_table=table,
        events_topic_arn=topic_arn,
        dead_letter_queue_url=dlq_url,
        dead_letter_queue_arn=_queue_arn(sqs, dlq_url),
        trigger_queue_url=trigger_url,
        events_queue_url=events_url,
    )


def _queue_arn(sqs: Any, url: str) -> str:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return str(attributes["Attributes"]["QueueArn"])


def drain_queue(sqs: Any, url: str, wait_seconds: int = 0) -> list[dict[str, Any]]:
    """Receive (and delete) every visible message; bodies parsed as JSON."""
    bodies: list[dict[str, Any]] = []
    while True:
        response = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_seconds
        )
        messages = response.get("Messages", [])
        if not messages:
            return bodies
        for message in messages:
            bodies.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        wait_seconds = 0
