"""Arguments of `GcpImagePipeline`: the shared ones plus what only GCP has."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from components.args import PipelineArgs
from functions.gcp import contract

GCP_DELIVERY_MODES = ("signed-urls", "public", "cdn")
GCP_CPUS = ("0.5", "1", "2", "4", "8")


@dataclass(frozen=True)
class GcpImagePipelineArgs(PipelineArgs):
    """The shared arguments; the uploads filter is applied by the function (Eventarc cannot
    filter storage events by name) and counted as ObjectsSkipped; alerts are e-mailed
    through an e-mail notification channel."""

    region: str = "us-central1"
    """Region of the buckets, the function and its Eventarc trigger."""
    cpu: str = "1"
    """vCPUs of one function instance."""
    max_instances: int = 10
    """Upper bound on concurrent instances (a cost ceiling)."""
    api_max_instances: int = 10
    """Upper bound on the API function's instances: its throttle and cost ceiling."""
    delivery_mode: Literal["signed-urls", "public", "cdn"] = "signed-urls"
    """How renditions reach viewers: signed URLs (private bucket), public read, or Cloud CDN
    through a backend bucket and a global load balancer (opt-in: it has a monthly cost)."""
    backfill_concurrency: int = contract.DEFAULT_BACKFILL_CONCURRENCY
    """The Cloud Tasks queue's max_concurrent_dispatches: tasks dispatched at once."""
