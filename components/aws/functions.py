"""What every Lambda function of a component has, written once: a log group under the name
Lambda writes to, created before the function, an execution role Lambda may assume, and
JSON logging into that group. The pipeline's function and the upload API's both use it.

Resources are created only as children of the component handed in.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pulumi
import pulumi_aws as aws

from components.aws import policies
from components.aws.args import AwsImagePipelineArgs

if TYPE_CHECKING:  # the pipeline imports this module
    from components.aws.pipeline import AwsImagePipeline


def function_logs_and_role(
    component: AwsImagePipeline, prefix: str, function_name: str, args: AwsImagePipelineArgs
) -> tuple[aws.cloudwatch.LogGroup, aws.iam.Role]:
    """`<prefix>-logs` (retained `log_retention_days`) and `<prefix>-role`; the role's policy
    is the caller's, since what each function may do differs."""
    child = pulumi.ResourceOptions(parent=component)
    logs = aws.cloudwatch.LogGroup(
        f"{prefix}-logs",
        name=f"/aws/lambda/{function_name}",
        retention_in_days=args.log_retention_days,
        tags=dict(args.tags),
        opts=child,
    )
    role = aws.iam.Role(
        f"{prefix}-role",
        assume_role_policy=json.dumps(policies.lambda_assume_role_policy()),
        tags=dict(args.tags),
        opts=child,
    )
    return logs, role


def json_logging(logs: aws.cloudwatch.LogGroup) -> dict[str, Any]:
    """A function's `logging_config`: JSON lines into `logs`, its own at INFO, Lambda's at WARN."""
    return {
        "log_format": "JSON",
        "log_group": logs.name,
        "application_log_level": "INFO",
        "system_log_level": "WARN",
    }
