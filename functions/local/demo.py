"""`make demo`: the real pipeline, end to end, on an emulated AWS and an emulated GCP.

For each cloud it starts the dev pipeline (AWS: moto and the real Lambda handler;
GCP: the Firestore, Pub/Sub and GCS emulators and the real function served by
functions-framework behind an Eventarc stand-in), uploads the same samples the
project generates, plus a broken file and a duplicate, through the same code as
`imagepipe upload`, prints one table per cloud, fetches every rendition over the
CDN stand-in, and stops it. Then one line says whether both clouds wrote the same
rendition bytes. Where gcloud or Java is missing, the GCP half says in one line
what to install and the AWS half still runs. Exit 0 when every outcome is the
expected one.

    python -m functions.local.demo [--cloud aws|gcp|both]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import outputs as output_names
from functions.core.records import Status
from functions.local.dev import DEFAULT_API_PORT, DevPipeline, GcpDevPipeline, resolve_stack_config
from functions.local.emulated_aws import HOST
from functions.local.emulated_gcp import missing_tools
from functions.local.samples import Sample, write_samples
from functions.local.stack_config import LocalStackConfig
from functions.local.target import PipelineTarget, content_type_of
from functions.local.upload import Upload, UploadResult, print_results, upload_and_wait

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CORPUS_PHOTOS = PROJECT_ROOT.parent / "shared" / "corpus" / "photos"
# Two real photos when the shared corpus is next to the project (read there, never copied).
CORPUS_PICKS = ("jpg_orient6_2mp.jpg", "webp_flower.webp")
EMULATED = {"aws": "an emulated AWS", "gcp": "an emulated GCP"}
# The operations the demo shows: deleting both uploads of the same bytes, one at a time,
# and a backfill of an object that was in the bucket before the pipeline.
SHARED_BYTES = ("logo-alpha.png", "logo-alpha-copy.png")
BEFORE_THE_PIPELINE = "before-the-pipeline/"


def corpus_samples() -> list[Sample]:
    return [
        Sample(CORPUS_PHOTOS / name, "COMPLETED", note="real photo from ../shared/corpus")
        for name in CORPUS_PICKS
        if (CORPUS_PHOTOS / name).is_file()
    ]


def check(samples: list[Sample], results: list[UploadResult]) -> list[str]:
    """Every way the outcomes differ from what the samples expect, one sentence each."""
    problems: list[str] = []
    by_name = {result.upload.path.name: result for result in results}
    for sample in samples:
        result = by_name[sample.path.name]
        if result.status != sample.expected_status:
            problems.append(
                f"{sample.path.name}: {result.status}, expected {sample.expected_status}"
            )
            continue
        record = result.record
        if sample.expected_codes and (
            record is None or record.error is None or record.error.code not in sample.expected_codes
        ):
            code = record.error.code if record and record.error else None
            problems.append(
                f"{sample.path.name}: error code {code}, expected one of "
                f"{', '.join(sorted(sample.expected_codes))}"
            )
        if sample.duplicate_of and record is not None:
            original = by_name[sample.duplicate_of].record
            same = original is not None and (
                [r.key for r in original.renditions] == [r.key for r in record.renditions]
            )
            if not same:
                problems.append(
                    f"{sample.path.name}: did not reuse {sample.duplicate_of}'s renditions"
                )
    return problems


def fetch(url: str) -> tuple[int, str, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return (
            response.status,
            response.headers.get("Content-Type", ""),
            response.headers.get("Cache-Control", ""),
            response.read(),
        )


@dataclass
class CloudRun:
    """What one cloud's emulated pipeline made of the samples."""

    cloud: str
    results: list[UploadResult]
    renditions: dict[tuple[str, str], bytes]  # (sample file, rendition name) -> bytes
    problems: list[str]


def dev_pipeline(cloud: str, stack: LocalStackConfig, logs: Path) -> Any:
    if cloud == "aws":
        return DevPipeline(port=0, stack=stack, log_level="WARNING")
    # The function's JSON log lines go to a file, as the Lambda handler's warnings-only do.
    return GcpDevPipeline(stack=stack, function_log=logs / "gcp-function.log")


