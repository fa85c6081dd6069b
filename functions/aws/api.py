"""AWS Lambda entry point of the upload API: API Gateway HTTP API requests (payload 2.0) in,
`UploadApi`'s answers out.

With imagepipe:apiAuth jwt, API Gateway's JWT authorizer has verified the bearer token
(signature, issuer, audience, expiry) before the function runs; the caller is its `sub`
claim. CORS is API Gateway's too (the component's cors_configuration). The function
only reads the bucket's listing and the records table and signs POST policies.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools import Logger

from functions.aws.bootstrap import build_api
from functions.aws.contract import SERVICE_NAME, api_from_env
from functions.core.uploads import ApiRequest, ApiResponse, UploadApi

logger = Logger(service=SERVICE_NAME)

API = build_api(api_from_env(os.environ))


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return handle_request(event, API)


def handle_request(event: Mapping[str, Any], api: UploadApi) -> dict[str, Any]:
    request = api_request(event)
    response = api.handle(request)
    # A page polls GET /images/{id}: its routine answers are debug lines, the rest info.
    routine = request.method == "GET" and response.status in (200, 404)
    (logger.debug if routine else logger.info)(
        f"{request.method} {request.path} -> {response.status}",
        extra={"status": response.status, "caller": request.caller},
    )
    return proxy_response(response)


def api_request(event: Mapping[str, Any]) -> ApiRequest:
    """The request an HTTP API (payload format 2.0) hands a Lambda integration."""
    context = event.get("requestContext") or {}
    claims = ((context.get("authorizer") or {}).get("jwt") or {}).get("claims") or {}
    body = event.get("body") or ""
    raw = base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()
    return ApiRequest(
        method=str((context.get("http") or {}).get("method", "")).upper(),
        path=str(event.get("rawPath", "")),
        caller=claims.get("sub") or None,
        body=raw,
    )


def proxy_response(response: ApiResponse) -> dict[str, Any]:
    return {
        "statusCode": response.status,
        "headers": {"Content-Type": "application/json", **response.headers},
        "body": response.json(),
    }
