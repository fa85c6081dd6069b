"""The local client on GCP (`functions.local.gcp_client`) against the real GCS, Firestore and
Pub/Sub emulators, without the GCP dev pipeline: records are written and events published
by the function's own adapters (`FirestoreRecordStore`, `PubSubEventPublisher`), as the
function writes them, so `upload`'s wait, `status KEY` and the listing by status are
proven on what the function really leaves behind.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

import functions.local.upload as upload_module
from functions.core.events import lifecycle_event
from functions.core.records import (
    ImageMetadata,
    ImageRecord,
    RenditionRecord,
    Source,
    Status,
    record_id,
)
from functions.gcp.adapters import FirestoreRecordStore, PubSubEventPublisher, sdk_retry
from functions.local.cli import main
from functions.local.gcp_client import GcpPipelineTarget, PubSubEventFeed
from functions.local.samples import small_png
from functions.local.target import PipelineTarget, TargetError
from functions.local.upload import Upload, upload_and_wait, wait_for_records
from tests.functions.gcp.gcp_emulators import PROJECT, GcpClients, GcpNames
from tests.local.test_status import check_listing, listing_records

pytestmark = [pytest.mark.emulator, pytest.mark.timeout(90)]

QUICK_RETRY = sdk_retry(5.0)
UPLOADS_PREFIX = "incoming/"
EMULATOR_VARIABLES = ("STORAGE_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST")


def dev_outputs(emulator_env: dict[str, str], names: GcpNames) -> dict[str, str]:
    """What `imagepipe dev --cloud gcp` writes, for this test's buckets, collection and topic."""
    return {
        "cloud": "gcp",
        "uploadsBucket": names.uploads_bucket,
        "uploadsPrefix": UPLOADS_PREFIX,
        "renditionsBucket": names.renditions_bucket,
        "cdnUrl": f"http://127.0.0.1:9/{names.renditions_bucket}/",
        "eventsTopic": names.topic,
        "functionName": "imagepipe-fn",
        "recordsCollection": names.collection,
        "storageEndpoint": emulator_env["STORAGE_EMULATOR_HOST"],
        "firestoreEmulatorHost": emulator_env["FIRESTORE_EMULATOR_HOST"],
        "pubsubEmulatorHost": emulator_env["PUBSUB_EMULATOR_HOST"],
        "project": PROJECT,
    }


@pytest.fixture
def outputs(emulator_env: dict[str, str], gcp_names: GcpNames) -> dict[str, str]:
    return dev_outputs(emulator_env, gcp_names)


@pytest.fixture
def target(outputs: dict[str, str]) -> GcpPipelineTarget:
    target = PipelineTarget.from_outputs(outputs, "the test outputs")
    assert isinstance(target, GcpPipelineTarget) and target.is_dev
    return target


@pytest.fixture
def outputs_file(outputs: dict[str, str], tmp_path: Path) -> list[str]:
    """The arguments that point a command at the emulators, as `--dev` does."""
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(outputs), encoding="utf-8")
    return ["--outputs", str(path)]


@pytest.fixture
def records(gcp_clients: GcpClients, gcp_names: GcpNames) -> FirestoreRecordStore:
    return FirestoreRecordStore(gcp_clients.firestore, gcp_names.collection, retry=QUICK_RETRY)


@pytest.fixture
def events(gcp_clients: GcpClients, gcp_names: GcpNames) -> PubSubEventPublisher:
    return PubSubEventPublisher(gcp_clients.publisher, gcp_names.topic, retry=QUICK_RETRY)


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[[Sequence[str]], tuple[int, str, str]]:
    def run(argv: Sequence[str]) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def png_file(tmp_path: Path, name: str, seed: int) -> Path:
    path = tmp_path / name
    path.write_bytes(small_png(side=96, seed=seed))
    return path


def completed(rid: str, bucket: str, key: str, generation: str) -> ImageRecord:
    return ImageRecord(
        id=rid,
        source=Source(bucket, key, generation, 100, "cd" * 32, "image/png"),
        status=Status.COMPLETED,
        attempts=1,
        stage_ms={"read": 2.0, "render": 10.0},
        image=ImageMetadata("PNG", 96, 96, "RGB", False, 1, False),
        renditions=(RenditionRecord("thumb", "cd/thumb-200x200.jpg", 96, 96, "jpeg", 900),),
        created_at="2026-11-23T00:00:00.000Z",
        updated_at="2026-11-23T00:00:01.000Z",
    )


