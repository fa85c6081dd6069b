"""The upload API's functions never render, so their cold start must not import Pillow or the
core's imaging: everything both API entry points import, checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import PROJECT_ROOT

# What functions/aws/api.py and functions/gcp/api.py import besides their platforms' SDKs.
API_IMPORTS = (
    "functions.aws.bootstrap",
    "functions.aws.contract",
    "functions.core.uploads",
    "functions.gcp.bootstrap",
    "functions.gcp.contract",
    "functions.gcp.tokens",
)


def test_the_api_functions_import_neither_pillow_nor_the_imaging_core():
    probe = (
        f"import {', '.join(API_IMPORTS)}, sys; "
        "print(sorted(m for m in sys.modules if m == 'PIL' or m.startswith("
        "('PIL.', 'functions.core.imaging', 'functions.core.service'))))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    assert found == "[]"
