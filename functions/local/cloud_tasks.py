"""The stand-in for Cloud Tasks: the work queue's REST API on 127.0.0.1, and its dispatch of
each task to the function, as Cloud Tasks does it.

It serves the one call the clients make, CreateTask, in the shape google-cloud-tasks' REST
transport sends it (`POST /v2/projects/*/locations/*/queues/*/tasks`, a JSON body
`{"task": {"httpRequest": {...}}}` in camelCase, the body base64, the method an enum
number or name) and answers the Task as JSON, errors in Google's JSON error shape (an
unknown queue is NOT_FOUND, a task name used before ALREADY_EXISTS). The tasks are
then dispatched as Cloud Tasks dispatches an HTTP task:

- at most `max_concurrent_dispatches` at once (the queue's rate limit of that name);
- the task's own headers, plus Cloud Tasks' `X-CloudTasks-QueueName`, `-TaskName`,
  `-TaskRetryCount` (0 on the first attempt) and `-TaskExecutionCount` (the handler's
  earlier answers that were not 5xx);
- a 2xx acknowledges the task; anything else (or no answer within the dispatch deadline)
  is retried with exponential backoff, `max_attempts` attempts in all (the queue's
  retry_config), after which the task is dropped, with a log line, as Cloud Tasks drops it.

The task's OIDC token is not minted here: on GCP Cloud Tasks signs one as the invoker
account and Cloud Run checks it before the function runs; locally nothing checks it, so
the stand-in only keeps the token's fields on the task.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import json
import logging
import re
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from time import monotonic
from typing import Any

from functions.gcp.contract import DEFAULT_BACKFILL_CONCURRENCY, WORK_MAX_ATTEMPTS
from functions.local.cdn import BoundedThreadingHTTPServer, LoopbackServer
from functions.local.emulated_aws import HOST
from functions.local.eventarc import Answer
from functions.local.workers import WorkerPool

log = logging.getLogger("imagepipe.dev")

# google.cloud.tasks_v2.HttpMethod, by number (the REST transport sends enums as numbers).
HTTP_METHODS = {1: "POST", 2: "GET", 3: "HEAD", 4: "PUT", 5: "DELETE", 6: "PATCH", 7: "OPTIONS"}
_TASKS_PATH = re.compile(r"^/v2/(projects/[^/]+/locations/[^/]+/queues/[^/]+)/tasks$")
MAX_REQUEST_BYTES = 1_200_000  # Cloud Tasks takes tasks of up to 1 MB
WAIT_SECONDS = 0.2  # how long an idle dispatcher waits for a task: also how quickly stop() acts
DISPATCH = "dispatching a task"


@dataclass(frozen=True)
class TasksBackoff:
    """The queue's retry_config: the wait after the n-th failed attempt doubles, capped."""

    min_seconds: float = 0.5
    max_seconds: float = 10.0

    def delay(self, failed_attempts: int) -> float:
        return min(self.min_seconds * 2 ** (failed_attempts - 1), self.max_seconds)


@dataclass
class QueuedTask:
    name: str  # projects/<p>/locations/<l>/queues/<q>/tasks/<id>
    url: str
    method: str
    headers: dict[str, str]
    body: bytes
    resource: dict[str, Any]  # the Task as CreateTask answered it
    attempts: int = 0  # dispatches so far
    responses: int = 0  # answers that were not 5xx (X-CloudTasks-TaskExecutionCount)


@dataclass
class _Schedule:
    """Tasks by when they are next due; `pending` counts those not yet acknowledged or
    dropped (dispatches in flight included)."""

    due: list[tuple[float, int, QueuedTask]] = field(default_factory=list)
    pending: int = 0
    order: itertools.count = field(default_factory=itertools.count)


