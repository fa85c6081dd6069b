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


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return time.monotonic() - started
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
    startup_seconds: float = 0.0

    @classmethod
    def start(
        cls,
        name: str,
        command: list[str],
        port: int,
        log: Path,
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> ServerProcess:
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
        server = cls(name, process, port, log)
        try:
            server.startup_seconds = wait_for_port(port, process, log, timeout)
        except RuntimeError as error:
            server.stop()
            raise RuntimeError(f"{name} did not start: {error}") from None
        return server

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
    """Every message on the subscription, acknowledged; waits `settle` s after the last one
    so a duplicate publish would be seen too."""
    messages: list[Any] = []
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < settle:
        response = subscriber.pull(
            subscription=subscription, max_messages=10, return_immediately=True, timeout=5
        )
        if response.received_messages:
            messages.extend(m.message for m in response.received_messages)
            subscriber.acknowledge(
                subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages]
            )
            quiet_since = time.monotonic()
        else:
            time.sleep(0.1)
    return messages


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
