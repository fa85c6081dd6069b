"""Arguments of `AwsImagePipeline`: the shared ones plus what only AWS has."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from components.args import PipelineArgs
from functions.aws import contract

AWS_ARCHITECTURES = ("arm64", "x86_64")

AWS_PRICE_CLASSES = ("PriceClass_100", "PriceClass_200", "PriceClass_All")
# The values CloudWatch Logs accepts for a log group's retention.
AWS_LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096)
AWS_LOG_RETENTION_DAYS += (1827, 2192, 2557, 2922, 3288, 3653)


@dataclass(frozen=True)
class AwsImagePipelineArgs(PipelineArgs):
    """The shared arguments; the uploads filter is the S3 notification's, and alerts go to an
    SNS topic that e-mails `alarm_email`."""

    architecture: Literal["arm64", "x86_64"] = "arm64"
    """Lambda CPU architecture; Pillow is packaged for it."""
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
    api_rate_limit: int = 50
    """Steady requests per second the API's stage lets through (API Gateway throttling)."""
    api_burst_limit: int = 100
    """Requests the API's stage lets through at once, above the steady rate."""
    backfill_concurrency: int = contract.DEFAULT_BACKFILL_CONCURRENCY
    """The work queue's event source mapping's maximumConcurrency: invocations at once."""
