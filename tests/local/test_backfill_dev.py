"""`imagepipe backfill --dev` on each cloud's dev pipeline, through the CLI: objects put
outside the trigger's prefix (so nothing processed them, as if they were there before the
pipeline) end COMPLETED through the work queue, and a second run enqueues nothing; with
`--stale`, what other specs made is re-rendered once, and a second run enqueues nothing."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from functions.core.records import Status
from functions.core.service import renditions_current
from functions.core.settings import PipelineSettings, RenditionSpec
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


# Renditions a previous release of the stack made: another size and format than the
# dev pipeline's (the defaults), so `--stale` finds them made by other specs.
OLD_SPECS = (RenditionSpec("large", 320, 240, "contain", "png", 80),)


def old_pipeline(cloud: str, environment: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The same stores as the dev pipeline's function, with the renditions of `OLD_SPECS`:
    what the function was before its specs changed."""
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    if cloud == "aws":
        from functions.aws import bootstrap, contract

        env = contract.from_env(environment)
    else:
        from functions.gcp import bootstrap
        from functions.gcp import contract as gcp_contract

        env = gcp_contract.from_env(environment)
    return bootstrap.build_pipeline(replace(env, settings=PipelineSettings(renditions=OLD_SPECS)))


def rerender_what_other_specs_made(
    pipeline: Any,
    cloud: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outputs = outputs_file(pipeline, tmp_path)
    target = PipelineTarget.from_outputs(pipeline.outputs(), "the test pipeline")
    prefix = f"stale-{uuid.uuid4().hex[:8]}/"
    for n in range(2):
        path = tmp_path / f"stale-{n}.png"
        path.write_bytes(small_png(seed=950 + n))
        target.put(path, f"{prefix}{path.name}")
    refs = list(target.list_uploads(prefix))
    old = old_pipeline(cloud, pipeline.function_environment(), monkeypatch)
    assert [old.process(ref).action for ref in refs] == ["completed", "completed"]
    ids = [ref.record_id for ref in refs]
    before = target.records.get_many(ids)
    assert not any(renditions_current(r, target.settings) for r in before.values())

    plain = ["backfill", "--outputs", str(outputs), "--prefix", prefix, "--timeout", "60"]
    capsys.readouterr()
    assert main(plain) == 0  # without --stale, other specs' renditions count as done
    assert capsys.readouterr().out.startswith("listed 2, enqueued 0, skipped 2 (done 2), ")

    assert main([*plain, "--stale"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("listed 2, enqueued 2, skipped 0, "), out
    after = target.records.get_many(ids)
    for record_id in ids:
        record = after[record_id]
        assert record.status is Status.COMPLETED
        assert renditions_current(record, target.settings)
        assert record.attempts == before[record_id].attempts + 1  # re-rendered once
        old_keys = {r.key for r in before[record_id].renditions}
        assert old_keys.isdisjoint(r.key for r in record.renditions)  # next to, not over

    assert main([*plain, "--stale"]) == 0
    assert capsys.readouterr().out.startswith("listed 2, enqueued 0, skipped 2 (done 2), ")


@pytest.mark.emulator
@pytest.mark.timeout(120)
def test_backfill_stale_rerenders_once_on_the_aws_dev_pipeline(
    dev_pipeline: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rerender_what_other_specs_made(dev_pipeline, "aws", tmp_path, capsys, monkeypatch)


@pytest.mark.emulator
@pytest.mark.timeout(180)
def test_backfill_stale_rerenders_once_on_the_gcp_dev_pipeline(
    gcp_dev_pipeline: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rerender_what_other_specs_made(gcp_dev_pipeline, "gcp", tmp_path, capsys, monkeypatch)
