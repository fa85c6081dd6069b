"""The local reader of stack files: the same checks as `pulumi preview`, plus the file's shape."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from functions.core.settings import SettingsError
from functions.local.stack_config import read_stack_config
from tests.conftest import PROJECT_ROOT


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "Pulumi.test.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path) -> str:
    with pytest.raises(SettingsError) as caught:
        read_stack_config(path)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "is empty; it must be a mapping with a 'config:' mapping"),
        ("- a\n- b\n", "is a list; it must be a mapping"),
        ("just a string\n", "is a str; it must be a mapping"),
        ("config:\n", "'config' is None; it must be a mapping of key: value."),
        ("config: [1, 2]\n", "'config' is [1, 2]; it must be a mapping"),
    ],
)
def test_a_file_that_is_not_a_stack_config_says_so(tmp_path, text, says):
    assert says in error_of(write(tmp_path, text))


def test_a_typo_names_the_closest_key(tmp_path):
    path = write(tmp_path, "config:\n  imagepipe:maxbytes: 10\n")
    assert error_of(path) == (
        f"stack config {path}: imagepipe:maxbytes is not a setting; "
        "did you mean imagepipe:maxBytes?"
    )


def test_a_key_of_the_other_cloud_is_refused_as_at_preview(tmp_path):
    path = write(tmp_path, "config:\n  imagepipe:cloud: aws\n  imagepipe:deliveryMode: public\n")
    assert error_of(path).endswith(
        "imagepipe:deliveryMode applies to GCP only; this stack's imagepipe:cloud is aws."
    )


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):
        refs = ", ".join(f"*a{level - 1}" for _ in range(9))
        lines.append(f"a{level}: &a{level} [{refs}]")
    text = "\n".join(lines) + "\nconfig:\n  imagepipe:renditions: *a8\n"
    started = time.perf_counter()
    message = error_of(write(tmp_path, text))
    assert time.perf_counter() - started < 1
    assert "expands to more than 10000 values (YAML aliases?)" in message


def test_a_bad_value_is_quoted_in_at_most_80_characters(tmp_path):
    message = error_of(write(tmp_path, f"config:\n  imagepipe:priceClass: {'P' * 5000}\n"))
    assert len(message) < 250 and "..." in message


def test_a_secret_setting_is_refused(tmp_path):
    path = write(tmp_path, "config:\n  imagepipe:maxBytes:\n    secure: AAABAMd9\n")
    assert "imagepipe:maxBytes is a secret" in error_of(path)


def test_the_example_stacks_read_as_they_deploy():
    aws = read_stack_config(PROJECT_ROOT / "stacks" / "Pulumi.aws-dev.yaml")
    assert aws.uploads_prefix == "incoming/" and aws.max_event_age_seconds == 3600
    assert aws.settings.limits.memory_mb == 1024
    gcp = read_stack_config(PROJECT_ROOT / "stacks" / "Pulumi.gcp-dev.yaml")
    assert [spec.name for spec in gcp.settings.renditions] == ["large", "medium", "thumb"]
    assert gcp.settings.limits.max_bytes == 26214400
