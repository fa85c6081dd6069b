"""`AwsImagePipeline`: uploads bucket -> Lambda -> DynamoDB + SNS, renditions behind CloudFront.

Beside the uploads' notifications, the same function takes a work queue (SQS, through an
event source mapping capped at `backfill_concurrency`) that backfill and redrive fill.

Every child is parented to the component and named `<name>-<role>`. Policy
documents come from the pure builders in `components.aws.policies`; no resource
is ever created inside an `apply`.
"""

from __future__ import annotations

import hashlib
import json
import re

import pulumi
import pulumi_aws as aws

from components import outputs
from components.args import BACKFILL_CONCURRENCY_RANGE
from components.aws import policies
from components.aws.api import create_upload_api
from components.aws.args import AWS_LOG_RETENTION_DAYS, AwsImagePipelineArgs
from components.aws.functions import function_logs_and_role, json_logging
from components.aws.lambda_archive import build_lambda_archive
from functions.aws import contract
from functions.core.metrics import IMAGES_FAILED
from functions.core.settings import SettingsError, shown

TYPE_TOKEN = "imagepipe:index:AwsImagePipeline"
FAILED_EVENT_TYPE = "imagepipe.image.failed"
_PHYSICAL_NAME_LIMIT = 64  # Lambda function and CloudFront OAC names
AWS_MAX_MEMORY_MB = 10240
# AWS advises a source queue's visibility timeout of at least six times the function's
# timeout: a message whose invocation was throttled or timed out is not received again while
# a retry may still be running, and every receive after the first counts toward the DLQ.
WORK_VISIBILITY_TIMEOUT_FACTOR = 6
SQS_MAX_RETENTION_SECONDS = 14 * 24 * 3600  # a backfill of millions may take days
# CloudFront takes viewer certificates from ACM in us-east-1 only, whatever the stack's region.
_CDN_CERTIFICATE_ARN = re.compile(r"^arn:aws[a-z-]*:acm:us-east-1:\d{12}:certificate/\S+$")


def physical_name(name: str) -> str:
    """`<name>-<stack>`: known before anything exists, so the log group can be created first
    under the name Lambda writes to, and unique per stack in one account."""
    base = re.sub(r"[^A-Za-z0-9_-]", "-", f"{name}-{pulumi.get_stack()}")
    if len(base) <= _PHYSICAL_NAME_LIMIT:
        return base
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    return f"{base[: _PHYSICAL_NAME_LIMIT - 9]}-{digest}"


def _json(output: pulumi.Output) -> pulumi.Output[str]:
    return pulumi.Output.json_dumps(output)


