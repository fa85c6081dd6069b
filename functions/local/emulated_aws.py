"""An emulated AWS on 127.0.0.1 (moto's server) and the resources `AwsImagePipeline` creates.

moto runs in a child process of its own (see `MotoServer`), started in under a
second and stopped with its whole process group, so it leaves nothing behind.
Every client reaches it through botocore's own `AWS_ENDPOINT_URL` with fake
credentials: no request can leave loopback.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from functions.aws import contract

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
# The work queue's: a message its handler reported failed comes back after this long, as
# from a real work queue (whose timeout is six times the function's: minutes, not seconds).
WORK_VISIBILITY_SECONDS = 30
DEAD_LETTER_RETENTION_SECONDS = 14 * 24 * 3600  # SQS's longest


class PortInUse(OSError):
    def __init__(self, port: int, option: str = "--port") -> None:
        super().__init__(
            f"port {port} on {HOST} is in use (another `imagepipe dev`?); pick another with "
            f"{option}"
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


# What runs in the emulator's process: moto's WSGI app on the socket the parent bound and
# passed down (argv[1] is its file descriptor). It says "ready" once it can answer, and
# exits when its stdin closes, so it cannot outlive a parent that was killed outright.
_EMULATOR_PROCESS_CODE = """
import logging, os, sys, threading
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication, MotoRequestHandler, create_backend_app,
)
from werkzeug.serving import make_server

logging.getLogger("werkzeug").setLevel(logging.WARNING)
server = make_server(
    "127.0.0.1", 0, DomainDispatcherApplication(create_backend_app),
    threaded=True, request_handler=MotoRequestHandler, fd=int(sys.argv[1]),
)
def exit_with_parent():
    sys.stdin.buffer.read()
    os._exit(0)
threading.Thread(target=exit_with_parent, daemon=True).start()
print("ready", flush=True)
server.serve_forever()
"""
READY_TIMEOUT_SECONDS = 30
EMULATOR_PROCESS_TAG = "imagepipe-emulated-aws:"


class MotoServer:
    """moto's server in a process of its own, listening on 127.0.0.1.

    Its own process, not a thread: the handler's Python work and moto's request
    handling then run on two cores instead of taking turns on one GIL. This
    process binds the socket (a busy port is an error here, at once) and hands it
    to the child, so the port is known and connections queue before moto has even
    been imported. The child leads its own process group; `stop()` ends the group.
    Stopping forgets every bucket, table and queue with the process.
    """

    def __init__(self, port: int) -> None:
        self.requested_port = port
        self._process: subprocess.Popen[bytes] | None = None
        self._bound_port: int | None = None

    @property
    def port(self) -> int:
        if self._bound_port is None:
            raise RuntimeError("the emulator has not been started")
        return self._bound_port

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        listener = _listen(self.requested_port)
        with listener:
            self._bound_port = int(listener.getsockname()[1])
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-P",
                    "-c",
                    _EMULATOR_PROCESS_CODE,
                    str(listener.fileno()),
                    # Not read by the child: names it in `ps` (and for the tests).
                    f"{EMULATOR_PROCESS_TAG}{self._bound_port}",
                ],
                pass_fds=(listener.fileno(),),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                start_new_session=True,  # its own process group: Ctrl-C reaches us, not it
            )
        # The child holds the socket now; ours is closed, so nothing is left listening
        # once the child has gone.
        if not self._wait_until_ready():
            self.stop()
            raise RuntimeError("the emulated AWS (moto) did not start; see the messages above")

    def _wait_until_ready(self) -> bool:
        assert self._process is not None and self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], READY_TIMEOUT_SECONDS)
        return bool(ready) and self._process.stdout.readline().strip() == b"ready"

    def exit_code(self) -> int | None:
        """None while the emulator runs; once it has ended, its exit status (minus the signal
        number if a signal ended it), and it is reaped: no zombie is left behind."""
        process = self._process
        return None if process is None else process.poll()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        for sig, wait_seconds in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if process.poll() is not None:
                break  # ended and reaped already; its pid may belong to someone else by now
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break  # already gone, group and all
            try:
                process.wait(wait_seconds)
                break
            except subprocess.TimeoutExpired:
                continue
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
        process.wait()


def _listen(port: int) -> socket.socket:
    """A listening socket on HOST:port (0: any free port), bound as werkzeug would bind it."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((HOST, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise PortInUse(port) from None
            raise
        listener.listen(128)
        listener.set_inheritable(True)
    except BaseException:
        listener.close()
        raise
    return listener


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
    work_queue_url: str  # backfill and redrive; read by the event source mapping's stand-in
    work_queue_arn: str
    work_dead_letter_queue_url: str  # where SQS moves what was received WORK_MAX_RECEIVES times
    archive_bucket: str | None = None  # with originals: archive


