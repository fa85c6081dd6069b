"""The AWS component. Its args import without pulumi_aws (about half a second), so a GCP
stack can check that no AWS-only key is set without loading the AWS provider."""

from components.aws.args import (
    AWS_ARCHITECTURES,
    AWS_LOG_RETENTION_DAYS,
    AWS_PRICE_CLASSES,
    AwsImagePipelineArgs,
)

__all__ = [
    "AWS_ARCHITECTURES",
    "AWS_LOG_RETENTION_DAYS",
    "AWS_PRICE_CLASSES",
    "AwsImagePipeline",
    "AwsImagePipelineArgs",
]


def __getattr__(name: str):
    if name == "AwsImagePipeline":
        from components.aws.pipeline import AwsImagePipeline

        return AwsImagePipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
