"""IAM and bucket-policy documents of the AWS pipeline, as pure functions of plain values.

The component feeds them resolved ARNs (`Output.all(...).apply(...)`), so every
document can be tested without Pulumi. Nothing here grants a `*` action, and
the only `*` resource is X-Ray's, which has no resource-level permissions.
"""

from __future__ import annotations

from typing import Any

from functions.aws.contract import CONTENT_INDEX, OBJECT_INDEX, UPLOAD_INDEX

PolicyDocument = dict[str, Any]

VERSION = "2012-10-17"


def lambda_assume_role_policy() -> PolicyDocument:
    """Only the Lambda service may assume the function's role."""
    return {
        "Version": VERSION,
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "lambda.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }


def _deny_insecure_transport(bucket_arn: str) -> dict[str, Any]:
    # A Deny on every S3 action is the documented way to refuse plain HTTP; it
    # grants nothing, so the broad action list is safe here.
    return {
        "Sid": "DenyInsecureTransport",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [bucket_arn, f"{bucket_arn}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }


def uploads_bucket_policy(bucket_arn: str) -> PolicyDocument:
    """Uploads: TLS only. Access is granted by IAM identity policies, never by the bucket."""
    return {"Version": VERSION, "Statement": [_deny_insecure_transport(bucket_arn)]}


def archive_bucket_policy(bucket_arn: str) -> PolicyDocument:
    """The archive (originals `archive`): TLS only, granted nothing, as the uploads bucket."""
    return uploads_bucket_policy(bucket_arn)


def renditions_bucket_policy(bucket_arn: str, distribution_arn: str) -> PolicyDocument:
    """Renditions: TLS only, and readable by this stack's CloudFront distribution alone (OAC)."""
    return {
        "Version": VERSION,
        "Statement": [
            _deny_insecure_transport(bucket_arn),
            {
                "Sid": "AllowCloudFrontOriginAccessControl",
                "Effect": "Allow",
                "Principal": {"Service": "cloudfront.amazonaws.com"},
                "Action": "s3:GetObject",
                "Resource": f"{bucket_arn}/*",
                "Condition": {"StringEquals": {"AWS:SourceArn": distribution_arn}},
            },
        ],
    }


def iam_literal(text: str) -> str:
    """`text` as IAM matches it literally in a Resource or a StringLike value, where `*`, `?`
    and `$` would otherwise be IAM's own (a wildcard, a wildcard, a policy variable)."""
    return text.replace("$", "${$}").replace("*", "${*}").replace("?", "${?}")


def function_policy(
    *,
    uploads_bucket_arn: str,
    renditions_bucket_arn: str,
    records_table_arn: str,
    events_topic_arn: str,
    dead_letter_queue_arn: str,
    work_queue_arn: str,
    log_group_arn: str,
    tracing: bool,
    uploads_prefix: str | None = None,
    delete_uploads: bool = False,
    archive_bucket_arn: str | None = None,
    delete_renditions: bool = False,
    distribution_arn: str | None = None,
) -> PolicyDocument:
    """What the function does and nothing more: read an upload, write renditions, keep its
    record (GetItem, conditional PutItem, UpdateItem and DeleteItem: the records and the
    reference items of shared renditions), find a finished record of the same bytes (Query on
    `by-content`) and every record of a deleted key (Query on `by-object`), check renditions
    are still there (HEAD), publish its event, write its own logs; and what Lambda does with
    the role: dead-letter the events that failed every retry, and read the work queue for
    its event source mapping.

    Only with the settings that need them: `delete_uploads` (originals delete or archive)
    deletes an upload once its image COMPLETED, `archive_bucket_arn` (archive) writes it
    there first; `delete_renditions` (deleteRenditionsWithOriginal) lists and deletes the
    renditions of bytes no live record holds any more, and invalidates them in the
    distribution `distribution_arn`.

    With `uploads_prefix` the uploads grants stop at the keys that can trigger the function."""
    upload_keys = f"{iam_literal(uploads_prefix)}*" if uploads_prefix else "*"
    list_uploads: dict[str, Any] = {
        # S3 answers a GetObject of a missing key 404 NoSuchKey only to a caller allowed
        # s3:ListBucket on the bucket, else 403 AccessDenied (Amazon S3 API Reference,
        # "GetObject", Permissions). Without it an upload deleted before processing would look
        # like a permission failure, retried into the dead-letter queue instead of FAILED
        # object_missing. For that check S3 evaluates ListBucket with s3:prefix set to the
        # requested key: AWS's page does not say so, but Ceph matched this AWS behaviour in
        # ceph/ceph#68577 (test_head_object_404_with_policy_prefix in ceph/s3-tests, not
        # marked fails_on_aws). So the s3:prefix condition keeps the 404 for every key the
        # function reads, and the role cannot list anything outside the prefix.
        "Sid": "TellMissingUploadsApart",
        "Effect": "Allow",
        "Action": "s3:ListBucket",
        "Resource": uploads_bucket_arn,
    }
    if uploads_prefix:
        list_uploads["Condition"] = {"StringLike": {"s3:prefix": upload_keys}}
    statements: list[dict[str, Any]] = [
        {
            # The notification only fires for keys under the prefix, so no other key is read.
            "Sid": "ReadUploads",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": f"{uploads_bucket_arn}/{upload_keys}",
        },
        list_uploads,
        {
            "Sid": "WriteRenditions",
            "Effect": "Allow",
            "Action": "s3:PutObject",
            "Resource": f"{renditions_bucket_arn}/*",
        },
        {
            # HEAD is authorized as s3:GetObject; renditions are public through the CDN anyway.
            # Without s3:ListBucket (deleteRenditionsWithOriginal false) a missing rendition
            # answers 403, which the adapter takes as "not there": it is rendered again.
            "Sid": "CheckRenditions",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": f"{renditions_bucket_arn}/*",
        },
        {
            "Sid": "KeepRecords",
            "Effect": "Allow",
            "Action": [
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                "dynamodb:DeleteItem",
            ],
            "Resource": records_table_arn,
        },
        {
            "Sid": "FindRecordsOfTheSameBytes",
            "Effect": "Allow",
            "Action": "dynamodb:Query",
            "Resource": f"{records_table_arn}/index/{CONTENT_INDEX}",
        },
        {
            # A delete event names a key (and no version on an unversioned bucket).
            "Sid": "FindRecordsOfADeletedUpload",
            "Effect": "Allow",
            "Action": "dynamodb:Query",
            "Resource": f"{records_table_arn}/index/{OBJECT_INDEX}",
        },
        {
            "Sid": "PublishEvents",
            "Effect": "Allow",
            "Action": "sns:Publish",
            "Resource": events_topic_arn,
        },
        {
            # Used by Lambda, not by the handler: the async invoke config's on-failure
            # destination receives events with the function's own role.
            "Sid": "DeadLetterFailedEvents",
            "Effect": "Allow",
            "Action": "sqs:SendMessage",
            "Resource": dead_letter_queue_arn,
        },
        {
            # Used by Lambda, not by the handler: the event source mapping polls the work queue
            # with the function's role (what AWSLambdaSQSQueueExecutionRole grants, on this
            # queue alone). Enqueueing is the operator's (imagepipe backfill, redrive).
            "Sid": "ReceiveWork",
            "Effect": "Allow",
            "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"],
            "Resource": work_queue_arn,
        },
        {
            "Sid": "WriteOwnLogs",
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": f"{log_group_arn}:*",
        },
    ]
    if delete_uploads:
        statements.append(
            {
                # originals delete/archive: the upload goes once its image COMPLETED (the
                # bucket is not versioned: no DeleteObjectVersion).
                "Sid": "RemoveFinishedUploads",
                "Effect": "Allow",
                "Action": "s3:DeleteObject",
                "Resource": f"{uploads_bucket_arn}/{upload_keys}",
            }
        )
    if archive_bucket_arn is not None:
        statements.append(
            {
                # A copy from the uploads (read with ReadUploads) to YYYY/MM/DD/<key>.
                "Sid": "ArchiveUploads",
                "Effect": "Allow",
                "Action": "s3:PutObject",
                "Resource": f"{archive_bucket_arn}/*",
            }
        )
    if delete_renditions:
        # The last record of some bytes out deletes every rendition under their content
        # hash: listed by that prefix, then deleted.
        statements += [
            {
                "Sid": "ListUnheldRenditions",
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": renditions_bucket_arn,
            },
            {
                "Sid": "DeleteUnheldRenditions",
                "Effect": "Allow",
                "Action": "s3:DeleteObject",
                "Resource": f"{renditions_bucket_arn}/*",
            },
        ]
        if distribution_arn is not None:
            statements.append(
                {
                    "Sid": "ForgetDeletedRenditions",
                    "Effect": "Allow",
                    "Action": "cloudfront:CreateInvalidation",
                    "Resource": distribution_arn,
                }
            )
    if tracing:
        statements.append(
            {
                # X-Ray has no resource-level permissions: AWS requires "*" here.
                "Sid": "SendTraces",
                "Effect": "Allow",
                "Action": ["xray:PutTraceSegments", "xray:PutTelemetryRecords"],
                "Resource": "*",
            }
        )
    return {"Version": VERSION, "Statement": statements}


def api_function_policy(
    *,
    uploads_bucket_arn: str,
    records_table_arn: str,
    log_group_arn: str,
    uploads_prefix: str | None = None,
) -> PolicyDocument:
    """What the upload API's function does and nothing more: sign presigned POSTs for keys under
    the uploads prefix, find an upload by listing its id's prefix, read its record, write its
    own logs. It never reads an upload's bytes, writes a record or touches the renditions."""
    upload_keys = f"{iam_literal(uploads_prefix)}*" if uploads_prefix else "*"
    return {
        "Version": VERSION,
        "Statement": [
            {
                # A presigned POST carries the signer's credentials: S3 authorizes the
                # browser's upload as this role's s3:PutObject on the key the policy pins.
                "Sid": "SignUploads",
                "Effect": "Allow",
                "Action": "s3:PutObject",
                "Resource": f"{uploads_bucket_arn}/{upload_keys}",
            },
            {
                # GET /images/{id} lists `<prefix><caller>/<id>/` to learn the key and ETag the
                # record is keyed by. The condition refuses a listing without a prefix, or
                # outside the uploads prefix, even when that prefix is empty.
                "Sid": "FindUploads",
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": uploads_bucket_arn,
                "Condition": {"StringLike": {"s3:prefix": upload_keys}},
            },
            {
                "Sid": "ReadRecords",
                "Effect": "Allow",
                "Action": "dynamodb:GetItem",
                "Resource": records_table_arn,
            },
            {
                # GET /images/{id} of an upload not (or no longer) in the bucket: its records
                # by upload id (originals delete/archive, or deleted by its owner).
                "Sid": "FindRecordsOfAnUploadId",
                "Effect": "Allow",
                "Action": "dynamodb:Query",
                "Resource": f"{records_table_arn}/index/{UPLOAD_INDEX}",
            },
            {
                "Sid": "WriteOwnLogs",
                "Effect": "Allow",
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": f"{log_group_arn}:*",
            },
        ],
    }