class AwsImagePipeline(pulumi.ComponentResource):
    uploads_bucket: pulumi.Output[str]
    """Name of the bucket whose new objects are processed."""
    renditions_bucket: pulumi.Output[str]
    """Name of the bucket the renditions are written to."""
    cdn_url: pulumi.Output[str]
    """https:// URL of the CloudFront distribution serving the renditions."""
    records_table: pulumi.Output[str]
    """Name of the DynamoDB table of image records."""
    events_topic: pulumi.Output[str]
    """ARN of the SNS topic the CloudEvents are published to."""
    function_name: pulumi.Output[str]
    """Name of the Lambda function."""
    dead_letter_queue: pulumi.Output[str]
    """URL of the SQS queue of events that failed every retry."""
    work_queue: pulumi.Output[str]
    """URL of the SQS queue backfill and redrive enqueue work items to."""
    work_dead_letter_queue: pulumi.Output[str]
    """URL of the SQS queue of work items received `WORK_MAX_RECEIVES` times unprocessed."""
    archive_bucket: pulumi.Output[str] | None
    """Name of the bucket finished uploads are moved to (originals `archive`); else None."""
    settings: pulumi.Output[str]
    """The function's settings as JSON: what `imagepipe backfill --stale` compares with."""
    uploads_prefix: pulumi.Output[str]
    """Only keys under this prefix are processed ("" for all); clients upload under it."""
    api_url: pulumi.Output[str] | None
    """Base URL of the upload API (`POST /uploads`, `GET /images/{id}`); None without it."""

    def __init__(
        self,
        name: str,
        args: AwsImagePipelineArgs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(TYPE_TOKEN, name, {}, opts)
        _check_args(args)
        api_options = args.api_options()  # an unusable API stops before any resource exists
        tags = dict(args.tags)
        child = pulumi.ResourceOptions(parent=self)
        invoke = pulumi.InvokeOutputOptions(parent=self)
        account_id = aws.get_caller_identity_output(opts=invoke).account_id
        function_physical_name = physical_name(name)
        archive = build_lambda_archive(args.architecture, args.python_version)
        if archive.bytecode is None:
            pulumi.log.warn(
                f"no Python {args.python_version} interpreter found, so the Lambda archive "
                "ships sources only and every cold start compiles them (about 0.2 s more); "
                f"put python{args.python_version} on PATH to bundle its bytecode",
                resource=self,
            )

        # --- buckets: private, owner-enforced, encrypted, TLS only --------------------
        uploads = aws.s3.Bucket(f"{name}-uploads", tags=tags, opts=child)
        renditions = aws.s3.Bucket(f"{name}-renditions", tags=tags, opts=child)
        buckets = {"uploads": uploads, "renditions": renditions}
        settings = args.settings
        if settings.originals == "archive":
            buckets["archive"] = aws.s3.Bucket(f"{name}-archive", tags=tags, opts=child)
        public_access_blocks = {}
        for role, bucket in buckets.items():
            public_access_blocks[role] = aws.s3.BucketPublicAccessBlock(
                f"{name}-{role}-public-access",
                bucket=bucket.id,
                block_public_acls=True,
                block_public_policy=True,
                ignore_public_acls=True,
                restrict_public_buckets=True,
                opts=child,
            )
            aws.s3.BucketOwnershipControls(
                f"{name}-{role}-ownership",
                bucket=bucket.id,
                rule={"object_ownership": "BucketOwnerEnforced"},
                opts=child,
            )
            aws.s3.BucketServerSideEncryptionConfiguration(
                f"{name}-{role}-encryption",
                bucket=bucket.id,
                # SSE-S3: no key policy to keep in step with CloudFront's OAC.
                rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}}],
                opts=child,
            )
        # No versioning on uploads: the ETag already tells content apart, and versions
        # would keep every overwritten or deleted photo (cost, and deletion requests).
        uploads_rules: list[dict] = [
            {
                "id": "abort-incomplete-multipart-uploads",
                "status": "Enabled",
                "filter": {},
                "abort_incomplete_multipart_upload": {"days_after_initiation": 7},
            }
        ]
        if args.originals_expiry_days:
            uploads_rules.append(
                {
                    "id": "expire-originals",
                    "status": "Enabled",
                    "filter": {},
                    "expiration": {"days": args.originals_expiry_days},
                }
            )
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-uploads-lifecycle", bucket=uploads.id, rules=uploads_rules, opts=child
        )
        aws.s3.BucketPolicy(
            f"{name}-uploads-policy",
            bucket=uploads.id,
            policy=_json(uploads.arn.apply(policies.uploads_bucket_policy)),
            # Policies racing the public-access block fail with OperationAborted.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[public_access_blocks["uploads"]]),
        )
        archive_bucket = buckets.get("archive")
        if archive_bucket is not None:
            aws.s3.BucketLifecycleConfiguration(
                f"{name}-archive-lifecycle",
                bucket=archive_bucket.id,
                rules=[
                    {
                        "id": "abort-incomplete-multipart-uploads",
                        "status": "Enabled",
                        "filter": {},
                        "abort_incomplete_multipart_upload": {"days_after_initiation": 7},
                    },
                    {
                        "id": "archive-storage-class",
                        "status": "Enabled",
                        "filter": {},
                        "transitions": [
                            {"days": 0, "storage_class": contract.ARCHIVE_STORAGE_CLASS}
                        ],
                    },
                ],
                opts=child,
            )
            aws.s3.BucketPolicy(
                f"{name}-archive-policy",
                bucket=archive_bucket.id,
                policy=_json(archive_bucket.arn.apply(policies.archive_bucket_policy)),
                opts=pulumi.ResourceOptions(
                    parent=self, depends_on=[public_access_blocks["archive"]]
                ),
            )

        # --- records, events, dead letters --------------------------------------------
        records = aws.dynamodb.Table(
            f"{name}-records",
            billing_mode="PAY_PER_REQUEST",
            hash_key=contract.RECORDS_KEY,
            attributes=[
                {"name": name, "type": kind} for name, kind in contract.RECORDS_ATTRIBUTES.items()
            ],
            global_secondary_indexes=[
                {
                    "name": index,
                    "hash_key": hash_key,
                    "range_key": range_key,
                    "projection_type": "ALL",
                }
                for index, (hash_key, range_key) in contract.RECORDS_INDEXES.items()
            ],
            point_in_time_recovery={"enabled": True},
            server_side_encryption={"enabled": True},
            tags=tags,
            opts=child,
        )
        events = aws.sns.Topic(
            f"{name}-events", kms_master_key_id="alias/aws/sns", tags=tags, opts=child
        )
        # Unencrypted on purpose: CloudWatch alarms cannot publish to a topic under the
        # AWS-managed SNS key, and alarm texts carry no image data.
        ops = aws.sns.Topic(f"{name}-ops", tags=tags, opts=child)
        dlq = aws.sqs.Queue(
            f"{name}-dlq",
            sqs_managed_sse_enabled=True,
            message_retention_seconds=SQS_MAX_RETENTION_SECONDS,
            tags=tags,
            opts=child,
        )
        # The work queue: backfill and redrive enqueue here, the platform fans out at
        # backfill_concurrency; what is received WORK_MAX_RECEIVES times moves to its own
        # dead-letter queue, which redrive reads.
        work_dlq = aws.sqs.Queue(
            f"{name}-work-dlq",
            sqs_managed_sse_enabled=True,
            message_retention_seconds=SQS_MAX_RETENTION_SECONDS,
            tags=tags,
            opts=child,
        )
        work = aws.sqs.Queue(
            f"{name}-work",
            sqs_managed_sse_enabled=True,
            message_retention_seconds=SQS_MAX_RETENTION_SECONDS,
            visibility_timeout_seconds=WORK_VISIBILITY_TIMEOUT_FACTOR * args.timeout_seconds,
            redrive_policy=_json(
                work_dlq.arn.apply(
                    lambda arn: {
                        "deadLetterTargetArn": arn,
                        "maxReceiveCount": contract.WORK_MAX_RECEIVES,
                    }
                )
            ),
            tags=tags,
            opts=child,
        )
        if args.alarm_email:
            aws.sns.TopicSubscription(
                f"{name}-ops-email",
                topic=ops.arn,
                protocol="email",
                endpoint=args.alarm_email,
                opts=child,
            )
            aws.sns.TopicSubscription(
                f"{name}-failures-email",
                topic=events.arn,
                protocol="email",
                endpoint=args.alarm_email,
                # The handler sets the CloudEvent type as the message attribute "type".
                filter_policy=json.dumps({"type": [FAILED_EVENT_TYPE]}),
                filter_policy_scope="MessageAttributes",
                opts=child,
            )

        # --- delivery: CloudFront reads the renditions bucket through OAC --------------
        origin_access = aws.cloudfront.OriginAccessControl(
            f"{name}-oac",
            name=function_physical_name,
            description="CloudFront reads imagepipe renditions with SigV4.",
            origin_access_control_origin_type="s3",
            signing_behavior="always",
            signing_protocol="sigv4",
            opts=child,
        )
        caching_optimized = aws.cloudfront.get_cache_policy_output(
            name="Managed-CachingOptimized", opts=invoke
        )
        origin_id = "renditions"
        distribution = aws.cloudfront.Distribution(
            f"{name}-cdn",
            enabled=True,
            comment=f"imagepipe renditions ({function_physical_name})",
            http_version="http2and3",
            is_ipv6_enabled=True,
            price_class=args.price_class,
            origins=[
                {
                    "origin_id": origin_id,
                    "domain_name": renditions.bucket_regional_domain_name,
                    "origin_access_control_id": origin_access.id,
                }
            ],
            default_cache_behavior={
                "target_origin_id": origin_id,
                "viewer_protocol_policy": "redirect-to-https",
                "allowed_methods": ["GET", "HEAD"],
                "cached_methods": ["GET", "HEAD"],
                "compress": True,
                "cache_policy_id": caching_optimized.id,
            },
            restrictions={"geo_restriction": {"restriction_type": "none"}},
            aliases=list(args.cdn_aliases) or None,
            viewer_certificate=_viewer_certificate(args.cdn_certificate_arn),
            tags=tags,
            opts=child,
        )
        aws.s3.BucketPolicy(
            f"{name}-renditions-policy",
            bucket=renditions.id,
            policy=_json(
                pulumi.Output.all(renditions.arn, distribution.arn).apply(
                    lambda arns: policies.renditions_bucket_policy(arns[0], arns[1])
                )
            ),
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[public_access_blocks["renditions"]]
            ),
        )

        # --- the function ---------------------------------------------------------------
        logs, role = function_logs_and_role(self, name, function_physical_name, args)
        # Only with the settings that use them: what to delete, where to archive, which CDN.
        arns = {
            "uploads_bucket_arn": uploads.arn,
            "renditions_bucket_arn": renditions.arn,
            "records_table_arn": records.arn,
            "events_topic_arn": events.arn,
            "dead_letter_queue_arn": dlq.arn,
            "work_queue_arn": work.arn,
            "log_group_arn": logs.arn,
        }
        if archive_bucket is not None:
            arns["archive_bucket_arn"] = archive_bucket.arn
        if settings.delete_renditions_with_original:
            arns["distribution_arn"] = distribution.arn
        role_policy = aws.iam.RolePolicy(
            f"{name}-role-policy",
            role=role.id,
            policy=_json(
                pulumi.Output.all(**arns).apply(
                    lambda resolved: policies.function_policy(
                        **resolved,
                        tracing=args.tracing,
                        uploads_prefix=args.uploads_prefix,
                        delete_uploads=settings.originals != "keep",
                        delete_renditions=settings.delete_renditions_with_original,
                    )
                )
            ),
            opts=child,
        )
        function = aws.lambda_.Function(
            f"{name}-fn",
            name=function_physical_name,
            role=role.arn,
            handler=contract.HANDLER,
            runtime=f"python{args.python_version}",
            architectures=[args.architecture],
            # Also what the function's decode budget is derived from (the settings carry it).
            memory_size=args.settings.limits.memory_mb,
            timeout=args.timeout_seconds,
            # Unset: the account's unreserved pool, with no ceiling of its own.
            reserved_concurrent_executions=args.reserved_concurrency,
            code=pulumi.FileArchive(str(archive.path)),
            source_code_hash=archive.source_code_hash,
            logging_config=json_logging(logs),
            tracing_config={"mode": "Active" if args.tracing else "PassThrough"},
            environment={
                "variables": contract.to_env(
                    settings=settings,
                    renditions_bucket=renditions.bucket,
                    records_table=records.name,
                    events_topic_arn=events.arn,
                    archive_bucket=archive_bucket.bucket if archive_bucket is not None else None,
                    cdn_distribution_id=(
                        distribution.id if settings.delete_renditions_with_original else None
                    ),
                )
            },
            tags=tags,
            # The first invocations must find their log and data permissions in place.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[role_policy]),
        )
        aws.lambda_.FunctionRecursionConfig(
            f"{name}-recursion",
            function_name=function.name,
            recursive_loop="Terminate",
            opts=child,
        )
        aws.lambda_.FunctionEventInvokeConfig(
            f"{name}-async",
            function_name=function.name,
            maximum_retry_attempts=contract.RETRY_ATTEMPTS,
            maximum_event_age_in_seconds=args.max_event_age_seconds,
            destination_config={"on_failure": {"destination": dlq.arn}},
            # Lambda checks the role may SendMessage to the destination when this is created.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[role_policy]),
        )
        aws.lambda_.EventSourceMapping(
            f"{name}-work-mapping",
            event_source_arn=work.arn,
            function_name=function.arn,
            # One work item per invocation: the timeout is sized for one image, the queue's
            # concurrency is then the number of images in flight, and an invocation per object
            # is what backfill promises (and the bench counts).
            batch_size=contract.WORK_BATCH_SIZE,
            scaling_config={"maximum_concurrency": args.backfill_concurrency},
            # The handler names the items that failed instead of failing the whole batch.
            function_response_types=["ReportBatchItemFailures"],
            tags=tags,
            # Lambda checks the role may receive from the queue when this is created.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[role_policy]),
        )

        # --- trigger: the permission must exist before S3 validates the notification ----
        permission = aws.lambda_.Permission(
            f"{name}-s3-invoke",
            action="lambda:InvokeFunction",
            function=function.name,
            principal="s3.amazonaws.com",
            source_arn=uploads.arn,
            source_account=account_id,
            opts=child,
        )
        notification_filter = {
            key: value
            for key, value in (
                ("filter_prefix", args.uploads_prefix),
                ("filter_suffix", args.uploads_suffix),
            )
            if value
        }
        aws.s3.BucketNotification(
            f"{name}-uploads-notification",
            bucket=uploads.id,
            lambda_functions=[
                {
                    "lambda_function_arn": function.arn,
                    # Uploads, and deletes that propagate (to the record and, unless another
                    # upload holds them, the renditions), under the same filter.
                    "events": [*contract.UPLOAD_EVENTS, *contract.DELETE_EVENTS],
                    **notification_filter,
                }
            ],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[permission]),
        )

        # --- alarms: anything above zero is worth a look --------------------------------
        alarms = (
            ("errors", "AWS/Lambda", "Errors", "Sum", {"FunctionName": function.name}),
            ("throttles", "AWS/Lambda", "Throttles", "Sum", {"FunctionName": function.name}),
            (
                "recursion",
                "AWS/Lambda",
                "RecursiveInvocationsDropped",
                "Sum",
                {"FunctionName": function.name},
            ),
            (
                "dlq-depth",
                "AWS/SQS",
                "ApproximateNumberOfMessagesVisible",
                "Maximum",
                {"QueueName": dlq.name},
            ),
            # Work items that ran out of receives: `imagepipe redrive` brings them back.
            (
                "work-dlq-depth",
                "AWS/SQS",
                "ApproximateNumberOfMessagesVisible",
                "Maximum",
                {"QueueName": work_dlq.name},
            ),
            # The handler's own metric (EMF): any upload that ended FAILED.
            (
                "failed-images",
                contract.SERVICE_NAME,
                IMAGES_FAILED,
                "Sum",
                {"service": contract.SERVICE_NAME},
            ),
        )
        for role_word, namespace, metric, statistic, dimensions in alarms:
            self.alarm(
                f"{name}-alarm-{role_word}",
                namespace=namespace,
                metric=metric,
                statistic=statistic,
                dimensions=dimensions,
                subject=function_physical_name,
                topic=ops,
                tags=tags,
            )

        # --- the upload API, only when asked for ----------------------------------------
        cdn_url = pulumi.Output.concat("https://", distribution.domain_name)
        self.api_url = None
        if api_options is not None:
            self.api_url = create_upload_api(
                self,
                name,
                args,
                api_options,
                function_name=physical_name(f"{name}-api"),
                archive=archive,
                uploads=uploads,
                records=records,
                ops=ops,
                cdn_url=cdn_url,
            )

        self.uploads_bucket = uploads.bucket
        self.renditions_bucket = renditions.bucket
        self.cdn_url = cdn_url
        self.records_table = records.name
        self.events_topic = events.arn
        self.function_name = function.name
        self.dead_letter_queue = dlq.url
        self.work_queue = work.url
        self.work_dead_letter_queue = work_dlq.url
        self.archive_bucket = archive_bucket.bucket if archive_bucket is not None else None
        self.settings = pulumi.Output.from_input(settings.to_json())
        self.uploads_prefix = pulumi.Output.from_input(args.uploads_prefix or "")
        self.register_outputs(self.stack_outputs())

    def alarm(
        self,
        resource_name: str,
        *,
        namespace: str,
        metric: str,
        statistic: str,
        dimensions: dict[str, pulumi.Input[str]],
        subject: str,
        topic: aws.sns.Topic,
        tags: dict[str, str],
    ) -> aws.cloudwatch.MetricAlarm:
        """An alarm to `topic` when `metric` is above zero in five minutes: the one shape of
        every alarm of the pipeline and of its upload API."""
        return aws.cloudwatch.MetricAlarm(
            resource_name,
            alarm_description=f"imagepipe {metric} above zero ({subject}).",
            namespace=namespace,
            metric_name=metric,
            dimensions=dimensions,
            statistic=statistic,
            period=300,
            evaluation_periods=1,
            threshold=0,
            comparison_operator="GreaterThanThreshold",
            treat_missing_data="notBreaching",
            alarm_actions=[topic.arn],
            ok_actions=[topic.arn],
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def stack_outputs(self) -> dict[str, pulumi.Output]:
        """The stack outputs, camelCase as `pulumi stack output` shows them; `apiUrl` only
        with the upload API, `archiveBucket` only with originals `archive`."""
        optional = {outputs.API_URL: self.api_url} if self.api_url is not None else {}
        if self.archive_bucket is not None:
            optional[outputs.ARCHIVE_BUCKET] = self.archive_bucket
        return {
            outputs.UPLOADS_BUCKET: self.uploads_bucket,
            outputs.UPLOADS_PREFIX: self.uploads_prefix,
            outputs.RENDITIONS_BUCKET: self.renditions_bucket,
            outputs.CDN_URL: self.cdn_url,
            outputs.RECORDS_TABLE: self.records_table,
            outputs.EVENTS_TOPIC: self.events_topic,
            outputs.FUNCTION_NAME: self.function_name,
            outputs.DEAD_LETTER_QUEUE: self.dead_letter_queue,
            outputs.SETTINGS: self.settings,
            outputs.WORK_QUEUE: self.work_queue,
            outputs.WORK_DEAD_LETTER_QUEUE: self.work_dead_letter_queue,
            **optional,
        }


def _viewer_certificate(certificate_arn: str | None) -> dict[str, object]:
    if certificate_arn is None:
        # *.cloudfront.net always gets the TLSv1 policy: minimum_protocol_version is ignored.
        return {"cloudfront_default_certificate": True}
    return {
        "acm_certificate_arn": certificate_arn,
        # Every current client sends SNI; "vip" (dedicated IPs at every edge) is billed monthly.
        "ssl_support_method": "sni-only",
        "minimum_protocol_version": "TLSv1.2_2021",
    }


def _check_args(args: AwsImagePipelineArgs) -> None:
    """Values AWS would only refuse halfway through `pulumi up`."""
    if args.reserved_concurrency is not None and args.reserved_concurrency < 1:
        raise SettingsError(
            f"imagepipe:reservedConcurrency is {shown(args.reserved_concurrency)}; use at least 1 "
            "(0 would stop every invocation), or leave it unset for the account's unreserved pool."
        )
    if args.cdn_aliases and not args.cdn_certificate_arn:
        raise SettingsError(
            "imagepipe:cdnAliases is set but imagepipe:cdnCertificateArn is not; CloudFront "
            "answers to a domain name only with an ACM certificate (us-east-1) that covers it."
        )
    if args.cdn_certificate_arn and not args.cdn_aliases:
        raise SettingsError(
            "imagepipe:cdnCertificateArn is set but imagepipe:cdnAliases is empty; name the "
            "domains the certificate covers, or unset both to serve *.cloudfront.net."
        )
    if args.cdn_certificate_arn and not _CDN_CERTIFICATE_ARN.match(args.cdn_certificate_arn):
        raise SettingsError(
            f"imagepipe:cdnCertificateArn is {shown(args.cdn_certificate_arn)}; CloudFront "
            "takes ACM certificates from us-east-1 only "
            "(arn:aws:acm:us-east-1:<account>:certificate/<id>)."
        )
    memory_mb = args.settings.limits.memory_mb
    if memory_mb > AWS_MAX_MEMORY_MB:
        raise SettingsError(
            f"imagepipe:memoryMb is {memory_mb}; Lambda functions have at most "
            f"{AWS_MAX_MEMORY_MB} MB."
        )
    low, high = BACKFILL_CONCURRENCY_RANGE
    if not low <= args.backfill_concurrency <= high:
        raise SettingsError(
            f"imagepipe:backfillConcurrency is {shown(args.backfill_concurrency)}; use a whole "
            f"number from {low} to {high} (the event source mapping's maximumConcurrency)."
        )
    if args.reserved_concurrency is not None and (
        args.backfill_concurrency > args.reserved_concurrency
    ):
        raise SettingsError(
            f"imagepipe:backfillConcurrency is {args.backfill_concurrency}, above "
            f"imagepipe:reservedConcurrency ({args.reserved_concurrency}); Lambda would throttle "
            "the work queue's invocations and each throttle counts toward its dead-letter queue."
        )
    if args.log_retention_days not in AWS_LOG_RETENTION_DAYS:
        allowed = ", ".join(str(days) for days in AWS_LOG_RETENTION_DAYS)
        raise SettingsError(
            f"log_retention_days is {args.log_retention_days}; CloudWatch keeps logs for one of "
            f"{allowed} days."
        )
