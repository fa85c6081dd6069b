"""An offline wheelhouse for the Lambda archive builder.

The wheels have the names and metadata of the pinned requirements but tiny
contents, so the real builder (pip download included) runs without PyPI:
pip honours PIP_NO_INDEX and PIP_FIND_LINKS from the environment.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from components.aws.lambda_archive import CACHE_DIR_ENV, lambda_requirements
from components.packaging import LOCK_FILE

FAKE_MARKER = b"# fake wheel content for offline tests\n"
# The pinned projects with compiled code: a wheel per architecture, and the extension
# module each holds (the real wheels bundle their C libraries beside it).
PLATFORM_EXTENSIONS = {"pillow": "PIL/_imaging", "pillow-heif": "_pillow_heif"}


def pinned_requirements(lock_file: Path = LOCK_FILE) -> dict[str, str]:
    """{'pillow': '13.0.0', ...}: what the builder asks pip for."""
    pins = {}
    for line in lambda_requirements(lock_file).splitlines():
        requirement = line.split("#")[0].strip()
        if requirement:
            name, _, version = requirement.partition("==")
            pins[name.strip()] = version.strip()
    return pins


def write_fake_wheel(directory: Path, name: str, version: str, tag: str) -> Path:
    project = name.replace("-", "_")
    dist_info = f"{project}-{version}.dist-info"
    package = "PIL" if project == "pillow" else project
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    files = {
        f"{package}/__init__.py": FAKE_MARKER,
        f"{package}/__pycache__/__init__.cpython-312.pyc": b"bytecode the builder must skip",
        f"{dist_info}/METADATA": metadata.encode(),
        f"{dist_info}/WHEEL": f"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: {tag}\n".encode(),
    }
    if name in PLATFORM_EXTENSIONS:
        platform = tag.rsplit("-", 1)[-1].removeprefix("manylinux_2_28_")
        files[f"{PLATFORM_EXTENSIONS[name]}.cpython-312-{platform}-linux-gnu.so"] = FAKE_MARKER
        files[f"{project}-{version}.data/scripts/not-for-lambda"] = FAKE_MARKER
    path = directory / f"{project}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for file_name, content in files.items():
            wheel.writestr(file_name, content)
    return path


def write_fake_wheelhouse(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, version in pinned_requirements().items():
        if name in PLATFORM_EXTENSIONS:
            for platform in ("aarch64", "x86_64"):
                write_fake_wheel(directory, name, version, f"cp312-cp312-manylinux_2_28_{platform}")
        else:
            write_fake_wheel(directory, name, version, "py3-none-any")
    return directory


@pytest.fixture(scope="session")
def fake_wheel_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """(wheelhouse, cache root), shared by the session so pip runs once per architecture."""
    root = tmp_path_factory.mktemp("lambda-offline")
    return write_fake_wheelhouse(root / "wheelhouse"), root / "cache"


@pytest.fixture
def offline_lambda_builds(fake_wheel_dirs, monkeypatch) -> Path:
    """Lambda archives build from the fake wheelhouse into a test cache; returns the cache."""
    wheelhouse, cache = fake_wheel_dirs
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheelhouse))
    monkeypatch.setenv(CACHE_DIR_ENV, str(cache))
    return cache