class FunctionStandIn:
    """What the function does once an object is finalized, without the function: claim the
    record, publish the final event, then write the final record `record_delay` s later
    (never, with None), so only the event can tell the image is done before that."""

    def __init__(
        self,
        gcp_clients: GcpClients,
        names: GcpNames,
        records: FirestoreRecordStore,
        events: PubSubEventPublisher,
        key: str,
        record_delay: float | None,
    ) -> None:
        self.final: ImageRecord | None = None
        self._args = (gcp_clients, names, records, events, key, record_delay)
        self._thread = threading.Thread(target=self._run, name="function-stand-in", daemon=True)
        self._stop = threading.Event()

    def __enter__(self) -> FunctionStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        gcp_clients, names, records, events, key, record_delay = self._args
        bucket = gcp_clients.storage.bucket(names.uploads_bucket)
        while (blob := bucket.get_blob(key)) is None:
            if self._stop.wait(0.05):
                return
        rid = record_id(names.uploads_bucket, key, str(blob.generation))
        final = completed(rid, names.uploads_bucket, key, str(blob.generation))
        claim = final.evolve(
            status=Status.PROCESSING, image=None, renditions=(), stage_ms={},
            lease_expires_at="3000-01-01T00:00:00.000Z",
        )  # fmt: skip
        records.create(claim)
        events.publish(lifecycle_event(final, source="//test/function-stand-in"))
        self.final = final
        if record_delay is not None and not self._stop.wait(record_delay):
            records.replace(final, expected_status=Status.PROCESSING, expected_attempts=1)


# --- upload and wait ----------------------------------------------------------------------------


def test_an_upload_returns_the_record_id_of_the_generation_it_created(
    target: GcpPipelineTarget, gcp_clients: GcpClients, gcp_names: GcpNames, tmp_path: Path
) -> None:
    key = f"{UPLOADS_PREFIX}generation.png"
    rid = target.put(png_file(tmp_path, "generation.png", seed=1), key)
    blob = gcp_clients.storage.bucket(gcp_names.uploads_bucket).get_blob(key)
    assert blob.content_type == "image/png"
    assert rid == record_id(gcp_names.uploads_bucket, key, str(blob.generation))
    assert target.current_record_id(key) == rid

    again = target.put(png_file(tmp_path, "generation.png", seed=2), key)
    assert again != rid and target.current_record_id(key) == again  # a new generation
    assert target.current_record_id(f"{UPLOADS_PREFIX}never-uploaded.png") is None


def test_clients_reach_the_emulators_without_leaving_variables_set(
    target: GcpPipelineTarget,
) -> None:
    before = {name: os.environ.get(name) for name in EMULATOR_VARIABLES}
    for service in ("storage", "firestore", "subscriber"):
        assert target.client(service) is target.client(service)  # built once
    assert {name: os.environ.get(name) for name in EMULATOR_VARIABLES} == before
    assert target.records.by_status(Status.FAILED, 1) == []  # the Firestore emulator answered


def test_the_record_arrives_through_the_event_feed(
    target, gcp_clients, gcp_names, records, events, tmp_path, monkeypatch
) -> None:
    # The collection is read once at the start and then not for a minute, and the final
    # record is written 30 s after the event: only the feed can report it within 20 s.
    monkeypatch.setattr(upload_module, "SAFETY_POLL_SECONDS", 60)
    key = f"{UPLOADS_PREFIX}feed.png"
    path = png_file(tmp_path, "feed.png", seed=3)
    function = FunctionStandIn(gcp_clients, gcp_names, records, events, key, record_delay=30)
    started = time.monotonic()
    with function:
        [result] = upload_and_wait(target, [Upload(path, key)], timeout=20)
    assert result.status == "COMPLETED"
    assert time.monotonic() - started < 10
    assert result.record == function.final and result.record_id == function.final.id


