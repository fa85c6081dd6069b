"""imagepipe: stack config -> validated settings -> one component -> stack outputs.

The only place that reads `pulumi.Config`. A bad value stops `pulumi up` and
`pulumi preview` with one sentence naming the key and what is allowed.
"""

from __future__ import annotations

import re
from typing import Any

import pulumi

from functions.core.settings import SETTINGS_KEYS, SettingsError, parse_settings

CLOUDS = ("aws", "gcp")
PYTHON_VERSIONS = ("3.12", "3.13")


class _ConfigReader:
    """Typed reads of one config namespace, with errors that name the full key."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.config = pulumi.Config(namespace)

    def raw(self, key: str) -> Any:
        """The value as the stack config holds it: structured values decoded from JSON."""
        text = self.config.get(key)
        if text is None:
            return None
        try:
            return self.config.get_object(key)
        except Exception:  # noqa: BLE001 - a plain string that is not JSON
            return text

    def string(self, key: str, default: str | None = None) -> str | None:
        value = self.config.get(key)
        return default if value in (None, "") else value

    def choice(self, key: str, allowed: tuple[str, ...], default: str) -> str:
        value = self.string(key, default)
        if value not in allowed:
            raise SettingsError(
                f"{self.namespace}:{key} is {value!r}; use one of {', '.join(allowed)}."
            )
        return value

    def integer(self, key: str, default: int | None, low: int, high: int) -> int | None:
        value = self.string(key)
        if value is None:
            return default
        if not re.fullmatch(r"\d+", value.strip()) or not low <= int(value) <= high:
            raise SettingsError(
                f"{self.namespace}:{key} is {value!r}; use a whole number from {low} to {high}."
            )
        return int(value)

    def integer_choice(self, key: str, allowed: tuple[int, ...], default: int) -> int:
        value = self.string(key)
        if value is None:
            return default
        if not re.fullmatch(r"\d+", value.strip()) or int(value) not in allowed:
            listed = ", ".join(str(option) for option in allowed)
            raise SettingsError(f"{self.namespace}:{key} is {value!r}; use one of {listed}.")
        return int(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.string(key)
        if value is None:
            return default
        if value.lower() not in ("true", "false"):
            raise SettingsError(f"{self.namespace}:{key} is {value!r}; use true or false.")
        return value.lower() == "true"

    def key_values(self, key: str) -> dict[str, str]:
        """`["team=media", "env=dev"]` -> {"team": "media", "env": "dev"}."""
        value = self.raw(key)
        if value is None:
            return {}
        pairs = value if isinstance(value, list) else [value]
        result: dict[str, str] = {}
        for pair in pairs:
            name, sep, tag_value = str(pair).partition("=")
            if not sep or not name:
                raise SettingsError(
                    f"{self.namespace}:{key} contains {pair!r}; write each entry as key=value."
                )
            result[name.strip()] = tag_value.strip()
        return result


def read_settings(reader: _ConfigReader):
    values = {key: reader.raw(key) for key in SETTINGS_KEYS}
    return parse_settings(values, prefix=f"{reader.namespace}:")


def aws_pipeline(reader: _ConfigReader, settings):
    from components.aws import (
        AWS_ARCHITECTURES,
        AWS_LOG_RETENTION_DAYS,
        AWS_PRICE_CLASSES,
        AwsImagePipeline,
        AwsImagePipelineArgs,
    )

    args = AwsImagePipelineArgs(
        settings=settings,
        architecture=reader.choice("architecture", AWS_ARCHITECTURES, "arm64"),
        runtime=f"python{reader.choice('pythonVersion', PYTHON_VERSIONS, '3.12')}",
        timeout_seconds=reader.integer("timeoutSeconds", 60, 1, 900),
        max_event_age_seconds=reader.integer("maxEventAgeSeconds", 3600, 60, 21600),
        log_retention_days=reader.integer_choice("logRetentionDays", AWS_LOG_RETENTION_DAYS, 30),
        tracing=reader.boolean("tracing", False),
        price_class=reader.choice("priceClass", AWS_PRICE_CLASSES, "PriceClass_100"),
        alarm_email=reader.string("alarmEmail"),
        uploads_prefix=reader.string("uploadsPrefix"),
        uploads_suffix=reader.string("uploadsSuffix"),
        originals_expiry_days=reader.integer("originalsExpiryDays", 0, 0, 36500) or None,
        tags=reader.key_values("tags"),
    )
    return AwsImagePipeline("imagepipe", args)


def gcp_pipeline(reader: _ConfigReader, settings):
    from components.gcp import (
        GCP_CPUS,
        GCP_DELIVERY_MODES,
        GcpImagePipeline,
        GcpImagePipelineArgs,
    )

    region = _ConfigReader("gcp").string("region") or reader.string("region", "us-central1")
    args = GcpImagePipelineArgs(
        settings=settings,
        region=region,
        runtime="python" + reader.choice("pythonVersion", PYTHON_VERSIONS, "3.12").replace(".", ""),
        cpu=reader.choice("cpu", GCP_CPUS, "1"),
        timeout_seconds=reader.integer("timeoutSeconds", 60, 1, 540),
        max_instances=reader.integer("maxInstances", 10, 1, 1000),
        max_event_age_seconds=reader.integer("maxEventAgeSeconds", 3600, 60, 86400),
        delivery_mode=reader.choice("deliveryMode", GCP_DELIVERY_MODES, "signed-urls"),
        originals_expiry_days=reader.integer("originalsExpiryDays", 0, 0, 36500) or None,
        labels=reader.key_values("tags"),
    )
    return GcpImagePipeline("imagepipe", args)


def main() -> None:
    reader = _ConfigReader("imagepipe")
    try:
        cloud = reader.choice("cloud", CLOUDS, "aws")
        settings = read_settings(reader)
        pipeline = (
            aws_pipeline(reader, settings) if cloud == "aws" else gcp_pipeline(reader, settings)
        )
    except SettingsError as error:
        # RunError reports the sentence alone, without a Python traceback.
        raise pulumi.RunError(str(error)) from None
    for name, value in pipeline.stack_outputs().items():
        pulumi.export(name, value)


main()
