"""The ports' contract over the in-memory fakes the core's tests and `imagepipe process` use."""

from __future__ import annotations

import pytest

from functions.core.events import encode_event
from functions.core.memory import InMemoryBlobStore, InMemoryEventPublisher, InMemoryRecordStore
from tests.port_contract import *  # noqa: F403 - the shared scenarios, collected here
from tests.port_contract import Ports


def memory_ports(*, unavailable: bool = False) -> Ports:
    blobs = InMemoryBlobStore(unavailable=unavailable)
    records = InMemoryRecordStore(unavailable=unavailable)
    events = InMemoryEventPublisher(unavailable=unavailable)
    return Ports(
        blobs=blobs,
        records=records,
        events=events,
        bucket="contract",
        published=lambda: [(encode_event(e), e["type"]) for e in events.events],
        put_upload=lambda key, data: blobs.put_upload("contract", key, data),
        unreachable=lambda: memory_ports(unavailable=True),
    )


@pytest.fixture
def ports() -> Ports:
    return memory_ports()
