"""Arguments of `AwsImagePipeline`: the shared settings plus what only AWS has."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from functions.core.settings import PipelineSettings

AWS_ARCHITECTURES = ("arm64", "x86_64")

AWS_PRICE_CLASSES = ("PriceClass_100", "PriceClass_200", "PriceClass_All")
# The values CloudWatch Logs accepts for a log group's retention.
AWS_LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096)
AWS_LOG_RETENTION_DAYS += (1827, 2192, 2557, 2922, 3288, 3653)


@dataclass(frozen=True)
class AwsImagePipelineArgs:
    settings: PipelineSettings
    """What to accept and which renditions to write (shared with GCP)."""
    architecture: Literal["arm64", "x86_64"] = "arm64"
    """Lambda CPU architecture; Pillow is packaged for it."""
    python_version: str = "3.12"
    """Python of the Lambda runtime (`python3.12`), 3.12 or newer."""
    timeout_seconds: int = 60
    """Lambda timeout for one invocation."""
    max_event_age_seconds: int = 3600
    """Async events older than this go to the dead-letter queue instead of being retried."""
    reserved_concurrency: int | None = None
    """The cost ceiling on concurrent invocations; unset = the account's unreserved pool."""
    log_retention_days: int = 30
    """Retention of the function's log group."""
    tracing: bool = False
    """X-Ray active tracing."""
    price_class: str = "PriceClass_100"
    """CloudFront price class."""
    cdn_certificate_arn: str | None = None
    """ACM certificate (in us-east-1) CloudFront serves `cdn_aliases` with, at TLSv1.2_2021."""
    cdn_aliases: tuple[str, ...] = ()
    """Domain names the distribution answers to; they need `cdn_certificate_arn`."""
    alarm_email: str | None = None
    """Where alarms and failure events are e-mailed (a subscription to confirm), if set."""
    uploads_prefix: str | None = None
    """Only objects whose key starts with this trigger the function."""
    uploads_suffix: str | None = None
    """Only objects whose key ends with this trigger the function."""
    originals_expiry_days: int | None = None
    """Delete uploads this many days after creation; keep them forever when unset."""
    tags: dict[str, str] = field(default_factory=dict)
    """Tags on every resource that takes them."""
