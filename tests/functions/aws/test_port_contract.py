"""The ports' contract over the boto3 adapters, on moto's server over HTTP."""

from __future__ import annotations

import boto3
import pytest
from botocore.config import Config

from functions.aws.adapters import DynamoDbRecordStore, S3BlobStore, SnsEventPublisher
from tests.port_contract import *  # noqa: F403 - the shared scenarios, collected here
from tests.port_contract import Ports

from .conftest import EmulatedStack
from .test_adapters import closed_port

pytestmark = pytest.mark.emulator


def aws_ports(stack: EmulatedStack, endpoint: str | None = None) -> Ports:
    # An unreachable endpoint is tried twice, quickly: the outage is what is under test.
    config = Config(retries={"mode": "standard", "total_max_attempts": 2}, connect_timeout=1)
    clients = {
        service: boto3.client(service, endpoint_url=endpoint, config=config)
        for service in ("s3", "dynamodb", "sns")
    }

    def put_upload(key: str, data: bytes) -> str:
        response = stack.s3.put_object(Bucket=stack.uploads, Key=key, Body=data)
        return response["ETag"].strip('"')  # the version of an unversioned bucket's object

    return Ports(
        blobs=S3BlobStore(clients["s3"]),
        records=DynamoDbRecordStore(clients["dynamodb"], stack.table),
        events=SnsEventPublisher(clients["sns"], stack.topic_arn),
        bucket=stack.uploads,
        published=lambda: [(e["body"], e["type_attribute"]) for e in stack.published_events()],
        put_upload=put_upload,
        unreachable=lambda: aws_ports(stack, f"http://127.0.0.1:{closed_port()}"),
    )


@pytest.fixture
def ports(stack: EmulatedStack) -> Ports:
    return aws_ports(stack)
