"""The upload API as `imagepipe dev` serves it, on both clouds, over plain HTTP.

A client asks `POST /uploads` at `apiUrl`, posts the form straight to the emulated bucket,
and follows `GET /images/{id}` from 404 to COMPLETED, whose CDN URLs serve the renditions.
On AWS the API Gateway stand-in answers CORS and checks tokens; on GCP the real HTTP
function does both itself, behind the Cloud Run stand-in.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from PIL import Image

from components import outputs as output_names
from functions.core.uploads import ApiOptions
from functions.local.api_gateway import GatewayRequest, LambdaProxy
from functions.local.dev import DevPipeline, GcpDevPipeline
from functions.local.emulated_gcp import missing_tools
from functions.local.stack_config import LocalStackConfig
from tests.conftest import require
from tests.oidc_issuer import oidc_issuer

from .conftest import UPLOADS_PREFIX

pytestmark = [pytest.mark.emulator, pytest.mark.timeout(180)]


@pytest.fixture(params=["aws", "gcp"])
def api_url(request: pytest.FixtureRequest) -> str:
    name = "dev_pipeline" if request.param == "aws" else "gcp_dev_pipeline"
    pipeline: DevPipeline | GcpDevPipeline = request.getfixturevalue(name)
    return pipeline.outputs()[output_names.API_URL]


def jpeg(size: tuple[int, int] = (800, 600)) -> bytes:
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize(size).convert("RGB").save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def ask_upload(api_url: str, data: bytes, name: str = "cat.jpg", **headers: str) -> Any:
    request = {"filename": name, "contentType": "image/jpeg", "bytes": len(data)}
    return requests.post(f"{api_url}/uploads", json=request, headers=headers, timeout=10)


def post_form(upload: dict[str, Any], data: bytes, name: str = "cat.jpg") -> None:
    answer = requests.post(
        upload["url"], data=upload["fields"], files={"file": (name, data, "image/jpeg")}, timeout=10
    )
    assert answer.status_code in (200, 201, 204), answer.text


def follow(api_url: str, upload_id: str, timeout: float = 60, **headers: str) -> list[Any]:
    """Every distinct answer of GET /images/{id} until the image is final."""
    seen: list[Any] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = requests.get(f"{api_url}/images/{upload_id}", headers=headers, timeout=10)
        view = (answer.status_code, answer.json().get("status"))
        if not seen or seen[-1][:2] != view:
            seen.append((*view, answer.json()))
        if view[1] in ("COMPLETED", "FAILED"):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"{upload_id} never became final: {[s[:2] for s in seen]}")


def test_an_upload_walks_from_404_to_completed_and_its_cdn_urls_serve(api_url):
    data = jpeg()
    created = ask_upload(api_url, data, name="holiday photo.jpg")
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["key"] == f"{UPLOADS_PREFIX}anonymous/{body['id']}/holiday-photo.jpg"
    assert requests.get(f"{api_url}/images/{body['id']}", timeout=10).status_code == 404

    post_form(body["upload"], data)
    seen = follow(api_url, body["id"])
    statuses = [status for _, status, _ in seen]
    assert statuses[-1] == "COMPLETED"
    assert set(statuses) <= {"PENDING", "PROCESSING", "COMPLETED"}
    final = seen[-1][2]
    assert final["image"]["width"] == 800 and final["processingMs"] > 0
    for rendition in final["renditions"]:
        served = requests.get(rendition["url"], timeout=10)
        assert served.status_code == 200, rendition["url"]
        assert len(served.content) == rendition["bytes"]
        with Image.open(io.BytesIO(served.content)) as image:
            assert image.size == (rendition["width"], rendition["height"])


def test_a_broken_file_ends_failed_with_its_error(api_url):
    data = b"this is not a picture at all"
    body = ask_upload(api_url, data, name="broken.jpg").json()
    post_form(body["upload"], data, name="broken.jpg")
    final = follow(api_url, body["id"])[-1][2]
    assert final["status"] == "FAILED"
    assert final["error"]["code"] in ("unsupported_format", "corrupt_image")
    assert final["error"]["message"]


@pytest.mark.parametrize(
    ("request_body", "field"),
    [
        ({"filename": "a.heic", "contentType": "image/heic", "bytes": 10}, "contentType"),
        ({"filename": "a.jpg", "contentType": "image/jpeg", "bytes": 10**12}, "bytes"),
        ({"filename": "a.jpg", "contentType": "image/jpeg"}, "bytes"),
        ({"filename": "../a.jpg", "contentType": "image/jpeg", "bytes": 10}, "filename"),
    ],
)
def test_bad_requests_get_400_with_one_json_error(api_url, request_body, field):
    answer = requests.post(f"{api_url}/uploads", json=request_body, timeout=10)
    assert answer.status_code == 400
    assert answer.json()["error"]["field"] == field


def test_the_page_is_served_at_the_api_url_and_nothing_outside_its_folder(api_url):
    page = requests.get(f"{api_url}/", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert requests.get(f"{api_url}/app.js", timeout=10).status_code == 200
    for outside in ("/../README.md", "/%2e%2e/README.md", "/.hidden", "/nope.html"):
        assert requests.get(f"{api_url}{outside}", timeout=10).status_code == 404


def test_the_bucket_lets_the_pages_origin_post_the_form(api_url):
    body = ask_upload(api_url, b"x").json()
    preflight = requests.options(
        body["upload"]["url"],
        headers={"Origin": api_url, "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    allowed = preflight.headers.get("Access-Control-Allow-Origin")
    assert allowed in (api_url, "*"), preflight.headers


def test_the_gateway_stand_in_checks_tokens_as_api_gateways_jwt_authorizer():
    calls: list[dict[str, Any]] = []

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        calls.append(event)
        return {"statusCode": 200, "headers": {}, "body": "{}"}

    with oidc_issuer() as issuer:
        from functions.gcp.tokens import JwksTokenVerifier

        proxy = LambdaProxy(
            handler,
            function_name="api",
            allowed_origins=("https://app.example",),
            verify_subject=JwksTokenVerifier(issuer.url, issuer.audience).subject,
        )

        def request(method: str = "GET", **headers: str) -> Any:
            lowered = {name.lower().replace("_", "-"): value for name, value in headers.items()}
            return proxy(GatewayRequest(method, f"/images/{'0' * 32}", "", lowered, b""))

        assert request().status == 401 and not calls
        assert request(authorization=f"Bearer {issuer.token(aud='x')}").status == 401
        assert request(authorization=f"Bearer {issuer.token(subject='carol')}").status == 200
        assert calls[-1]["requestContext"]["authorizer"]["jwt"]["claims"]["sub"] == "carol"
        preflight = request("OPTIONS", origin="https://app.example")
        assert preflight.status == 204 and len(calls) == 1  # answered without the function
        assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"


@pytest.fixture(scope="module")
def gcp_jwt_pipeline() -> Iterator[tuple[GcpDevPipeline, Any]]:
    missing = missing_tools()
    require(None if missing is None else f"the emulated GCP cannot start here: {missing}")
    with oidc_issuer() as issuer:
        options = ApiOptions(
            upload_expiry_seconds=60,
            auth="jwt",
            jwt_issuer=issuer.url,
            jwt_audience=issuer.audience,
        )
        with GcpDevPipeline(stack=LocalStackConfig(api=options), name="jwt") as pipeline:
            yield pipeline, issuer


def test_on_gcp_the_function_itself_verifies_tokens_and_scopes_uploads_to_the_subject(
    gcp_jwt_pipeline,
):
    pipeline, issuer = gcp_jwt_pipeline
    api_url = pipeline.outputs()[output_names.API_URL]
    assert ask_upload(api_url, b"x").status_code == 401
    assert ask_upload(api_url, b"x", Authorization="Bearer nonsense").status_code == 401
    alice = {"Authorization": f"Bearer {issuer.token(subject='alice')}"}
    bob = {"Authorization": f"Bearer {issuer.token(subject='bob')}"}
    data = jpeg((320, 240))
    created = ask_upload(api_url, data, **alice)
    assert created.status_code == 201 and created.json()["key"].startswith("alice/")
    body = created.json()
    post_form(body["upload"], data)
    assert follow(api_url, body["id"], **alice)[-1][1] == "COMPLETED"
    # Bob asks for Alice's id: his prefix holds no such upload.
    assert (
        requests.get(f"{api_url}/images/{body['id']}", headers=bob, timeout=10).status_code == 404
    )
