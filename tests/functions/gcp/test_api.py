"""The GCP upload API on the emulators: V4 POST policies that work, say what they pin and are
signed by the function's key; the walk to COMPLETED with signed rendition URLs that serve;
bearer tokens verified against an issuer's published keys; CORS."""

from __future__ import annotations

import base64
import importlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import flask
import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from functions.core.records import ObjectRef
from functions.core.settings import Limits, PipelineSettings
from functions.core.uploads import ApiOptions, UploadApi
from functions.gcp import contract
from functions.gcp.bootstrap import build_api, build_pipeline
from functions.gcp.tokens import JwksTokenVerifier
from functions.local.emulated_gcp import write_throwaway_service_account_key
from tests.functions.gcp.gcp_emulators import PROJECT, GcpNames
from tests.oidc_issuer import oidc_issuer

pytestmark = pytest.mark.emulator

MAX_BYTES = 4 * 1024 * 1024
EXPIRY_SECONDS = 180
ORIGIN = "https://app.example"
OPEN = ApiOptions(upload_expiry_seconds=EXPIRY_SECONDS, auth="none", allowed_origins=(ORIGIN,))


@pytest.fixture
def signing_key(tmp_path: Path) -> Path:
    return write_throwaway_service_account_key(
        tmp_path / "key.json", email=f"api@{PROJECT}.iam.gserviceaccount.com", project=PROJECT
    )


