"""What both components take: the shared settings and the options every cloud has.

Each default is written here once; `AwsImagePipelineArgs` and `GcpImagePipelineArgs`
add only what their cloud alone has, and `components.config` reads the stack config
into them (a key left unset takes the default of its field).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from functions.aws import contract as aws_contract
from functions.core.settings import PipelineSettings
from functions.core.uploads import ApiOptions

# What `pulumi preview` and `pulumi up` warn with imagepipe:apiAuth none: the apiUrl is open.
OPEN_API_WARNING = (
    "imagepipe:apiAuth is none: anyone with the apiUrl can upload to this stack; "
    "use it for demos only."
)
# Lambda's maximumConcurrency of an SQS event source mapping is 2-1000; GCP's work queue
# takes the same range, so a stack's value means the same on both clouds.
BACKFILL_CONCURRENCY_RANGE = (2, 1000)


@dataclass(frozen=True)
class PipelineArgs:
    settings: PipelineSettings
    """What to accept and which renditions to write; the function's memory is among them."""
    python_version: str = "3.12"
    """Python of the function runtime, 3.12 or newer."""
    timeout_seconds: int = 60
    """Time limit of one invocation."""
    max_event_age_seconds: int = 3600
    """How long a failing event is retried; then its record ends FAILED `retries_exhausted`."""
    uploads_prefix: str | None = None
    """Only objects whose key starts with this are processed."""
    uploads_suffix: str | None = None
    """Only objects whose key ends with this are processed."""
    alarm_email: str | None = None
    """Where alerts are e-mailed, if set."""
    originals_expiry_days: int | None = None
    """Delete uploads this many days after creation; keep them forever when unset."""
    tags: dict[str, str] = field(default_factory=dict)
    """Tags (AWS) or labels (GCP) on every resource that takes them."""
    api: bool = False
    """Stand up the upload API: presigned POSTs to the uploads bucket and the status route."""
    api_auth: str = "jwt"
    """`jwt` (tokens from `api_jwt_issuer` for `api_jwt_audience`) or `none` (demos only)."""
    api_jwt_issuer: str | None = None
    """The OpenID issuer URL whose keys sign the callers' tokens (its `iss`)."""
    api_jwt_audience: str | None = None
    """The audience (`aud`) a token must be issued for."""
    api_allowed_origins: tuple[str, ...] = ()
    """Web origins allowed to call the API and to POST to the uploads bucket (no wildcard
    unless you write one)."""
    api_upload_expiry_seconds: int = 300
    """How long a presigned POST stays valid."""
    # One config key for both clouds' work queues, so one declared default: each cloud's args
    # take their own contract's, and tests/infra/test_main_config.py keeps the two equal.
    backfill_concurrency: int = aws_contract.DEFAULT_BACKFILL_CONCURRENCY
    """Most work-queue deliveries (backfill, reprocess, redrive) processed at once."""

    def api_options(self) -> ApiOptions | None:
        """What the API function is told; None without the API. `SettingsError` if unusable."""
        if not self.api:
            return None
        options = ApiOptions(
            upload_expiry_seconds=self.api_upload_expiry_seconds,
            auth=self.api_auth,
            jwt_issuer=self.api_jwt_issuer,
            jwt_audience=self.api_jwt_audience,
            allowed_origins=self.api_allowed_origins,
        )
        options.check()
        return options
