"""Start-up benchmark: `imagepipe process` as a whole process, and the Lambda handler's cold import.

    .venv/bin/python bench/cli_bench.py [-n RUNS]

1. `imagepipe process` on one small (320x320) PNG, the whole process from exec to
   exit, against `python -c pass` (the interpreter's own start, site and `.pth`
   files included) and against the core's in-process time for the same PNG
   (`functions.local.process.process_files`, warm), and against a floor: a plain
   Pillow script doing the same job with nothing but argparse, hashlib and json
   (`PLAIN_PILLOW_SCRIPT`). Runs are interleaved so machine
   noise hits each alike; wall-clock medians, and the child's CPU time (user + sys,
   less disturbed by other processes on a shared machine).
2. `import functions.aws.main` in a fresh interpreter with the environment the
   component sets (endpoints pointed at a closed port on 127.0.0.1: nothing is
   called at import), as a whole, then broken down by timers, in import order:
   boto3, Powertools, Pillow, our modules, the three clients, and the rest of the
   handler module's body. Each stage is timed in the same child after the stages
   before it, so shared dependencies count once, where first imported.
   Also measured without bytecode for what the Lambda archive bundles: what a cold
   start pays when the archive ships sources only (built without an interpreter of
   the runtime's version; `/var/task` is read-only, so every cold start compiles them).

Bytecode: children run without PYTHONDONTWRITEBYTECODE, so the first (discarded)
run writes `.pyc` files and the measured runs read them, as on a user's machine.
Nothing leaves 127.0.0.1. Not a test: it prints, it does not assert.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

# What the Lambda archive bundles as sources (components/aws/lambda_archive.py); boto3
# and botocore come with the runtime, compiled.
ARCHIVE_PACKAGES = ("functions", "PIL", "aws_lambda_powertools", "jmespath", "typing_extensions")

# The handler's cold import, stage by stage; prints one JSON object of milliseconds.
COLD_IMPORT_STAGES = """
import json, sys, time
stages = {}
def stage(name, started):
    now = time.perf_counter()
    stages[name] = (now - started) * 1000
    return now
t = start = time.perf_counter()
import boto3, botocore.config, botocore.exceptions
t = stage("boto3 + botocore import", t)
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging.lambda_context import build_lambda_context_model
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
t = stage("Powertools import", t)
import PIL.Image
t = stage("Pillow import", t)
import functions.aws.adapters, functions.aws.bootstrap, functions.aws.contract
import functions.aws.trigger, functions.core.service
t = stage("our modules import", t)
from functions.aws.bootstrap import SDK_CONFIG
for service in ("s3", "dynamodb", "sns"):
    boto3.client(service, config=SDK_CONFIG)