@pytest.fixture
def api_env(emulator_env, gcp_names: GcpNames, signing_key, monkeypatch) -> dict[str, str]:
    """The API function's environment on the emulators, in delivery mode signed-urls."""
    env = {
        **emulator_env,
        **contract.api_to_env(
            settings=PipelineSettings(limits=Limits(max_bytes=MAX_BYTES)),
            options=OPEN,
            uploads_bucket=gcp_names.uploads_bucket,
            uploads_prefix="incoming/",
            records_collection=gcp_names.collection,
            cdn_url=f"https://storage.googleapis.com/{gcp_names.renditions_bucket}",
            sign_rendition_urls=True,
            project=PROJECT,
            renditions_bucket=gcp_names.renditions_bucket,
        ),
        "GOOGLE_APPLICATION_CREDENTIALS": str(signing_key),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def api(api_env) -> UploadApi:
    return build_api(contract.api_from_env(api_env))


class Endpoint:
    """The function's entry point (`functions.gcp.api`, imported afresh with its environment
    set, as an instance imports it) in front of `api`."""

    def __init__(self, api: UploadApi) -> None:
        self.api = api
        self.module = importlib.reload(importlib.import_module("functions.gcp.api"))

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        verifier: JwksTokenVerifier | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        """One request, as functions-framework hands it to the entry point."""
        app = flask.Flask("test")
        data = json.dumps(body).encode() if body is not None else None
        with app.test_request_context(path, method=method, data=data, headers=headers or {}):
            response = self.module.answer(flask.request, self.api, verifier, OPEN.allowed_origins)
        payload = json.loads(response.get_data()) if response.get_data() else None
        return response.status_code, payload, dict(response.headers)


@pytest.fixture
def endpoint(api) -> Endpoint:
    return Endpoint(api)


def create_upload(endpoint, data: bytes, name="cat.jpg", **options):
    request = {"filename": name, "contentType": "image/jpeg", "bytes": len(data)}
    status, body, _ = endpoint.call("POST", "/uploads", request, **options)
    assert status == 201, body
    return body


def test_the_v4_policy_pins_key_type_size_and_expiry_and_is_signed_by_the_functions_key(
    endpoint, api, signing_key
):
    before = datetime.now(UTC)
    body = create_upload(endpoint, b"x" * 10)
    fields = body["upload"]["fields"]
    assert body["key"] == f"incoming/anonymous/{body['id']}/cat.jpg"
    policy = json.loads(base64.b64decode(fields["policy"]))
    conditions = policy["conditions"]
    assert {"key": body["key"]} in conditions
    assert {"Content-Type": "image/jpeg"} in conditions
    assert ["content-length-range", 1, MAX_BYTES] in conditions
    assert {"bucket": api.bucket.name} in conditions
    expires = datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
    assert 0 < (expires - before).total_seconds() <= EXPIRY_SECONDS + 1

    # GOOG4-RSA-SHA256: an RSA PKCS#1 v1.5 signature of the base64 policy, in hex.
    assert fields["x-goog-algorithm"] == "GOOG4-RSA-SHA256"
    assert fields["x-goog-credential"].startswith(f"api@{PROJECT}.iam.gserviceaccount.com/")
    private = serialization.load_pem_private_key(
        json.loads(signing_key.read_text())["private_key"].encode(), password=None
    )
    private.public_key().verify(  # raises InvalidSignature if it does not verify
        bytes.fromhex(fields["x-goog-signature"]),
        fields["policy"].encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )


def test_an_image_goes_from_404_to_pending_to_completed_with_signed_urls_that_serve(
    endpoint, api_env, gcp_names, gcp_clients, emulator_env
):
    data = _photo()
    body = create_upload(endpoint, data, name="my cat.jpg")
    path = f"/images/{body['id']}"
    assert endpoint.call("GET", path)[0] == 404

    upload = body["upload"]
    answered = requests.post(
        upload["url"],
        data=upload["fields"],
        files={"file": ("my cat.jpg", data, "image/jpeg")},
        timeout=10,
    )
    assert answered.status_code in (200, 201, 204), answered.text
    blob = gcp_clients.storage.bucket(gcp_names.uploads_bucket).get_blob(body["key"])
    assert blob is not None and blob.content_type == "image/jpeg" and blob.size == len(data)

    status, view, _ = endpoint.call("GET", path)
    assert (status, view["status"]) == (200, "PENDING")

    pipeline = build_pipeline(
        contract.from_env(
            {
                **api_env,
                **contract.to_env(
                    settings=PipelineSettings(),
                    renditions_bucket=gcp_names.renditions_bucket,
                    records_collection=gcp_names.collection,
                    events_topic=gcp_names.topic,
                    max_event_age_seconds=3600,
                    timeout_seconds=60,
                    project=PROJECT,
                ),
            }
        )
    )
    pipeline.process(ObjectRef(gcp_names.uploads_bucket, blob.name, str(blob.generation)))

    status, view, _ = endpoint.call("GET", path)
    assert status == 200 and view["status"] == "COMPLETED", view
    assert {r["name"] for r in view["renditions"]} == {"large", "thumb"}
    for rendition in view["renditions"]:
        assert "X-Goog-Signature=" in rendition["url"]
        assert rendition["url"].startswith(emulator_env["STORAGE_EMULATOR_HOST"])
        served = requests.get(rendition["url"], timeout=10)
        assert served.status_code == 200 and len(served.content) == rendition["bytes"]


def _photo() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.linear_gradient("L").resize((640, 480)).convert("RGB").save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture
def issuer() -> Iterator[Any]:
    with oidc_issuer() as running:
        yield running


def test_tokens_are_verified_against_the_issuers_published_keys(endpoint, issuer):
    verifier = JwksTokenVerifier(issuer.url, issuer.audience)
    request = {"filename": "a.jpg", "contentType": "image/jpeg", "bytes": 10}

    def post(token: str | None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return endpoint.call("POST", "/uploads", request, verifier=verifier, headers=headers)

    status, body, _ = post(issuer.token(subject="alice"))
    assert status == 201 and body["key"].startswith("incoming/alice/")
    for refused in (
        None,
        "not-a-jwt",
        issuer.token(aud="someone-else"),
        issuer.token(iss="https://other.example"),
        issuer.token(exp=int(datetime.now(UTC).timestamp()) - 3600),
        issuer.token(sub=None),
        issuer.foreign_token(),
    ):
        status, body, _ = post(refused)
        assert status == 401, (refused, body)
        assert body["error"]["field"] == "Authorization"


def test_an_unreachable_issuer_is_a_503_not_a_401(endpoint):
    verifier = JwksTokenVerifier("http://127.0.0.1:9", "imagepipe")
    status, body, _ = endpoint.call(
        "GET", f"/images/{'0' * 32}", verifier=verifier, headers={"Authorization": "Bearer x"}
    )
    assert status == 503 and "could not be read" in body["error"]["message"]


def test_cors_answers_the_allowed_origin_only(endpoint):
    status, _, headers = endpoint.call(
        "OPTIONS",
        "/uploads",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert status == 204 and headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in headers["Access-Control-Allow-Methods"]
    _, _, headers = endpoint.call(
        "GET", f"/images/{'0' * 32}", headers={"Origin": "https://evil.example"}
    )
    assert "Access-Control-Allow-Origin" not in headers


def test_finding_an_upload_takes_its_newest_generation(api, gcp_clients, gcp_names):
    key = "incoming/anonymous/" + "a" * 32 + "/cat.jpg"
    blob = gcp_clients.storage.bucket(gcp_names.uploads_bucket).blob(key)
    blob.upload_from_string(b"one")
    blob.upload_from_string(b"two")
    found = api.bucket.find("incoming/anonymous/" + "a" * 32 + "/")
    newest = gcp_clients.storage.bucket(gcp_names.uploads_bucket).get_blob(key)
    assert found is not None and found.version == str(newest.generation)


def test_signed_urls_expire_within_the_hour(api):
    url = api.rendition_url("some/key.jpg")
    assert "X-Goog-Expires=3600" in url  # a signed rendition URL lives one hour


def test_a_signed_url_is_reused_while_more_than_half_its_hour_remains(api):
    from datetime import timedelta

    from functions.gcp.adapters import GcsRenditionUrls

    now = [datetime(2026, 12, 1, 12, 0, tzinfo=UTC)]
    urls = api.rendition_url
    cached = GcsRenditionUrls(
        "unused",
        sign=True,
        client=urls._client,
        bucket=urls._bucket,
        signer=urls._signer,
        endpoint=urls._endpoint,
        clock=lambda: now[0],
    )
    first = cached("some/key.jpg")
    now[0] += timedelta(minutes=29)
    assert cached("some/key.jpg") is first  # no second signBlob on GCP
    now[0] += timedelta(minutes=2)  # past half its life: signed afresh
    again = cached("some/key.jpg")
    assert again is not first and "X-Goog-Signature=" in again
    assert cached("other/key.jpg") != again
