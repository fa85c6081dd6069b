"""`imagepipe dev`: the whole pipeline on an emulated AWS or GCP on 127.0.0.1.

AWS (`DevPipeline`): moto's server plays S3, DynamoDB, SNS and SQS;
`lambda_service.AsyncInvoker` plays the Lambda service and calls the real handler
(`functions.aws.main`) in this process, with the environment the component gives the
function, and `lambda_service.EventSourceMapping` plays the work queue's event source
mapping in front of the same handler; `cdn.RenditionServer` plays CloudFront.

GCP (`GcpDevPipeline`): Google's Firestore and Pub/Sub emulators and fake-gcs-server
(see `emulated_gcp`) play the services; the real entry point (`functions.gcp.main`) is
served by functions-framework in a process of its own with the environment the
component gives the function; `eventarc.EventarcTrigger` plays Eventarc, turning the
bucket's notifications (uploads and deletes) into the CloudEvents the function receives
on GCP; `cloud_tasks.CloudTasksEmulator` plays the work queue, dispatching its tasks to
the same function; `cdn.RenditionServer` plays the CDN in front of the renditions bucket.

Nothing but the Lambda service, Eventarc and Cloud Tasks is stood in for, so what works here is
what `pulumi up` deploys. The pipeline heals or says it cannot: a worker outlives any
failed call, and when an emulator (or the GCP function's server) ends, everything it
held is gone, so `imagepipe dev` says so in one line and exits 1 rather than pretend.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import outputs as output_names
from components.args import PipelineArgs
from components.config import CLOUDS
from functions.aws import contract
from functions.core.settings import PipelineSettings, SettingsError
from functions.core.uploads import CORS_MAX_AGE_SECONDS
from functions.gcp import contract as gcp_contract
from functions.local.api_gateway import ApiGateway, FunctionProxy, LambdaProxy
from functions.local.cdn import GcsRenditionReader, RenditionServer, S3RenditionReader
from functions.local.cloud_tasks import CloudTasksEmulator, TasksBackoff
from functions.local.emulated_aws import (
    REGION,
    WORK_VISIBILITY_SECONDS,
    MotoServer,
    PipelineResources,
    PortInUse,
    boto3_client,
    client_environment,
    create_pipeline_resources,
)
from functions.local.emulated_gcp import (
    ACK_DEADLINE_MARGIN_SECONDS,
    API_FUNCTION,
    CloudFunctionServer,
    GcpEmulators,
    GcpPipelineResources,
    ToolMissing,
    missing_tools,
    storage_client,
    subscriber_client,
    write_throwaway_service_account_key,
)
from functions.local.emulated_gcp import (
    create_pipeline_resources as create_gcp_pipeline_resources,
)
from functions.local.eventarc import EventarcTrigger, PubSubNotificationSource, RetryPolicy
from functions.local.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from functions.local.gcp_client import CLOUD_TASKS_ENDPOINT_OUTPUT
from functions.local.lambda_service import (
    DEFAULT_RETRY_DELAYS,
    AsyncInvoker,
    EventSourceMapping,
    Handler,
)
from functions.local.processes import OrphanGuard, ServerDidNotStart, how_it_ended
from functions.local.stack_config import LocalStackConfig, read_stack_config
from functions.local.target import DEFAULT_OUTPUTS

DEFAULT_PORT = 4566
DEFAULT_GCP_STORAGE_PORT = 4443  # fake-gcs-server's own default
# Where `imagepipe dev` serves the upload API and its page, on either cloud: a fixed port,
# so the page's address stays the same from run to run.
DEFAULT_API_PORT = 8765
DEFAULT_STACK_CONFIG = Path("stacks/Pulumi.aws-dev.yaml")
DEFAULT_STACK_CONFIGS = {"aws": DEFAULT_STACK_CONFIG, "gcp": Path("stacks/Pulumi.gcp-dev.yaml")}
# The GCP function's timeout when the stack config does not set imagepipe:timeoutSeconds.
DEFAULT_TIMEOUT_SECONDS: int = PipelineArgs.timeout_seconds
ACCOUNT_ID = "123456789012"  # moto's default account
HEALTH_CHECK_SECONDS = 0.5  # how often `imagepipe dev` checks the emulator and the workers
# The API function answers small I/O-bound requests: many at once, as its component allows.
API_CONCURRENCY = 16
# Without the emulator an attempt in hand can only fail: wait this long for it, not 30 s.
STOP_SECONDS_AFTER_FAILURE = 5.0


def load_lambda_handler(handler: str = contract.HANDLER) -> Handler:
    """Import a real handler as a Lambda cold start would: with the environment already set.

    The handler builds its clients at import time from environment variables; a
    module imported earlier (another pipeline, another port) is imported afresh.
    """
    name = handler.rpartition(".")[0]
    module = importlib.reload(sys.modules[name]) if name in sys.modules else None
    if module is None:
        module = importlib.import_module(name)
    return getattr(module, handler.rpartition(".")[2])  # type: ignore[no-any-return]


def inherited_environment() -> dict[str, str]:
    """This process's environment minus every IMAGEPIPE_ variable: a function started from
    here must see only what its component sets (an AWS dev pipeline in the same process
    sets the same names for its own functions)."""
    return {name: value for name, value in os.environ.items() if not name.startswith("IMAGEPIPE_")}


class PipelineAlreadyRunning(RuntimeError):
    pass


_active_lock = threading.Lock()
_active: DevPipeline | None = None


class DevPipeline:
    """Start with `start()` (or `with DevPipeline(...) as pipeline:`); `stop()` undoes everything.

    One at a time per process: the handler module, moto's backends and the
    environment variables are process-wide, as they are in one Lambda sandbox.

    `wrap_handler` receives the real handler and returns what the trigger's workers call:
    the way to inject a fault for one object without patching any module;
    `wrap_work_handler` does the same for the work queue's (which hands it SQS batches).
    """

    def __init__(
        self,
        *,
        port: int = DEFAULT_PORT,
        cdn_port: int = 0,
        api_port: int = 0,
        stack: LocalStackConfig | None = None,
        name: str = "imagepipe",
        log_level: str = "INFO",
        workers: int = 3,
        retry_delays: Sequence[int] = DEFAULT_RETRY_DELAYS,
        wrap_handler: Callable[[Handler], Handler] | None = None,
        wrap_work_handler: Callable[[Handler], Handler] | None = None,
        work_visibility_seconds: int = WORK_VISIBILITY_SECONDS,
    ) -> None:
        self.stack = stack or LocalStackConfig()
        self.settings: PipelineSettings = self.stack.settings
        self.name = name
        self._log_level = log_level
        self._moto = MotoServer(port)
        self._cdn_port = cdn_port
        self._api_port = api_port
        self._workers = workers
        self._retry_delays = retry_delays
        self._wrap_handler = wrap_handler
        self._wrap_work_handler = wrap_work_handler
        self._work_visibility_seconds = work_visibility_seconds
        self._saved_environ: dict[str, str | None] = {}
        self._cdn: RenditionServer | None = None
        self._api: ApiGateway | None = None
        self.invoker: AsyncInvoker | None = None
        self.work: EventSourceMapping | None = None
        self.resources: PipelineResources | None = None
        self._invocations_before = 0  # of the invokers of an earlier start()

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> DevPipeline:
        # Metrics are disabled locally (POWERTOOLS_METRICS_DISABLED), so the handler records
        # none and every flush would warn that it found none to publish.
        warnings.filterwarnings("ignore", message="No application metrics to publish")
        global _active
        self._moto.start()  # raises PortInUse before anything else exists
        with _active_lock:
            if _active is not None:
                self._moto.stop()
                raise PipelineAlreadyRunning(
                    f"a dev pipeline already runs in this process at {_active.endpoint}"
                )
            _active = self
        try:
            self.resources = create_pipeline_resources(
                self.endpoint,
                self.name,
                self.stack.uploads_prefix,
                self.stack.uploads_suffix,
                archive=self.settings.originals == "archive",
                work_visibility_seconds=self._work_visibility_seconds,
            )
            self._set_environ(self.function_environment())
            real_handler = load_lambda_handler()
            handler = real_handler
            if self._wrap_handler is not None:
                handler = self._wrap_handler(handler)
            function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{self.function_name}"
            self.invoker = AsyncInvoker(
                sqs=boto3_client("sqs", self.endpoint),
                trigger_queue_url=self.resources.trigger_queue_url,
                dead_letter_queue_url=self.resources.dead_letter_queue_url,
                handler=handler,
                function_name=self.function_name,
                function_arn=function_arn,
                workers=self._workers,
                retry_delays=self._retry_delays,
                max_event_age_seconds=self.stack.max_event_age_seconds,
            )
            self.invoker.start()
            work_handler = real_handler
            if self._wrap_work_handler is not None:
                work_handler = self._wrap_work_handler(work_handler)
            self.work = EventSourceMapping(
                sqs=boto3_client("sqs", self.endpoint),
                queue_url=self.resources.work_queue_url,
                queue_arn=self.resources.work_queue_arn,
                handler=work_handler,
                function_name=self.function_name,
                function_arn=function_arn,
                concurrency=self.stack.backfill_concurrency,
            )
            self.work.start()
            reader = S3RenditionReader(
                boto3_client("s3", self.endpoint), self.resources.renditions_bucket
            )
            self._cdn = RenditionServer(reader, port=self._cdn_port)
            self._cdn.start()
            self._api = self._start_api()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_api(self) -> ApiGateway:
        """The upload API's function behind the API Gateway stand-in, and the page."""
        assert self.resources is not None and self._cdn is not None
        options = self.stack.api
        self._set_environ(self.api_environment())
        verify = None
        if options.auth == "jwt" and options.jwt_issuer and options.jwt_audience:
            from functions.gcp.tokens import JwksTokenVerifier

            verify = JwksTokenVerifier(options.jwt_issuer, options.jwt_audience).subject
        backend = LambdaProxy(
            load_lambda_handler(contract.API_HANDLER),
            function_name=f"{self.name}-api-fn",
            allowed_origins=options.allowed_origins,
            verify_subject=verify,
        )
        gateway = ApiGateway(backend, port=self._api_port)
        gateway.start()
        # The browser POSTs from the page's origin straight to the bucket (as the
        # component's BucketCorsConfiguration allows the stack's origins).
        boto3_client("s3", self.endpoint).put_bucket_cors(
            Bucket=self.resources.uploads_bucket,
            CORSConfiguration={
                "CORSRules": [
                    {
                        "AllowedOrigins": [gateway.url, *options.allowed_origins],
                        "AllowedMethods": ["POST"],
                        "MaxAgeSeconds": CORS_MAX_AGE_SECONDS,
                    }
                ]
            },
        )
        return gateway

    def stop(self, timeout: float = 30) -> None:
        """Stop taking events, finish the ones in hand (for up to `timeout` seconds), shut the
        servers down, restore the env."""
        if self._api is not None:
            self._api.stop()
            self._api = None
        if self.work is not None:
            self.work.stop(timeout)
        if self.invoker is not None:
            self.invoker.stop(timeout)
        self._invocations_before = self.invocations
        self.invoker = self.work = None
        if self._cdn is not None:
            self._cdn.stop()
            self._cdn = None
        self._moto.stop()
        self._restore_environ()
        global _active
        with _active_lock:
            if _active is self:
                _active = None

    def __enter__(self) -> DevPipeline:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def failure(self) -> str | None:
        """Why the pipeline cannot go on, in a sentence; None while it can."""
        code = self._moto.exit_code()
        if code is not None:
            return (
                f"the emulated AWS (moto, pid {self._moto.pid}) {how_it_ended(code)}; "
                "its buckets, tables and queues are gone"
            )
        if self.invoker is not None and self.invoker.workers_alive < self._workers:
            return (
                f"{self._workers - self.invoker.workers_alive} of the {self._workers} Lambda "
                "workers stopped; uploads would wait for ever"
            )
        pollers = self.stack.backfill_concurrency
        if self.work is not None and self.work.workers_alive < pollers:
            return (
                f"{pollers - self.work.workers_alive} of the {pollers} work queue pollers "
                "stopped; backfills would wait for ever"
            )
        return None

    @property
    def invocations(self) -> int:
        """Handler invocations so far, by the trigger and the work queue (every attempt)."""
        return self._invocations_before + sum(
            pool.invocations for pool in (self.invoker, self.work) if pool is not None
        )

    @property
    def work_invocations(self) -> int:
        """Of those, the work queue's: one per work item delivered (the bench's count)."""
        return self.work.invocations if self.work is not None else 0

    # --- what the stack would tell you --------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return self._moto.endpoint

    @property
    def function_name(self) -> str:
        return f"{self.name}-fn"

    def function_environment(self) -> dict[str, str]:
        """What the component sets on the function, plus what Lambda itself provides."""
        assert self.resources is not None
        return {
            **client_environment(self.endpoint),
            **contract.to_env(
                settings=self.settings,
                renditions_bucket=self.resources.renditions_bucket,
                records_table=self.resources.records_table,
                events_topic_arn=self.resources.events_topic_arn,
                archive_bucket=self.resources.archive_bucket,
            ),
            # Lambda's own variable; the handler names its event source after it.
            contract.FUNCTION_NAME: self.function_name,
            # CloudWatch would swallow the EMF metric blobs; on a terminal they are noise.
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": self._log_level,
        }

    def api_environment(self) -> dict[str, str]:
        """What the component sets on the API function (it shares this process's environment
        with the main one: the names they have in common hold the same values)."""
        assert self.resources is not None and self._cdn is not None
        return {
            **contract.api_to_env(
                settings=self.settings,
                options=self.stack.api,
                uploads_bucket=self.resources.uploads_bucket,
                uploads_prefix=self.stack.uploads_prefix,
                records_table=self.resources.records_table,
                cdn_url=self._cdn.url,
            ),
        }

    def outputs(self) -> dict[str, str]:
        """The stack outputs (same names as `pulumi stack output`), plus the emulator's address."""
        assert self.resources is not None and self._cdn is not None and self._api is not None
        return {
            "cloud": "aws",
            output_names.UPLOADS_BUCKET: self.resources.uploads_bucket,
            output_names.UPLOADS_PREFIX: self.stack.uploads_prefix,
            output_names.RENDITIONS_BUCKET: self.resources.renditions_bucket,
            output_names.CDN_URL: self._cdn.url,
            output_names.RECORDS_TABLE: self.resources.records_table,
            output_names.EVENTS_TOPIC: self.resources.events_topic_arn,
            output_names.FUNCTION_NAME: self.function_name,
            output_names.DEAD_LETTER_QUEUE: self.resources.dead_letter_queue_url,
            output_names.SETTINGS: self.settings.to_json(),
            output_names.WORK_QUEUE: self.resources.work_queue_url,
            output_names.WORK_DEAD_LETTER_QUEUE: self.resources.work_dead_letter_queue_url,
            **(
                {output_names.ARCHIVE_BUCKET: self.resources.archive_bucket}
                if self.resources.archive_bucket
                else {}
            ),
            output_names.API_URL: self._api.url,
            "eventsQueue": self.resources.events_queue_url,
            "endpoint": self.endpoint,
            "region": REGION,
        }

    # --- environment --------------------------------------------------------------------------

    def _set_environ(self, values: Mapping[str, str]) -> None:
        for key, value in values.items():
            self._saved_environ.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def _restore_environ(self) -> None:
        for key, value in self._saved_environ.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_environ.clear()


