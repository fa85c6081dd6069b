from components.gcp.args import GCP_CPUS, GCP_DELIVERY_MODES, GcpImagePipelineArgs
from components.gcp.pipeline import GcpImagePipeline

__all__ = ["GCP_CPUS", "GCP_DELIVERY_MODES", "GcpImagePipeline", "GcpImagePipelineArgs"]
