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
from gcp_emulators import (
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
def firestore_emulator(emulator_logs: Path) -> Iterator[ServerProcess]:
    missing = gcloud_component_missing("cloud-firestore-emulator")
    if missing:
        pytest.skip(f"Firestore emulator unavailable: {missing}")
    port = free_port()
    command = ["gcloud", "emulators", "firestore", "start", f"--host-port=127.0.0.1:{port}"]
    server = ServerProcess.start("firestore emulator", command, port, emulator_logs / "fs.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pubsub_emulator(emulator_logs: Path) -> Iterator[ServerProcess]:
    missing = gcloud_component_missing("pubsub-emulator")
    if missing:
        pytest.skip(f"Pub/Sub emulator unavailable: {missing}")
    port = free_port()
    command = ["gcloud", "beta", "emulators", "pubsub", "start",
               f"--host-port=127.0.0.1:{port}", f"--project={PROJECT}"]  # fmt: skip
    server = ServerProcess.start("pubsub emulator", command, port, emulator_logs / "ps.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gcs_emulator(emulator_logs: Path) -> Iterator[ServerProcess]:
    executable = VENV_BIN / "gcp-storage-emulator"
    if not executable.exists():
        pytest.skip("GCS emulator unavailable: gcp-storage-emulator is not installed in the venv")
    port = free_port()
    command = [str(executable), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"]
    server = ServerProcess.start("gcs emulator", command, port, emulator_logs / "gcs.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def emulator_env(
    firestore_emulator: ServerProcess, pubsub_emulator: ServerProcess, gcs_emulator: ServerProcess
) -> Iterator[dict[str, str]]:
    """The SDKs' own emulator variables, set for this process and every function it serves."""
    env = {
        "FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{firestore_emulator.port}",
        "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{pubsub_emulator.port}",
        "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{gcs_emulator.port}",
        "GOOGLE_CLOUD_PROJECT": PROJECT,
    }
    print(
        "\nemulator start-up: "
        + ", ".join(
            f"{s.name} {s.startup_seconds:.1f} s"
            for s in (firestore_emulator, pubsub_emulator, gcs_emulator)
        )
    )
    patch = pytest.MonkeyPatch()
    for name, value in env.items():
        patch.setenv(name, value)
    yield env
    patch.undo()


@pytest.fixture(scope="session")
def gcp_clients(emulator_env: dict[str, str]) -> Iterator[GcpClients]:
    from google.cloud import firestore, pubsub_v1, storage

    subscriber = pubsub_v1.SubscriberClient()
    yield GcpClients(
        storage=storage.Client(project=PROJECT),
        firestore=firestore.Client(project=PROJECT),
        publisher=pubsub_v1.PublisherClient(),
        subscriber=subscriber,
    )
    subscriber.close()


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
            "IMAGEPIPE_SETTINGS": PipelineSettings().to_json(),
            "IMAGEPIPE_RENDITIONS_BUCKET": names.renditions_bucket,
            "IMAGEPIPE_RECORDS_COLLECTION": names.collection,
            "IMAGEPIPE_EVENTS_TOPIC": names.topic,
            "IMAGEPIPE_MAX_EVENT_AGE_SECONDS": "3600",
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
        server = ServerProcess.start("functions-framework", command, port, log, env, timeout=30)
        started.append(server)
        print(f"\nfunctions-framework start-up: {server.startup_seconds:.1f} s")
        return FunctionServer(server)

    yield serve
    for server in started:
        server.stop()
