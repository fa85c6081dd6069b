"""The Lambda deployment archive: functions/core + functions/aws + wheels for the target CPU.

Built when the component is constructed (`pulumi up`/preview), never inside an
`apply`. Wheels are downloaded once per (requirements, architecture, Python
version) into PROJECT_ROOT/.cache/lambda/<key>/wheels; the archive next to them
is named by the digest of everything it holds, so the same inputs give the same
bytes and `pulumi up` twice changes nothing.

Pillow 13 ships only manylinux_2_28 wheels, hence the platform tag below (the
usual manylinux2014 recipe silently resolves Pillow 12.2); pillow-heif's wheels
(libheif, libde265 and libx265, which libheif links, bundled) carry the same tag
for both architectures. pip honours its own
environment variables, so `PIP_NO_INDEX=1 PIP_FIND_LINKS=<dir>` builds offline
from a local wheelhouse.

Bytecode: `/var/task` is read-only, so a sandbox given sources only compiles every module
it imports on each cold start (0.22 s of a 0.92 s handler import under Python 3.12). The
archive therefore carries `__pycache__/*.pyc` for every module, compiled by an
interpreter of the runtime's version (only it can write bytecode the runtime will read)
with unchecked-hash invalidation, so the bytes depend on the sources alone. Without such
an interpreter the archive ships sources only, and the component says so.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from components.packaging import (
    PROJECT_ROOT,
    file_sha256,
    package_entries,
    pinned_requirements,
    write_deterministic_zip,
)
from functions.aws import contract

# What the archive bundles besides functions/, pinned to requirements.lock. pip installs
# them with --no-deps for the target platform, so every dependency is named here; boto3
# and botocore are not bundled: the Lambda Python runtime provides them.
LAMBDA_REQUIREMENTS = (
    "aws-lambda-powertools",
    "jmespath",
    "pillow",
    "pillow-heif",
    "typing-extensions",
)
CACHE_DIR_ENV = "IMAGEPIPE_LAMBDA_CACHE_DIR"
MAX_ARCHIVE_BYTES = 15 * 1024 * 1024
FUNCTION_PACKAGES = ("functions.core", "functions.aws")
HANDLER_FILE = contract.HANDLER_FILE
PLATFORM_TAGS = {"arm64": "manylinux_2_28_aarch64", "x86_64": "manylinux_2_28_x86_64"}
_SKIPPED_PARTS = {"__pycache__"}
# Left as sources: Powertools' event handlers, middleware and utilities (parsers,
# idempotency, batch: 0.8 MB of bytecode) are never imported by the handlers, and their
# bytecode would take the arm64 archive past its budget.
UNCOMPILED_PREFIXES = (
    "aws_lambda_powertools/event_handler/",
    "aws_lambda_powertools/middleware_factory/",
    "aws_lambda_powertools/utilities/",
)
# Where Lambda unpacks the archive: the file names tracebacks show.
LAMBDA_TASK_ROOT = "/var/task"
# Run in the runtime's interpreter: compiles each archive name read from stdin (its source
# under argv[1]) and prints {name: its .pyc's name}; what does not compile stays source.
_COMPILE_SCRIPT = """
import importlib.util, json, py_compile, sys
root, task_root = sys.argv[1], sys.argv[2]
compiled = {}
for name in json.load(sys.stdin):
    try:
        cfile = importlib.util.cache_from_source(f"{root}/{name}")
        py_compile.compile(
            f"{root}/{name}", cfile=cfile, dfile=f"{task_root}/{name}", doraise=True,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )
    except py_compile.PyCompileError:
        continue
    compiled[name] = cfile[len(root) + 1:]
