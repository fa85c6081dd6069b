"""The Cloud Functions' source archives: `main.py` at the root, the core beside it, pinned deps.

Cloud Functions gen2 hands an archive to Cloud Build, which installs
`requirements.txt` remotely, so the archive holds only our own code and a pin
list: no wheels, no network at `pulumi up`. The pins come from
`requirements.lock`, the project's one source of truth for versions.

Two functions are built this way: the pipeline's (`MAIN_FUNCTION`) and, with the
upload API on, the API's (`API_FUNCTION`). They differ only in which file becomes
`main.py`, what they import and the name their objects go by.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from components.packaging import (
    PROJECT_ROOT,
    package_entries,
    pinned_requirements,
    write_deterministic_zip,
)
from functions.gcp import contract

# What the function imports at runtime; everything else in the lock is for tests and tooling.
FUNCTION_REQUIREMENTS = (
    "functions-framework",
    "google-cloud-firestore",
    "google-cloud-pubsub",
    "google-cloud-storage",
    "pillow",
    "pillow-heif",
)
# The API verifies its callers' tokens itself (pyjwt, cryptography for RS256/ES256) and never
# decodes an image or publishes an event: no Pillow, no Pub/Sub.
API_REQUIREMENTS = (
    "cryptography",
    "functions-framework",
    "google-cloud-firestore",
    "google-cloud-storage",
    "pyjwt",
)
ENTRY_POINT_FILE = Path("functions/gcp/main.py")
PACKAGES = ("functions.core", "functions.gcp")


@dataclass(frozen=True)
class SourceKind:
    """Which function an archive is for."""

    entry_point_file: Path
    """Copied to the archive's root as `main.py`, where the runtime looks for it."""
    requirements: tuple[str, ...]
    """Names pinned from the lock into `requirements.txt`."""
    prefix: str
    """Start of the archive's file and object names, so the two never share one."""


MAIN_FUNCTION = SourceKind(ENTRY_POINT_FILE, FUNCTION_REQUIREMENTS, "function")
API_FUNCTION = SourceKind(Path(contract.API_ENTRY_POINT_FILE), API_REQUIREMENTS, "api")


@dataclass(frozen=True)
class FunctionSource:
    """A built archive and the hash that names it."""

    path: Path
    sha256: str
    prefix: str = MAIN_FUNCTION.prefix

    @property
    def object_name(self) -> str:
        """Object name in the source bucket: a new name only when the content changes."""
        return f"{self.prefix}-{self.sha256}.zip"


def source_entries(
    root: Path = PROJECT_ROOT, kind: SourceKind = MAIN_FUNCTION
) -> list[tuple[str, bytes | Path]]:
    """(archive name, content) of everything the function needs, in no particular order."""
    entry_point = root / kind.entry_point_file
    if not entry_point.is_file():
        raise FileNotFoundError(
            f"the GCP entry point {kind.entry_point_file} is missing under {root}"
        )
    requirements = pinned_requirements(root / "requirements.lock", kind.requirements)
    return [
        ("main.py", entry_point),
        *package_entries(root, PACKAGES),
        ("requirements.txt", requirements.encode()),
    ]


def build_function_source(
    root: Path = PROJECT_ROOT,
    cache_dir: Path | None = None,
    kind: SourceKind = MAIN_FUNCTION,
) -> FunctionSource:
    """Write the archive under `<root>/.cache/gcp/`, named by its sha256, and return it.

    Same inputs, byte-identical archive: an unchanged function keeps its object
    name, so `pulumi up` does not redeploy it.
    """
    cache_dir = cache_dir or root / ".cache" / "gcp"
    staging = cache_dir / f"{kind.prefix}.zip"
    sha256 = write_deterministic_zip(source_entries(root, kind), staging)
    built = FunctionSource(cache_dir / f"{kind.prefix}-{sha256}.zip", sha256, kind.prefix)
    staging.replace(built.path)
    return built
