"""Concurrent invocations in the dev pipeline log under their own request id, and print no
metric blobs while metrics are disabled."""

from __future__ import annotations

import importlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from functions.local.dev import DevPipeline
from functions.local.samples import small_png
from functions.local.target import PipelineTarget
from functions.local.upload import Upload, upload_and_wait
from tests.local.conftest import UPLOADS_PREFIX

pytestmark = [pytest.mark.emulator, pytest.mark.timeout(60)]

COUNT = 18  # six per worker: plenty of overlap between the three


class JsonLines(logging.Handler):
    """Formats each record with the handler's own Powertools formatter, in the thread that
    logs it (where its per-thread keys are), as Powertools' stdout handler does."""

    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(formatter)
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def handler_module(dev_pipeline: DevPipeline) -> ModuleType:
    """The handler module the pipeline's workers run (imported by the pipeline's start)."""
    return importlib.import_module("functions.aws.main")


@pytest.fixture
def json_lines(handler_module: ModuleType) -> Iterator[JsonLines]:
    powertools = handler_module.logger
    captured = JsonLines(powertools.registered_formatter)
    logger = logging.getLogger("imagepipe")
    level = logger.level
    logger.setLevel(logging.INFO)  # the package's pipeline runs at WARNING
    logger.addHandler(captured)
    yield captured
    logger.removeHandler(captured)
    logger.setLevel(level)


def test_each_concurrent_invocation_logs_its_own_request_id_and_key(
    target: PipelineTarget, tmp_path: Path, json_lines: JsonLines
) -> None:
    prefix = f"{UPLOADS_PREFIX}log-keys/"
    uploads = []
    for n in range(COUNT):
        path = tmp_path / f"img-{n:02}.png"
        path.write_bytes(small_png(side=200, seed=700 + n))
        uploads.append(Upload(path, f"{prefix}{path.name}"))

    results = upload_and_wait(target, uploads, timeout=45)
    assert [r.status for r in results] == ["COMPLETED"] * COUNT

    ours = [line for line in json_lines.lines if str(line.get("key", "")).startswith(prefix)]
    keys_by_request: dict[object, set[object]] = defaultdict(set)
    for line in ours:
        keys_by_request[line["function_request_id"]].add(line["key"])
    mixed = {rid: keys for rid, keys in keys_by_request.items() if len(keys) != 1}
    assert mixed == {}, f"request ids carrying lines of more than one key: {mixed}"
    assert {line["key"] for line in ours} == {u.key for u in uploads}
    assert len(keys_by_request) == COUNT


def test_no_metric_blob_is_printed_or_kept_while_metrics_are_disabled(
    target: PipelineTarget,
    tmp_path: Path,
    handler_module: ModuleType,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert handler_module.os.environ["POWERTOOLS_METRICS_DISABLED"] == "true"
    uploads = []
    for n in range(6):
        path = tmp_path / f"metric-{n}.png"
        path.write_bytes(small_png(seed=800 + n))
        uploads.append(Upload(path, f"{UPLOADS_PREFIX}metrics/{path.name}"))

    results = upload_and_wait(target, uploads, timeout=30)

    assert [r.status for r in results] == ["COMPLETED"] * len(uploads)
    # Kept metrics are what used to be printed: at 100 values, add_metric flushes anyway.
    assert handler_module.metrics.metric_set == {}
    assert '"_aws"' not in capsys.readouterr().out
