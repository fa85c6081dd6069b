"""GcpImagePipeline's operations resources under Pulumi mocks (issue 12): the Cloud Tasks work
queue with its concurrency and retries, the account its tasks call the function as, the
delete trigger, and the grants each `originals` / `deleteRenditionsWithOriginal` setting
adds."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from components.gcp import GcpImagePipeline, GcpImagePipelineArgs
from components.gcp.pipeline import custom_role_id
from functions.core.settings import PipelineSettings, SettingsError
from functions.gcp import contract
from tests.infra.conftest import (
    GCP_OUTPUT_NAMES,
    GCP_PROJECT,
    WITH_ARCHIVE_OUTPUT_NAMES,
    RecordingMocks,
    run_program,
)

REGION = "europe-west1"
QUEUE = "gcp:cloudtasks/queue:Queue"
TRIGGER = "gcp:eventarc/trigger:Trigger"
FUNCTION = "gcp:cloudfunctionsv2/function:Function"
ACCOUNT = "gcp:serviceaccount/account:Account"
BUCKET = "gcp:storage/bucket:Bucket"
BUCKET_MEMBER = "gcp:storage/bucketIAMMember:BucketIAMMember"
PROJECT_MEMBER = "gcp:projects/iAMMember:IAMMember"
RUN_MEMBER = "gcp:cloudrunv2/serviceIamMember:ServiceIamMember"
CUSTOM_ROLE = "gcp:projects/iAMCustomRole:IAMCustomRole"


def deploy(settings: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    base = GcpImagePipelineArgs(settings=PipelineSettings(), region=REGION, tags={"team": "media"})
    args = dataclasses.replace(
        base, settings=dataclasses.replace(base.settings, **(settings or {})), **overrides
    )
    return run_program(lambda: GcpImagePipeline("imagepipe", args).stack_outputs())


def function_account(mocks: RecordingMocks):
    return mocks.one(ACCOUNT, "imagepipe-sa")


def work_account(mocks: RecordingMocks):
    return mocks.one(ACCOUNT, "imagepipe-work-sa")


def depends_on(mocks: RecordingMocks, resource) -> set[str]:
    return {mocks.by_urn(urn).name for urn in resource.dependencies}


def bucket_roles(mocks: RecordingMocks, member: str) -> dict[str, set[str]]:
    """bucket name -> roles `member` holds on it."""
    found: dict[str, set[str]] = {}
    for grant in mocks.of_type(BUCKET_MEMBER):
        if grant.inputs["member"] == member:
            found.setdefault(grant.inputs["bucket"], set()).add(grant.inputs["role"])
    return found


def function_env(mocks: RecordingMocks) -> contract.FunctionEnvironment:
    service = mocks.one(FUNCTION).inputs["serviceConfig"]
    return contract.from_env(service["environmentVariables"])


# --- the work queue --------------------------------------------------------------------


def test_the_work_queue_dispatches_at_the_cap_and_retries_with_backoff(pulumi_mocks):
    exported = deploy(timeout_seconds=120)

    queue = pulumi_mocks.one(QUEUE)
    assert queue.inputs["location"] == REGION  # the function's region
    assert queue.inputs["rateLimits"] == {
        "maxConcurrentDispatches": contract.DEFAULT_BACKFILL_CONCURRENCY
    }
    retry = queue.inputs["retryConfig"]
    assert retry["maxAttempts"] == contract.WORK_MAX_ATTEMPTS
    # The first retry waits out the function's lease: a crashed delivery's claim has expired.
    assert retry["minBackoff"] == f"{120 + contract.LEASE_MARGIN_SECONDS}s"
    assert retry["maxBackoff"] == "3600s"
    assert "imagepipe-api-cloudtasks" in depends_on(pulumi_mocks, queue)
    assert exported["workQueue"] == (
        f"projects/{GCP_PROJECT}/locations/{REGION}/queues/{queue.state['name']}"
    )


def test_backfill_concurrency_is_the_queues_max_concurrent_dispatches(pulumi_mocks):
    deploy(backfill_concurrency=9)
    assert pulumi_mocks.one(QUEUE).inputs["rateLimits"] == {"maxConcurrentDispatches": 9}


@pytest.mark.parametrize("value", [1, 1001])
def test_a_backfill_concurrency_out_of_range_stops_before_any_resource(pulumi_mocks, value):
    with pytest.raises(
        SettingsError, match=rf"imagepipe:backfillConcurrency is {value}; .*from 2 to 1000"
    ):
        deploy(backfill_concurrency=value, max_instances=2000)
    assert [r.type for r in pulumi_mocks.resources] == ["imagepipe:index:GcpImagePipeline"]


def test_backfill_concurrency_above_max_instances_is_refused(pulumi_mocks):
    with pytest.raises(
        SettingsError,
        match=r"imagepipe:backfillConcurrency is 12, above imagepipe:maxInstances \(10\)",
    ):
        deploy(backfill_concurrency=12, max_instances=10)


def test_tasks_reach_the_function_with_a_token_of_the_work_account(pulumi_mocks):
    exported = deploy()

    function = pulumi_mocks.one(FUNCTION)
    service_uri = function.state["serviceConfig"]["uri"]
    account = work_account(pulumi_mocks)
    target = pulumi_mocks.one(QUEUE).inputs["httpTarget"]
    assert target["oidcToken"] == {
        "serviceAccountEmail": account.state["email"],
        "audience": service_uri,
    }
    assert target["uriOverride"] == {
        "scheme": "HTTPS",
        "host": service_uri.removeprefix("https://"),
        "uriOverrideEnforceMode": "ALWAYS",
    }
    assert exported["workUrl"] == service_uri
    assert exported["workInvoker"] == account.state["email"]


def test_the_work_account_may_invoke_the_function_and_nothing_else(pulumi_mocks):
    exported = deploy(delivery_mode="cdn", settings={"originals": "archive"})

    member = work_account(pulumi_mocks).state["member"]
    (invoker,) = [g for g in pulumi_mocks.of_type(RUN_MEMBER) if g.inputs["member"] == member]
    assert invoker.inputs["role"] == "roles/run.invoker"
    assert invoker.inputs["name"] == exported["functionName"]  # a gen2 function's service
    assert invoker.inputs["location"] == REGION
    assert invoker.name in depends_on(pulumi_mocks, pulumi_mocks.one(QUEUE))
    assert not bucket_roles(pulumi_mocks, member)
    assert not [g for g in pulumi_mocks.of_type(PROJECT_MEMBER) if g.inputs["member"] == member]
    assert (
        work_account(pulumi_mocks).inputs["accountId"]
        != (function_account(pulumi_mocks).inputs["accountId"])
    )


# --- deletes that propagate ------------------------------------------------------------


def test_a_second_trigger_sends_deletes_to_the_same_service_as_the_function_account(pulumi_mocks):
    exported = deploy()

    trigger = pulumi_mocks.one(TRIGGER)
    criteria = {c["attribute"]: c["value"] for c in trigger.inputs["matchingCriterias"]}
    assert criteria == {"type": contract.DELETE_EVENT_TYPE, "bucket": exported["uploadsBucket"]}
    assert trigger.inputs["location"] == REGION  # storage events are regional
    assert trigger.inputs["destination"] == {
        "cloudRunService": {"service": exported["functionName"], "region": REGION}
    }
    account = function_account(pulumi_mocks)
    # The same identity as the function's own trigger, with what it was granted for that.
    assert trigger.inputs["serviceAccount"] == account.state["email"]
    own_trigger = pulumi_mocks.one(FUNCTION).inputs["eventTrigger"]
    assert own_trigger["serviceAccountEmail"] == account.state["email"]
    waits_for = depends_on(pulumi_mocks, trigger)
    assert {
        "imagepipe-api-eventarc",
        "imagepipe-storage-agent-publisher",
        "imagepipe-trigger-invoker",
        "imagepipe-fn",
    } <= waits_for
    assert trigger.inputs["labels"]["team"] == "media"
    # Eventarc's own retries (with backoff): no retry policy of one attempt.
    assert "retryPolicy" not in trigger.inputs


def test_the_function_tells_plain_expiry_from_a_delete_by_the_expiry_rules_age(pulumi_mocks):
    deploy(originals_expiry_days=30)
    assert function_env(pulumi_mocks).originals_expiry_days == 30


def test_without_an_expiry_rule_every_deletion_is_an_owners(pulumi_mocks):
    deploy()
    assert function_env(pulumi_mocks).originals_expiry_days is None


def test_deleted_renditions_need_no_grant_beyond_the_writers(pulumi_mocks):
    exported = deploy(settings={"delete_renditions_with_original": True})

    member = function_account(pulumi_mocks).state["member"]
    # legacyBucketWriter: objects create, delete and list, which a reference-counted delete
    # under the content hash's prefix needs.
    assert bucket_roles(pulumi_mocks, member)[exported["renditionsBucket"]] == {
        "roles/storage.legacyBucketWriter"
    }
    assert not pulumi_mocks.of_type(CUSTOM_ROLE)  # no CDN to invalidate in signed-urls


def test_with_the_cdn_the_function_may_invalidate_it(pulumi_mocks):
    deploy(delivery_mode="cdn")

    role = pulumi_mocks.one(CUSTOM_ROLE)
    assert role.inputs["permissions"] == ["compute.urlMaps.invalidateCache"]
    assert role.inputs["roleId"] == custom_role_id("imagepipe", "test", "cdnInvalidator")
    member = function_account(pulumi_mocks).state["member"]
    (grant,) = [
        g for g in pulumi_mocks.of_type(PROJECT_MEMBER) if g.inputs["role"] == role.state["name"]
    ]
    assert (grant.inputs["member"], grant.inputs["project"]) == (member, GCP_PROJECT)
    assert grant.name in depends_on(pulumi_mocks, pulumi_mocks.one(FUNCTION))
    url_map = pulumi_mocks.one("gcp:compute/uRLMap:URLMap")
    assert function_env(pulumi_mocks).cdn_url_map == url_map.state["name"]


def test_without_delete_renditions_the_cdn_is_not_invalidated(pulumi_mocks):
    deploy(delivery_mode="cdn", settings={"delete_renditions_with_original": False})

    assert not pulumi_mocks.of_type(CUSTOM_ROLE)
    assert function_env(pulumi_mocks).cdn_url_map is None
    assert pulumi_mocks.one(TRIGGER)  # deletes still mark records DELETED


@pytest.mark.parametrize(
    ("name", "stack"), [("imagepipe", "dev"), ("Image-Pipe", "a.very-long/stack" * 4)]
)
def test_custom_role_ids_are_valid_and_differ_per_stack(name, stack):
    import re

    role_id = custom_role_id(name, stack, "cdnInvalidator")
    assert re.fullmatch(r"[A-Za-z0-9_.]{3,64}", role_id), role_id
    assert role_id != custom_role_id(name, stack + "2", "cdnInvalidator")


# --- what happens to originals ---------------------------------------------------------


def test_originals_keep_reads_the_uploads_and_deletes_nothing(pulumi_mocks):
    exported = deploy(settings={"originals": "keep"})

    member = function_account(pulumi_mocks).state["member"]
    assert bucket_roles(pulumi_mocks, member)[exported["uploadsBucket"]] == {
        "roles/storage.objectViewer"  # objects get and list: no delete
    }
    assert not [b for b in pulumi_mocks.of_type(BUCKET) if b.name == "imagepipe-archive"]
    assert function_env(pulumi_mocks).archive_bucket is None
    assert set(exported) == GCP_OUTPUT_NAMES


@pytest.mark.parametrize("mode", ["delete", "archive"])
def test_originals_delete_and_archive_may_delete_uploads(pulumi_mocks, mode):
    exported = deploy(settings={"originals": mode})

    member = function_account(pulumi_mocks).state["member"]
    assert bucket_roles(pulumi_mocks, member)[exported["uploadsBucket"]] == {
        "roles/storage.objectUser"  # objectViewer's get and list, and delete
    }
    assert PipelineSettings.from_json(exported["settings"]).originals == mode


def test_originals_archive_writes_to_a_private_bucket_in_the_archive_class(pulumi_mocks):
    exported = deploy(settings={"originals": "archive"})

    archive = pulumi_mocks.one(BUCKET, "imagepipe-archive")
    assert archive.inputs["storageClass"] == "ARCHIVE"
    assert archive.inputs["uniformBucketLevelAccess"] is True
    assert archive.inputs["publicAccessPrevention"] == "enforced"
    assert archive.inputs["forceDestroy"] is False
    assert archive.inputs["location"] == REGION
    assert archive.inputs["labels"]["team"] == "media"
    assert "imagepipe-api-storage" in depends_on(pulumi_mocks, archive)

    name = archive.state["name"]
    member = function_account(pulumi_mocks).state["member"]
    assert bucket_roles(pulumi_mocks, member)[name] == {"roles/storage.objectCreator"}
    # Nobody else holds anything on it.
    assert {
        g.inputs["member"]
        for g in pulumi_mocks.of_type(BUCKET_MEMBER)
        if g.inputs["bucket"] == name
    } == {member}
    assert function_env(pulumi_mocks).archive_bucket == name
    assert set(exported) == GCP_OUTPUT_NAMES | WITH_ARCHIVE_OUTPUT_NAMES
    assert exported["archiveBucket"] == name
