"""The local client of a pipeline on GCP: Cloud Storage for uploads, the Firestore records
collection, and the Pub/Sub events topic followed through a subscription of the command's own.

On the dev pipeline every client is built pointing at the emulators the outputs name,
explicitly, never through variables left in the environment (other code in the process
would meet them); on a deployed stack with Application Default Credentials. The
google-cloud packages are imported on first use: they take about a second.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components import outputs as output_names
from functions.core.records import ImageRecord, ObjectRef, Status, record_id
from functions.gcp.contract import (
    OBJECT_FIELD,
    RECORDS_COLLECTION_NAME,
    RECORDS_INDEXES,
    STATUS_INDEX,
    WORK_EVENT_TYPE,
)
from functions.local.target import (
    DeadLetterQueue,
    EventFeed,
    PipelineTarget,
    TargetError,
    content_type_of,
    records_in_events,
    required_outputs,
    settings_output,
)

if TYPE_CHECKING:
    from functions.core.work import WorkItem

BATCH_GET_LIMIT = 100  # documents per BatchGetDocuments, as many as DynamoDB takes
# The emulator outputs: all three or none, so no client can reach a real service by default
# while the others talk to this machine.
EMULATOR_OUTPUTS = ("storageEndpoint", "firestoreEmulatorHost", "pubsubEmulatorHost")
# The dev pipeline's Cloud Tasks stand-in (`functions.local.cloud_tasks`), the work queue's
# `api_endpoint`; written beside the three above by `imagepipe dev` (only by it).
CLOUD_TASKS_ENDPOINT_OUTPUT = "cloudTasksEndpoint"
LIST_PAGE_SIZE = 1000  # objects per listing page, the most GCS answers
# CreateTask takes one task a request: this many requests are in flight at once.
ENQUEUE_THREADS = 8
FIRESTORE_EMULATOR_VARIABLE = "FIRESTORE_EMULATOR_HOST"
# An empty pull can answer at once (the emulator does): pull again after this, until the wait
# is over, rather than spin.
EMPTY_PULL_PAUSE_SECONDS = 0.05

_environ_lock = threading.Lock()


@dataclass(frozen=True, kw_only=True)
class GcpPipelineTarget(PipelineTarget):
    cloud = "gcp"
    records_collection: str
    project: str | None = None  # None: the project of the default credentials
    storage_endpoint: str | None = None  # http://127.0.0.1:PORT (the dev pipeline's GCS)
    firestore_emulator_host: str | None = None  # host:port
    pubsub_emulator_host: str | None = None  # host:port
    work_queue_name: str | None = None  # projects/<p>/locations/<l>/queues/<q>
    work_url: str | None = None  # what the queue's tasks POST to: the function's URL
    work_invoker: str | None = None  # the account whose OIDC token the tasks carry
    cloud_tasks_endpoint: str | None = None  # dev: http://127.0.0.1:PORT, the stand-in
    list_page_size: int = LIST_PAGE_SIZE

    @classmethod
    def from_outputs(cls, outputs: Mapping[str, Any], origin: str) -> GcpPipelineTarget:
        required_outputs(
            outputs, (output_names.UPLOADS_BUCKET, output_names.CDN_URL), origin, "gcp"
        )
        emulators = {name: outputs.get(name) or None for name in EMULATOR_OUTPUTS}
        if any(emulators.values()) and not all(emulators.values()):
            absent = [name for name, value in emulators.items() if not value]
            raise TargetError(
                f"{origin} names some emulators but not {', '.join(absent)}; "
                "`imagepipe dev` writes all three"
            )
        topic = outputs.get(output_names.EVENTS_TOPIC) or None
        return cls(
            uploads_bucket=str(outputs[output_names.UPLOADS_BUCKET]),
            records_collection=str(
                outputs.get(output_names.RECORDS_COLLECTION) or RECORDS_COLLECTION_NAME
            ),
            cdn_url=str(outputs[output_names.CDN_URL]).rstrip("/"),
            uploads_prefix=str(outputs.get(output_names.UPLOADS_PREFIX) or ""),
            events_topic=topic,
            # A deployed stack exports no project; its topic's name holds it.
            project=outputs.get("project") or _topic_project(topic),
            storage_endpoint=emulators["storageEndpoint"],
            firestore_emulator_host=emulators["firestoreEmulatorHost"],
            pubsub_emulator_host=emulators["pubsubEmulatorHost"],
            settings_json=settings_output(outputs),
            work_queue_name=outputs.get(output_names.WORK_QUEUE) or None,
            work_url=outputs.get(output_names.WORK_URL) or None,
            work_invoker=outputs.get(output_names.WORK_INVOKER) or None,
            cloud_tasks_endpoint=outputs.get(CLOUD_TASKS_ENDPOINT_OUTPUT) or None,
        )

    # Clients are made on first use (resolving a target sends nothing) and shared by the
    # upload threads, as the SDKs allow.
    _clients: dict[str, Any] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )
    _clients_lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False, hash=False
    )

    def client(self, service: str) -> Any:
        """ "storage", "firestore", "subscriber" or "tasks", built once."""
        builders = {
            "storage": self._storage_client,
            "firestore": self._firestore_client,
            "subscriber": self._subscriber_client,
            "tasks": self._tasks_client,
        }
        with self._clients_lock:
            if service not in self._clients:
                self._clients[service] = builders[service]()
            return self._clients[service]

    def _storage_client(self) -> Any:
        from google.cloud import storage

        if not self.is_dev:
            return storage.Client(project=self.project)
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(
            project=self.project,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.storage_endpoint},
        )

    def _firestore_client(self) -> Any:
        from google.cloud import firestore

        if not self.is_dev:
            return firestore.Client(project=self.project)
        from google.auth.credentials import AnonymousCredentials

        # The SDK opens its insecure emulator channel only from this variable, which it
        # reads in the constructor: set for the construction alone, then put back.
        assert self.firestore_emulator_host is not None
        with _environment_variable(FIRESTORE_EMULATOR_VARIABLE, self.firestore_emulator_host):
            return firestore.Client(project=self.project, credentials=AnonymousCredentials())

    def _subscriber_client(self) -> Any:
        from google.cloud import pubsub_v1

        if not self.is_dev:
            return pubsub_v1.SubscriberClient()
        import grpc
        from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

        # An explicit insecure channel is what PUBSUB_EMULATOR_HOST would make; given a
        # channel, the transport looks for no credentials.
        channel = grpc.insecure_channel(self.pubsub_emulator_host)
        return pubsub_v1.SubscriberClient(
            transport=SubscriberGrpcTransport(channel=channel, host=self.pubsub_emulator_host)
        )

    def _tasks_client(self) -> Any:
        from google.cloud import tasks_v2

        if not self.is_dev:
            return tasks_v2.CloudTasksClient()
        from google.auth.credentials import AnonymousCredentials

        if not self.cloud_tasks_endpoint:
            raise TargetError(
                f"the dev pipeline's outputs name no {CLOUD_TASKS_ENDPOINT_OUTPUT} (the work "
                "queue's stand-in); restart `imagepipe dev` so that it writes one"
            )
        # The stand-in speaks the REST API (JSON over HTTP), as plainly as the emulators.
        return tasks_v2.CloudTasksClient(
            transport="rest",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.cloud_tasks_endpoint},
        )

    @property
    def is_dev(self) -> bool:
        return self.storage_endpoint is not None

    @property
    def where(self) -> str:
        if self.is_dev:
            return (
                f"the dev pipeline's emulators ({self.storage_endpoint}, "
                f"{self.firestore_emulator_host}, {self.pubsub_emulator_host})"
            )
        return f"GCP (project {self.project})" if self.project else "GCP"

    @property
    def service_errors(self) -> tuple[type[BaseException], ...]:
        import requests
        from google.api_core.exceptions import GoogleAPIError
        from google.auth.exceptions import GoogleAuthError

        return (GoogleAPIError, GoogleAuthError, requests.RequestException)

    @property
    def records(self) -> FirestoreRecordReader:
        return FirestoreRecordReader(self.client("firestore"), self.records_collection)

    def put(self, path: Path, key: str) -> str:
        blob = self.client("storage").bucket(self.uploads_bucket).blob(key)
        blob.upload_from_filename(str(path), content_type=content_type_of(path))
        # The generation the upload created is the version the function's event names.
        return record_id(self.uploads_bucket, key, str(blob.generation))

    def delete(self, key: str) -> None:
        self.client("storage").bucket(self.uploads_bucket).blob(key).delete()

    def current_record_id(self, key: str) -> str | None:
        blob = self.client("storage").bucket(self.uploads_bucket).get_blob(key)
        if blob is None:
            return None
        return record_id(self.uploads_bucket, key, str(blob.generation))

    def follow_events(self) -> AbstractContextManager[EventFeed | None]:
        if self.is_dev and self.events_topic:
            return PubSubEventFeed.for_target(self)
        return nullcontext()

    def object_url(self, key: str) -> str:
        return f"gs://{self.uploads_bucket}/{key}"

    # --- Operations ---------------------------------------------------------------------------

    def list_uploads(self, prefix: str = "") -> Iterator[ObjectRef]:
        # The iterator asks for the next page only when this one is used up.
        blobs = self.client("storage").list_blobs(
            self.uploads_bucket, prefix=prefix or None, page_size=self.list_page_size
        )
        for blob in blobs:
            yield ObjectRef(
                self.uploads_bucket, blob.name, str(blob.generation), blob.size, blob.content_type
            )

    def work_queue(self) -> CloudTasksWorkQueue:
        names = {
            output_names.WORK_QUEUE: self.work_queue_name,
            output_names.WORK_URL: self.work_url,
            output_names.WORK_INVOKER: self.work_invoker,
        }
        missing = [name for name, value in names.items() if not value]
        if missing:
            raise TargetError(
                f"{self.where} exports no {', '.join(missing)} output; the stack was deployed "
                "before the work queue existed: `pulumi up` it again"
            )
        assert self.work_queue_name and self.work_url and self.work_invoker
        return CloudTasksWorkQueue(
            self.client("tasks"), self.work_queue_name, url=self.work_url, invoker=self.work_invoker
        )

    def dead_letters(self) -> DeadLetterQueue | None:
        # Eventarc keeps no dead-letter queue of storage events here: an event that ran out
        # of retries left its record FAILED `retries_exhausted`, which redrive finds instead.
        return None


def _topic_project(topic: str | None) -> str | None:
    """projects/<project>/topics/<topic> -> <project>."""
    parts = (topic or "").split("/")
    if len(parts) == 4 and parts[0] == "projects" and parts[2] == "topics" and parts[1]:
        return parts[1]
    return None


@contextmanager
def _environment_variable(name: str, value: str) -> Iterator[None]:
    with _environ_lock:
        saved = os.environ.get(name)
        os.environ[name] = value
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = saved


class CloudTasksWorkQueue:
    """The work queue: one Cloud Tasks HTTP task per item, posting the item to the function
    as a binary-mode CloudEvent of type `WORK_EVENT_TYPE`, with an OIDC token of `invoker`
    (Cloud Run lets only that account's tokens through).

    Tasks are unnamed: Cloud Tasks refuses a name used within about an hour, and a redrive
    must be able to enqueue the same object again.
    """

    def __init__(self, client: Any, queue: str, *, url: str, invoker: str) -> None:
        self._client = client
        self._queue = queue
        self._url = url
        self._invoker = invoker

    @property
    def name(self) -> str:
        return self._queue

    def task(self, item: WorkItem) -> dict[str, Any]:
        """The CreateTask request's task for one item."""
        from google.cloud import tasks_v2

        headers = {
            "ce-specversion": "1.0",
            "ce-type": WORK_EVENT_TYPE,
            "ce-source": f"//cloudtasks.googleapis.com/{self._queue}",
            "ce-id": uuid.uuid4().hex,  # the same on every retry of the task, as an event's is
            "ce-subject": f"objects/{item.ref.key}",
            "Content-Type": "application/json",
        }
        return {
            "http_request": {
                "url": self._url,
                "http_method": tasks_v2.HttpMethod.POST,
                "headers": headers,
                "body": item.to_json().encode(),
                "oidc_token": {"service_account_email": self._invoker, "audience": self._url},
            }
        }

    def enqueue(self, items: Sequence[WorkItem]) -> None:
        if not items:
            return

        def create(item: WorkItem) -> None:
            self._client.create_task(parent=self._queue, task=self.task(item))

        # Every item is tried; the first error (in item order) is raised after all ended.
        with ThreadPoolExecutor(max_workers=min(ENQUEUE_THREADS, len(items))) as pool:
            futures = [pool.submit(create, item) for item in items]
        for future in futures:
            error = future.exception()
            if error is not None:
                raise error


class FirestoreRecordReader:
    """Reads the records collection: many documents in one BatchGetDocuments, one status,
    newest first, through the collection's `by-status` index, and one object key's records."""

    def __init__(self, client: Any, collection: str) -> None:
        self._client = client
        self._collection = client.collection(collection)

    def get_many(self, ids: Sequence[str]) -> dict[str, ImageRecord]:
        found: dict[str, ImageRecord] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), BATCH_GET_LIMIT):
            documents = [
                self._collection.document(i) for i in unique[start : start + BATCH_GET_LIMIT]
            ]
            for snapshot in self._client.get_all(documents):
                if snapshot.exists:
                    record = ImageRecord.from_dict(snapshot.to_dict())
                    found[record.id] = record
        return found

    def by_status(self, status: Status, limit: int) -> list[ImageRecord]:
        from google.cloud.firestore_v1.base_query import FieldFilter

        # The component's composite index: without it Firestore refuses this query.
        (status_field, _), (order_field, direction) = RECORDS_INDEXES[STATUS_INDEX]
        query = (
            self._collection.where(filter=FieldFilter(status_field, "==", status.value))
            .order_by(order_field, direction=direction)
            .limit(limit)
        )
        return [ImageRecord.from_dict(snapshot.to_dict()) for snapshot in query.stream()]

    def for_object(self, bucket: str, key: str) -> list[ImageRecord]:
        """Every record of this object key: one equality filter on the object field, which
        Firestore's automatic single-field index serves."""
        from google.cloud.firestore_v1.base_query import FieldFilter

        query = self._collection.where(filter=FieldFilter(OBJECT_FIELD, "==", f"{bucket}/{key}"))
        return [ImageRecord.from_dict(snapshot.to_dict()) for snapshot in query.stream()]


