"""The upload API on GCP: an HTTP Cloud Function of its own (issue 11).

`POST /uploads` answers a presigned POST to the uploads bucket, `GET /images/{id}` an
upload's status. No gateway stands in front: the function verifies the callers' JWTs
itself and caps its own instances. It runs as an account of its own that may only sign
uploads, find them, read their records and, in delivery mode signed-urls, sign viewers'
rendition URLs.

`GcpImagePipeline.__init__` calls `create_upload_api` when `args.api_options()` is set;
every resource here is its child, named `<name>-api-<role>`, and none is created inside
an `apply`. `components/aws/api.py` is the same on AWS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pulumi
import pulumi_gcp as gcp

from components.args import OPEN_API_WARNING
from components.gcp.args import GcpImagePipelineArgs
from components.gcp.function_source import API_FUNCTION
from components.gcp.functions import function_build_config
from functions.core.uploads import CORS_MAX_AGE_SECONDS, ApiOptions
from functions.gcp import contract

if TYPE_CHECKING:  # the pipeline imports this module
    from components.gcp.pipeline import GcpImagePipeline

# Google APIs only the upload API needs, enabled only with it: a stack without the API
# keeps exactly the APIs it had.
API_REQUIRED_APIS = {
    "iamcredentials": "signing presigned POSTs and rendition URLs (signBlob)",
}
API_MEMORY = "256Mi"  # signing and one lookup: no image is ever decoded here
API_CPU = "1"  # Cloud Run allows concurrency above 1 only with a whole vCPU
# I/O-bound (a signature, a listing, a document read): one instance serves many at once.
API_CONCURRENCY = 16
API_TIMEOUT_SECONDS = 10

# Signing a POST policy or a URL hands out the signer's own rights for that request:
# storage.objects.create for the browser's upload, and nothing that reads or deletes.
UPLOADS_SIGNER_ROLE = "roles/storage.objectCreator"
# GET /images/{id} lists `<prefix><caller>/<id>/` for the key and generation the record is
# keyed by. legacyBucketReader is storage.objects.list (and reading bucket metadata) without
# storage.objects.get: the API never reads an upload's bytes, so objectViewer would be more.
UPLOADS_FINDER_ROLE = "roles/storage.legacyBucketReader"
# In delivery mode signed-urls each rendition URL is signed by this account, so it needs
# storage.objects.get on the renditions and nothing else (no listing: keys come from records).
RENDITIONS_SIGNER_ROLE = "roles/storage.legacyObjectReader"
RECORDS_READER_ROLE = "roles/datastore.viewer"
# A function has no private key: V4 signing goes through the IAM credentials API's signBlob,
# as the account itself, which needs this role on itself.
TOKEN_CREATOR_ROLE = "roles/iam.serviceAccountTokenCreator"


def uploads_cors(options: ApiOptions | None) -> list[gcp.storage.BucketCorArgs] | None:
    """The uploads bucket's CORS: exactly a browser's form POST from the allowed origins,
    reading the answer's Content-Type. None without the API or without origins."""
    if options is None or not options.allowed_origins:
        return None
    return [
        gcp.storage.BucketCorArgs(
            origins=list(options.allowed_origins),
            methods=["POST"],
            response_headers=["Content-Type"],
            max_age_seconds=CORS_MAX_AGE_SECONDS,
        )
    ]


def api_errors_filter(service_name: str) -> str:
    """Cloud Run's request count of the API's service, answers 5xx only."""
    return (
        'metric.type="run.googleapis.com/request_count" AND '
        'resource.type="cloud_run_revision" AND '
        f'resource.labels.service_name="{service_name.lower()}" AND '
        'metric.labels.response_code_class="5xx"'
    )


