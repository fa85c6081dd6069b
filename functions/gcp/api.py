"""Cloud Functions gen2 entry point of the upload API: HTTP requests in, `UploadApi` out.

Its own archive puts a copy of this file at the root as `main.py`. A gen2 HTTP function
has no gateway in front: it verifies bearer tokens itself (`tokens.JwksTokenVerifier`,
as API Gateway's JWT authorizer does on AWS) and answers CORS for the allowed origins.
"""

from __future__ import annotations

import logging
import os
import sys

import flask
import functions_framework

from functions.core.settings import SettingsError
from functions.core.uploads import ApiRequest, ApiResponse, UploadApi, cors_headers
from functions.gcp.bootstrap import build_api, configure_json_logging
from functions.gcp.contract import api_from_env
from functions.gcp.tokens import InvalidToken, IssuerUnavailable, JwksTokenVerifier

configure_json_logging(sys.stdout)
log = logging.getLogger("imagepipe.gcp.api")
try:
    ENVIRONMENT = api_from_env(os.environ)
    API = build_api(ENVIRONMENT)
except SettingsError as error:  # a deploy mistake: one clear line, then no instance at all
    log.critical("cannot start: %s", error)
    raise SystemExit(1) from None
OPTIONS = ENVIRONMENT.options
VERIFIER = (
    JwksTokenVerifier(OPTIONS.jwt_issuer, OPTIONS.jwt_audience)
    if OPTIONS.auth == "jwt" and OPTIONS.jwt_issuer and OPTIONS.jwt_audience
    else None
)


@functions_framework.http
def handle_api(request: flask.Request) -> flask.Response:
    return answer(request, API, VERIFIER, OPTIONS.allowed_origins)


def answer(
    request: flask.Request,
    api: UploadApi,
    verifier: JwksTokenVerifier | None,
    allowed_origins: tuple[str, ...],
) -> flask.Response:
    origin = request.headers.get("Origin")
    if request.method == "OPTIONS":  # a browser's preflight: no token comes with it
        return flask.Response(
            status=204, headers=cors_headers(origin, allowed_origins, preflight=True)
        )
    caller = None
    if verifier is not None:
        try:
            caller = verifier.subject(request.headers.get("Authorization"))
        except InvalidToken as refused:
            return _respond(_error(401, "Authorization", str(refused)), origin, allowed_origins)
        except IssuerUnavailable as outage:
            log.error("token issuer unavailable: %s", outage)
            return _respond(_error(503, "service", str(outage)), origin, allowed_origins)
    request_body = request.get_data(cache=False)
    response = api.handle(ApiRequest(request.method, request.path, caller, request_body))
    # A page polls GET /images/{id}: its routine answers are debug lines, the rest info.
    routine = request.method == "GET" and response.status in (200, 404)
    log.log(
        logging.DEBUG if routine else logging.INFO,
        "%s %s -> %s",
        request.method,
        request.path,
        response.status,
        extra={"json_fields": {"status": response.status, "caller": caller}},
    )
    return _respond(response, origin, allowed_origins)


def _error(status: int, field: str, message: str) -> ApiResponse:
    return ApiResponse(status, {"error": {"field": field, "message": message}})


def _respond(response: ApiResponse, origin: str | None, allowed: tuple[str, ...]) -> flask.Response:
    return flask.Response(
        response.json(),
        status=response.status,
        mimetype="application/json",
        headers={**response.headers, **cors_headers(origin, allowed, preflight=False)},
    )
