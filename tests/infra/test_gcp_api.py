"""The upload API on GCP under Pulumi mocks: absent unless asked for; with it, an HTTP
function anyone may reach (it verifies tokens itself), capped in instances, running as an
account that may only sign uploads, find them, read their records and sign its own blobs."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest

from components import outputs
from components.args import OPEN_API_WARNING
from components.gcp import GcpImagePipeline, GcpImagePipelineArgs
from components.gcp.pipeline import service_account_id
from functions.core.settings import PipelineSettings, SettingsError
from functions.gcp import contract
from tests.infra.conftest import GCP_OUTPUT_NAMES, GCP_PROJECT, run_program

REGION = "europe-west1"
ISSUER = "https://login.example.com/"
AUDIENCE = "imagepipe-api"
ORIGINS = ("https://app.example.com",)
FUNCTION = "gcp:cloudfunctionsv2/function:Function"
BUCKET = "gcp:storage/bucket:Bucket"
BUCKET_MEMBER = "gcp:storage/bucketIAMMember:BucketIAMMember"
PROJECT_MEMBER = "gcp:projects/iAMMember:IAMMember"
ACCOUNT = "gcp:serviceaccount/account:Account"
SERVICE = "gcp:projects/service:Service"


def make_args(**overrides: Any) -> GcpImagePipelineArgs:
    base = GcpImagePipelineArgs(
        settings=PipelineSettings(),
        region=REGION,
        api=True,
        api_jwt_issuer=ISSUER,
        api_jwt_audience=AUDIENCE,
        uploads_prefix="incoming/",
    )
    return dataclasses.replace(base, **overrides)


def deploy(**overrides: Any) -> dict[str, Any]:
    args = make_args(**overrides)
    return run_program(lambda: GcpImagePipeline("imagepipe", args).stack_outputs())


def api_function(mocks):
    return mocks.one(FUNCTION, "imagepipe-api-fn")


def api_account(mocks):
    return mocks.one(ACCOUNT, "imagepipe-api-sa")


def grants_of(mocks, member: str) -> set[tuple[str, str]]:
    return {
        (g.inputs["bucket"], g.inputs["role"])
        for g in mocks.of_type(BUCKET_MEMBER)
        if g.inputs["member"] == member
    }


# --- off by default ----------------------------------------------------------------------


def test_without_api_nothing_of_it_exists_and_the_outputs_are_unchanged(pulumi_mocks):
    exported = deploy(api=False)
    assert set(exported) == GCP_OUTPUT_NAMES
    assert len(pulumi_mocks.of_type(FUNCTION)) == 1
    # The function's, and the one the work queue's tasks call it as.
    assert {a.name for a in pulumi_mocks.of_type(ACCOUNT)} == {"imagepipe-sa", "imagepipe-work-sa"}
    assert "iamcredentials.googleapis.com" not in {
        s.inputs["service"] for s in pulumi_mocks.of_type(SERVICE)
    }
    assert "cors" not in pulumi_mocks.one(BUCKET, "uploads").inputs
    assert not pulumi_mocks.of_type("gcp:serviceaccount/iAMMember:IAMMember")


def test_an_unusable_api_stops_before_any_resource(pulumi_mocks):
    with pytest.raises(SettingsError, match="imagepipe:apiJwtAudience is not set"):
        deploy(api_jwt_audience=None)
    assert [r.type for r in pulumi_mocks.resources] == ["imagepipe:index:GcpImagePipeline"]


# --- with the API --------------------------------------------------------------------------


def test_the_api_is_an_open_http_function_capped_in_instances(pulumi_mocks):
    exported = deploy(api_max_instances=4)
    function = api_function(pulumi_mocks)
    assert "eventTrigger" not in function.inputs
    assert function.inputs["buildConfig"]["entryPoint"] == contract.API_ENTRY_POINT
    service = function.inputs["serviceConfig"]
    assert service["ingressSettings"] == "ALLOW_ALL"
    assert service["maxInstanceCount"] == 4
    assert (service["availableMemory"], service["availableCpu"]) == ("256Mi", "1")
    assert service["maxInstanceRequestConcurrency"] == 16
    assert service["serviceAccountEmail"] == api_account(pulumi_mocks).state["email"]
    assert exported["apiUrl"] == function.state["url"]
    assert set(exported) == GCP_OUTPUT_NAMES | {outputs.API_URL}


def test_the_api_runs_its_own_archive_from_the_source_bucket(pulumi_mocks):
    deploy()
    archives = {
        o.name: o.inputs for o in pulumi_mocks.of_type("gcp:storage/bucketObject:BucketObject")
    }
    api = archives["imagepipe-api-source-archive"]
    assert api["name"].startswith("api-") and api["name"].endswith(".zip")
    assert archives["imagepipe-source-archive"]["name"].startswith("function-")
    source = pulumi_mocks.one(BUCKET, "-source")
    assert api["bucket"] == source.state["name"]
    storage = api_function(pulumi_mocks).inputs["buildConfig"]["source"]["storageSource"]
    assert storage == {"bucket": source.state["name"], "object": api["name"]}


def test_the_api_function_is_told_what_its_contract_reads(pulumi_mocks):
    exported = deploy()
    variables = api_function(pulumi_mocks).inputs["serviceConfig"]["environmentVariables"]
    assert contract.api_from_env(variables) == contract.ApiEnvironment(
        settings=make_args().settings,
        options=make_args().api_options(),
        uploads_bucket=exported["uploadsBucket"],
        uploads_prefix="incoming/",
        records_collection=contract.RECORDS_COLLECTION_NAME,
        cdn_url=exported["cdnUrl"],
        sign_rendition_urls=True,
        project=GCP_PROJECT,
        renditions_bucket=exported["renditionsBucket"],
    )


def test_anyone_may_invoke_it_because_it_checks_tokens_itself(pulumi_mocks):
    deploy()
    invokers = {
        i.name: i.inputs
        for i in pulumi_mocks.of_type("gcp:cloudrunv2/serviceIamMember:ServiceIamMember")
    }
    invoker = invokers["imagepipe-api-invoker"]
    assert invoker["role"] == "roles/run.invoker"
    assert invoker["member"] == "allUsers"
    assert invoker["name"] == api_function(pulumi_mocks).state["name"]
    assert invoker["location"] == REGION
    # The pipeline's function stays invokable by its trigger's account alone.
    assert invokers["imagepipe-trigger-invoker"]["member"] != "allUsers"


def test_the_account_is_its_own_with_only_what_the_api_does(pulumi_mocks):
    exported = deploy(delivery_mode="public")
    account = api_account(pulumi_mocks)
    assert account.inputs["accountId"] == service_account_id("imagepipe-api", "test")
    member = account.state["member"]
    assert member != pulumi_mocks.one(ACCOUNT, "imagepipe-sa").state["member"]
    assert grants_of(pulumi_mocks, member) == {
        (exported["uploadsBucket"], "roles/storage.objectCreator"),  # what it presigns
        (exported["uploadsBucket"], "roles/storage.legacyBucketReader"),  # list, never read
    }
    (records,) = [g for g in pulumi_mocks.of_type(PROJECT_MEMBER) if g.inputs["member"] == member]
    assert records.inputs["role"] == "roles/datastore.viewer"
    main_grant = pulumi_mocks.one(PROJECT_MEMBER, "imagepipe-records-user")
    assert records.inputs["condition"] == main_grant.inputs["condition"]
    assert records.inputs["condition"]["expression"] == (
        f'resource.name == "projects/{GCP_PROJECT}/databases/(default)"'
    )


def test_it_signs_through_iam_credentials_as_itself(pulumi_mocks):
    deploy()
    account = api_account(pulumi_mocks)
    (binding,) = pulumi_mocks.of_type("gcp:serviceaccount/iAMMember:IAMMember")
    assert binding.inputs["role"] == "roles/iam.serviceAccountTokenCreator"
    assert binding.inputs["serviceAccountId"] == account.state["name"]
    assert binding.inputs["member"] == account.state["member"]
    services = {s.inputs["service"]: s for s in pulumi_mocks.of_type(SERVICE)}
    assert services["iamcredentials.googleapis.com"].inputs["disableOnDestroy"] is False


@pytest.mark.parametrize("mode", ["signed-urls", "public", "cdn"])
def test_it_may_read_renditions_only_when_it_signs_their_urls(pulumi_mocks, mode):
    exported = deploy(delivery_mode=mode)
    member = api_account(pulumi_mocks).state["member"]
    on_renditions = {
        role
        for bucket, role in grants_of(pulumi_mocks, member)
        if bucket == exported["renditionsBucket"]
    }
    assert on_renditions == (
        {"roles/storage.legacyObjectReader"} if mode == "signed-urls" else set()
    )
    variables = api_function(pulumi_mocks).inputs["serviceConfig"]["environmentVariables"]
    signs = mode == "signed-urls"
    assert variables[contract.SIGN_RENDITION_URLS] == ("true" if signs else "false")
    assert (contract.RENDITIONS_BUCKET in variables) is signs


def test_origins_let_browsers_post_to_the_uploads_bucket_and_nothing_else(pulumi_mocks):
    deploy(api_allowed_origins=ORIGINS)
    assert pulumi_mocks.one(BUCKET, "uploads").inputs["cors"] == [
        {
            "origins": list(ORIGINS),
            "methods": ["POST"],
            "responseHeaders": ["Content-Type"],
            "maxAgeSeconds": 3600,
        }
    ]
    assert "cors" not in pulumi_mocks.one(BUCKET, "renditions").inputs


def test_no_origins_no_cors(pulumi_mocks):
    deploy()
    assert "cors" not in pulumi_mocks.one(BUCKET, "uploads").inputs


def test_an_alert_watches_the_apis_5xx_answers(pulumi_mocks):
    deploy(alarm_email="ops@example.com")
    policy = pulumi_mocks.one("gcp:monitoring/alertPolicy:AlertPolicy", "imagepipe-api-5xx-alert")
    condition = policy.inputs["conditions"][0]["conditionThreshold"]
    service = api_function(pulumi_mocks).state["name"]
    assert 'metric.type="run.googleapis.com/request_count"' in condition["filter"]
    assert f'resource.labels.service_name="{service}"' in condition["filter"]
    assert 'metric.labels.response_code_class="5xx"' in condition["filter"]
    assert condition["comparison"] == "COMPARISON_GT"
    channel = pulumi_mocks.one("gcp:monitoring/notificationChannel:NotificationChannel")
    assert policy.inputs["notificationChannels"] == [channel.state["name"]]


def test_every_api_part_is_a_child_named_after_the_component(pulumi_mocks):
    deploy()
    root = pulumi_mocks.one("imagepipe:index:GcpImagePipeline")
    parts = [r for r in pulumi_mocks.resources if r.name.startswith("imagepipe-api-")]
    assert len(parts) >= 10
    assert {r.parent for r in parts} == {root.urn}
    assert api_function(pulumi_mocks).inputs["labels"]["app"] == "imagepipe"


def test_auth_none_warns_once_and_jwt_not_at_all(pulumi_mocks, caplog):
    with caplog.at_level(logging.WARNING):
        deploy(api_auth="none", api_jwt_issuer=None, api_jwt_audience=None)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [OPEN_API_WARNING]
    caplog.clear()
    pulumi_mocks.resources.clear()
    with caplog.at_level(logging.WARNING):
        deploy()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