def test_the_feed_subscription_is_removed_afterwards(
    target, gcp_clients, gcp_names, records, events, tmp_path
) -> None:
    key = f"{UPLOADS_PREFIX}tidy.png"
    path = png_file(tmp_path, "tidy.png", seed=4)
    with FunctionStandIn(gcp_clients, gcp_names, records, events, key, record_delay=0):
        [result] = upload_and_wait(target, [Upload(path, key)], timeout=20)
    assert result.status == "COMPLETED"
    subscriptions = gcp_clients.publisher.list_topic_subscriptions(topic=gcp_names.topic)
    assert list(subscriptions) == [gcp_names.subscription]  # only the test's own


def test_a_record_final_before_the_feed_existed_is_found_in_the_collection(
    target, gcp_names, records, tmp_path
) -> None:
    key = f"{UPLOADS_PREFIX}early.png"
    path = png_file(tmp_path, "early.png", seed=5)
    rid = target.put(path, key)
    generation = generation_of(target, key)
    assert records.create(completed(rid, gcp_names.uploads_bucket, key, generation))

    # Its event was never published: only the collection can tell.
    started = time.monotonic()
    with target.follow_events() as feed:
        assert isinstance(feed, PubSubEventFeed)
        [again] = wait_for_records(
            target.records, [Upload(path, key)], [rid], timeout=20, poll_interval=0.05, events=feed
        )
    assert again.status == "COMPLETED"
    assert time.monotonic() - started < upload_module.SAFETY_POLL_SECONDS


def generation_of(target: GcpPipelineTarget, key: str) -> str:
    return str(target.client("storage").bucket(target.uploads_bucket).get_blob(key).generation)


def test_the_feed_passes_on_lifecycle_events_and_ignores_other_messages(
    target, gcp_clients, gcp_names, events
) -> None:
    record = completed("feed-test", gcp_names.uploads_bucket, "incoming/x.png", "1")
    with target.follow_events() as feed:
        assert feed is not None
        for data in (b"not an event", json.dumps({"data": {"id": 1}}).encode()):
            gcp_clients.publisher.publish(gcp_names.topic, data).result(timeout=10)
        events.publish(lifecycle_event(record, source="//test"))
        received: list[ImageRecord] = []
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            received.extend(feed.receive(wait_seconds=1))
    assert received == [record]


def test_an_empty_receive_waits_its_time_and_no_more(target) -> None:
    with target.follow_events() as feed:
        assert feed is not None
        started = time.monotonic()
        assert feed.receive(wait_seconds=1) == []
        assert 0.9 <= time.monotonic() - started < 2.5
        started = time.monotonic()
        assert feed.receive(wait_seconds=0) == []
        assert time.monotonic() - started < 1


# --- imagepipe status ---------------------------------------------------------------------------


def test_status_of_a_key_prints_its_record_as_upload_does(
    target, gcp_names, records, run_cli, outputs_file, tmp_path
) -> None:
    key = f"{UPLOADS_PREFIX}status.png"
    rid = target.put(png_file(tmp_path, "status.png", seed=6), key)
    record = completed(rid, gcp_names.uploads_bucket, key, generation_of(target, key))
    assert records.create(record)

    code, out, err = run_cli(["status", key, *outputs_file])
    assert (code, err) == (0, "")
    assert out.splitlines()[1].split() == [
        key, "COMPLETED", "96x96", "12", "thumb", target.url("cd/thumb-200x200.jpg"),
    ]  # fmt: skip
    code, out, _ = run_cli(["status", key, "--json", *outputs_file])
    assert ImageRecord.from_dict(json.loads(out)) == record
    assert json.loads(out)["urls"] == {"thumb": target.url("cd/thumb-200x200.jpg")}


def test_status_of_a_key_without_a_record_says_so_in_one_line(
    target, gcp_names, run_cli, outputs_file, tmp_path
) -> None:
    key = f"{UPLOADS_PREFIX}no-record.png"
    rid = target.put(png_file(tmp_path, "no-record.png", seed=7), key)
    code, out, err = run_cli(["status", key, *outputs_file])
    assert (code, out, err) == (
        1,
        "",
        f"imagepipe status: no record yet for {key} (record id {rid})\n",
    )

    code, out, err = run_cli(["status", "missing.png", *outputs_file])
    assert (code, out) == (1, "")
    assert err == f"imagepipe status: no such object: gs://{gcp_names.uploads_bucket}/missing.png\n"


