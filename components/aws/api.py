"""The upload API on AWS: an HTTP API in front of its own Lambda function (issue 11).

`POST /uploads` answers a presigned POST to the uploads bucket, `GET /images/{id}` an
upload's status. API Gateway verifies the callers' JWTs and throttles the stage; the
function (the pipeline's archive, its own handler and role) only signs, lists and reads.

`AwsImagePipeline.__init__` calls `create_upload_api` when `args.api_options()` is set;
every resource here is its child, named `<name>-api-<role>`, and none is created inside
an `apply`. `components/gcp/api.py` is the same on GCP.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pulumi
import pulumi_aws as aws

from components.args import OPEN_API_WARNING
from components.aws import policies
from components.aws.args import AwsImagePipelineArgs
from components.aws.functions import function_logs_and_role, json_logging
from components.aws.lambda_archive import LambdaArchive
from functions.aws import contract
from functions.core.uploads import (
    CORS_HEADERS,
    CORS_MAX_AGE_SECONDS,
    CORS_METHODS,
    ApiOptions,
)

if TYPE_CHECKING:  # the pipeline imports this module
    from components.aws.pipeline import AwsImagePipeline

ROUTES = ("POST /uploads", "GET /images/{id}")
STAGE = "$default"  # the one stage, served at the API's root URL
API_MEMORY_MB = 256  # signing and one lookup: no image is ever decoded here
API_TIMEOUT_SECONDS = 10
# One JSON object per request in the stage's access log. No caller identity or query
# string: the log says what happened to a request, not who sent it.
ACCESS_LOG_FORMAT = json.dumps(
    {
        "requestId": "$context.requestId",
        "requestTime": "$context.requestTime",
        "routeKey": "$context.routeKey",
        "status": "$context.status",
        "responseLength": "$context.responseLength",
        "integrationLatency": "$context.integrationLatency",
        "integrationError": "$context.integrationErrorMessage",
        "authorizerError": "$context.authorizer.error",
    },
    separators=(",", ":"),
)


def uploads_cors_rules(options: ApiOptions) -> list[dict[str, object]] | None:
    """The uploads bucket's CORS: exactly a browser's form POST from the allowed origins.

    A multipart/form-data POST without custom headers is a CORS simple request: the browser
    sends no preflight and no header needs allowing. None when no origin is allowed."""
    if not options.allowed_origins:
        return None
    return [
        {
            "allowed_methods": ["POST"],
            "allowed_origins": list(options.allowed_origins),
            "max_age_seconds": CORS_MAX_AGE_SECONDS,
        }
    ]


def api_cors(options: ApiOptions) -> dict[str, object] | None:
    """The HTTP API's CORS (API Gateway answers the preflights itself), or None."""
    if not options.allowed_origins:
        return None
    return {
        "allow_origins": list(options.allowed_origins),
        "allow_methods": list(CORS_METHODS),
        "allow_headers": list(CORS_HEADERS),
        "max_age": CORS_MAX_AGE_SECONDS,
    }


