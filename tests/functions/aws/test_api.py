"""The upload API's Lambda handler on moto: presigned POSTs that work and say what they pin,
and an image followed from 404 to COMPLETED through API Gateway's payload 2.0 events."""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from types import ModuleType

import pytest
import requests

from functions.aws import contract
from functions.core.settings import Limits, PipelineSettings
from functions.core.uploads import ApiOptions
from functions.local.emulated_aws import drain_queue

pytestmark = pytest.mark.emulator

CDN_URL = "https://d111111abcdef8.cloudfront.net"
MAX_BYTES = 5 * 1024 * 1024
EXPIRY_SECONDS = 120


@pytest.fixture
def api_module(aws_env, resources, monkeypatch) -> Iterator[ModuleType]:
    """`functions.aws.api` imported (afresh) with the environment the component gives it."""
    options = ApiOptions(
        upload_expiry_seconds=EXPIRY_SECONDS,
        auth="jwt",
        jwt_issuer="https://issuer.example",
        jwt_audience="imagepipe",
    )
    env = contract.api_to_env(
        settings=PipelineSettings(limits=Limits(max_bytes=MAX_BYTES)),
        options=options,
        uploads_bucket=resources.uploads_bucket,
        uploads_prefix="incoming/",
        records_table=resources.records_table,
        cdn_url=CDN_URL,
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    module = importlib.import_module("functions.aws.api")
    yield importlib.reload(module)


def http_event(method: str, path: str, body: dict | None = None, subject: str | None = "u1"):
    """What an HTTP API hands its Lambda integration once the JWT authorizer let it through."""
    authorizer = {"jwt": {"claims": {"sub": subject}, "scopes": None}} if subject else {}
    raw = json.dumps(body).encode() if body is not None else b""
    return {
        "version": "2.0",
        "routeKey": f"{method} {path}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"content-type": "application/json"},
        "requestContext": {"http": {"method": method, "path": path}, "authorizer": authorizer},
        "body": base64.b64encode(raw).decode() if raw else None,
        "isBase64Encoded": bool(raw),
    }


def call(api_module, lambda_context, method, path, body=None, subject="u1"):
    response = api_module.handler(http_event(method, path, body, subject), lambda_context)
    assert response["headers"]["Content-Type"] == "application/json"
    return response["statusCode"], json.loads(response["body"])


def create_upload(api_module, lambda_context, data: bytes, name="cat.jpg", subject="u1"):
    request = {"filename": name, "contentType": "image/jpeg", "bytes": len(data)}
    status, body = call(api_module, lambda_context, "POST", "/uploads", request, subject)
    assert status == 201, body
    return body


def sigv4_signing_key(secret: str, date: str, region: str) -> bytes:
    key = f"AWS4{secret}".encode()
    for part in (date, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def test_the_presigned_post_pins_key_type_size_and_expiry_and_its_signature_verifies(
    stack, api_module, lambda_context, aws_env
):
    before = datetime.now(UTC)
    body = create_upload(api_module, lambda_context, b"x" * 10)
    fields = body["upload"]["fields"]
    assert body["key"] == f"incoming/u1/{body['id']}/cat.jpg"
    assert fields["key"] == body["key"] and fields["Content-Type"] == "image/jpeg"
    policy = json.loads(base64.b64decode(fields["policy"]))
    conditions = policy["conditions"]
    assert {"bucket": stack.uploads} in conditions
    assert {"key": body["key"]} in conditions  # exact, not starts-with
    assert {"Content-Type": "image/jpeg"} in conditions
    assert ["content-length-range", 1, MAX_BYTES] in conditions
    expires = datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
    assert 0 < (expires - before).total_seconds() <= EXPIRY_SECONDS + 1
    assert {"x-amz-security-token": aws_env["AWS_SESSION_TOKEN"]} in conditions

    # SigV4 for POST: the signature is HMAC-SHA256 of the base64 policy with the signing key.
    assert fields["x-amz-algorithm"] == "AWS4-HMAC-SHA256"
    access_key, date, region, service, terminal = fields["x-amz-credential"].split("/")
    assert (access_key, region, service, terminal) == ("testing", "us-east-1", "s3", "aws4_request")
    key = sigv4_signing_key(aws_env["AWS_SECRET_ACCESS_KEY"], date, region)
    expected = hmac.new(key, fields["policy"].encode(), hashlib.sha256).hexdigest()
    assert hmac.compare_digest(fields["x-amz-signature"], expected)


def test_an_image_goes_from_404_to_pending_to_completed_with_cdn_urls(
    stack, api_module, handler_module, lambda_context, photo_jpeg
):
    body = create_upload(api_module, lambda_context, photo_jpeg, name="my cat.jpg")
    status_path = f"/images/{body['id']}"
    assert call(api_module, lambda_context, "GET", status_path)[0] == 404

    # A plain HTTP client posts the form, file last, straight to the bucket.
    upload = body["upload"]
    answer = requests.post(
        upload["url"],
        data=upload["fields"],
        files={"file": ("my cat.jpg", photo_jpeg, "image/jpeg")},
        timeout=10,
    )
    assert answer.status_code in (200, 201, 204), answer.text
    stored = stack.s3.head_object(Bucket=stack.uploads, Key=body["key"])
    assert stored["ContentType"] == "image/jpeg" and stored["ContentLength"] == len(photo_jpeg)
    assert body["key"].endswith("/my-cat.jpg")

    status, view = call(api_module, lambda_context, "GET", status_path)
    assert (status, view["status"]) == (200, "PENDING")

    (event,) = drain_queue(stack.sqs, stack.resources.trigger_queue_url)
    handler_module.handle_event(event, handler_module.PIPELINE)

    status, view = call(api_module, lambda_context, "GET", status_path)
    assert status == 200 and view["status"] == "COMPLETED", view
    assert view["image"]["width"] == 1600 and view["image"]["format"] == "JPEG"
    keys = stack.rendition_keys()
    assert sorted(r["url"] for r in view["renditions"]) == sorted(f"{CDN_URL}/{k}" for k in keys)


def test_a_caller_sees_only_its_own_uploads(stack, api_module, lambda_context):
    body = create_upload(api_module, lambda_context, b"x", subject="alice")
    stack.s3.put_object(Bucket=stack.uploads, Key=body["key"], Body=b"x")
    path = f"/images/{body['id']}"
    assert call(api_module, lambda_context, "GET", path, subject="alice")[0] == 200
    assert call(api_module, lambda_context, "GET", path, subject="bob")[0] == 404


def test_without_the_authorizers_claims_the_api_answers_401(stack, api_module, lambda_context):
    request = {"filename": "a.jpg", "contentType": "image/jpeg", "bytes": 1}
    status, body = call(api_module, lambda_context, "POST", "/uploads", request, subject=None)
    assert status == 401 and body["error"]["field"] == "Authorization"


@pytest.mark.parametrize(
    ("request_body", "field"),
    [
        ({"filename": "a.tiff", "contentType": "image/tiff", "bytes": 9}, "contentType"),
        ({"filename": "a.jpg", "contentType": "image/jpeg", "bytes": MAX_BYTES + 1}, "bytes"),
        ({"contentType": "image/jpeg", "bytes": 9}, "filename"),
        ({"filename": "dir/a.jpg", "contentType": "image/jpeg", "bytes": 9}, "filename"),
    ],
)
def test_bad_requests_are_400_with_one_clear_error(
    stack, api_module, lambda_context, request_body, field
):
    status, body = call(api_module, lambda_context, "POST", "/uploads", request_body)
    assert status == 400
    assert body["error"]["field"] == field and body["error"]["message"]