def run_on(cloud: str, stack: LocalStackConfig, samples: list[Sample], logs: Path) -> CloudRun:
    """Start the cloud's dev pipeline, upload every sample, print the table, stop."""
    with dev_pipeline(cloud, stack, logs) as pipeline:
        outputs = pipeline.outputs()
        target = PipelineTarget.from_outputs(outputs, f"the emulated {cloud.upper()}")
        where = outputs.get("endpoint") or outputs.get("storageEndpoint")
        print(f"\n== {EMULATED[cloud]} at {where}, renditions served at {outputs['cdnUrl']}\n")
        uploads = [Upload(s.path, f"{target.uploads_prefix}{s.path.name}") for s in samples]
        results = upload_and_wait(target, uploads, timeout=90)
        print_results(results, target.url, sys.stdout)
        problems = [f"{cloud}: {problem}" for problem in check(samples, results)]
        photo = next(s.path for s in samples if s.expected_status == "COMPLETED")
        through_api = upload_through_api(outputs[output_names.API_URL], photo)
        print(f"\n  through the upload API, as a browser would: {through_api.summary}")
        if through_api.status != "COMPLETED":
            problems.append(
                f"{cloud}: through the upload API {photo.name} was {through_api.status}"
            )
        renditions: dict[tuple[str, str], bytes] = {}
        for result in results:
            for rendition in result.record.renditions if result.record else ():
                status, content_type, _, body = fetch(target.url(rendition.key))
                if status != 200 or not content_type.startswith("image/"):
                    problems.append(f"{cloud}: the CDN stand-in answered {status} {content_type}")
                renditions[(result.upload.path.name, rendition.name)] = body
        lines, failures = show_operations(target, results, samples)
        for line in lines:
            print(f"  {line}")
        problems += [f"{cloud}: {failure}" for failure in failures]
    return CloudRun(cloud, results, renditions, problems)


def show_operations(
    target: PipelineTarget, results: list[UploadResult], samples: list[Sample]
) -> tuple[list[str], list[str]]:
    """Deletes that propagate and a backfill, as an operator sees them: (lines, problems)."""
    from functions.local.backfill import DEV_POLL_INTERVAL, EnqueueCounts, backfill_pages, follow

    problems: list[str] = []
    by_name = {result.upload.path.name: result for result in results}
    first, copy = (by_name[name] for name in SHARED_BYTES)
    rendition = first.record.renditions[0] if first.record and first.record.renditions else None
    if rendition is None or copy.record is None:
        return [], ["the two uploads of the same bytes did not complete"]
    url = target.url(rendition.key)

    def deleted(result: UploadResult) -> bool:
        target.delete(result.upload.key)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            record = target.records.get_many([result.record_id]).get(result.record_id)
            if record is not None and record.status is Status.DELETED:
                return True
            time.sleep(0.1)
        problems.append(f"{result.upload.path.name} was deleted; its record never said DELETED")
        return False

    kept = deleted(first) and cdn_status(url) == 200
    gone = deleted(copy) and wait_until(lambda: cdn_status(url) == 404, 10)
    if not kept:
        problems.append(f"{SHARED_BYTES[0]} deleted: the renditions its copy shares went too")
    if not gone:
        problems.append(f"{SHARED_BYTES[1]} deleted: the renditions stayed at {url}")
    lines = [
        f"deletes that propagate: {SHARED_BYTES[0]} deleted -> DELETED, renditions kept "
        f"({SHARED_BYTES[1]} has the same bytes); {SHARED_BYTES[1]} deleted -> DELETED, "
        f"renditions gone (the CDN answers 404)"
    ]

    photo = next(s.path for s in samples if s.expected_status == "COMPLETED")
    key = f"{BEFORE_THE_PIPELINE}{photo.name}"  # outside the trigger's prefix: never processed
    target.put(photo, key)
    counts, again = EnqueueCounts(), EnqueueCounts()
    options = {"prefix": BEFORE_THE_PIPELINE, "stale": False, "max_items": None, "dry_run": False}
    watched = backfill_pages(target, counts=counts, **options)
    followed = follow(target.records, watched, timeout=60, poll_interval=DEV_POLL_INTERVAL)
    backfill_pages(target, counts=again, **options)
    completed = len(followed.completed)
    if (counts.enqueued, completed, again.enqueued) != (1, 1, 0):
        problems.append(
            f"backfill: enqueued {counts.enqueued}, completed {completed}, "
            f"then enqueued {again.enqueued}; expected 1, 1, 0"
        )
    lines.append(
        f"backfill: {key}, in the bucket before the pipeline -> enqueued {counts.enqueued}, "
        f"COMPLETED {completed}; a second run enqueued {again.enqueued}"
    )
    return lines, problems