class GcpDevPipeline:
    """The pipeline on an emulated GCP: the same start/stop/failure/outputs shape as DevPipeline.

    Nothing of it is process-wide (the function runs in a process of its own, every client
    is given its endpoint), so several may run in one process, each on its own ports.
    `function_environment_overrides` is added to what the component sets: the way to start
    a function that cannot reach a service, without patching anything.
    """

    def __init__(
        self,
        *,
        storage_port: int = 0,
        cdn_port: int = 0,
        api_port: int = 0,
        stack: LocalStackConfig | None = None,
        timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS,
        name: str = "imagepipe",
        workers: int = 3,
        retry: RetryPolicy | None = None,
        function_log: Path | None = None,
        function_environment_overrides: Mapping[str, str] | None = None,
        tasks_backoff: TasksBackoff | None = None,
    ) -> None:
        self.stack = stack or LocalStackConfig()
        self.settings: PipelineSettings = self.stack.settings
        self.name = name
        self.timeout_seconds = timeout_seconds
        self.resources = GcpPipelineResources.named(name)
        self._tasks_backoff = tasks_backoff or TasksBackoff()
        self.work: CloudTasksEmulator | None = None
        self._storage_port = storage_port
        self._cdn_port = cdn_port
        self._api_port = api_port
        self._workers = workers
        # Eventarc's own retry window, not the stack's maxEventAgeSeconds: the function
        # enforces that one, recording an event that old FAILED on its next delivery.
        self._retry = retry or RetryPolicy()
        self._function_log = function_log
        self._overrides = dict(function_environment_overrides or {})
        self._log_dir: Path | None = None
        self._guard: OrphanGuard | None = None
        self.emulators: GcpEmulators | None = None
        self.function: CloudFunctionServer | None = None
        self.api_function: CloudFunctionServer | None = None
        self._api: ApiGateway | None = None
        self.trigger: EventarcTrigger | None = None
        self._cdn: RenditionServer | None = None
        self._storage: Any = None
        self._subscriber: Any = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> GcpDevPipeline:
        """Raises `PortInUse`, `ToolMissing` or `ServerDidNotStart`, having stopped what began."""
        self._log_dir = Path(tempfile.mkdtemp(prefix="imagepipe-dev-gcp-"))
        backfill_concurrency = self.stack.backfill_concurrency
        # Each server leads a process group of its own: should this process be killed
        # outright, the guard ends them, so no JVM outlives `imagepipe dev`.
        self._guard = OrphanGuard().start()
        self._guard.remove_at_exit(self._log_dir)
        self.emulators = GcpEmulators(
            self.resources, self._log_dir, storage_port=self._storage_port, guard=self._guard
        )
        try:
            # The two JVMs and the functions' imports take seconds each: side by side.
            self.emulators.launch()
            self._storage = storage_client(self.emulators.storage_endpoint, self.resources.project)
            # Bound now (its URL goes into the API function's environment), served later.
            reader = GcsRenditionReader(self._storage, self.resources.renditions_bucket)
            self._cdn = RenditionServer(reader, port=self._cdn_port)
            self.function = CloudFunctionServer(
                self.function_environment(),
                log=self._function_log,
                # On GCP each delivery gets an instance: here the trigger's and the work
                # queue's deliveries share one server, so neither waits for the other.
                concurrency=self._workers + backfill_concurrency,
                guard=self._guard,
            )
            self.function.launch()
            self.api_function = CloudFunctionServer(
                self.api_function_environment(),
                log=self._function_log,
                concurrency=API_CONCURRENCY,
                guard=self._guard,
                entry_point=API_FUNCTION,
            )
            self.api_function.launch()
            self.emulators.wait_ready()
            self._subscriber = subscriber_client(self.emulators.pubsub_host)
            create_gcp_pipeline_resources(
                self.emulators,
                ack_deadline_seconds=self.timeout_seconds + ACK_DEADLINE_MARGIN_SECONDS,
                storage=self._storage,
                subscriber=self._subscriber,
                archive=self.settings.originals == "archive",
            )
            self.function.wait_ready()
            self.work = CloudTasksEmulator(
                self.resources.work_queue,
                max_concurrent_dispatches=backfill_concurrency,
                backoff=self._tasks_backoff,
                dispatch_timeout_seconds=self.timeout_seconds,
            )
            self.work.start()
            source = PubSubNotificationSource(self._subscriber, self.resources.trigger_subscription)
            self.trigger = EventarcTrigger(
                source,
                self.function.url,
                retry=self._retry,
                timeout_seconds=self.timeout_seconds,
                workers=self._workers,
            )
            self.trigger.start()
            self._cdn.start()
            self.api_function.wait_ready()
            self._api = ApiGateway(FunctionProxy(self.api_function.url), port=self._api_port)
            self._api.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 30) -> None:
        """Stop taking events, finish the ones in hand (for up to `timeout` seconds), then end
        the function's and the emulators' process groups."""
        if self._api is not None:
            self._api.stop()
            self._api = None
        if self.trigger is not None:
            self.trigger.stop(timeout)
            self.trigger = None
        if self.work is not None:
            self.work.stop(timeout)
            self.work = None
        # Every server winds down at once; each is then waited for.
        for server in (self.function, self.api_function, self.emulators):
            if server is not None:
                server.terminate()
        if self._cdn is not None:
            self._cdn.stop()
            self._cdn = None
        for function in (self.function, self.api_function):
            if function is not None:
                function.stop()
        self.function = self.api_function = None
        if self._subscriber is not None:
            self._subscriber.close()
            self._subscriber = None
        if self._storage is not None:
            self._storage.close()
            self._storage = None
        if self.emulators is not None:
            self.emulators.stop()
        if self._guard is not None:
            self._guard.stop()
            self._guard = None
        if self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None

    def __enter__(self) -> GcpDevPipeline:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def failure(self) -> str | None:
        """Why the pipeline cannot go on, in a sentence; None while it can."""
        for part in (self.emulators, self.function, self.api_function):
            reason = part.failure() if part is not None else None
            if reason is not None:
                return reason
        if self.trigger is not None and self.trigger.workers_alive < self._workers:
            return (
                f"{self._workers - self.trigger.workers_alive} of the {self._workers} Eventarc "
                "workers stopped; uploads would wait for ever"
            )
        if (
            self.work is not None
            and self.work.dispatchers_alive < self.work.max_concurrent_dispatches
        ):
            return "a Cloud Tasks dispatcher stopped; the work queue would wait for ever"
        return None

    @property
    def dispatches(self) -> int:
        """The work queue's deliveries to the function so far (its invocations from there)."""
        return self.work.dispatches if self.work is not None else 0

    # --- what the stack would tell you --------------------------------------------------------

    @property
    def function_name(self) -> str:
        return f"{self.name}-fn"

    def function_environment(self) -> dict[str, str]:
        """What the component sets on the function, what Cloud Run adds, and the emulators."""
        assert self.emulators is not None
        return {
            **inherited_environment(),
            **self.emulators.client_environment(),
            **gcp_contract.to_env(
                settings=self.settings,
                renditions_bucket=self.resources.renditions_bucket,
                records_collection=self.resources.records_collection,
                events_topic=self.resources.events_topic,
                max_event_age_seconds=self.stack.max_event_age_seconds,
                timeout_seconds=self.timeout_seconds,
                project=self.resources.project,
                uploads_prefix=self.stack.uploads_prefix,
                uploads_suffix=self.stack.uploads_suffix,
                archive_bucket=self.archive_bucket,
            ),
            gcp_contract.FUNCTION_NAME: self.function_name,  # Cloud Run sets it
            **self._overrides,
        }

    @property
    def archive_bucket(self) -> str | None:
        """The bucket `originals: archive` moves uploads to; None with another setting."""
        return self.resources.archive_bucket if self.settings.originals == "archive" else None

    def api_function_environment(self) -> dict[str, str]:
        """What the component sets on the API function, with a key of its own to sign with.

        On GCP the function signs through the IAM credentials API as its service account;
        here a throwaway key stands in for that account (nothing checks the signatures).
        """
        assert self.emulators is not None and self._cdn is not None and self._log_dir
        key_file = write_throwaway_service_account_key(
            self._log_dir / "api-service-account.json",
            email=f"{self.name}-api@{self.resources.project}.iam.gserviceaccount.com",
            project=self.resources.project,
        )
        return {
            **inherited_environment(),
            **self.emulators.client_environment(),
            **gcp_contract.api_to_env(
                settings=self.settings,
                options=self.stack.api,
                uploads_bucket=self.resources.uploads_bucket,
                uploads_prefix=self.stack.uploads_prefix,
                records_collection=self.resources.records_collection,
                cdn_url=self._cdn.url,
                sign_rendition_urls=self.stack.delivery_mode == "signed-urls",
                project=self.resources.project,
                renditions_bucket=self.resources.renditions_bucket,
            ),
            "GOOGLE_APPLICATION_CREDENTIALS": str(key_file),
            gcp_contract.FUNCTION_NAME: f"{self.name}-api-fn",
        }

    def outputs(self) -> dict[str, str]:
        """The stack outputs (same names as `pulumi stack output`), plus what a client needs
        to reach the emulators."""
        assert self.emulators is not None and self._cdn is not None and self._api is not None
        assert self.function is not None and self.work is not None
        archive = {output_names.ARCHIVE_BUCKET: self.archive_bucket} if self.archive_bucket else {}
        return {
            "cloud": "gcp",
            output_names.UPLOADS_BUCKET: self.resources.uploads_bucket,
            output_names.UPLOADS_PREFIX: self.stack.uploads_prefix,
            output_names.RENDITIONS_BUCKET: self.resources.renditions_bucket,
            output_names.CDN_URL: self._cdn.url,
            output_names.RECORDS_COLLECTION: self.resources.records_collection,
            output_names.EVENTS_TOPIC: self.resources.events_topic,
            output_names.FUNCTION_NAME: self.function_name,
            output_names.API_URL: self._api.url,
            output_names.SETTINGS: self.settings.to_json(),
            output_names.WORK_QUEUE: self.resources.work_queue,
            output_names.WORK_URL: self.function.url,
            output_names.WORK_INVOKER: self.resources.work_invoker,
            **archive,
            "storageEndpoint": self.emulators.storage_endpoint,
            "firestoreEmulatorHost": self.emulators.firestore_host,
            "pubsubEmulatorHost": self.emulators.pubsub_host,
            CLOUD_TASKS_ENDPOINT_OUTPUT: self.work.url,
            "project": self.resources.project,
        }


