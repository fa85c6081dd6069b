"""`imagepipe backfill --dev` on each cloud's dev pipeline, through the CLI: objects put
outside the trigger's prefix (so nothing processed them, as if they were there before the
pipeline) end COMPLETED through the work queue, and a second run enqueues nothing."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from functions.core.records import Status
from functions.local.cli import main
from functions.local.samples import small_png
from functions.local.target import PipelineTarget


def outputs_file(pipeline: Any, tmp_path: Path) -> Path:
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(pipeline.outputs()), encoding="utf-8")
    return path


def backfill_outside_the_trigger(
    pipeline: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = outputs_file(pipeline, tmp_path)
    target = PipelineTarget.from_outputs(pipeline.outputs(), "the test pipeline")
    prefix = f"before-{uuid.uuid4().hex[:8]}/"  # outside the trigger's prefix: no record
    assert not prefix.startswith(target.uploads_prefix) and target.uploads_prefix
    ids = []
    for n in range(3):
        path = tmp_path / f"old-{n}.png"
        path.write_bytes(small_png(seed=900 + n))
        ids.append(target.put(path, f"{prefix}{path.name}"))
    assert target.records.get_many(ids) == {}

    argv = ["backfill", "--outputs", str(outputs), "--prefix", prefix, "--timeout", "60"]
    capsys.readouterr()
    code = main(argv)
    out = capsys.readouterr().out

    assert code == 0, out
    assert out.startswith("listed 3, enqueued 3, skipped 0, "), out
    assert "completed 3, failed 0, pending 0 of 3" in out
    records = target.records.get_many(ids)
    assert [records[rid].status for rid in ids] == [Status.COMPLETED] * 3
    assert all(records[rid].attempts == 1 for rid in ids)

    assert main(argv) == 0
    again = capsys.readouterr().out
    assert again.startswith("listed 3, enqueued 0, skipped 3 (done 3), "), again


@pytest.mark.emulator
@pytest.mark.timeout(120)
def test_backfill_on_the_aws_dev_pipeline(
    dev_pipeline: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backfill_outside_the_trigger(dev_pipeline, tmp_path, capsys)


@pytest.mark.emulator
@pytest.mark.timeout(180)
def test_backfill_on_the_gcp_dev_pipeline(
    gcp_dev_pipeline: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backfill_outside_the_trigger(gcp_dev_pipeline, tmp_path, capsys)
