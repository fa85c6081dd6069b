from components.aws.args import (
    AWS_ARCHITECTURES,
    AWS_LOG_RETENTION_DAYS,
    AWS_PRICE_CLASSES,
    AwsImagePipelineArgs,
)
from components.aws.pipeline import AwsImagePipeline

__all__ = [
    "AWS_ARCHITECTURES",
    "AWS_LOG_RETENTION_DAYS",
    "AWS_PRICE_CLASSES",
    "AwsImagePipeline",
    "AwsImagePipelineArgs",
]
