"""`imagepipe status` on the AWS dev pipeline: one key, a listing by status (newest first,
limited, stale claims marked), and the one renderer `process`, `upload` and `status` share.

The listing scenario is written here once and run on GCP too, against the Firestore
emulator, by tests/functions/gcp/test_gcp_client.py.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from functions.aws.adapters import DynamoDbRecordStore
from functions.core.records import (
    ErrorInfo,
    ImageMetadata,
    ImageRecord,
    RenditionRecord,
    Source,
    Status,
)
from functions.local import process, upload
from functions.local.cli import main
from functions.local.dev import DevPipeline
from functions.local.render import Row, print_rows
from functions.local.samples import small_png
from functions.local.target import PipelineTarget
from tests.local.conftest import UPLOADS_PREFIX, wait_for

CliRun = Callable[[Sequence[str]], tuple[int, str, str]]  # argv -> (exit code, stdout, stderr)


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> CliRun:
    def run(argv: Sequence[str]) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


# --- the listing scenario, for both clouds ----------------------------------------------------


def listing_records(bucket: str) -> dict[str, ImageRecord]:
    """Three FAILED records and two PROCESSING ones (one claim live, one past its lease),
    updated in the far future so they are the newest in a store other tests share."""
    run = uuid.uuid4().hex[:8]

    def record(name: str, status: Status, second: int, **fields: Any) -> ImageRecord:
        return ImageRecord(
            id=f"listing-{run}-{name}",
            source=Source(bucket, f"{UPLOADS_PREFIX}{run}-{name}.png", "v1", 100),
            status=status,
            attempts=1,
            created_at="2999-01-01T00:00:00.000Z",
            updated_at=f"2999-01-01T00:00:{second:02}.000Z",
            **fields,
        )

    failure = ErrorInfo("corrupt_image", "the PNG data cannot be read", False)
    return {
        "failed-old": record("failed-old", Status.FAILED, 1, error=failure),
        "failed-mid": record("failed-mid", Status.FAILED, 2, error=failure),
        "failed-new": record("failed-new", Status.FAILED, 3, error=failure),
        # A worker that died: its claim ran out long ago, and the record still says PROCESSING.
        "stale": record("stale", Status.PROCESSING, 5, lease_expires_at="2000-01-01T00:00:00.000Z"),
        "live": record("live", Status.PROCESSING, 4, lease_expires_at="3000-01-01T00:00:00.000Z"),
    }


def check_listing(run_cli: CliRun, target_args: Sequence[str], records: dict[str, ImageRecord]):
    """What `status --status` prints for the records of `listing_records`, on any cloud."""
    code, out, err = run_cli(
        ["status", "--status", "FAILED", "--limit", "2", "--json", *target_args]
    )
    assert (code, err) == (0, "")
    listed = [json.loads(line) for line in out.splitlines()]
    assert [row["id"] for row in listed] == [records["failed-new"].id, records["failed-mid"].id]
    assert listed[0]["error"]["code"] == "corrupt_image" and listed[0]["stale"] is False
    assert ImageRecord.from_dict(listed[0]) == records["failed-new"]

    code, out, err = run_cli(["status", "--status", "processing", "--limit", "2", *target_args])
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["KEY", "STATUS", "SIZE", "MS", "RENDITIONS", "/", "ERROR"]
    assert records["stale"].source.key in lines[1] and "stale claim" in lines[1]
    assert records["live"].source.key in lines[2] and "claimed, lease until 3000" in lines[2]

    code, out, _ = run_cli(
        ["status", "--status", "PROCESSING", "--limit", "2", "--json", *target_args]
    )
    stale = {row["id"]: row["stale"] for row in map(json.loads, out.splitlines())}
    assert stale == {records["stale"].id: True, records["live"].id: False}


# --- the one renderer (no emulator) -------------------------------------------------------------


def served_from(base: str) -> Callable[[str], str]:
    return lambda key: f"{base}/{key}"


def a_completed_record(rendition_prefix: str) -> ImageRecord:
    return ImageRecord(
        id="a1b2c3",
        source=Source("uploads", f"{UPLOADS_PREFIX}photo.jpg", "v1", 2048, "ab" * 32, None),
        status=Status.COMPLETED,
        attempts=1,
        stage_ms={"read": 1.25, "render": 40.5, "store": 3.0},
        image=ImageMetadata("JPEG", 1200, 900, "RGB", False, 1, False),
        renditions=(
            RenditionRecord("large", f"{rendition_prefix}ab/large.jpg", 1024, 768, "jpeg", 900),
            RenditionRecord("thumb", f"{rendition_prefix}ab/thumb.jpg", 200, 200, "jpeg", 80),
        ),
        created_at="2026-01-01T00:00:00.000Z",
        updated_at="2026-01-01T00:00:01.000Z",
    )


def test_process_upload_and_status_print_the_same_row_for_the_same_record() -> None:
    # `process` rewrites each rendition key to the path it wrote: with renditions "served"
    # from that directory, the three commands print the same addresses.
    served = served_from("out")
    record = a_completed_record("")
    written = a_completed_record("out/")
    file = Path("photos/photo.jpg")

    def printed(as_json: bool) -> dict[str, str]:
        outputs = {name: io.StringIO() for name in ("process", "upload", "status")}
        process.print_records([written], [file], outputs["process"], as_json=as_json)
        result = upload.UploadResult(upload.Upload(file, record.source.key), record.id, record)
        upload.print_results([result], served, outputs["upload"], as_json=as_json)
        print_rows([Row.of(record)], served, outputs["status"], as_json=as_json)
        return {name: out.getvalue() for name, out in outputs.items()}

    tables = printed(as_json=False)
    assert tables["process"] == tables["upload"] == tables["status"]
    assert tables["upload"].splitlines() == [
        "KEY                 STATUS     SIZE      MS  RENDITIONS / ERROR",
        "incoming/photo.jpg  COMPLETED  1200x900  45  large  out/ab/large.jpg",
        "                                             thumb  out/ab/thumb.jpg",
    ]

    lines = {name: json.loads(text) for name, text in printed(as_json=True).items()}
    assert lines["upload"].pop("file") == lines["process"].pop("file") == str(file)
    assert lines["upload"] == lines["status"]
    assert lines["status"]["urls"] == {"large": "out/ab/large.jpg", "thumb": "out/ab/thumb.jpg"}
    assert lines["status"]["ms"] == 44.8 and lines["status"]["stale"] is False
    # Beyond the rendition keys (paths for `process`), the record's own fields are the same.
    assert lines["process"]["urls"] == lines["status"]["urls"]
    assert ImageRecord.from_dict(lines["status"]) == record


def test_an_upload_still_waiting_is_one_line_with_its_record_id() -> None:
    result = upload.UploadResult(upload.Upload(Path("a.png"), "incoming/a.png"), "rid-1", None)
    out = io.StringIO()
    upload.print_results([result], served_from("https://cdn"), out)
    assert out.getvalue().splitlines()[1].split() == [
        "incoming/a.png", "TIMEOUT", "-", "-", "no", "final", "record", "yet", "(record", "id",
        "rid-1)",
    ]  # fmt: skip
    out = io.StringIO()
    upload.print_results([result], served_from("https://cdn"), out, as_json=True)
    assert json.loads(out.getvalue()) == {
        "key": "incoming/a.png",
        "id": "rid-1",
        "status": "TIMEOUT",
        "file": "a.png",
    }


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["status"], "give either KEY or --status STATUS"),
        (["status", "k", "--status", "FAILED"], "give either KEY or --status STATUS"),
        (["status", "k", "--limit", "3"], "--limit applies to --status listings only"),
        (["status", "--status", "FAILED", "--limit", "0"], "--limit is 0; use 1 to 1000"),
    ],
)
def test_bad_status_arguments_are_one_line_and_exit_2(
    run_cli: CliRun, argv: list[str], complaint: str
) -> None:
    code, out, err = run_cli(argv)
    assert (code, out, err) == (2, "", f"imagepipe status: {complaint}\n")


# --- on the AWS dev pipeline ------------------------------------------------------------------


@pytest.fixture
def dev_outputs(dev_pipeline: DevPipeline, tmp_path: Path) -> list[str]:
    """The arguments that point a command at the package's dev pipeline."""
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(dev_pipeline.outputs()), encoding="utf-8")
    return ["--outputs", str(path)]


