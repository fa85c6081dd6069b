"""What every Cloud Function of a component has, written once: its source archive uploaded
under a name from its content, and the build config that points Cloud Build at it. The
pipeline's function and the upload API's both use it.

Resources are created only as children of the component handed in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pulumi
import pulumi_gcp as gcp

from components.gcp.function_source import SourceKind, build_function_source

if TYPE_CHECKING:  # the pipeline imports this module
    from components.gcp.pipeline import GcpImagePipeline


def function_build_config(
    component: GcpImagePipeline,
    prefix: str,
    kind: SourceKind,
    *,
    entry_point: str,
    python_version: str,
    source_bucket: gcp.storage.Bucket,
    storage_api: gcp.projects.Service,
) -> gcp.cloudfunctionsv2.FunctionBuildConfigArgs:
    """`<prefix>-source-archive` in `source_bucket` (a new object only when the code
    changes, so an unchanged function is not redeployed) and the build config using it."""
    source = build_function_source(kind=kind)
    archive = gcp.storage.BucketObject(
        f"{prefix}-source-archive",
        bucket=source_bucket.name,
        name=source.object_name,
        source=pulumi.FileAsset(str(source.path)),
        content_type="application/zip",
        opts=pulumi.ResourceOptions(parent=component, depends_on=[storage_api]),
    )
    return gcp.cloudfunctionsv2.FunctionBuildConfigArgs(
        runtime="python" + python_version.replace(".", ""),
        entry_point=entry_point,
        source=gcp.cloudfunctionsv2.FunctionBuildConfigSourceArgs(
            storage_source=gcp.cloudfunctionsv2.FunctionBuildConfigSourceStorageSourceArgs(
                bucket=source_bucket.name,
                object=archive.name,
            )
        ),
    )
