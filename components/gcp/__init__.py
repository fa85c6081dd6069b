"""The GCP component. Its args import without pulumi_gcp (about half a second), so an AWS
stack can check that no GCP-only key is set without loading the GCP provider."""

from components.gcp.args import GCP_CPUS, GCP_DELIVERY_MODES, GcpImagePipelineArgs

__all__ = ["GCP_CPUS", "GCP_DELIVERY_MODES", "GcpImagePipeline", "GcpImagePipelineArgs"]


def __getattr__(name: str):
    if name == "GcpImagePipeline":
        from components.gcp.pipeline import GcpImagePipeline

        return GcpImagePipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
