"""Arguments of `GcpImagePipeline`: the shared settings plus what only GCP has."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from functions.core.settings import PipelineSettings

GCP_DELIVERY_MODES = ("signed-urls", "public", "cdn")
GCP_CPUS = ("0.5", "1", "2", "4", "8")


@dataclass(frozen=True)
class GcpImagePipelineArgs:
    settings: PipelineSettings
    """What to accept and which renditions to write (shared with AWS)."""
    region: str = "us-central1"
    """Region of the buckets, the function and its Eventarc trigger."""
    python_version: str = "3.12"
    """Python of the Cloud Functions gen2 runtime (`python312`), 3.12 or newer."""
    cpu: str = "1"
    """vCPUs of one function instance."""
    timeout_seconds: int = 60
    """Timeout of one invocation."""
    max_instances: int = 10
    """Upper bound on concurrent instances (a cost ceiling)."""
    max_event_age_seconds: int = 3600
    """Events older than this are recorded FAILED (`expired`) and acknowledged."""
    delivery_mode: Literal["signed-urls", "public", "cdn"] = "signed-urls"
    """How renditions reach viewers: signed URLs (private bucket), public read, or Cloud CDN
    through a backend bucket and a global load balancer (opt-in: it has a monthly cost)."""
    uploads_prefix: str | None = None
    """Only objects whose name starts with this are processed (the function checks: Eventarc
    cannot filter by name); others are acknowledged and counted as ObjectsSkipped."""
    uploads_suffix: str | None = None
    """Only objects whose name ends with this are processed, likewise."""
    alarm_email: str | None = None
    """Where the alert policies e-mail their incidents (an e-mail notification channel)."""
    originals_expiry_days: int | None = None
    """Delete uploads this many days after creation; keep them forever when unset."""
    labels: dict[str, str] = field(default_factory=dict)
    """Labels on every resource that takes them."""
