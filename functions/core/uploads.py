"""The upload API, the same on every cloud: `POST /uploads` and `GET /images/{id}`.

A client asks to upload; the API chooses the key (`<uploadsPrefix><caller>/<id>/<name>`,
never the client's path) and answers a presigned POST that pins that key, the declared
content type and the size range, so the bytes go straight to the uploads bucket without
cloud credentials. The id is the key's unique part: the client can ask `GET /images/{id}`
at once, and hears 404 until the object arrives, then its record's status.

Each cloud's entry point (`functions.aws.api`, `functions.gcp.api`) turns its platform's
request into an `ApiRequest` with the caller already authenticated, and `UploadApi`'s
answer back; the bucket and the records are reached through the `UploadBucket` and
`RecordStore` ports. Nothing here knows a cloud.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from functions.core.ports import RecordStore
from functions.core.records import ImageRecord, Status, TransientError, record_id
from functions.core.settings import INPUT_CONTENT_TYPES, PipelineSettings, SettingsError
from functions.core.timing import isoformat, utc_now

API_OPTIONS_ENV = "IMAGEPIPE_API"  # the API function's ApiOptions, as JSON
UPLOADS_PATH = "/uploads"
IMAGES_PATH = "/images/"
API_AUTH_MODES = ("jwt", "none")
# The caller of an API whose auth is "none": every upload shares this one prefix.
ANONYMOUS_CALLER = "anonymous"
# S3 and GCS both cap a presigned POST's lifetime at 7 days.
MAX_UPLOAD_EXPIRY_SECONDS = 7 * 24 * 3600
MAX_REQUEST_BYTES = 4096  # the JSON body of POST /uploads: three short fields
MAX_FILENAME_CHARS = 200
_SAFE_NAME_CHAR = re.compile(r"[^A-Za-z0-9._-]+")
_SAFE_CALLER = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
_KEY_WITH_UPLOAD_ID = re.compile(r"(?:^|/)([0-9a-f]{32})/[^/]+$")


@dataclass(frozen=True)
class ApiOptions:
    """What the API function is told besides the pipeline settings (one JSON variable)."""

    upload_expiry_seconds: int
    auth: str  # "jwt" or "none"
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    allowed_origins: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, name: str) -> ApiOptions:
        """`name` is the variable the text came from, for the error message."""
        try:
            raw = json.loads(text)
            options = cls(
                upload_expiry_seconds=int(raw["upload_expiry_seconds"]),
                auth=str(raw["auth"]),
                jwt_issuer=raw.get("jwt_issuer"),
                jwt_audience=raw.get("jwt_audience"),
                allowed_origins=tuple(raw.get("allowed_origins") or ()),
            )
        except (ValueError, KeyError, TypeError):
            raise SettingsError(
                f"{name} is not the JSON object the component writes "
                "(upload_expiry_seconds, auth, jwt_issuer, jwt_audience, allowed_origins)."
            ) from None
        options.check()
        return options

    def check(self) -> None:
        """`SettingsError` naming the stack config key of the first unusable option."""
        if self.auth not in API_AUTH_MODES:
            raise SettingsError(f"imagepipe:apiAuth is {self.auth!r}; use one of jwt, none.")
        if self.auth == "jwt":
            for key, value in (
                ("apiJwtIssuer", self.jwt_issuer),
                ("apiJwtAudience", self.jwt_audience),
            ):
                if not value:
                    raise SettingsError(
                        f"imagepipe:apiAuth is jwt but imagepipe:{key} is not set; set "
                        "apiJwtIssuer and apiJwtAudience, or use apiAuth none (demos only)."
                    )
        if not 1 <= self.upload_expiry_seconds <= MAX_UPLOAD_EXPIRY_SECONDS:
            raise SettingsError(
                f"imagepipe:apiUploadExpirySeconds is {self.upload_expiry_seconds}; use 1 to "
                f"{MAX_UPLOAD_EXPIRY_SECONDS} (7 days, the longest a presigned POST lives)."
            )


@dataclass(frozen=True)
class PresignedPost:
    """Where and with which form fields a browser POSTs the file (the file field last)."""

    url: str
    fields: dict[str, str]


@dataclass(frozen=True)
class StoredUpload:
    """The newest object under an upload's key, as the bucket lists it."""

    key: str
    version: str  # what the trigger's event names: S3 ETag, GCS generation


class UploadBucket(Protocol):
    """The uploads bucket as the API sees it. Adapters: `S3UploadBucket`, `GcsUploadBucket`."""

    name: str

    def presigned_post(
        self, key: str, *, content_type: str, max_bytes: int, expires_in: timedelta
    ) -> PresignedPost:
        """A POST policy for exactly `key`, `content_type` and 1..`max_bytes` bytes."""
        ...

    def find(self, prefix: str) -> StoredUpload | None:
        """The object whose key starts with `prefix`, if there is one."""
        ...


