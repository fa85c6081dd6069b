"""The CDN stand-in: renditions served over HTTP on 127.0.0.1, straight from the renditions bucket.

Like CloudFront (or Cloud CDN) in front of the bucket: GET or HEAD `/<key>` answers the
object's bytes with its own Content-Type and Cache-Control (immutable, since
rendition keys are content-addressed); anything else is 404. Read-only. The bucket
is read through a `RenditionReader`: `S3RenditionReader` on the emulated AWS,
`GcsRenditionReader` on the emulated GCP; a bucket that cannot be read is 502.

A thread serves each connection, so connections are bounded twice: one that sends
nothing for `idle_timeout` seconds is closed (keep-alive included), and at most
`max_connections` are served at once; one more is answered 503 and closed at once,
without a thread. `stop()` closes the open ones, so it never waits on a viewer.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from time import monotonic
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from functions.local.emulated_aws import HOST

log = logging.getLogger("imagepipe.dev")

IDLE_TIMEOUT_SECONDS = 10.0
MAX_CONNECTIONS = 64
_BUSY_BODY = b"too many connections; try again\n"
_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n\r\n" + _BUSY_BODY
)


class BoundedThreadingHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` of them; more are refused with 503."""

    daemon_threads = True
    block_on_close = False  # `close_connections` ends the threads, with a deadline
    request_queue_size = 128  # the listen backlog: a burst of viewers waits, is not dropped

    def __init__(
        self,
        address: tuple[str, int],
        handler_class: type[BaseHTTPRequestHandler],
        *,
        max_connections: int,
    ) -> None:
        super().__init__(address, handler_class)
        self._slots = threading.BoundedSemaphore(max_connections)
        self._open: set[socket.socket] = set()
        self._open_changed = threading.Condition()

    @property
    def open_connections(self) -> int:
        with self._open_changed:
            return len(self._open)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        with self._open_changed:
            self._open.add(request)
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: the slot is free again
            self._forget(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request)

    def _forget(self, request: socket.socket) -> None:
        with self._open_changed:
            self._open.discard(request)
            self._open_changed.notify_all()
        self._slots.release()

    def _refuse(self, request: socket.socket) -> None:
        """Answer 503 from the accepting thread without ever blocking it, then close."""
        try:
            request.setblocking(False)
            request.sendall(_BUSY_RESPONSE)  # a fresh socket's buffer takes it whole
            request.recv(65536)  # what the client sent already, so closing does not reset
        except OSError:
            pass
        self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A viewer that hangs up mid-answer is not news; one line, not a traceback on stderr.
        log.debug("cdn: connection from %s ended early", client_address, exc_info=True)

    def close_connections(self, timeout: float) -> None:
        """Hang up on every open connection and wait, up to `timeout`, for their threads."""
        with self._open_changed:
            for connection in self._open:
                with contextlib.suppress(OSError):  # closing already
                    connection.shutdown(socket.SHUT_RDWR)
            deadline = monotonic() + timeout
            while self._open and monotonic() < deadline:
                self._open_changed.wait(deadline - monotonic())


@dataclass(frozen=True)
class StoredRendition:
    """What the CDN answers for one key: the object's bytes (empty for HEAD) and headers."""

    body: bytes
    content_type: str
    cache_control: str | None
    length: int
    etag: str | None = None


class RenditionUnavailable(Exception):
    """The bucket could not be read (not a missing key): the viewer gets 502."""


class RenditionReader(Protocol):
    def read(self, key: str, *, with_body: bool = True) -> StoredRendition | None:
        """The object at `key` (its body only `with_body`), or None when there is none."""
        ...


