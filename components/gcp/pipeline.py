"""`GcpImagePipeline`: GCS uploads -> Eventarc -> Cloud Functions gen2 -> Firestore + Pub/Sub.

One component stands the whole pipeline up in one project and region. Every
child is parented to the component and named `<name>-<role>`; the function's
service account gets only what the function does, each grant on the narrowest
resource that takes an IAM binding. Beside the uploads' finalize and delete events,
the same function takes a work queue (Cloud Tasks, capped at `backfill_concurrency`)
that backfill and redrive fill.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlsplit

import pulumi
import pulumi_gcp as gcp

from components import outputs
from components.args import BACKFILL_CONCURRENCY_RANGE
from components.gcp.api import API_REQUIRED_APIS, create_upload_api, uploads_cors
from components.gcp.args import GcpImagePipelineArgs
from components.gcp.function_source import MAIN_FUNCTION
from components.gcp.functions import function_build_config
from functions.core.metrics import (
    ACTION_COUNTERS,
    ERROR_CODE,
    IMAGES_FAILED,
    PROCESSING_MS,
    TIMED_ACTIONS,
)
from functions.core.settings import SettingsError, shown
from functions.gcp import contract

TYPE_TOKEN = "imagepipe:index:GcpImagePipeline"
# short name -> what needs it. Each is enabled once and never disabled on destroy:
# other workloads in the project may use the same API.
REQUIRED_APIS = {
    "cloudfunctions": "the function",
    "run": "the function's Cloud Run service",
    "cloudbuild": "building the function from source",
    "eventarc": "the storage trigger",
    "artifactregistry": "the function's container image",
    "firestore": "the records database",
    "pubsub": "the events topic and the trigger's transport",
    "storage": "the buckets",
    "iam": "the function's service account",
    "logging": "the log-based metrics",
    "monitoring": "the alert policies",
    "cloudtasks": "the work queue (backfill, redrive)",
}
CDN_API = "compute"  # only in delivery mode "cdn": the load balancer and backend bucket
STORAGE_BASE_URL = "https://storage.googleapis.com/"
# Every function log line at ERROR or above: GCP's counterpart of Lambda's Errors metric.
FUNCTION_ERRORS = "FunctionErrors"

# Bucket roles, each the narrowest predefined role that allows what its holder does.
# Viewers only GET renditions: storage.objects.get and nothing else.
PUBLIC_READER_ROLE = "roles/storage.legacyObjectReader"
# The function only downloads an upload by generation (storage.objects.get). It keeps
# objectViewer's storage.objects.list anyway: a deleted upload must answer 404 to end FAILED
# object_missing, S3 answers 403 instead to callers who may not list, and GCS documents no
# rule either way. Listing shows this one account the key names of uploads, nothing more.
UPLOADS_READER_ROLE = "roles/storage.objectViewer"
# Writing renditions is storage.objects.create, plus storage.objects.delete because a
# redelivered or repeated upload rewrites the same content-addressed keys and an overwrite
# needs both. No object role has exactly those two: objectCreator lacks delete, objectUser
# adds reading and updating every rendition. legacyBucketWriter is create, delete and list
# objects plus reading bucket metadata: it cannot read a rendition back.
RENDITIONS_WRITER_ROLE = "roles/storage.legacyBucketWriter"
# That role already lists and deletes: the renditions of deleted uploads (reference-counted)
# need nothing more. With originals delete or archive the function also deletes the upload
# once its image COMPLETED: objectUser is objectViewer plus create, update and delete, and no
# IAM (object ACLs are off under uniform access anyway); no predefined role deletes without
# creating.
UPLOADS_REMOVER_ROLE = "roles/storage.objectUser"
# originals archive: a copy into the archive bucket is storage.objects.create alone.
ARCHIVE_WRITER_ROLE = "roles/storage.objectCreator"
# With the CDN and deleteRenditionsWithOriginal, the function tells Cloud CDN to forget the
# renditions it deleted; no predefined role has this permission without much more.
CDN_INVALIDATION_PERMISSIONS = ["compute.urlMaps.invalidateCache"]
CLOUD_RUN_INVOKER_ROLE = "roles/run.invoker"
# Most a task may back off between attempts (Cloud Tasks' own default); the least is the
# function's lease, so a retry finds a crashed delivery's claim expired instead of held.
WORK_MAX_BACKOFF = "3600s"


def service_account_id(name: str, stack: str) -> str:
    """A 6-30 character account id, unique per component name and stack within a project."""
    slug = re.sub(r"[^a-z0-9-]+", "-", f"{name}-{stack}".lower()).strip("-")
    if not slug[:1].isalpha():
        slug = f"ip-{slug}"
    digest = hashlib.sha256(f"{name}/{stack}".encode()).hexdigest()[:6]
    return f"{slug[:20].rstrip('-')}-{digest}"


def custom_role_id(name: str, stack: str, purpose: str) -> str:
    """A custom role id (letters, digits, `_`; at most 64), unique per component and stack.

    A deleted custom role keeps its id for up to 37 days: a stack destroyed and stood up
    again within 7 days gets it undeleted, between 7 and 37 days `pulumi up` fails on it."""
    slug = re.sub(r"[^A-Za-z0-9_]+", "_", f"{name}_{stack}").strip("_")
    digest = hashlib.sha256(f"{name}/{stack}".encode()).hexdigest()[:6]
    return f"{slug[:40].rstrip('_')}_{digest}_{purpose}"


def url_host(url: str) -> str:
    """`https://fn-abc-ew.a.run.app` -> `fn-abc-ew.a.run.app`."""
    return urlsplit(url).hostname or ""


def database_condition_expression(project_id: str, database: str) -> str:
    """IAM condition limiting a Firestore role to one database of the project."""
    return f'resource.name == "projects/{project_id}/databases/{database}"'


def function_log_filter(service_name: str, extra: str) -> str:
    """Logs of the function's Cloud Run service (a gen2 function runs as one) matching `extra`."""
    return (
        'resource.type="cloud_run_revision" AND '
        f'resource.labels.service_name="{service_name.lower()}" AND {extra}'
    )


