"""`imagepipe dev` as a process: a busy port, a clean stop on SIGTERM, no thread or emulator
process left behind, not even when `imagepipe dev` itself is killed outright, and one line
and exit 1 when the emulator dies under it."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from functions.local import dev
from functions.local.emulated_aws import EMULATOR_PROCESS_TAG, MotoServer
from functions.local.samples import small_png
from functions.local.target import PipelineTarget
from functions.local.upload import Upload, upload_and_wait
from tests.local.conftest import wait_for

pytestmark = [pytest.mark.emulator, pytest.mark.timeout(60)]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Runs `imagepipe dev` exactly as the console script does, minus the other subcommands.
DEV_COMMAND = textwrap.dedent("""
    import argparse, sys
    from functions.local import dev
    parser = argparse.ArgumentParser(prog="imagepipe dev")
    dev.add_arguments(parser)
    sys.exit(dev.run(parser.parse_args(sys.argv[1:])))
""")


# Free ports for everything: the suite may run beside a `make dev`.
DEV_PORTS = ("--port", "0", "--api-port", "0")


def clean_environment() -> dict[str, str]:
    """This process's environment without the AWS_* the package's pipeline set."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "IMAGEPIPE_"))}


def emulator_processes(port: int) -> list[int]:
    """Pids of live processes that are the emulated AWS serving `port` (by its argv tag)."""
    tag = f"{EMULATOR_PROCESS_TAG}{port}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if tag in argv:
            pids.append(int(entry.name))
    return pids


def wait_for_outputs(path: Path, timeout: float = 30) -> dict[str, str]:
    """The outputs `imagepipe dev` writes once it runs, read only when complete JSON."""

    def complete() -> dict[str, str] | None:
        try:
            return json.loads(path.read_text())  # type: ignore[no-any-return]
        except (FileNotFoundError, ValueError):
            return None  # not yet, or half written

    outputs = wait_for(complete, timeout=timeout)
    assert outputs, "imagepipe dev did not start"
    return outputs  # type: ignore[no-any-return]


