"""boto3 adapters for the core's ports: `S3BlobStore`, `DynamoDbRecordStore`,
`SnsEventPublisher`, `CloudFrontInvalidator`, the upload API's `S3UploadBucket`, and the
translation of botocore's outages.

Each adapter turns its SDK's outages (no connection, timeouts, throttling and
5xx answers that survived botocore's own retries) into the core's transient
errors, so the core can tell "try again later" from "this image is bad".
Everything else (AccessDenied, a malformed request) propagates unchanged: it is
a deployment bug, and Lambda's retries and dead-letter queue keep the event
until it is fixed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

from functions.aws.contract import (
    ARCHIVE_STORAGE_CLASS,
    CONTENT_ATTRIBUTE,
    CONTENT_DELETING_UNTIL,
    CONTENT_HOLDERS,
    CONTENT_INDEX,
    CONTENT_REFERENCE_PREFIX,
    OBJECT_ATTRIBUTE,
    OBJECT_INDEX,
    RECORDS_KEY,
    UPLOAD_ATTRIBUTE,
    UPLOAD_INDEX,
)
from functions.aws.trigger import looks_like_etag
from functions.core.events import encode_event
from functions.core.keys import invalidation_paths
from functions.core.records import (
    ImageRecord,
    PublisherUnavailable,
    RecordStoreUnavailable,
    Status,
    StorageUnavailable,
    TransientError,
)
from functions.core.timing import isoformat, utc_now
from functions.core.uploads import PresignedPost, StoredUpload, upload_id_in

# --- Error translation ------------------------------------------------------------------------

# Throttling and server-side failures: botocore already retried them with backoff.
_RETRYABLE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "SlowDown",
        "TransactionInProgressException",
        "KMSThrottlingException",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
    }
)


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def http_status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def is_outage(error: Exception) -> bool:
    """True for errors that another attempt later may not meet."""
    if isinstance(error, ConnectionError | HTTPClientError):
        return True  # refused, DNS, connect/read timeouts, connection reset
    if isinstance(error, ClientError):
        return error_code(error) in _RETRYABLE_CODES or http_status(error) >= 500
    return False


@contextmanager
def translated_outages(
    unavailable: Callable[[str], TransientError],
    what: str,
    also: frozenset[str] = frozenset(),
) -> Iterator[None]:
    """Re-raise SDK outages (and errors with a code in `also`) as `unavailable`."""
    try:
        yield
    except TransientError:
        raise
    except Exception as error:
        if is_outage(error) or (isinstance(error, ClientError) and error_code(error) in also):
            raise unavailable(f"{what} failed: {_describe(error)}") from error
        raise


def _describe(error: Exception) -> str:
    if isinstance(error, ClientError):
        message = error.response.get("Error", {}).get("Message", "")
        return f"{error_code(error) or http_status(error)}: {message}"
    return str(error)


# --- S3 ---------------------------------------------------------------------------------------

_MISSING_OBJECT_CODES = frozenset(
    {"NoSuchKey", "NoSuchVersion", "NoSuchBucket", "404", "NotFound", "PreconditionFailed", "412"}
)
DELETE_OBJECTS_LIMIT = 1000  # keys per DeleteObjects, S3's own maximum


class S3BlobStore:
    """Reads uploads and writes renditions with one S3 client."""

    def __init__(self, client: Any, *, page_size: int = DELETE_OBJECTS_LIMIT) -> None:
        self._s3 = client
        self._page_size = min(page_size, DELETE_OBJECTS_LIMIT)  # keys listed per request

    def read(self, bucket: str, key: str, version: str | None = None) -> bytes:
        request: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version and looks_like_etag(version):
            # Unversioned bucket: insist on the bytes the event announced. If the key was
            # overwritten since, S3 answers 412 and that later upload has its own event.
            request["IfMatch"] = f'"{version}"'
        elif version:
            request["VersionId"] = version
        with translated_outages(StorageUnavailable, f"reading s3://{bucket}/{key}"):
            try:
                response = self._s3.get_object(**request)
                return response["Body"].read()
            except ClientError as error:
                if error_code(error) in _MISSING_OBJECT_CODES:
                    raise KeyError(key) from error
                raise

    def write(
        self,
        bucket: str,
        key: str,
        data: bytes,
        *,
        content_type: str,
        cache_control: str,
        metadata: Mapping[str, str],
    ) -> None:
        with translated_outages(StorageUnavailable, f"writing s3://{bucket}/{key}"):
            self._s3.put_object(
                Bucket=bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                CacheControl=cache_control,
                Metadata=dict(metadata),
            )

    def exists(self, bucket: str, key: str) -> bool:
        # HEAD is authorized as s3:GetObject. S3 answers a missing key 404 only to a caller
        # also allowed s3:ListBucket, else 403; the role may not list renditions (that would
        # show it every content hash stored), so 403 means "not there to reuse" as well: the
        # caller then renders and writes the rendition, which the role may do.
        with translated_outages(StorageUnavailable, f"looking up s3://{bucket}/{key}"):
            try:
                self._s3.head_object(Bucket=bucket, Key=key)
            except ClientError as error:
                if error_code(error) in _MISSING_OBJECT_CODES or http_status(error) == 403:
                    return False
                raise
        return True

    def delete(self, bucket: str, key: str, version: str | None = None) -> None:
        with translated_outages(StorageUnavailable, f"deleting s3://{bucket}/{key}"):
            if version and looks_like_etag(version):
                # Unversioned bucket: delete only the bytes that were processed. A key
                # uploaded again since holds another image, with events of its own.
                if self._holds(bucket, key, version):
                    self._s3.delete_object(Bucket=bucket, Key=key)
            elif version:
                self._s3.delete_object(Bucket=bucket, Key=key, VersionId=version)
            else:
                self._s3.delete_object(Bucket=bucket, Key=key)

    def delete_under(self, bucket: str, prefix: str) -> list[str]:
        deleted: list[str] = []
        with translated_outages(StorageUnavailable, f"deleting s3://{bucket}/{prefix}*"):
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": self._page_size}
            )
            for page in pages:  # a page holds at most as many keys as one DeleteObjects takes
                keys = [entry["Key"] for entry in page.get("Contents", [])]
                if not keys:
                    continue
                response = self._s3.delete_objects(
                    Bucket=bucket,
                    Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
                )
                errors = response.get("Errors") or []
                if errors:
                    # Per-key failures (SlowDown, InternalError) in a 200 answer: the retry
                    # lists what is left and deletes it.
                    first = errors[0]
                    raise StorageUnavailable(
                        f"deleting s3://{bucket}/{prefix}* failed for {len(errors)} keys; "
                        f"the first: {first.get('Key')}: {first.get('Code')}"
                    )
                deleted.extend(keys)
        return sorted(deleted)

    def archive(
        self, bucket: str, key: str, version: str, *, archive_bucket: str, archive_key: str
    ) -> None:
        source: dict[str, str] = {"Bucket": bucket, "Key": key}
        request: dict[str, Any] = {}
        if looks_like_etag(version):
            request["CopySourceIfMatch"] = f'"{version}"'  # the bytes that were processed
        else:
            source["VersionId"] = version
        with translated_outages(
            StorageUnavailable, f"archiving s3://{bucket}/{key} to s3://{archive_bucket}"
        ):
            # HEAD first as well: not every S3 (moto) honours CopySourceIfMatch.
            if looks_like_etag(version) and not self._holds(bucket, key, version):
                raise KeyError(key)
            try:
                self._s3.copy_object(
                    Bucket=archive_bucket,
                    Key=archive_key,
                    CopySource=source,
                    StorageClass=ARCHIVE_STORAGE_CLASS,
                    MetadataDirective="COPY",
                    **request,
                )
            except ClientError as error:
                # NoSuchBucket may be the archive bucket's: a deployment bug, not a gone key.
                if error_code(error) in _MISSING_OBJECT_CODES - {"NoSuchBucket"}:
                    raise KeyError(key) from error
                raise

    def _holds(self, bucket: str, key: str, etag: str) -> bool:
        """Whether `key` still holds the bytes with this ETag (one HEAD)."""
        try:
            self._s3.head_object(Bucket=bucket, Key=key, IfMatch=f'"{etag}"')
        except ClientError as error:
            if error_code(error) in _MISSING_OBJECT_CODES:
                return False
            raise
        return True


class S3UploadBucket:
    """The uploads bucket as the upload API sees it: presigned POSTs and finding an upload.

    The client must sign with SigV4 (`signature_version="s3v4"`): S3 refuses SigV2 POST
    policies in every region opened since 2014. A presigned POST carries the signer's
    rights, so the API function's role may put objects under the uploads prefix.
    """

    def __init__(self, client: Any, bucket: str) -> None:
        self._s3 = client
        self.name = bucket

    def presigned_post(
        self, key: str, *, content_type: str, max_bytes: int, expires_in: timedelta
    ) -> PresignedPost:
        # generate_presigned_post adds the bucket and key conditions itself; the key is exact.
        post = self._s3.generate_presigned_post(
            Bucket=self.name,
            Key=key,
            Fields={"Content-Type": content_type},
            Conditions=[{"Content-Type": content_type}, ["content-length-range", 1, max_bytes]],
            ExpiresIn=int(expires_in.total_seconds()),
        )
        return PresignedPost(url=post["url"], fields=dict(post["fields"]))

    def find(self, prefix: str) -> StoredUpload | None:
        with translated_outages(StorageUnavailable, f"listing s3://{self.name}/{prefix}"):
            listed = self._s3.list_objects_v2(Bucket=self.name, Prefix=prefix, MaxKeys=10)
        objects = listed.get("Contents") or []
        if not objects:
            return None
        newest = max(objects, key=lambda item: item["LastModified"])
        # The uploads bucket is not versioned: the trigger's event names the ETag too.
        return StoredUpload(key=newest["Key"], version=newest["ETag"].strip('"'))


# --- DynamoDB ---------------------------------------------------------------------------------


def to_dynamodb(value: Any) -> Any:
    """Plain JSON-ready data -> what boto3's TypeSerializer accepts (floats as Decimal)."""
    if isinstance(value, float):
        # str() keeps the short decimal form: Decimal(0.1) would be 55 digits of binary noise.
        return Decimal(str(value))
    if isinstance(value, Mapping):
        return {k: to_dynamodb(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_dynamodb(v) for v in value]
    return value


def from_dynamodb(value: Any) -> Any:
    """TypeDeserializer output -> plain data (Decimal back to int or float)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, Mapping):
        return {k: from_dynamodb(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [from_dynamodb(v) for v in value]
    return value


# A missing table (deleted, or mid-restore: point-in-time recovery restores into a new table)
# means nothing can be recorded; the event must wait for a retry, like in an outage.
_NO_TABLE = frozenset({"ResourceNotFoundException"})


class DynamoDbRecordStore:
    """Image records in one table keyed by `id`, with conditional writes for the claim."""

    def __init__(self, client: Any, table: str) -> None:
        # The low-level client and the type (de)serializers: the boto3 resource layer would
        # add a noticeable share to the cold start for the same three calls.
        from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

        self._dynamodb = client
        self.table = table
        self._serialize = TypeSerializer().serialize
        self._deserialize = TypeDeserializer().deserialize

    def get(self, record_id: str) -> ImageRecord | None:
        with translated_outages(
            RecordStoreUnavailable, f"reading record {record_id} from table {self.table}", _NO_TABLE
        ):
            response = self._dynamodb.get_item(
                TableName=self.table, Key={"id": {"S": record_id}}, ConsistentRead=True
            )
        item = response.get("Item")
        if item is None:
            return None
        return ImageRecord.from_dict(
            from_dynamodb({name: self._deserialize(value) for name, value in item.items()})
        )

    def create(self, record: ImageRecord) -> bool:
        if self._put(record, ConditionExpression="attribute_not_exists(id)"):
            return True
        # botocore retried a put whose first attempt landed: the record it meets is ours.
        return self.get(record.id) == record

    def replace(
        self, record: ImageRecord, *, expected_status: Status, expected_attempts: int
    ) -> bool:
        return self._put(
            record,
            ConditionExpression="#s = :expected_status AND attempts = :expected_attempts",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={
                ":expected_status": {"S": expected_status.value},
                ":expected_attempts": {"N": str(expected_attempts)},
            },
        )

    def latest_completed_with_content(self, content_sha256: str) -> ImageRecord | None:
        with translated_outages(
            RecordStoreUnavailable, f"looking up content in table {self.table}", _NO_TABLE
        ):
            response = self._dynamodb.query(
                TableName=self.table,
                IndexName=CONTENT_INDEX,
                KeyConditionExpression="#c = :sha256",
                ExpressionAttributeNames={"#c": CONTENT_ATTRIBUTE},
                ExpressionAttributeValues={":sha256": {"S": content_sha256}},
                ScanIndexForward=False,  # newest first
                Limit=1,
            )
        items = response.get("Items") or []
        if not items:
            return None
        return ImageRecord.from_dict(
            from_dynamodb({name: self._deserialize(value) for name, value in items[0].items()})
        )

    def for_object(self, bucket: str, key: str) -> list[ImageRecord]:
        return self._query_all(OBJECT_INDEX, OBJECT_ATTRIBUTE, object_name(bucket, key))

    def for_upload(self, upload_id: str) -> list[ImageRecord]:
        return self._query_all(UPLOAD_INDEX, UPLOAD_ATTRIBUTE, upload_id)

    def _query_all(self, index: str, attribute: str, value: str) -> list[ImageRecord]:
        """Every record whose `attribute` is `value`, from its index, page by page."""
        request: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": index,
            "KeyConditionExpression": "#a = :value",
            "ExpressionAttributeNames": {"#a": attribute},
            "ExpressionAttributeValues": {":value": {"S": value}},
        }
        found: list[ImageRecord] = []
        with translated_outages(
            RecordStoreUnavailable, f"looking up {value} in table {self.table}", _NO_TABLE
        ):
            while True:
                response = self._dynamodb.query(**request)
                found.extend(self._record(item) for item in response.get("Items") or [])
                if "LastEvaluatedKey" not in response:
                    return found
                request["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    # Reference counting: one item per content hash, each change one conditional write.
    # Instants are compared as the ISO strings `isoformat` writes (fixed width, UTC): their
    # order is the instants' order.

    def add_content_reference(self, content_sha256: str, record_id: str, now: datetime) -> bool:
        try:
            self._update_content(
                content_sha256,
                UpdateExpression="ADD #h :holder REMOVE #d",
                # A live deletion lease refuses; one that ran out is taken away (REMOVE).
                ConditionExpression="attribute_not_exists(#d) OR #d <= :now",
                ExpressionAttributeValues={
                    ":holder": {"SS": [record_id]},
                    ":now": {"S": isoformat(now)},
                },
            )
        except _ConditionFailed:
            return False
        return True

    def release_content_reference(
        self, content_sha256: str, record_id: str, *, now: datetime, deletion_lease_until: datetime
    ) -> bool:
        lease = {":now": {"S": isoformat(now)}, ":until": {"S": isoformat(deletion_lease_until)}}
        no_live_lease = "(attribute_not_exists(#d) OR #d <= :now)"
        try:  # the usual case, one write: the last holder leaves and takes the lease
            self._update_content(
                content_sha256,
                UpdateExpression="DELETE #h :holder SET #d = :until",
                ConditionExpression=(
                    "(attribute_not_exists(#h) OR (size(#h) = :one AND contains(#h, :id))) "
                    f"AND {no_live_lease}"
                ),
                ExpressionAttributeValues={
                    ":holder": {"SS": [record_id]},
                    ":id": {"S": record_id},
                    ":one": {"N": "1"},
                    **lease,
                },
            )
            return True
        except _ConditionFailed:
            pass
        # Others held references a moment ago: leave alone. If they all left in the meantime
        # (each saw this holder still in), the last of us out must take the lease after all.
        left = self._update_content(
            content_sha256,
            UpdateExpression="DELETE #h :holder",
            ExpressionAttributeValues={":holder": {"SS": [record_id]}},
            ReturnValues="ALL_NEW",
        ).get("Attributes", {})
        if CONTENT_HOLDERS in left:
            return False
        try:
            self._update_content(
                content_sha256,
                UpdateExpression="SET #d = :until",
                ConditionExpression=f"attribute_not_exists(#h) AND {no_live_lease}",
                ExpressionAttributeValues=lease,
            )
        except _ConditionFailed:
            return False  # another deleter holds the lease, or a new reference came
        return True

    def finish_content_deletion(self, content_sha256: str) -> None:
        with translated_outages(
            RecordStoreUnavailable,
            f"removing the references to {content_sha256} in table {self.table}",
            _NO_TABLE,
        ):
            try:
                self._dynamodb.delete_item(
                    TableName=self.table,
                    Key=_content_key(content_sha256),
                    ConditionExpression="attribute_not_exists(#h)",
                    ExpressionAttributeNames={"#h": CONTENT_HOLDERS},
                )
            except ClientError as error:
                if error_code(error) != "ConditionalCheckFailedException":
                    raise  # else a reference was added meanwhile: the item stays

    def _update_content(self, content_sha256: str, **request: Any) -> dict[str, Any]:
        """One UpdateItem of the content's reference item; `_ConditionFailed` when its
        condition does not hold. `#h` and `#d` name the holders and the deletion lease."""
        names = {"#h": CONTENT_HOLDERS, "#d": CONTENT_DELETING_UNTIL}
        expressions = request["UpdateExpression"] + request.get("ConditionExpression", "")
        with translated_outages(
            RecordStoreUnavailable,
            f"updating the references to {content_sha256} in table {self.table}",
            _NO_TABLE,
        ):
            try:
                return dict(
                    self._dynamodb.update_item(
                        TableName=self.table,
                        Key=_content_key(content_sha256),
                        ExpressionAttributeNames={
                            k: v for k, v in names.items() if k in expressions
                        },
                        **request,
                    )
                )
            except ClientError as error:
                if error_code(error) == "ConditionalCheckFailedException":
                    raise _ConditionFailed from error
                raise

    def _record(self, item: Mapping[str, Any]) -> ImageRecord:
        return ImageRecord.from_dict(
            from_dynamodb({name: self._deserialize(value) for name, value in item.items()})
        )

    def _put(self, record: ImageRecord, **condition: Any) -> bool:
        item = {
            name: self._serialize(value) for name, value in to_dynamodb(record.to_dict()).items()
        }
        # Every record carries the `by-object` index's key: a delete event finds them by it.
        item[OBJECT_ATTRIBUTE] = {"S": object_name(record.source.bucket, record.source.key)}
        upload_id = upload_id_in(record.source.key)
        if upload_id is not None:  # the `by-upload` index's key, only where there is one
            item[UPLOAD_ATTRIBUTE] = {"S": upload_id}
        if record.status is Status.COMPLETED and record.source.sha256:
            # Only finished records carry the `by-content` index's key (a sparse index).
            item[CONTENT_ATTRIBUTE] = {"S": record.source.sha256}
        with translated_outages(
            RecordStoreUnavailable, f"writing record {record.id} to table {self.table}", _NO_TABLE
        ):
            try:
                self._dynamodb.put_item(TableName=self.table, Item=item, **condition)
            except ClientError as error:
                if error_code(error) == "ConditionalCheckFailedException":
                    return False
                raise
        return True


class _ConditionFailed(Exception):
    """A conditional write's condition did not hold."""


def object_name(bucket: str, key: str) -> str:
    """The `by-object` index's key: "<bucket>/<key>"."""
    return f"{bucket}/{key}"


def _content_key(content_sha256: str) -> dict[str, Any]:
    return {RECORDS_KEY: {"S": CONTENT_REFERENCE_PREFIX + content_sha256}}


# --- CloudFront -------------------------------------------------------------------------------


class CloudFrontInvalidator:
    """Drops deleted renditions from the distribution's caches: one CreateInvalidation per
    call, one wildcard path per content prefix (`/<sha256>/*`), however many keys it had.

    CloudFront bills invalidations by path and a wildcard counts as one; the renditions of
    one content all live under its prefix, so one path covers every spec of them.
    """

    def __init__(
        self, client: Any, distribution_id: str, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self._cloudfront = client
        self.distribution_id = distribution_id
        self._clock = clock

    def invalidate(self, keys: Sequence[str]) -> None:
        paths = invalidation_paths(keys)
        if not paths:
            return
        # The same paths in the same hour are one invalidation: a retried call is absorbed
        # by CloudFront (same reference, same batch), while a later delete of content that
        # was uploaded again invalidates anew.
        digest = hashlib.sha256("\0".join(paths).encode()).hexdigest()[:32]
        reference = f"imagepipe-{digest}-{self._clock().strftime('%Y%m%d%H')}"
        with translated_outages(
            StorageUnavailable, f"invalidating {len(paths)} paths in {self.distribution_id}"
        ):
            self._cloudfront.create_invalidation(
                DistributionId=self.distribution_id,
                InvalidationBatch={
                    "Paths": {"Quantity": len(paths), "Items": paths},
                    "CallerReference": reference,
                },
            )


# --- SNS --------------------------------------------------------------------------------------


class SnsEventPublisher:
    """Publishes each CloudEvent as the JSON message body, its type as a message attribute.

    The attribute lets subscriptions filter (the component's failure e-mail takes only
    `imagepipe.image.failed`) without parsing the body.
    """

    def __init__(self, client: Any, topic_arn: str) -> None:
        self._sns = client
        self.topic_arn = topic_arn

    def publish(self, event: Mapping[str, Any]) -> None:
        with translated_outages(PublisherUnavailable, f"publishing {event.get('id')}"):
            self._sns.publish(
                TopicArn=self.topic_arn,
                Message=encode_event(event).decode(),
                MessageAttributes={"type": {"DataType": "String", "StringValue": event["type"]}},
            )
