"""The upload API on AWS under Pulumi mocks: absent unless asked for; with it, an HTTP API
whose routes API Gateway authorizes and throttles, in front of a function of its own that
may sign uploads under the prefix, find them, read their records and nothing else."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import pytest

from components import outputs
from components.args import OPEN_API_WARNING
from components.aws import AwsImagePipeline, AwsImagePipelineArgs
from components.aws.pipeline import TYPE_TOKEN
from functions.aws import contract
from functions.core.settings import PipelineSettings, SettingsError
from tests.infra.aws_fakes import fake_wheel_dirs, offline_lambda_builds  # noqa: F401 - fixtures
from tests.infra.conftest import ACCOUNT_ID, API_ID, AWS_OUTPUT_NAMES, AWS_REGION, run_program

ISSUER = "https://login.example.com/"
AUDIENCE = "imagepipe-api"
ORIGINS = ("https://app.example.com", "http://localhost:5173")
TAGS = {"team": "media"}
ARGS = AwsImagePipelineArgs(settings=PipelineSettings(), tags=TAGS)
API_ARGS = replace(
    ARGS,
    api=True,
    api_jwt_issuer=ISSUER,
    api_jwt_audience=AUDIENCE,
    uploads_prefix="incoming/",
)
API_TYPES = {
    "aws:apigatewayv2/api:Api",
    "aws:apigatewayv2/authorizer:Authorizer",
    "aws:apigatewayv2/integration:Integration",
    "aws:apigatewayv2/route:Route",
    "aws:apigatewayv2/stage:Stage",
    "aws:s3/bucketCorsConfiguration:BucketCorsConfiguration",
}
FUNCTION = "aws:lambda/function:Function"
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"


@pytest.fixture
def deploy(pulumi_mocks, offline_lambda_builds):  # noqa: F811 - pytest fixture injection
    def run(args: AwsImagePipelineArgs = API_ARGS):
        return pulumi_mocks, run_program(
            lambda: AwsImagePipeline("imagepipe", args).stack_outputs()
        )

    return run


def api_function(mocks):
    return mocks.one(FUNCTION, "-api-fn")


def api_policy(mocks) -> dict:
    return json.loads(mocks.one("aws:iam/rolePolicy:RolePolicy", "-api-").inputs["policy"])


def routes(mocks) -> dict[str, dict]:
    return {r.inputs["routeKey"]: r.inputs for r in mocks.of_type("aws:apigatewayv2/route:Route")}


# --- off by default ----------------------------------------------------------------------


def test_without_api_nothing_of_it_exists_and_the_outputs_are_unchanged(deploy):
    mocks, exported = deploy(ARGS)
    assert set(exported) == AWS_OUTPUT_NAMES
    assert outputs.API_URL not in exported
    assert {r.type for r in mocks.resources} & API_TYPES == set()
    assert len(mocks.of_type(FUNCTION)) == 1
    assert not [r for r in mocks.resources if r.name.startswith("imagepipe-api-")]


def test_an_unusable_api_stops_before_any_resource(deploy, pulumi_mocks):
    with pytest.raises(SettingsError, match="imagepipe:apiJwtIssuer is not set"):
        deploy(replace(API_ARGS, api_jwt_issuer=None))
    assert [r.type for r in pulumi_mocks.resources] == [TYPE_TOKEN]  # the component alone


# --- with the API --------------------------------------------------------------------------


def test_the_api_is_exported_and_every_part_is_a_named_child(deploy):
    mocks, exported = deploy()
    assert set(exported) == AWS_OUTPUT_NAMES | {outputs.API_URL}
    assert exported["apiUrl"] == f"https://{API_ID}.execute-api.{AWS_REGION}.amazonaws.com"
    component = mocks.one(TYPE_TOKEN)
    api_parts = [r for r in mocks.resources if r.name.startswith("imagepipe-api-")]
    assert {r.type for r in api_parts} >= API_TYPES - {
        "aws:s3/bucketCorsConfiguration:BucketCorsConfiguration"  # no origins here
    }
    assert {r.parent for r in api_parts} == {component.urn}
    http = mocks.one("aws:apigatewayv2/api:Api").inputs
    assert http["protocolType"] == "HTTP"
    assert "corsConfiguration" not in http  # no origin allowed: no browser may call it
    assert not mocks.of_type("aws:s3/bucketCorsConfiguration:BucketCorsConfiguration")


def test_jwt_routes_go_through_the_authorizer_to_the_function(deploy):
    mocks, _ = deploy()
    authorizer = mocks.one("aws:apigatewayv2/authorizer:Authorizer")
    assert authorizer.inputs["authorizerType"] == "JWT"
    assert authorizer.inputs["identitySources"] == ["$request.header.Authorization"]
    assert authorizer.inputs["jwtConfiguration"] == {"issuer": ISSUER, "audiences": [AUDIENCE]}
    assert authorizer.inputs["apiId"] == API_ID

    integration = mocks.one("aws:apigatewayv2/integration:Integration")
    assert integration.inputs["integrationType"] == "AWS_PROXY"
    assert integration.inputs["payloadFormatVersion"] == "2.0"
    assert integration.inputs["integrationUri"] == api_function(mocks).state["arn"]

    found = routes(mocks)
    assert set(found) == {"POST /uploads", "GET /images/{id}"}
    for route in found.values():
        assert route["authorizationType"] == "JWT"
        assert route["authorizerId"] == authorizer.state.get("id", f"{authorizer.name}-id")
        assert route["target"] == f"integrations/{integration.name}-id"


def test_auth_none_opens_the_routes_and_warns_once(deploy, caplog):
    with caplog.at_level(logging.WARNING):
        mocks, _ = deploy(replace(API_ARGS, api_auth="none", api_jwt_issuer=None))
    assert not mocks.of_type("aws:apigatewayv2/authorizer:Authorizer")
    for route in routes(mocks).values():
        assert route["authorizationType"] == "NONE"
        assert "authorizerId" not in route
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [OPEN_API_WARNING]
    assert "anyone" in warnings[0] and "demo" in warnings[0]


def test_jwt_auth_warns_nothing(deploy, caplog):
    with caplog.at_level(logging.WARNING):
        deploy()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_the_stage_throttles_and_writes_json_access_logs(deploy):
    mocks, _ = deploy(replace(API_ARGS, api_rate_limit=7, api_burst_limit=11))
    stage = mocks.one("aws:apigatewayv2/stage:Stage").inputs
    assert stage["name"] == "$default"
    assert stage["autoDeploy"] is True
    assert stage["defaultRouteSettings"] == {"throttlingRateLimit": 7, "throttlingBurstLimit": 11}
    access = stage["accessLogSettings"]
    log_group = mocks.one("aws:cloudwatch/logGroup:LogGroup", "api-access-logs")
    assert access["destinationArn"] == log_group.state["arn"]
    assert json.loads(access["format"])["requestId"] == "$context.requestId"
    assert log_group.inputs["retentionInDays"] == API_ARGS.log_retention_days


def test_api_gateway_alone_may_invoke_the_function_from_this_api(deploy):
    mocks, _ = deploy()
    (permission,) = [
        p
        for p in mocks.of_type("aws:lambda/permission:Permission")
        if p.inputs["principal"] == "apigateway.amazonaws.com"
    ]
    assert permission.inputs["action"] == "lambda:InvokeFunction"
    assert permission.inputs["function"] == api_function(mocks).state["name"]
    assert (
        permission.inputs["sourceArn"]
        == f"arn:aws:execute-api:{AWS_REGION}:{ACCOUNT_ID}:{API_ID}/*/*"
    )


def test_origins_get_cors_on_the_api_and_exactly_the_form_post_on_the_bucket(deploy):
    mocks, _ = deploy(replace(API_ARGS, api_allowed_origins=ORIGINS))
    cors = mocks.one("aws:apigatewayv2/api:Api").inputs["corsConfiguration"]
    assert cors == {
        "allowOrigins": list(ORIGINS),
        "allowMethods": ["GET", "POST"],
        "allowHeaders": ["authorization", "content-type"],
        "maxAge": 3600,
    }
    bucket_cors = mocks.one("aws:s3/bucketCorsConfiguration:BucketCorsConfiguration").inputs
    uploads = mocks.one("aws:s3/bucket:Bucket", "imagepipe-uploads")
    assert bucket_cors["bucket"] == f"{uploads.name}-id"
    # A multipart form POST is a CORS simple request: no header needs allowing.
    assert bucket_cors["corsRules"] == [
        {"allowedMethods": ["POST"], "allowedOrigins": list(ORIGINS), "maxAgeSeconds": 3600}
    ]


# --- the API's function and its role ----------------------------------------------------------


def test_the_api_function_runs_the_same_archive_with_its_own_handler_and_environment(deploy):
    mocks, exported = deploy()
    main = mocks.one(FUNCTION, "imagepipe-fn").inputs
    api = api_function(mocks).inputs
    assert api["handler"] == contract.API_HANDLER
    assert api["code"].path == main["code"].path  # built once, deployed twice
    assert api["sourceCodeHash"] == main["sourceCodeHash"]
    assert api["name"] == "imagepipe-api-test"
    assert (api["memorySize"], api["timeout"]) == (256, 10)
    assert api["role"] != main["role"]
    logs = mocks.one("aws:cloudwatch/logGroup:LogGroup", "imagepipe-api-logs").inputs
    assert logs["name"] == "/aws/lambda/imagepipe-api-test"
    assert logs["retentionInDays"] == API_ARGS.log_retention_days
    assert api["loggingConfig"]["logFormat"] == "JSON"
    assert api["loggingConfig"]["logGroup"] == logs["name"]
    environment = contract.api_from_env(api["environment"]["variables"])
    assert environment == contract.ApiEnvironment(
        settings=API_ARGS.settings,
        options=API_ARGS.api_options(),
        uploads_bucket=exported["uploadsBucket"],
        uploads_prefix="incoming/",
        records_table=exported["recordsTable"],
        cdn_url=exported["cdnUrl"],
    )
    policy = mocks.one("aws:iam/rolePolicy:RolePolicy", "imagepipe-api-role-policy")
    assert policy.urn in api_function(mocks).dependencies


def test_the_api_role_signs_finds_and_reads_under_the_prefix_only(deploy):
    mocks, exported = deploy()
    uploads_arn = f"arn:aws:s3:::{exported['uploadsBucket']}"
    table_arn = mocks.one("aws:dynamodb/table:Table").state["arn"]
    log_group_arn = mocks.one("aws:cloudwatch/logGroup:LogGroup", "imagepipe-api-logs").state["arn"]
    assert api_policy(mocks)["Statement"] == [
        {
            "Sid": "SignUploads",
            "Effect": "Allow",
            "Action": "s3:PutObject",
            "Resource": f"{uploads_arn}/incoming/*",
        },
        {
            "Sid": "FindUploads",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": uploads_arn,
            "Condition": {"StringLike": {"s3:prefix": "incoming/*"}},
        },
        {
            "Sid": "ReadRecords",
            "Effect": "Allow",
            "Action": "dynamodb:GetItem",
            "Resource": table_arn,
        },
        {
            "Sid": "FindRecordsOfAnUploadId",
            "Effect": "Allow",
            "Action": "dynamodb:Query",
            "Resource": f"{table_arn}/index/by-upload",
        },
        {
            "Sid": "WriteOwnLogs",
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": f"{log_group_arn}:*",
        },
    ]
    trust = json.loads(
        mocks.one("aws:iam/role:Role", "imagepipe-api-role").inputs["assumeRolePolicy"]
    )
    assert trust["Statement"][0]["Principal"] == {"Service": "lambda.amazonaws.com"}


def test_without_a_prefix_the_api_role_still_lists_only_with_one(deploy):
    mocks, exported = deploy(replace(API_ARGS, uploads_prefix=None))
    statements = {s["Sid"]: s for s in api_policy(mocks)["Statement"]}
    uploads_arn = f"arn:aws:s3:::{exported['uploadsBucket']}"
    assert statements["SignUploads"]["Resource"] == f"{uploads_arn}/*"
    assert statements["FindUploads"]["Condition"] == {"StringLike": {"s3:prefix": "*"}}
    for statement in statements.values():
        actions = (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
        assert not any("*" in action for action in actions)
        assert statement["Resource"] != "*"


# --- alarms and tags ---------------------------------------------------------------------------


def test_api_5xx_and_the_api_functions_errors_alarm_to_the_ops_topic(deploy):
    mocks, _ = deploy()
    ops_arn = mocks.one("aws:sns/topic:Topic", "ops").state["arn"]
    alarms = {a.name: a.inputs for a in mocks.of_type(ALARM) if a.name.startswith("imagepipe-api-")}
    assert set(alarms) == {"imagepipe-api-alarm-5xx", "imagepipe-api-alarm-errors"}
    gateway = alarms["imagepipe-api-alarm-5xx"]
    assert (gateway["namespace"], gateway["metricName"]) == ("AWS/ApiGateway", "5xx")
    assert gateway["dimensions"] == {"ApiId": API_ID, "Stage": "$default"}
    errors = alarms["imagepipe-api-alarm-errors"]
    assert (errors["namespace"], errors["metricName"]) == ("AWS/Lambda", "Errors")
    assert errors["dimensions"] == {"FunctionName": "imagepipe-api-test"}
    for alarm in alarms.values():
        assert alarm["alarmActions"] == [ops_arn]
        assert (alarm["comparisonOperator"], alarm["threshold"]) == ("GreaterThanThreshold", 0)


def test_the_api_parts_carry_the_tags(deploy):
    mocks, _ = deploy()
    taggable = {
        "aws:apigatewayv2/api:Api",
        "aws:apigatewayv2/stage:Stage",
        "aws:lambda/function:Function",
        "aws:iam/role:Role",
        "aws:cloudwatch/logGroup:LogGroup",
        ALARM,
    }
    parts = [
        r for r in mocks.resources if r.name.startswith("imagepipe-api-") and r.type in taggable
    ]
    assert {r.type for r in parts} == taggable
    assert [r.name for r in parts if r.inputs.get("tags") != TAGS] == []


def test_the_shared_archive_holds_the_api_handler(deploy):
    import zipfile

    mocks, _ = deploy()
    with zipfile.ZipFile(api_function(mocks).inputs["code"].path) as archive:
        names = set(archive.namelist())
    assert {contract.HANDLER_FILE, contract.API_HANDLER_FILE} <= names
