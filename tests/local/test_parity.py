"""One parity suite: the same scenarios on both local pipelines, the same results.

The emulated AWS (the package's `dev_pipeline`: moto and the real Lambda handler) and
the emulated GCP (emulators, the real function behind functions-framework and an
Eventarc stand-in) each start once for this module, with the same settings. Every
scenario runs on both and asserts that they produce the same record (ignoring ids,
versions, bucket names, timestamps and timings), the same event data and type, the
same rendition keys and the same rendition bytes.
"""

from __future__ import annotations

import copy
import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from functions.core.records import FINAL_STATUSES, ImageRecord
from functions.gcp import contract as gcp_contract
from functions.local.dev import DevPipeline, GcpDevPipeline
from functions.local.emulated_aws import boto3_client
from functions.local.emulated_gcp import missing_tools, publisher_client
from functions.local.stack_config import LocalStackConfig
from functions.local.target import PipelineTarget
from functions.local.upload import Upload, upload_and_wait
from tests.conftest import require
from tests.core.hostile_files import jpeg_with_app1_segments, png_of_zeros, webp_canvas

from .conftest import UPLOADS_PREFIX, FaultInjection
from .toggle_proxy import ToggleProxy

pytestmark = pytest.mark.emulator

# What may differ between the clouds for the same image: where it lives, when, how long.
PLATFORM_FIELDS = ("id", "created_at", "updated_at", "lease_expires_at", "stage_ms")
PLATFORM_SOURCE_FIELDS = ("bucket", "version", "content_type")


@dataclass
class Cloud:
    name: str
    target: PipelineTarget
    redeliver: Any  # (key) -> None: the platform delivers the object's event once more
    duplicates_handled: Any  # (key) -> int: deliveries the function answered as duplicates


# The GCP side's retries end by age (Eventarc's maximum event age); short here, so the
# scenario that exhausts them takes seconds, long enough for every other one to finish.
GCP_MAX_EVENT_AGE_SECONDS = 20
# The GCP function's dependencies, each behind a proxy the outage scenarios cut off:
# service -> the SDK's emulator variable and the outputs key of the real emulator.
GCP_DEPENDENCIES = {
    "storage": ("STORAGE_EMULATOR_HOST", "storageEndpoint"),
    "records": ("FIRESTORE_EMULATOR_HOST", "firestoreEmulatorHost"),
    "events": ("PUBSUB_EMULATOR_HOST", "pubsubEmulatorHost"),
}
AWS_SERVICES = {"storage": "s3", "records": "dynamodb", "events": "sns"}


@pytest.fixture(scope="module")
def proxies() -> Iterator[dict[str, ToggleProxy]]:
    made = {service: ToggleProxy() for service in GCP_DEPENDENCIES}
    yield made
    for proxy in made.values():
        proxy.close()


@pytest.fixture(scope="module")
def gcp_pipeline(
    tmp_path_factory: pytest.TempPathFactory, proxies: dict[str, ToggleProxy]
) -> Iterator[GcpDevPipeline]:
    require(missing_tools())
    logs = tmp_path_factory.mktemp("parity-gcp")
    overrides = {
        variable: ("http://" if service == "storage" else "") + proxies[service].address
        for service, (variable, _) in GCP_DEPENDENCIES.items()
    }
    pipeline = GcpDevPipeline(
        stack=LocalStackConfig(
            uploads_prefix=UPLOADS_PREFIX, max_event_age_seconds=GCP_MAX_EVENT_AGE_SECONDS
        ),
        function_log=logs / "function.log",
        # An outage is met within a second instead of after the SDK's 20 s of retries.
        function_environment_overrides={**overrides, gcp_contract.SDK_RETRY_SECONDS: "1"},
    )
    pipeline.function_log_path = logs / "function.log"  # type: ignore[attr-defined]
    with pipeline:
        outputs = pipeline.outputs()
        for service, (_, output) in GCP_DEPENDENCIES.items():
            host, _, port = outputs[output].removeprefix("http://").rpartition(":")
            proxies[service].target = (host, int(port))
        yield pipeline