# --- the command ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cloud",
        choices=CLOUDS,
        default=None,
        help="which cloud to emulate (default: the stack config's imagepipe:cloud, else aws)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"port on 127.0.0.1 of the emulated AWS endpoint (default {DEFAULT_PORT}) or, on "
        f"GCP, of the GCS emulator (default {DEFAULT_GCP_STORAGE_PORT})",
    )
    parser.add_argument(
        "--cdn-port",
        type=int,
        default=0,
        help="port of the renditions server (default: any free port)",
    )
    parser.add_argument(
        "--api-port",
        type=int,
        default=DEFAULT_API_PORT,
        help=f"port of the upload API and its page (default {DEFAULT_API_PORT}; 0: any free port)",
    )
    parser.add_argument(
        "--stack-config",
        type=Path,
        default=None,
        help=f"stack config with the imagepipe:* settings (default {DEFAULT_STACK_CONFIG}, or "
        f"{DEFAULT_STACK_CONFIGS['gcp']} with --cloud gcp, when it exists, else the built-in "
        "defaults)",
    )
    parser.add_argument(
        "--outputs",
        type=Path,
        default=DEFAULT_OUTPUTS,
        help=f"where to write the outputs as JSON (default {DEFAULT_OUTPUTS}); "
        "`imagepipe upload --dev` reads them from there",
    )


