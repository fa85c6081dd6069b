"""Helpers for the GCP emulator tests: process groups, free ports, names, message pulls,
and the function served by functions-framework."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

PROJECT = "imagepipe-emulated"
PROJECT_ROOT = Path(__file__).resolve().parents[3]
FUNCTION_SOURCE = PROJECT_ROOT / "functions" / "gcp" / "main.py"
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float) -> None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"not listening on {port} after {timeout} s:\n{log.read_text()[-3000:]}")


@dataclass
class ServerProcess:
    """A process group we started; `stop` ends all of it (and only it)."""

    name: str
    process: subprocess.Popen
    port: int
    log: Path
    launched_at: float = 0.0
    startup_seconds: float = 0.0

    @classmethod
    def launch(
        cls,
        name: str,
        command: list[str],
        port: int,
        log: Path,
        env: Mapping[str, str] | None = None,
    ) -> ServerProcess:
        """Start without waiting, so slow starters (two JVMs) can boot side by side."""
        with log.open("wb") as sink:
            process = subprocess.Popen(
                command,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
                cwd=PROJECT_ROOT,
                start_new_session=True,
            )
        return cls(name, process, port, log, launched_at=time.monotonic())

    def wait_ready(self, timeout: float = 60.0) -> ServerProcess:
        try:
            wait_for_port(self.port, self.process, self.log, timeout)
        except RuntimeError as error:
            self.stop()
            raise RuntimeError(f"{self.name} did not start: {error}") from None
        self.startup_seconds = time.monotonic() - self.launched_at
        return self

    def stop(self, grace: float = 5.0) -> None:
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace)
        # The launcher may be gone while its Java child still runs: end the group regardless.
        _signal_group(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(grace)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def gcloud_component_missing(component_dir: str) -> str | None:
    gcloud = shutil.which("gcloud")
    if not gcloud:
        return "gcloud (google-cloud-cli) is not installed"
    if not shutil.which("java"):
        return "java is not installed (the Firestore and Pub/Sub emulators need a JRE)"
    sdk_root = Path(os.path.realpath(gcloud)).parent.parent
    if not (sdk_root / "platform" / component_dir).is_dir():
        return f"the gcloud component {component_dir} is not installed under {sdk_root}"
    return None


@dataclass(frozen=True)
class GcpClients:
    storage: Any
    firestore: Any
    publisher: Any
    subscriber: Any


@dataclass(frozen=True)
class GcpNames:
    uploads_bucket: str
    renditions_bucket: str
    collection: str
    topic: str  # projects/<p>/topics/<t>
    subscription: str  # projects/<p>/subscriptions/<s>


def pull_messages(subscriber: Any, subscription: str, *, settle: float = 1.0) -> list[Any]:
    """Every message on the subscription, acknowledged. A pull that waits `settle` s and
    finds nothing ends it, so a late duplicate would still be counted."""
    from google.api_core.exceptions import DeadlineExceeded

    messages: list[Any] = []
    while True:
        try:
            response = subscriber.pull(
                subscription=subscription, max_messages=10, timeout=settle, retry=None
            )
        except DeadlineExceeded:
            return messages
        if not response.received_messages:
            return messages
        messages.extend(m.message for m in response.received_messages)
        ack_ids = [m.ack_id for m in response.received_messages]
        subscriber.acknowledge(subscription=subscription, ack_ids=ack_ids)


@dataclass
class FunctionServer:
    server: ServerProcess

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/"

    def deliver(self, event: Mapping[str, Any]) -> requests.Response:
        """POST a binary-mode CloudEvent, as Eventarc does."""
        attributes = {k: v for k, v in event.items() if k != "data"}
        headers = {f"ce-{name}": str(value) for name, value in attributes.items()}
        headers["Content-Type"] = "application/json"
        return requests.post(self.url, data=json.dumps(event["data"]), headers=headers, timeout=60)

    def log_entries(self) -> list[dict[str, Any]]:
        """The JSON lines the function wrote to stdout (Cloud Logging's jsonPayload)."""
        entries = []
        for line in self.server.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return entries


def finalized_event(blob: Any, *, time: str | None = None) -> dict[str, Any]:
    """The `object.v1.finalized` CloudEvent Eventarc delivers for an uploaded blob."""
    from datetime import UTC, datetime

    bucket = blob.bucket.name
    return {
        "specversion": "1.0",
        "id": uuid.uuid4().hex,
        "type": "google.cloud.storage.object.v1.finalized",
        "source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
        "subject": f"objects/{blob.name}",
        "time": time or datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "data": {
            "kind": "storage#object",
            "bucket": bucket,
            "name": blob.name,
            "generation": str(blob.generation),
            "metageneration": str(blob.metageneration),
            "size": str(blob.size),
            "contentType": blob.content_type,
            "timeCreated": blob.time_created.isoformat().replace("+00:00", "Z"),
            "metadata": blob.metadata or {},
        },
    }