def create_upload_api(
    component: GcpImagePipeline,
    name: str,
    args: GcpImagePipelineArgs,
    options: ApiOptions,
    *,
    account_id: str,
    project_id: pulumi.Output[str],
    apis: dict[str, gcp.projects.Service],
    uploads: gcp.storage.Bucket,
    renditions: gcp.storage.Bucket,
    source_bucket: gcp.storage.Bucket,
    records_condition: gcp.projects.IAMMemberConditionArgs,
    database: gcp.firestore.Database,
    cdn_url: pulumi.Output[str],
    labels: dict[str, str],
    channels: list[pulumi.Output[str]],
) -> pulumi.Output[str]:
    """Stand the API up as children of `component`; return its base URL."""
    if options.auth == "none":
        pulumi.log.warn(OPEN_API_WARNING, resource=component)
    storage_ready = pulumi.ResourceOptions(parent=component, depends_on=[apis["storage"]])
    sign_rendition_urls = args.delivery_mode == "signed-urls"

    # --- the API's identity and its grants -----------------------------------------------
    account = gcp.serviceaccount.Account(
        f"{name}-api-sa",
        account_id=account_id,
        display_name=f"imagepipe upload API ({name})",
        description="Runs the imagepipe upload API and signs its uploads and rendition URLs.",
        opts=pulumi.ResourceOptions(parent=component, depends_on=[apis["iam"]]),
    )
    grants: list[pulumi.Resource] = [
        gcp.storage.BucketIAMMember(
            f"{name}-api-uploads-signer",
            bucket=uploads.name,
            role=UPLOADS_SIGNER_ROLE,
            member=account.member,
            opts=storage_ready,
        ),
        gcp.storage.BucketIAMMember(
            f"{name}-api-uploads-finder",
            bucket=uploads.name,
            role=UPLOADS_FINDER_ROLE,
            member=account.member,
            opts=storage_ready,
        ),
        # The same one-database condition as the pipeline function's grant.
        gcp.projects.IAMMember(
            f"{name}-api-records-reader",
            project=project_id,
            role=RECORDS_READER_ROLE,
            member=account.member,
            condition=records_condition,
            opts=pulumi.ResourceOptions(parent=component, depends_on=[database]),
        ),
        gcp.serviceaccount.IAMMember(
            f"{name}-api-token-creator",
            service_account_id=account.name,
            role=TOKEN_CREATOR_ROLE,
            member=account.member,
            opts=pulumi.ResourceOptions(parent=component, depends_on=[apis["iamcredentials"]]),
        ),
    ]
    if sign_rendition_urls:
        grants.append(
            gcp.storage.BucketIAMMember(
                f"{name}-api-renditions-signer",
                bucket=renditions.name,
                role=RENDITIONS_SIGNER_ROLE,
                member=account.member,
                opts=storage_ready,
            )
        )

    # --- the function ----------------------------------------------------------------------
    function = gcp.cloudfunctionsv2.Function(
        f"{name}-api-fn",
        location=args.region,
        description="imagepipe upload API: presigned uploads and image status",
        labels=labels,
        build_config=function_build_config(
            component,
            f"{name}-api",
            API_FUNCTION,
            entry_point=contract.API_ENTRY_POINT,
            python_version=args.python_version,
            source_bucket=source_bucket,
            storage_api=apis["storage"],
        ),
        # No event trigger: an HTTP function, called by browsers and clients directly.
        service_config=gcp.cloudfunctionsv2.FunctionServiceConfigArgs(
            available_memory=API_MEMORY,
            available_cpu=API_CPU,
            timeout_seconds=API_TIMEOUT_SECONDS,
            # Its throttle and cost ceiling, as the stage's throttling is on AWS.
            max_instance_count=args.api_max_instances,
            max_instance_request_concurrency=API_CONCURRENCY,
            ingress_settings="ALLOW_ALL",
            all_traffic_on_latest_revision=True,
            service_account_email=account.email,
            environment_variables=contract.api_to_env(
                settings=args.settings,
                options=options,
                uploads_bucket=uploads.name,
                uploads_prefix=args.uploads_prefix,
                records_collection=contract.RECORDS_COLLECTION_NAME,
                cdn_url=cdn_url,
                sign_rendition_urls=sign_rendition_urls,
                project=project_id,
                # The bucket its signed URLs are for; without signing it never names it.
                renditions_bucket=renditions.name if sign_rendition_urls else None,
            ),
        ),
        opts=pulumi.ResourceOptions(
            parent=component,
            depends_on=[
                *(apis[api] for api in ("cloudfunctions", "run", "cloudbuild", "artifactregistry")),
                *grants,
            ],
        ),
    )
    # Anyone may reach the function: it verifies the bearer token itself (apiAuth jwt), as
    # API Gateway's authorizer does on AWS; Cloud Run's own IAM check would demand Google
    # identities. An organisation policy restricting allUsers refuses this at `pulumi up`.
    gcp.cloudrunv2.ServiceIamMember(
        f"{name}-api-invoker",
        location=args.region,
        name=function.name,
        role="roles/run.invoker",
        member="allUsers",
        opts=pulumi.ResourceOptions(parent=component, depends_on=[apis["run"]]),
    )

    # --- an alert like the pipeline's: any 5xx answer is worth a look ----------------------
    component.alert(
        name,
        role="api-5xx",
        title="imagepipe upload API 5xx answers",
        condition_filter=function.name.apply(api_errors_filter),
        documentation="The upload API answered 5xx: an outage of Cloud Storage or Firestore "
        "(503) or a bug. Read the API function's logs in Cloud Logging.",
        channels=channels,
        labels=labels,
        depends_on=[apis["monitoring"]],
    )
    return function.url
