"""imagepipe: stack config -> validated settings -> one component -> stack outputs.

The only place that reads `pulumi.Config`; what each key means and how it is checked
lives in `components.config`, which the local pipeline shares. A bad value, an
unknown `imagepipe:` key (with the closest known one) or a key of the other cloud
stops `pulumi up` and `pulumi preview` with one sentence naming the key.
"""

from __future__ import annotations

import pulumi

from components import config
from functions.core.settings import SettingsError


def stack_config_keys() -> set[str]:
    """The keys of the stack's config, as the Pulumi language host handed them over."""
    from pulumi.runtime import config as runtime_config

    return set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())


def main() -> None:
    ours, gcp = pulumi.Config(config.NAMESPACE), pulumi.Config("gcp")
    try:
        cloud, settings = config.validated(ours.get, stack_config_keys())
        reader = config.ConfigReader(config.NAMESPACE, ours.get)
        if cloud == "aws":
            from components.aws import AwsImagePipeline

            pipeline = AwsImagePipeline("imagepipe", config.aws_args(reader, settings))
        else:
            from components.gcp import GcpImagePipeline

            args = config.gcp_args(reader, gcp.get("region"), settings)
            pipeline = GcpImagePipeline("imagepipe", args)
    except SettingsError as error:
        # RunError reports the sentence alone, without a Python traceback.
        raise pulumi.RunError(str(error)) from None
    for name, value in pipeline.stack_outputs().items():
        pulumi.export(name, value)


main()
