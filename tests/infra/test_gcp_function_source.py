"""The Cloud Function's source archive: deterministic, complete, pinned from the lock."""

from __future__ import annotations

import ast
import zipfile
from pathlib import Path

import pytest

from components.gcp.function_source import FUNCTION_REQUIREMENTS, build_function_source
from components.packaging import PROJECT_ROOT, pinned_requirements


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, str]:
    built = build_function_source(cache_dir=tmp_path_factory.mktemp("gcp-source"))
    return built.path, built.sha256


def names_in(path: Path) -> set[str]:
    with zipfile.ZipFile(path) as zipped:
        return set(zipped.namelist())


def test_same_inputs_give_a_byte_identical_archive_named_by_its_hash(archive, tmp_path):
    first_path, first_sha = archive
    again = build_function_source(cache_dir=tmp_path)

    assert again.sha256 == first_sha
    assert again.path.read_bytes() == first_path.read_bytes()
    assert again.path.name == f"function-{first_sha}.zip"
    assert again.object_name == f"function-{first_sha}.zip"


def test_main_py_is_at_the_root_and_the_core_beside_it(archive):
    path, _ = archive
    names = names_in(path)

    with zipfile.ZipFile(path) as zipped:
        assert zipped.read("main.py") == (PROJECT_ROOT / "functions/gcp/main.py").read_bytes()
    assert {"functions/__init__.py", "functions/core/__init__.py", "functions/core/service.py"} <= (
        names
    )
    assert "functions/gcp/adapters.py" in names
    assert not any(n.startswith(("tests/", "components/", "functions/aws/")) for n in names)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_every_functions_import_in_the_archive_resolves_inside_it(archive):
    """Cloud Build installs only requirements.txt: our own modules must all be in the zip."""
    path, _ = archive
    names = names_in(path)
    unresolved = []
    with zipfile.ZipFile(path) as zipped:
        for name in sorted(n for n in names if n.endswith(".py")):
            for node in ast.walk(ast.parse(zipped.read(name))):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    modules = [node.module]
                elif isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                else:
                    continue
                for module in modules:
                    if module.split(".")[0] != "functions":
                        continue
                    stem = module.replace(".", "/")
                    if f"{stem}.py" not in names and f"{stem}/__init__.py" not in names:
                        unresolved.append(f"{name}: {module}")
    assert unresolved == []


def test_requirements_pin_exactly_the_runtime_packages_from_the_lock(archive):
    path, _ = archive
    with zipfile.ZipFile(path) as zipped:
        pins = zipped.read("requirements.txt").decode().splitlines()

    lock = (PROJECT_ROOT / "requirements.lock").read_text().splitlines()
    assert sorted(pin.split("==")[0].lower() for pin in pins) == sorted(FUNCTION_REQUIREMENTS)
    for pin in pins:
        assert pin in lock, f"{pin} is not what requirements.lock pins"


def test_a_lock_missing_a_runtime_package_is_named(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("pillow==13.0.0\n    # via imagepipe\nfunctions-framework==3.10.2\n")

    with pytest.raises(ValueError, match="google-cloud-firestore"):
        pinned_requirements(lock, FUNCTION_REQUIREMENTS)
    assert pinned_requirements(lock, ("Pillow", "functions_framework")) == (
        "functions-framework==3.10.2\npillow==13.0.0\n"
    )


def test_a_changed_source_changes_the_hash(tmp_path):
    """The object name follows the content: an edited function is redeployed."""
    root = tmp_path / "project"
    for name in ("functions/gcp/main.py", "requirements.lock"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes((PROJECT_ROOT / name).read_bytes())
    (root / "functions/__init__.py").write_text("")
    (root / "functions/core").mkdir()
    (root / "functions/core/__init__.py").write_text("")

    before = build_function_source(root=root)
    (root / "functions/core/__init__.py").write_text("# changed\n")
    after = build_function_source(root=root)

    assert before.sha256 != after.sha256
    assert before.path.parent == root / ".cache" / "gcp"
