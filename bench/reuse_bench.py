"""Upload -> COMPLETED for bytes already rendered, against their first upload, on both
dev pipelines.

Runs `imagepipe dev` in its own process per cloud (`bench.local_bench.dev_process`, the
built-in default settings) and, in each round, uploads the 12 MP JPEG under a new key
(its first time: decoded and rendered), then the same bytes under another new key (found
by content hash: the renditions are taken, nothing decoded). Both are timed from the
start of the upload until the record is final, followed on the events topic as
`imagepipe upload --dev` waits. Round 1 uploads the corpus file as it is, read in place;
every later round needs bytes never rendered before, so it uploads the same file with a
few bytes after the JPEG's end-of-image marker, which decoders ignore: the same decode,
another content hash. Prints the medians and their ratio (target: reuse <= 1/3 of first).

    .venv/bin/python bench/reuse_bench.py [-n 7] [--cloud aws|gcp|both]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from bench.local_bench import CORPUS_JPEG, dev_process  # noqa: E402
from functions.core.records import ImageRecord  # noqa: E402
from functions.local.samples import small_png  # noqa: E402
from functions.local.target import EventFeed, PipelineTarget  # noqa: E402
from functions.local.upload import (  # noqa: E402
    DEV_POLL_INTERVAL,
    Upload,
    upload_all,
    wait_for_records,
)

TARGET_RATIO = 1 / 3
DECODE_STAGES = {"detect", "validate", "inspect", "render", "encode"}


def timed(
    target: PipelineTarget, path: Path, key: str, feed: EventFeed
) -> tuple[float, ImageRecord]:
    upload = Upload(path, key)
    started = time.perf_counter()
    ids = upload_all(target, [upload])
    [result] = wait_for_records(
        target.records, [upload], ids, timeout=60, poll_interval=DEV_POLL_INTERVAL, events=feed
    )
    elapsed = (time.perf_counter() - started) * 1000
    if result.record is None or result.status != "COMPLETED":
        raise SystemExit(f"{key} ended {result.status}")
    return elapsed, result.record


def round_file(folder: Path, round_number: int) -> Path:
    if round_number == 0:
        return CORPUS_JPEG  # in place
    variant = folder / f"round-{round_number}.jpg"
    variant.write_bytes(CORPUS_JPEG.read_bytes() + f"imagepipe-bench {round_number}".encode())
    return variant


def bench(cloud: str, rounds: int, folder: Path) -> float:
    warmup = folder / "warmup.png"
    warmup.write_bytes(small_png(side=320, seed=11))
    firsts, agains, lookups, work = [], [], [], {"first": [], "again": []}
    with dev_process(folder, cloud) as target, target.follow_events() as feed:
        # The first invocation pays imports and connection set-up (a cold start).
        timed(target, warmup, f"{target.uploads_prefix}reuse-bench/warmup.png", feed)
        for n in range(rounds):
            path = round_file(folder, n)
            prefix = f"{target.uploads_prefix}reuse-bench/{time.time_ns()}"
            first_ms, first = timed(target, path, f"{prefix}-first.jpg", feed)
            again_ms, again = timed(target, path, f"{prefix}-again.jpg", feed)
            if not set(first.stage_ms) >= DECODE_STAGES or "reuse" in first.stage_ms:
                raise SystemExit(f"round {n + 1}: the first upload was not rendered")
            if "reuse" not in again.stage_ms or DECODE_STAGES & set(again.stage_ms):
                raise SystemExit(f"round {n + 1}: the same bytes again were rendered")
            assert again.renditions == first.renditions
            firsts.append(first_ms)
            agains.append(again_ms)
            lookups.append(again.stage_ms["reuse"])
            # The handler's own work: its timed stages, the claim's conditional write aside.
            for name, record in (("first", first), ("again", again)):
                work[name].append(sum(v for k, v in record.stage_ms.items() if k != "claim"))
    first_p50, again_p50 = statistics.median(firsts), statistics.median(agains)
    ratio = again_p50 / first_p50
    verdict = "meets" if ratio <= TARGET_RATIO else "misses"
    print(
        f"{cloud.upper():<4} first p50 {first_p50:6.1f} ms (min {min(firsts):6.1f}) | "
        f"same bytes again p50 {again_p50:6.1f} ms (min {min(agains):6.1f}; "
        f"its lookup + HEADs p50 {statistics.median(lookups):5.1f} ms) | "
        f"again/first {ratio:4.2f} ({verdict} <= {TARGET_RATIO:.2f})\n"
        f"{'':<4} the handler's stages without the claim, p50: first "
        f"{statistics.median(work['first']):6.1f} ms, again {statistics.median(work['again']):5.1f}"
        f" ms ({statistics.median(work['again']) / statistics.median(work['first']):4.2f})"
    )
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=7, help="rounds per cloud (default 7)")
    parser.add_argument("--cloud", choices=("aws", "gcp", "both"), default="both")
    args = parser.parse_args()
    if not CORPUS_JPEG.is_file():
        print(f"{CORPUS_JPEG} is absent (../shared/corpus): nothing to measure")
        return 1
    clouds = ["aws", "gcp"] if args.cloud == "both" else [args.cloud]
    print(
        f"upload -> COMPLETED, {CORPUS_JPEG.name} ({CORPUS_JPEG.stat().st_size / 1e6:.1f} MB), "
        f"{args.n} rounds per cloud: its first upload, then the same bytes under a new key"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for cloud in clouds:
            folder = Path(tmp) / cloud
            folder.mkdir()
            bench(cloud, args.n, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