def resolve_stack_config(path: Path | None) -> tuple[LocalStackConfig, str]:
    """The given stack config; else the example one when run from the project; else defaults."""
    if path is not None:
        return read_stack_config(path), str(path)
    if DEFAULT_STACK_CONFIG.exists():
        return read_stack_config(DEFAULT_STACK_CONFIG), str(DEFAULT_STACK_CONFIG)
    return LocalStackConfig(), "built-in defaults"


@dataclass(frozen=True)
class DevStack:
    """What `imagepipe dev` runs: a cloud, and the stack config it takes its settings from."""

    cloud: str
    config: LocalStackConfig
    source: str  # where the settings came from, for the banner
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS


def resolve_dev_stack(path: Path | None, cloud: str | None) -> DevStack:
    """The cloud and settings to run: `--cloud` or the stack config's imagepipe:cloud (aws when
    neither says); the stack config given, else that cloud's example one, else the defaults.
    A stack config of the other cloud is a `SettingsError`."""
    if path is None:
        example = DEFAULT_STACK_CONFIGS[cloud or "aws"]
        path = example if example.exists() else None
    if path is None:
        return DevStack(cloud or "aws", LocalStackConfig(), "built-in defaults")
    config = read_stack_config(path)  # every check `pulumi preview` makes, first
    if cloud is not None and cloud != config.cloud:
        raise SettingsError(
            f"--cloud {cloud} was given, but {path} is a stack config for imagepipe:cloud "
            f"{config.cloud}; pass a {cloud} stack config (e.g. {DEFAULT_STACK_CONFIGS[cloud]})."
        )
    return DevStack(config.cloud, config, str(path), config.timeout_seconds)