def cdn_status(url: str) -> int:
    try:
        return fetch(url)[0]
    except urllib.error.HTTPError as error:
        return error.code


def wait_until(condition: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@dataclass(frozen=True)
class ApiUpload:
    status: str
    summary: str


def upload_through_api(api_url: str, photo: Path, timeout: float = 60) -> ApiUpload:
    """What the upload page does for one file: ask, post the form to the bucket, follow."""
    import requests

    data = photo.read_bytes()
    started = time.perf_counter()
    asked = requests.post(
        f"{api_url}/uploads",
        json={"filename": photo.name, "contentType": content_type_of(photo), "bytes": len(data)},
        timeout=10,
    )
    if asked.status_code != 201:
        return ApiUpload("REJECTED", f"POST /uploads answered {asked.status_code}: {asked.text}")
    body = asked.json()
    form = body["upload"]
    posted = requests.post(
        form["url"], data=form["fields"], files={"file": (photo.name, data)}, timeout=30
    )
    if not posted.ok:
        return ApiUpload("ERROR", f"the bucket answered {posted.status_code} to the form POST")
    deadline = started + timeout
    while time.perf_counter() < deadline:
        view = requests.get(f"{api_url}/images/{body['id']}", timeout=10)
        status = view.json().get("status") if view.status_code == 200 else None
        if status in ("COMPLETED", "FAILED"):
            ms = (time.perf_counter() - started) * 1000
            renditions = ", ".join(
                f"{r['name']} {r['width']}x{r['height']}" for r in view.json()["renditions"]
            )
            return ApiUpload(status, f"{photo.name} {status} in {ms:.0f} ms ({renditions})")
        time.sleep(0.1)
    return ApiUpload("PENDING", f"{photo.name} not final after {timeout:.0f} s")


def compare(runs: list[CloudRun]) -> tuple[str, list[str]]:
    """One line on whether both clouds wrote the same rendition bytes, and what differs."""
    aws, gcp = runs
    shared = sorted(set(aws.renditions) & set(gcp.renditions))
    different = [
        f"{name} {rendition}"
        for name, rendition in shared
        if aws.renditions[(name, rendition)] != gcp.renditions[(name, rendition)]
    ]
    missing = sorted(set(aws.renditions) ^ set(gcp.renditions))
    if not different and not missing:
        return f"renditions byte-identical across the clouds: {len(shared)} of {len(shared)}", []
    problems = [f"different bytes on the two clouds: {item}" for item in different]
    problems += [f"made on one cloud only: {name} {rendition}" for name, rendition in missing]
    return (
        f"renditions byte-identical across the clouds: {len(shared) - len(different)} of "
        f"{len(shared)}",
        problems,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("--cloud", choices=("aws", "gcp", "both"), default="both")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    stack, source = resolve_stack_config(None)
    clouds = ["aws", "gcp"] if args.cloud == "both" else [args.cloud]
    print(
        "imagepipe demo: the same uploads through the real functions on "
        + " and ".join(EMULATED[c] for c in clouds)
        + f" on 127.0.0.1 (settings from {source})"
    )
    runs: list[CloudRun] = []
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="imagepipe-demo-") as tmp:
        samples = write_samples(Path(tmp)) + corpus_samples()
        for cloud in clouds:
            missing = missing_tools() if cloud == "gcp" else None
            if missing:
                print(f"\n== {EMULATED[cloud]}: not run, {missing}")
                if args.cloud == "gcp":
                    problems.append(f"gcp: {missing}")
                continue
            run = run_on(cloud, stack, samples, Path(tmp))
            runs.append(run)
            problems += run.problems
        print()
        for sample in samples:
            if sample.note:
                print(f"  {sample.path.name}: {sample.note}")
    if len(runs) == 2:
        line, differences = compare(runs)
        print(f"\n{line}")
        problems += differences
    elapsed = time.perf_counter() - started
    if problems:
        print(f"\nimagepipe demo: {len(problems)} unexpected outcome(s):", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    ran = " and ".join(run.cloud.upper() for run in runs)
    print(
        f"\nimagepipe demo: every outcome as expected on {ran} (the broken file FAILED on "
        f"purpose); every pipeline stopped; {elapsed:.1f} s"
    )
    print(
        f"the upload page: run `make dev` (or `make dev CLOUD=gcp`), then open "
        f"http://{HOST}:{DEFAULT_API_PORT}/ and drop images on it"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