def test_listing_by_status_is_newest_first_limited_and_marks_stale_claims(
    gcp_names, records, run_cli, outputs_file
) -> None:
    written = listing_records(gcp_names.uploads_bucket)
    for record in written.values():
        assert records.create(record)  # as the function writes them
    check_listing(run_cli, outputs_file, written)


# --- outputs ------------------------------------------------------------------------------------


@pytest.fixture
def no_emulator_outputs() -> Iterator[dict[str, str]]:
    yield {
        "uploadsBucket": "imagepipe-uploads-1a2b",
        "renditionsBucket": "imagepipe-renditions-1a2b",
        "cdnUrl": "https://storage.googleapis.com/imagepipe-renditions-1a2b",
        "recordsCollection": "images",
        "eventsTopic": "projects/my-project/topics/imagepipe-events",
        "functionName": "imagepipe-fn",
    }


@pytest.mark.timeout(10)
def test_a_deployed_stack_is_read_from_the_collection_not_followed(no_emulator_outputs) -> None:
    # No `cloud` output (stacks from before it): the records collection says GCP.
    deployed = PipelineTarget.from_outputs(no_emulator_outputs, "stack gcp-prod")
    assert isinstance(deployed, GcpPipelineTarget)
    assert not deployed.is_dev and deployed.where == "GCP (project my-project)"
    assert deployed.uploads_prefix == ""
    with deployed.follow_events() as feed:
        assert feed is None  # no subscription is made in someone's project
    assert upload_module.default_poll_interval(deployed) == upload_module.STACK_POLL_INTERVAL


@pytest.mark.timeout(10)
def test_outputs_naming_only_some_emulators_are_refused(no_emulator_outputs) -> None:
    half = {**no_emulator_outputs, "cloud": "gcp", "storageEndpoint": "http://127.0.0.1:9"}
    with pytest.raises(TargetError) as refused:
        PipelineTarget.from_outputs(half, "outputs.json")
    assert str(refused.value) == (
        "outputs.json names some emulators but not firestoreEmulatorHost, pubsubEmulatorHost; "
        "`imagepipe dev` writes all three"
    )
    with pytest.raises(
        TargetError, match="x has no cdnUrl output; is it an imagepipe stack on GCP"
    ):
        PipelineTarget.from_outputs({"cloud": "gcp", "uploadsBucket": "u"}, "x")
    # The collection is always `images` in the (default) database: an older stack may omit it.
    named = PipelineTarget.from_outputs({"cloud": "gcp", "uploadsBucket": "u", "cdnUrl": "c"}, "x")
    assert named.records_collection == "images"  # type: ignore[attr-defined]
    with pytest.raises(TargetError, match="x names cloud 'azure'; expected aws or gcp"):
        PipelineTarget.from_outputs({**no_emulator_outputs, "cloud": "azure"}, "x")


def test_list_uploads_pages_through_the_prefix_with_generations_and_sizes(
    target: GcpPipelineTarget, gcp_clients: GcpClients, gcp_names: GcpNames
) -> None:
    import dataclasses

    bucket = gcp_clients.storage.bucket(gcp_names.uploads_bucket)
    written = {}
    for name in ("incoming/a.png", "incoming/b.png", "incoming/sub/c.png", "other/d.png"):
        blob = bucket.blob(name)
        blob.upload_from_string(b"x" * len(name), content_type="image/png")
        written[name] = str(blob.generation)
    paged = dataclasses.replace(target, list_page_size=2)  # two pages and a half
    listed = list(paged.list_uploads(UPLOADS_PREFIX))
    assert [(r.key, r.version, r.size) for r in listed] == [
        (name, written[name], len(name)) for name in sorted(written) if name.startswith("incoming/")
    ]
    assert {r.bucket for r in listed} == {gcp_names.uploads_bucket}
    assert len(list(target.list_uploads())) == 4
