"""Helpers for the GCP emulator tests: names, message pulls, and the function served by
functions-framework. Process groups, free ports and what gcloud must have come from the
dev pipeline's own modules, which start the same emulators."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

# Re-exported: the suite imports them from here.
from functions.local.emulated_gcp import gcloud_component_missing as gcloud_component_missing
from functions.local.processes import ServerProcess as ServerProcess
from functions.local.processes import free_port as free_port

PROJECT = "imagepipe-emulated"
PROJECT_ROOT = Path(__file__).resolve().parents[3]
FUNCTION_SOURCE = PROJECT_ROOT / "functions" / "gcp" / "main.py"
VENV_BIN = Path(sys.executable).parent


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
            # fake-gcs-server leaves timeCreated out of some uploads' answers.
            "timeCreated": (blob.time_created or datetime.now(UTC))
            .isoformat()
            .replace("+00:00", "Z"),
            "metadata": blob.metadata or {},
        },
    }


def deleted_event(blob: Any, *, time: str | None = None) -> dict[str, Any]:
    """The `object.v1.deleted` CloudEvent of `blob`'s generation (the same object resource)."""
    return {**finalized_event(blob, time=time), "type": "google.cloud.storage.object.v1.deleted"}
