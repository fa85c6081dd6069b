"""The GCP target's work queue (`CloudTasksWorkQueue`, google-cloud-tasks' real REST client)
against the Cloud Tasks stand-in, which dispatches to a loopback receiver standing in for
the function; and the target's other operations members (settings, the uploads listing).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from components import outputs as output_names
from functions.core.records import ObjectRef
from functions.core.service import Reclaim
from functions.core.settings import PipelineSettings
from functions.core.work import WorkItem
from functions.gcp import contract
from functions.local.cloud_tasks import CloudTasksEmulator, TasksBackoff
from functions.local.gcp_client import CLOUD_TASKS_ENDPOINT_OUTPUT, GcpPipelineTarget
from functions.local.target import PipelineTarget, TargetError

pytestmark = pytest.mark.timeout(60)

QUEUE = "projects/imagepipe-dev/locations/local/queues/imagepipe-work"
INVOKER = "imagepipe-work@imagepipe-dev.iam.gserviceaccount.com"


class Receiver:
    """The function's stand-in: records each request, answers `statuses[key]` in turn (200
    once they run out), holding each answer `hold` seconds, and counts the concurrency."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses: dict[str, list[int]] = {}
        self.hold = 0.0
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.arrived(dict(self.headers), body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def arrived(self, headers: dict[str, str], body: bytes) -> int:
        key = json.loads(body)["key"]
        with self._lock:
            self.requests.append((headers, body))
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            planned = self.statuses.get(key)  # the last one stays: it answers every retry
            status = (planned.pop(0) if len(planned) > 1 else planned[0]) if planned else 200
        time.sleep(self.hold)
        with self._lock:
            self.in_flight -= 1
        return status

    def for_key(self, key: str) -> list[dict[str, str]]:
        with self._lock:
            return [h for h, body in self.requests if json.loads(body)["key"] == key]

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.stop()


@pytest.fixture
def tasks() -> Iterator[CloudTasksEmulator]:
    emulator = CloudTasksEmulator(
        QUEUE,
        max_concurrent_dispatches=2,
        backoff=TasksBackoff(0.05, 0.2),
        dispatch_timeout_seconds=5,
    )
    emulator.start()
    yield emulator
    emulator.stop(timeout=5)


def outputs(tasks: CloudTasksEmulator, receiver: Receiver, **extra: str) -> dict[str, str]:
    """What `imagepipe dev --cloud gcp` writes; the storage and database are never reached."""
    closed = "127.0.0.1:9"
    return {
        "cloud": "gcp",
        output_names.UPLOADS_BUCKET: "uploads",
        output_names.CDN_URL: "http://127.0.0.1:9",
        output_names.RECORDS_COLLECTION: "images",
        output_names.EVENTS_TOPIC: "projects/imagepipe-dev/topics/events",
        output_names.WORK_QUEUE: tasks.queue,
        output_names.WORK_URL: receiver.url,
        output_names.WORK_INVOKER: INVOKER,
        output_names.SETTINGS: PipelineSettings().to_json(),
        CLOUD_TASKS_ENDPOINT_OUTPUT: tasks.url,
        "storageEndpoint": f"http://{closed}",
        "firestoreEmulatorHost": closed,
        "pubsubEmulatorHost": closed,
        "project": "imagepipe-dev",
        **extra,
    }


def target_of(outputs: dict[str, str]) -> GcpPipelineTarget:
    target = PipelineTarget.from_outputs(outputs, "the test outputs")
    assert isinstance(target, GcpPipelineTarget)
    return target


def item(key: str, reclaim: frozenset[Reclaim] = frozenset()) -> WorkItem:
    return WorkItem(ObjectRef("uploads", key, "1700000000000001", 68), reclaim)


def test_each_item_is_posted_once_as_a_work_cloud_event_with_cloud_tasks_headers(
    tasks: CloudTasksEmulator, receiver: Receiver
) -> None:
    queue = target_of(outputs(tasks, receiver)).work_queue()
    items = [item(f"incoming/{n}.png") for n in range(5)] + [
        item("incoming/stale.png", frozenset({Reclaim.STALE}))
    ]
    queue.enqueue(items)
    assert tasks.wait_idle(10)
    assert (tasks.created, tasks.dispatches, tasks.acknowledged) == (6, 6, 6)
    bodies = sorted(WorkItem.from_json(body).to_json() for _, body in receiver.requests)
    assert bodies == sorted(i.to_json() for i in items)
    headers = receiver.for_key("incoming/stale.png")[0]
    assert headers["ce-type"] == contract.WORK_EVENT_TYPE
    assert headers["ce-specversion"] == "1.0"
    assert headers["Content-Type"] == "application/json"
    assert headers["X-CloudTasks-QueueName"] == "imagepipe-work"
    assert headers[contract.TASK_RETRY_COUNT_HEADER] == "0"
    assert headers["X-CloudTasks-TaskExecutionCount"] == "0"
    assert len({h["ce-id"] for h, _ in receiver.requests}) == 6  # one event per task


def test_the_task_carries_an_oidc_token_for_the_function_as_the_invoker(
    tasks: CloudTasksEmulator, receiver: Receiver
) -> None:
    queue = target_of(outputs(tasks, receiver)).work_queue()
    task = queue.task(item("incoming/a.png"))
    request = task["http_request"]
    assert request["oidc_token"] == {"service_account_email": INVOKER, "audience": receiver.url}
    assert request["url"] == receiver.url
    assert WorkItem.from_json(request["body"]) == item("incoming/a.png")


def test_a_failing_task_is_retried_with_its_retry_count_then_acknowledged(
    tasks: CloudTasksEmulator, receiver: Receiver
) -> None:
    receiver.statuses["incoming/flaky.png"] = [500, 409, 200]
    target_of(outputs(tasks, receiver)).work_queue().enqueue([item("incoming/flaky.png")])
    assert tasks.wait_idle(10)
    seen = receiver.for_key("incoming/flaky.png")
    assert [h[contract.TASK_RETRY_COUNT_HEADER] for h in seen] == ["0", "1", "2"]
    # The handler's earlier answers, 5xx excluded (Cloud Tasks' definition).
    assert [h["X-CloudTasks-TaskExecutionCount"] for h in seen] == ["0", "0", "1"]
    assert len({h["ce-id"] for h in seen}) == 1  # a retry is the same event
    assert (tasks.retried, tasks.acknowledged, tasks.dropped) == (2, 1, 0)


def test_a_task_that_keeps_failing_is_dropped_after_the_queues_max_attempts(
    tasks: CloudTasksEmulator, receiver: Receiver
) -> None:
    receiver.statuses["incoming/broken.png"] = [500]
    target_of(outputs(tasks, receiver)).work_queue().enqueue([item("incoming/broken.png")])
    assert tasks.wait_idle(10)
    assert len(receiver.for_key("incoming/broken.png")) == contract.WORK_MAX_ATTEMPTS
    assert (tasks.dispatches, tasks.dropped, tasks.pending) == (contract.WORK_MAX_ATTEMPTS, 1, 0)


def test_no_more_than_max_concurrent_dispatches_run_at_once(
    tasks: CloudTasksEmulator, receiver: Receiver
) -> None:
    receiver.hold = 0.2
    target_of(outputs(tasks, receiver)).work_queue().enqueue(
        [item(f"incoming/{n}.png") for n in range(8)]
    )
    assert tasks.wait_idle(15)
    assert receiver.most_in_flight == tasks.max_concurrent_dispatches == 2
    assert tasks.dispatches == 8


def test_an_unknown_queue_is_not_found_and_nothing_is_dispatched(
    tasks: CloudTasksEmulator, receiver: Receiver
) -> None:
    from google.api_core.exceptions import NotFound

    other = outputs(tasks, receiver, **{output_names.WORK_QUEUE: QUEUE + "-other"})
    with pytest.raises(NotFound, match="Queue does not exist"):
        target_of(other).work_queue().enqueue([item("incoming/a.png")])
    assert tasks.created == 0


def test_a_named_task_is_refused_the_second_time(
    tasks: CloudTasksEmulator, receiver: Receiver
) -> None:
    from google.api_core.exceptions import Conflict

    target = target_of(outputs(tasks, receiver))
    client = target.client("tasks")
    task = {**target.work_queue().task(item("incoming/a.png")), "name": f"{QUEUE}/tasks/once"}
    created = client.create_task(parent=QUEUE, task=task)
    assert created.name == f"{QUEUE}/tasks/once"
    with pytest.raises(Conflict, match="already exists"):
        client.create_task(parent=QUEUE, task=task)


def test_bad_requests_get_one_json_error_each(tasks: CloudTasksEmulator) -> None:
    url = f"{tasks.url}/v2/{QUEUE}/tasks"
    cases = {
        b"not json": "not JSON",
        b'{"nothing": 1}': "no task",
        b'{"task": {}}': "no httpRequest",
        b'{"task": {"httpRequest": {"url": "http://127.0.0.1:9/", "body": "%%%"}}}': "base64",
        b'{"task": {"httpRequest": {"url": "http://127.0.0.1:9/", "httpMethod": 99}}}': "99",
    }
    for body, message in cases.items():
        response = requests.post(url, data=body, timeout=5)
        assert response.status_code == 400, body
        error = response.json()["error"]
        assert error["status"] == "INVALID_ARGUMENT" and message in error["message"], body
    assert requests.post(f"{tasks.url}/v2/elsewhere", data=b"{}", timeout=5).status_code == 404
    assert tasks.created == 0


def test_the_body_arrives_as_sent(tasks: CloudTasksEmulator, receiver: Receiver) -> None:
    body = item("incoming/ünïcode name.png").to_json().encode()
    task = {"httpRequest": {"url": receiver.url, "body": base64.b64encode(body).decode()}}
    answer = requests.post(f"{tasks.url}/v2/{QUEUE}/tasks", json={"task": task}, timeout=5)
    assert answer.status_code == 200 and answer.json()["name"].startswith(f"{QUEUE}/tasks/")
    assert tasks.wait_idle(10)
    assert receiver.requests[0][1] == body


def test_stop_is_bounded_while_a_dispatch_hangs(receiver: Receiver) -> None:
    emulator = CloudTasksEmulator(QUEUE, max_concurrent_dispatches=1, dispatch_timeout_seconds=30)
    emulator.start()
    receiver.hold = 5
    target_of(outputs(emulator, receiver)).work_queue().enqueue([item("incoming/slow.png")])
    deadline = time.monotonic() + 5
    while not receiver.requests and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    emulator.stop(timeout=1)
    assert time.monotonic() - started < 3


# --- the target's other operations members -------------------------------------------------


def test_settings_come_from_the_settings_output(
    tasks: CloudTasksEmulator, receiver: Receiver
) -> None:
    settings = dataclasses.replace(PipelineSettings(), originals="archive")
    target = target_of(outputs(tasks, receiver, **{output_names.SETTINGS: settings.to_json()}))
    assert target.settings == settings
    bare = outputs(tasks, receiver)
    del bare[output_names.SETTINGS]
    with pytest.raises(TargetError, match="no settings output"):
        _ = target_of(bare).settings
    with pytest.raises(TargetError, match="settings output is not usable"):
        _ = target_of(outputs(tasks, receiver, **{output_names.SETTINGS: "{"})).settings


def test_a_stack_without_the_work_queue_outputs_says_so(
    tasks: CloudTasksEmulator, receiver: Receiver
) -> None:
    old = outputs(tasks, receiver)
    del old[output_names.WORK_QUEUE], old[output_names.WORK_INVOKER]
    with pytest.raises(TargetError, match="no workQueue, workInvoker output"):
        target_of(old).work_queue()
    without_stand_in = outputs(tasks, receiver)
    del without_stand_in[CLOUD_TASKS_ENDPOINT_OUTPUT]
    with pytest.raises(TargetError, match=CLOUD_TASKS_ENDPOINT_OUTPUT):
        target_of(without_stand_in).work_queue()


def test_gcp_keeps_no_dead_letter_queue(tasks: CloudTasksEmulator, receiver: Receiver) -> None:
    assert target_of(outputs(tasks, receiver)).dead_letters() is None
