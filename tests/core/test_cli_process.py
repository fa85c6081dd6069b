"""`imagepipe process`: exit codes, JSON lines, the table, stack config, bad files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from functions.local.cli import main
from tests.core.images import encoded, quadrants

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def photos(tmp_path: Path) -> dict[str, Path]:
    files = {
        "good.jpg": encoded(quadrants((800, 600))),
        "good.png": encoded(quadrants((300, 200)), "PNG"),
        "fake.png": b"<svg xmlns='http://www.w3.org/2000/svg'/>",
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    return paths


def test_json_lines_and_files_written(photos, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        ["process", str(photos["good.jpg"]), str(photos["good.png"]), "--out", str(out), "--json"]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for line in lines:
        record = json.loads(line)
        assert record["status"] == "COMPLETED" and record["error"] is None
        for rendition in record["renditions"]:
            written = Path(rendition["key"])
            assert written.is_relative_to(out) and written.stat().st_size == rendition["bytes"]
            with Image.open(written) as image:
                assert image.size == (rendition["width"], rendition["height"])


def test_a_failed_input_exits_1_with_its_code(photos, tmp_path, capsys):
    code = main(
        [
            "process",
            str(photos["good.jpg"]),
            str(photos["fake.png"]),
            "--out",
            str(tmp_path / "out"),
            "--json",
        ]
    )
    assert code == 1
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["status"] for r in records] == ["COMPLETED", "FAILED"]
    assert records[1]["error"]["code"] == "unsupported_format"
    assert records[1]["renditions"] == []


def test_table_output_is_readable(photos, tmp_path, capsys):
    code = main(
        [
            "process",
            str(photos["good.jpg"]),
            str(photos["fake.png"]),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 1
    text = capsys.readouterr().out
    assert "COMPLETED" in text and "large" in text and "thumb" in text
    assert "FAILED" in text and "unsupported_format: unrecognised content" in text


def test_missing_file_is_a_usage_error(tmp_path, capsys):
    code = main(["process", str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.jpg does not exist" in err


def test_stack_config_settings_apply(photos, tmp_path, capsys):
    stack = tmp_path / "Pulumi.test.yaml"
    stack.write_text(
        "config:\n"
        "  imagepipe:cloud: aws\n"
        "  imagepipe:renditions:\n"
        "    - small:100x100:contain:webp:70\n"
        "  imagepipe:stripMetadata: 'true'\n"
    )
    code = main(
        [
            "process",
            str(photos["good.jpg"]),
            "--out",
            str(tmp_path / "out"),
            "--stack-config",
            str(stack),
            "--json",
        ]
    )
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["format"], r["width"]) for r in record["renditions"]] == [
        ("small", "webp", 100)
    ]


def test_bad_stack_config_exits_2_naming_the_key(photos, tmp_path, capsys):
    stack = tmp_path / "Pulumi.bad.yaml"
    stack.write_text("config:\n  imagepipe:renditions:\n    - big:10x10:stretch\n")
    code = main(
        [
            "process",
            str(photos["good.jpg"]),
            "--out",
            str(tmp_path / "out"),
            "--stack-config",
            str(stack),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "imagepipe:renditions[0].fit is 'stretch'" in err


def test_the_repository_stack_files_are_valid(photos, tmp_path):
    for stack in sorted((PROJECT_ROOT / "stacks").glob("Pulumi.*.yaml")):
        code = main(
            [
                "process",
                str(photos["good.png"]),
                "--out",
                str(tmp_path / stack.stem),
                "--stack-config",
                str(stack),
                "--json",
            ]
        )
        assert code == 0, stack.name


def test_console_script_runs(photos, tmp_path):
    script = Path(sys.executable).with_name("imagepipe")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "functions.local.cli"]
    done = subprocess.run(
        [*command, "process", str(photos["fake.png"]), "--out", str(tmp_path / "out"), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROJECT_ROOT,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert json.loads(done.stdout)["error"]["code"] == "unsupported_format"


def console_script() -> list[str]:
    script = Path(sys.executable).with_name("imagepipe")
    return [str(script)] if script.exists() else [sys.executable, "-m", "functions.local.cli"]


def test_the_console_script_ends_without_teardown_yet_with_all_its_output_and_its_code(
    photos, tmp_path
):
    # It leaves by os._exit: what it printed and wrote must be complete all the same.
    inputs = [photos["good.jpg"], photos["good.png"]] * 20 + [photos["fake.png"]]
    out = tmp_path / "out"
    done = subprocess.run(
        [*console_script(), "process", *map(str, inputs), "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_ROOT,
    )
    assert done.returncode == 1, done.stderr  # the last input failed
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["status"] for r in records] == ["COMPLETED"] * 40 + ["FAILED"]
    written = {Path(rendition["key"]) for r in records[:2] for rendition in r["renditions"]}
    assert len(written) == 4 and all(path.stat().st_size > 0 for path in written)
    assert sorted(out.rglob("*.jpg")) == sorted(written)  # no partial file left behind


def test_a_reader_gone_from_the_pipe_ends_it_quietly_as_sigpipe_would(photos, tmp_path):
    command = [*console_script(), "process", str(photos["good.png"]), "--out", str(tmp_path)]
    child = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PROJECT_ROOT
    )
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()  # `| head` that has read its lines, before the table is printed
    stderr = child.stderr.read()
    assert child.wait(timeout=60) == 141
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
