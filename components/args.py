"""What both components take: the shared settings and the options every cloud has.

Each default is written here once; `AwsImagePipelineArgs` and `GcpImagePipelineArgs`
add only what their cloud alone has, and `components.config` reads the stack config
into them (a key left unset takes the default of its field).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from functions.core.settings import PipelineSettings


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