@pytest.fixture(scope="module")
def clouds(dev_pipeline: DevPipeline, gcp_pipeline: GcpDevPipeline) -> list[Cloud]:
    aws_target = PipelineTarget.from_outputs(dev_pipeline.outputs(), "the emulated AWS")
    gcp_target = PipelineTarget.from_outputs(gcp_pipeline.outputs(), "the emulated GCP")
    sqs = boto3_client("sqs", dev_pipeline.endpoint)
    s3 = boto3_client("s3", dev_pipeline.endpoint)
    assert dev_pipeline.resources is not None
    trigger_queue = dev_pipeline.resources.trigger_queue_url
    publisher = publisher_client(gcp_pipeline.outputs()["pubsubEmulatorHost"])
    storage = gcp_target.client("storage")  # type: ignore[attr-defined]

    def redeliver_on_aws(key: str) -> None:
        """S3's notification for the object, sent to the queue S3 notifies, once more."""
        head = s3.head_object(Bucket=aws_target.uploads_bucket, Key=key)
        record = {
            "eventSource": "aws:s3",
            "eventName": "ObjectCreated:Put",
            "s3": {
                "bucket": {"name": aws_target.uploads_bucket},
                "object": {"key": key, "size": head["ContentLength"], "eTag": head["ETag"]},
            },
        }
        sqs.send_message(QueueUrl=trigger_queue, MessageBody=json.dumps({"Records": [record]}))

    def redeliver_on_gcp(key: str) -> None:
        """The bucket's finalize notification for the object, published once more."""
        blob = storage.bucket(gcp_target.uploads_bucket).get_blob(key)
        resource = {**blob._properties, "bucket": blob.bucket.name, "name": blob.name}
        attributes = {
            "eventType": "OBJECT_FINALIZE",
            "payloadFormat": "JSON_API_V1",
            "bucketId": blob.bucket.name,
            "objectId": blob.name,
            "objectGeneration": str(blob.generation),
        }
        topic = gcp_pipeline.resources.trigger_topic
        publisher.publish(topic, json.dumps(resource).encode(), **attributes).result(timeout=10)

    def aws_duplicates(key: str) -> int:
        # The handler logs duplicates below the pipeline's WARNING level; the stand-in
        # counts every invocation, and a finished image's only invocations are duplicates.
        assert dev_pipeline.invoker is not None
        return dev_pipeline.invoker.invocations

    def gcp_duplicates(key: str) -> int:
        lines = function_log.read_text(errors="replace").splitlines()
        entries = [json.loads(line) for line in lines if line.startswith("{")]
        return sum(1 for e in entries if e.get("key") == key and e.get("action") == "duplicate")

    function_log = gcp_pipeline.function_log_path
    return [
        Cloud("aws", aws_target, redeliver_on_aws, aws_duplicates),
        Cloud("gcp", gcp_target, redeliver_on_gcp, gcp_duplicates),
    ]


def comparable(record: ImageRecord) -> dict[str, Any]:
    data = copy.deepcopy(record.to_dict())
    for field in PLATFORM_FIELDS:
        data.pop(field, None)
    for field in PLATFORM_SOURCE_FIELDS:
        data["source"].pop(field, None)
    return data


