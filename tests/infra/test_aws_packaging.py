"""The Lambda archive: deterministic, cached, within budget, holding the right files.

Offline tests build from a fake wheelhouse through the real pip; the network test
downloads the real Pillow 13, pillow-heif and Powertools wheels for arm64 from PyPI.
Bytecode needs an interpreter of the runtime's version (3.12), as the build does."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest

from components.aws.lambda_archive import (
    UNCOMPILED_PREFIXES,
    LambdaArchiveError,
    build_lambda_archive,
    bytecode_compiler,
)
from components.packaging import PROJECT_ROOT
from tests.conftest import require
from tests.infra.aws_fakes import (  # noqa: F401 - fixtures
    FAKE_MARKER,
    fake_wheel_dirs,
    offline_lambda_builds,
    pinned_requirements,
)


def names_in(archive: Path) -> list[str]:
    with zipfile.ZipFile(archive) as opened:
        return opened.namelist()


@pytest.fixture(scope="module")
def python312() -> str:
    found = bytecode_compiler("3.12")
    require(None if found else "no Python 3.12 interpreter (python3.12 on PATH, or pyenv's)")
    assert found is not None
    return found


def test_archive_holds_the_function_packages_and_installed_wheels(
    offline_lambda_builds,  # noqa: F811
    python312,
):
    archive = build_lambda_archive("arm64")
    assert archive.bytecode == "cpython-312"
    names = names_in(archive.path)
    assert "functions/__init__.py" in names
    assert "functions/aws/main.py" in names
    assert "functions/core/service.py" in names
    assert not [n for n in names if n.startswith(("functions/local/", "functions/gcp/", "tests/"))]
    assert "PIL/_imaging.cpython-312-aarch64-linux-gnu.so" in names
    assert "pillow-13.0.0.dist-info/METADATA" in names
    assert "_pillow_heif.cpython-312-aarch64-linux-gnu.so" in names
    sources = [n for n in names if n.endswith(".py") and not n.startswith(UNCOMPILED_PREFIXES)]
    compiled = {n for n in names if n.endswith(".pyc")}
    assert compiled == {
        (Path(n).parent / "__pycache__" / f"{Path(n).stem}.cpython-312.pyc").as_posix()
        for n in sources
    }
    assert not [n for n in names if ".data/" in n]  # wheel scripts do not run in Lambda


def test_the_runtime_imports_the_bundled_bytecode_without_reading_the_sources(
    offline_lambda_builds,  # noqa: F811
    python312,
    tmp_path,
):
    """Unchecked-hash bytecode: Python 3.12 never looks at the source again, so a source
    broken after the build still imports, from the archive's .pyc."""
    with zipfile.ZipFile(build_lambda_archive("arm64").path) as archive:
        archive.extractall(tmp_path)
    source = tmp_path / "functions/core/keys.py"
    source.write_text("this is not Python\n")
    done = subprocess.run(
        [python312, "-c", "import functions.core.keys as keys; print(keys.__cached__)"],
        cwd=tmp_path,
        env={"PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("functions/core/__pycache__/keys.cpython-312.pyc")


def test_without_a_compiler_the_archive_ships_sources_only(offline_lambda_builds):  # noqa: F811
    archive = build_lambda_archive("arm64", compiler="")
    assert archive.bytecode is None
    names = names_in(archive.path)
    assert "functions/aws/main.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_bytecode_compiler_answers_only_with_an_interpreter_of_that_version():
    import sys

    this = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert bytecode_compiler(this) == sys.executable
    assert bytecode_compiler("2.1") is None


def test_same_inputs_give_the_same_bytes(offline_lambda_builds, python312):  # noqa: F811
    first = build_lambda_archive("arm64")
    assert first.bytecode  # the bytecode too is the same from one build to the next
    first_bytes = first.path.read_bytes()
    first.path.unlink()  # force a rebuild from the cached wheels
    second = build_lambda_archive("arm64")
    assert second.path.read_bytes() == first_bytes
    assert second.sha256 == first.sha256
    assert second.source_code_hash == first.source_code_hash


def test_architectures_get_their_own_wheels(offline_lambda_builds):  # noqa: F811
    x86 = names_in(build_lambda_archive("x86_64").path)
    assert "PIL/_imaging.cpython-312-x86_64-linux-gnu.so" in x86
    assert "_pillow_heif.cpython-312-x86_64-linux-gnu.so" in x86
    assert not [n for n in x86 if "aarch64" in n]


def test_a_changed_source_file_changes_the_archive(offline_lambda_builds, tmp_path):  # noqa: F811
    project = tmp_path / "project"
    for package in ("functions/core", "functions/aws"):
        (project / package).mkdir(parents=True)
    (project / "functions/__init__.py").write_text("")
    (project / "functions/core/__init__.py").write_text("")
    (project / "functions/aws/__init__.py").write_text("")
    (project / "functions/aws/main.py").write_text("def handler(event, context): ...\n")
    (project / "requirements.lock").write_bytes((PROJECT_ROOT / "requirements.lock").read_bytes())
    before = build_lambda_archive("arm64", project_root=project)
    (project / "functions/aws/main.py").write_text("def handler(event, context): return 1\n")
    after = build_lambda_archive("arm64", project_root=project)
    assert after.sha256 != before.sha256


def test_over_budget_archive_is_refused(offline_lambda_builds):  # noqa: F811
    with pytest.raises(LambdaArchiveError, match=r"over the 0 MB budget"):
        build_lambda_archive("arm64", max_bytes=1000)


def test_unknown_architecture_is_refused(offline_lambda_builds):  # noqa: F811
    with pytest.raises(LambdaArchiveError, match=r"'sparc'.*arm64, x86_64"):
        build_lambda_archive("sparc")


def test_pip_failure_names_the_platform(offline_lambda_builds, tmp_path):  # noqa: F811
    requirements = "pillow==0.0.1\n"  # not in the wheelhouse
    with pytest.raises(LambdaArchiveError, match=r"manylinux_2_28_aarch64, Python 3\.12"):
        build_lambda_archive("arm64", requirements=requirements)
    assert not [p for p in offline_lambda_builds.rglob("*.partial-*")]


def test_requirements_match_the_lock():
    locked = {}
    for line in (PROJECT_ROOT / "requirements.lock").read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep:
            locked[name.strip().lower()] = version.strip()
    pins = pinned_requirements()
    assert pins["pillow"].startswith("13.")
    assert pins["pillow-heif"].startswith("1.")
    assert {name: locked.get(name) for name in pins} == pins


@pytest.mark.network
def test_real_arm64_archive_from_pypi(tmp_path, monkeypatch, python312):
    for variable in ("PIP_NO_INDEX", "PIP_FIND_LINKS"):
        monkeypatch.delenv(variable, raising=False)
    first = build_lambda_archive("arm64", cache_root=tmp_path / "one")
    second = build_lambda_archive("arm64", cache_root=tmp_path / "two")  # downloads again
    assert first.path.read_bytes() == second.path.read_bytes()
    size = first.path.stat().st_size
    assert size <= 15 * 1024 * 1024, f"{size / 2**20:.1f} MB"
    with zipfile.ZipFile(first.path) as archive:
        names = archive.namelist()
        metadata = archive.read("pillow-13.0.0.dist-info/METADATA").decode()
        imaging = archive.read("PIL/_imaging.cpython-312-aarch64-linux-gnu.so")
        heif = archive.read("_pillow_heif.cpython-312-aarch64-linux-gnu.so")
        libheif = [n for n in names if n.startswith("pillow_heif.libs/libheif-")]
    assert "\nVersion: 13.0.0\n" in metadata
    for extension in (imaging, heif):
        aarch64 = (183).to_bytes(2, "little")  # EM_AARCH64
        assert extension[:4] == b"\x7fELF" and extension[18:20] == aarch64
    assert imaging != FAKE_MARKER
    assert libheif, "pillow-heif's wheel bundles libheif"
    assert "functions/aws/main.py" in names
    assert "aws_lambda_powertools/logging/logger.py" in names
    assert "functions/aws/__pycache__/main.cpython-312.pyc" in names
    assert "PIL/__pycache__/Image.cpython-312.pyc" in names
    assert not [n for n in names if n.startswith("tests/")]