class RenditionUrls(Protocol):
    def __call__(self, key: str) -> str:
        """The URL a viewer fetches the rendition at `key` from (the CDN's)."""
        ...


@dataclass(frozen=True)
class ApiRequest:
    method: str
    path: str
    caller: str | None  # the token's subject; None when the API's auth is "none"
    body: bytes = b""


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)

    def json(self) -> str:
        return json.dumps(self.body, separators=(",", ":"))


class RequestRejected(Exception):
    """A request outside the rules: `field` is what was wrong, the message what is allowed."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message

    def response(self) -> ApiResponse:
        return ApiResponse(self.status, {"error": {"field": self.field, "message": self.message}})


CORS_METHODS = ("GET", "POST")
CORS_HEADERS = ("authorization", "content-type")
CORS_MAX_AGE_SECONDS = 3600


def cors_headers(
    origin: str | None, allowed: tuple[str, ...], *, preflight: bool
) -> dict[str, str]:
    """The CORS answer to a request from `origin`: nothing unless the origin is allowed."""
    if not origin or not (origin in allowed or "*" in allowed):
        return {"Vary": "Origin"}
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if preflight:
        headers["Access-Control-Allow-Methods"] = ", ".join(CORS_METHODS)
        headers["Access-Control-Allow-Headers"] = ", ".join(CORS_HEADERS)
        headers["Access-Control-Max-Age"] = str(CORS_MAX_AGE_SECONDS)
    return headers


def caller_segment(subject: str | None) -> str:
    """The key segment of a caller: the token's subject when it is key-safe as it is, else a
    digest of it (two subjects never share a segment, so no caller sees another's images)."""
    if subject is None:
        return ANONYMOUS_CALLER
    if _SAFE_CALLER.match(subject) and subject not in (".", ".."):
        return subject
    return "u-" + hashlib.sha256(subject.encode()).hexdigest()[:32]


def upload_id_in(key: str) -> str | None:
    """The API's id of an upload, from the key it chose (`<prefix><caller>/<id>/<name>`);
    None for any other key. Records carry it, so GET /images/{id} still finds the record
    once the `originals` setting (or its owner) removed the upload itself."""
    match = _KEY_WITH_UPLOAD_ID.search(key)
    return match.group(1) if match else None


def sanitised_filename(filename: Any) -> str:
    """The file name as it goes into the key: letters, digits, '.', '_' and '-' only.

    A name with a path in it is refused rather than cut down: the client meant something
    this API does not do (keys are the server's to choose).
    """
    if not isinstance(filename, str) or not filename.strip():
        raise RequestRejected(400, "filename", "filename is required: the file's name, e.g. a.jpg")
    if "/" in filename or "\\" in filename:
        raise RequestRejected(
            400, "filename", "filename must be a bare file name, without '/' or '\\' (no path)"
        )
    if len(filename) > MAX_FILENAME_CHARS or any(ord(c) < 32 for c in filename):
        raise RequestRejected(
            400,
            "filename",
            f"filename must be at most {MAX_FILENAME_CHARS} printable characters",
        )
    stem, dot, extension = filename.strip().rpartition(".")
    if not dot:
        stem, extension = extension, ""
    stem = _SAFE_NAME_CHAR.sub("-", stem).strip("-.") or "upload"
    extension = _SAFE_NAME_CHAR.sub("", extension)
    return f"{stem}.{extension}" if extension else stem


class UploadApi:
    """The two routes, over one stack's uploads bucket and records."""

    def __init__(
        self,
        *,
        settings: PipelineSettings,
        options: ApiOptions,
        bucket: UploadBucket,
        records: RecordStore,
        rendition_url: RenditionUrls,
        uploads_prefix: str = "",
        clock: Callable[[], datetime] = utc_now,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.settings = settings
        self.options = options
        self.bucket = bucket
        self.records = records
        self.rendition_url = rendition_url
        self.uploads_prefix = uploads_prefix
        self._clock = clock
        self._new_id = new_id
        self.content_types = {INPUT_CONTENT_TYPES[name]: name for name in settings.allowed_formats}

    def handle(self, request: ApiRequest) -> ApiResponse:
        """The answer to one request; never raises for anything a client or an outage did."""
        try:
            if self.options.auth == "jwt" and request.caller is None:
                raise RequestRejected(
                    401,
                    "Authorization",
                    f"send 'Authorization: Bearer <token>' with a token from "
                    f"{self.options.jwt_issuer} for {self.options.jwt_audience}",
                )
            return self._route(request)
        except RequestRejected as rejected:
            return rejected.response()
        except TransientError as outage:  # the bucket or the records store, for a moment
            return ApiResponse(
                503,
                {"error": {"field": "service", "message": f"{outage.message}; try again"}},
                {"Retry-After": "1"},
            )

    def _route(self, request: ApiRequest) -> ApiResponse:
        if request.path == UPLOADS_PATH:
            if request.method != "POST":
                raise RequestRejected(405, "method", "use POST /uploads")
            return self.create_upload(request)
        if request.path.startswith(IMAGES_PATH):
            if request.method != "GET":
                raise RequestRejected(405, "method", "use GET /images/{id}")
            return self.image(request.caller, request.path[len(IMAGES_PATH) :])
        raise RequestRejected(
            404, "path", "no such route; the API has POST /uploads and GET /images/{id}"
        )

    # --- POST /uploads ------------------------------------------------------------------------

    def create_upload(self, request: ApiRequest) -> ApiResponse:
        body = self._json_body(request.body)
        name = sanitised_filename(body.get("filename"))
        content_type = body.get("contentType")
        if content_type not in self.content_types:
            allowed = ", ".join(self.content_types)
            raise RequestRejected(
                400,
                "contentType",
                f"contentType {_brief(content_type)} is not allowed; use {allowed}",
            )
        max_bytes = self.settings.limits.max_bytes
        size = body.get("bytes")
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= max_bytes:
            raise RequestRejected(
                400,
                "bytes",
                f"bytes {_brief(size)} is outside the limit; use a whole number from 1 to "
                f"{max_bytes} (maxBytes)",
            )
        upload_id = self._new_id()
        key = f"{self._caller_prefix(request.caller)}{upload_id}/{name}"
        expires_in = timedelta(seconds=self.options.upload_expiry_seconds)
        post = self.bucket.presigned_post(
            key, content_type=content_type, max_bytes=max_bytes, expires_in=expires_in
        )
        return ApiResponse(
            201,
            {
                "id": upload_id,
                "key": key,
                "expiresAt": isoformat(self._clock() + expires_in),
                "upload": {"url": post.url, "fields": post.fields},
            },
        )

    def _json_body(self, raw: bytes) -> dict[str, Any]:
        if len(raw) > MAX_REQUEST_BYTES:
            raise RequestRejected(
                413, "body", f"the request body must be at most {MAX_REQUEST_BYTES} bytes of JSON"
            )
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise RequestRejected(
                400, "body", 'send a JSON object: {"filename", "contentType", "bytes"}'
            )
        return body

    # --- GET /images/{id} ---------------------------------------------------------------------

    def image(self, caller: str | None, upload_id: str) -> ApiResponse:
        if not _UPLOAD_ID.match(upload_id):
            raise RequestRejected(
                400, "id", "the id is the 32 hexadecimal characters POST /uploads answered"
            )
        # Only the caller's own prefix is searched: another caller's id is simply not found.
        prefix = f"{self._caller_prefix(caller)}{upload_id}/"
        stored = self.bucket.find(prefix)
        if stored is None:
            # Gone from the bucket: deleted or archived after it COMPLETED, or not arrived.
            known = [
                record
                for record in self.records.for_upload(upload_id)
                if record.source.bucket == self.bucket.name and record.source.key.startswith(prefix)
            ]
            if not known:
                raise RequestRejected(
                    404, "id", "no upload with this id has arrived (yet); ask again shortly"
                )
            latest = max(known, key=lambda record: record.updated_at)
            return ApiResponse(200, self.public_view(upload_id, latest.source.key, latest))
        record = self.records.get(record_id(self.bucket.name, stored.key, stored.version))
        return ApiResponse(200, self.public_view(upload_id, stored.key, record))

    def public_view(self, upload_id: str, key: str, record: ImageRecord | None) -> dict[str, Any]:
        """What a client may see of a record: never the bucket, attempts or leases."""
        if record is None:  # arrived; the function has not claimed it yet
            return {"id": upload_id, "key": key, "status": Status.PENDING.value}
        image = record.image
        return {
            "id": upload_id,
            "key": key,
            "status": record.status.value,
            "error": {"code": record.error.code, "message": record.error.message}
            if record.error
            else None,
            "image": {
                "format": image.format,
                "width": image.width,
                "height": image.height,
                "frames": image.frames,
                "hasAlpha": image.has_alpha,
                "capturedAt": image.captured_at,
                # What a page shows before the thumbnail arrives.
                "placeholder": image.placeholder,
                "dominantColour": image.dominant_colour,
            }
            if image
            else None,
            "renditions": [
                {
                    "name": rendition.name,
                    "width": rendition.width,
                    "height": rendition.height,
                    "format": rendition.format,
                    "bytes": rendition.bytes,
                    "url": self.rendition_url(rendition.key),
                }
                for rendition in record.renditions
            ],
            # The image's own work; the claim is the records store's conditional write.
            "processingMs": round(
                sum(ms for stage, ms in record.stage_ms.items() if stage != "claim"), 1
            ),
            "createdAt": record.created_at,
            "updatedAt": record.updated_at,
        }

    def _caller_prefix(self, caller: str | None) -> str:
        return f"{self.uploads_prefix}{caller_segment(caller)}/"


def _brief(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, bytes) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
