"""The ports' contract over the google-cloud adapters, on the Firestore, Pub/Sub and GCS
emulators."""

from __future__ import annotations

import pytest

from functions.gcp.adapters import (
    FirestoreRecordStore,
    GcsBlobStore,
    PubSubEventPublisher,
    sdk_retry,
)
from tests.functions.gcp.gcp_emulators import PROJECT, free_port, pull_messages
from tests.port_contract import *  # noqa: F403 - the shared scenarios, collected here
from tests.port_contract import Ports

pytestmark = pytest.mark.emulator

QUICK_RETRY = sdk_retry(1.0)


def unreachable_ports(bucket: str, topic: str) -> Ports:
    """Clients built while each SDK's emulator variable names a closed port."""
    from google.cloud import firestore, pubsub_v1, storage

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
        patch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
        patch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")
        clients = storage.Client(project=PROJECT), firestore.Client(project=PROJECT)
        publisher = pubsub_v1.PublisherClient()
    return Ports(
        blobs=GcsBlobStore(clients[0], retry=QUICK_RETRY, timeout=2),
        records=FirestoreRecordStore(clients[1], "images", retry=QUICK_RETRY),
        events=PubSubEventPublisher(publisher, topic, retry=QUICK_RETRY, timeout=3),
        bucket=bucket,
        published=list,
        put_upload=lambda key, data: "",
        unreachable=lambda: unreachable_ports(bucket, topic),
    )


@pytest.fixture
def ports(gcp_clients, gcp_names) -> Ports:
    bucket = gcp_clients.storage.bucket(gcp_names.uploads_bucket)

    def put_upload(key: str, data: bytes) -> str:
        blob = bucket.blob(key)
        blob.upload_from_string(data)
        return str(blob.generation)  # the version the finalize event names

    def published() -> list[tuple[bytes, str]]:
        messages = pull_messages(gcp_clients.subscriber, gcp_names.subscription, settle=0.3)
        return [(m.data, m.attributes["type"]) for m in messages]

    return Ports(
        blobs=GcsBlobStore(gcp_clients.storage, retry=QUICK_RETRY),
        records=FirestoreRecordStore(
            gcp_clients.firestore, gcp_names.collection, retry=QUICK_RETRY
        ),
        events=PubSubEventPublisher(gcp_clients.publisher, gcp_names.topic, retry=QUICK_RETRY),
        bucket=gcp_names.uploads_bucket,
        published=published,
        put_upload=put_upload,
        unreachable=lambda: unreachable_ports(gcp_names.uploads_bucket, gcp_names.topic),
    )
