"""Both dev pipelines: the same bytes under a new key take the renditions already made.

The real handler (AWS) and the real function (GCP) run out of this process's reach, so
the decode count is read from the record's own stage timings: a record that decoded has
detect/validate/inspect/render/encode stages, a reused one has `reuse` and none of them.
"""

from __future__ import annotations

import io
import urllib.request
import uuid
from pathlib import Path

import pytest

from functions.core.records import ImageRecord, Status
from functions.local.dev import DevPipeline, GcpDevPipeline
from functions.local.samples import synthetic_photo
from functions.local.target import PipelineTarget
from functions.local.upload import Upload, upload_and_wait

pytestmark = [pytest.mark.emulator, pytest.mark.timeout(180)]

DECODE_STAGES = {"detect", "validate", "inspect", "render", "encode"}


def unique_jpeg() -> bytes:
    """A photo no other test uploads, so its first upload is surely rendered."""
    buffer = io.BytesIO()
    seed = uuid.uuid4().int % 1_000_000
    synthetic_photo(800, 600, seed=seed).save(buffer, "JPEG", quality=88)
    return buffer.getvalue()


def processed(target: PipelineTarget, path: Path, key: str) -> ImageRecord:
    [result] = upload_and_wait(target, [Upload(path, key)], timeout=60)
    assert result.record is not None, f"{key} reached no final record"
    return result.record


def assert_reused(target: PipelineTarget, tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(unique_jpeg())
    name = uuid.uuid4().hex[:8]

    first = processed(target, path, f"{target.uploads_prefix}reuse/{name}-first.jpg")
    second = processed(target, path, f"{target.uploads_prefix}reuse/{name}-again.jpg")

    assert first.status is second.status is Status.COMPLETED
    assert set(first.stage_ms) >= DECODE_STAGES  # the first upload decoded
    assert "reuse" not in first.stage_ms
    assert "reuse" in second.stage_ms and not DECODE_STAGES & set(second.stage_ms)
    assert "store" not in second.stage_ms  # and wrote nothing
    assert second.id != first.id
    assert second.source.sha256 == first.source.sha256
    assert second.renditions == first.renditions
    assert second.image == first.image
    for rendition in second.renditions:  # still served, as the CDN would
        with urllib.request.urlopen(target.url(rendition.key), timeout=10) as response:
            assert response.status == 200 and len(response.read()) == rendition.bytes


def test_aws_the_same_bytes_again_take_the_renditions_without_a_decode(
    dev_pipeline: DevPipeline, target: PipelineTarget, tmp_path: Path
) -> None:
    assert_reused(target, tmp_path)


def test_gcp_the_same_bytes_again_take_the_renditions_without_a_decode(
    gcp_dev_pipeline: GcpDevPipeline, tmp_path: Path
) -> None:
    target = PipelineTarget.from_outputs(gcp_dev_pipeline.outputs(), "the test GCP pipeline")
    assert_reused(target, tmp_path)