def fetched(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


@dataclass
class Outcome:
    record: ImageRecord  # as its event carried it
    stored: ImageRecord  # as the records store holds it
    renditions: dict[str, bytes]  # rendition key -> bytes, through the CDN stand-in


def stored_when_final(target: PipelineTarget, ids: list[str]) -> dict[str, ImageRecord]:
    """The stored records, once all are final: the event goes out before the final write."""
    deadline = time.monotonic() + 15
    while True:
        stored = target.records.get_many(ids)
        final = all(r.status in FINAL_STATUSES for r in stored.values())
        if (len(stored) == len(set(ids)) and final) or time.monotonic() > deadline:
            return stored
        time.sleep(0.1)


def run_everywhere(clouds: list[Cloud], files: list[Path], prefix: str) -> dict[str, list[Outcome]]:
    """Upload `files` under `prefix` on every cloud; each one's final outcomes, in order."""
    outcomes: dict[str, list[Outcome]] = {}
    for cloud in clouds:
        uploads = [Upload(path, f"{UPLOADS_PREFIX}{prefix}{path.name}") for path in files]
        results = upload_and_wait(cloud.target, uploads, timeout=120)
        missing = [r.upload.key for r in results if r.record is None]
        assert missing == [], f"{cloud.name}: no final record for {missing}"
        stored = stored_when_final(cloud.target, [r.record_id for r in results])
        outcomes[cloud.name] = [
            Outcome(
                r.record,
                stored[r.record_id],
                {x.key: fetched(cloud.target.url(x.key)) for x in r.record.renditions},
            )
            for r in results
            if r.record is not None
        ]
    return outcomes


def assert_same_everywhere(outcomes: dict[str, list[Outcome]]) -> None:
    aws, gcp = outcomes["aws"], outcomes["gcp"]
    for mine, theirs in zip(aws, gcp, strict=True):
        key = mine.record.source.key
        assert comparable(mine.record) == comparable(theirs.record), key
        # The event carries exactly the record that is stored, on both clouds.
        assert mine.stored == mine.record and theirs.stored == theirs.record, key
        assert mine.renditions == theirs.renditions, f"{key}: rendition keys or bytes differ"


def test_every_corpus_photo_ends_the_same_on_both_clouds(clouds, corpus_photos):
    photos = sorted(path for path in corpus_photos.iterdir() if path.is_file())
    outcomes = run_everywhere(clouds, photos, "corpus/")
    assert {o.record.status.value for o in outcomes["aws"]} == {"COMPLETED"}
    assert_same_everywhere(outcomes)


def test_hostile_files_fail_with_the_same_code_on_both_clouds(clouds, tmp_path):
    files = {
        "notes.jpg": b"just some text, not a photo\n",
        "canvas-bomb.webp": webp_canvas(10_000, 10_000),
        "strip.png": png_of_zeros(1, 200_000, rgba=False),
        "nine-exif-segments.jpg": jpeg_with_app1_segments(9, segment_bytes=1000),
        "empty.png": b"",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    outcomes = run_everywhere(clouds, sorted(tmp_path.iterdir()), "hostile/")
    codes = {o.record.source.key.rsplit("/", 1)[1]: o.record.error.code for o in outcomes["aws"]}
    assert codes == {
        "canvas-bomb.webp": "over_memory_budget",
        "empty.png": "empty_object",
        "nine-exif-segments.jpg": "too_much_metadata",
        "notes.jpg": "unsupported_format",
        "strip.png": "extreme_aspect_ratio",
    }
    assert_same_everywhere(outcomes)


def test_the_same_bytes_under_a_new_name_reuse_the_same_rendition_keys(
    clouds, corpus_photos, tmp_path
):
    original = corpus_photos / "jpg_orient6_2mp.jpg"
    copy_path = tmp_path / "copy-of-orient6.jpg"
    copy_path.write_bytes(original.read_bytes())
    outcomes = run_everywhere(clouds, [original, copy_path], "same-bytes/")
    for cloud, (first, second) in outcomes.items():
        assert list(first.renditions) == list(second.renditions), cloud
    assert_same_everywhere(outcomes)


def test_a_duplicate_delivery_changes_nothing_and_publishes_nothing(
    clouds, corpus_photos, tmp_path
):
    photo = tmp_path / "delivered-twice.png"
    photo.write_bytes((corpus_photos / "png_horse_rgba.png").read_bytes())
    outcomes = run_everywhere(clouds, [photo], "duplicates/")
    for cloud in clouds:
        (before,) = outcomes[cloud.name]
        key = before.record.source.key
        handled = cloud.duplicates_handled(key)
        with cloud.target.follow_events() as feed:
            assert feed is not None
            cloud.redeliver(key)
            deadline = time.monotonic() + 20
            late: list[ImageRecord] = []
            while time.monotonic() < deadline and cloud.duplicates_handled(key) == handled:
                late += feed.receive(wait_seconds=1)
            assert cloud.duplicates_handled(key) == handled + 1, f"{cloud.name}: not redelivered"
            late += feed.receive(wait_seconds=2)  # an event it wrongly published arrives now
        assert late == [], f"{cloud.name}: a duplicate published {len(late)} event(s)"
        after = cloud.target.records.get_many([before.record.id])[before.record.id]
        assert after == before.stored, cloud.name


# --- outages ------------------------------------------------------------------------------


def outcome_through_an_outage(
    cloud: Cloud,
    path: Path,
    key: str,
    begin: Any,
    end: Any,
    redelivered: Any,
    timeout: float,
) -> tuple[ImageRecord, list[ImageRecord]]:
    """Upload during an outage (`begin`), end it (`end`) once the platform has had to retry
    (`redelivered()` true), and wait: the final record, and every event the feed saw."""
    with cloud.target.follow_events() as feed:
        assert feed is not None
        begin()
        try:
            record_id = cloud.target.put(path, key)
            deadline = time.monotonic() + timeout
            while not redelivered() and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            end()
        events: list[ImageRecord] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not any(e.id == record_id for e in events):
            events += feed.receive(wait_seconds=1)
        events += feed.receive(wait_seconds=2)  # a second event would arrive by now
    stored = stored_when_final(cloud.target, [record_id])[record_id]
    return stored, [e for e in events if e.id == record_id]


@pytest.mark.parametrize("dependency", sorted(GCP_DEPENDENCIES))
def test_an_outage_of_each_dependency_is_retried_and_then_completes_the_same_way(
    clouds, corpus_photos, faults: FaultInjection, gcp_pipeline, proxies, dependency
):
    photo = corpus_photos / "webp_flower.webp"
    key = f"{UPLOADS_PREFIX}outage/{dependency}.webp"
    aws, gcp = clouds
    trigger = gcp_pipeline.trigger
    retried_before = trigger.redelivered
    outcomes = {
        "aws": outcome_through_an_outage(
            aws,
            photo,
            key,
            begin=lambda: faults.outages.__setitem__(key, (AWS_SERVICES[dependency], 1)),
            end=lambda: None,
            redelivered=lambda: faults.attempts.get(key, 0) >= 1,
            timeout=30,
        ),
        "gcp": outcome_through_an_outage(
            gcp,
            photo,
            key,
            begin=proxies[dependency].down,
            end=proxies[dependency].up,
            redelivered=lambda: trigger.redelivered > retried_before,
            timeout=30,
        ),
    }
    for cloud, (record, events) in outcomes.items():
        assert record.status.value == "COMPLETED", f"{cloud}: {record.error}"
        assert [e.status.value for e in events] == ["COMPLETED"], cloud
    assert comparable(outcomes["aws"][0]) == comparable(outcomes["gcp"][0])


def test_when_retries_run_out_both_end_failed_retryable_with_one_failure_event(
    clouds, corpus_photos, faults: FaultInjection, gcp_pipeline, proxies
):
    photo = corpus_photos / "png_horse_rgba.png"
    key = f"{UPLOADS_PREFIX}exhausted/horse.png"
    aws, gcp = clouds
    outcomes = {
        # Lambda gives up after its third attempt; the stand-in dead-letters the event.
        "aws": outcome_through_an_outage(
            aws,
            photo,
            key,
            begin=lambda: faults.outages.__setitem__(key, ("s3", 3)),
            end=lambda: None,
            redelivered=lambda: faults.attempts.get(key, 0) >= 3,
            timeout=30,
        ),
        # Eventarc keeps retrying until the event is older than the maximum event age.
        "gcp": outcome_through_an_outage(
            gcp,
            photo,
            key,
            begin=proxies["storage"].down,
            end=proxies["storage"].up,
            redelivered=lambda: _failed_for_good(gcp.target, key),
            timeout=GCP_MAX_EVENT_AGE_SECONDS + 30,
        ),
    }
    for cloud, (record, events) in outcomes.items():
        assert (record.status.value, record.error.code) == ("FAILED", "retries_exhausted"), cloud
        assert record.error.retryable, cloud  # a redrive may still finish it
        assert [e.status.value for e in events] == ["FAILED"], cloud
        assert events[0] == record, cloud  # the event carries exactly the stored record
    aws_record, gcp_record = outcomes["aws"][0], outcomes["gcp"][0]
    # How many attempts and what the message says are the platforms' own: Lambda counts
    # three, Eventarc retries for as long as the event is young enough.
    for side in (aws_record, gcp_record):
        assert side.renditions == () and side.image is None
    assert comparable(aws_record)["source"] == comparable(gcp_record)["source"]


def _failed_for_good(target: PipelineTarget, key: str) -> bool:
    record_id = target.current_record_id(key)
    records = target.records.get_many([record_id]) if record_id else {}
    record = records.get(record_id) if record_id else None
    return record is not None and record.status.value == "FAILED"