print(json.dumps(compiled))
"""


class LambdaArchiveError(RuntimeError):
    """The archive cannot be built; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class LambdaArchive:
    path: Path
    sha256: str
    """Hex digest of the zip file."""
    bytecode: str | None = None
    """The cache tag of the bundled bytecode ("cpython-312"), None for sources only."""

    @property
    def source_code_hash(self) -> str:
        """Base64 SHA-256, the form Lambda reports as CodeSha256."""
        return base64.b64encode(bytes.fromhex(self.sha256)).decode("ascii")


def default_cache_root() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV) or PROJECT_ROOT / ".cache" / "lambda")


def dependency_key(requirements: str, architecture: str, python_version: str) -> str:
    digest = hashlib.sha256()
    for part in (requirements, architecture, python_version):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:32]


def build_lambda_archive(
    architecture: str,
    python_version: str = "3.12",
    *,
    requirements: str | None = None,
    cache_root: Path | None = None,
    project_root: Path = PROJECT_ROOT,
    max_bytes: int = MAX_ARCHIVE_BYTES,
    compiler: str | None = None,
) -> LambdaArchive:
    """The archive for `architecture` (arm64 | x86_64) and `python_version` ("3.12").

    `requirements` (requirements.txt text) defaults to LAMBDA_REQUIREMENTS pinned from the lock.
    `compiler`, the interpreter that writes the bytecode, defaults to `bytecode_compiler`'s;
    "" builds sources only.
    """
    if architecture not in PLATFORM_TAGS:
        raise LambdaArchiveError(
            f"architecture {architecture!r} has no wheels; use one of {', '.join(PLATFORM_TAGS)}."
        )
    if not (project_root / HANDLER_FILE).is_file():
        raise LambdaArchiveError(f"{HANDLER_FILE} is missing; the archive needs the handler.")
    if requirements is None:
        requirements = lambda_requirements(project_root / "requirements.lock")
    cache = (cache_root or default_cache_root()) / dependency_key(
        requirements, architecture, python_version
    )
    wheels = _cached_wheels(cache, requirements, architecture, python_version)

    entries: list[tuple[str, bytes | Path]] = [*package_entries(project_root, FUNCTION_PACKAGES)]
    for wheel in wheels:
        entries += _wheel_entries(wheel)
    compiler = bytecode_compiler(python_version) if compiler is None else compiler
    bytecode = _cache_tag(compiler) if compiler else None

    contents = hashlib.sha256(f"bytecode: {bytecode}\0".encode())
    for name, content in sorted(entries, key=lambda entry: entry[0]):
        data = content.read_bytes() if isinstance(content, Path) else content
        contents.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    archive_path = cache / f"function-{contents.hexdigest()[:24]}.zip"
    if archive_path.is_file():
        sha256 = file_sha256(archive_path)
    else:
        if compiler:
            entries += _bytecode_entries(entries, compiler)
        sha256 = write_deterministic_zip(entries, archive_path)

    size = archive_path.stat().st_size
    if size > max_bytes:
        raise LambdaArchiveError(
            f"the Lambda archive is {size / 2**20:.1f} MB, over the {max_bytes / 2**20:.0f} MB "
            "budget; trim LAMBDA_REQUIREMENTS."
        )
    return LambdaArchive(archive_path, sha256, bytecode)


