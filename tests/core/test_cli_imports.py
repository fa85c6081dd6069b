"""`imagepipe` imports only the subcommand that runs: `process` never loads the dev pipeline.

Each case runs the CLI in a fresh interpreter (this test process has imported far
more) and reads `sys.modules` as it stood at exit, less what the interpreter imports
before any code runs (site's `.pth` files make `google` and `google.cloud` namespace
packages at start-up, for example).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.core.images import encoded, quadrants

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Runs `imagepipe ARGS...` and, at exit, writes the names of every imported module to FILE.
RUN_CLI_AND_LIST_MODULES = """
import sys
STARTUP_MODULES = set(sys.modules)
import atexit, json
modules_file, argv = sys.argv[1], sys.argv[2:]
atexit.register(
    lambda: open(modules_file, "w").write(json.dumps(sorted(set(sys.modules) - STARTUP_MODULES)))
)
from functions.local.cli import main
sys.exit(main(argv))
"""

# The dev pipeline, its servers and the cloud SDKs: none of it is needed to process files.
NOT_FOR_PROCESS = (
    "functions.local.dev",
    "functions.local.cdn",
    "functions.local.emulated_aws",
    "functions.local.emulated_gcp",
    "functions.local.api_gateway",
    "functions.local.lambda_service",
    "functions.local.workers",
    "functions.local.upload",
    "functions.local.status",
    "functions.local.backfill",
    "functions.local.redrive",
    "functions.local.cloud_tasks",
    "functions.local.target",
    "functions.aws",
    "functions.gcp",
    "http.server",
    "boto3",
    "botocore",
    "moto",
    "werkzeug",
    "aws_lambda_powertools",
    "google",
    "rich",
)


def modules_at_exit(argv: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, set]:
    """The CLI's run, and the modules it imported beyond the interpreter's start-up."""
    modules_file = tmp_path / "modules.json"
    run = subprocess.run(
        [sys.executable, "-c", RUN_CLI_AND_LIST_MODULES, str(modules_file), *argv],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return run, set(json.loads(modules_file.read_text()))


def imported(modules: set[str], package: str) -> list[str]:
    return sorted(name for name in modules if name == package or name.startswith(f"{package}."))


def test_process_imports_neither_the_dev_pipeline_nor_a_cloud_sdk(tmp_path: Path) -> None:
    photo = tmp_path / "small.png"
    photo.write_bytes(encoded(quadrants((320, 320)), "PNG"))
    out = tmp_path / "out"

    run, modules = modules_at_exit(["process", str(photo), "--out", str(out), "--json"], tmp_path)

    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["status"] == "COMPLETED"
    assert len(list(out.rglob("*.jpg"))) == 2
    assert "functions.local.process" in modules  # the hook saw the run, not an empty start
    for package in NOT_FOR_PROCESS:
        assert not imported(modules, package), f"imagepipe process imported {package}"


def test_help_imports_no_subcommand(tmp_path: Path) -> None:
    run, modules = modules_at_exit(["--help"], tmp_path)

    assert run.returncode == 0, run.stderr
    subcommands = ("process", "dev", "upload", "status", "backfill", "redrive")
    assert all(name in run.stdout for name in subcommands)
    for package in ("functions.local.process", *NOT_FOR_PROCESS, "PIL"):
        assert not imported(modules, package), f"imagepipe --help imported {package}"


def test_a_subcommands_help_lists_its_own_arguments(tmp_path: Path) -> None:
    run, modules = modules_at_exit(["process", "--help"], tmp_path)

    assert run.returncode == 0, run.stderr
    assert "--out DIR" in run.stdout and "--stack-config" in run.stdout
    assert not imported(modules, "functions.local.dev")