def run(args: argparse.Namespace) -> int:
    ports = (("--port", args.port), ("--cdn-port", args.cdn_port), ("--api-port", args.api_port))
    for option, port in ports:
        if port is not None and not 0 <= port <= 65535:
            print(
                f"imagepipe dev: {option} is {port}; use a port from 1 to 65535.", file=sys.stderr
            )
            return EXIT_USAGE
    stack = resolve_dev_stack(args.stack_config, args.cloud)
    pipeline: DevPipeline | GcpDevPipeline
    if stack.cloud == "gcp":
        missing = missing_tools()
        if missing is not None:
            print(f"imagepipe dev: the emulated GCP cannot start: {missing}.", file=sys.stderr)
            return EXIT_USAGE
        pipeline = GcpDevPipeline(
            storage_port=DEFAULT_GCP_STORAGE_PORT if args.port is None else args.port,
            cdn_port=args.cdn_port,
            api_port=args.api_port,
            stack=stack.config,
            timeout_seconds=stack.timeout_seconds,
        )
    else:
        pipeline = DevPipeline(
            port=DEFAULT_PORT if args.port is None else args.port,
            cdn_port=args.cdn_port,
            api_port=args.api_port,
            stack=stack.config,
        )

    stop_requested = threading.Event()
    # SIGHUP too: a closed terminal must stop the emulators as a Ctrl-C would.
    previous_handlers = {
        sig: signal.signal(sig, lambda *_: stop_requested.set())
        for sig in (signal.SIGTERM, signal.SIGHUP)
    }
    outputs: dict[str, str] = {}
    failure: str | None = None
    try:
        try:
            pipeline.start()
        except (PortInUse, ToolMissing) as error:
            print(f"imagepipe dev: {error}", file=sys.stderr)
            return EXIT_USAGE
        except ServerDidNotStart as error:
            print(f"imagepipe dev: {error}", file=sys.stderr)
            return EXIT_FAILED
        outputs = pipeline.outputs()
        args.outputs.write_text(json.dumps(outputs, indent=2) + "\n", encoding="utf-8")
        banner = _gcp_banner if stack.cloud == "gcp" else _aws_banner
        print("\n".join(banner(outputs, stack, args.outputs)), flush=True)
        try:
            while failure is None and not stop_requested.wait(HEALTH_CHECK_SECONDS):
                failure = pipeline.failure()
        except KeyboardInterrupt:
            pass
        if failure is not None:
            print(f"imagepipe dev: {failure}. Stopping.", file=sys.stderr, flush=True)
        else:
            print("imagepipe dev: stopping ...", file=sys.stderr, flush=True)
    finally:
        pipeline.stop(STOP_SECONDS_AFTER_FAILURE if failure is not None else 30)
        if outputs:
            _remove_outputs(args.outputs, outputs)
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
    if failure is not None:
        return EXIT_FAILED
    print("imagepipe dev: stopped", file=sys.stderr, flush=True)
    return EXIT_OK


