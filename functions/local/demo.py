"""`make demo`: the real pipeline, end to end, on an emulated AWS on this machine.

Starts the dev pipeline in this process (moto on 127.0.0.1, the real Lambda
handler, the CDN stand-in), uploads sample images the project generates —
plus a broken file and a duplicate — through the same code as `imagepipe
upload`, prints the outcomes, fetches one rendition over HTTP, and stops.
Exit 0 when every outcome is the expected one.
"""

from __future__ import annotations

import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from functions.local.dev import DevPipeline, resolve_stack_config
from functions.local.samples import Sample, write_samples
from functions.local.target import PipelineTarget
from functions.local.upload import Upload, UploadResult, print_results, upload_and_wait

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CORPUS_PHOTOS = PROJECT_ROOT.parent / "shared" / "corpus" / "photos"
# Two real photos when the shared corpus is next to the project (read there, never copied).
CORPUS_PICKS = ("jpg_orient6_2mp.jpg", "webp_flower.webp")


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


def fetch(url: str) -> tuple[int, str, str, int]:
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read()
        return (
            response.status,
            response.headers.get("Content-Type", ""),
            response.headers.get("Cache-Control", ""),
            len(body),
        )


def main() -> int:
    started = time.perf_counter()
    stack, source = resolve_stack_config(None)
    print(
        f"imagepipe demo: the real Lambda handler on an emulated AWS on 127.0.0.1 "
        f"(settings from {source})"
    )
    with tempfile.TemporaryDirectory(prefix="imagepipe-demo-") as tmp:
        samples = write_samples(Path(tmp)) + corpus_samples()
        with DevPipeline(port=0, stack=stack, log_level="WARNING") as pipeline:
            outputs = pipeline.outputs()
            print(
                f"emulated AWS at {outputs['endpoint']}, renditions served at {outputs['cdnUrl']}\n"
            )
            target = PipelineTarget.from_outputs(outputs, "the dev pipeline")
            uploads = [Upload(s.path, f"{target.uploads_prefix}{s.path.name}") for s in samples]
            print(
                f"uploading {len(uploads)} files to s3://{target.uploads_bucket}/"
                f"{target.uploads_prefix} ...\n"
            )
            results = upload_and_wait(target, uploads, timeout=60)
            print_results(results, target.url, sys.stdout)

            print()
            for sample in samples:
                if sample.note:
                    print(f"  {sample.path.name}: {sample.note}")
            shown = next((r for r in results if r.record and r.record.renditions), None)
            problems = check(samples, results)
            if shown is not None:
                rendition = shown.record.renditions[-1]  # type: ignore[union-attr]
                url = target.url(rendition.key)
                status, content_type, cache_control, size = fetch(url)
                print(
                    f"\nGET {url}\n  -> {status}, {content_type}, {size} bytes, "
                    f"Cache-Control: {cache_control}"
                )
                if status != 200 or not content_type.startswith("image/"):
                    problems.append(f"the CDN stand-in answered {status} {content_type} for {url}")
    elapsed = time.perf_counter() - started
    if problems:
        print(f"\nimagepipe demo: {len(problems)} unexpected outcome(s):", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(
        f"\nimagepipe demo: every outcome as expected (the broken file FAILED on purpose); "
        f"pipeline stopped; {elapsed:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
