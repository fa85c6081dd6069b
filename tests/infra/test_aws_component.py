"""AwsImagePipeline under Pulumi mocks: every safety property the issue lists, as recorded
registrations (type, inputs, parent, dependencies) and resolved outputs."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from components.aws import AwsImagePipeline, AwsImagePipelineArgs
from components.aws.pipeline import TYPE_TOKEN
from functions.aws import contract
from functions.core.settings import PipelineSettings, SettingsError
from tests.infra.aws_fakes import fake_wheel_dirs, offline_lambda_builds  # noqa: F401 - fixtures
from tests.infra.conftest import (
    ACCOUNT_ID,
    AWS_OUTPUT_NAMES,
    CACHING_OPTIMIZED_POLICY_ID,
    run_program,
)

TAGS = {"team": "media", "env": "test"}
ARGS = AwsImagePipelineArgs(settings=PipelineSettings(), tags=TAGS)
# Types AWS lets carry tags; every one the component creates must carry ours.
TAGGABLE = {
    "aws:s3/bucket:Bucket",
    "aws:lambda/function:Function",
    "aws:iam/role:Role",
    "aws:cloudwatch/logGroup:LogGroup",
    "aws:cloudwatch/metricAlarm:MetricAlarm",
    "aws:sqs/queue:Queue",
    "aws:sns/topic:Topic",
    "aws:dynamodb/table:Table",
    "aws:cloudfront/distribution:Distribution",
    "aws:lambda/eventSourceMapping:EventSourceMapping",
}


@pytest.fixture
def deploy(pulumi_mocks, offline_lambda_builds):  # noqa: F811 - pytest fixture injection
    """Run the component with `args` under the mocks; returns (mocks, resolved outputs)."""

    def run(args: AwsImagePipelineArgs = ARGS):
        outputs = run_program(lambda: AwsImagePipeline("imagepipe", args).stack_outputs())
        return pulumi_mocks, outputs

    return run


def resource_id(resource) -> str:
    return resource.state.get("id") or f"{resource.name}-id"  # what RecordingMocks returns


def bucket_named(mocks, role: str):
    return mocks.one("aws:s3/bucket:Bucket", f"imagepipe-{role}")


def attached_to(mocks, typ: str, bucket) -> list:
    return [r for r in mocks.of_type(typ) if r.inputs.get("bucket") == resource_id(bucket)]


def role_policy_document(mocks) -> dict:
    return json.loads(mocks.one("aws:iam/rolePolicy:RolePolicy").inputs["policy"])


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def mocks_queue_url(resource_name: str) -> str:
    """The URL the mocks give the queue named `resource_name` (no physical name is set)."""
    return f"https://sqs.eu-west-1.amazonaws.com/{ACCOUNT_ID}/{resource_name}-1a2b3c"


def queue(mocks, role: str):
    (found,) = [q for q in mocks.of_type("aws:sqs/queue:Queue") if q.name == f"imagepipe-{role}"]
    return found


# --- component shape -------------------------------------------------------------------


def test_outputs_are_present_and_resolved(deploy):
    _, outputs = deploy()
    assert set(outputs) == AWS_OUTPUT_NAMES
    assert outputs["uploadsPrefix"] == ""  # no prefix: every key is processed
    assert all(
        isinstance(value, str) and value
        for name, value in outputs.items()
        if name != "uploadsPrefix"
    )
    assert outputs["cdnUrl"] == "https://d111111abcdef8.cloudfront.net"
    assert outputs["functionName"] == "imagepipe-test"  # <component>-<stack>
    assert outputs["deadLetterQueue"].startswith("https://sqs.")
    assert outputs["workQueue"] == mocks_queue_url("imagepipe-work")
    assert outputs["workDeadLetterQueue"] == mocks_queue_url("imagepipe-work-dlq")
    assert PipelineSettings.from_json(outputs["settings"]) == ARGS.settings


def test_every_child_is_parented_to_the_component(deploy):
    mocks, _ = deploy()
    component = mocks.one(TYPE_TOKEN)
    assert component.type == "imagepipe:index:AwsImagePipeline"
    children = [r for r in mocks.resources if r is not component]
    assert len(children) > 25
    assert {r.parent for r in children} == {component.urn}
    assert all(r.name.startswith("imagepipe-") for r in children)


def test_tags_on_every_taggable_resource(deploy):
    mocks, _ = deploy()
    taggable = [r for r in mocks.resources if r.type in TAGGABLE]
    assert {r.type for r in taggable} == TAGGABLE
    untagged = [r.name for r in taggable if r.inputs.get("tags") != TAGS]
    assert not untagged, f"missing tags: {untagged}"


# --- buckets ---------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["uploads", "renditions"])
def test_bucket_is_private_owner_enforced_and_encrypted(deploy, role):
    mocks, _ = deploy()
    bucket = bucket_named(mocks, role)
    (block,) = attached_to(mocks, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", bucket)
    flags = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    assert all(block.inputs[flag] is True for flag in flags)
    (ownership,) = attached_to(
        mocks, "aws:s3/bucketOwnershipControls:BucketOwnershipControls", bucket
    )
    assert ownership.inputs["rule"] == {"objectOwnership": "BucketOwnerEnforced"}
    (encryption,) = attached_to(
        mocks,
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
        bucket,
    )
    default = encryption.inputs["rules"][0]["applyServerSideEncryptionByDefault"]
    assert default["sseAlgorithm"] == "AES256"


@pytest.mark.parametrize("role", ["uploads", "renditions"])
def test_bucket_policy_denies_plain_http(deploy, role):
    mocks, _ = deploy()
    bucket = bucket_named(mocks, role)
    (policy,) = attached_to(mocks, "aws:s3/bucketPolicy:BucketPolicy", bucket)
    document = json.loads(policy.inputs["policy"])
    bucket_arn = f"arn:aws:s3:::{bucket.state['bucket']}"
    (deny,) = [s for s in document["Statement"] if s["Effect"] == "Deny"]
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert deny["Principal"] == "*"
    assert set(deny["Resource"]) == {bucket_arn, f"{bucket_arn}/*"}
    # Written after the public-access block, which it would otherwise race.
    (block,) = attached_to(mocks, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", bucket)
    assert block.urn in policy.dependencies


def test_uploads_bucket_grants_nothing(deploy):
    mocks, _ = deploy()
    (policy,) = attached_to(
        mocks, "aws:s3/bucketPolicy:BucketPolicy", bucket_named(mocks, "uploads")
    )
    statements = json.loads(policy.inputs["policy"])["Statement"]
    assert [s for s in statements if s["Effect"] == "Allow"] == []


def test_renditions_readable_only_by_this_distribution_through_oac(deploy):
    mocks, _ = deploy()
    renditions = bucket_named(mocks, "renditions")
    distribution = mocks.one("aws:cloudfront/distribution:Distribution")
    (policy,) = attached_to(mocks, "aws:s3/bucketPolicy:BucketPolicy", renditions)
    (allow,) = [
        s for s in json.loads(policy.inputs["policy"])["Statement"] if s["Effect"] == "Allow"
    ]
    assert allow["Principal"] == {"Service": "cloudfront.amazonaws.com"}
    assert allow["Action"] == "s3:GetObject"
    assert allow["Resource"] == f"arn:aws:s3:::{renditions.state['bucket']}/*"
    assert allow["Condition"] == {"StringEquals": {"AWS:SourceArn": distribution.state["arn"]}}

    oac = mocks.one("aws:cloudfront/originAccessControl:OriginAccessControl")
    assert oac.inputs["signingBehavior"] == "always"
    assert oac.inputs["signingProtocol"] == "sigv4"
    assert oac.inputs["originAccessControlOriginType"] == "s3"
    assert mocks.of_type("aws:cloudfront/originAccessIdentity:OriginAccessIdentity") == []
    (origin,) = distribution.inputs["origins"]
    assert origin["originAccessControlId"] == resource_id(oac)
    assert origin["domainName"] == renditions.state["bucketRegionalDomainName"]
    assert "s3OriginConfig" not in origin  # that is where an OAI would go


def test_distribution_serves_https_compressed_with_the_managed_cache_policy(deploy):
    mocks, _ = deploy()
    distribution = mocks.one("aws:cloudfront/distribution:Distribution").inputs
    behaviour = distribution["defaultCacheBehavior"]
    assert behaviour["viewerProtocolPolicy"] == "redirect-to-https"
    assert behaviour["compress"] is True
    assert behaviour["cachePolicyId"] == CACHING_OPTIMIZED_POLICY_ID
    assert behaviour["allowedMethods"] == ["GET", "HEAD"]
    assert distribution["httpVersion"] == "http2and3"
    assert distribution["priceClass"] == "PriceClass_100"
    # With the default certificate CloudFront ignores minimumProtocolVersion: none is sent.
    assert distribution["viewerCertificate"] == {"cloudfrontDefaultCertificate": True}
    assert "aliases" not in distribution
    calls = dict(mocks.calls)
    policy_call = calls["aws:cloudfront/getCachePolicy:getCachePolicy"]
    assert policy_call["name"] == "Managed-CachingOptimized"


CERTIFICATE_ARN = (
    f"arn:aws:acm:us-east-1:{ACCOUNT_ID}:certificate/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
)


def test_a_certificate_of_your_own_serves_the_aliases_at_tls_1_2(deploy):
    args = replace(
        ARGS,
        cdn_certificate_arn=CERTIFICATE_ARN,
        cdn_aliases=("img.example.com", "cdn.example.com"),
    )
    mocks, _ = deploy(args)
    distribution = mocks.one("aws:cloudfront/distribution:Distribution").inputs
    assert distribution["viewerCertificate"] == {
        "acmCertificateArn": CERTIFICATE_ARN,
        "sslSupportMethod": "sni-only",
        "minimumProtocolVersion": "TLSv1.2_2021",
    }
    assert distribution["aliases"] == ["img.example.com", "cdn.example.com"]
    assert distribution["defaultCacheBehavior"]["viewerProtocolPolicy"] == "redirect-to-https"


@pytest.mark.parametrize(
    ("certificate", "aliases", "message"),
    [
        (
            None,
            ("img.example.com",),
            r"imagepipe:cdnAliases is set but imagepipe:cdnCertificateArn",
        ),
        (CERTIFICATE_ARN, (), r"imagepipe:cdnCertificateArn is set but imagepipe:cdnAliases"),
        (
            CERTIFICATE_ARN.replace("us-east-1", "eu-west-1"),
            ("img.example.com",),
            r"imagepipe:cdnCertificateArn is 'arn:aws:acm:eu-west-1:.*us-east-1 only",
        ),
    ],
)
def test_aliases_and_certificate_come_together(deploy, certificate, aliases, message):
    with pytest.raises(SettingsError, match=message):
        deploy(replace(ARGS, cdn_certificate_arn=certificate, cdn_aliases=aliases))


def test_originals_expire_only_when_asked(deploy):
    mocks, _ = deploy(replace(ARGS, originals_expiry_days=30))
    (lifecycle,) = attached_to(
        mocks,
        "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration",
        bucket_named(mocks, "uploads"),
    )
    expiring = [rule for rule in lifecycle.inputs["rules"] if "expiration" in rule]
    assert [rule["expiration"]["days"] for rule in expiring] == [30]


def test_originals_are_kept_by_default(deploy):
    mocks, _ = deploy()
    (lifecycle,) = mocks.of_type("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
    assert all("expiration" not in rule for rule in lifecycle.inputs["rules"])
    assert (
        lifecycle.inputs["rules"][0]["abortIncompleteMultipartUpload"]["daysAfterInitiation"] == 7
    )


# --- the function and its permissions --------------------------------------------------


def test_function_configuration(deploy):
    mocks, outputs = deploy()
    function = mocks.one("aws:lambda/function:Function").inputs
    assert function["handler"] == "functions.aws.main.handler"
    assert function["runtime"] == "python3.12"
    assert function["architectures"] == ["arm64"]
    assert function["memorySize"] == 1024
    assert function["timeout"] == 60
    assert function["tracingConfig"] == {"mode": "PassThrough"}
    logs = mocks.one("aws:cloudwatch/logGroup:LogGroup").inputs
    assert logs["name"] == f"/aws/lambda/{outputs['functionName']}"
    assert logs["retentionInDays"] == 30
    assert function["loggingConfig"]["logFormat"] == "JSON"
    assert function["loggingConfig"]["logGroup"] == logs["name"]
    variables = function["environment"]["variables"]
    # What the function will read back: the contract's own reader, over what was set.
    assert contract.from_env(variables) == contract.FunctionEnvironment(
        settings=ARGS.settings,
        renditions_bucket=outputs["renditionsBucket"],
        records_table=outputs["recordsTable"],
        events_topic_arn=outputs["eventsTopic"],
        # deleteRenditionsWithOriginal (on by default) invalidates them in this distribution.
        cdn_distribution_id=mocks.one("aws:cloudfront/distribution:Distribution").state["id"],
    )
    assert variables["POWERTOOLS_SERVICE_NAME"] == contract.SERVICE_NAME  # Powertools' own


def test_function_code_is_the_deterministic_archive(deploy):
    mocks, _ = deploy()
    function = mocks.one("aws:lambda/function:Function").inputs
    code_path = function["code"].path
    assert code_path.endswith(".zip")
    import base64
    import hashlib
    from pathlib import Path

    digest = hashlib.sha256(Path(code_path).read_bytes()).digest()
    assert function["sourceCodeHash"] == base64.b64encode(digest).decode()


def test_reserved_concurrency_is_unset_by_default(deploy):
    mocks, _ = deploy()
    assert "reservedConcurrentExecutions" not in mocks.one("aws:lambda/function:Function").inputs


def test_reserved_concurrency_caps_the_function(deploy):
    mocks, _ = deploy(replace(ARGS, reserved_concurrency=25))
    function = mocks.one("aws:lambda/function:Function").inputs
    assert function["reservedConcurrentExecutions"] == 25


@pytest.mark.parametrize("value", [0, -1])
def test_a_reserved_concurrency_below_one_is_rejected_naming_the_key(deploy, value):
    with pytest.raises(
        SettingsError, match=rf"imagepipe:reservedConcurrency is {value}; .*at least 1"
    ):
        deploy(replace(ARGS, reserved_concurrency=value))


def test_x86_and_tracing_options_reach_the_function(deploy):
    settings = replace(ARGS.settings, limits=replace(ARGS.settings.limits, memory_mb=2048))
    mocks, _ = deploy(replace(ARGS, settings=settings, architecture="x86_64", tracing=True))
    function = mocks.one("aws:lambda/function:Function").inputs
    assert function["architectures"] == ["x86_64"]
    assert function["tracingConfig"] == {"mode": "Active"}
    assert function["memorySize"] == 2048


def wildcard_grants(document: dict) -> list[tuple[str, str]]:
    """(action, resource) pairs of Allow statements where either holds a '*'."""
    found = []
    for statement in document["Statement"]:
        assert statement["Effect"] == "Allow"
        for action in as_list(statement["Action"]):
            for resource in as_list(statement["Resource"]):
                if "*" in action or resource == "*":
                    found.append((action, resource))
    return found


def test_role_is_least_privilege_without_tracing(deploy):
    mocks, outputs = deploy()
    document = role_policy_document(mocks)
    assert wildcard_grants(document) == []
    grants: dict[str, list[str]] = {}
    for statement in document["Statement"]:
        for action in as_list(statement["Action"]):
            grants.setdefault(action, []).extend(as_list(statement["Resource"]))
    uploads_arn = f"arn:aws:s3:::{outputs['uploadsBucket']}"
    renditions_arn = f"arn:aws:s3:::{outputs['renditionsBucket']}"
    table_arn = mocks.one("aws:dynamodb/table:Table").state["arn"]
    dlq_arn = queue(mocks, "dlq").state["arn"]
    work_arn = queue(mocks, "work").state["arn"]
    log_group_arn = mocks.one("aws:cloudwatch/logGroup:LogGroup").state["arn"]
    distribution_arn = mocks.one("aws:cloudfront/distribution:Distribution").state["arn"]
    assert grants == {
        # Uploads are read (never deleted: originals keep); renditions checked with HEAD
        # before they are reused, and listed and deleted once no live record holds them.
        "s3:GetObject": [f"{uploads_arn}/*", f"{renditions_arn}/*"],
        "s3:ListBucket": [uploads_arn, renditions_arn],
        "s3:PutObject": [f"{renditions_arn}/*"],
        "s3:DeleteObject": [f"{renditions_arn}/*"],
        "cloudfront:CreateInvalidation": [distribution_arn],
        "dynamodb:GetItem": [table_arn],
        "dynamodb:PutItem": [table_arn],
        "dynamodb:UpdateItem": [table_arn],
        "dynamodb:DeleteItem": [table_arn],
        "dynamodb:Query": [f"{table_arn}/index/by-content", f"{table_arn}/index/by-object"],
        "sns:Publish": [outputs["eventsTopic"]],
        "sqs:SendMessage": [dlq_arn],
        # The event source mapping's, on the work queue alone; nothing may enqueue.
        "sqs:ReceiveMessage": [work_arn],
        "sqs:DeleteMessage": [work_arn],
        "sqs:GetQueueAttributes": [work_arn],
        "logs:CreateLogStream": [f"{log_group_arn}:*"],
        "logs:PutLogEvents": [f"{log_group_arn}:*"],
    }
    role = mocks.one("aws:iam/role:Role").inputs
    trust = json.loads(role["assumeRolePolicy"])
    assert trust["Statement"] == [
        {
            "Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ]
    assert "managedPolicyArns" not in role  # no AWS-managed policy with broad logs rights
    listing = next(s for s in document["Statement"] if s["Sid"] == "TellMissingUploadsApart")
    assert "Condition" not in listing  # no prefix: every key of the bucket can trigger


def test_an_uploads_prefix_scopes_reading_and_listing_to_it(deploy):
    mocks, outputs = deploy(replace(ARGS, uploads_prefix="incoming/"))
    statements = {s["Sid"]: s for s in role_policy_document(mocks)["Statement"]}
    uploads_arn = f"arn:aws:s3:::{outputs['uploadsBucket']}"
    assert statements["ReadUploads"]["Action"] == "s3:GetObject"
    assert statements["ReadUploads"]["Resource"] == f"{uploads_arn}/incoming/*"
    listing = statements["TellMissingUploadsApart"]
    assert (listing["Action"], listing["Resource"]) == ("s3:ListBucket", uploads_arn)
    assert listing["Condition"] == {"StringLike": {"s3:prefix": "incoming/*"}}


def test_iam_wildcards_in_an_uploads_prefix_are_matched_literally(deploy):
    mocks, outputs = deploy(replace(ARGS, uploads_prefix="a*b?c$/"))
    statements = {s["Sid"]: s for s in role_policy_document(mocks)["Statement"]}
    literal = "a${*}b${?}c${$}/*"
    uploads_arn = f"arn:aws:s3:::{outputs['uploadsBucket']}"
    assert statements["ReadUploads"]["Resource"] == f"{uploads_arn}/{literal}"
    assert statements["TellMissingUploadsApart"]["Condition"]["StringLike"]["s3:prefix"] == literal


def test_only_xray_gets_a_star_resource_and_only_with_tracing(deploy):
    mocks, _ = deploy(replace(ARGS, tracing=True))
    assert wildcard_grants(role_policy_document(mocks)) == [
        ("xray:PutTraceSegments", "*"),
        ("xray:PutTelemetryRecords", "*"),
    ]


def test_function_waits_for_its_permissions(deploy):
    mocks, _ = deploy()
    role_policy = mocks.one("aws:iam/rolePolicy:RolePolicy")
    assert role_policy.urn in mocks.one("aws:lambda/function:Function").dependencies
    # Lambda validates the DLQ destination against the role when the config is created.
    invoke_config = mocks.one("aws:lambda/functionEventInvokeConfig:FunctionEventInvokeConfig")
    assert role_policy.urn in invoke_config.dependencies


# --- trigger, retries, recursion -------------------------------------------------------


def test_notification_depends_on_a_permission_scoped_to_bucket_and_account(deploy):
    mocks, outputs = deploy()
    permission = mocks.one("aws:lambda/permission:Permission")
    assert permission.inputs["principal"] == "s3.amazonaws.com"
    assert permission.inputs["action"] == "lambda:InvokeFunction"
    assert permission.inputs["sourceArn"] == f"arn:aws:s3:::{outputs['uploadsBucket']}"
    assert permission.inputs["sourceAccount"] == ACCOUNT_ID
    assert permission.inputs["function"] == outputs["functionName"]

    notification = mocks.one("aws:s3/bucketNotification:BucketNotification")
    assert permission.urn in notification.dependencies
    assert notification.inputs["bucket"] == resource_id(bucket_named(mocks, "uploads"))
    (target,) = notification.inputs["lambdaFunctions"]
    function_state = mocks.one("aws:lambda/function:Function").state
    assert target["lambdaFunctionArn"] == function_state["arn"]
    # Uploads, and deletes that propagate: the same function, the same filter.
    assert target["events"] == [
        "s3:ObjectCreated:*",
        "s3:ObjectRemoved:*",
        "s3:LifecycleExpiration:*",
    ]
    assert "filterPrefix" not in target and "filterSuffix" not in target


def test_notification_filters(deploy):
    mocks, _ = deploy(replace(ARGS, uploads_prefix="incoming/", uploads_suffix=".jpg"))
    (target,) = mocks.one("aws:s3/bucketNotification:BucketNotification").inputs["lambdaFunctions"]
    assert target["filterPrefix"] == "incoming/"
    assert target["filterSuffix"] == ".jpg"


def test_async_invocations_retry_twice_then_dead_letter(deploy):
    mocks, outputs = deploy(replace(ARGS, max_event_age_seconds=900))
    config = mocks.one("aws:lambda/functionEventInvokeConfig:FunctionEventInvokeConfig").inputs
    dlq = queue(mocks, "dlq")
    assert config["functionName"] == outputs["functionName"]
    assert config["maximumRetryAttempts"] == 2
    assert config["maximumEventAgeInSeconds"] == 900
    assert config["destinationConfig"] == {"onFailure": {"destination": dlq.state["arn"]}}
    assert dlq.inputs["sqsManagedSseEnabled"] is True
    assert dlq.inputs["messageRetentionSeconds"] == 1_209_600


def test_recursive_loops_are_terminated(deploy):
    mocks, outputs = deploy()
    recursion = mocks.one("aws:lambda/functionRecursionConfig:FunctionRecursionConfig").inputs
    assert recursion == {"functionName": outputs["functionName"], "recursiveLoop": "Terminate"}


# --- records, events, alarms -----------------------------------------------------------


def test_records_table_matches_the_handler_contract(deploy):
    mocks, _ = deploy()
    table = mocks.one("aws:dynamodb/table:Table").inputs
    assert table["billingMode"] == "PAY_PER_REQUEST"
    assert table["hashKey"] == "id"
    # Every attribute and index the contract declares, and at least the ones named here.
    assert {a["name"]: a["type"] for a in table["attributes"]} == contract.RECORDS_ATTRIBUTES
    indexes = {index.pop("name"): index for index in table["globalSecondaryIndexes"]}
    assert set(indexes) == set(contract.RECORDS_INDEXES)
    assert all(index["projectionType"] == "ALL" for index in indexes.values())
    keys = {name: (index["hashKey"], index["rangeKey"]) for name, index in indexes.items()}
    assert keys["by-status"] == ("status", "updated_at")
    # Sparse: only COMPLETED records carry completed_sha256.
    assert keys["by-content"] == ("completed_sha256", "updated_at")
    # Every record of one key: a delete event names the key.
    assert keys["by-object"] == ("source_object", "updated_at")
    assert table["pointInTimeRecovery"] == {"enabled": True}
    assert table["serverSideEncryption"] == {"enabled": True}


def test_events_topic_is_encrypted(deploy):
    mocks, _ = deploy()
    events = mocks.one("aws:sns/topic:Topic", "events").inputs
    assert events["kmsMasterKeyId"] == "alias/aws/sns"


def test_alarms_watch_errors_throttles_recursion_dlq_depth_and_failed_images(deploy):
    mocks, outputs = deploy()
    ops_arn = mocks.one("aws:sns/topic:Topic", "ops").state["arn"]
    dlq_name = queue(mocks, "dlq").state["name"]
    every_alarm = mocks.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")
    alarms = {
        alarm.inputs["metricName"]: alarm.inputs
        for alarm in every_alarm
        if alarm.name != "imagepipe-alarm-work-dlq-depth"  # the same metric, another queue
    }
    assert len(every_alarm) == len(alarms) + 1
    assert set(alarms) == {
        "Errors",
        "Throttles",
        "RecursiveInvocationsDropped",
        "ApproximateNumberOfMessagesVisible",
        "ImagesFailed",
    }
    for metric, alarm in alarms.items():
        assert alarm["alarmActions"] == [ops_arn], metric
        assert alarm["comparisonOperator"] == "GreaterThanThreshold"
        assert alarm["threshold"] == 0
    function_dimension = {"FunctionName": outputs["functionName"]}
    assert alarms["Errors"]["dimensions"] == function_dimension
    assert alarms["Throttles"]["dimensions"] == function_dimension
    assert alarms["RecursiveInvocationsDropped"]["dimensions"] == function_dimension
    assert alarms["ApproximateNumberOfMessagesVisible"]["namespace"] == "AWS/SQS"
    assert alarms["ApproximateNumberOfMessagesVisible"]["dimensions"] == {"QueueName": dlq_name}
    # The handler's EMF total (its per-ErrorCode twin is a metric of its own).
    assert alarms["ImagesFailed"]["namespace"] == "imagepipe"
    assert alarms["ImagesFailed"]["dimensions"] == {"service": "imagepipe"}


def test_no_email_subscription_without_an_address(deploy):
    mocks, _ = deploy()
    assert mocks.of_type("aws:sns/topicSubscription:TopicSubscription") == []


def test_alarm_email_gets_alarms_and_only_failure_events(deploy):
    mocks, _ = deploy(replace(ARGS, alarm_email="ops@example.com"))
    topics = {
        mocks.one("aws:sns/topic:Topic", role).state["arn"]: role for role in ("ops", "events")
    }
    subscriptions = {
        topics[s.inputs["topic"]]: s.inputs
        for s in mocks.of_type("aws:sns/topicSubscription:TopicSubscription")
    }
    assert set(subscriptions) == {"ops", "events"}
    assert all(s["protocol"] == "email" for s in subscriptions.values())
    assert all(s["endpoint"] == "ops@example.com" for s in subscriptions.values())
    assert "filterPolicy" not in subscriptions["ops"]
    failures = subscriptions["events"]
    assert json.loads(failures["filterPolicy"]) == {"type": ["imagepipe.image.failed"]}
    assert failures["filterPolicyScope"] == "MessageAttributes"


def test_log_retention_aws_would_refuse_is_rejected_up_front(deploy):
    with pytest.raises(SettingsError, match=r"log_retention_days is 45; .*one of 1, 3, 5"):
        deploy(replace(ARGS, log_retention_days=45))
