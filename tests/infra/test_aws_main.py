"""`__main__.py` under Pulumi mocks: the example AWS stack config gives the stack outputs, and a
bad value stops the program with one sentence naming the key."""

from __future__ import annotations

import runpy

import pulumi
import pytest
import yaml

from components.packaging import PROJECT_ROOT
from functions.aws import contract
from tests.infra.aws_fakes import fake_wheel_dirs, offline_lambda_builds  # noqa: F401 - fixtures
from tests.infra.conftest import AWS_OUTPUT_NAMES, run_program, set_config

EXAMPLE_STACK = PROJECT_ROOT / "stacks" / "Pulumi.aws-dev.yaml"


def example_config() -> dict:
    return yaml.safe_load(EXAMPLE_STACK.read_text(encoding="utf-8"))["config"]


def run_main() -> dict:
    """Run the real program; returns its stack exports, resolved."""

    def program():
        # The root stack outlives a test under mocks; start from no exports.
        stack = pulumi.runtime.get_root_resource()
        stack.outputs.clear()
        runpy.run_path(str(PROJECT_ROOT / "__main__.py"))
        return dict(stack.outputs)

    return run_program(program)


@pytest.fixture
def mocked(pulumi_mocks, offline_lambda_builds):  # noqa: F811 - pytest fixture injection
    return pulumi_mocks


def test_example_stack_exports_every_output(mocked):
    config = example_config()
    assert config["imagepipe:cloud"] == "aws"
    set_config(config)
    exports = run_main()
    assert set(exports) == AWS_OUTPUT_NAMES
    assert exports["cdnUrl"].startswith("https://")
    assert exports["functionName"] == "imagepipe-test"
    # The example's values reached the component, not the defaults.
    function = mocked.one("aws:lambda/function:Function").inputs
    assert function["architectures"] == ["arm64"]
    settings = function["environment"]["variables"][contract.SETTINGS]
    assert '"allowed_formats":["JPEG","PNG","WEBP","GIF"]' in settings
    assert mocked.one("aws:cloudwatch/logGroup:LogGroup").inputs["retentionInDays"] == 14
    assert mocked.one("aws:iam/role:Role").inputs["tags"] == {"project": "imagepipe", "env": "dev"}
    (target,) = mocked.one("aws:s3/bucketNotification:BucketNotification").inputs["lambdaFunctions"]
    assert target["filterPrefix"] == "incoming/"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("imagepipe:renditions", ["thumb:200x200:stretch"]),
        ("imagepipe:architecture", "sparc"),
        ("imagepipe:memoryMb", "lots"),
        ("imagepipe:logRetentionDays", "45"),
    ],
)
def test_a_bad_value_fails_naming_the_key(mocked, key, value):
    set_config({**example_config(), key: value})
    with pytest.raises(pulumi.RunError, match=key):
        run_main()
    assert mocked.of_type("aws:lambda/function:Function") == []
