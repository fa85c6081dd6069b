"""IAM and bucket-policy documents of the AWS pipeline, as pure functions of plain values.

The component feeds them resolved ARNs (`Output.all(...).apply(...)`), so every
document can be tested without Pulumi. Nothing here grants a `*` action, and
the only `*` resource is X-Ray's, which has no resource-level permissions.
"""

from __future__ import annotations

from typing import Any

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


def function_policy(
    *,
    uploads_bucket_arn: str,
    renditions_bucket_arn: str,
    records_table_arn: str,
    events_topic_arn: str,
    dead_letter_queue_arn: str,
    log_group_arn: str,
    tracing: bool,
) -> PolicyDocument:
    """What the function does and nothing more: read an upload, write renditions, keep its
    record, publish its event, dead-letter what it cannot finish, write its own logs."""
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ReadUploads",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": f"{uploads_bucket_arn}/*",
        },
        {
            # Without ListBucket a missing key answers 403 AccessDenied instead of
            # 404 NoSuchKey, and an upload deleted before processing would look like
            # a permission failure. Bucket-level only: it lists keys, reads nothing.
            "Sid": "TellMissingUploadsApart",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": uploads_bucket_arn,
        },
        {
            "Sid": "WriteRenditions",
            "Effect": "Allow",
            "Action": "s3:PutObject",
            "Resource": f"{renditions_bucket_arn}/*",
        },
        {
            "Sid": "KeepRecords",
            "Effect": "Allow",
            "Action": ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"],
            "Resource": records_table_arn,
        },
        {
            "Sid": "PublishEvents",
            "Effect": "Allow",
            "Action": "sns:Publish",
            "Resource": events_topic_arn,
        },
        {
            "Sid": "DeadLetterFailedEvents",
            "Effect": "Allow",
            "Action": "sqs:SendMessage",
            "Resource": dead_letter_queue_arn,
        },
        {
            "Sid": "WriteOwnLogs",
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": f"{log_group_arn}:*",
        },
    ]
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