def start_dev(outputs_file: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", DEV_COMMAND, *DEV_PORTS, "--outputs", str(outputs_file)],
        cwd=PROJECT_ROOT,
        env=clean_environment(),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_busy_port_gives_one_clear_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        parser = argparse.ArgumentParser()
        dev.add_arguments(parser)
        args = parser.parse_args(["--port", str(port), "--outputs", str(tmp_path / "out.json")])
        assert dev.run(args) == 2
    err = capsys.readouterr().err
    assert err == (
        f"imagepipe dev: port {port} on 127.0.0.1 is in use (another `imagepipe dev`?); "
        "pick another with --port\n"
    )
    assert not (tmp_path / "out.json").exists()


def test_a_busy_api_port_names_its_own_option(tmp_path: Path) -> None:
    # In a process of its own: this one already runs the package's pipeline.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["--port", "0", "--api-port", str(port), "--outputs", str(tmp_path / "out.json")]
        finished = subprocess.run(
            [sys.executable, "-c", DEV_COMMAND, *argv],
            cwd=PROJECT_ROOT,
            env=clean_environment(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert finished.returncode == 2, finished.stderr
    assert finished.stderr.splitlines()[-1] == (
        f"imagepipe dev: port {port} on 127.0.0.1 is in use (another `imagepipe dev`?); "
        "pick another with --api-port"
    )
    assert not (tmp_path / "out.json").exists()


def test_sigterm_stops_a_running_pipeline_cleanly(tmp_path: Path) -> None:
    outputs_file = tmp_path / "outputs.json"
    process = start_dev(outputs_file)
    try:
        outputs = wait_for_outputs(outputs_file)
        port = int(outputs["endpoint"].rsplit(":", 1)[1])
        assert len(emulator_processes(port)) == 1  # moto runs in a process of its own
        target = PipelineTarget.from_outputs(outputs, str(outputs_file))
        image = tmp_path / "alive.png"
        image.write_bytes(small_png(seed=1))
        [result] = upload_and_wait(
            target, [Upload(image, f"{target.uploads_prefix}alive.png")], timeout=30
        )
        assert result.status == "COMPLETED"  # it was really running

        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert stderr.rstrip().endswith("imagepipe dev: stopped")
    assert "aws s3 cp photo.jpg s3://imagepipe-uploads/" in stdout
    assert not outputs_file.exists()  # a stale file would point at a dead port
    assert emulator_processes(port) == []
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more


def test_the_emulator_does_not_outlive_a_killed_imagepipe_dev(tmp_path: Path) -> None:
    outputs_file = tmp_path / "outputs.json"
    process = start_dev(outputs_file)
    try:
        port = int(wait_for_outputs(outputs_file)["endpoint"].rsplit(":", 1)[1])
        [emulator] = emulator_processes(port)
        process.kill()  # SIGKILL to `imagepipe dev` alone: no chance to stop anything
        process.communicate(timeout=10)
        assert wait_for(lambda: not emulator_processes(port), timeout=10), (
            f"the emulator (pid {emulator}) outlived imagepipe dev"
        )
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for pid in emulator_processes(port) if "port" in locals() else []:
            os.killpg(pid, signal.SIGKILL)


STOP_SCRIPT = textwrap.dedent("""
    import os, threading, tempfile, pathlib
    from functions.local.dev import DevPipeline
    from functions.local.samples import small_png
    from functions.local.target import PipelineTarget
    from functions.local.upload import Upload, upload_and_wait

    with DevPipeline(port=0, log_level="WARNING") as pipeline:
        target = PipelineTarget.from_outputs(pipeline.outputs(), "pipeline")
        path = pathlib.Path(tempfile.mkdtemp()) / "one.png"
        path.write_bytes(small_png(seed=2))
        [result] = upload_and_wait(target, [Upload(path, "one.png")], timeout=30)
        print("status", result.status)
        print("threads while running", len(threading.enumerate()))
        emulator = pipeline._moto.pid
    left = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    print("left", ",".join(left))
    try:
        os.kill(emulator, 0)
        print("emulator alive")
    except ProcessLookupError:
        print("emulator gone")
""")


def test_stop_joins_every_thread_and_ends_the_emulator_process() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", STOP_SCRIPT],
        cwd=PROJECT_ROOT,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    lines = dict(
        line.split(" ", 1) if " " in line else (line, "")
        for line in completed.stdout.splitlines()
        if line.startswith(("status", "left", "emulator"))
    )
    assert lines["status"] == "COMPLETED"
    assert lines["left"] == ""
    assert lines["emulator"] == "gone"  # stopped and reaped, not a zombie


def test_a_killed_emulator_stops_imagepipe_dev_with_one_line_and_exit_1(tmp_path: Path) -> None:
    outputs_file = tmp_path / "outputs.json"
    process = start_dev(outputs_file)
    port = None
    try:
        port = int(wait_for_outputs(outputs_file)["endpoint"].rsplit(":", 1)[1])
        [emulator] = emulator_processes(port)
        os.kill(emulator, signal.SIGKILL)
        killed = time.monotonic()
        stdout, stderr = process.communicate(timeout=15)
        took = time.monotonic() - killed
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for pid in emulator_processes(port) if port is not None else []:
            os.killpg(pid, signal.SIGKILL)
    assert process.returncode == 1, stderr
    assert took < 8, f"imagepipe dev took {took:.1f} s to notice and stop"
    assert stderr.splitlines() == [
        f"imagepipe dev: the emulated AWS (moto, pid {emulator}) was killed by SIGKILL; "
        "its buckets, tables and queues are gone. Stopping."
    ]
    after_banner = stdout.split("imagepipe status incoming/photo.jpg --dev\n", 1)[1]
    assert "Traceback" not in after_banner
    assert len(after_banner.splitlines()) <= 3, after_banner  # one line per failing call
    assert not outputs_file.exists()
    assert emulator_processes(port) == []


def test_the_emulator_s_end_is_noticed_and_it_is_reaped() -> None:
    moto = MotoServer(0)
    moto.start()
    try:
        assert moto.exit_code() is None
        pid = moto.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: moto.exit_code() is not None, timeout=5)
        assert moto.exit_code() == -signal.SIGKILL
        assert not Path(f"/proc/{pid}").exists()  # reaped: not even a zombie is left
    finally:
        moto.stop()
    assert emulator_processes(moto.port) == []
