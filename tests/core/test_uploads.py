"""The upload API's rules, on in-memory stores: keys, request checks, the public view, auth."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from functions.core.memory import InMemoryBlobStore, InMemoryRecordStore, InMemoryUploadBucket
from functions.core.records import (
    ErrorInfo,
    ImageMetadata,
    ImageRecord,
    RenditionRecord,
    Source,
    Status,
    record_id,
)
from functions.core.settings import Limits, PipelineSettings, SettingsError
from functions.core.uploads import (
    ApiOptions,
    ApiRequest,
    UploadApi,
    caller_segment,
    cors_headers,
    sanitised_filename,
    upload_id_in,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
UPLOAD_ID = "0123456789abcdef0123456789abcdef"
OPEN = ApiOptions(upload_expiry_seconds=300, auth="none")
JWT = ApiOptions(
    upload_expiry_seconds=120, auth="jwt", jwt_issuer="https://id.example", jwt_audience="app"
)


class Api:
    def __init__(self, options: ApiOptions = OPEN, max_bytes: int = 1000) -> None:
        self.blobs = InMemoryBlobStore()
        self.bucket = InMemoryUploadBucket(self.blobs, name="uploads")
        self.records = InMemoryRecordStore()
        self.api = UploadApi(
            settings=PipelineSettings(limits=Limits(max_bytes=max_bytes)),
            options=options,
            bucket=self.bucket,
            records=self.records,
            rendition_url=lambda key: f"https://cdn.example/{key}",
            uploads_prefix="incoming/",
            clock=lambda: NOW,
            new_id=lambda: UPLOAD_ID,
        )

    def post(self, body, caller: str | None = None):
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.api.handle(ApiRequest("POST", "/uploads", caller, raw))

    def get(self, upload_id: str = UPLOAD_ID, caller: str | None = None):
        return self.api.handle(ApiRequest("GET", f"/images/{upload_id}", caller))


GOOD = {"filename": "cat.jpg", "contentType": "image/jpeg", "bytes": 500}


def test_a_presigned_post_pins_the_servers_key_the_type_the_size_and_the_expiry():
    api = Api()
    response = api.post(GOOD)
    assert response.status == 201
    body = response.body
    assert body["id"] == UPLOAD_ID
    assert body["key"] == f"incoming/anonymous/{UPLOAD_ID}/cat.jpg"
    assert body["expiresAt"] == "2026-12-01T12:05:00.000Z"
    policy = json.loads(body["upload"]["fields"]["policy"])
    assert policy == {
        "key": body["key"],
        "Content-Type": "image/jpeg",
        "content-length-range": [1, 1000],
        "expires_in_seconds": 300,
    }


def test_the_callers_subject_is_its_key_segment():
    api = Api(JWT)
    assert api.post(GOOD, caller="user-42").body["key"] == f"incoming/user-42/{UPLOAD_ID}/cat.jpg"


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({**GOOD, "contentType": "image/heic"}, "contentType", "image/jpeg, image/png"),
        ({**GOOD, "contentType": None}, "contentType", "not allowed"),
        ({**GOOD, "bytes": 1001}, "bytes", "from 1 to 1000"),
        ({**GOOD, "bytes": 0}, "bytes", "from 1 to 1000"),
        ({**GOOD, "bytes": True}, "bytes", "whole number"),
        ({**GOOD, "bytes": "500"}, "bytes", "whole number"),
        ({"contentType": "image/jpeg", "bytes": 5}, "filename", "required"),
        ({**GOOD, "filename": "../../etc/passwd"}, "filename", "no path"),
        ({**GOOD, "filename": "C:\\photos\\cat.jpg"}, "filename", "no path"),
        ({**GOOD, "filename": "a\x00.jpg"}, "filename", "printable"),
        ({**GOOD, "filename": "a" * 201}, "filename", "at most 200"),
        ([1, 2], "body", "JSON object"),
    ],
)
def test_a_request_outside_the_rules_is_400_naming_the_field_and_what_is_allowed(
    body, field, words
):
    response = Api().post(body)
    assert response.status == 400
    error = response.body["error"]
    assert error["field"] == field and words in error["message"]


def test_a_body_that_is_not_json_or_too_long_is_refused():
    assert Api().post(b"{not json").status == 400
    assert Api().post(b"{" + b" " * 5000 + b"}").status == 413


@pytest.mark.parametrize(
    ("name", "kept"),
    [
        ("my photo (1).JPG", "my-photo-1.JPG"),
        ("фото.jpg", "upload.jpg"),
        ("...", "upload"),
        ("README", "README"),
        ("a.b.c.png", "a.b.c.png"),
    ],
)
def test_file_names_keep_only_key_safe_characters(name, kept):
    assert sanitised_filename(name) == kept


def test_subjects_that_are_not_key_safe_become_distinct_digests():
    assert caller_segment("auth0|abc") != caller_segment("auth0-abc")
    assert caller_segment("auth0|abc").startswith("u-")
    assert caller_segment("..").startswith("u-")
    assert caller_segment(None) == "anonymous"


def test_without_a_token_a_jwt_api_answers_401_naming_the_issuer():
    response = Api(JWT).post(GOOD, caller=None)
    assert response.status == 401
    assert "https://id.example" in response.body["error"]["message"]


def _record(api: Api, key: str, **fields) -> ImageRecord:
    version = api.blobs.put_upload("uploads", key, b"bytes")
    record = ImageRecord(
        id=record_id("uploads", key, version),
        source=Source("uploads", key, version),
        status=Status.PROCESSING,
        **fields,
    )
    api.records.records[record.id] = record
    return record


def test_an_upload_is_404_until_it_arrives_then_pending_then_its_records_status():
    api = Api()
    key = f"incoming/anonymous/{UPLOAD_ID}/cat.jpg"
    assert api.get().status == 404
    api.blobs.put_upload("uploads", key, b"bytes")
    assert api.get().body == {"id": UPLOAD_ID, "key": key, "status": "PENDING"}
    api.blobs.objects.clear()
    _record(api, key)
    assert api.get().body["status"] == "PROCESSING"


def test_a_completed_image_shows_metadata_and_cdn_urls_but_nothing_internal():
    api = Api()
    key = f"incoming/anonymous/{UPLOAD_ID}/cat.jpg"
    record = _record(
        api,
        key,
        image=ImageMetadata(
            "JPEG",
            400,
            300,
            "RGB",
            False,
            1,
            False,
            placeholder="1QcSHQRnh493V4dIh4eXh1h4kJUI",
            dominant_colour="#a1b2c3",
        ),
        renditions=(RenditionRecord("thumb", "abc/thumb.jpg", 200, 150, "jpeg", 1234),),
        stage_ms={"claim": 900.0, "render": 10.25, "encode": 5.0},
        lease_expires_at="2026-12-01T12:01:00.000Z",
        attempts=2,
    )
    api.records.records[record.id] = record.evolve(status=Status.COMPLETED)
    body = api.get().body
    assert body["status"] == "COMPLETED" and body["error"] is None
    assert body["image"]["width"] == 400 and body["image"]["format"] == "JPEG"
    assert body["image"]["dominantColour"] == "#a1b2c3" and body["image"]["placeholder"]
    assert body["renditions"] == [
        {
            "name": "thumb",
            "width": 200,
            "height": 150,
            "format": "jpeg",
            "bytes": 1234,
            "url": "https://cdn.example/abc/thumb.jpg",
        }
    ]
    assert body["processingMs"] == 15.2
    text = json.dumps(body)
    assert "attempts" not in text and "lease" not in text and "uploads" not in text


def test_a_failed_image_shows_its_error_code_and_message():
    api = Api()
    key = f"incoming/anonymous/{UPLOAD_ID}/cat.jpg"
    record = _record(api, key)
    api.records.records[record.id] = record.evolve(
        status=Status.FAILED, error=ErrorInfo("corrupt_image", "not a JPEG after all", False)
    )
    body = api.get().body
    assert body["status"] == "FAILED"
    assert body["error"] == {"code": "corrupt_image", "message": "not a JPEG after all"}


def test_a_caller_never_sees_another_callers_upload():
    api = Api(JWT)
    api.blobs.put_upload("uploads", f"incoming/alice/{UPLOAD_ID}/cat.jpg", b"bytes")
    assert api.get(caller="alice").status == 200
    assert api.get(caller="bob").status == 404


def test_routes_methods_and_ids_are_checked():
    api = Api()
    assert api.get("not-an-id").status == 400
    assert api.api.handle(ApiRequest("GET", "/uploads", None)).status == 405
    assert api.api.handle(ApiRequest("DELETE", f"/images/{UPLOAD_ID}", None)).status == 405
    assert api.api.handle(ApiRequest("GET", "/admin", None)).status == 404


def test_an_outage_answers_503_with_retry_after_not_an_exception():
    api = Api()
    api.bucket.unavailable = True
    response = api.get()
    assert response.status == 503 and response.headers["Retry-After"] == "1"
    api.bucket.unavailable = False
    api.blobs.put_upload("uploads", f"incoming/anonymous/{UPLOAD_ID}/cat.jpg", b"x")
    api.records.unavailable = True
    assert api.get().status == 503


def test_cors_allows_exactly_the_listed_origins():
    allowed = ("https://app.example",)
    assert cors_headers("https://evil.example", allowed, preflight=True) == {"Vary": "Origin"}
    granted = cors_headers("https://app.example", allowed, preflight=True)
    assert granted["Access-Control-Allow-Origin"] == "https://app.example"
    assert granted["Access-Control-Allow-Methods"] == "GET, POST"
    assert "Access-Control-Allow-Methods" not in cors_headers(
        "https://app.example", allowed, preflight=False
    )


def test_options_round_trip_and_refuse_what_cannot_work():
    assert ApiOptions.from_json(JWT.to_json(), "IMAGEPIPE_API") == JWT
    with pytest.raises(SettingsError, match="apiJwtAudience is not set"):
        ApiOptions(300, "jwt", jwt_issuer="https://id.example").check()
    with pytest.raises(SettingsError, match="apiUploadExpirySeconds"):
        ApiOptions(10**7, "none").check()
    with pytest.raises(SettingsError, match="IMAGEPIPE_API is not the JSON object"):
        ApiOptions.from_json("[]", "IMAGEPIPE_API")


def test_expiry_follows_the_option():
    api = Api(JWT)
    body = api.post(GOOD, caller="u").body
    assert body["expiresAt"] == (NOW + timedelta(seconds=120)).isoformat(
        timespec="milliseconds"
    ).replace("+00:00", "Z")


def test_a_record_written_by_a_newer_release_still_reads():
    record = ImageRecord(
        id="r",
        source=Source("b", "k", "v"),
        status=Status.COMPLETED,
        image=ImageMetadata("JPEG", 4, 3, "RGB", False, 1, False),
    )
    data = record.to_dict()
    data["image"]["a_field_from_the_future"] = 1
    data["source"]["another"] = "x"
    assert ImageRecord.from_dict(data) == record


def test_an_image_whose_upload_was_removed_after_it_completed_is_still_found():
    api = Api(JWT)
    key = f"incoming/alice/{UPLOAD_ID}/cat.jpg"
    record = _record(api, key)
    api.records.records[record.id] = record.evolve(
        status=Status.COMPLETED, original="deleted", updated_at="2026-12-01T12:00:01.000Z"
    )
    api.blobs.objects.clear()  # originals: delete took the upload away
    body = api.get(caller="alice").body
    assert (body["status"], body["key"]) == ("COMPLETED", key)
    assert api.get(caller="bob").status == 404
    assert upload_id_in(key) == UPLOAD_ID
    assert upload_id_in(f"incoming/{UPLOAD_ID}") is None
    assert upload_id_in("photos/cat.jpg") is None