class CloudTasksEmulator(LoopbackServer):
    """One Cloud Tasks queue, `queue` (projects/<p>/locations/<l>/queues/<q>), on
    127.0.0.1:`port` (0: any free port): `url` is the `api_endpoint` its clients are given.

    `dispatch_timeout_seconds` is the task's dispatch deadline (Cloud Tasks' default is
    ten minutes; the dev pipeline gives the function's timeout).
    """

    def __init__(
        self,
        queue: str,
        *,
        port: int = 0,
        max_concurrent_dispatches: int = DEFAULT_BACKFILL_CONCURRENCY,
        max_attempts: int = WORK_MAX_ATTEMPTS,
        backoff: TasksBackoff = TasksBackoff(),
        dispatch_timeout_seconds: float = 60,
    ) -> None:
        if not re.fullmatch(r"projects/[^/]+/locations/[^/]+/queues/[^/]+", queue):
            raise ValueError(f"{queue!r} is not projects/<p>/locations/<l>/queues/<q>")
        self.queue = queue
        self.max_attempts = max_attempts
        self.backoff = backoff
        self._lock = threading.Condition()
        self._schedule = _Schedule()
        self._names: set[str] = set()
        # What happened, for tests, the bench and the log.
        self.created = 0
        self.dispatches = 0  # every POST to a task's URL: the function's invocations
        self.acknowledged = 0
        self.retried = 0
        self.dropped = 0
        httpd = BoundedThreadingHTTPServer((HOST, port), _handler_class(self), max_connections=64)
        super().__init__(httpd, "cloud-tasks")
        self._dispatchers = _Dispatchers(self, max_concurrent_dispatches, dispatch_timeout_seconds)

    # --- the API ------------------------------------------------------------------------------

    def create_task(self, queue: str, task: Mapping[str, Any]) -> dict[str, Any]:
        """CreateTask: the stored Task, or `ApiError`."""
        if queue != self.queue:
            raise ApiError(404, "NOT_FOUND", f"Queue does not exist: {queue[:200]}")
        request = task.get("httpRequest")
        if not isinstance(request, Mapping) or not isinstance(request.get("url"), str):
            raise ApiError(400, "INVALID_ARGUMENT", "the task has no httpRequest with a url")
        method = request.get("httpMethod", "POST")
        method = HTTP_METHODS.get(method, method) if isinstance(method, int) else str(method)
        if method not in HTTP_METHODS.values():
            raise ApiError(400, "INVALID_ARGUMENT", f"httpMethod {method!r} is not one of them")
        try:
            body = base64.b64decode(request.get("body") or "", validate=True)
        except ValueError:
            raise ApiError(400, "INVALID_ARGUMENT", "httpRequest.body is not base64") from None
        headers = request.get("headers") or {}
        if not isinstance(headers, Mapping):
            raise ApiError(400, "INVALID_ARGUMENT", "httpRequest.headers is not a map")
        name = task.get("name") or f"{queue}/tasks/{uuid.uuid4().int % 10**19}"
        if not str(name).startswith(f"{queue}/tasks/"):
            raise ApiError(400, "INVALID_ARGUMENT", f"task name {name!r} is not in {queue}")
        now = _rfc3339(datetime.now(UTC))
        resource = {
            "name": name,
            "httpRequest": {k: v for k, v in request.items() if k != "body"},
            "scheduleTime": now,
            "createTime": now,
            "dispatchDeadline": f"{self._dispatchers.timeout:g}s",
            "dispatchCount": 0,
            "responseCount": 0,
            "view": "BASIC",  # without the body, as Cloud Tasks answers by default
        }
        text_headers = {str(k): str(v) for k, v in headers.items()}
        queued = QueuedTask(name, request["url"], method, text_headers, body, resource)
        with self._lock:
            if name in self._names:  # Cloud Tasks remembers a name for about an hour
                raise ApiError(409, "ALREADY_EXISTS", f"Requested entity already exists: {name}")
            self._names.add(name)
            self.created += 1
            self._schedule.pending += 1
            self._push(queued, monotonic())
        return resource

    # --- dispatch ---------------------------------------------------------------------------

    def _push(self, task: QueuedTask, due: float) -> None:
        heapq.heappush(self._schedule.due, (due, next(self._schedule.order), task))
        self._lock.notify()

    def _take(self, wait: float) -> QueuedTask | None:
        """The next task that is due, waiting up to `wait` seconds for one."""
        deadline = monotonic() + wait
        with self._lock:
            while True:
                now = monotonic()
                if self._schedule.due and self._schedule.due[0][0] <= now:
                    task = heapq.heappop(self._schedule.due)[2]
                    task.attempts += 1
                    self.dispatches += 1
                    return task
                if now >= deadline:
                    return None
                next_due = self._schedule.due[0][0] if self._schedule.due else deadline
                self._lock.wait(max(0.0, min(deadline, next_due) - now))

    def _answered(self, task: QueuedTask, answer: Answer) -> None:
        with self._lock:
            if answer.status is not None and answer.status < 500:
                task.responses += 1
            if answer.acknowledges:
                self.acknowledged += 1
                self._schedule.pending -= 1
                self._lock.notify_all()
                return
            if task.attempts >= self.max_attempts:
                self.dropped += 1
                self._schedule.pending -= 1
                self._lock.notify_all()
                log.error(
                    "task %s: %s on attempt %d of %d; dropped, as Cloud Tasks drops it",
                    task.name.rpartition("/")[2],
                    answer,
                    task.attempts,
                    self.max_attempts,
                )
                return
            self.retried += 1
            delay = self.backoff.delay(task.attempts)
            self._push(task, monotonic() + delay)
        log.warning(
            "task %s: %s (attempt %d); retried in %g s",
            task.name.rpartition("/")[2],
            answer,
            task.attempts,
            delay,
        )

    @property
    def pending(self) -> int:
        """Tasks neither acknowledged nor dropped yet."""
        with self._lock:
            return self._schedule.pending

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no task is pending; False when `timeout` seconds passed first."""
        deadline = monotonic() + timeout
        with self._lock:
            while self._schedule.pending:
                left = deadline - monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        super().start()
        self._dispatchers.start()

    def stop(self, timeout: float = 30) -> None:
        """Stop taking tasks and dispatching; dispatches in flight get up to `timeout` s.
        What was not dispatched is forgotten, as the emulators forget their state."""
        super().stop()
        self._dispatchers.stop(timeout)

    @property
    def dispatchers_alive(self) -> int:
        return self._dispatchers.workers_alive

    @property
    def max_concurrent_dispatches(self) -> int:
        return self._dispatchers.count


class _Dispatchers(WorkerPool):
    """`count` threads, each one dispatch at a time: the queue's max concurrent dispatches."""

    def __init__(self, queue: CloudTasksEmulator, count: int, timeout: float) -> None:
        super().__init__("cloud-tasks-dispatch", count, log, DISPATCH)
        self._queue = queue
        self.count = count
        self.timeout = timeout

    def _session(self) -> Any:
        import requests

        return requests.Session()

    def _work_once(self, session: Any) -> None:
        task = self._queue._take(WAIT_SECONDS)
        if task is None:
            return
        queue_id = self._queue.queue.rpartition("/")[2]
        headers = {
            **task.headers,
            "X-CloudTasks-QueueName": queue_id,
            "X-CloudTasks-TaskName": task.name.rpartition("/")[2],
            "X-CloudTasks-TaskRetryCount": str(task.attempts - 1),
            "X-CloudTasks-TaskExecutionCount": str(task.responses),
            "User-Agent": "Google-Cloud-Tasks",
        }
        answer = Answer(None, "the dispatch failed")  # a bug of ours below: a failed attempt
        try:
            answer = self._post(session, task, headers)
        finally:
            self._queue._answered(task, answer)  # never left pending, whatever happened

    def _post(self, session: Any, task: QueuedTask, headers: Mapping[str, str]) -> Answer:
        import requests

        try:
            response = session.request(
                task.method, task.url, data=task.body, headers=dict(headers), timeout=self.timeout
            )
        except requests.Timeout:
            return Answer(None, f"no answer within the dispatch deadline of {self.timeout:g} s")
        except requests.RequestException as error:
            return Answer(None, f"no answer ({type(error).__name__})")
        response.close()
        return Answer(response.status_code, f"HTTP {response.status_code}")