t = stage("3 clients built (boto3.client)", t)
import functions.aws.main
t = stage("rest of functions.aws.main (Logger, Metrics, Pipeline; clients again, warm)", t)
stages["total"] = (t - start) * 1000
print(json.dumps(stages))
"""

# One module's import, timed as a whole (no stage split, clients built once).
COLD_IMPORT = """
import importlib, sys, time
t = time.perf_counter()
importlib.import_module(sys.argv[1])
print((time.perf_counter() - t) * 1000)
"""
PIPELINE_HANDLER, API_HANDLER = "functions.aws.main", "functions.aws.api"


def child_env(**extra: str) -> dict[str, str]:
    dropped = ("PYTHONDONTWRITEBYTECODE", "AWS_PROFILE")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    return {**env, **extra}


def run_child(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall and CPU milliseconds of one child process, and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        argv, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, check=False
    )
    wall = (time.perf_counter() - started) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{argv[:3]}... exited {done.returncode}: {done.stderr.strip()[-600:]}")
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    return wall, cpu, done.stdout


def median(values: list[float]) -> float:
    return statistics.median(values)


def small_png(folder: Path) -> Path:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (320, 320), (230, 230, 230))
    draw = ImageDraw.Draw(image)
    draw.rectangle((40, 40, 200, 280), fill=(200, 30, 30))
    draw.ellipse((150, 60, 300, 210), fill=(20, 90, 200))
    path = folder / "small.png"
    image.save(path, "PNG")
    return path


def imagepipe_command() -> list[str]:
    """`imagepipe` run from this checkout: what the console script runs (`entry_point()`
    of `functions.local.cli`), without depending on where the package was installed from."""
    return [sys.executable, "-m", "functions.local.cli"]


# The floor: the least a command-line tool doing this job with Pillow pays. It parses
# its arguments, hashes the bytes, makes both renditions and prints one JSON line, with
# no records, events, limits or settings, and ends as any script does.
PLAIN_PILLOW_SCRIPT = """
import argparse, hashlib, json
from pathlib import Path
from PIL import Image
parser = argparse.ArgumentParser(prog="plain-pillow")
parser.add_argument("file", type=Path)
parser.add_argument("--out", type=Path, required=True)
args = parser.parse_args()
data = args.file.read_bytes()
folder = args.out / hashlib.sha256(data).hexdigest()
folder.mkdir(parents=True, exist_ok=True)
image = Image.open(args.file).convert("RGB")
for name, size in (("large", (1024, 768)), ("thumb", (200, 200))):
    rendition = image.copy()
    rendition.thumbnail(size, Image.Resampling.LANCZOS)
    rendition.save(folder / f"{name}.jpg", "JPEG", quality=82, optimize=True, progressive=True)
print(json.dumps({"key": str(args.file), "status": "COMPLETED"}))
"""


IMPORT_TIME_LINE = re.compile(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)")


def import_self_ms(argv: list[str], env: dict[str, str], runs: int) -> dict[str, float]:
    """Each module's own import time (`-X importtime` self), the least over `runs` runs:
    the least is the one least disturbed by other processes."""
    least: dict[str, float] = {}
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", *argv[1:]],
            env=env,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        for self_us, module in IMPORT_TIME_LINE.findall(done.stderr):
            least[module] = min(least.get(module, float("inf")), int(self_us) / 1000)
    return least


def origin(module: str) -> str:
    if module.startswith("functions.core"):
        return "the core (functions.core)"
    if module.startswith("functions"):
        return "the CLI (functions.local)"
    if module == "PIL" or module.startswith("PIL."):
        return "Pillow"
    if module.split(".")[0] in sys.stdlib_module_names or module.startswith("_"):
        return "standard library"
    return "other packages"


def import_breakdown(process: list[str], env: dict[str, str], runs: int) -> dict[str, float]:
    """What `imagepipe process` imports beyond the interpreter's start-up, by origin."""
    at_start = import_self_ms([sys.executable, "-c", "pass"], env, runs)
    imported = import_self_ms(process, env, runs)
    groups: dict[str, float] = {}
    for module, ms in imported.items():
        if module not in at_start:
            groups[origin(module)] = groups.get(origin(module), 0.0) + ms
    return dict(sorted(groups.items(), key=lambda item: -item[1]))


def core_in_process_ms(png: Path, out: Path, runs: int) -> float:
    from functions.core.settings import PipelineSettings
    from functions.local.process import process_files

    settings = PipelineSettings()
    process_files([png], out, settings)  # warm: imports, first-call caches
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        process_files([png], out, settings)
        times.append((time.perf_counter() - started) * 1000)
    return median(times)