def bytecode_compiler(python_version: str) -> str | None:
    """An interpreter of `python_version`: this one, `python<version>` on PATH, or one
    pyenv installed; None when there is none (a pyenv shim for a version not enabled
    answers but does not run, so each candidate is asked its version)."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == python_version:
        return sys.executable
    pyenv_root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    candidates = [shutil.which(f"python{python_version}")]
    candidates += sorted(map(str, pyenv_root.glob(f"versions/{python_version}.*/bin/python3")))
    for candidate in filter(None, candidates):
        if _cache_tag(candidate) == f"cpython-{python_version.replace('.', '')}":
            return candidate
    return None


@functools.cache  # asked once per interpreter and process: every component build asks
def _cache_tag(interpreter: str) -> str | None:
    try:
        answer = subprocess.run(
            [interpreter, "-c", "import sys; print(sys.implementation.cache_tag)"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError:
        return None
    if answer.returncode != 0:
        return None
    return answer.stdout.strip() or None


def _bytecode_entries(
    entries: list[tuple[str, bytes | Path]], compiler: str
) -> list[tuple[str, bytes]]:
    """Every .py entry compiled by `compiler`, as (its __pycache__ name, the .pyc's bytes)."""
    sources = [
        (name, content)
        for name, content in entries
        if name.endswith(".py") and not name.startswith(UNCOMPILED_PREFIXES)
    ]
    with tempfile.TemporaryDirectory(prefix="imagepipe-bytecode-") as folder:
        root = Path(folder)
        for name, content in sources:
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content.read_bytes() if isinstance(content, Path) else content)
        result = subprocess.run(
            [compiler, "-c", _COMPILE_SCRIPT, str(root), LAMBDA_TASK_ROOT],
            input=json.dumps([name for name, _ in sources]),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise LambdaArchiveError(f"{compiler} could not compile the archive: {reason}")
        compiled: dict[str, str] = json.loads(result.stdout)
        return [(pyc, (root / pyc).read_bytes()) for pyc in sorted(compiled.values())]


def lambda_requirements(lock_file: Path) -> str:
    return pinned_requirements(lock_file, LAMBDA_REQUIREMENTS)


def _cached_wheels(
    cache: Path, requirements: str, architecture: str, python_version: str
) -> list[Path]:
    wheel_dir = cache / "wheels"
    if not wheel_dir.is_dir():
        requirements_file = cache / "requirements.txt"
        requirements_file.parent.mkdir(parents=True, exist_ok=True)
        requirements_file.write_text(requirements, encoding="utf-8")
        _download_wheels(wheel_dir, requirements_file, architecture, python_version)
    return sorted(wheel_dir.glob("*.whl"))


def _download_wheels(
    wheel_dir: Path, requirements_file: Path, architecture: str, python_version: str
) -> None:
    # Download beside the final directory and rename: an interrupted or failed
    # download never leaves a half-filled cache entry behind.
    partial = wheel_dir.with_name(f"{wheel_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--only-binary=:all:",
        "--platform",
        PLATFORM_TAGS[architecture],
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        "--no-deps",
        "--disable-pip-version-check",
        "--quiet",
        "-r",
        str(requirements_file),
        "-d",
        str(partial),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise LambdaArchiveError(
            f"pip could not download the Lambda wheels for {PLATFORM_TAGS[architecture]}, "
            f"Python {python_version}: {reason}"
        )
    expected = _requirement_count(requirements_file)
    found = len(list(partial.glob("*.whl")))
    if found != expected:
        shutil.rmtree(partial, ignore_errors=True)
        raise LambdaArchiveError(f"pip gave {found} wheels for the {expected} pinned requirements.")
    try:
        partial.replace(wheel_dir)
    except OSError:  # another build filled the cache first; its wheels are the same
        shutil.rmtree(partial, ignore_errors=True)


def _requirement_count(requirements_file: Path) -> int:
    lines = requirements_file.read_text(encoding="utf-8").splitlines()
    return sum(1 for line in lines if line.split("#")[0].strip())


def _wheel_entries(wheel: Path) -> list[tuple[str, bytes]]:
    """A wheel's files as they would be installed into site-packages (the archive root)."""
    entries = []
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            if info.is_dir() or _SKIPPED_PARTS.intersection(info.filename.split("/")):
                continue
            name = _installed_name(info.filename)
            if name is not None:
                entries.append((name, archive.read(info)))
    return entries


def _installed_name(name: str) -> str | None:
    top, _, rest = name.partition("/")
    if not top.endswith(".data"):
        return name
    scheme, _, path = rest.partition("/")
    # purelib/platlib belong in site-packages; scripts, headers and data do not run in Lambda.
    return path if scheme in ("purelib", "platlib") and path else None
