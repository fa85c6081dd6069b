"""The boto3 adapters against moto over HTTP: the ports' contracts; outages as transient errors."""

from __future__ import annotations

import socket

import boto3
import pytest

from functions.aws.adapters import DynamoDbRecordStore, S3BlobStore
from functions.core.records import (
    RecordStoreUnavailable,
)
from tests.port_contract import a_finished_record, a_record

from .conftest import EmulatedStack

pytestmark = pytest.mark.emulator


@pytest.fixture
def records(stack: EmulatedStack) -> DynamoDbRecordStore:
    return DynamoDbRecordStore(boto3.client("dynamodb"), stack.table)


def test_the_status_index_finds_records_by_status(
    stack: EmulatedStack, records: DynamoDbRecordStore
) -> None:
    records.create(a_finished_record())
    found = stack.dynamodb.query(
        TableName=stack.table,
        IndexName="by-status",
        KeyConditionExpression="#s = :s",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":s": {"S": "COMPLETED"}},
    )["Items"]
    assert [item["id"]["S"] for item in found] == [a_finished_record().id]


def test_a_missing_table_is_an_unavailable_record_store(
    stack: EmulatedStack, records: DynamoDbRecordStore
) -> None:
    stack.dynamodb.delete_table(TableName=stack.table)
    with pytest.raises(RecordStoreUnavailable, match=stack.table):
        records.get("x")
    with pytest.raises(RecordStoreUnavailable):
        records.create(a_record())


def test_blobs_are_written_with_their_headers_and_read_back(stack: EmulatedStack) -> None:
    blobs = S3BlobStore(boto3.client("s3"))
    blobs.write(
        stack.renditions,
        "k/thumb.jpg",
        b"bytes",
        content_type="image/jpeg",
        cache_control="public, max-age=31536000, immutable",
        metadata={"imagepipe-rendition": "true"},
    )
    head = stack.s3.head_object(Bucket=stack.renditions, Key="k/thumb.jpg")
    assert head["ContentType"] == "image/jpeg"
    assert head["CacheControl"] == "public, max-age=31536000, immutable"
    assert head["Metadata"] == {"imagepipe-rendition": "true"}
    assert blobs.read(stack.renditions, "k/thumb.jpg") == b"bytes"


def test_a_read_by_etag_refuses_an_overwritten_object(stack: EmulatedStack) -> None:
    blobs = S3BlobStore(boto3.client("s3"))
    put = stack.s3.put_object(Bucket=stack.uploads, Key="a b.jpg", Body=b"first")
    first = put["ETag"].strip('"')
    assert blobs.read(stack.uploads, "a b.jpg", first) == b"first"
    stack.s3.put_object(Bucket=stack.uploads, Key="a b.jpg", Body=b"second")
    with pytest.raises(KeyError):
        blobs.read(stack.uploads, "a b.jpg", first)
    with pytest.raises(KeyError):
        blobs.read(stack.uploads, "never-uploaded.jpg", first)


def test_a_read_by_version_id_gets_that_version(stack: EmulatedStack) -> None:
    stack.s3.put_bucket_versioning(
        Bucket=stack.uploads, VersioningConfiguration={"Status": "Enabled"}
    )
    blobs = S3BlobStore(boto3.client("s3"))
    old = stack.s3.put_object(Bucket=stack.uploads, Key="v.jpg", Body=b"old")["VersionId"]
    stack.s3.put_object(Bucket=stack.uploads, Key="v.jpg", Body=b"new")
    assert blobs.read(stack.uploads, "v.jpg", old) == b"old"
    stack.s3.delete_object(Bucket=stack.uploads, Key="v.jpg", VersionId=old)
    with pytest.raises(KeyError):
        blobs.read(stack.uploads, "v.jpg", old)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once the probe is closed