class S3RenditionReader:
    """Reads the renditions bucket through an S3 client (boto3's, or a fake)."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self._s3 = s3
        self._bucket = bucket

    def read(self, key: str, *, with_body: bool = True) -> StoredRendition | None:
        from botocore.exceptions import ClientError

        try:
            if with_body:
                obj = self._s3.get_object(Bucket=self._bucket, Key=key)
            else:
                obj = self._s3.head_object(Bucket=self._bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code", "") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise RenditionUnavailable(str(error)) from error
        body = obj["Body"].read() if with_body else b""
        return StoredRendition(
            body=body,
            content_type=obj.get("ContentType", "application/octet-stream"),
            cache_control=obj.get("CacheControl") or None,
            length=int(obj.get("ContentLength", len(body))),
            etag=obj.get("ETag") or None,
        )


class GcsRenditionReader:
    """Reads the renditions bucket through a google-cloud-storage client."""

    def __init__(self, storage: Any, bucket: str) -> None:
        self._bucket = storage.bucket(bucket)

    def read(self, key: str, *, with_body: bool = True) -> StoredRendition | None:
        from google.api_core import exceptions
        from google.cloud.exceptions import NotFound
        from requests import RequestException

        try:
            blob = self._bucket.get_blob(key)
            if blob is None:
                return None
            # A blob read this way downloads its own generation: metadata and body agree.
            body = blob.download_as_bytes() if with_body else b""
        except NotFound:  # deleted between the two calls
            return None
        except (exceptions.GoogleAPIError, RequestException) as error:
            raise RenditionUnavailable(str(error)) from error
        return StoredRendition(
            body=body,
            content_type=blob.content_type or "application/octet-stream",
            cache_control=blob.cache_control or None,
            length=int(blob.size if blob.size is not None else len(body)),
            etag=blob.etag or None,
        )


class LoopbackServer:
    """A `BoundedThreadingHTTPServer` on 127.0.0.1 served from a thread of its own: what the
    CDN stand-in and the API's front door share. `stop()` never waits on a viewer."""

    def __init__(self, httpd: BoundedThreadingHTTPServer, name: str) -> None:
        self._httpd = httpd
        self._name = name
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._httpd.server_address[1]}"

    def start(self) -> None:
        self._thread = threading.Thread(
            # A short poll: stop() waits for the loop to notice, and stopping should be quick.
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=self._name,
            daemon=True,
        )
        self._thread.start()

    @property
    def open_connections(self) -> int:
        return self._httpd.open_connections

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()  # waits for serve_forever, so it only runs once started
            self._thread.join(timeout=10)
        self._httpd.close_connections(timeout=10)
        self._httpd.server_close()


class RenditionServer(LoopbackServer):
    """Serves `reader`'s renditions on 127.0.0.1:`port` (0: any free port).

    `RenditionServer(s3_client, bucket)` is the S3 reader's shorthand, as it was before
    there were readers.
    """

    def __init__(
        self,
        reader: RenditionReader | Any,
        bucket: str | None = None,
        port: int = 0,
        *,
        idle_timeout: float = IDLE_TIMEOUT_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if bucket is not None:
            reader = S3RenditionReader(reader, bucket)
        httpd = BoundedThreadingHTTPServer(
            (HOST, port), _handler_class(reader, idle_timeout), max_connections=max_connections
        )
        super().__init__(httpd, "cdn-server")


def _handler_class(reader: RenditionReader, idle_timeout: float) -> type[BaseHTTPRequestHandler]:
    class RenditionRequestHandler(BaseHTTPRequestHandler):
        server_version = "imagepipe-dev-cdn"
        protocol_version = "HTTP/1.1"
        timeout = idle_timeout  # a socket timeout: an idle (keep-alive) connection is closed

        def do_GET(self) -> None:
            self._serve(with_body=True)

        def do_HEAD(self) -> None:
            self._serve(with_body=False)

        def _serve(self, *, with_body: bool) -> None:
            key = unquote(urlsplit(self.path).path).lstrip("/")
            try:
                rendition = reader.read(key, with_body=with_body) if key else None
            except RenditionUnavailable as error:
                log.warning("CDN could not read %s: %s", key, error)
                self._answer_error(502, with_body)
                return
            if rendition is None:
                self._answer_error(404, with_body)
                return
            self.send_response(200)
            self.send_header("Content-Type", rendition.content_type)
            if rendition.cache_control:
                self.send_header("Cache-Control", rendition.cache_control)
            if rendition.etag:
                self.send_header("ETag", rendition.etag)
            self.send_header("Content-Length", str(rendition.length))
            self.end_headers()
            if with_body:
                self.wfile.write(rendition.body)

        def _answer_error(self, status: int, with_body: bool) -> None:
            body = b"not found\n" if status == 404 else b"bad gateway\n"
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("cdn: " + format, *args)

    return RenditionRequestHandler