def create_upload_api(
    component: AwsImagePipeline,
    name: str,
    args: AwsImagePipelineArgs,
    options: ApiOptions,
    *,
    function_name: str,
    archive: LambdaArchive,
    uploads: aws.s3.Bucket,
    records: aws.dynamodb.Table,
    ops: aws.sns.Topic,
    cdn_url: pulumi.Output[str],
) -> pulumi.Output[str]:
    """Stand the API up as children of `component`; return its base URL."""
    if options.auth == "none":
        pulumi.log.warn(OPEN_API_WARNING, resource=component)
    tags = dict(args.tags)
    child = pulumi.ResourceOptions(parent=component)

    # --- the API's function: the pipeline's archive, its own handler, role and logs ------
    logs, role = function_logs_and_role(component, f"{name}-api", function_name, args)
    role_policy = aws.iam.RolePolicy(
        f"{name}-api-role-policy",
        role=role.id,
        policy=pulumi.Output.json_dumps(
            pulumi.Output.all(uploads.arn, records.arn, logs.arn).apply(
                lambda arns: policies.api_function_policy(
                    uploads_bucket_arn=arns[0],
                    records_table_arn=arns[1],
                    log_group_arn=arns[2],
                    uploads_prefix=args.uploads_prefix,
                )
            )
        ),
        opts=child,
    )
    function = aws.lambda_.Function(
        f"{name}-api-fn",
        name=function_name,
        role=role.arn,
        handler=contract.API_HANDLER,
        runtime=f"python{args.python_version}",
        architectures=[args.architecture],
        memory_size=API_MEMORY_MB,
        timeout=API_TIMEOUT_SECONDS,
        code=pulumi.FileArchive(str(archive.path)),
        source_code_hash=archive.source_code_hash,
        logging_config=json_logging(logs),
        environment={
            "variables": contract.api_to_env(
                settings=args.settings,
                options=options,
                uploads_bucket=uploads.bucket,
                uploads_prefix=args.uploads_prefix,
                records_table=records.name,
                cdn_url=cdn_url,
            )
        },
        tags=tags,
        # The first request must find its signing, listing and log permissions in place.
        opts=pulumi.ResourceOptions(parent=component, depends_on=[role_policy]),
    )

    # --- the HTTP API ------------------------------------------------------------------
    api = aws.apigatewayv2.Api(
        f"{name}-api-http",
        name=function_name,
        protocol_type="HTTP",
        description="imagepipe upload API: presigned uploads and image status",
        cors_configuration=api_cors(options),
        tags=tags,
        opts=child,
    )
    authorizer = None
    if options.auth == "jwt":
        authorizer = aws.apigatewayv2.Authorizer(
            f"{name}-api-jwt",
            api_id=api.id,
            name="jwt",
            authorizer_type="JWT",
            identity_sources=["$request.header.Authorization"],
            jwt_configuration={
                "issuer": options.jwt_issuer,
                "audiences": [options.jwt_audience],
            },
            opts=child,
        )
    integration = aws.apigatewayv2.Integration(
        f"{name}-api-integration",
        api_id=api.id,
        integration_type="AWS_PROXY",
        integration_uri=function.arn,
        payload_format_version="2.0",
        timeout_milliseconds=API_TIMEOUT_SECONDS * 1000,
        opts=child,
    )
    for route_key in ROUTES:
        aws.apigatewayv2.Route(
            f"{name}-api-route-{_route_role(route_key)}",
            api_id=api.id,
            route_key=route_key,
            target=pulumi.Output.concat("integrations/", integration.id),
            authorization_type="JWT" if authorizer else "NONE",
            authorizer_id=authorizer.id if authorizer else None,
            opts=child,
        )
    access_logs = aws.cloudwatch.LogGroup(
        f"{name}-api-access-logs",
        name=f"/aws/apigateway/{function_name}",
        retention_in_days=args.log_retention_days,
        tags=tags,
        opts=child,
    )
    aws.apigatewayv2.Stage(
        f"{name}-api-stage",
        api_id=api.id,
        name=STAGE,
        auto_deploy=True,
        # The cost ceiling of the API, as reservedConcurrency is the pipeline function's.
        default_route_settings={
            "throttling_rate_limit": args.api_rate_limit,
            "throttling_burst_limit": args.api_burst_limit,
        },
        access_log_settings={"destination_arn": access_logs.arn, "format": ACCESS_LOG_FORMAT},
        tags=tags,
        opts=child,
    )
    aws.lambda_.Permission(
        f"{name}-api-invoke",
        action="lambda:InvokeFunction",
        function=function.name,
        principal="apigateway.amazonaws.com",
        # Any stage and route of this API, and no other API.
        source_arn=pulumi.Output.concat(api.execution_arn, "/*/*"),
        opts=child,
    )

    # --- the browser's POST to the bucket ------------------------------------------------
    cors_rules = uploads_cors_rules(options)
    if cors_rules:
        aws.s3.BucketCorsConfiguration(
            f"{name}-api-uploads-cors", bucket=uploads.id, cors_rules=cors_rules, opts=child
        )

    # --- alarms, like the pipeline's: anything above zero is worth a look -----------------
    component.alarm(
        f"{name}-api-alarm-5xx",
        namespace="AWS/ApiGateway",
        metric="5xx",
        statistic="Sum",
        dimensions={"ApiId": api.id, "Stage": STAGE},
        subject=function_name,
        topic=ops,
        tags=tags,
    )
    component.alarm(
        f"{name}-api-alarm-errors",
        namespace="AWS/Lambda",
        metric="Errors",
        statistic="Sum",
        dimensions={"FunctionName": function.name},
        subject=function_name,
        topic=ops,
        tags=tags,
    )
    return api.api_endpoint


def _route_role(route_key: str) -> str:
    """'POST /uploads' -> 'post-uploads', 'GET /images/{id}' -> 'get-images'."""
    method, path = route_key.split(" ", 1)
    words = [part for part in path.split("/") if part and not part.startswith("{")]
    return "-".join([method.lower(), *words])