def _remove_outputs(path: Path, outputs: Mapping[str, str]) -> None:
    """Remove the outputs file if it is still ours: a stale one would point at dead ports."""
    try:
        if json.loads(path.read_text(encoding="utf-8")) == dict(outputs):
            path.unlink()
    except (OSError, ValueError):
        pass


def _banner_head(cloud: str, outputs: Mapping[str, Any], stack: DevStack) -> list[str]:
    renditions = ", ".join(spec.to_compact() for spec in stack.config.settings.renditions)
    width = max(len(name) for name in outputs)
    auth = stack.config.api.auth
    return [
        f"imagepipe dev: the pipeline is running on an emulated {cloud} (Ctrl-C stops it)",
        f"settings from {stack.source}: {renditions}",
        f"upload page: {outputs[output_names.API_URL]}/  (the upload API there, auth {auth})",
        "",
        *(f"  {name:<{width}}  {value}" for name, value in outputs.items()),
        "",
    ]


def _aws_banner(outputs: Mapping[str, Any], stack: DevStack, outputs_path: Path) -> list[str]:
    return [
        *_banner_head("AWS", outputs, stack),
        f"outputs written to {outputs_path}",
        "upload with imagepipe:   imagepipe upload photo.jpg --dev",
        "or with the AWS CLI:     "
        + " ".join(
            f"{k}={v}"
            for k, v in client_environment(outputs["endpoint"]).items()
            if k.startswith("AWS_") and k != "AWS_ENDPOINT_URL" and k != "AWS_REGION"
        )
        + f" aws s3 cp photo.jpg s3://{outputs['uploadsBucket']}/{outputs['uploadsPrefix']}"
        + f" --endpoint-url {outputs['endpoint']}",
        f"then:                    imagepipe status {outputs['uploadsPrefix']}photo.jpg --dev",
        "objects already there:   imagepipe backfill --dev   (what ran out of retries: "
        "imagepipe redrive --dev)",
    ]


