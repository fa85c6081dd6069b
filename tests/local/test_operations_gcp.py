"""Operations on the GCP dev pipeline (real emulators, the real function, the Eventarc and
Cloud Tasks stand-ins): deletes that propagate, what happens to originals, objects the
trigger never saw processed through the work queue, and a redrive after an outage.

The shared `gcp_dev_pipeline` keeps the originals; the two other `originals` modes and the
outage each need a pipeline of their own (about ten seconds to start): three more in all.
The outage's pipeline gives up on an event after a few seconds, so that it ends FAILED
quickly; nothing else runs on it, since a slow first delivery on a loaded machine would end
FAILED the same way.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from functions.core.records import ORIGINAL_DELETED, ImageRecord, ObjectRef, Status, record_id
from functions.core.service import ORIGINAL_ARCHIVED_PREFIX
from functions.core.settings import PipelineSettings
from functions.core.work import WorkItem
from functions.gcp import contract
from functions.local.cli import main
from functions.local.cloud_tasks import TasksBackoff
from functions.local.dev import GcpDevPipeline
from functions.local.emulated_gcp import missing_tools
from functions.local.eventarc import Notification, RetryPolicy, finalized_cloud_event
from functions.local.gcp_client import GcpPipelineTarget
from functions.local.samples import small_png
from functions.local.stack_config import LocalStackConfig
from functions.local.target import PipelineTarget
from tests.conftest import require
from tests.local.conftest import UPLOADS_PREFIX, wait_for
from tests.local.toggle_proxy import ToggleProxy

pytestmark = pytest.mark.timeout(180)

# Distinct bytes per test: content references are shared by everything in the pipeline.
SEEDS = iter(range(12_000, 13_000))


def target_of(pipeline: GcpDevPipeline) -> GcpPipelineTarget:
    target = PipelineTarget.from_outputs(pipeline.outputs(), "the GCP dev pipeline")
    assert isinstance(target, GcpPipelineTarget)
    return target


def put(target: GcpPipelineTarget, key: str, data: bytes) -> ObjectRef:
    blob = target.client("storage").bucket(target.uploads_bucket).blob(key)
    blob.upload_from_string(data, content_type="image/png")
    return ObjectRef(target.uploads_bucket, key, str(blob.generation), len(data))


def record_when(target: GcpPipelineTarget, ref: ObjectRef, *statuses: Status) -> ImageRecord:
    def found() -> ImageRecord | None:
        record = target.records.get_many([ref.record_id]).get(ref.record_id)
        return record if record is not None and record.status in statuses else None

    record = wait_for(found, timeout=60)
    if record is None:
        last = target.records.get_many([ref.record_id]).get(ref.record_id)
        seen = "no record" if last is None else f"{last.status.value} ({last.error})"
        pytest.fail(f"{ref.key} never became {', '.join(statuses)} in 60 s: {seen}")
    return record


def names(target: GcpPipelineTarget, bucket: str, prefix: str = "") -> list[str]:
    return sorted(b.name for b in target.client("storage").list_blobs(bucket, prefix=prefix))


def delete(target: GcpPipelineTarget, key: str) -> None:
    target.client("storage").bucket(target.uploads_bucket).blob(key).delete()


def function_lines(path: Path, key: str) -> list[dict[str, Any]]:
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("key") == key:
            entries.append(entry)
    return entries


# --- the Eventarc stand-in's second trigger, without emulators --------------------------------


def test_a_delete_notification_becomes_an_object_deleted_cloud_event() -> None:
    resource = {"bucket": "uploads", "name": "a/b.png", "generation": 17, "size": 68}
    notification = Notification(
        ack_id="1",
        message_id="42",
        attributes={"eventType": "OBJECT_DELETE", "payloadFormat": "JSON_API_V1"},
        data=json.dumps(resource).encode(),
        publish_time=datetime.now(UTC),
    )
    headers, body = finalized_cloud_event(notification)
    assert headers["ce-type"] == contract.DELETE_EVENT_TYPE
    assert headers["ce-subject"] == "objects/a/b.png"
    assert json.loads(body)["generation"] == "17"


# --- on the shared pipeline -------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(gcp_dev_pipeline: GcpDevPipeline) -> GcpPipelineTarget:
    return target_of(gcp_dev_pipeline)


def test_deleting_the_last_of_two_uploads_of_the_same_bytes_deletes_the_renditions(
    gcp_dev_pipeline: GcpDevPipeline, shared: GcpPipelineTarget
) -> None:
    data = small_png(side=80, seed=next(SEEDS))
    first = put(shared, f"{UPLOADS_PREFIX}twins/first.png", data)
    first_record = record_when(shared, first, Status.COMPLETED)
    second = put(shared, f"{UPLOADS_PREFIX}twins/second.png", data)
    second_record = record_when(shared, second, Status.COMPLETED)
    keys = sorted(r.key for r in first_record.renditions)
    assert keys == sorted(r.key for r in second_record.renditions)  # content-addressed
    sha = first_record.source.sha256
    renditions = gcp_dev_pipeline.resources.renditions_bucket
    assert names(shared, renditions, f"{sha}/") == keys

    with shared.follow_events() as feed:
        assert feed is not None
        delete(shared, first.key)
        assert record_when(shared, first, Status.DELETED).original is None
        assert names(shared, renditions, f"{sha}/") == keys  # the second still uses them

        delete(shared, second.key)
        record_when(shared, second, Status.DELETED)
        assert wait_for(lambda: not names(shared, renditions, f"{sha}/"), timeout=30)

        events: list[ImageRecord] = []
        wait_for(lambda: events.extend(feed.receive(1)) or len(events) >= 2, timeout=30)
    deleted = [e for e in events if e.status is Status.DELETED]
    assert sorted(e.id for e in deleted) == sorted([first.record_id, second.record_id])
    assert len(events) == 2  # one event per record, nothing else


def test_an_object_the_trigger_skips_is_processed_through_the_work_queue(
    gcp_dev_pipeline: GcpDevPipeline, shared: GcpPipelineTarget
) -> None:
    key = f"from-before/{next(SEEDS)}.png"  # outside the trigger's prefix: skipped
    ref = put(shared, key, small_png(side=72, seed=next(SEEDS)))
    assert [listed.key for listed in shared.list_uploads("from-before/")].count(key) == 1
    [listed] = [r for r in shared.list_uploads("from-before/") if r.key == key]
    assert (listed.version, listed.size) == (ref.version, ref.size)
    assert shared.settings == gcp_dev_pipeline.settings
    assert shared.dead_letters() is None

    before = gcp_dev_pipeline.dispatches
    shared.work_queue().enqueue([WorkItem(listed)])
    record = record_when(shared, ref, Status.COMPLETED)
    assert gcp_dev_pipeline.dispatches == before + 1
    assert names(shared, gcp_dev_pipeline.resources.renditions_bucket, f"{record.source.sha256}/")

    shared.work_queue().enqueue([WorkItem(listed)])  # a second backfill: a duplicate
    assert gcp_dev_pipeline.work is not None and gcp_dev_pipeline.work.wait_idle(30)
    assert gcp_dev_pipeline.dispatches == before + 2
    assert shared.records.get_many([ref.record_id])[ref.record_id] == record


# --- originals ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def archiving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcpDevPipeline]:
    require(missing_tools())
    log = tmp_path_factory.mktemp("operations-gcp-archive") / "function.log"
    settings = dataclasses.replace(PipelineSettings(), originals="archive")
    stack = LocalStackConfig(settings=settings, uploads_prefix=UPLOADS_PREFIX)
    with GcpDevPipeline(name="imagepipe-archive", stack=stack, function_log=log) as pipeline:
        pipeline.function_log_path = log  # type: ignore[attr-defined]
        yield pipeline


@pytest.fixture(scope="module")
def proxy() -> Iterator[ToggleProxy]:
    made = ToggleProxy()
    yield made
    made.close()


MAX_EVENT_AGE_SECONDS = 6


@pytest.fixture(scope="module")
def outage(proxy: ToggleProxy) -> Iterator[GcpDevPipeline]:
    """The function's storage behind a proxy the outage cuts off, and Eventarc's retries
    by age cut down to seconds."""
    require(missing_tools())
    pipeline = GcpDevPipeline(
        name="imagepipe-outage",
        stack=LocalStackConfig(
            uploads_prefix=UPLOADS_PREFIX, max_event_age_seconds=MAX_EVENT_AGE_SECONDS
        ),
        function_environment_overrides={
            "STORAGE_EMULATOR_HOST": f"http://{proxy.address}",
            contract.SDK_RETRY_SECONDS: "1",  # an outage is met within a second
        },
        retry=RetryPolicy(initial_seconds=0.5, maximum_seconds=1.0),
        tasks_backoff=TasksBackoff(0.2, 1.0),
    )
    with pipeline:
        host, _, port = (
            pipeline.outputs()["storageEndpoint"].removeprefix("http://").rpartition(":")
        )
        proxy.target = (host, int(port))
        yield pipeline


def test_archive_moves_a_completed_original_under_its_day_and_keeps_the_renditions(
    archiving: GcpDevPipeline,
) -> None:
    target = target_of(archiving)
    assert target.settings.originals == "archive"
    archive_bucket = archiving.outputs()["archiveBucket"]
    assert archive_bucket == archiving.resources.archive_bucket
    data = small_png(side=88, seed=next(SEEDS))
    key = f"{UPLOADS_PREFIX}keepsake.png"
    ref = put(target, key, data)

    record = record_when(target, ref, Status.COMPLETED)
    record = wait_for(
        lambda: (r := target.records.get_many([ref.record_id])[ref.record_id]).original and r,
        timeout=30,
    )
    assert record, "the original was never archived"
    match = re.fullmatch(
        rf"{ORIGINAL_ARCHIVED_PREFIX}{archive_bucket}/(\d{{4}}/\d\d/\d\d)/(.*)", record.original
    )
    assert match and match.group(2) == key
    assert datetime.strptime(match.group(1), "%Y/%m/%d").date() == datetime.now(UTC).date()
    archive_key = f"{match.group(1)}/{key}"
    assert (
        target.client("storage").bucket(archive_bucket).blob(archive_key).download_as_bytes()
        == data
    )
    # The copy is made by a rewrite asking for the ARCHIVE class (the adapter's test checks
    # the request); fake-gcs-server keeps no class on copies, so it is not read back here.
    assert wait_for(lambda: key not in names(target, target.uploads_bucket), timeout=30)
    assert names(
        target, archiving.resources.renditions_bucket, f"{record.source.sha256}/"
    ) == sorted(r.key for r in record.renditions)
    # The upload's removal is the pipeline's own: its delete event leaves the record be.
    log = archiving.function_log_path  # type: ignore[attr-defined]
    assert wait_for(
        lambda: any(e.get("reason") == "no record to delete" for e in function_lines(log, key)),
        timeout=30,
    )
    assert target.records.get_many([ref.record_id])[ref.record_id].status is Status.COMPLETED


def test_an_outage_ends_an_upload_failed_and_a_redrive_through_the_work_queue_completes_it(
    outage: GcpDevPipeline,
    proxy: ToggleProxy,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = target_of(outage)
    key = f"{UPLOADS_PREFIX}during-outage.png"
    proxy.down()
    try:
        ref = put(target, key, small_png(side=76, seed=next(SEEDS)))
        failed = record_when(target, ref, Status.FAILED)
    finally:
        proxy.up()
    assert failed.error is not None and failed.error.code == "retries_exhausted"
    assert failed.error.retryable

    before = outage.dispatches
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(outage.outputs()), encoding="utf-8")
    capsys.readouterr()
    # What an operator runs: the records FAILED retryable go back through the work queue.
    assert main(["redrive", "--outputs", str(outputs), "--timeout", "60"]) == 0
    out = capsys.readouterr().out
    assert "enqueued 1" in out, out
    completed = target.records.get_many([ref.record_id])[ref.record_id]
    assert completed.status is Status.COMPLETED
    assert completed.attempts > failed.attempts
    assert outage.dispatches == before + 1
    assert main(["redrive", "--outputs", str(outputs), "--timeout", "0"]) == 0
    assert "enqueued 0" in capsys.readouterr().out  # nothing left to bring back


@pytest.fixture(scope="module")
def deleting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcpDevPipeline]:
    require(missing_tools())
    settings = dataclasses.replace(PipelineSettings(), originals="delete")
    stack = LocalStackConfig(settings=settings, uploads_prefix=UPLOADS_PREFIX)
    with GcpDevPipeline(name="imagepipe-delete", stack=stack) as pipeline:
        yield pipeline


def test_delete_removes_a_completed_original_and_keeps_its_record_and_renditions(
    deleting: GcpDevPipeline,
) -> None:
    target = target_of(deleting)
    assert "archiveBucket" not in deleting.outputs()
    key = f"{UPLOADS_PREFIX}private.png"
    ref = put(target, key, small_png(side=90, seed=next(SEEDS)))
    record_when(target, ref, Status.COMPLETED)
    assert wait_for(lambda: key not in names(target, target.uploads_bucket), timeout=30)
    record = target.records.get_many([ref.record_id])[ref.record_id]
    assert (record.status, record.original) == (Status.COMPLETED, ORIGINAL_DELETED)
    assert names(target, deleting.resources.renditions_bucket, f"{record.source.sha256}/")
    assert record.id == record_id(target.uploads_bucket, key, ref.version)
