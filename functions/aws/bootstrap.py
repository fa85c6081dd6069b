"""The AWS functions' composition root: clients and adapters built once per sandbox,
from the environment the component sets (`functions.aws.contract`).

Endpoints, region and credentials come from boto3's own environment variables
(AWS_ENDPOINT_URL points every client at an emulator): nothing here knows about them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

import boto3
from botocore.config import Config

from functions.aws.adapters import (
    CloudFrontInvalidator,
    DynamoDbRecordStore,
    S3BlobStore,
    S3UploadBucket,
    SnsEventPublisher,
)
from functions.aws.contract import MAX_ATTEMPTS, ApiEnvironment, FunctionEnvironment
from functions.core.events import event_source
from functions.core.uploads import UploadApi

if TYPE_CHECKING:
    from functions.core.service import Pipeline

# Standard mode: jittered exponential backoff and a retry quota shared across calls; its
# default of 3 attempts holds unless AWS_MAX_ATTEMPTS says otherwise (botocore's own knob,
# like AWS_ENDPOINT_URL). Short connect timeout: an unreachable endpoint should fail fast
# enough for the retries to fit in the function's timeout.
SDK_CONFIG = Config(retries={"mode": "standard"}, connect_timeout=3, read_timeout=20)


def build_pipeline(env: FunctionEnvironment) -> Pipeline:
    """The core bound to this stack's buckets, table, topic and CDN."""
    # Imported here: the upload API's function is built from this module too, and it never
    # renders, so its cold start need not import the core's imaging and Pillow.
    from functions.core.service import Pipeline

    cdn = None
    if env.cdn_distribution_id:
        cdn = CloudFrontInvalidator(
            boto3.client("cloudfront", config=SDK_CONFIG), env.cdn_distribution_id
        )
    return Pipeline(
        settings=env.settings,
        blobs=S3BlobStore(boto3.client("s3", config=SDK_CONFIG)),
        records=DynamoDbRecordStore(boto3.client("dynamodb", config=SDK_CONFIG), env.records_table),
        events=SnsEventPublisher(boto3.client("sns", config=SDK_CONFIG), env.events_topic_arn),
        renditions_bucket=env.renditions_bucket,
        event_source=event_source("aws", env.function_name),
        # Lambda's last attempt ends the record FAILED before the event is dead-lettered.
        max_attempts=MAX_ATTEMPTS,
        archive_bucket=env.archive_bucket,
        cdn=cdn,
    )


def build_api(env: ApiEnvironment) -> UploadApi:
    """The upload API bound to this stack's uploads bucket, records table and CDN."""
    # Presigned POSTs must be SigV4: S3 takes no other signature in newer regions.
    s3 = boto3.client("s3", config=SDK_CONFIG.merge(Config(signature_version="s3v4")))
    return UploadApi(
        settings=env.settings,
        options=env.options,
        bucket=S3UploadBucket(s3, env.uploads_bucket),
        records=DynamoDbRecordStore(boto3.client("dynamodb", config=SDK_CONFIG), env.records_table),
        rendition_url=lambda key: f"{env.cdn_url}/{quote(key)}",
        uploads_prefix=env.uploads_prefix,
    )
