"""The upload API's front door on 127.0.0.1, and the web page that uses it.

`ApiGateway` serves, on one origin (the dev pipeline's `apiUrl`):
- `GET /` and `/<file>`: the page in `functions/local/web/` (plain files, no build step);
- `/uploads` and `/images/...`: handed to a backend that plays what stands in front of the
  API function on its cloud:
  - `LambdaProxy` plays API Gateway's HTTP API: it answers CORS itself, checks bearer
    tokens as the JWT authorizer does (when the stack's apiAuth is jwt), and invokes the
    real handler (`functions.aws.api`) in this process with a payload 2.0 event;
  - `FunctionProxy` plays Cloud Run's URL: it forwards the request unchanged to the real
    API function (`functions.gcp.api`), served by functions-framework in its own process,
    which answers CORS and verifies tokens itself, as on GCP.

Connections are bounded as the CDN stand-in's are (`cdn.BoundedThreadingHTTPServer`).
"""

from __future__ import annotations

import base64
import errno
import http.client
import json
import logging
import mimetypes
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from functions.core.uploads import IMAGES_PATH, UPLOADS_PATH, cors_headers
from functions.local.cdn import (
    IDLE_TIMEOUT_SECONDS,
    MAX_CONNECTIONS,
    BoundedThreadingHTTPServer,
    LoopbackServer,
)
from functions.local.emulated_aws import HOST, PortInUse
from functions.local.lambda_service import LambdaContext

log = logging.getLogger("imagepipe.dev")

WEB_ROOT = Path(__file__).with_name("web")
MAX_BODY_BYTES = 64 * 1024  # API requests are small JSON; API Gateway's own cap is 10 MB
FORWARD_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class GatewayRequest:
    method: str
    path: str  # without the query string
    query: str
    headers: Mapping[str, str]  # names lower-cased
    body: bytes


@dataclass(frozen=True)
class GatewayResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes


class ApiBackend(Protocol):
    def __call__(self, request: GatewayRequest) -> GatewayResponse: ...


