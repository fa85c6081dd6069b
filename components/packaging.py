"""Deterministic function archives, shared by both clouds.

The same inputs give a byte-identical zip (sorted entries, fixed timestamps
and permissions), so its hash only changes when the code does and `pulumi up`
twice changes nothing.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOCK_FILE = PROJECT_ROOT / "requirements.lock"
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest instant a zip entry can carry
_SKIPPED_PARTS = {"__pycache__", ".pytest_cache", ".mypy_cache"}


def python_sources(root: Path, package: str) -> list[tuple[str, Path]]:
    """(archive name, path) of every .py file of `package` (a dotted name) under `root`."""
    package_dir = root.joinpath(*package.split("."))
    if not package_dir.is_dir():
        raise FileNotFoundError(f"package {package} not found under {root}")
    files = [
        (path.relative_to(root).as_posix(), path)
        for path in package_dir.rglob("*.py")
        if not _SKIPPED_PARTS.intersection(path.parts)
    ]
    return sorted(files)


def package_entries(root: Path, packages: Iterable[str]) -> list[tuple[str, Path]]:
    """Every .py file of `packages` and the `__init__.py` files of their parents."""
    entries: list[tuple[str, Path]] = []
    for package in packages:
        entries += [(name, root / name) for name in package_parents(package)]
        entries += python_sources(root, package)
    return entries


_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_requirements(lock_file: Path, names: Iterable[str]) -> str:
    """`requirements.txt` text pinning exactly `names` to the versions in `lock_file`.

    Both clouds' function archives take their pins from the project's lock, so a
    dependency is upgraded in one place.
    """
    pins: dict[str, str] = {}
    for line in lock_file.read_text().splitlines():
        match = _PIN.match(line.strip())
        if match:
            pins[_normalise(match.group(1))] = f"{match.group(1)}=={match.group(2)}"
    names = sorted(names, key=_normalise)
    missing = [name for name in names if _normalise(name) not in pins]
    if missing:
        raise ValueError(f"{lock_file} pins no version of {', '.join(missing)}")
    return "".join(f"{pins[_normalise(name)]}\n" for name in names)


def package_parents(package: str) -> list[str]:
    """`functions.core` -> ['functions/__init__.py']: the parents that make it importable."""
    parts = package.split(".")
    return ["/".join(parts[:depth]) + "/__init__.py" for depth in range(1, len(parts))]


def write_deterministic_zip(entries: Iterable[tuple[str, bytes | Path]], destination: Path) -> str:
    """Write the entries sorted by name with fixed metadata; return the zip's sha256 (hex)."""
    by_name: dict[str, bytes] = {}
    for name, content in entries:
        data = content.read_bytes() if isinstance(content, Path) else content
        if name in by_name and by_name[name] != data:
            raise ValueError(f"two different files want the archive path {name}")
        by_name[name] = data
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_suffix(destination.suffix + ".partial")
    with zipfile.ZipFile(partial, "w") as archive:
        for name in sorted(by_name):
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
            info.create_system = 3  # unix, so the mode above is honoured everywhere
            archive.writestr(info, by_name[name], compresslevel=9)
    partial.replace(destination)  # readers never see a half-written archive
    return file_sha256(destination)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
