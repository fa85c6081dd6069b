"""Shared test fixtures: where the image corpus is."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("IMAGEPIPE_CORPUS", PROJECT_ROOT.parent / "shared" / "corpus"))


@pytest.fixture(scope="session")
def corpus_photos() -> Path:
    photos = CORPUS / "photos"
    if not photos.is_dir():
        pytest.skip(f"image corpus not found at {photos} (set IMAGEPIPE_CORPUS to its folder)")
    return photos