@pytest.mark.emulator
@pytest.mark.timeout(60)
def test_upload_then_status_print_the_same_row(
    run_cli: CliRun, dev_outputs: list[str], tmp_path: Path
) -> None:
    photo = tmp_path / "same-row.png"
    photo.write_bytes(small_png(side=120, seed=301))
    code, uploaded, _ = run_cli(["upload", str(photo), "--timeout", "30", *dev_outputs])
    assert code == 0, uploaded
    code, status, err = run_cli(["status", f"{UPLOADS_PREFIX}same-row.png", *dev_outputs])
    assert (code, err) == (0, "")
    assert status == uploaded and "COMPLETED" in status and "thumb  http://127.0.0.1:" in status

    code, uploaded, _ = run_cli(["upload", str(photo), "--timeout", "30", "--json", *dev_outputs])
    code, status, _ = run_cli(["status", f"{UPLOADS_PREFIX}same-row.png", "--json", *dev_outputs])
    first, again = json.loads(uploaded), json.loads(status)
    assert first.pop("file") == str(photo)
    assert first == again  # the current version: the upload just made


@pytest.mark.emulator
@pytest.mark.timeout(60)
def test_status_of_a_key_without_a_record_says_so_in_one_line(
    run_cli: CliRun, dev_outputs: list[str], target: PipelineTarget, tmp_path: Path
) -> None:
    # Outside the uploads prefix nothing triggers, so the object never gets a record.
    path = tmp_path / "unprocessed.png"
    path.write_bytes(small_png(seed=302))
    rid = target.put(path, "elsewhere/unprocessed.png")
    code, out, err = run_cli(["status", "elsewhere/unprocessed.png", *dev_outputs])
    assert (code, out) == (1, "")
    assert (
        err == f"imagepipe status: no record yet for elsewhere/unprocessed.png (record id {rid})\n"
    )

    code, out, err = run_cli(["status", "elsewhere/never-uploaded.png", *dev_outputs])
    assert (code, out) == (1, "")
    assert err == (
        f"imagepipe status: no such object: "
        f"s3://{target.uploads_bucket}/elsewhere/never-uploaded.png\n"
    )


