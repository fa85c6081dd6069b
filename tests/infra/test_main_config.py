"""Config that is wrong never passes silently: `__main__.py` under Pulumi mocks.

Unknown keys name the closest known one, a key of the other cloud names the cloud it
belongs to, values beyond the ceilings are refused, a huge value is quoted in at
most about 80 characters, and `Pulumi.yaml` declares exactly the keys the program
reads, each with the default the program's own types carry.
"""

from __future__ import annotations

import json
import runpy
import time
from typing import Any

import pulumi
import pytest
import yaml

from components import config
from components.packaging import PROJECT_ROOT
from tests.infra.aws_fakes import fake_wheel_dirs, offline_lambda_builds  # noqa: F401 - fixtures
from tests.infra.conftest import RecordingMocks, run_program, set_config

PROJECT = yaml.safe_load((PROJECT_ROOT / "Pulumi.yaml").read_text(encoding="utf-8"))
DECLARED = PROJECT["config"]


def stack(name: str) -> dict[str, Any]:
    path = PROJECT_ROOT / "stacks" / f"Pulumi.{name}.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8"))["config"]


def run_main() -> dict[str, Any]:
    def program():
        root = pulumi.runtime.get_root_resource()
        root.outputs.clear()
        runpy.run_path(str(PROJECT_ROOT / "__main__.py"), run_name="__main__")
        return pulumi.Output.from_input(dict(root.outputs))

    return run_program(program)


def main_error(config: dict[str, Any]) -> str:
    set_config(config)
    with pytest.raises(pulumi.RunError) as caught:
        run_main()
    return str(caught.value)


@pytest.fixture
def mocked(pulumi_mocks, offline_lambda_builds):  # noqa: F811 - pytest fixture injection
    return pulumi_mocks


def with_declared_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """What Pulumi hands the program: every declared key, its default where the stack is silent."""
    return {**{key: spec["default"] for key, spec in DECLARED.items()}, **config}


@pytest.mark.parametrize(
    ("key", "named"),
    [
        ("imagepipe:maxbytes", "imagepipe:maxBytes"),
        ("imagepipe:rendition", "imagepipe:renditions"),
        ("imagepipe:delivery_mode", "imagepipe:deliveryMode"),
        ("imagepipe:memory", "imagepipe:memoryMb"),
    ],
)
def test_a_typo_names_the_closest_known_key(mocked, key, named):
    message = main_error({**stack("aws-dev"), key: "1"})
    assert message == f"{key} is not a setting; did you mean {named}?"
    assert mocked.of_type("aws:lambda/function:Function") == []


def test_an_unknown_key_with_nothing_close_lists_the_known_ones(mocked):
    message = main_error({**stack("aws-dev"), "imagepipe:zzzqqq": "1"})
    assert message.startswith("imagepipe:zzzqqq is not a setting; known settings: cloud, ")


def test_keys_of_other_namespaces_are_not_ours_to_judge(mocked):
    set_config({**stack("aws-dev"), "aws:profile": "dev", "myteam:anything": "x"})
    assert run_main()["cdnUrl"].startswith("https://")


@pytest.mark.parametrize(
    ("stack_name", "key", "value", "cloud"),
    [
        ("aws-dev", "imagepipe:deliveryMode", "public", "GCP"),
        ("aws-dev", "imagepipe:maxInstances", "3", "GCP"),
        ("aws-dev", "imagepipe:cpu", "lots", "GCP"),  # a bad value too: still the cloud first
        ("gcp-dev", "imagepipe:architecture", "x86_64", "AWS"),
        ("gcp-dev", "imagepipe:tracing", "true", "AWS"),
        ("gcp-dev", "imagepipe:reservedConcurrency", "5", "AWS"),
    ],
)
def test_a_key_of_the_other_cloud_stops_the_program(mocked, stack_name, key, value, cloud):
    message = main_error(with_declared_defaults({**stack(stack_name), key: value}))
    own = "gcp" if cloud == "AWS" else "aws"
    assert message == f"{key} applies to {cloud} only; this stack's imagepipe:cloud is {own}."