def create_pipeline_resources(
    endpoint: str,
    name: str = "imagepipe",
    uploads_prefix: str = "",
    uploads_suffix: str = "",
    *,
    archive: bool = False,
    work_visibility_seconds: int = WORK_VISIBILITY_SECONDS,
) -> PipelineResources:
    """Create the component's resources with its role words: `<name>-uploads`, `-records`, ...

    The notification has the stack's prefix/suffix filter: a key outside it triggers nothing.
    It sends uploads and deletes to the queue standing in for the function, as the stack
    sends both to the function. `archive` adds the archive bucket (originals: archive).
    """
    s3 = boto3_client("s3", endpoint)
    dynamodb = boto3_client("dynamodb", endpoint)
    sns = boto3_client("sns", endpoint)
    sqs = boto3_client("sqs", endpoint)

    uploads, renditions = f"{name}-uploads", f"{name}-renditions"
    archive_bucket = f"{name}-archive" if archive else None
    for bucket in (uploads, renditions, archive_bucket):
        if bucket is not None:
            s3.create_bucket(Bucket=bucket)

    table = f"{name}-records"
    # The component's own table definition: the same key, attributes and indexes.
    dynamodb.create_table(TableName=table, **contract.dynamodb_table_definition())

    topic_arn = sns.create_topic(Name=f"{name}-events")["TopicArn"]
    dlq_url = sqs.create_queue(
        QueueName=f"{name}-dlq",
        Attributes={"MessageRetentionPeriod": str(DEAD_LETTER_RETENTION_SECONDS)},
    )["QueueUrl"]
    work_dlq_url = sqs.create_queue(
        QueueName=f"{name}-work-dlq",
        Attributes={"MessageRetentionPeriod": str(DEAD_LETTER_RETENTION_SECONDS)},
    )["QueueUrl"]
    work_url = sqs.create_queue(
        QueueName=f"{name}-work",
        Attributes={
            "VisibilityTimeout": str(work_visibility_seconds),
            # SQS itself moves a message received this many times: the stand-in need not.
            "RedrivePolicy": json.dumps(
                {
                    "deadLetterTargetArn": _queue_arn(sqs, work_dlq_url),
                    "maxReceiveCount": contract.WORK_MAX_RECEIVES,
                }
            ),
        },
    )["QueueUrl"]
    trigger_url = sqs.create_queue(
        QueueName=f"{name}-fn-invocations",
        Attributes={"VisibilityTimeout": str(TRIGGER_VISIBILITY_SECONDS)},
    )["QueueUrl"]
    events_url = sqs.create_queue(QueueName=f"{name}-events-watch")["QueueUrl"]

    notification: dict[str, Any] = {
        "Id": f"{name}-fn",
        "QueueArn": _queue_arn(sqs, trigger_url),
        "Events": [*contract.UPLOAD_EVENTS, *contract.DELETE_EVENTS],
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
    subscribe_queue(sns, sqs, topic_arn, events_url)
    return PipelineResources(
        uploads_bucket=uploads,
        renditions_bucket=renditions,
        records_table=table,
        events_topic_arn=topic_arn,
        dead_letter_queue_url=dlq_url,
        dead_letter_queue_arn=_queue_arn(sqs, dlq_url),
        trigger_queue_url=trigger_url,
        events_queue_url=events_url,
        work_queue_url=work_url,
        work_queue_arn=_queue_arn(sqs, work_url),
        work_dead_letter_queue_url=work_dlq_url,
        archive_bucket=archive_bucket,
    )


def _queue_arn(sqs: Any, url: str) -> str:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return str(attributes["Attributes"]["QueueArn"])


def subscribe_queue(sns: Any, sqs: Any, topic_arn: str, queue_url: str) -> str:
    """Deliver the topic's messages to the queue as they were published (raw, no SNS
    envelope), so a body is the CloudEvent itself. Returns the subscription's ARN."""
    response = sns.subscribe(
        TopicArn=topic_arn,
        Protocol="sqs",
        Endpoint=_queue_arn(sqs, queue_url),
        Attributes={"RawMessageDelivery": "true"},
        ReturnSubscriptionArn=True,
    )
    return str(response["SubscriptionArn"])


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