class ApiError(Exception):
    """An error answer in Google's JSON shape, which google-api-core turns into its
    exception for that status (NotFound, AlreadyExists, InvalidArgument)."""

    def __init__(self, code: int, status: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message

    def body(self) -> bytes:
        error = {"code": self.code, "message": self.message, "status": self.status}
        return json.dumps({"error": error}).encode()


def _handler_class(queue: CloudTasksEmulator) -> type[BaseHTTPRequestHandler]:
    class CloudTasksRequestHandler(BaseHTTPRequestHandler):
        server_version = "imagepipe-dev-cloud-tasks"
        protocol_version = "HTTP/1.1"
        timeout = 30

        def do_POST(self) -> None:
            path = self.path.partition("?")[0]
            try:
                match = _TASKS_PATH.match(path)
                if match is None:
                    raise ApiError(404, "NOT_FOUND", f"no such method: POST {path[:200]}")
                length = int(self.headers.get("Content-Length") or 0)
                if not 0 < length <= MAX_REQUEST_BYTES:
                    raise ApiError(400, "INVALID_ARGUMENT", "the request has no JSON body")
                try:
                    request = json.loads(self.rfile.read(length))
                except ValueError:
                    raise ApiError(400, "INVALID_ARGUMENT", "the body is not JSON") from None
                task = request.get("task") if isinstance(request, dict) else None
                if not isinstance(task, dict):
                    raise ApiError(400, "INVALID_ARGUMENT", "the body has no task")
                self._answer(200, json.dumps(queue.create_task(match.group(1), task)).encode())
            except ApiError as error:
                self._answer(error.code, error.body())

        def do_GET(self) -> None:
            self._answer(404, ApiError(404, "NOT_FOUND", "only CreateTask is served").body())

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("cloud-tasks: " + format, *args)

    return CloudTasksRequestHandler


def _rfc3339(instant: datetime) -> str:
    return instant.isoformat().replace("+00:00", "Z")
