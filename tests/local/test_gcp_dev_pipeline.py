"""The dev pipeline on an emulated GCP: real Firestore, Pub/Sub and GCS emulators, the real
function served by functions-framework, the Eventarc stand-in, the CDN stand-in.

The emulators start once for the module (`gcp_pipeline`); `imagepipe dev --cloud gcp` as a
process starts its own. The Eventarc stand-in's rules (what is acknowledged, what is
redelivered and when) are proven first without any emulator, over a fake subscription and
a scripted HTTP target. Without gcloud, Java or fake-gcs-server the emulator tests are
skipped with the reason, except under CI=true, where they fail.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cloudevents.http import from_http

from functions.core.records import ObjectRef
from functions.core.settings import SettingsError
from functions.gcp import contract
from functions.gcp.trigger import parse_storage_event
from functions.local import dev
from functions.local.dev import GcpDevPipeline
from functions.local.emulated_gcp import (
    CloudFunctionServer,
    missing_tools,
    subscriber_client,
)
from functions.local.eventarc import (
    EventarcTrigger,
    Notification,
    PubSubNotificationSource,
    RetryPolicy,
    finalized_cloud_event,
)
from functions.local.processes import free_port
from functions.local.samples import camera_jpeg, small_png
from functions.local.target import PipelineTarget
from functions.local.upload import Upload, upload_and_wait
from tests.local.conftest import wait_for

pytestmark = pytest.mark.timeout(120)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def rfc3339(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- the Eventarc stand-in's rules, without emulators ----------------------------------------


def a_notification(
    name: str = "photos/beach.jpg", *, event_time: datetime | None = None, **attributes: str
) -> Notification:
    """A finalize notification as fake-gcs-server publishes it (no metageneration)."""
    resource = {
        "kind": "storage#object",
        "id": f"uploads/{name}#1712345678901234",
        "name": name,
        "bucket": "uploads",
        "generation": "1712345678901234",
        "contentType": "image/jpeg",
        "timeCreated": "2026-03-01T10:00:00.123456Z",
        "storageClass": "STANDARD",
        "size": "2048",
        "metadata": {"camera": "x100"},
    }
    return Notification(
        ack_id=uuid.uuid4().hex,
        message_id=str(uuid.uuid4().int % 10**12),
        attributes={
            "eventType": "OBJECT_FINALIZE",
            "payloadFormat": "JSON_API_V1",
            "bucketId": "uploads",
            "objectId": name,
            "objectGeneration": "1712345678901234",
            "eventTime": rfc3339(event_time or datetime.now(UTC)),
            **attributes,
        },
        data=json.dumps(resource).encode(),
        publish_time=datetime.now(UTC),
    )


class InMemoryNotificationSource:
    """A subscription: pull hands out what is due, redeliver_after hides a message for a while,
    acknowledge removes it for good."""

    def __init__(self, notifications: Sequence[Notification]) -> None:
        self._due: list[tuple[float, int, Notification]] = []
        self._held: dict[str, Notification] = {}
        self._changed = threading.Condition()
        self.acknowledged: list[str] = []
        self._order = 0
        for notification in notifications:
            self._schedule(notification, 0.0)

    def _schedule(self, notification: Notification, delay: float) -> None:
        self._order += 1
        heapq.heappush(self._due, (time.monotonic() + delay, self._order, notification))

    def pull(self, max_messages: int, timeout: float) -> Sequence[Notification]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                now = time.monotonic()
                if self._due and self._due[0][0] <= now:
                    _, _, notification = heapq.heappop(self._due)
                    self._held[notification.ack_id] = notification
                    return [notification]
                if now >= deadline:
                    return []
                wake = min(deadline, self._due[0][0]) if self._due else deadline
                self._changed.wait(max(0.0, wake - now))

    def acknowledge(self, ack_id: str) -> None:
        with self._changed:
            notification = self._held.pop(ack_id)
            self.acknowledged.append(notification.message_id)

    def redeliver_after(self, ack_id: str, seconds: float) -> None:
        with self._changed:
            self._schedule(self._held.pop(ack_id), seconds)
            self._changed.notify_all()

    @property
    def outstanding(self) -> int:
        with self._changed:
            return len(self._due) + len(self._held)


class ScriptedFunction:
    """An HTTP target answering each delivery with the next status of `statuses` (the last one
    for ever after), recording when each came and what it carried."""

    def __init__(self, statuses: Sequence[int]) -> None:
        self.statuses = list(statuses)
        self.deliveries: list[tuple[float, dict[str, str], bytes]] = []
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                target.deliveries.append((time.monotonic(), dict(self.headers), body))
                index = min(len(target.deliveries), len(target.statuses)) - 1
                self.send_response(target.statuses[index])
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/"

    def __enter__(self) -> ScriptedFunction:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def run_trigger(source: Any, url: str, retry: RetryPolicy) -> EventarcTrigger:
    trigger = EventarcTrigger(source, url, retry=retry, timeout_seconds=5, workers=2)
    trigger.start()
    return trigger


def test_the_backoff_doubles_from_one_second_to_a_ten_second_cap() -> None:
    assert [RetryPolicy().delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_a_notification_becomes_the_cloud_event_the_function_accepts() -> None:
    notification = a_notification("holiday/beach photo.jpg")
    headers, body = finalized_cloud_event(notification)

    event = from_http(headers, body)  # what functions-framework does with the request
    assert event["type"] == contract.UPLOAD_EVENT_TYPE == "google.cloud.storage.object.v1.finalized"
    assert event["id"] == notification.message_id
    assert event["source"] == "//storage.googleapis.com/projects/_/buckets/uploads"
    assert event["subject"] == "objects/holiday/beach photo.jpg"
    assert event["time"] == notification.attributes["eventTime"]
    assert event.data == {
        "kind": "storage#object",
        "id": "uploads/holiday/beach photo.jpg#1712345678901234",
        "bucket": "uploads",
        "name": "holiday/beach photo.jpg",
        "generation": "1712345678901234",
        "metageneration": "1",
        "size": "2048",
        "contentType": "image/jpeg",
        "timeCreated": "2026-03-01T10:00:00.123456Z",
        "storageClass": "STANDARD",
        "metadata": {"camera": "x100"},
    }
    upload = parse_storage_event(event.get_attributes(), event.get_data())
    assert upload.ref == ObjectRef(
        "uploads",
        "holiday/beach photo.jpg",
        "1712345678901234",
        size=2048,
        content_type="image/jpeg",
    )
    assert upload.is_rendition is False


def test_2xx_is_acknowledged_and_anything_else_redelivered_with_backoff() -> None:
    source = InMemoryNotificationSource([a_notification()])
    retry = RetryPolicy(initial_seconds=0.2, maximum_seconds=0.3)
    with ScriptedFunction([500, 409, 503, 200]) as function:
        trigger = run_trigger(source, function.url, retry)
        try:
            assert wait_for(lambda: source.acknowledged, timeout=10)
            time.sleep(0.5)  # nothing comes after the acknowledgement
        finally:
            trigger.stop()
    times = [when for when, _, _ in function.deliveries]
    assert len(times) == 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.3 and gaps[2] >= 0.3  # doubled, then capped
    assert max(gaps) < 2
    # Every redelivery is the same event: same id, same time (the age the function measures).
    assert len({(h["ce-id"], h["ce-time"]) for _, h, _ in function.deliveries}) == 1
    assert {body for _, _, body in function.deliveries} == {function.deliveries[0][2]}
    assert (trigger.deliveries, trigger.redelivered, trigger.acknowledged) == (4, 3, 1)
    assert source.outstanding == 0


def test_no_answer_is_redelivered_too() -> None:
    closed = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    source = InMemoryNotificationSource([a_notification()])
    trigger = run_trigger(source, closed, RetryPolicy(initial_seconds=0.1, maximum_seconds=0.1))
    try:
        assert wait_for(lambda: trigger.redelivered >= 3, timeout=10)
    finally:
        trigger.stop()
    assert source.acknowledged == []


def test_a_failing_event_past_the_maximum_age_is_acknowledged_not_retried() -> None:
    old = a_notification(event_time=datetime.now(UTC) - timedelta(seconds=120))
    source = InMemoryNotificationSource([old])
    with ScriptedFunction([500]) as function:
        trigger = run_trigger(source, function.url, RetryPolicy(max_event_age_seconds=60))
        try:
            assert wait_for(lambda: source.acknowledged, timeout=10)
        finally:
            trigger.stop()
    assert len(function.deliveries) == 1  # delivered once: the function decides first
    assert (trigger.expired, trigger.redelivered) == (1, 0)


def test_notifications_other_than_a_finalize_or_delete_are_acknowledged_undelivered() -> None:
    updated = a_notification(eventType="OBJECT_METADATA_UPDATE")
    source = InMemoryNotificationSource([updated])
    with ScriptedFunction([200]) as function:
        trigger = run_trigger(source, function.url, RetryPolicy())
        try:
            assert wait_for(lambda: source.acknowledged, timeout=10)
        finally:
            trigger.stop()
    assert function.deliveries == []


def test_without_gcloud_imagepipe_dev_cloud_gcp_says_what_to_install_and_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(PROJECT_ROOT)
    monkeypatch.setenv("PATH", str(tmp_path))  # no gcloud, no java
    assert dev_command(["--cloud", "gcp", "--outputs", str(tmp_path / "out.json")]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(
        "imagepipe dev: the emulated GCP cannot start: the Google Cloud CLI (gcloud) is not on "
        "PATH; apt-get install google-cloud-cli google-cloud-cli-firestore-emulator"
    )
    assert not (tmp_path / "out.json").exists()


def test_a_stack_config_of_the_other_cloud_is_refused() -> None:
    with pytest.raises(SettingsError, match=r"--cloud gcp was given, but .* aws"):
        dev.resolve_dev_stack(PROJECT_ROOT / "stacks" / "Pulumi.aws-dev.yaml", "gcp")
    stack = dev.resolve_dev_stack(PROJECT_ROOT / "stacks" / "Pulumi.gcp-dev.yaml", None)
    assert (stack.cloud, stack.timeout_seconds, stack.config.max_event_age_seconds) == (
        "gcp",
        60,
        3600,
    )


def dev_command(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="imagepipe dev")
    dev.add_arguments(parser)
    return dev.run(parser.parse_args(argv))


# --- the pipeline on real emulators ----------------------------------------------------------


def require_gcp_tools() -> None:
    missing = missing_tools()
    if missing is None:
        return
    reason = f"the emulated GCP cannot start here: {missing}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: these tests must run)")
    print(f"\nskipped: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def function_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gcp-dev")


@pytest.fixture(scope="module")
def gcp_pipeline(function_logs: Path) -> Iterator[GcpDevPipeline]:
    require_gcp_tools()
    started = time.monotonic()
    pipeline = GcpDevPipeline(function_log=function_logs / "function.log")
    with pipeline:
        assert pipeline.emulators is not None
        print(
            f"\nemulated GCP up in {time.monotonic() - started:.1f} s "
            f"(emulators side by side: {pipeline.emulators.startup_seconds:.1f} s)"
        )
        yield pipeline


class Clients:
    """google-cloud clients built the way a user's would be: from the SDKs' own variables."""

    def __init__(self, environment: dict[str, str]) -> None:
        from google.cloud import firestore, pubsub_v1, storage

        with pytest.MonkeyPatch.context() as patch:
            for name, value in environment.items():
                patch.setenv(name, value)
            project = environment[contract.PROJECT]
            self.storage = storage.Client(project=project)
            self.firestore = firestore.Client(project=project)
            self.publisher = pubsub_v1.PublisherClient()
            self.subscriber = pubsub_v1.SubscriberClient()
        self.project = project

    def subscribe(self, topic: str) -> str:
        """A new subscription on `topic`: it receives what is published from now on."""
        name = f"projects/{self.project}/subscriptions/watch-{uuid.uuid4().hex[:10]}"
        self.subscriber.create_subscription(name=name, topic=topic)
        return name

    def messages(self, subscription: str, settle: float = 1.0) -> list[Any]:
        """Every message on the subscription, acknowledged; a `settle` s pull finding none
        ends it, so a late duplicate would still be counted."""
        from google.api_core.exceptions import DeadlineExceeded

        messages: list[Any] = []
        while True:
            try:
                response = self.subscriber.pull(
                    subscription=subscription, max_messages=10, timeout=settle, retry=None
                )
            except DeadlineExceeded:
                return messages
            if not response.received_messages:
                return messages
            messages.extend(m.message for m in response.received_messages)
            self.subscriber.acknowledge(
                subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages]
            )


@pytest.fixture(scope="module")
def clients(gcp_pipeline: GcpDevPipeline) -> Iterator[Clients]:
    assert gcp_pipeline.emulators is not None
    made = Clients(gcp_pipeline.emulators.client_environment())
    yield made
    made.subscriber.close()


def upload(clients: Clients, outputs: dict[str, str], key: str, data: bytes, content_type: str):
    blob = clients.storage.bucket(outputs["uploadsBucket"]).blob(key)
    blob.upload_from_string(data, content_type=content_type)
    return blob


def wait_for_document(clients: Clients, outputs: dict[str, str], blob: Any, status: str) -> dict:
    rid = ObjectRef(blob.bucket.name, blob.name, str(blob.generation)).record_id
    reference = clients.firestore.collection(outputs["recordsCollection"]).document(rid)

    def finished() -> dict | None:
        document = reference.get().to_dict()
        return document if document and document["status"] == status else None

    document = wait_for(finished, timeout=30, interval=0.05)
    assert document, f"{blob.name} did not end {status}: {reference.get().to_dict()}"
    return document


def http_get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.mark.emulator
def test_an_upload_ends_completed_with_one_event_and_renditions_served_immutable(
    gcp_pipeline: GcpDevPipeline, clients: Clients
) -> None:
    outputs = gcp_pipeline.outputs()
    assert gcp_pipeline.trigger is not None
    deliveries_before = gcp_pipeline.trigger.deliveries
    events = clients.subscribe(outputs["eventsTopic"])
    key = f"{outputs['uploadsPrefix']}holiday/camera photo.jpg"
    uploaded = time.monotonic()
    blob = upload(clients, outputs, key, camera_jpeg(1200, 900), "image/jpeg")
    document = wait_for_document(clients, outputs, blob, "COMPLETED")
    print(f"\none upload -> COMPLETED in {time.monotonic() - uploaded:.2f} s")

    assert document["source"]["version"] == str(blob.generation)
    assert (document["image"]["width"], document["image"]["height"]) == (900, 1200)
    assert {r["name"] for r in document["renditions"]} == {"large", "thumb"}

    [message] = [m for m in clients.messages(events) if json.loads(m.data)["subject"] == key]
    assert message.attributes["type"] == "imagepipe.image.completed"
    assert json.loads(message.data)["data"]["status"] == "COMPLETED"

    thumb = next(r for r in document["renditions"] if r["name"] == "thumb")
    status, headers, body = http_get(f"{outputs['cdnUrl']}/{thumb['key']}")
    assert status == 200
    assert headers["Content-Type"] == "image/jpeg"
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert body[:3] == b"\xff\xd8\xff" and len(body) == thumb["bytes"]
    status, headers, body = http_get(f"{outputs['cdnUrl']}/{thumb['key']}", method="HEAD")
    assert (status, body, headers["Content-Length"]) == (200, b"", str(thumb["bytes"]))
    assert http_get(f"{outputs['cdnUrl']}/{thumb['key']}.missing")[0] == 404
    assert http_get(f"{outputs['cdnUrl']}/")[0] == 404
    # One delivery, acknowledged: the renditions' bucket notifies nobody.
    assert gcp_pipeline.trigger.deliveries - deliveries_before == 1


@pytest.mark.emulator
def test_a_broken_file_ends_failed_with_one_failed_event(
    gcp_pipeline: GcpDevPipeline, clients: Clients
) -> None:
    outputs = gcp_pipeline.outputs()
    events = clients.subscribe(outputs["eventsTopic"])
    key = f"{outputs['uploadsPrefix']}broken.jpg"
    uploaded = time.monotonic()
    blob = upload(clients, outputs, key, b"this is text, not a JPEG\n", "image/jpeg")
    document = wait_for_document(clients, outputs, blob, "FAILED")
    print(f"\na broken file -> FAILED in {time.monotonic() - uploaded:.2f} s")
    assert document["error"]["code"] == "unsupported_format"
    assert document["renditions"] == []
    [message] = [m for m in clients.messages(events) if json.loads(m.data)["subject"] == key]
    assert message.attributes["type"] == "imagepipe.image.failed"
    assert json.loads(message.data)["data"]["error"]["code"] == "unsupported_format"


@pytest.mark.emulator
def test_the_real_subscription_redelivers_what_the_function_refused(
    gcp_pipeline: GcpDevPipeline, clients: Clients
) -> None:
    """A second subscription on the bucket's notification topic, delivered to a scripted
    function: 500, 409, then 200, one and two seconds apart (Pub/Sub's own redelivery)."""
    outputs = gcp_pipeline.outputs()
    topic = gcp_pipeline.resources.trigger_topic
    subscription = clients.subscribe(topic)
    subscriber = subscriber_client(outputs["pubsubEmulatorHost"])
    source = PubSubNotificationSource(subscriber, subscription)
    with ScriptedFunction([500, 409, 200]) as function:
        trigger = run_trigger(source, function.url, RetryPolicy(1, 10))
        try:
            blob = upload(clients, outputs, "scripted.png", small_png(seed=11), "image/png")
            blob.reload()
            assert wait_for(lambda: trigger.acknowledged == 1, timeout=20)
            time.sleep(2.5)  # an acknowledged event does not come back
        finally:
            trigger.stop()
            subscriber.close()
    times = [when for when, _, _ in function.deliveries]
    assert len(times) == 3
    assert times[1] - times[0] >= 1 and times[2] - times[1] >= 2
    headers = [h for _, h, _ in function.deliveries]
    assert len({(h["ce-id"], h["ce-time"]) for h in headers}) == 1
    event = from_http(headers[0], function.deliveries[0][2])
    upload_event = parse_storage_event(event.get_attributes(), event.get_data())
    assert upload_event.ref == ObjectRef(
        outputs["uploadsBucket"], "scripted.png", str(blob.generation), size=blob.size,
        content_type="image/png",
    )  # fmt: skip
    assert event.data["metageneration"] == "1"
    # The same instant; RFC 3339 lets the emulator drop trailing zeros of the fraction.
    created = datetime.fromisoformat(event.data["timeCreated"].replace("Z", "+00:00"))
    assert created == blob.time_created


@pytest.mark.emulator
def test_the_real_function_answers_500_while_firestore_is_down_and_is_retried_until_too_old(
    gcp_pipeline: GcpDevPipeline, clients: Clients, function_logs: Path
) -> None:
    outputs = gcp_pipeline.outputs()
    environment = {
        **gcp_pipeline.function_environment(),
        "FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{free_port()}",  # nothing listens there
        contract.SDK_RETRY_SECONDS: "1",
    }
    outage = CloudFunctionServer(environment, log=function_logs / "outage.log").start()
    subscriber = subscriber_client(outputs["pubsubEmulatorHost"])
    source = PubSubNotificationSource(
        subscriber, clients.subscribe(gcp_pipeline.resources.trigger_topic)
    )
    trigger = run_trigger(source, outage.url, RetryPolicy(1, 10, max_event_age_seconds=4))
    try:
        upload(clients, outputs, "during-outage.png", small_png(seed=12), "image/png")
        assert wait_for(lambda: trigger.expired == 1, timeout=30)
        deliveries = trigger.deliveries
        time.sleep(2.5)
    finally:
        trigger.stop()
        subscriber.close()
        outage.stop()
    assert deliveries >= 2 and trigger.redelivered == deliveries - 1
    assert trigger.deliveries == deliveries  # acknowledged: never delivered again
    log = (function_logs / "outage.log").read_text()
    assert "record_store_unavailable" in log


# --- `imagepipe dev --cloud gcp` as a process ------------------------------------------------

DEV_COMMAND = textwrap.dedent("""
    import argparse, sys
    from functions.local import dev
    parser = argparse.ArgumentParser(prog="imagepipe dev")
    dev.add_arguments(parser)
    sys.exit(dev.run(parser.parse_args(sys.argv[1:])))
""")
OUTPUT_KEYS = {
    "cloud",
    "uploadsBucket",
    "uploadsPrefix",
    "renditionsBucket",
    "cdnUrl",
    "recordsCollection",
    "eventsTopic",
    "functionName",
    "apiUrl",
    "storageEndpoint",
    "firestoreEmulatorHost",
    "pubsubEmulatorHost",
    "project",
    # Operations: the settings, the work queue and its stand-in.
    "settings",
    "workQueue",
    "workUrl",
    "workInvoker",
    "cloudTasksEndpoint",
}


def start_dev(outputs_file: Path) -> subprocess.Popen[str]:
    environment = {k: v for k, v in os.environ.items() if not k.endswith("_EMULATOR_HOST")}
    return subprocess.Popen(
        [sys.executable, "-c", DEV_COMMAND, "--cloud", "gcp", "--port", "0", "--api-port", "0",
         "--outputs", str(outputs_file)],
        cwd=PROJECT_ROOT,
        env=environment,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def wait_for_outputs(path: Path, process: subprocess.Popen[str]) -> dict[str, str]:
    def complete() -> dict[str, str] | None:
        if process.poll() is not None:
            raise AssertionError(f"imagepipe dev exited: {process.communicate()}")
        try:
            return json.loads(path.read_text())  # type: ignore[no-any-return]
        except (FileNotFoundError, ValueError):
            return None

    outputs = wait_for(complete, timeout=90)
    assert outputs, "imagepipe dev did not start"
    return outputs  # type: ignore[no-any-return]


def descendants(pid: int) -> dict[int, str]:
    """Every live process under `pid` (children, grandchildren, ...) -> its command line."""
    children: dict[int, list[int]] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (
                (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            )
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: dict[int, str] = {}
    stack = list(children.get(pid, []))
    while stack:
        child = stack.pop()
        found[child] = commands.get(child, "")
        stack.extend(children.get(child, []))
    return found


def still_running(pids: Sequence[int]) -> str:
    """What `ps` still lists of `pids` as running (empty when every one has ended).

    A zombie has ended: an orphaned JVM is reparented to this machine's init, which may be
    slow to reap it (or never does, in some sandboxes)."""
    listed = subprocess.run(
        ["ps", "-o", "pid=,stat=,args=", "-p", ",".join(map(str, pids))],
        capture_output=True,
        text=True,
        check=False,
    )
    running = [line for line in listed.stdout.splitlines() if line.split()[1][:1] != "Z"]
    return "\n".join(running)


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1].strip("/"))


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class DevProcess:
    process: subprocess.Popen[str]
    outputs_file: Path
    started: dict[int, str] = field(default_factory=dict)  # what it started, once running

    def running(self) -> dict[str, str]:
        """Wait for the outputs, then note every process `imagepipe dev` started."""
        outputs = wait_for_outputs(self.outputs_file, self.process)
        self.started = descendants(self.process.pid)
        return outputs


@pytest.fixture
def dev_process(tmp_path: Path) -> Iterator[DevProcess]:
    require_gcp_tools()
    dev_run = DevProcess(start_dev(tmp_path / "outputs.json"), tmp_path / "outputs.json")
    try:
        yield dev_run
    finally:
        if dev_run.process.poll() is None:
            os.killpg(dev_run.process.pid, signal.SIGKILL)
            dev_run.process.wait()
        # A failed test must not leave JVMs behind: end the groups of whatever still runs.
        for pid in dev_run.started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                group = os.getpgid(pid)
                if group != os.getpgrp():
                    os.killpg(group, signal.SIGKILL)


@pytest.mark.emulator
def test_imagepipe_dev_cloud_gcp_writes_its_outputs_and_stops_cleanly_on_sigterm(
    dev_process: DevProcess,
) -> None:
    process, outputs_file = dev_process.process, dev_process.outputs_file
    outputs = dev_process.running()
    assert set(outputs) == OUTPUT_KEYS
    assert outputs["cloud"] == "gcp"
    assert (outputs["uploadsBucket"], outputs["renditionsBucket"]) == (
        "imagepipe-uploads",
        "imagepipe-renditions",
    )
    assert outputs["recordsCollection"] == "images"
    assert outputs["eventsTopic"] == f"projects/{outputs['project']}/topics/imagepipe-events"
    assert outputs["functionName"] == "imagepipe-fn"
    assert outputs["uploadsPrefix"] == ""
    assert outputs["storageEndpoint"].startswith("http://127.0.0.1:")
    started = dev_process.started
    for what in (
        "fake-gcs-server",
        "cloud-firestore-emulator",
        "pubsub-emulator",
        "functions_framework",
    ):
        assert any(what in command for command in started.values()), (what, started)
    java = [pid for pid, command in started.items() if command.startswith("java ")]
    assert len(java) == 2  # the Firestore and Pub/Sub emulators' JVMs
    # `imagepipe upload --dev`'s own client, from the outputs alone: it really runs.
    target = PipelineTarget.from_outputs(outputs, str(outputs_file))
    photo = outputs_file.parent / "alive.png"
    photo.write_bytes(small_png(seed=3))
    [result] = upload_and_wait(target, [Upload(photo, f"{target.uploads_prefix}alive.png")])
    assert result.status == "COMPLETED"

    process.send_signal(signal.SIGTERM)
    stopping = time.monotonic()
    stdout, stderr = process.communicate(timeout=30)
    print(f"\nimagepipe dev --cloud gcp stopped in {time.monotonic() - stopping:.1f} s")
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert stderr.rstrip().endswith("imagepipe dev: stopped")
    assert "emulated GCP" in stdout
    assert f"STORAGE_EMULATOR_HOST={outputs['storageEndpoint']}" in stdout
    assert f"gcloud storage cp photo.jpg gs://{outputs['uploadsBucket']}/" in stdout
    assert not outputs_file.exists()  # a stale file would point at dead ports
    assert still_running(list(started)) == ""
    for address in ("storageEndpoint", "firestoreEmulatorHost", "pubsubEmulatorHost", "cdnUrl"):
        assert not listening(port_of(outputs[address])), address


@pytest.mark.emulator
def test_a_dead_emulator_stops_imagepipe_dev_with_one_line_and_exit_1(
    dev_process: DevProcess,
) -> None:
    process, outputs_file = dev_process.process, dev_process.outputs_file
    outputs = dev_process.running()
    started = dev_process.started
    [storage] = [pid for pid, command in started.items() if "fake-gcs-server" in command]
    os.kill(storage, signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = process.communicate(timeout=30)
    took = time.monotonic() - killed
    print(f"\nimagepipe dev noticed and stopped in {took:.1f} s")
    assert process.returncode == 1, stderr
    assert stderr.splitlines() == [
        f"imagepipe dev: the GCS emulator (fake-gcs-server, pid {storage}) was killed by "
        "SIGKILL; its buckets are gone. Stopping."
    ]
    assert took < 5
    assert not outputs_file.exists()
    assert still_running(list(started)) == ""
    assert not listening(port_of(outputs["pubsubEmulatorHost"]))


@pytest.mark.emulator
def test_nothing_outlives_an_imagepipe_dev_killed_outright(dev_process: DevProcess) -> None:
    outputs = dev_process.running()
    servers = list(dev_process.started)
    [storage] = [pid for pid, command in dev_process.started.items() if "fake-gcs" in command]
    logs = Path(os.readlink(f"/proc/{storage}/fd/1")).parent  # where the emulators log
    assert logs.name.startswith("imagepipe-dev-gcp-")
    killed = time.monotonic()
    dev_process.process.kill()  # SIGKILL: no chance to stop anything itself
    dev_process.process.communicate(timeout=10)
    assert wait_for(lambda: still_running(servers) == "", timeout=15), still_running(servers)
    print(f"\nits servers were ended {time.monotonic() - killed:.1f} s after imagepipe dev")
    assert not listening(port_of(outputs["firestoreEmulatorHost"]))
    assert wait_for(lambda: not logs.exists(), timeout=5)  # nor are their logs left behind
