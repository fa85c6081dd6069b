"""The Cloud Function's source archive: `main.py` at the root, the core beside it, pinned deps.

Cloud Functions gen2 hands the archive to Cloud Build, which installs
`requirements.txt` remotely, so the archive holds only our own code and a pin
list: no wheels, no network at `pulumi up`. The pins come from
`requirements.lock`, the project's one source of truth for versions.
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

# What the function imports at runtime; everything else in the lock is for tests and tooling.
FUNCTION_REQUIREMENTS = (
    "functions-framework",
    "google-cloud-firestore",
    "google-cloud-pubsub",
    "google-cloud-storage",
    "pillow",
)
ENTRY_POINT_FILE = Path("functions/gcp/main.py")
PACKAGES = ("functions.core", "functions.gcp")


@dataclass(frozen=True)
class FunctionSource:
    """A built archive and the hash that names it."""

    path: Path
    sha256: str

    @property
    def object_name(self) -> str:
        """Object name in the source bucket: a new name only when the content changes."""
        return f"function-{self.sha256}.zip"


def source_entries(root: Path = PROJECT_ROOT) -> list[tuple[str, bytes | Path]]:
    """(archive name, content) of everything the function needs, in no particular order."""
    entry_point = root / ENTRY_POINT_FILE
    if not entry_point.is_file():
        raise FileNotFoundError(f"the GCP entry point {ENTRY_POINT_FILE} is missing under {root}")
    requirements = pinned_requirements(root / "requirements.lock", FUNCTION_REQUIREMENTS)
    return [
        ("main.py", entry_point),
        *package_entries(root, PACKAGES),
        ("requirements.txt", requirements.encode()),
    ]


def build_function_source(
    root: Path = PROJECT_ROOT, cache_dir: Path | None = None
) -> FunctionSource:
    """Write the archive under `<root>/.cache/gcp/`, named by its sha256, and return it.

    Same inputs, byte-identical archive: an unchanged function keeps its object
    name, so `pulumi up` does not redeploy it.
    """
    cache_dir = cache_dir or root / ".cache" / "gcp"
    staging = cache_dir / "function.zip"
    sha256 = write_deterministic_zip(source_entries(root), staging)
    built = FunctionSource(cache_dir / f"function-{sha256}.zip", sha256)
    staging.replace(built.path)
    return built
