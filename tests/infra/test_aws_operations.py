"""AwsImagePipeline's operations resources under Pulumi mocks (issue 12): the work queue and
its dead-letter queue, the event source mapping with its concurrency, deletes that reach the
function, and the grants each `originals` / `deleteRenditionsWithOriginal` setting adds."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from components import outputs as output_names
from components.aws import AwsImagePipeline, AwsImagePipelineArgs
from functions.aws import contract
from functions.core.settings import PipelineSettings, SettingsError
from tests.infra.aws_fakes import fake_wheel_dirs, offline_lambda_builds  # noqa: F401 - fixtures
from tests.infra.conftest import AWS_OUTPUT_NAMES, WITH_ARCHIVE_OUTPUT_NAMES, run_program

TAGS = {"team": "media"}
ARGS = AwsImagePipelineArgs(settings=PipelineSettings(), tags=TAGS)
QUEUE = "aws:sqs/queue:Queue"
MAPPING = "aws:lambda/eventSourceMapping:EventSourceMapping"
BUCKET = "aws:s3/bucket:Bucket"


def with_settings(**changes) -> AwsImagePipelineArgs:
    return replace(ARGS, settings=replace(ARGS.settings, **changes))


@pytest.fixture
def deploy(pulumi_mocks, offline_lambda_builds):  # noqa: F811 - pytest fixture injection
    def run(args: AwsImagePipelineArgs = ARGS):
        exported = run_program(lambda: AwsImagePipeline("imagepipe", args).stack_outputs())
        return pulumi_mocks, exported

    return run


def queue(mocks, role: str):
    (found,) = [q for q in mocks.of_type(QUEUE) if q.name == f"imagepipe-{role}"]
    return found


def statements(mocks) -> dict[str, dict]:
    policy = mocks.one("aws:iam/rolePolicy:RolePolicy").inputs["policy"]
    return {s["Sid"]: s for s in json.loads(policy)["Statement"]}


def grants(mocks) -> dict[str, list[str]]:
    """action -> resources, over every statement of the function's role."""
    found: dict[str, list[str]] = {}
    for statement in statements(mocks).values():
        actions = statement["Action"]
        resources = statement["Resource"]
        for action in actions if isinstance(actions, list) else [actions]:
            found.setdefault(action, []).extend(
                resources if isinstance(resources, list) else [resources]
            )
    return found


def function_env(mocks) -> contract.FunctionEnvironment:
    function = mocks.one("aws:lambda/function:Function").inputs
    return contract.from_env(function["environment"]["variables"])


# --- the work queue --------------------------------------------------------------------


def test_the_work_queue_dead_letters_after_the_contracts_receives(deploy):
    mocks, exported = deploy(replace(ARGS, timeout_seconds=120))
    work, work_dlq = queue(mocks, "work"), queue(mocks, "work-dlq")
    redrive = json.loads(work.inputs["redrivePolicy"])
    assert redrive == {
        "deadLetterTargetArn": work_dlq.state["arn"],
        "maxReceiveCount": contract.WORK_MAX_RECEIVES,
    }
    # At least six times the function's timeout, as AWS advises for an event source.
    assert work.inputs["visibilityTimeoutSeconds"] == 6 * 120
    for each in (work, work_dlq):
        assert each.inputs["sqsManagedSseEnabled"] is True
        assert each.inputs["messageRetentionSeconds"] == 14 * 24 * 3600
        assert each.inputs["tags"] == TAGS
    assert "redrivePolicy" not in work_dlq.inputs
    assert exported["workQueue"] == work.state["url"]
    assert exported["workDeadLetterQueue"] == work_dlq.state["url"]
    # Not the function's own dead-letter queue of failed S3 events.
    assert queue(mocks, "dlq").state["url"] == exported["deadLetterQueue"]
    assert (
        len({exported["workQueue"], exported["workDeadLetterQueue"], exported["deadLetterQueue"]})
        == 3
    )