@pytest.mark.emulator
@pytest.mark.timeout(60)
def test_listing_by_status_is_newest_first_limited_and_marks_stale_claims(
    run_cli: CliRun, dev_outputs: list[str], target: Any
) -> None:
    records = listing_records(target.uploads_bucket)
    table = DynamoDbRecordStore(target.client("dynamodb"), target.records_table)
    for record in records.values():
        assert table.create(record)  # as the function writes them
    check_listing(run_cli, dev_outputs, records)


@pytest.mark.emulator
@pytest.mark.timeout(60)
def test_an_empty_listing_says_so_and_exits_0(run_cli: CliRun, dev_outputs: list[str]) -> None:
    code, out, err = run_cli(["status", "--status", "PENDING", *dev_outputs])
    assert (code, out) == (0, "")
    assert err.startswith("imagepipe status: no PENDING records in the dev pipeline at http://")


# --- --stack NAME, through a fake `pulumi` ------------------------------------------------------


def fake_pulumi(folder: Path, outputs: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A `pulumi` first on PATH that prints `outputs` for `pulumi stack output --json`."""
    script = folder / "pulumi"
    script.write_text(
        "#!/bin/sh\n"
        'test "$1 $2 $3" = "stack output --json" || exit 3\n'
        f"cat <<'EOF'\n{json.dumps(outputs)}\nEOF\n",
        encoding="utf-8",
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:/usr/bin:/bin")


def test_a_stack_is_read_from_its_outputs_with_its_uploads_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from functions.local.target import resolve_target

    fake_pulumi(
        tmp_path,
        {
            "uploadsBucket": "imagepipe-uploads-1a2b",
            "uploadsPrefix": "incoming/",
            "renditionsBucket": "imagepipe-renditions-1a2b",
            "cdnUrl": "https://d111111abcdef8.cloudfront.net/",
            "recordsTable": "imagepipe-records-1a2b",
            "eventsTopic": "arn:aws:sns:eu-west-1:123456789012:imagepipe-events-1a2b",
            "functionName": "imagepipe-fn-1a2b",
            "deadLetterQueue": "https://sqs.eu-west-1.amazonaws.com/123456789012/imagepipe-dlq",
        },
        monkeypatch,
    )
    parser = argparse.ArgumentParser()
    upload.add_arguments(parser)
    args = parser.parse_args(["photo.jpg", "--stack", "aws-prod"])
    target = resolve_target(args)  # builds no client: nothing is sent anywhere
    assert target.cloud == "aws" and not target.is_dev and target.where == "AWS"
    assert target.uploads_prefix == "incoming/"
    assert target.region == "eu-west-1"  # type: ignore[attr-defined]
    assert target.url("ab/thumb.jpg") == "https://d111111abcdef8.cloudfront.net/ab/thumb.jpg"
    assert upload.default_poll_interval(target) == upload.STACK_POLL_INTERVAL
    with target.follow_events() as feed:
        assert feed is None  # no queue is made in someone's account


@pytest.mark.emulator
@pytest.mark.timeout(60)
def test_upload_to_a_stack_puts_files_under_its_uploads_prefix(
    run_cli: CliRun, dev_pipeline: DevPipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A "stack" whose outputs are the dev pipeline's, from before `cloud` was written: only
    # keys under its uploadsPrefix are processed, so a COMPLETED record proves the prefix.
    outputs = {k: v for k, v in dev_pipeline.outputs().items() if k != "cloud"}
    assert outputs["uploadsPrefix"] == UPLOADS_PREFIX
    (tmp_path / "bin").mkdir()
    fake_pulumi(tmp_path / "bin", outputs, monkeypatch)
    photo = tmp_path / "via-stack.png"
    photo.write_bytes(small_png(seed=303))
    code, out, err = run_cli(["upload", str(photo), "--stack", "dev", "--json", "--timeout", "30"])
    assert code == 0, err
    row = json.loads(out)
    assert (row["key"], row["status"]) == (f"{UPLOADS_PREFIX}via-stack.png", "COMPLETED")


# --- an original that is gone (the in-memory pipeline of tests/local/test_backfill_cli.py) -------


def status_of(target: PipelineTarget, key: str, *, as_json: bool = False) -> tuple[int, str, str]:
    from functions.local.status import show_one

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = show_one(target, key, as_json=as_json)
    return code, out.getvalue(), err.getvalue()


def test_status_of_a_deleted_original_prints_its_deleted_record() -> None:
    from tests.local.test_backfill_cli import FakeCloud, FakeTarget

    cloud = FakeCloud()
    target = FakeTarget(fake=cloud)
    completed = cloud.upload(f"{UPLOADS_PREFIX}gone.png", seed=11)
    cloud.blobs.delete("uploads", completed.source.key)  # its owner deletes it...
    cloud.pipeline().delete("uploads", completed.source.key)  # ...and the delete event arrives

    code, out, err = status_of(target, completed.source.key, as_json=True)

    assert (code, err) == (1, "")  # found and printed; the image itself is gone
    row = json.loads(out)
    assert (row["id"], row["status"]) == (completed.id, "DELETED")
    code, out, _ = status_of(target, completed.source.key)
    assert out.splitlines()[1].split()[:2] == [completed.source.key, "DELETED"]

    code, out, err = status_of(target, f"{UPLOADS_PREFIX}never.png")
    assert (code, out) == (1, "")
    assert err == f"imagepipe status: no such object: mem://uploads/{UPLOADS_PREFIX}never.png\n"


def test_status_of_an_original_the_pipeline_removed_is_its_completed_record() -> None:
    from tests.local.test_backfill_cli import FAST, FakeCloud, FakeTarget

    cloud = FakeCloud(settings=dataclasses.replace(FAST, originals="delete"))
    target = FakeTarget(fake=cloud)
    completed = cloud.upload(f"{UPLOADS_PREFIX}kept-renditions.png", seed=12)
    assert target.current_record_id(completed.source.key) is None  # `originals: delete`

    code, out, err = status_of(target, completed.source.key, as_json=True)

    assert (code, err) == (0, "")
    row = json.loads(out)
    assert (row["status"], row["original"]) == ("COMPLETED", "deleted")


# --- a deleted original on the dev pipelines: the readers' by-object lookups ------------------


def deleted_then_status(
    run_cli: CliRun, pipeline: Any, tmp_path: Path, delete: Callable[[str], None]
) -> None:
    """Upload, delete the upload, wait for its DELETED record; `status KEY` prints it."""
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(pipeline.outputs()), encoding="utf-8")
    target_args = ["--outputs", str(path)]
    photo = tmp_path / f"deleted-{uuid.uuid4().hex[:8]}.png"
    photo.write_bytes(small_png(side=96, seed=304))
    key = f"{UPLOADS_PREFIX}{photo.name}"
    code, out, err = run_cli(["upload", str(photo), "--json", "--timeout", "60", *target_args])
    assert code == 0, err
    rid = json.loads(out)["id"]

    delete(key)
    target = PipelineTarget.from_outputs(pipeline.outputs(), "the test pipeline")

    def deleted() -> bool:
        record = target.records.get_many([rid]).get(rid)
        return record is not None and record.status is Status.DELETED

    assert wait_for(deleted, timeout=30), "the delete never reached the record"

    code, out, err = run_cli(["status", key, "--json", *target_args])
    assert (code, err) == (1, "")
    row = json.loads(out)
    assert (row["id"], row["key"], row["status"]) == (rid, key, "DELETED")


@pytest.mark.emulator
@pytest.mark.timeout(90)
def test_status_of_a_deleted_original_on_the_aws_dev_pipeline(
    run_cli: CliRun, dev_pipeline: DevPipeline, target: Any, tmp_path: Path
) -> None:
    s3 = target.client("s3")
    deleted_then_status(
        run_cli,
        dev_pipeline,
        tmp_path,
        lambda key: s3.delete_object(Bucket=target.uploads_bucket, Key=key),
    )


@pytest.mark.emulator
@pytest.mark.timeout(150)
def test_status_of_a_deleted_original_on_the_gcp_dev_pipeline(
    run_cli: CliRun, gcp_dev_pipeline: Any, tmp_path: Path
) -> None:
    target: Any = PipelineTarget.from_outputs(gcp_dev_pipeline.outputs(), "the test pipeline")
    bucket = target.client("storage").bucket(target.uploads_bucket)
    deleted_then_status(run_cli, gcp_dev_pipeline, tmp_path, lambda key: bucket.blob(key).delete())
