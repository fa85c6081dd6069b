"""The stand-in for Eventarc: the uploads bucket's Pub/Sub notifications, delivered to the
function over HTTP as the `object.v1.finalized` (and `object.v1.deleted`) CloudEvents
Eventarc sends: the component's two triggers on the one function.

Eventarc's storage trigger is a Pub/Sub notification on the bucket and a push
subscription to the function; the GCS emulator publishes the notification, and these
workers play the push subscription: pull one message, POST it as a binary-mode
CloudEvent (`ce-*` headers, the object resource as the JSON body), and honour the
answer as Eventarc does with `RETRY_POLICY_RETRY`:

- 2xx: acknowledged (done, a permanent failure recorded FAILED, or a duplicate);
- anything else (500 for a transient error, 409 while another delivery holds a live
  claim, no answer at all): redelivered with exponential backoff, capped (1 s doubling to
  10 s here, 10 s to 600 s on GCP), for as long as Eventarc retries an event: 24 hours.
  The function's own limit is the stack's `maxEventAgeSeconds`, shorter: the first
  delivery past it is answered 200 with the record FAILED `retries_exhausted`, so the
  24 hours only matter when the function cannot record anything at all.

Redelivery is Pub/Sub's own: a failed message's ack deadline is set to the backoff, so
the subscription hands it out again when the backoff ends; a worker that died mid-attempt
loses nothing, the message comes back when its ack deadline runs out. Attempts are
counted per message in memory, which only sets the backoff. The CloudEvent's id and time
are the notification's, so they stay the same on every redelivery, as on GCP: the time
is how the function measures the event's age.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from functions.gcp.contract import DELETE_EVENT_TYPE, UPLOAD_EVENT_TYPE
from functions.local.workers import WorkerPool

log = logging.getLogger("imagepipe.dev")

POLL_SECONDS = 1.0  # one pull's wait: also how quickly stop() is noticed
# Pauses after 1, 2, 3 and more failed pulls in a row: brief, growing, bounded.
FINALIZE = "OBJECT_FINALIZE"  # the notification's eventType for a new object version
DELETE = "OBJECT_DELETE"  # ... for a version deleted (or overwritten) for good
# What Eventarc delivers for each notification type the triggers take.
EVENT_TYPES = {FINALIZE: UPLOAD_EVENT_TYPE, DELETE: DELETE_EVENT_TYPE}
PULL = "pulling from the trigger subscription"
ACKNOWLEDGE = "acknowledging a delivered event (it comes back after its ack deadline)"
DELAY_RETRY = "delaying a redelivery (it comes back after its ack deadline instead)"
DELIVER = "delivering an event"  # anything else: a bug here, logged with its traceback once


# How long Eventarc retries an undelivered event (RETRY_POLICY_RETRY), whatever the stack's
# maxEventAgeSeconds says: that one is the function's, which records the event FAILED.
EVENTARC_RETRY_SECONDS = 24 * 3600


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff between deliveries of one event, and how long it is retried."""

    initial_seconds: float = 1.0
    maximum_seconds: float = 10.0
    max_event_age_seconds: float = EVENTARC_RETRY_SECONDS

    def delay(self, failed_attempts: int) -> float:
        """The wait after the `failed_attempts`-th failed delivery (1: the first)."""
        return min(self.initial_seconds * 2 ** (failed_attempts - 1), self.maximum_seconds)


@dataclass(frozen=True)
class Notification:
    """One pulled Pub/Sub message of the bucket's notification topic."""

    ack_id: str
    message_id: str
    attributes: Mapping[str, str]
    data: bytes
    publish_time: datetime


class NotificationSource(Protocol):
    """Where the notifications come from: the trigger subscription (or a fake in tests)."""

    def pull(self, max_messages: int, timeout: float) -> Sequence[Notification]: ...

    def acknowledge(self, ack_id: str) -> None: ...

    def redeliver_after(self, ack_id: str, seconds: float) -> None: ...


