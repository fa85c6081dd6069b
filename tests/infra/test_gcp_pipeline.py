"""GcpImagePipeline under Pulumi mocks: what it creates, how it is wired, and what it grants."""

from __future__ import annotations

import dataclasses
import re
import runpy
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from components.gcp import GcpImagePipeline, GcpImagePipelineArgs
from components.gcp.pipeline import REQUIRED_APIS, service_account_id
from functions.core.settings import PipelineSettings, RenditionSpec
from functions.gcp import contract
from tests.infra.conftest import (
    GCP_OUTPUT_NAMES,
    GCP_PROJECT,
    GCS_SERVICE_AGENT,
    RecordingMocks,
    RegisteredResource,
    run_program,
    set_config,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
REGION = "europe-west1"
BUCKET = "gcp:storage/bucket:Bucket"
BUCKET_MEMBER = "gcp:storage/bucketIAMMember:BucketIAMMember"
PROJECT_MEMBER = "gcp:projects/iAMMember:IAMMember"
FUNCTION = "gcp:cloudfunctionsv2/function:Function"
SERVICE = "gcp:projects/service:Service"
OUTPUT_NAMES = GCP_OUTPUT_NAMES
LOG_METRIC = "gcp:logging/metric:Metric"
CHANNEL = "gcp:monitoring/notificationChannel:NotificationChannel"


def make_args(**overrides: Any) -> GcpImagePipelineArgs:
    settings = PipelineSettings(renditions=(RenditionSpec("thumb", 200, 200, "cover", "webp", 75),))
    base = GcpImagePipelineArgs(settings=settings, region=REGION, tags={"team": "media"})
    return dataclasses.replace(base, **overrides)


def deploy(**overrides: Any) -> dict[str, Any]:
    """Build the component under the active mocks; return its stack outputs, resolved."""
    args = make_args(**overrides)
    return run_program(lambda: GcpImagePipeline("imagepipe", args).stack_outputs())


def component(mocks: RecordingMocks) -> RegisteredResource:
    return mocks.one("imagepipe:index:GcpImagePipeline")


def depends_on(mocks: RecordingMocks, resource: RegisteredResource) -> set[str]:
    """Names of the resources `resource` waits for."""
    return {mocks.by_urn(urn).name for urn in resource.dependencies}


# --- the trigger ------------------------------------------------------------------------


def test_trigger_fires_on_finalized_uploads_in_the_bucket_region_and_retries(pulumi_mocks):
    outputs = deploy()

    trigger = pulumi_mocks.one(FUNCTION).inputs["eventTrigger"]
    assert trigger["eventType"] == "google.cloud.storage.object.v1.finalized"
    assert trigger["eventFilters"] == [{"attribute": "bucket", "value": outputs["uploadsBucket"]}]
    assert trigger["triggerRegion"] == REGION
    assert pulumi_mocks.one(BUCKET, "uploads").inputs["location"] == REGION
    assert trigger["retryPolicy"] == "RETRY_POLICY_RETRY"
    account_email = pulumi_mocks.one("gcp:serviceaccount/account:Account", "imagepipe-sa").state[
        "email"
    ]
    assert trigger["serviceAccountEmail"] == account_email


def test_storage_service_agent_may_publish_and_the_function_waits_for_it(pulumi_mocks):
    deploy()

    grant = pulumi_mocks.one(PROJECT_MEMBER, "storage-agent")
    assert grant.inputs["role"] == "roles/pubsub.publisher"
    assert grant.inputs["member"] == f"serviceAccount:{GCS_SERVICE_AGENT}"
    assert grant.inputs["project"] == GCP_PROJECT
    assert grant.name in depends_on(pulumi_mocks, pulumi_mocks.one(FUNCTION))
    called = {token for token, _ in pulumi_mocks.calls}
    assert "gcp:storage/getProjectServiceAccount:getProjectServiceAccount" in called


# --- APIs -------------------------------------------------------------------------------


def test_required_apis_stay_enabled_on_destroy_and_their_users_wait_for_them(pulumi_mocks):
    deploy()

    services = {r.inputs["service"]: r for r in pulumi_mocks.of_type(SERVICE)}
    for api in (
        "cloudfunctions",
        "run",
        "cloudbuild",
        "eventarc",
        "artifactregistry",
        "firestore",
        "pubsub",
        "storage",
        "cloudtasks",
    ):
        assert f"{api}.googleapis.com" in services, api
    assert all(s.inputs["disableOnDestroy"] is False for s in services.values())
    assert "compute.googleapis.com" not in services  # only the cdn mode needs the compute API

    function_waits_for = depends_on(pulumi_mocks, pulumi_mocks.one(FUNCTION))
    assert {f"imagepipe-api-{api}" for api in REQUIRED_APIS} <= function_waits_for
    for bucket in pulumi_mocks.of_type(BUCKET):
        assert "imagepipe-api-storage" in depends_on(pulumi_mocks, bucket)
    records = pulumi_mocks.one("gcp:firestore/database:Database")
    assert "imagepipe-api-firestore" in depends_on(pulumi_mocks, records)
    topic = pulumi_mocks.one("gcp:pubsub/topic:Topic")
    assert "imagepipe-api-pubsub" in depends_on(pulumi_mocks, topic)
    account = pulumi_mocks.one("gcp:serviceaccount/account:Account", "imagepipe-sa")
    assert "imagepipe-api-iam" in depends_on(pulumi_mocks, account)


# --- buckets ----------------------------------------------------------------------------


def test_buckets_are_private_with_uniform_access_and_kept_on_destroy(pulumi_mocks):
    deploy()

    for role in ("uploads", "renditions", "source"):
        bucket = pulumi_mocks.one(BUCKET, f"-{role}")
        assert bucket.inputs["uniformBucketLevelAccess"] is True, role
        assert bucket.inputs["publicAccessPrevention"] == "enforced", role
        assert bucket.inputs["location"] == REGION, role
    assert pulumi_mocks.one(BUCKET, "uploads").inputs["forceDestroy"] is False
    assert pulumi_mocks.one(BUCKET, "renditions").inputs["forceDestroy"] is False
    assert "lifecycleRules" not in pulumi_mocks.one(BUCKET, "uploads").inputs


def test_originals_expiry_deletes_uploads_only(pulumi_mocks):
    deploy(originals_expiry_days=30)

    (rule,) = pulumi_mocks.one(BUCKET, "uploads").inputs["lifecycleRules"]
    assert rule["action"]["type"] == "Delete"
    assert rule["condition"]["age"] == 30
    assert "lifecycleRules" not in pulumi_mocks.one(BUCKET, "renditions").inputs


# --- IAM --------------------------------------------------------------------------------


def test_function_account_grants_are_scoped_to_one_resource_each(pulumi_mocks):
    outputs = deploy()
    member = pulumi_mocks.one("gcp:serviceaccount/account:Account", "imagepipe-sa").state["member"]

    bucket_grants = {
        (g.inputs["bucket"], g.inputs["role"])
        for g in pulumi_mocks.of_type(BUCKET_MEMBER)
        if g.inputs["member"] == member
    }
    assert bucket_grants == {
        # objects.get and objects.list: a deleted upload must answer 404, not 403.
        (outputs["uploadsBucket"], "roles/storage.objectViewer"),
        # objects.create and objects.delete (overwrites), and no reading renditions back.
        (outputs["renditionsBucket"], "roles/storage.legacyBucketWriter"),
    }
    (topic_grant,) = pulumi_mocks.of_type("gcp:pubsub/topicIAMMember:TopicIAMMember")
    assert topic_grant.inputs["member"] == member
    assert topic_grant.inputs["role"] == "roles/pubsub.publisher"
    assert topic_grant.inputs["topic"] == pulumi_mocks.one("gcp:pubsub/topic:Topic").state["name"]

    project_grants = {
        g.inputs["role"]: g
        for g in pulumi_mocks.of_type(PROJECT_MEMBER)
        if g.inputs["member"] == member
    }
    assert set(project_grants) == {"roles/datastore.user", "roles/eventarc.eventReceiver"}
    condition = project_grants["roles/datastore.user"].inputs["condition"]
    assert (
        condition["expression"] == f'resource.name == "projects/{GCP_PROJECT}/databases/(default)"'
    )

    (invoker,) = [
        g
        for g in pulumi_mocks.of_type("gcp:cloudrunv2/serviceIamMember:ServiceIamMember")
        if g.inputs["member"] == member
    ]
    assert invoker.inputs["role"] == "roles/run.invoker"
    assert invoker.inputs["name"] == outputs["functionName"]
    assert invoker.inputs["location"] == REGION


@pytest.mark.parametrize("mode", ["signed-urls", "public", "cdn"])
def test_renditions_are_written_by_the_function_and_at_most_fetched_by_anyone(pulumi_mocks, mode):
    outputs = deploy(delivery_mode=mode)
    member = pulumi_mocks.one("gcp:serviceaccount/account:Account", "imagepipe-sa").state["member"]

    on_renditions = {
        g.inputs["member"]: g.inputs["role"]
        for g in pulumi_mocks.of_type(BUCKET_MEMBER)
        if g.inputs["bucket"] == outputs["renditionsBucket"]
    }
    # Every grant on the bucket: the function cannot read renditions back, viewers cannot list.
    expected = {member: "roles/storage.legacyBucketWriter"}
    if mode != "signed-urls":
        expected["allUsers"] = "roles/storage.legacyObjectReader"
    assert on_renditions == expected


def test_no_one_else_is_granted_anything_in_private_delivery(pulumi_mocks):
    deploy(delivery_mode="signed-urls")

    members = {g.inputs["member"] for g in pulumi_mocks.of_type(BUCKET_MEMBER)}
    assert "allUsers" not in members
    assert not pulumi_mocks.of_type("gcp:compute/backendBucket:BackendBucket")


# --- the function -----------------------------------------------------------------------


def test_function_runs_the_entry_point_with_its_own_account_and_environment(pulumi_mocks):
    base = make_args()
    args = dataclasses.replace(
        base,
        settings=dataclasses.replace(
            base.settings, limits=dataclasses.replace(base.settings.limits, memory_mb=2048)
        ),
        cpu="2",
        timeout_seconds=120,
        max_instances=7,
    )
    outputs = run_program(lambda: GcpImagePipeline("imagepipe", args).stack_outputs())

    function = pulumi_mocks.one(FUNCTION)
    build = function.inputs["buildConfig"]
    assert build["runtime"] == "python312"
    assert build["entryPoint"] == "handle_upload"
    service = function.inputs["serviceConfig"]
    assert service["availableMemory"] == "2048Mi"
    assert service["availableCpu"] == "2"
    assert service["timeoutSeconds"] == 120
    assert service["maxInstanceCount"] == 7
    account = pulumi_mocks.one("gcp:serviceaccount/account:Account", "imagepipe-sa")
    assert service["serviceAccountEmail"] == account.state["email"]
    assert service["ingressSettings"] == "ALLOW_INTERNAL_ONLY"
    # What the function will read back: the contract's own reader, over what was set.
    env = contract.from_env(service["environmentVariables"])
    assert env == contract.FunctionEnvironment(
        settings=args.settings,
        renditions_bucket=outputs["renditionsBucket"],
        records_collection="images",
        events_topic=outputs["eventsTopic"],
        max_event_age_seconds=3600,
        lease_seconds=args.timeout_seconds + 30,
        project=GCP_PROJECT,
    )
    assert outputs["eventsTopic"].startswith(f"projects/{GCP_PROJECT}/topics/")


def test_function_source_is_an_object_named_by_the_archive_hash(pulumi_mocks):
    deploy()

    archive = pulumi_mocks.one("gcp:storage/bucketObject:BucketObject")
    source_bucket = pulumi_mocks.one(BUCKET, "-source")
    assert archive.inputs["bucket"] == source_bucket.state["name"]
    assert archive.inputs["name"].startswith("function-")
    sha256 = archive.inputs["name"].removeprefix("function-").removesuffix(".zip")
    assert len(sha256) == 64
    storage_source = pulumi_mocks.one(FUNCTION).inputs["buildConfig"]["source"]["storageSource"]
    assert storage_source == {
        "bucket": source_bucket.state["name"],
        "object": archive.inputs["name"],
    }


def test_records_database_is_native_firestore_in_the_region_with_recovery(pulumi_mocks):
    deploy()

    database = pulumi_mocks.one("gcp:firestore/database:Database")
    assert database.inputs["name"] == "(default)"
    assert database.inputs["type"] == "FIRESTORE_NATIVE"
    assert database.inputs["locationId"] == REGION
    assert database.inputs["pointInTimeRecoveryEnablement"] == "POINT_IN_TIME_RECOVERY_ENABLED"
    assert database.inputs["deleteProtectionState"] == "DELETE_PROTECTION_ENABLED"


def test_the_same_metrics_as_on_aws_come_from_the_function_log_lines(pulumi_mocks):
    outputs = deploy()

    metrics = {m.inputs["name"]: m.inputs for m in pulumi_mocks.of_type(LOG_METRIC)}
    assert set(metrics) == {
        "imagepipe/ImagesCompleted",
        "imagepipe/ImagesFailed",
        "imagepipe/ImagesDeleted",
        "imagepipe/OriginalsExpired",
        "imagepipe/Duplicates",
        "imagepipe/ObjectsSkipped",
        "imagepipe/ProcessingMs",
        "imagepipe/FunctionErrors",
    }
    service = f'resource.labels.service_name="{outputs["functionName"]}"'
    assert all(service in metric["filter"] for metric in metrics.values())
    assert 'jsonPayload.action="completed"' in metrics["imagepipe/ImagesCompleted"]["filter"]
    assert 'jsonPayload.action="skipped"' in metrics["imagepipe/ObjectsSkipped"]["filter"]
    failed = metrics["imagepipe/ImagesFailed"]
    assert 'jsonPayload.action="failed"' in failed["filter"]
    assert failed["labelExtractors"] == {"ErrorCode": "EXTRACT(jsonPayload.error_code)"}
    assert failed["metricDescriptor"]["labels"] == [{"key": "ErrorCode", "valueType": "STRING"}]
    timing = metrics["imagepipe/ProcessingMs"]
    assert timing["valueExtractor"] == "EXTRACT(jsonPayload.ms)"
    assert timing["metricDescriptor"]["valueType"] == "DISTRIBUTION"
    assert "severity>=ERROR" in metrics["imagepipe/FunctionErrors"]["filter"]


def test_alerts_watch_function_errors_and_failed_images(pulumi_mocks):
    deploy()

    names = {m.name: m.state["name"] for m in pulumi_mocks.of_type(LOG_METRIC)}
    policies = {p.name: p for p in pulumi_mocks.of_type("gcp:monitoring/alertPolicy:AlertPolicy")}
    watched = {
        "imagepipe-errors-alert": names["imagepipe-function-errors"],
        "imagepipe-failed-images-alert": names["imagepipe-images-failed"],
    }
    assert set(policies) == set(watched)
    for policy_name, metric_name in watched.items():
        policy = policies[policy_name].inputs
        condition = policy["conditions"][0]["conditionThreshold"]
        assert f'logging.googleapis.com/user/{metric_name}"' in condition["filter"]
        assert condition["comparison"] == "COMPARISON_GT"
        assert "notificationChannels" not in policy  # nobody to tell without alarmEmail
    assert not pulumi_mocks.of_type(CHANNEL)


def test_alarm_email_is_a_notification_channel_on_every_alert(pulumi_mocks):
    deploy(alarm_email="ops@example.com")

    (channel,) = pulumi_mocks.of_type(CHANNEL)
    assert channel.inputs["type"] == "email"
    assert channel.inputs["labels"] == {"email_address": "ops@example.com"}
    policies = pulumi_mocks.of_type("gcp:monitoring/alertPolicy:AlertPolicy")
    assert len(policies) == 2
    for policy in policies:
        assert policy.inputs["notificationChannels"] == [channel.state["name"]]


def test_records_have_a_status_index_and_a_content_index_newest_first(pulumi_mocks):
    deploy()

    indexes = pulumi_mocks.of_type("gcp:firestore/index:Index")
    assert {index.inputs["collection"] for index in indexes} == {"images"}
    fields = [index.inputs["fields"] for index in indexes]
    assert sorted(fields, key=lambda index: index[0]["fieldPath"]) == [
        [
            {"fieldPath": "completed_sha256", "order": "ASCENDING"},
            {"fieldPath": "updated_at", "order": "DESCENDING"},
        ],
        [
            {"fieldPath": "status", "order": "ASCENDING"},
            {"fieldPath": "updated_at", "order": "DESCENDING"},
        ],
    ]


def test_the_uploads_filter_reaches_the_function(pulumi_mocks):
    deploy(uploads_prefix="incoming/", uploads_suffix=".jpg")

    service = pulumi_mocks.one(FUNCTION).inputs["serviceConfig"]
    env = contract.from_env(service["environmentVariables"])
    assert (env.uploads_prefix, env.uploads_suffix) == ("incoming/", ".jpg")
    assert env.watches("incoming/a.jpg") and not env.watches("incoming/a.png")
    assert not env.watches("elsewhere/a.jpg")


def test_labels_reach_every_labelable_resource(pulumi_mocks):
    deploy(delivery_mode="cdn")

    labelled = [
        *pulumi_mocks.of_type(BUCKET),
        pulumi_mocks.one(FUNCTION),
        pulumi_mocks.one("gcp:pubsub/topic:Topic"),
        pulumi_mocks.one("gcp:compute/globalAddress:GlobalAddress"),
        pulumi_mocks.one("gcp:compute/globalForwardingRule:GlobalForwardingRule"),
    ]
    for resource in labelled:
        assert resource.inputs["labels"]["team"] == "media", resource.name
        assert resource.inputs["labels"]["app"] == "imagepipe", resource.name
    for policy in pulumi_mocks.of_type("gcp:monitoring/alertPolicy:AlertPolicy"):
        assert policy.inputs["userLabels"]["team"] == "media"


# --- outputs and structure --------------------------------------------------------------


def test_outputs_are_resolved_names_and_urls(pulumi_mocks):
    outputs = deploy()

    assert set(outputs) == OUTPUT_NAMES
    assert outputs["uploadsBucket"] == pulumi_mocks.one(BUCKET, "uploads").state["name"]
    assert outputs["renditionsBucket"] == pulumi_mocks.one(BUCKET, "renditions").state["name"]
    assert outputs["recordsCollection"] == "images"
    assert outputs["functionName"] == pulumi_mocks.one(FUNCTION).state["name"]
    assert outputs["cdnUrl"] == f"https://storage.googleapis.com/{outputs['renditionsBucket']}"


@pytest.mark.parametrize("mode", ["signed-urls", "public", "cdn"])
def test_every_child_is_parented_to_the_component_and_named_after_it(pulumi_mocks, mode):
    deploy(delivery_mode=mode)

    root = component(pulumi_mocks)
    children = [r for r in pulumi_mocks.resources if r is not root]
    assert len(children) >= 25  # not vacuous: every role of the pipeline is there
    for child in children:
        assert child.parent == root.urn, child.name
        assert child.name.startswith("imagepipe-"), child.name


# --- delivery modes ---------------------------------------------------------------------


def test_public_delivery_opens_the_renditions_bucket_only(pulumi_mocks):
    outputs = deploy(delivery_mode="public")

    public = [g for g in pulumi_mocks.of_type(BUCKET_MEMBER) if g.inputs["member"] == "allUsers"]
    # objects.get alone: a known key can be fetched, the bucket cannot be listed.
    assert [(g.inputs["bucket"], g.inputs["role"]) for g in public] == [
        (outputs["renditionsBucket"], "roles/storage.legacyObjectReader")
    ]
    assert pulumi_mocks.one(BUCKET, "renditions").inputs["publicAccessPrevention"] == "inherited"
    assert pulumi_mocks.one(BUCKET, "uploads").inputs["publicAccessPrevention"] == "enforced"
    assert outputs["cdnUrl"] == f"https://storage.googleapis.com/{outputs['renditionsBucket']}"
    assert not pulumi_mocks.of_type("gcp:compute/backendBucket:BackendBucket")


def test_cdn_delivery_puts_a_cdn_backend_bucket_behind_a_global_address(pulumi_mocks):
    outputs = deploy(delivery_mode="cdn")

    backend = pulumi_mocks.one("gcp:compute/backendBucket:BackendBucket")
    assert backend.inputs["bucketName"] == outputs["renditionsBucket"]
    assert backend.inputs["enableCdn"] is True
    url_map = pulumi_mocks.one("gcp:compute/uRLMap:URLMap")
    assert url_map.inputs["defaultService"] == backend.state["selfLink"]
    proxy = pulumi_mocks.one("gcp:compute/targetHttpProxy:TargetHttpProxy")
    assert proxy.inputs["urlMap"] == url_map.state["selfLink"]
    rule = pulumi_mocks.one("gcp:compute/globalForwardingRule:GlobalForwardingRule")
    address = pulumi_mocks.one("gcp:compute/globalAddress:GlobalAddress").state["address"]
    assert rule.inputs["target"] == proxy.state["selfLink"]
    assert rule.inputs["ipAddress"] == address
    assert rule.inputs["portRange"] == "80"
    assert outputs["cdnUrl"] == f"http://{address}"

    compute = pulumi_mocks.one(SERVICE, "api-compute")
    assert compute.inputs["disableOnDestroy"] is False
    for typ in ("backendBucket:BackendBucket", "uRLMap:URLMap", "globalAddress:GlobalAddress"):
        assert "imagepipe-api-compute" in depends_on(
            pulumi_mocks, pulumi_mocks.one(f"gcp:compute/{typ}")
        )
    public = [g for g in pulumi_mocks.of_type(BUCKET_MEMBER) if g.inputs["member"] == "allUsers"]
    assert [(g.inputs["bucket"], g.inputs["role"]) for g in public] == [
        (outputs["renditionsBucket"], "roles/storage.legacyObjectReader")
    ]


# --- __main__.py ------------------------------------------------------------------------


def stack_config(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())["config"]


def run_main() -> dict[str, Any]:
    """Run the real `__main__.py` under the mocks; return what it exported."""

    def program():
        runpy.run_path(str(PROJECT_ROOT / "__main__.py"), run_name="__main__")
        return pulumi.Output.from_input(dict(pulumi.runtime.get_root_resource().outputs))

    return run_program(program)


def test_main_with_the_gcp_dev_stack_exports_the_outputs(pulumi_mocks):
    config = stack_config(PROJECT_ROOT / "stacks" / "Pulumi.gcp-dev.yaml")
    assert config["imagepipe:cloud"] == "gcp"
    set_config(config)

    exported = run_main()

    assert set(exported) == OUTPUT_NAMES
    function = pulumi_mocks.one(FUNCTION)
    assert function.inputs["location"] == config["gcp:region"]
    assert function.inputs["serviceConfig"]["maxInstanceCount"] == config["imagepipe:maxInstances"]
    assert exported["functionName"] == function.state["name"]
    settings = function.inputs["serviceConfig"]["environmentVariables"][contract.SETTINGS]
    names = [spec.name for spec in PipelineSettings.from_json(settings).renditions]
    assert names == [text.split(":")[0] for text in config["imagepipe:renditions"]]
    assert function.inputs["labels"]["env"] == "dev"
    assert not pulumi_mocks.of_type("aws:s3/bucket:Bucket")


def test_main_rejects_an_unknown_delivery_mode_naming_the_key(pulumi_mocks):
    set_config({"imagepipe:cloud": "gcp", "gcp:region": REGION, "imagepipe:deliveryMode": "ftp"})

    with pytest.raises(pulumi.RunError, match=r"imagepipe:deliveryMode is 'ftp'.*signed-urls"):
        run_main()
    assert not pulumi_mocks.of_type(FUNCTION)


@pytest.mark.parametrize(
    ("name", "stack"),
    [("imagepipe", "dev"), ("Image_Pipe", "a-very-long-production-stack-name"), ("9lives", "x")],
)
def test_service_account_ids_are_valid_and_differ_per_stack(name, stack):
    account_id = service_account_id(name, stack)

    assert re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]", account_id), account_id
    assert account_id != service_account_id(name, stack + "2")
