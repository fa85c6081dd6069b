"""The operations half of the boto3 adapters on moto over HTTP: deleting and archiving
objects, records by object, rendition reference counting (the same answers as the in-memory
store, and safe when threads race), and CloudFront invalidations."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.config import Config

from functions.aws import contract
from functions.aws.adapters import (
    ARCHIVE_STORAGE_CLASS,
    CloudFrontInvalidator,
    DynamoDbRecordStore,
    S3BlobStore,
)
from functions.core.keys import invalidation_paths
from functions.core.memory import InMemoryRecordStore
from functions.core.records import RecordStoreUnavailable, Source, StorageUnavailable
from tests.port_contract import a_record

from .conftest import EmulatedStack
from .test_adapters import closed_port

pytestmark = pytest.mark.emulator

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SHA = "c" * 64


@pytest.fixture
def blobs(stack: EmulatedStack) -> S3BlobStore:
    return S3BlobStore(boto3.client("s3"))


@pytest.fixture
def records(stack: EmulatedStack) -> DynamoDbRecordStore:
    return DynamoDbRecordStore(boto3.client("dynamodb"), stack.table)


@pytest.fixture
def atomic_records(stack: EmulatedStack) -> Iterator[DynamoDbRecordStore]:
    """The same table behind a server that answers one request at a time.

    DynamoDB applies each conditional write atomically; moto's threaded server does not
    (two updates of one item may both pass their conditions), so the races below run
    through this one: every write atomic, as in DynamoDB, while the threads' calls still
    interleave freely. The server shares this process's moto backends with the session's.
    """
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    server = make_server(
        "127.0.0.1",
        0,
        DomainDispatcherApplication(create_backend_app),
        threaded=False,
        request_handler=MotoRequestHandler,
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = boto3.client(
            "dynamodb",
            endpoint_url=f"http://127.0.0.1:{server.server_port}",
            config=Config(max_pool_connections=16),
        )
        yield DynamoDbRecordStore(client, stack.table)
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


def unreachable(service: str) -> Any:
    config = Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=1)
    return boto3.client(service, endpoint_url=f"http://127.0.0.1:{closed_port()}", config=config)


def keys_in(stack: EmulatedStack, bucket: str) -> list[str]:
    pages = stack.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(entry["Key"] for page in pages for entry in page.get("Contents", []))


# --- S3BlobStore -------------------------------------------------------------------------


def test_a_delete_by_etag_spares_a_later_upload_under_the_key(
    stack: EmulatedStack, blobs: S3BlobStore
) -> None:
    first = stack.s3.put_object(Bucket=stack.uploads, Key="a.jpg", Body=b"1")["ETag"].strip('"')
    stack.s3.put_object(Bucket=stack.uploads, Key="a.jpg", Body=b"2")
    blobs.delete(stack.uploads, "a.jpg", first)
    assert keys_in(stack, stack.uploads) == ["a.jpg"]  # the second upload stays
    second = stack.s3.head_object(Bucket=stack.uploads, Key="a.jpg")["ETag"].strip('"')
    blobs.delete(stack.uploads, "a.jpg", second)
    assert keys_in(stack, stack.uploads) == []
    blobs.delete(stack.uploads, "a.jpg", second)  # gone already: fine
    blobs.delete(stack.uploads, "never.jpg")


def test_a_delete_by_version_id_deletes_that_version_only(
    stack: EmulatedStack, blobs: S3BlobStore
) -> None:
    stack.s3.put_bucket_versioning(
        Bucket=stack.uploads, VersioningConfiguration={"Status": "Enabled"}
    )
    old = stack.s3.put_object(Bucket=stack.uploads, Key="v.jpg", Body=b"old")["VersionId"]
    stack.s3.put_object(Bucket=stack.uploads, Key="v.jpg", Body=b"new")
    blobs.delete(stack.uploads, "v.jpg", old)
    versions = stack.s3.list_object_versions(Bucket=stack.uploads)["Versions"]
    assert [v["VersionId"] for v in versions] != [old] and len(versions) == 1
    assert blobs.read(stack.uploads, "v.jpg") == b"new"
    blobs.delete(stack.uploads, "v.jpg", old)  # gone already: fine


def test_delete_under_deletes_page_by_page_and_keeps_other_prefixes(
    stack: EmulatedStack,
) -> None:
    doomed = [f"{SHA}/r{n:02}.jpg" for n in range(7)]
    kept = [f"{SHA}x/kept.jpg", f"{'d' * 64}/kept.jpg"]
    for key in (*doomed, *kept):
        stack.s3.put_object(Bucket=stack.renditions, Key=key, Body=b"x")
    blobs = S3BlobStore(boto3.client("s3"), page_size=3)  # three pages, three DeleteObjects
    assert blobs.delete_under(stack.renditions, f"{SHA}/") == doomed
    assert keys_in(stack, stack.renditions) == sorted(kept)
    assert blobs.delete_under(stack.renditions, f"{SHA}/") == []


def test_archive_copies_that_version_in_glacier_instant_retrieval(
    stack: EmulatedStack, blobs: S3BlobStore
) -> None:
    archive = "imagepipe-test-archive"
    stack.s3.create_bucket(Bucket=archive)
    etag = stack.s3.put_object(Bucket=stack.uploads, Key="in/a.jpg", Body=b"photo")["ETag"]
    blobs.archive(
        stack.uploads,
        "in/a.jpg",
        etag.strip('"'),
        archive_bucket=archive,
        archive_key="2026/01/01/in/a.jpg",
    )
    copy = stack.s3.get_object(Bucket=archive, Key="2026/01/01/in/a.jpg")
    assert copy["Body"].read() == b"photo"
    assert copy["StorageClass"] == ARCHIVE_STORAGE_CLASS == "GLACIER_IR"
    stack.s3.put_object(Bucket=stack.uploads, Key="in/a.jpg", Body=b"another")
    with pytest.raises(KeyError):  # overwritten: the processed bytes are gone
        blobs.archive(
            stack.uploads, "in/a.jpg", etag.strip('"'), archive_bucket=archive, archive_key="x"
        )
    with pytest.raises(KeyError):
        blobs.archive(stack.uploads, "gone.jpg", "e" * 32, archive_bucket=archive, archive_key="x")


def test_s3_outages_while_deleting_are_transient() -> None:
    blobs = S3BlobStore(unreachable("s3"))
    with pytest.raises(StorageUnavailable):
        blobs.delete("b", "k", "e" * 32)
    with pytest.raises(StorageUnavailable):
        blobs.delete_under("b", "p/")
    with pytest.raises(StorageUnavailable):
        blobs.archive("b", "k", "e" * 32, archive_bucket="a", archive_key="k")


# --- DynamoDbRecordStore -----------------------------------------------------------------


def test_every_record_of_an_object_is_found_by_its_key(records: DynamoDbRecordStore) -> None:
    base = a_record()
    versions = [
        base.evolve(id=f"{base.id[:-1]}{n}", source=Source("uploads", "a/b c.jpg", f"{n:032x}"))
        for n in range(3)
    ]
    other = base.evolve(id=f"{base.id[:-1]}x", source=Source("uploads", "a/b c.jpgx", "0" * 32))
    elsewhere = base.evolve(id=f"{base.id[:-1]}y", source=Source("other", "a/b c.jpg", "0" * 32))
    for record in (*versions, other, elsewhere):
        assert records.create(record)
    found = records.for_object("uploads", "a/b c.jpg")
    assert sorted(r.id for r in found) == sorted(r.id for r in versions)
    assert records.for_object("uploads", "never.jpg") == []


def test_the_records_of_an_upload_api_id_are_found_by_it(records: DynamoDbRecordStore) -> None:
    upload_id = "0123456789abcdef0123456789abcdef"
    base = a_record()
    mine = base.evolve(source=Source("uploads", f"in/u-1/{upload_id}/a.jpg", "0" * 32))
    other = base.evolve(id=f"{base.id[:-1]}x", source=Source("uploads", "in/a.jpg", "0" * 32))
    assert records.create(mine) and records.create(other)
    assert [r.id for r in records.for_upload(upload_id)] == [mine.id]
    assert records.for_upload("f" * 32) == []


Step = tuple[str, str, timedelta]  # (operation, record id, time since T0)

# Every path of the reference counting: add, release while others hold, the last release
# taking the lease, adds refused while it lives, a finish, a lease that ran out.
SCENARIO: list[Step] = [
    ("add", "r1", timedelta(0)),
    ("add", "r2", timedelta(0)),
    ("add", "r1", timedelta(0)),  # again: idempotent
    ("release", "r1", timedelta(1)),
    ("release", "r1", timedelta(1)),  # absent: nothing to drop
    ("release", "r2", timedelta(2)),  # the last: the lease
    ("add", "r3", timedelta(3)),  # refused while the lease lives
    ("release", "r3", timedelta(3)),  # another deleter holds the lease
    ("finish", "", timedelta(4)),
    ("add", "r3", timedelta(5)),
    ("release", "r3", timedelta(6)),
    ("add", "r4", timedelta(minutes=30)),  # the deleter died: its lease ran out
    ("finish", "", timedelta(minutes=31)),  # a holder came meanwhile: the item stays
    ("release", "r4", timedelta(minutes=32)),
    ("release", "r5", timedelta(minutes=33)),  # a live lease: refused
    ("finish", "", timedelta(minutes=34)),
    ("release", "r6", timedelta(minutes=35)),  # no item at all: the lease, at once
]


def run_scenario(store: Any) -> list[Any]:
    answers: list[Any] = []
    for operation, holder, offset in SCENARIO:
        now = T0 + offset
        if operation == "add":
            answers.append(store.add_content_reference(SHA, holder, now))
        elif operation == "release":
            answers.append(
                store.release_content_reference(
                    SHA, holder, now=now, deletion_lease_until=now + timedelta(minutes=5)
                )
            )
        else:
            answers.append(store.finish_content_deletion(SHA))
    return answers


def test_reference_counting_answers_as_the_in_memory_store(
    stack: EmulatedStack, records: DynamoDbRecordStore
) -> None:
    expected = run_scenario(InMemoryRecordStore())
    assert expected.count(True) > 3 and expected.count(False) > 3  # every path is taken
    assert run_scenario(records) == expected
    item = stack.dynamodb.get_item(
        TableName=stack.table,
        Key={"id": {"S": contract.CONTENT_REFERENCE_PREFIX + SHA}},
        ConsistentRead=True,
    )["Item"]
    assert contract.CONTENT_HOLDERS not in item and contract.CONTENT_DELETING_UNTIL in item


def race(workers: int, task: Callable[[int], bool]) -> list[bool]:
    start = threading.Barrier(workers)

    def run(n: int) -> bool:
        start.wait()
        return task(n)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(run, range(workers)))


def test_of_holders_releasing_at_once_exactly_one_deletes(
    atomic_records: DynamoDbRecordStore,
) -> None:
    records = atomic_records
    for round_ in range(3):
        sha = f"{round_}" * 64
        holders = [f"r{n}" for n in range(8)]
        for holder in holders:
            assert records.add_content_reference(sha, holder, T0)
        released = race(
            8,
            lambda n, sha=sha, holders=holders: records.release_content_reference(
                sha, holders[n], now=T0, deletion_lease_until=T0 + timedelta(minutes=5)
            ),
        )
        assert released.count(True) == 1


def test_an_add_racing_the_last_release_never_both_win(
    atomic_records: DynamoDbRecordStore,
) -> None:
    records = atomic_records
    # Both winning would delete renditions a live record uses.
    for round_ in range(4):
        sha = f"{round_ + 4}" * 64
        assert records.add_content_reference(sha, "old", T0)

        def task(n: int, sha: str = sha) -> bool:
            if n % 2 == 0:
                return records.release_content_reference(
                    sha, "old", now=T0, deletion_lease_until=T0 + timedelta(minutes=5)
                )
            return records.add_content_reference(sha, f"new{n}", T0)

        outcome = race(8, task)
        released, added = outcome[0::2], outcome[1::2]
        assert released.count(True) <= 1
        assert not (any(released) and any(added))
        assert any(released) or all(added)


def test_record_store_outages_while_counting_are_transient(stack: EmulatedStack) -> None:
    records = DynamoDbRecordStore(unreachable("dynamodb"), stack.table)
    with pytest.raises(RecordStoreUnavailable):
        records.add_content_reference(SHA, "r", T0)
    with pytest.raises(RecordStoreUnavailable):
        records.release_content_reference(SHA, "r", now=T0, deletion_lease_until=T0)
    with pytest.raises(RecordStoreUnavailable):
        records.finish_content_deletion(SHA)
    with pytest.raises(RecordStoreUnavailable):
        records.for_object("b", "k")


# --- CloudFrontInvalidator ---------------------------------------------------------------


def test_one_wildcard_per_content_prefix() -> None:
    keys = [f"{SHA}/thumb.jpg", f"{SHA}/large.webp", f"{'d' * 64}/thumb.jpg", "loose key.jpg"]
    assert invalidation_paths(keys) == [f"/{SHA}/*", f"/{'d' * 64}/*", "/loose%20key.jpg"]


def moto_distribution(cloudfront: Any, origin_bucket: str) -> str:
    """A CloudFront distribution in front of the bucket, in moto; its id."""
    return cloudfront.create_distribution(
        DistributionConfig={
            "CallerReference": f"imagepipe-test-{uuid.uuid4()}",
            "Comment": "",
            "Enabled": True,
            "Origins": {
                "Quantity": 1,
                "Items": [
                    {
                        "Id": "renditions",
                        "DomainName": f"{origin_bucket}.s3.amazonaws.com",
                        "S3OriginConfig": {"OriginAccessIdentity": ""},
                    }
                ],
            },
            "DefaultCacheBehavior": {
                "TargetOriginId": "renditions",
                "ViewerProtocolPolicy": "redirect-to-https",
                "MinTTL": 0,
                "ForwardedValues": {"QueryString": False, "Cookies": {"Forward": "none"}},
                "TrustedSigners": {"Enabled": False, "Quantity": 0},
            },
        }
    )["Distribution"]["Id"]


def test_deleted_renditions_are_invalidated_in_one_request(stack: EmulatedStack) -> None:
    cloudfront = boto3.client("cloudfront")
    distribution = moto_distribution(cloudfront, stack.renditions)
    invalidator = CloudFrontInvalidator(cloudfront, distribution, clock=lambda: T0)
    invalidator.invalidate([f"{SHA}/thumb.jpg", f"{SHA}/large.webp"])
    invalidator.invalidate([])  # nothing deleted: no request
    listed = cloudfront.list_invalidations(DistributionId=distribution)["InvalidationList"]
    assert listed["Quantity"] == 1
    (summary,) = listed["Items"]
    batch = cloudfront.get_invalidation(DistributionId=distribution, Id=summary["Id"])[
        "Invalidation"
    ]["InvalidationBatch"]
    assert batch["Paths"]["Items"] == [f"/{SHA}/*"]
    assert batch["CallerReference"].endswith("-2026010100")