class PubSubNotificationSource:
    """The trigger subscription, through google-cloud-pubsub's synchronous pull."""

    def __init__(self, subscriber: Any, subscription: str) -> None:
        self._subscriber = subscriber
        self._subscription = subscription

    def pull(self, max_messages: int, timeout: float) -> Sequence[Notification]:
        from google.api_core.exceptions import DeadlineExceeded

        try:
            response = self._subscriber.pull(
                subscription=self._subscription,
                max_messages=max_messages,
                timeout=timeout,
                retry=None,
            )
        except DeadlineExceeded:  # nothing arrived while the pull waited
            return []
        return [
            Notification(
                ack_id=received.ack_id,
                message_id=received.message.message_id,
                attributes=dict(received.message.attributes),
                data=bytes(received.message.data),
                publish_time=received.message.publish_time,
            )
            for received in response.received_messages
        ]

    def acknowledge(self, ack_id: str) -> None:
        self._subscriber.acknowledge(subscription=self._subscription, ack_ids=[ack_id])

    def redeliver_after(self, ack_id: str, seconds: float) -> None:
        # Pub/Sub takes whole seconds; rounding up never redelivers before the backoff ends.
        self._subscriber.modify_ack_deadline(
            subscription=self._subscription,
            ack_ids=[ack_id],
            ack_deadline_seconds=max(1, int(-(-seconds // 1))),
        )


class NotAnUploadEvent(ValueError):
    """A notification that is not an object's finalize or delete in JSON_API_V1: nothing to
    deliver."""


def finalized_cloud_event(notification: Notification) -> tuple[dict[str, str], bytes]:
    """The binary-mode CloudEvent (headers, body) Eventarc delivers for a finalize (or delete)
    notification."""
    attributes = notification.attributes
    event_type = EVENT_TYPES.get(attributes.get("eventType", ""))
    if event_type is None:
        raise NotAnUploadEvent(
            f"event type {attributes.get('eventType')!r} is not {' or '.join(EVENT_TYPES)}"
        )
    if attributes.get("payloadFormat", "JSON_API_V1") != "JSON_API_V1":
        raise NotAnUploadEvent(f"payload format {attributes['payloadFormat']!r} has no object")
    try:
        resource = json.loads(notification.data)
    except ValueError:
        raise NotAnUploadEvent("the payload is not JSON") from None
    if not isinstance(resource, dict) or not resource.get("bucket") or not resource.get("name"):
        raise NotAnUploadEvent("the payload is not an object resource with bucket and name")
    data = dict(resource)
    # The JSON API writes int64 fields as strings; an emulator may not.
    for field in ("generation", "metageneration", "size"):
        if data.get(field) is not None:
            data[field] = str(data[field])
    # A finalized object is a new version, whose first metageneration is 1; fake-gcs-server
    # leaves the field out of its notifications.
    data.setdefault("metageneration", "1")
    bucket, name = str(data["bucket"]), str(data["name"])
    time = attributes.get("eventTime") or _rfc3339(notification.publish_time)
    headers = {
        "ce-specversion": "1.0",
        "ce-id": notification.message_id,
        "ce-type": event_type,
        "ce-source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
        "ce-subject": f"objects/{name}",
        "ce-time": time,
        "ce-bucket": bucket,  # the attribute an Eventarc trigger filters on
        "Content-Type": "application/json",
    }
    return headers, json.dumps(data).encode()


def event_age_seconds(headers: Mapping[str, str], now: datetime | None = None) -> float:
    """How long ago the event happened, by its `ce-time` (the same on every redelivery)."""
    when = datetime.fromisoformat(headers["ce-time"].replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return ((now or datetime.now(UTC)) - when).total_seconds()


def _rfc3339(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Answer:
    """How the function answered one delivery: its HTTP status, or None when it did not."""

    status: int | None
    text: str

    @property
    def acknowledges(self) -> bool:
        """A push subscription takes any 2xx as an acknowledgement, anything else as a nack."""
        return self.status is not None and 200 <= self.status < 300

    def __str__(self) -> str:
        return self.text


class EventarcTrigger(WorkerPool):
    """A small pool of threads delivering the trigger subscription's events to `function_url`.

    `timeout_seconds` is the function's own: a delivery unanswered by then has failed.
    """

    def __init__(
        self,
        source: NotificationSource,
        function_url: str,
        *,
        retry: RetryPolicy = RetryPolicy(),
        timeout_seconds: float = 60,
        workers: int = 3,
    ) -> None:
        self._source = source
        self._url = function_url
        self._retry = retry
        self._timeout = timeout_seconds
        super().__init__("eventarc-worker", workers, log, DELIVER)
        self._lock = threading.Lock()
        self._failed_attempts: dict[str, int] = {}  # message id -> failed deliveries so far
        # What happened, for tests and the log: deliveries made, and how each ended.
        self.deliveries = 0
        self.acknowledged = 0
        self.redelivered = 0
        self.expired = 0

    def _session(self) -> Any:
        import requests

        return requests.Session()

    def _work_once(self, session: Any) -> None:
        for notification in self._call(PULL, self._source.pull, 1, POLL_SECONDS):
            self._deliver(session, notification)

    def _deliver(self, session: Any, notification: Notification) -> None:
        try:
            headers, body = finalized_cloud_event(notification)
        except NotAnUploadEvent as error:
            # Eventarc's trigger only matches finalized objects; the rest never reaches it.
            log.info("notification %s ignored: %s", notification.message_id, error)
            self._call(ACKNOWLEDGE, self._source.acknowledge, notification.ack_id)
            return
        with self._lock:
            self.deliveries += 1
        answer = self._post(session, headers, body)
        if answer.acknowledges:
            self._forget(notification.message_id)
            self._call(ACKNOWLEDGE, self._source.acknowledge, notification.ack_id)
            with self._lock:
                self.acknowledged += 1
            return
        subject = headers["ce-subject"].removeprefix("objects/")
        age = event_age_seconds(headers)
        if age >= self._retry.max_event_age_seconds:
            log.error(
                "event %s for %s: %s, %.0f s after the upload, past the maximum event age of"
                " %.0f s; acknowledged, not retried",
                notification.message_id,
                subject,
                answer,
                age,
                self._retry.max_event_age_seconds,
            )
            self._forget(notification.message_id)
            self._call(ACKNOWLEDGE, self._source.acknowledge, notification.ack_id)
            with self._lock:
                self.expired += 1
            return
        with self._lock:
            failed = self._failed_attempts.get(notification.message_id, 0) + 1
            self._failed_attempts[notification.message_id] = failed
        delay = self._retry.delay(failed)
        log.warning(
            "event %s for %s: %s (attempt %d); redelivered in %g s",
            notification.message_id,
            subject,
            answer,
            failed,
            delay,
        )
        self._call(DELAY_RETRY, self._source.redeliver_after, notification.ack_id, delay)
        with self._lock:
            self.redelivered += 1

    def _post(self, session: Any, headers: Mapping[str, str], body: bytes) -> Answer:
        import requests

        try:
            response = session.post(
                self._url, data=body, headers=dict(headers), timeout=self._timeout
            )
        except requests.Timeout:
            return Answer(None, f"no answer within {self._timeout:g} s")
        except requests.RequestException as error:
            return Answer(None, f"no answer ({type(error).__name__})")
        response.close()
        return Answer(response.status_code, f"HTTP {response.status_code}")

    def _forget(self, message_id: str) -> None:
        with self._lock:
            self._failed_attempts.pop(message_id, None)
