"""Load on the upload API: many clients at once, each through the API alone, as a browser does.

Runs `imagepipe dev --cloud <cloud>` in its own process (`local_bench.dev_process`), then
from --threads threads every client does what the page does for one image: `POST /uploads`,
the form POST straight to the emulated bucket, then `GET /images/{id}` every 100 ms until
the image is final. Each image is a distinct 320x320 JPEG. Two phases, so each number
means one thing:

  1. POST /uploads for every image (the API alone): requests/s and p50/p95 latency;
  2. the form POSTs and the polling: upload -> COMPLETED as GET /images/{id} saw it,
     p50/p95, and the counts: COMPLETED / FAILED / never final, and duplicates (records
     with attempts > 1 or more than one event per image, read afterwards).

Baseline in the same run: the same number of uploads put with the cloud's SDK
(`PipelineTarget.put`) and waited for through the records store, so the ratio says
what going through the API costs. Not a test: it prints; exit 1 unless every image
completed exactly once.

    .venv/bin/python bench/api_load_bench.py [--cloud aws|gcp|both] [--uploads 200] [--threads 16]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from bench.local_bench import dev_process, percentile  # noqa: E402
from components import outputs as output_names  # noqa: E402
from functions.core.records import FINAL_STATUSES  # noqa: E402
from functions.local.samples import synthetic_photo  # noqa: E402
from functions.local.target import PipelineTarget  # noqa: E402

POLL_SECONDS = 0.1
FINAL = {status.value for status in FINAL_STATUSES}


def jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    synthetic_photo(320, 320, seed=seed).save(out, "JPEG", quality=85)
    return out.getvalue()


class Client:
    """One HTTP session per thread, as one browser tab each."""

    _local = threading.local()

    def __init__(self, api_url: str) -> None:
        self.api_url = api_url

    @property
    def session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def ask(self, name: str, data: bytes) -> tuple[dict[str, Any], float]:
        started = time.perf_counter()
        answer = self.session.post(
            f"{self.api_url}/uploads",
            json={"filename": name, "contentType": "image/jpeg", "bytes": len(data)},
            timeout=30,
        )
        elapsed = (time.perf_counter() - started) * 1000
        answer.raise_for_status()
        return answer.json(), elapsed

    def upload_and_follow(
        self, upload: dict[str, Any], data: bytes, timeout: float
    ) -> tuple[str, float]:
        """(final status or "never final", ms from the form POST to seeing it final)."""
        started = time.perf_counter()
        form = upload["upload"]
        answer = self.session.post(
            form["url"],
            data=form["fields"],
            files={"file": ("a.jpg", data, "image/jpeg")},
            timeout=30,
        )
        answer.raise_for_status()
        deadline = started + timeout
        while time.perf_counter() < deadline:
            view = self.session.get(f"{self.api_url}/images/{upload['id']}", timeout=30)
            status = view.json().get("status") if view.status_code == 200 else None
            if status in FINAL:
                return status, (time.perf_counter() - started) * 1000
            time.sleep(POLL_SECONDS)
        return "never final", (time.perf_counter() - started) * 1000


def run_cloud(cloud: str, uploads: int, threads: int, timeout: float) -> bool:
    print(f"\n== {cloud}: {uploads} uploads through the API from {threads} threads ==")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with dev_process(folder, cloud) as target:
            outputs = json.loads((folder / "outputs.json").read_text(encoding="utf-8"))
            client = Client(outputs[output_names.API_URL])
            images = {n: jpeg(n) for n in range(2 * uploads)}

            # Phase 1: the API alone.
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=threads) as pool:
                asked = list(
                    pool.map(lambda n: client.ask(f"load-{n}.jpg", images[n]), range(uploads))
                )
            ask_wall = time.perf_counter() - started
            ask_ms = [ms for _, ms in asked]
            print(
                f"POST /uploads: {uploads / ask_wall:6.1f} requests/s  "
                f"p50 {statistics.median(ask_ms):5.1f} ms  p95 {percentile(ask_ms, 0.95):5.1f} ms"
            )

            # Phase 2: the form POSTs and the polling.
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=threads) as pool:
                ended = list(
                    pool.map(
                        lambda pair: client.upload_and_follow(pair[1][0], images[pair[0]], timeout),
                        enumerate(asked),
                    )
                )
            api_wall = time.perf_counter() - started
            statuses = Counter(status for status, _ in ended)
            done_ms = [ms for status, ms in ended if status == "COMPLETED"]
            keys = [upload["key"] for upload, _ in asked]
            retried = attempts_above_one(target, keys)
            print(
                f"COMPLETED {statuses['COMPLETED']}  FAILED {statuses['FAILED']}  "
                f"never final {statuses['never final']}  records with attempts > 1: {retried}"
            )
            if done_ms:
                p50, p95 = statistics.median(done_ms), percentile(done_ms, 0.95)
                print(
                    f"upload -> COMPLETED seen by GET /images/{{id}}: p50 {p50:6.0f} ms  "
                    f"p95 {p95:6.0f} ms  ({uploads / api_wall:.1f} images/s)"
                )

            # Baseline: the same count put with the SDK, waited for in the records store.
            baseline_wall = sdk_baseline(
                target, images, range(uploads, 2 * uploads), threads, timeout
            )
            print(
                f"baseline (SDK put, records store read): {uploads / baseline_wall:.1f} images/s; "
                f"through the API {api_wall / baseline_wall:.2f}x the baseline's wall time"
            )
    return statuses["COMPLETED"] == uploads and retried == 0


def attempts_above_one(target: PipelineTarget, keys: list[str]) -> int:
    ids = [rid for key in keys if (rid := target.current_record_id(key))]
    records = target.records.get_many(ids)
    missing = len(keys) - len(records)
    return sum(1 for r in records.values() if r.attempts > 1) + missing


def sdk_baseline(
    target: PipelineTarget, images: dict[int, bytes], seeds: range, threads: int, timeout: float
) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for n in seeds:
            paths[n] = Path(tmp) / f"base-{n}.jpg"
            paths[n].write_bytes(images[n])
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            ids = list(
                pool.map(
                    lambda n: target.put(paths[n], f"{target.uploads_prefix}baseline/base-{n}.jpg"),
                    seeds,
                )
            )
        deadline = started + timeout
        pending = set(ids)
        while pending and time.perf_counter() < deadline:
            for record in target.records.get_many(list(pending)).values():
                if record.status in FINAL_STATUSES:
                    pending.discard(record.id)
            time.sleep(POLL_SECONDS)
        return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cloud", choices=("aws", "gcp", "both"), default="both")
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=300, help="per image, seconds")
    args = parser.parse_args()
    clouds = ("aws", "gcp") if args.cloud == "both" else (args.cloud,)
    results = [run_cloud(cloud, args.uploads, args.threads, args.timeout) for cloud in clouds]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
