"""The CDN stand-in holds no connection for ever and no more than its cap of them at once.

It runs here over a fake S3 (`InMemoryS3`), so these tests need no emulator.
"""

from __future__ import annotations

import io
import select
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from functions.local.cdn import RenditionServer
from tests.local.conftest import wait_for

pytestmark = pytest.mark.timeout(60)

IDLE_TIMEOUT = 2.0  # short for a quick test, long enough for a busy machine to accept 24
MAX_CONNECTIONS = 8
KEY = "abc/thumb-200x200-cover-0123456789.jpg"
BODY = b"\xff\xd8\xff" + b"jpeg bytes" * 10


class InMemoryS3:
    """get_object/head_object over a dict, answering a missing key as S3 does."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        return {**self.head_object(Bucket=Bucket, Key=Key), "Body": io.BytesIO(self.objects[Key])}

    def head_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        if Key not in self.objects:
            raise ClientError({"Error": {"Code": "NoSuchKey"}}, "GetObject")
        return {
            "ContentType": "image/jpeg",
            "CacheControl": "public, max-age=31536000, immutable",
            "ContentLength": len(self.objects[Key]),
        }


@pytest.fixture
def cdn() -> Iterator[RenditionServer]:
    server = RenditionServer(
        InMemoryS3({KEY: BODY}),
        "renditions",
        idle_timeout=IDLE_TIMEOUT,
        max_connections=MAX_CONNECTIONS,
    )
    server.start()
    yield server
    server.stop()


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


def connect(cdn: RenditionServer) -> socket.socket:
    host, port = cdn.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def answered(socks: list[socket.socket]) -> list[socket.socket]:
    """The sockets the server has sent something to, or closed (both make them readable)."""
    return select.select(socks, [], [], 0)[0]


def read_to_end(sock: socket.socket) -> bytes:
    """What the server sent before it closed the connection."""
    sock.settimeout(5)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def test_idle_connections_are_bounded_answered_503_beyond_the_cap_and_closed_on_timeout(
    cdn: RenditionServer,
) -> None:
    threads_before = threading.active_count()
    idle = [connect(cdn) for _ in range(3 * MAX_CONNECTIONS)]
    started = time.monotonic()
    try:
        # Beyond the cap, each is answered 503 and closed at once, without a thread.
        assert wait_for(lambda: len(answered(idle)) == 2 * MAX_CONNECTIONS, timeout=5)
        refused = answered(idle)
        served = [sock for sock in idle if sock not in refused]
        assert cdn.open_connections == MAX_CONNECTIONS
        assert threading.active_count() - threads_before == MAX_CONNECTIONS
        for sock in refused:
            answer = read_to_end(sock)
            assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in answer, answer

        # The served ones send nothing: each is closed once the idle timeout has passed.
        assert wait_for(lambda: len(answered(served)) == MAX_CONNECTIONS, timeout=IDLE_TIMEOUT + 5)
        assert time.monotonic() - started >= IDLE_TIMEOUT * 0.9
        assert all(read_to_end(sock) == b"" for sock in served)
        assert wait_for(lambda: cdn.open_connections == 0, timeout=5)
        assert wait_for(lambda: threading.active_count() == threads_before, timeout=5)
    finally:
        for sock in idle:
            sock.close()
    # And the server still serves.
    assert get(f"{cdn.url}/{KEY}") == (200, BODY)


def test_gets_are_served_while_idle_connections_are_open() -> None:
    cdn = RenditionServer(
        InMemoryS3({KEY: BODY}), "renditions", idle_timeout=60, max_connections=MAX_CONNECTIONS
    )
    cdn.start()
    # Two slots left: a finished GET's thread may still hold its slot when the next one comes.
    idle = [connect(cdn) for _ in range(MAX_CONNECTIONS - 2)]
    try:
        assert wait_for(lambda: cdn.open_connections == MAX_CONNECTIONS - 2, timeout=5)
        assert get(f"{cdn.url}/{KEY}") == (200, BODY)
        with pytest.raises(urllib.error.HTTPError) as missing:
            get(f"{cdn.url}/nothing-here")
        assert missing.value.code == 404
    finally:
        for sock in idle:
            sock.close()
        cdn.stop()


def test_a_keep_alive_connection_serves_requests_until_it_idles() -> None:
    server = RenditionServer(InMemoryS3({KEY: BODY}), "renditions", idle_timeout=IDLE_TIMEOUT)
    server.start()
    try:
        sock = connect(server)
        request = f"GET /{KEY} HTTP/1.1\r\nHost: cdn\r\n\r\n".encode()
        for _ in range(2):  # two requests on one connection: keep-alive still works
            sock.sendall(request)
            answer = b""
            while not answer.endswith(BODY):
                answer += sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        sock.settimeout(IDLE_TIMEOUT + 5)
        assert sock.recv(4096) == b""  # closed by the server, after the idle timeout
        assert time.monotonic() - started >= IDLE_TIMEOUT * 0.8
        sock.close()
    finally:
        server.stop()


def test_stop_hangs_up_on_open_connections_and_leaves_no_thread() -> None:
    threads_before = threading.active_count()
    server = RenditionServer(InMemoryS3({}), "renditions", idle_timeout=60)
    server.start()
    idle = [connect(server) for _ in range(4)]
    assert wait_for(lambda: server.open_connections == 4, timeout=5)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2  # not the 60 s idle timeout
    assert threading.active_count() == threads_before
    for sock in idle:
        assert read_to_end(sock) == b""
        sock.close()