def bench_cli(runs: int, folder: Path) -> dict[str, float]:
    png = small_png(folder)
    process = [*imagepipe_command(), "process", str(png), "--out", str(folder / "out")]
    interpreter = [sys.executable, "-c", "pass"]
    plain = [sys.executable, "-c", PLAIN_PILLOW_SCRIPT, str(png), "--out", str(folder / "plain")]
    env = child_env()
    cases = {"python -c pass": interpreter, "plain Pillow": plain, "imagepipe process": process}
    for argv in cases.values():
        run_child(argv, env)  # writes the .pyc files the measured runs read
    wall: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, argv in cases.items():
            w, c, _ = run_child(argv, env)
            wall[name].append(w)
            cpu[name].append(c)
    core = core_in_process_ms(png, folder / "out-in-process", runs)
    figures = {
        "interpreter_wall": median(wall["python -c pass"]),
        "process_wall": median(wall["imagepipe process"]),
        "process_wall_min": min(wall["imagepipe process"]),
        "interpreter_wall_min": min(wall["python -c pass"]),
        "interpreter_cpu": median(cpu["python -c pass"]),
        "plain_wall": median(wall["plain Pillow"]),
        "plain_cpu": median(cpu["plain Pillow"]),
        "process_cpu": median(cpu["imagepipe process"]),
        "core_in_process": core,
    }
    above = figures["process_wall"] - figures["interpreter_wall"]
    print(f"== imagepipe process, one 320x320 PNG, {runs} interleaved runs (median)")
    print(
        f"python -c pass           {figures['interpreter_wall']:7.1f} ms wall  "
        f"{figures['interpreter_cpu']:6.1f} ms CPU"
    )
    print(
        f"imagepipe process        {figures['process_wall']:7.1f} ms wall  "
        f"{figures['process_cpu']:6.1f} ms CPU"
    )
    print(
        f"plain Pillow script      {figures['plain_wall']:7.1f} ms wall  "
        f"{figures['plain_cpu']:6.1f} ms CPU  (the floor: argparse, hashlib, json, Pillow)"
    )
    print(f"core in-process (warm)   {core:7.1f} ms")
    print(
        f"above the interpreter    {above:7.1f} ms wall "
        f"({figures['process_wall'] / figures['interpreter_wall']:.2f}x), "
        f"{figures['process_cpu'] - figures['interpreter_cpu']:.1f} ms CPU; "
        f"min-to-min {figures['process_wall_min'] - figures['interpreter_wall_min']:.1f} ms "
        "(target <= 120 ms)"
    )
    floor = figures["plain_wall"] - figures["interpreter_wall"]
    print(
        f"the floor above it       {floor:7.1f} ms wall; imagepipe process is "
        f"{above - floor:.1f} ms above the floor ({above / floor:.2f}x the floor's own cost)"
    )
    print(
        f"start-up and exit cost   {above - core:7.1f} ms beyond the core's own work "
        f"({figures['process_wall'] / core:.1f}x the in-process time)"
    )
    breakdown = import_breakdown(process, env, max(3, runs // 3))
    print("imports beyond the interpreter's start-up (-X importtime, least of several runs):")
    for group, ms in breakdown.items():
        print(f"  {group:<28} {ms:7.1f} ms")
    print(f"  {'all imports':<28} {sum(breakdown.values()):7.1f} ms")
    figures.update({f"imports: {group}": ms for group, ms in breakdown.items()})
    return figures


def closed_loopback_port() -> int:
    """A port on 127.0.0.1 nobody listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def lambda_env() -> dict[str, str]:
    """Both AWS functions' environments (the pipeline's and the upload API's), on loopback."""
    from functions.aws import contract
    from functions.core.settings import PipelineSettings
    from functions.core.uploads import ApiOptions

    no_config = str(Path(tempfile.gettempdir()) / "imagepipe-bench-no-aws-config")
    api_env = contract.api_to_env(
        settings=PipelineSettings(),
        options=ApiOptions(upload_expiry_seconds=300, auth="none"),
        uploads_bucket="imagepipe-bench-uploads",
        uploads_prefix=None,
        records_table="imagepipe-bench-records",
        cdn_url="http://127.0.0.1:9",
    )
    pipeline_env = contract.to_env(
        settings=PipelineSettings(),
        renditions_bucket="imagepipe-bench-renditions",
        records_table="imagepipe-bench-records",
        events_topic_arn="arn:aws:sns:us-east-1:123456789012:imagepipe-bench-events",
    )
    return child_env(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{closed_loopback_port()}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_SESSION_TOKEN="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
        AWS_CONFIG_FILE=no_config,
        AWS_SHARED_CREDENTIALS_FILE=no_config,
        AWS_EC2_METADATA_DISABLED="true",
        POWERTOOLS_METRICS_DISABLED="true",
        **{contract.FUNCTION_NAME: "imagepipe-bench-fn"},
        **{**api_env, **pipeline_env},
    )


def without_archive_bytecode(env: dict[str, str], folder: Path) -> dict[str, str]:
    """An environment whose bytecode cache holds the runtime's modules (stdlib, boto3,
    botocore) but not what the archive bundles, as in a Lambda sandbox."""
    prefix = folder / "pycache"
    env = {**env, "PYTHONPYCACHEPREFIX": str(prefix)}
    run_child([sys.executable, "-c", COLD_IMPORT, PIPELINE_HANDLER], env)  # fills the prefix
    for package in ARCHIVE_PACKAGES:
        module = __import__(package)
        source = Path(module.__file__).parent
        shutil.rmtree(prefix / source.relative_to(source.anchor), ignore_errors=True)
    return {**env, "PYTHONDONTWRITEBYTECODE": "1"}  # every run compiles them afresh


def bench_cold_import(runs: int, folder: Path) -> dict[str, float]:
    env = lambda_env()
    for module in (PIPELINE_HANDLER, API_HANDLER):
        run_child([sys.executable, "-c", COLD_IMPORT, module], env)  # .pyc written
    uncompiled_env = without_archive_bytecode(env, folder)
    whole, uncompiled, api, interpreter, staged = [], [], [], [], []
    for _ in range(runs):
        whole.append(
            float(run_child([sys.executable, "-c", COLD_IMPORT, PIPELINE_HANDLER], env)[2])
        )
        uncompiled.append(
            float(
                run_child([sys.executable, "-c", COLD_IMPORT, PIPELINE_HANDLER], uncompiled_env)[2]
            )
        )
        api.append(float(run_child([sys.executable, "-c", COLD_IMPORT, API_HANDLER], env)[2]))
        interpreter.append(run_child([sys.executable, "-c", "pass"], env)[0])
        staged.append(json.loads(run_child([sys.executable, "-c", COLD_IMPORT_STAGES], env)[2]))
    stages = {name: median([s[name] for s in staged]) for name in staged[0]}
    figures = {
        "import": median(whole),
        "import_uncompiled": median(uncompiled),
        "api_import": median(api),
        "interpreter": median(interpreter),
        **{f"stage: {name}": ms for name, ms in stages.items()},
    }
    print(f"\n== the Lambda handlers' cold import, {runs} runs (median)")
    print(
        f"import {PIPELINE_HANDLER:<30}{figures['import']:7.1f} ms "
        f"(the interpreter's own start: {figures['interpreter']:.1f} ms wall)"
    )
    print(
        f"  without the archive's bytecode     {figures['import_uncompiled']:7.1f} ms "
        f"(+{figures['import_uncompiled'] - figures['import']:.1f} ms compiling "
        f"{', '.join(ARCHIVE_PACKAGES)})"
    )
    print(f"import {API_HANDLER:<30}{figures['api_import']:7.1f} ms (the upload API's function)")
    print(f"{PIPELINE_HANDLER} by stage, in import order:")
    for name, ms in stages.items():
        if name != "total":
            print(f"  {name:<78} {ms:7.1f} ms")
    print(f"  {'sum of stages (clients built twice)':<78} {stages['total']:7.1f} ms")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=21, help="runs per case (default 21)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imagepipe-cli-bench-") as folder:
        bench_cli(args.runs, Path(folder))
        bench_cold_import(max(5, args.runs // 2), Path(folder))


if __name__ == "__main__":
    main()
