"""Real GCP emulators on loopback, started once per session, and the real function served by
functions-framework per test.

Each emulator runs in its own process group and is stopped as a group: the gcloud
wrappers are shell and Python launchers that leave the Java server running when only
they are killed. Every test gets its own buckets, collection, topic and subscription.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from functions.gcp import contract
from functions.local.emulated_gcp import ToolMissing, fake_gcs_server_binary
from tests.conftest import require
from tests.functions.gcp.gcp_emulators import (
    FUNCTION_SOURCE,
    PROJECT,
    VENV_BIN,
    FunctionServer,
    GcpClients,
    GcpNames,
    ServerProcess,
    free_port,
    gcloud_component_missing,
)

# --- Emulators (session) -------------------------------------------------------------


@pytest.fixture(scope="session")
def emulator_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gcp-emulators")


@pytest.fixture(scope="session")
def emulator_env(emulator_logs: Path) -> Iterator[dict[str, str]]:
    """Firestore, Pub/Sub and GCS emulators for the whole session, and the SDKs' own
    variables pointing at them (given to the clients and functions these tests build;
    never left in os.environ, where other suites would meet them)."""
    for component in ("cloud-firestore-emulator", "pubsub-emulator"):
        missing = gcloud_component_missing(component)
        require(f"GCP emulator tests skipped: {missing}" if missing else None)
    try:
        gcs_executable = fake_gcs_server_binary()  # the one the dev pipeline runs
    except ToolMissing as error:
        require(f"GCP emulator tests need fake-gcs-server: {error}")

    ports = {"firestore": free_port(), "pubsub": free_port(), "gcs": free_port()}
    commands = {
        "firestore": ["gcloud", "emulators", "firestore", "start",
                      f"--host-port=127.0.0.1:{ports['firestore']}"],
        "pubsub": ["gcloud", "beta", "emulators", "pubsub", "start",
                   f"--host-port=127.0.0.1:{ports['pubsub']}", f"--project={PROJECT}"],
        "gcs": [str(gcs_executable), "-scheme", "http", "-host", "127.0.0.1",
                "-port", str(ports["gcs"]), "-external-url", f"http://127.0.0.1:{ports['gcs']}",
                # Form POSTs and signed URLs are served for the public host only.
                "-public-host", f"127.0.0.1:{ports['gcs']}",
                "-backend", "memory", "-log-level", "warn"],
    }  # fmt: skip
    servers: list[ServerProcess] = []
    try:
        for name, command in commands.items():
            log = emulator_logs / f"{name}.log"
            servers.append(ServerProcess.launch(f"{name} emulator", command, ports[name], log))
        for server in servers:
            server.wait_ready(timeout=90)
        slowest = max(s.startup_seconds for s in servers)
        print(f"\nFirestore, Pub/Sub and GCS emulators ready in {slowest:.1f} s (side by side)")
        env = {
            "FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{ports['firestore']}",
            "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{ports['pubsub']}",
            "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{ports['gcs']}",
            contract.PROJECT: PROJECT,
        }
        yield env
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="session")
def gcp_clients(emulator_env: dict[str, str]) -> Iterator[GcpClients]:
    from google.cloud import firestore, pubsub_v1, storage

    # Each client reads its emulator variable once, when it is built.
    with pytest.MonkeyPatch.context() as patch:
        for name, value in emulator_env.items():
            patch.setenv(name, value)
        clients = GcpClients(
            storage=storage.Client(project=PROJECT),
            firestore=firestore.Client(project=PROJECT),
            publisher=pubsub_v1.PublisherClient(),
            subscriber=pubsub_v1.SubscriberClient(),
        )
    yield clients
    clients.subscriber.close()


# --- Per-test resources ---------------------------------------------------------------


@pytest.fixture
def gcp_names(gcp_clients: GcpClients) -> GcpNames:
    """Fresh buckets, collection, topic and a subscription on it (created before any publish)."""
    suffix = uuid.uuid4().hex[:10]
    names = GcpNames(
        uploads_bucket=f"uploads-{suffix}",
        renditions_bucket=f"renditions-{suffix}",
        collection=f"images-{suffix}",
        topic=f"projects/{PROJECT}/topics/events-{suffix}",
        subscription=f"projects/{PROJECT}/subscriptions/events-{suffix}",
    )
    gcp_clients.storage.create_bucket(names.uploads_bucket)
    gcp_clients.storage.create_bucket(names.renditions_bucket)
    gcp_clients.publisher.create_topic(name=names.topic)
    gcp_clients.subscriber.create_subscription(name=names.subscription, topic=names.topic)
    return names


# --- The function, served by functions-framework ---------------------------------------


@pytest.fixture
def serve_function(emulator_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """Start `functions-framework --target handle_upload` with the component's variables."""
    started: list[ServerProcess] = []

    def serve(names: GcpNames, **overrides: str) -> FunctionServer:
        from functions.core.settings import PipelineSettings

        port = free_port()
        env = {
            **os.environ,
            **emulator_env,
            **contract.to_env(
                settings=PipelineSettings(),
                renditions_bucket=names.renditions_bucket,
                records_collection=names.collection,
                events_topic=names.topic,
                max_event_age_seconds=3600,
                timeout_seconds=60,
                project=PROJECT,
            ),
            "PYTHONUNBUFFERED": "1",
            **overrides,
        }
        command = [
            str(VENV_BIN / "functions-framework"),
            "--target=handle_upload",
            f"--source={FUNCTION_SOURCE}",
            "--signature-type=cloudevent",
            "--host=127.0.0.1",
            f"--port={port}",
        ]
        log = tmp_path / f"function-{len(started)}.log"
        server = ServerProcess.launch("functions-framework", command, port, log, env)
        started.append(server)
        server.wait_ready(timeout=30)
        print(f"\nfunctions-framework start-up: {server.startup_seconds:.1f} s")
        return FunctionServer(server)

    yield serve
    for server in started:
        server.stop()