def _gcp_banner(outputs: Mapping[str, Any], stack: DevStack, outputs_path: Path) -> list[str]:
    storage, bucket = outputs["storageEndpoint"], outputs[output_names.UPLOADS_BUCKET]
    key = f"{outputs['uploadsPrefix']}photo.jpg"
    clients = (
        f"STORAGE_EMULATOR_HOST={storage} FIRESTORE_EMULATOR_HOST="
        f"{outputs['firestoreEmulatorHost']} PUBSUB_EMULATOR_HOST={outputs['pubsubEmulatorHost']}"
        f" GOOGLE_CLOUD_PROJECT={outputs['project']}"
    )
    how = {
        "upload with imagepipe:": "imagepipe upload photo.jpg --dev",
        "or google-cloud-storage:": f'STORAGE_EMULATOR_HOST={storage} python -c "from google'
        f".cloud import storage; storage.Client(project='{outputs['project']}')"
        f".bucket('{bucket}').blob('{key}').upload_from_filename('photo.jpg')\"",
        # gcloud takes an endpoint override, and with credentials disabled wants no login.
        "or gcloud:": f"CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE={storage}/storage/v1/ "
        f"CLOUDSDK_AUTH_DISABLE_CREDENTIALS=true gcloud storage cp photo.jpg gs://{bucket}/{key}",
        "then:": f"imagepipe status {key} --dev",
        "objects from before:": "imagepipe backfill --dev  (through the work queue, a Cloud "
        f"Tasks stand-in at {outputs[CLOUD_TASKS_ENDPOINT_OUTPUT]})",
        "other clients:": clients,
    }
    width = max(len(label) for label in how) + 1
    return [
        *_banner_head("GCP", outputs, stack),
        f"outputs written to {outputs_path}",
        *(f"{label:<{width}}{text}" for label, text in how.items()),
    ]