def test_the_mapping_feeds_one_item_at_a_time_to_the_same_function_at_the_cap(deploy):
    mocks, _ = deploy()
    mapping = mocks.one(MAPPING)
    function = mocks.one("aws:lambda/function:Function")
    assert mapping.inputs["eventSourceArn"] == queue(mocks, "work").state["arn"]
    assert mapping.inputs["functionName"] == function.state["arn"]
    assert mapping.inputs["batchSize"] == 1
    assert mapping.inputs["scalingConfig"] == {
        "maximumConcurrency": contract.DEFAULT_BACKFILL_CONCURRENCY
    }
    assert mapping.inputs["functionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping.inputs["tags"] == TAGS
    # Lambda checks at creation that the role may read the queue.
    role_policy = mocks.one("aws:iam/rolePolicy:RolePolicy")
    assert role_policy.urn in mapping.dependencies
    assert len(mocks.of_type("aws:lambda/function:Function")) == 1


def test_backfill_concurrency_is_the_mappings_maximum_concurrency(deploy):
    mocks, _ = deploy(replace(ARGS, backfill_concurrency=17))
    assert mocks.one(MAPPING).inputs["scalingConfig"] == {"maximumConcurrency": 17}


@pytest.mark.parametrize("value", [1, 1001])
def test_a_backfill_concurrency_lambda_refuses_stops_before_any_resource(deploy, value):
    with pytest.raises(
        SettingsError, match=rf"imagepipe:backfillConcurrency is {value}; .*from 2 to 1000"
    ):
        deploy(replace(ARGS, backfill_concurrency=value))


def test_backfill_concurrency_above_the_reserved_concurrency_is_refused(deploy):
    with pytest.raises(
        SettingsError,
        match=r"imagepipe:backfillConcurrency is 8, above imagepipe:reservedConcurrency \(6\)",
    ):
        deploy(replace(ARGS, backfill_concurrency=8, reserved_concurrency=6))
    mocks, _ = deploy(replace(ARGS, backfill_concurrency=6, reserved_concurrency=6))
    assert mocks.one(MAPPING).inputs["scalingConfig"] == {"maximumConcurrency": 6}


def test_the_role_reads_the_work_queue_and_enqueues_nowhere(deploy):
    mocks, _ = deploy()
    work_arn = queue(mocks, "work").state["arn"]
    found = grants(mocks)
    for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"):
        assert found[action] == [work_arn], action
    # Only Lambda's on-failure destination is sent to; backfill and redrive enqueue as the
    # operator, never as the function.
    assert found["sqs:SendMessage"] == [queue(mocks, "dlq").state["arn"]]
    assert not [a for a in found if a.startswith("sqs:") and a.endswith("*")]


def test_the_work_dead_letter_queue_depth_alarms_the_ops_topic(deploy):
    mocks, _ = deploy()
    alarm = mocks.one("aws:cloudwatch/metricAlarm:MetricAlarm", "work-dlq-depth").inputs
    ops_arn = mocks.one("aws:sns/topic:Topic", "ops").state["arn"]
    assert (alarm["namespace"], alarm["metricName"]) == (
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
    )
    assert alarm["dimensions"] == {"QueueName": queue(mocks, "work-dlq").state["name"]}
    assert alarm["alarmActions"] == [ops_arn]
    assert alarm["threshold"] == 0


# --- deletes that propagate ------------------------------------------------------------


def test_deletes_reach_the_function_under_the_uploads_filter(deploy):
    mocks, _ = deploy(replace(ARGS, uploads_prefix="incoming/", uploads_suffix=".jpg"))
    (target,) = mocks.one("aws:s3/bucketNotification:BucketNotification").inputs["lambdaFunctions"]
    assert target["events"] == [*contract.UPLOAD_EVENTS, *contract.DELETE_EVENTS]
    assert "s3:ObjectRemoved:*" in target["events"]
    assert (target["filterPrefix"], target["filterSuffix"]) == ("incoming/", ".jpg")


def test_records_are_found_by_object_for_a_delete(deploy):
    mocks, _ = deploy()
    table = mocks.one("aws:dynamodb/table:Table")
    indexes = {index["name"]: index for index in table.inputs["globalSecondaryIndexes"]}
    assert indexes[contract.OBJECT_INDEX]["hashKey"] == contract.OBJECT_ATTRIBUTE
    table_arn = table.state["arn"]
    found = grants(mocks)
    assert f"{table_arn}/index/{contract.OBJECT_INDEX}" in found["dynamodb:Query"]
    # Reference items of shared renditions are updated in place and removed.
    assert found["dynamodb:UpdateItem"] == [table_arn]
    assert found["dynamodb:DeleteItem"] == [table_arn]


def test_renditions_of_deleted_uploads_are_deleted_and_invalidated_by_default(deploy):
    mocks, exported = deploy()
    renditions_arn = f"arn:aws:s3:::{exported['renditionsBucket']}"
    distribution = mocks.one("aws:cloudfront/distribution:Distribution")
    found = grants(mocks)
    assert renditions_arn in found["s3:ListBucket"]
    assert found["s3:DeleteObject"] == [f"{renditions_arn}/*"]
    assert found["cloudfront:CreateInvalidation"] == [distribution.state["arn"]]
    assert function_env(mocks).cdn_distribution_id == distribution.state["id"]


def test_without_delete_renditions_nothing_may_delete_or_invalidate_them(deploy):
    mocks, exported = deploy(with_settings(delete_renditions_with_original=False))
    found = grants(mocks)
    uploads_arn = f"arn:aws:s3:::{exported['uploadsBucket']}"
    assert found["s3:ListBucket"] == [uploads_arn]
    assert "s3:DeleteObject" not in found
    assert "cloudfront:CreateInvalidation" not in found
    assert function_env(mocks).cdn_distribution_id is None
    # Deletes still reach the function: the record is marked DELETED either way.
    (target,) = mocks.one("aws:s3/bucketNotification:BucketNotification").inputs["lambdaFunctions"]
    assert "s3:ObjectRemoved:*" in target["events"]


# --- what happens to originals ---------------------------------------------------------


def test_originals_keep_grants_no_delete_on_uploads_and_no_archive(deploy):
    mocks, exported = deploy(with_settings(originals="keep"))
    uploads_arn = f"arn:aws:s3:::{exported['uploadsBucket']}"
    found = grants(mocks)
    for action in ("s3:DeleteObject", "s3:DeleteObjectVersion"):
        assert not [r for r in found.get(action, []) if r.startswith(uploads_arn)], action
    assert {b.name for b in mocks.of_type(BUCKET)} == {"imagepipe-uploads", "imagepipe-renditions"}
    assert function_env(mocks).archive_bucket is None
    assert output_names.ARCHIVE_BUCKET not in exported
    assert set(exported) == AWS_OUTPUT_NAMES


@pytest.mark.parametrize("mode", ["delete", "archive"])
def test_originals_delete_and_archive_may_delete_uploads_under_the_prefix_only(deploy, mode):
    mocks, exported = deploy(replace(with_settings(originals=mode), uploads_prefix="incoming/"))
    uploads_arn = f"arn:aws:s3:::{exported['uploadsBucket']}"
    removing = statements(mocks)["RemoveFinishedUploads"]
    assert removing["Action"] == "s3:DeleteObject"  # an unversioned bucket: never by version
    assert removing["Resource"] == f"{uploads_arn}/incoming/*"
    assert PipelineSettings.from_json(exported["settings"]).originals == mode


def test_originals_delete_has_no_archive(deploy):
    mocks, exported = deploy(with_settings(originals="delete"))
    assert not [b for b in mocks.of_type(BUCKET) if b.name == "imagepipe-archive"]
    assert "ArchiveUploads" not in statements(mocks)
    assert set(exported) == AWS_OUTPUT_NAMES


def test_originals_archive_has_a_private_encrypted_bucket_the_function_may_write(deploy):
    mocks, exported = deploy(with_settings(originals="archive"))
    archive = mocks.one(BUCKET, "imagepipe-archive")
    archive_id = archive.state.get("id") or f"{archive.name}-id"
    archive_arn = f"arn:aws:s3:::{archive.state['bucket']}"

    def attached(typ: str):
        (found,) = [r for r in mocks.of_type(typ) if r.inputs.get("bucket") == archive_id]
        return found.inputs

    block = attached("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    flags = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    assert all(block[flag] is True for flag in flags)
    ownership = attached("aws:s3/bucketOwnershipControls:BucketOwnershipControls")
    assert ownership["rule"] == {"objectOwnership": "BucketOwnerEnforced"}
    encryption = attached(
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
    )
    assert encryption["rules"][0]["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "AES256"
    policy = json.loads(attached("aws:s3/bucketPolicy:BucketPolicy")["policy"])
    assert [s["Effect"] for s in policy["Statement"]] == ["Deny"]  # TLS only, grants nothing
    assert policy["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert archive.inputs["tags"] == TAGS

    # S3 Glacier Instant Retrieval: whatever the copy was written as, the bucket moves it.
    rules = attached("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")["rules"]
    transitions = [t for rule in rules for t in rule.get("transitions", [])]
    assert transitions == [{"days": 0, "storageClass": "GLACIER_IR"}]
    assert all("expiration" not in rule for rule in rules)

    assert statements(mocks)["ArchiveUploads"] == {
        "Sid": "ArchiveUploads",
        "Effect": "Allow",
        "Action": "s3:PutObject",
        "Resource": f"{archive_arn}/*",
    }
    assert function_env(mocks).archive_bucket == archive.state["bucket"]
    assert set(exported) == AWS_OUTPUT_NAMES | WITH_ARCHIVE_OUTPUT_NAMES
    assert exported["archiveBucket"] == archive.state["bucket"]