def _kebab(metric_name: str) -> str:
    """ImagesCompleted -> images-completed: the resource's role word."""
    return "".join(f"-{c.lower()}" if c.isupper() else c for c in metric_name).lstrip("-")


def log_metric_filter(metric_name: str) -> str:
    return (
        f'metric.type="logging.googleapis.com/user/{metric_name}" AND '
        'resource.type="cloud_run_revision"'
    )


class GcpImagePipeline(pulumi.ComponentResource):
    """The image pipeline on Google Cloud; see the module docstring."""

    uploads_bucket: pulumi.Output[str]
    """Name of the bucket users upload originals to (its finalize events trigger the function)."""
    renditions_bucket: pulumi.Output[str]
    """Name of the bucket the renditions are written to."""
    cdn_url: pulumi.Output[str]
    """Base URL of the renditions: the CDN's address in mode `cdn`, else the bucket's
    storage.googleapis.com URL (in mode `signed-urls` each object URL must be signed)."""
    records_collection: pulumi.Output[str]
    """Firestore collection (in the `(default)` database) holding one document per upload."""
    events_topic: pulumi.Output[str]
    """Pub/Sub topic id (`projects/<p>/topics/<t>`) receiving CloudEvents per processed upload."""
    function_name: pulumi.Output[str]
    """Name of the Cloud Functions gen2 function."""
    uploads_prefix: pulumi.Output[str]
    """Only objects under this prefix are processed ("" for all); clients upload under it."""
    api_url: pulumi.Output[str] | None
    """Base URL of the upload API (`POST /uploads`, `GET /images/{id}`); None without it."""
    work_queue: pulumi.Output[str]
    """The Cloud Tasks queue of backfill and redrive: `projects/<p>/locations/<l>/queues/<q>`."""
    work_url: pulumi.Output[str]
    """URL of the function's Cloud Run service: what the work queue's tasks call."""
    work_invoker: pulumi.Output[str]
    """E-mail of the service account the tasks' OIDC tokens name (the function's invoker)."""
    archive_bucket: pulumi.Output[str] | None
    """Name of the bucket finished uploads are moved to (originals `archive`); else None."""
    settings: pulumi.Output[str]
    """The function's settings as JSON: what `imagepipe backfill --stale` compares with."""

    def __init__(
        self,
        name: str,
        args: GcpImagePipelineArgs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(TYPE_TOKEN, name, {}, opts)
        _check_args(args)
        api_options = args.api_options()  # an unusable API stops before any resource exists
        settings = args.settings
        labels = {"app": "imagepipe", "imagepipe-component": name, **args.tags}
        project = gcp.organizations.get_project_output()
        project_id = project.project_id

        # --- APIs ---------------------------------------------------------------------
        apis = {
            api: gcp.projects.Service(
                f"{name}-api-{api}",
                service=f"{api}.googleapis.com",
                disable_on_destroy=False,
                disable_dependent_services=False,
                opts=pulumi.ResourceOptions(parent=self),
            )
            for api in {**REQUIRED_APIS, **(API_REQUIRED_APIS if api_options else {})}
        }

        # --- Buckets ------------------------------------------------------------------
        expiry = (
            [
                gcp.storage.BucketLifecycleRuleArgs(
                    action=gcp.storage.BucketLifecycleRuleActionArgs(type="Delete"),
                    condition=gcp.storage.BucketLifecycleRuleConditionArgs(
                        age=args.originals_expiry_days
                    ),
                )
            ]
            if args.originals_expiry_days
            else None
        )
        uploads = gcp.storage.Bucket(
            f"{name}-uploads",
            location=args.region,
            uniform_bucket_level_access=True,
            public_access_prevention="enforced",
            force_destroy=False,
            lifecycle_rules=expiry,
            # Only with the upload API: browsers POST the files it presigns straight here.
            cors=uploads_cors(api_options),
            labels=labels,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[apis["storage"]]),
        )
        renditions_public = args.delivery_mode in ("public", "cdn")
        renditions = gcp.storage.Bucket(
            f"{name}-renditions",
            location=args.region,
            uniform_bucket_level_access=True,
            # "inherited" lets the allUsers grant below take effect; the org policy may still
            # enforce prevention, in which case public/cdn delivery fails loudly at `pulumi up`.
            public_access_prevention="inherited" if renditions_public else "enforced",
            force_destroy=False,
            labels=labels,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[apis["storage"]]),
        )
        archive_bucket = None
        if settings.originals == "archive":
            archive_bucket = gcp.storage.Bucket(
                f"{name}-archive",
                location=args.region,
                storage_class=contract.ARCHIVE_STORAGE_CLASS,
                uniform_bucket_level_access=True,
                public_access_prevention="enforced",
                force_destroy=False,
                labels=labels,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[apis["storage"]]),
            )

        # --- Delivery -----------------------------------------------------------------
        if renditions_public:
            # Backend buckets read the bucket as an anonymous client, so both "public" and
            # "cdn" need an allUsers grant - on the renditions bucket only, and get-only:
            # viewers fetch a rendition whose key they know, they cannot list the bucket.
            gcp.storage.BucketIAMMember(
                f"{name}-renditions-public-read",
                bucket=renditions.name,
                role=PUBLIC_READER_ROLE,
                member="allUsers",
                opts=pulumi.ResourceOptions(parent=self, depends_on=[apis["storage"]]),
            )
        url_map = None
        if args.delivery_mode == "cdn":
            compute_api = gcp.projects.Service(
                f"{name}-api-{CDN_API}",
                service=f"{CDN_API}.googleapis.com",
                disable_on_destroy=False,
                disable_dependent_services=False,
                opts=pulumi.ResourceOptions(parent=self),
            )
            backend = gcp.compute.BackendBucket(
                f"{name}-cdn",
                bucket_name=renditions.name,
                enable_cdn=True,
                description="imagepipe renditions through Cloud CDN",
                cdn_policy=gcp.compute.BackendBucketCdnPolicyArgs(
                    # Rendition keys are content-addressed and carry Cache-Control immutable.
                    cache_mode="CACHE_ALL_STATIC",
                    default_ttl=86400,
                    max_ttl=31536000,
                    client_ttl=31536000,
                    negative_caching=True,
                    request_coalescing=True,
                ),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[compute_api]),
            )
            url_map = gcp.compute.URLMap(
                f"{name}-cdn-urls",
                default_service=backend.self_link,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[compute_api]),
            )
            # Plain HTTP: HTTPS needs a domain you own for a ManagedSslCertificate and a
            # TargetHttpsProxy; add both when you have one.
            proxy = gcp.compute.TargetHttpProxy(
                f"{name}-cdn-proxy",
                url_map=url_map.self_link,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[compute_api]),
            )
            address = gcp.compute.GlobalAddress(
                f"{name}-cdn-address",
                labels=labels,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[compute_api]),
            )
            gcp.compute.GlobalForwardingRule(
                f"{name}-cdn-http",
                target=proxy.self_link,
                ip_address=address.address,
                port_range="80",
                load_balancing_scheme="EXTERNAL_MANAGED",
                labels=labels,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[compute_api]),
            )
            cdn_url = pulumi.Output.concat("http://", address.address)
        else:
            cdn_url = pulumi.Output.concat(STORAGE_BASE_URL, renditions.name)

        # --- Records and events -------------------------------------------------------
        database = gcp.firestore.Database(
            f"{name}-records",
            name="(default)",
            type="FIRESTORE_NATIVE",
            location_id=args.region,
            concurrency_mode="OPTIMISTIC",
            point_in_time_recovery_enablement="POINT_IN_TIME_RECOVERY_ENABLED",
            delete_protection_state="DELETE_PROTECTION_ENABLED",
            # `pulumi destroy` leaves the database and its records in place (the default).
            deletion_policy="ABANDON",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[apis["firestore"]]),
        )
        # The content-reference collection needs none: its documents are read by id (the hash).
        for index, fields in contract.RECORDS_INDEXES.items():
            gcp.firestore.Index(
                f"{name}-records-{index}",
                database=database.name,
                collection=contract.RECORDS_COLLECTION_NAME,
                fields=[
                    gcp.firestore.IndexFieldArgs(field_path=field, order=order)
                    for field, order in fields
                ],
                opts=pulumi.ResourceOptions(parent=self, depends_on=[database]),
            )
        topic = gcp.pubsub.Topic(
            f"{name}-events",
            labels=labels,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[apis["pubsub"]]),
        )

        # --- The function's identity and its grants -----------------------------------
        # Firestore has no per-collection IAM; the condition keeps a grant to this database.
        records_condition = gcp.projects.IAMMemberConditionArgs(
            title="imagepipe records database only",
            expression=pulumi.Output.all(project_id, database.name).apply(
                lambda values: database_condition_expression(*values)
            ),
        )
        account = gcp.serviceaccount.Account(
            f"{name}-sa",
            account_id=service_account_id(name, pulumi.get_stack()),
            display_name=f"imagepipe function ({name})",
            description="Runs the imagepipe function and is the identity of its trigger.",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[apis["iam"]]),
        )
        removes_uploads = settings.originals != "keep"
        grants = [
            gcp.storage.BucketIAMMember(
                f"{name}-uploads-user" if removes_uploads else f"{name}-uploads-reader",
                bucket=uploads.name,
                role=UPLOADS_REMOVER_ROLE if removes_uploads else UPLOADS_READER_ROLE,
                member=account.member,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[apis["storage"]]),
            ),
            gcp.storage.BucketIAMMember(
                f"{name}-renditions-writer",
                bucket=renditions.name,
                role=RENDITIONS_WRITER_ROLE,
                member=account.member,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[apis["storage"]]),
            ),
            gcp.projects.IAMMember(
                f"{name}-records-user",
                project=project_id,
                role="roles/datastore.user",
                member=account.member,
                condition=records_condition,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[database]),
            ),
            gcp.pubsub.TopicIAMMember(
                f"{name}-events-publisher",
                topic=topic.name,
                role="roles/pubsub.publisher",
                member=account.member,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[apis["pubsub"]]),
            ),
            # The same account is the trigger's identity: it receives the Eventarc events.
            gcp.projects.IAMMember(
                f"{name}-event-receiver",
                project=project_id,
                role="roles/eventarc.eventReceiver",
                member=account.member,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[apis["eventarc"]]),
            ),
        ]
        if archive_bucket is not None:
            grants.append(
                gcp.storage.BucketIAMMember(
                    f"{name}-archive-writer",
                    bucket=archive_bucket.name,
                    role=ARCHIVE_WRITER_ROLE,
                    member=account.member,
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[apis["storage"]]),
                )
            )
        invalidates_cdn = url_map is not None and settings.delete_renditions_with_original
        if invalidates_cdn:
            invalidator = gcp.projects.IAMCustomRole(
                f"{name}-cdn-invalidator",
                role_id=custom_role_id(name, pulumi.get_stack(), "cdnInvalidator"),
                title=f"imagepipe CDN invalidator ({name})",
                description="Invalidates Cloud CDN's cache of deleted renditions.",
                permissions=CDN_INVALIDATION_PERMISSIONS,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[apis["iam"]]),
            )
            grants.append(
                gcp.projects.IAMMember(
                    f"{name}-cdn-invalidator-member",
                    project=project_id,
                    role=invalidator.name,
                    member=account.member,
                    opts=pulumi.ResourceOptions(parent=self),
                )
            )
        # Cloud Storage publishes its events through Pub/Sub as its own service agent;
        # without this grant the trigger is created but never fires.
        storage_agent = gcp.storage.get_project_service_account_output(project=project_id)
        agent_publisher = gcp.projects.IAMMember(
            f"{name}-storage-agent-publisher",
            project=project_id,
            role="roles/pubsub.publisher",
            member=storage_agent.member,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[apis["pubsub"]]),
        )

        # --- Source and function ------------------------------------------------------
        source_bucket = gcp.storage.Bucket(
            f"{name}-source",
            location=args.region,
            uniform_bucket_level_access=True,
            public_access_prevention="enforced",
            force_destroy=True,  # holds only build inputs that `pulumi up` can recreate
            labels=labels,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[apis["storage"]]),
        )
        function = gcp.cloudfunctionsv2.Function(
            f"{name}-fn",
            location=args.region,
            description="imagepipe: renders each upload, records it and publishes an event",
            labels=labels,
            build_config=function_build_config(
                self,
                name,
                MAIN_FUNCTION,
                entry_point=contract.ENTRY_POINT,
                python_version=args.python_version,
                source_bucket=source_bucket,
                storage_api=apis["storage"],
            ),
            service_config=gcp.cloudfunctionsv2.FunctionServiceConfigArgs(
                # Also what the decode budget is derived from (the settings carry it).
                available_memory=f"{args.settings.limits.memory_mb}Mi",
                available_cpu=args.cpu,
                timeout_seconds=args.timeout_seconds,
                max_instance_count=args.max_instances,
                # Rendering is CPU-bound: one event per instance at a time.
                max_instance_request_concurrency=1,
                # Eventarc deliveries count as internal traffic; nothing else may call it.
                ingress_settings="ALLOW_INTERNAL_ONLY",
                all_traffic_on_latest_revision=True,
                service_account_email=account.email,
                environment_variables=contract.to_env(
                    settings=settings,
                    renditions_bucket=renditions.name,
                    records_collection=contract.RECORDS_COLLECTION_NAME,
                    events_topic=topic.id,
                    max_event_age_seconds=args.max_event_age_seconds,
                    timeout_seconds=args.timeout_seconds,
                    project=project_id,
                    uploads_prefix=args.uploads_prefix,
                    uploads_suffix=args.uploads_suffix,
                    archive_bucket=archive_bucket.name if archive_bucket is not None else None,
                    cdn_url_map=url_map.name if invalidates_cdn else None,
                    # A lifecycle deletion is plain expiry, told apart from an owner's by age.
                    originals_expiry_days=args.originals_expiry_days,
                ),
            ),
            event_trigger=gcp.cloudfunctionsv2.FunctionEventTriggerArgs(
                # Storage events are regional: the trigger lives where the bucket does.
                trigger_region=args.region,
                event_type=contract.UPLOAD_EVENT_TYPE,
                event_filters=[
                    gcp.cloudfunctionsv2.FunctionEventTriggerEventFilterArgs(
                        attribute="bucket", value=uploads.name
                    )
                ],
                # Transient errors raise and are retried with backoff; the function records
                # events older than IMAGEPIPE_MAX_EVENT_AGE_SECONDS as FAILED/retries_exhausted.
                retry_policy="RETRY_POLICY_RETRY",
                service_account_email=account.email,
            ),
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[
                    *(apis[api] for api in REQUIRED_APIS),
                    agent_publisher,
                    *grants,
                ],
            ),
        )
        # The trigger's identity must be allowed to invoke the function's Cloud Run service,
        # and only that service (a gen2 function runs as a service of the same name). Granted
        # once the service exists; an event delivered before that is refused and retried.
        trigger_invoker = gcp.cloudrunv2.ServiceIamMember(
            f"{name}-trigger-invoker",
            location=args.region,
            name=function.name,
            role=CLOUD_RUN_INVOKER_ROLE,
            member=account.member,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[apis["run"]]),
        )
        # Deletes that propagate: a second Eventarc trigger on the same service, as the same
        # identity (event receiver, invoker) and through the same storage agent as the
        # function's own. Its retries are Eventarc's default (with backoff); the function
        # judges an event's age as it does an upload's.
        gcp.eventarc.Trigger(
            f"{name}-delete-trigger",
            location=args.region,
            matching_criterias=[
                gcp.eventarc.TriggerMatchingCriteriaArgs(
                    attribute="type", value=contract.DELETE_EVENT_TYPE
                ),
                gcp.eventarc.TriggerMatchingCriteriaArgs(attribute="bucket", value=uploads.name),
            ],
            destination=gcp.eventarc.TriggerDestinationArgs(
                cloud_run_service=gcp.eventarc.TriggerDestinationCloudRunServiceArgs(
                    service=function.name, region=args.region
                )
            ),
            service_account=account.email,
            labels=labels,
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[apis["eventarc"], agent_publisher, trigger_invoker]
            ),
        )

        # --- The work queue: Cloud Tasks calls the function as an account of its own ------
        work_account = gcp.serviceaccount.Account(
            f"{name}-work-sa",
            account_id=service_account_id(f"{name}-work", pulumi.get_stack()),
            display_name=f"imagepipe work queue ({name})",
            description="The identity Cloud Tasks calls the imagepipe function as.",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[apis["iam"]]),
        )
        work_invoker = gcp.cloudrunv2.ServiceIamMember(
            f"{name}-work-invoker",
            location=args.region,
            name=function.name,
            role=CLOUD_RUN_INVOKER_ROLE,
            member=work_account.member,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[apis["run"]]),
        )
        service_uri = function.service_config.apply(lambda service: service.uri)
        lease_seconds = args.timeout_seconds + contract.LEASE_MARGIN_SECONDS
        work_queue = gcp.cloudtasks.Queue(
            f"{name}-work",
            location=args.region,
            rate_limits=gcp.cloudtasks.QueueRateLimitsArgs(
                max_concurrent_dispatches=args.backfill_concurrency
            ),
            retry_config=gcp.cloudtasks.QueueRetryConfigArgs(
                max_attempts=contract.WORK_MAX_ATTEMPTS,
                min_backoff=f"{lease_seconds}s",
                max_backoff=WORK_MAX_BACKOFF,
            ),
            # Whatever a task says, it reaches this function with a token of this account.
            http_target=gcp.cloudtasks.QueueHttpTargetArgs(
                uri_override=gcp.cloudtasks.QueueHttpTargetUriOverrideArgs(
                    scheme="HTTPS",
                    host=service_uri.apply(url_host),
                    uri_override_enforce_mode="ALWAYS",
                ),
                oidc_token=gcp.cloudtasks.QueueHttpTargetOidcTokenArgs(
                    service_account_email=work_account.email, audience=service_uri
                ),
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[apis["cloudtasks"], work_invoker]),
        )

        # --- Observability: the same metrics as on AWS, from the function's log lines ----
        channels: list[pulumi.Output[str]] = []
        if args.alarm_email:
            channel = gcp.monitoring.NotificationChannel(
                f"{name}-alarm-email",
                type="email",
                display_name=f"imagepipe alerts ({name})",
                labels={"email_address": args.alarm_email},
                user_labels=labels,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[apis["monitoring"]]),
            )
            channels = [channel.name]
        counters = {
            metric_name: self._log_metric(name, metric_name, function, action, apis)
            for action, metric_name in ACTION_COUNTERS.items()
        }
        self._log_metric(name, PROCESSING_MS, function, None, apis)
        errors = self._log_metric(name, FUNCTION_ERRORS, function, None, apis)
        self.alert(
            name,
            role="errors",
            title="imagepipe function errors",
            condition_filter=errors.name.apply(log_metric_filter),
            documentation="The function logged an error: a transient failure being retried or "
            "a bug. Read the function's logs in Cloud Logging.",
            channels=channels,
            labels=labels,
            depends_on=[apis["monitoring"], errors],
        )
        self.alert(
            name,
            role="failed-images",
            title="imagepipe FAILED images",
            condition_filter=counters[IMAGES_FAILED].name.apply(log_metric_filter),
            documentation="An upload ended FAILED; the metric's ErrorCode label says why, and "
            f"its Firestore document in '{contract.RECORDS_COLLECTION_NAME}' says more.",
            channels=channels,
            labels=labels,
            depends_on=[apis["monitoring"], counters[IMAGES_FAILED]],
        )

        # --- The upload API, only when asked for ----------------------------------------
        self.api_url = None
        if api_options is not None:
            self.api_url = create_upload_api(
                self,
                name,
                args,
                api_options,
                account_id=service_account_id(f"{name}-api", pulumi.get_stack()),
                project_id=project_id,
                apis=apis,
                uploads=uploads,
                renditions=renditions,
                source_bucket=source_bucket,
                records_condition=records_condition,
                database=database,
                cdn_url=cdn_url,
                labels=labels,
                channels=channels,
            )

        self.uploads_bucket = uploads.name
        self.renditions_bucket = renditions.name
        self.cdn_url = cdn_url
        self.records_collection = pulumi.Output.from_input(contract.RECORDS_COLLECTION_NAME)
        self.uploads_prefix = pulumi.Output.from_input(args.uploads_prefix or "")
        self.events_topic = topic.id
        self.function_name = function.name
        self.work_queue = pulumi.Output.concat(
            "projects/", project_id, "/locations/", work_queue.location, "/queues/", work_queue.name
        )
        self.work_url = service_uri
        self.work_invoker = work_account.email
        self.archive_bucket = archive_bucket.name if archive_bucket is not None else None
        self.settings = pulumi.Output.from_input(settings.to_json())
        self.register_outputs(self.stack_outputs())

    def _log_metric(
        self,
        name: str,
        metric_name: str,
        function: gcp.cloudfunctionsv2.Function,
        action: str | None,
        apis: dict[str, gcp.projects.Service],
    ) -> gcp.logging.Metric:
        """A log-based metric `<name>/<metric>` over the function's JSON log lines: a counter
        of one `action`, ImagesFailed by ErrorCode, ProcessingMs as a distribution of `ms`,
        FunctionErrors of every line at ERROR or above."""
        options: dict = {}
        if metric_name == FUNCTION_ERRORS:
            match = "severity>=ERROR"
        elif metric_name == PROCESSING_MS:
            timed = " OR ".join(f'jsonPayload.action="{a}"' for a in TIMED_ACTIONS)
            match = f"({timed})"
            options = {
                "value_extractor": "EXTRACT(jsonPayload.ms)",
                "bucket_options": gcp.logging.MetricBucketOptionsArgs(
                    exponential_buckets=gcp.logging.MetricBucketOptionsExponentialBucketsArgs(
                        num_finite_buckets=24, growth_factor=1.5, scale=10
                    )
                ),
            }
        else:
            match = f'jsonPayload.action="{action}"'
        if metric_name == IMAGES_FAILED:
            options["label_extractors"] = {ERROR_CODE: "EXTRACT(jsonPayload.error_code)"}
        distribution = metric_name == PROCESSING_MS
        return gcp.logging.Metric(
            f"{name}-{_kebab(metric_name)}",
            name=f"{name}/{metric_name}",
            filter=function.name.apply(lambda service: function_log_filter(service, match)),
            description=f"imagepipe {metric_name}",
            metric_descriptor=gcp.logging.MetricMetricDescriptorArgs(
                metric_kind="DELTA",
                value_type="DISTRIBUTION" if distribution else "INT64",
                unit="ms" if distribution else "1",
                labels=[
                    gcp.logging.MetricMetricDescriptorLabelArgs(key=ERROR_CODE, value_type="STRING")
                ]
                if metric_name == IMAGES_FAILED
                else None,
            ),
            **options,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[apis["logging"]]),
        )

    def alert(
        self,
        name: str,
        *,
        role: str,
        title: str,
        condition_filter: pulumi.Input[str],
        documentation: str,
        channels: list[pulumi.Output[str]],
        labels: dict[str, str],
        depends_on: list[pulumi.Resource],
    ) -> None:
        """An alert `<name>-<role>-alert` when the time series `condition_filter` selects rise
        above zero in five minutes, to `channels` if any: the one shape of every alert of the
        pipeline and of its upload API."""
        gcp.monitoring.AlertPolicy(
            f"{name}-{role}-alert",
            display_name=title,
            combiner="OR",
            conditions=[
                gcp.monitoring.AlertPolicyConditionArgs(
                    display_name=f"{title} > 0 in 5 minutes",
                    condition_threshold=gcp.monitoring.AlertPolicyConditionConditionThresholdArgs(
                        filter=condition_filter,
                        comparison="COMPARISON_GT",
                        threshold_value=0,
                        duration="0s",
                        aggregations=[
                            gcp.monitoring.AlertPolicyConditionConditionThresholdAggregationArgs(
                                alignment_period="300s",
                                per_series_aligner="ALIGN_SUM",
                                cross_series_reducer="REDUCE_SUM",
                            )
                        ],
                    ),
                )
            ],
            notification_channels=channels or None,
            documentation=gcp.monitoring.AlertPolicyDocumentationArgs(
                content=documentation, mime_type="text/markdown"
            ),
            user_labels=labels,
            opts=pulumi.ResourceOptions(parent=self, depends_on=depends_on),
        )

    def stack_outputs(self) -> dict[str, pulumi.Output]:
        """What `__main__.py` exports, by the stack output names of the contract; `apiUrl`
        only with the upload API, `archiveBucket` only with originals `archive`."""
        optional = {outputs.API_URL: self.api_url} if self.api_url is not None else {}
        if self.archive_bucket is not None:
            optional[outputs.ARCHIVE_BUCKET] = self.archive_bucket
        return {
            outputs.UPLOADS_BUCKET: self.uploads_bucket,
            outputs.UPLOADS_PREFIX: self.uploads_prefix,
            outputs.RENDITIONS_BUCKET: self.renditions_bucket,
            outputs.CDN_URL: self.cdn_url,
            outputs.RECORDS_COLLECTION: self.records_collection,
            outputs.EVENTS_TOPIC: self.events_topic,
            outputs.FUNCTION_NAME: self.function_name,
            outputs.SETTINGS: self.settings,
            outputs.WORK_QUEUE: self.work_queue,
            outputs.WORK_URL: self.work_url,
            outputs.WORK_INVOKER: self.work_invoker,
            **optional,
        }


def _check_args(args: GcpImagePipelineArgs) -> None:
    """Values GCP would take and then fail on at run time."""
    low, high = BACKFILL_CONCURRENCY_RANGE
    if not low <= args.backfill_concurrency <= high:
        raise SettingsError(
            f"imagepipe:backfillConcurrency is {shown(args.backfill_concurrency)}; use a whole "
            f"number from {low} to {high} (the work queue's max concurrent dispatches)."
        )
    if args.backfill_concurrency > args.max_instances:
        raise SettingsError(
            f"imagepipe:backfillConcurrency is {args.backfill_concurrency}, above "
            f"imagepipe:maxInstances ({args.max_instances}); each instance takes one task at a "
            "time, so Cloud Run would refuse the rest and every refusal uses up an attempt."
        )