def _json_response(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> GatewayResponse:
    return GatewayResponse(
        status,
        {"Content-Type": "application/json", **(headers or {})},
        json.dumps(body).encode(),
    )


class LambdaProxy:
    """API Gateway's HTTP API in front of a Lambda integration (payload format 2.0)."""

    def __init__(
        self,
        handler: Callable[[dict[str, Any], Any], dict[str, Any]],
        *,
        function_name: str,
        allowed_origins: tuple[str, ...],
        verify_subject: Callable[[str | None], str] | None = None,
        timeout_seconds: int = 10,
    ) -> None:
        self._handler = handler
        self._function_name = function_name
        self._allowed_origins = allowed_origins
        self._verify_subject = verify_subject
        self._timeout_seconds = timeout_seconds

    def __call__(self, request: GatewayRequest) -> GatewayResponse:
        origin = request.headers.get("origin")
        if request.method == "OPTIONS":  # API Gateway answers preflights without the function
            return GatewayResponse(
                204, cors_headers(origin, self._allowed_origins, preflight=True), b""
            )
        cors = cors_headers(origin, self._allowed_origins, preflight=False)
        authorizer: dict[str, Any] = {}
        if self._verify_subject is not None:
            from functions.gcp.tokens import InvalidToken, IssuerUnavailable

            try:
                subject = self._verify_subject(request.headers.get("authorization"))
            except InvalidToken:  # what the JWT authorizer answers, body and all
                return _json_response(401, {"message": "Unauthorized"}, cors)
            except IssuerUnavailable as error:
                log.warning("api: the token issuer is unavailable: %s", error)
                return _json_response(503, {"message": "Service Unavailable"}, cors)
            authorizer = {"jwt": {"claims": {"sub": subject}, "scopes": None}}
        context = LambdaContext(
            function_name=self._function_name,
            invoked_function_arn=f"arn:aws:lambda:local:000000000000:function:{self._function_name}",
            timeout_seconds=self._timeout_seconds,
        )
        try:
            result = self._handler(self._event(request, authorizer), context)
        except Exception:  # what API Gateway answers when the integration fails
            log.exception("api: the API function raised")
            return _json_response(500, {"message": "Internal Server Error"}, cors)
        headers = {**(result.get("headers") or {}), **cors}
        body = result.get("body") or ""
        raw = base64.b64decode(body) if result.get("isBase64Encoded") else body.encode()
        return GatewayResponse(int(result.get("statusCode", 200)), headers, raw)

    def _event(self, request: GatewayRequest, authorizer: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        route = (
            f"{request.method} {UPLOADS_PATH}"
            if request.path == UPLOADS_PATH
            else f"{request.method} {IMAGES_PATH}{{id}}"
        )
        return {
            "version": "2.0",
            "routeKey": route,
            "rawPath": request.path,
            "rawQueryString": request.query,
            "headers": dict(request.headers),
            "requestContext": {
                "accountId": "000000000000",
                "apiId": "local",
                "authorizer": authorizer,
                "domainName": HOST,
                "http": {
                    "method": request.method,
                    "path": request.path,
                    "protocol": "HTTP/1.1",
                    "sourceIp": "127.0.0.1",
                    "userAgent": request.headers.get("user-agent", ""),
                },
                "requestId": str(uuid.uuid4()),
                "routeKey": route,
                "stage": "$default",
                "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
                "timeEpoch": int(now * 1000),
            },
            "body": base64.b64encode(request.body).decode() if request.body else None,
            "isBase64Encoded": bool(request.body),
        }


class FunctionProxy:
    """Cloud Run's URL in front of an HTTP function: the request goes through as it came."""

    def __init__(self, function_url: str) -> None:
        parts = urlsplit(function_url)
        self._host = parts.hostname or HOST
        self._port = parts.port or 80

    def __call__(self, request: GatewayRequest) -> GatewayResponse:
        connection = http.client.HTTPConnection(
            self._host, self._port, timeout=FORWARD_TIMEOUT_SECONDS
        )
        target = request.path + (f"?{request.query}" if request.query else "")
        forwarded = {
            name: value
            for name, value in request.headers.items()
            if name not in ("host", "connection", "keep-alive", "content-length")
        }
        try:
            connection.request(request.method, target, body=request.body or None, headers=forwarded)
            answer = connection.getresponse()
            body = answer.read()
            headers = {
                name: value
                for name, value in answer.getheaders()
                if name.lower()
                not in ("connection", "transfer-encoding", "content-length", "date", "server")
            }
            return GatewayResponse(answer.status, headers, body)
        except OSError as error:
            log.warning("api: the API function could not be reached: %s", error)
            return _json_response(502, {"message": "the API function could not be reached"})
        finally:
            connection.close()


class ApiGateway(LoopbackServer):
    """Serves the page and `backend`'s API on 127.0.0.1:`port` (0: any free port)."""

    def __init__(
        self,
        backend: ApiBackend,
        port: int = 0,
        *,
        web_root: Path = WEB_ROOT,
        idle_timeout: float = IDLE_TIMEOUT_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        try:
            httpd = BoundedThreadingHTTPServer(
                (HOST, port),
                _handler_class(backend, web_root, idle_timeout),
                max_connections=max_connections,
            )
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise PortInUse(port, "--api-port") from None
            raise
        super().__init__(httpd, "api-gateway")


def _is_api_path(path: str) -> bool:
    return path == UPLOADS_PATH or path.startswith(IMAGES_PATH)


def _page_file(web_root: Path, path: str) -> Path | None:
    """The page's file for a request path, only ever a file directly in `web_root`."""
    name = path.lstrip("/") or "index.html"
    if "/" in name or "\\" in name or name.startswith("."):
        return None
    candidate = web_root / name
    return candidate if candidate.is_file() else None


def _handler_class(
    backend: ApiBackend, web_root: Path, idle_timeout: float
) -> type[BaseHTTPRequestHandler]:
    class GatewayRequestHandler(BaseHTTPRequestHandler):
        server_version = "imagepipe-dev-api"
        protocol_version = "HTTP/1.1"
        timeout = idle_timeout

        def do_GET(self) -> None:
            self._dispatch()

        def do_HEAD(self) -> None:
            self._dispatch()

        def do_POST(self) -> None:
            self._dispatch()

        def do_OPTIONS(self) -> None:
            self._dispatch()

        def do_PUT(self) -> None:
            self._dispatch()

        def do_DELETE(self) -> None:
            self._dispatch()

        def _dispatch(self) -> None:
            parts = urlsplit(self.path)
            if _is_api_path(parts.path):
                self._api(parts.path, parts.query)
            elif self.command in ("GET", "HEAD"):
                self._page(parts.path)
            else:
                self._send(
                    GatewayResponse(
                        405, {"Content-Type": "text/plain; charset=utf-8"}, b"GET the page\n"
                    )
                )

        def _api(self, path: str, query: str) -> None:
            length_text = self.headers.get("Content-Length") or "0"
            length = int(length_text) if length_text.isdigit() else -1
            if not 0 <= length <= MAX_BODY_BYTES:
                self.close_connection = True
                self._send(
                    _json_response(
                        413, {"message": f"request bodies are at most {MAX_BODY_BYTES} bytes"}
                    )
                )
                return
            body = self.rfile.read(length) if length else b""
            request = GatewayRequest(
                method=self.command,
                path=path,
                query=query,
                headers={name.lower(): value for name, value in self.headers.items()},
                body=body,
            )
            self._send(backend(request))

        def _page(self, path: str) -> None:
            file = _page_file(web_root, path)
            if file is None:
                self._send(
                    GatewayResponse(
                        404, {"Content-Type": "text/plain; charset=utf-8"}, b"not found\n"
                    )
                )
                return
            content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            if content_type.startswith("text/") or content_type.endswith("javascript"):
                content_type += "; charset=utf-8"
            self._send(
                GatewayResponse(
                    200,
                    # The page changes as you edit it: never cached.
                    {"Content-Type": content_type, "Cache-Control": "no-cache"},
                    file.read_bytes(),
                )
            )

        def _send(self, response: GatewayResponse) -> None:
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("api: " + format, *args)

    return GatewayRequestHandler