@pytest.mark.parametrize("stack_name", ["aws-dev", "gcp-dev"])
def test_the_declared_defaults_pulumi_fills_in_are_not_mistaken_for_settings(mocked, stack_name):
    set_config(with_declared_defaults(stack(stack_name)))
    assert run_main()["uploadsBucket"]


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("imagepipe:maxPixels", "5000000000", "from 1 to 1000000000"),
        ("imagepipe:maxBytes", "1099511627776", "from 1 to 536870912"),
        ("imagepipe:memoryMb", "64", "from 128 to 32768"),
    ],
)
def test_limits_have_ceilings(mocked, key, value, allowed):
    message = main_error({**stack("aws-dev"), key: value})
    assert message.startswith(f"{key} is ") and allowed in message


def test_aws_memory_stops_where_lambda_does(mocked):
    message = main_error({**stack("aws-dev"), "imagepipe:memoryMb": "20000"})
    assert message == "imagepipe:memoryMb is 20000; Lambda functions have at most 10240 MB."


def test_gcp_memory_goes_further(mocked):
    set_config({**stack("gcp-dev"), "imagepipe:memoryMb": "20000"})
    run_main()
    (function,) = mocked.of_type("gcp:cloudfunctionsv2/function:Function")
    assert function.inputs["serviceConfig"]["availableMemory"] == "20000Mi"


def test_a_huge_value_is_quoted_briefly_and_judged_quickly(mocked):
    # What a YAML alias bomb expands to by the time Pulumi hands it over as JSON.
    nested: Any = ["x" * 10]
    for _ in range(5):
        nested = [nested] * 10  # 100,000 strings
    started = time.perf_counter()
    message = main_error({**stack("aws-dev"), "imagepipe:renditions": json.dumps(nested)})
    assert time.perf_counter() - started < 5
    assert message.startswith("imagepipe:renditions")
    assert len(message) < 250, message


def test_a_long_string_is_cut_in_the_message(mocked):
    message = main_error({**stack("aws-dev"), "imagepipe:priceClass": "P" * 100_000})
    assert len(message) < 200 and "..." in message


# --- Pulumi.yaml and the program agree ---------------------------------------------------


def test_every_declared_key_is_read_and_every_read_key_is_declared():
    read = {f"imagepipe:{key}" for key in config.known_keys()}
    declared = {key for key in DECLARED if key.startswith("imagepipe:")}
    assert read == declared


def _asset_path(value: Any) -> str:
    return str(getattr(value, "path", type(value).__name__))  # archives by what they hold


def recorded(mocks: RecordingMocks) -> list[tuple[str, str, str]]:
    return sorted(
        (r.type, r.name, json.dumps(r.inputs, sort_keys=True, default=_asset_path))
        for r in mocks.resources
    )


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_the_declared_defaults_are_the_programs_defaults(mocked, cloud):
    """Setting every key to its declared default builds exactly what setting nothing does."""
    minimal = {"imagepipe:cloud": cloud}
    if cloud == "gcp":
        minimal["gcp:project"] = "imagepipe-test"
    set_config(minimal)
    run_main()
    silent = recorded(mocked)
    mocked.resources.clear()
    set_config(with_declared_defaults(minimal))
    run_main()
    assert recorded(mocked) == silent


