"""100 concurrent uploads: 100 COMPLETED records and 100 events, none lost or duplicated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from functions.local.dev import DevPipeline
from functions.local.emulated_aws import drain_queue
from functions.local.samples import small_png
from functions.local.target import PipelineTarget
from functions.local.upload import Upload, upload_and_wait
from tests.local.conftest import UPLOADS_PREFIX, wait_for

pytestmark = [pytest.mark.emulator, pytest.mark.timeout(90)]

COUNT = 100


def test_100_concurrent_uploads_complete_once_each(
    dev_pipeline: DevPipeline, target: PipelineTarget, tmp_path: Path, sqs: Any
) -> None:
    prefix = f"{UPLOADS_PREFIX}load/"
    uploads = []
    for n in range(COUNT):
        path = tmp_path / f"small-{n:03}.png"
        path.write_bytes(small_png(seed=n))
        uploads.append(Upload(path, f"{prefix}{path.name}"))

    results = upload_and_wait(target, uploads, timeout=60, poll_interval=0.2)

    assert [r.status for r in results].count("COMPLETED") == COUNT, [
        (r.upload.key, r.status) for r in results if r.status != "COMPLETED"
    ]
    assert len({r.record_id for r in results}) == COUNT
    # Exactly one record per upload in the table, each claimed once.
    dynamodb = target.client("dynamodb")
    items = []
    for page in dynamodb.get_paginator("scan").paginate(TableName=target.records_table):
        items.extend(page["Items"])
    # Records only: the table also holds one reference item per content hash.
    records = [i for i in items if "source" in i]
    ours = [i for i in records if i["source"]["M"]["key"]["S"].startswith(prefix)]
    assert len(ours) == COUNT
    assert {i["attempts"]["N"] for i in ours} == {"1"}
    # And exactly one completion event per upload.
    events: list[dict[str, Any]] = []

    def all_events() -> bool:
        events.extend(
            e
            for e in drain_queue(sqs, dev_pipeline.resources.events_queue_url, wait_seconds=1)
            if e["subject"].startswith(prefix)
        )
        return len(events) >= COUNT

    assert wait_for(all_events, timeout=20)
    assert len(events) == COUNT
    assert len({e["id"] for e in events}) == COUNT
    assert {e["type"] for e in events} == {"imagepipe.image.completed"}