class PubSubEventFeed:
    """The events topic, read through a Pub/Sub subscription made for this command alone and
    deleted on exit (why: `functions.local.upload`)."""

    def __init__(self, subscriber: Any, topic: str, project: str) -> None:
        self._subscriber = subscriber
        self._topic = topic
        self._project = project
        self._subscription: str | None = None

    @classmethod
    def for_target(cls, target: GcpPipelineTarget) -> PubSubEventFeed:
        assert target.events_topic is not None and target.project is not None
        return cls(target.client("subscriber"), target.events_topic, target.project)

    @property
    def subscription(self) -> str | None:
        return self._subscription

    def __enter__(self) -> PubSubEventFeed:
        name = f"projects/{self._project}/subscriptions/imagepipe-upload-{uuid.uuid4().hex[:12]}"
        self._subscriber.create_subscription(name=name, topic=self._topic)
        self._subscription = name
        return self

    def __exit__(self, *exc: object) -> None:
        from google.api_core.exceptions import GoogleAPIError

        try:  # best effort: the emulator may already be gone, taking it along
            if self._subscription:
                self._subscriber.delete_subscription(subscription=self._subscription)
        except GoogleAPIError:
            pass
        self._subscription = None

    def receive(self, wait_seconds: int) -> list[ImageRecord]:
        from google.api_core.exceptions import DeadlineExceeded

        deadline = time.monotonic() + wait_seconds
        while True:
            left = deadline - time.monotonic()
            try:
                response = self._subscriber.pull(
                    subscription=self._subscription,
                    max_messages=10,
                    timeout=max(left, EMPTY_PULL_PAUSE_SECONDS),
                    retry=None,
                )
                received = list(response.received_messages)
            except DeadlineExceeded:
                received = []
            if received:
                self._subscriber.acknowledge(
                    subscription=self._subscription, ack_ids=[m.ack_id for m in received]
                )
                return records_in_events(m.message.data for m in received)
            if time.monotonic() + EMPTY_PULL_PAUSE_SECONDS >= deadline:
                return []
            time.sleep(EMPTY_PULL_PAUSE_SECONDS)