@pytest.mark.parametrize(
    ("options", "args_type"),
    [
        (lambda reader: config.shared_options(reader, config.AWS_LIMITS), "PipelineArgs"),
        (config.aws_options, "AwsImagePipelineArgs"),
        (config.gcp_options, "GcpImagePipelineArgs"),
    ],
    ids=["shared", "aws", "gcp"],
)
def test_each_declared_default_is_its_fields_default(options, args_type):
    """Unset fields (None, ()) are declared as empty values; the rest exactly as the type's."""
    from components.args import PipelineArgs
    from components.aws.args import AwsImagePipelineArgs
    from components.gcp.args import GcpImagePipelineArgs

    types = {t.__name__: t for t in (PipelineArgs, AwsImagePipelineArgs, GcpImagePipelineArgs)}
    defaults = config.defaults(types[args_type])
    keys = config._keys_of(options)
    compared = 0
    for field, key in keys.items():
        if defaults.get(field) in (None, ()):
            continue
        declared = DECLARED[f"imagepipe:{key}"]["default"]
        assert str(declared).lower() == str(defaults[field]).lower(), key
        compared += 1
    assert compared >= 3


# --- operations: the work queue and what happens to originals -----------------------------


def test_backfill_concurrency_has_one_declared_default_both_contracts_name():
    from functions.aws import contract as aws_contract
    from functions.gcp import contract as gcp_contract

    declared = DECLARED["imagepipe:backfillConcurrency"]["default"]
    assert declared == aws_contract.DEFAULT_BACKFILL_CONCURRENCY
    assert declared == gcp_contract.DEFAULT_BACKFILL_CONCURRENCY
    from components.aws.args import AwsImagePipelineArgs
    from components.gcp.args import GcpImagePipelineArgs

    assert config.defaults(AwsImagePipelineArgs)["backfill_concurrency"] == declared
    assert config.defaults(GcpImagePipelineArgs)["backfill_concurrency"] == declared


def test_the_settings_keys_the_core_reads_are_declared_with_its_defaults():
    from functions.core.settings import PipelineSettings

    defaults = PipelineSettings()
    assert DECLARED["imagepipe:originals"]["default"] == defaults.originals
    assert (
        DECLARED["imagepipe:deleteRenditionsWithOriginal"]["default"]
        is defaults.delete_renditions_with_original
    )


@pytest.mark.parametrize(
    ("cloud", "mapping_value"),
    [
        (
            "aws",
            lambda mocks: mocks.one("aws:lambda/eventSourceMapping:EventSourceMapping").inputs[
                "scalingConfig"
            ]["maximumConcurrency"],
        ),
        (
            "gcp",
            lambda mocks: mocks.one("gcp:cloudtasks/queue:Queue").inputs["rateLimits"][
                "maxConcurrentDispatches"
            ],
        ),
    ],
)
def test_the_stacks_backfill_concurrency_reaches_the_work_queue(mocked, cloud, mapping_value):
    config_values = stack(f"{cloud}-dev")
    set_config(config_values)
    run_main()
    assert mapping_value(mocked) == int(config_values["imagepipe:backfillConcurrency"])


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "imagepipe:backfillConcurrency",
            "1",
            "imagepipe:backfillConcurrency is '1'; use a whole number from 2 to 1000.",
        ),
        (
            "imagepipe:backfillConcurrency",
            "5000",
            "imagepipe:backfillConcurrency is '5000'; use a whole number from 2 to 1000.",
        ),
        (
            "imagepipe:originals",
            "move",
            "imagepipe:originals is 'move'; use one of keep, delete, archive.",
        ),
        (
            "imagepipe:deleteRenditionsWithOriginal",
            "yes",
            "imagepipe:deleteRenditionsWithOriginal is 'yes'; use true or false.",
        ),
    ],
)
@pytest.mark.parametrize("stack_name", ["aws-dev", "gcp-dev"])
def test_a_bad_operations_value_stops_the_program_naming_the_key(
    mocked, stack_name, key, value, message
):
    assert main_error({**stack(stack_name), key: value}) == message
    assert not [r for r in mocked.resources if r.type.endswith("/function:Function")]


def test_gcp_backfill_concurrency_stops_at_max_instances(mocked):
    message = main_error(
        {**stack("gcp-dev"), "imagepipe:maxInstances": "4", "imagepipe:backfillConcurrency": "6"}
    )
    assert message.startswith(
        "imagepipe:backfillConcurrency is 6, above imagepipe:maxInstances (4);"
    )
