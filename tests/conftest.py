"""Shared test fixtures: where the image corpus is, and how a missing tool is reported."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("IMAGEPIPE_CORPUS", PROJECT_ROOT.parent / "shared" / "corpus"))


def require(missing: str | None) -> None:
    """Skip, saying why, when an optional tool is missing; under CI (CI=true), fail instead:
    CI installs everything, so a missing tool there is a broken install, not a pass."""
    if missing is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{missing} (CI=true: tests that need it must run)", pytrace=False)
    pytest.skip(missing)


@pytest.fixture(scope="session")
def corpus_photos() -> Path:
    photos = CORPUS / "photos"
    require(
        None
        if photos.is_dir()
        else f"image corpus not found at {photos} (set IMAGEPIPE_CORPUS to its folder)"
    )
    return photos
