"""The CDN stand-in: renditions served over HTTP on 127.0.0.1, straight from the renditions bucket.

Like CloudFront in front of the bucket: GET or HEAD `/<key>` answers the
object's bytes with its own Content-Type and Cache-Control (immutable, since
rendition keys are content-addressed); anything else is 404. Read-only.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from functions.local.emulated_aws import HOST

log = logging.getLogger("imagepipe.dev")


class RenditionServer:
    def __init__(self, s3: Any, bucket: str, port: int = 0) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._httpd = ThreadingHTTPServer((HOST, port), _handler_class(s3, bucket))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._httpd.server_address[1]}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="cdn-server", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)


def _handler_class(s3: Any, bucket: str) -> type[BaseHTTPRequestHandler]:
    from botocore.exceptions import ClientError

    class RenditionRequestHandler(BaseHTTPRequestHandler):
        server_version = "imagepipe-dev-cdn"
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._serve(with_body=True)

        def do_HEAD(self) -> None:
            self._serve(with_body=False)

        def _serve(self, *, with_body: bool) -> None:
            key = unquote(urlsplit(self.path).path).lstrip("/")
            try:
                if not key:
                    raise KeyError(key)
                if with_body:
                    obj = s3.get_object(Bucket=bucket, Key=key)
                else:
                    obj = s3.head_object(Bucket=bucket, Key=key)
            except (KeyError, ClientError) as error:
                status = 404
                if isinstance(error, ClientError):
                    code = error.response.get("Error", {}).get("Code", "")
                    if code not in ("NoSuchKey", "404", "NotFound"):
                        status = 502
                        log.warning("CDN could not read %s: %s", key, error)
                self._answer_error(status, with_body)
                return
            body = obj["Body"].read() if with_body else b""
            self.send_response(200)
            self.send_header("Content-Type", obj.get("ContentType", "application/octet-stream"))
            if obj.get("CacheControl"):
                self.send_header("Cache-Control", obj["CacheControl"])
            if obj.get("ETag"):
                self.send_header("ETag", obj["ETag"])
            self.send_header("Content-Length", str(obj.get("ContentLength", len(body))))
            self.end_headers()
            if with_body:
                self.wfile.write(body)

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
