"""The stack config's `imagepipe:` keys: what each one means, how it is read and checked.

`__main__.py` reads the config Pulumi hands it through these, and the local
pipeline reads a stack file through the same ones, so `pulumi preview` and
`imagepipe dev` accept and refuse exactly the same config. Defaults are the args
types' own: a key left unset takes the field's default. Every error is one
sentence naming the key and what is allowed; values are quoted briefly.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable
from typing import Any

from functions.core.settings import (
    SETTINGS_KEYS,
    SettingsError,
    parse_settings,
    shown,
    unknown_key_message,
)
from functions.core.uploads import API_AUTH_MODES, MAX_UPLOAD_EXPIRY_SECONDS

NAMESPACE = "imagepipe"
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:\d{1,5})?")
_ISSUER = re.compile(r"(https://[^\s/]+|http://(127\.0\.0\.1|localhost)(:\d{1,5})?)(/\S*)?")
CLOUDS = ("aws", "gcp")
PYTHON_VERSIONS = ("3.12", "3.13")


class ConfigReader:
    """Typed reads of one config namespace, with errors that name the full key.

    `lookup` answers a key (without the namespace) with its text as Pulumi hands it
    over: scalars as strings, lists and maps as JSON. Every key asked for is
    remembered: what the program reads is what it knows.
    """

    def __init__(self, namespace: str, lookup: Callable[[str], str | None]) -> None:
        self.namespace = namespace
        self._lookup = lookup
        self.asked: list[str] = []

    def text(self, key: str) -> str | None:
        self.asked.append(key)
        return self._lookup(key)

    def raw(self, key: str) -> Any:
        """The value as the stack config holds it: structured values decoded from JSON."""
        text = self.text(key)
        if text is None:
            return None
        try:
            return json.loads(text)
        except ValueError:  # a plain string that is not JSON
            return text

    def string(self, key: str, default: str | None = None) -> str | None:
        value = self.text(key)
        return default if value in (None, "") else value

    def choice(self, key: str, allowed: tuple[str, ...], default: str) -> str:
        value = self.string(key, default)
        if value not in allowed:
            raise SettingsError(
                f"{self.namespace}:{key} is {shown(value)}; use one of {', '.join(allowed)}."
            )
        return value

    def integer(self, key: str, default: int | None, low: int, high: int) -> int | None:
        value = self.string(key)
        if value is None:
            return default
        if not re.fullmatch(r"\d{1,12}", value.strip()) or not low <= int(value) <= high:
            raise SettingsError(
                f"{self.namespace}:{key} is {shown(value)}; use a whole number from {low} to "
                f"{high}."
            )
        return int(value)

    def integer_choice(self, key: str, allowed: tuple[int, ...], default: int) -> int:
        value = self.string(key)
        if value is None:
            return default
        if not re.fullmatch(r"\d{1,12}", value.strip()) or int(value) not in allowed:
            listed = ", ".join(str(option) for option in allowed)
            raise SettingsError(f"{self.namespace}:{key} is {shown(value)}; use one of {listed}.")
        return int(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.string(key)
        if value is None:
            return default
        if value.lower() not in ("true", "false"):
            raise SettingsError(f"{self.namespace}:{key} is {shown(value)}; use true or false.")
        return value.lower() == "true"

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.raw(key)
        if value is None or value == "":
            return ()
        items = value if isinstance(value, list) else [value]
        if len(items) > 100 or not all(isinstance(item, str) and item for item in items):
            raise SettingsError(
                f"{self.namespace}:{key} is {shown(value)}; use a list of up to 100 names."
            )
        return tuple(items)

    def origins(self, key: str) -> tuple[str, ...]:
        """Web origins, each `scheme://host[:port]` with nothing after it, or `*`."""
        values = self.strings(key)
        for origin in values:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise SettingsError(
                    f"{self.namespace}:{key} contains {shown(origin)}; write each origin as "
                    "https://host[:port] (no path, no trailing slash)."
                )
        return values

    def issuer(self, key: str) -> str | None:
        """An OpenID issuer: https, or http on this machine's loopback (local tests)."""
        value = self.string(key)
        if value is not None and not _ISSUER.fullmatch(value):
            raise SettingsError(
                f"{self.namespace}:{key} is {shown(value)}; use the issuer's https:// URL, "
                "exactly as its tokens' iss claim spells it."
            )
        return value

    def key_values(self, key: str) -> dict[str, str]:
        """`["team=media", "env=dev"]` -> {"team": "media", "env": "dev"}."""
        result: dict[str, str] = {}
        for pair in self.strings(key):
            name, sep, tag_value = pair.partition("=")
            if not sep or not name:
                raise SettingsError(
                    f"{self.namespace}:{key} contains {shown(pair)}; write each entry as key=value."
                )
            result[name.strip()] = tag_value.strip()
        return result


def _key_names() -> ConfigReader:
    """A reader of an empty config: running the option builders on it lists every key."""
    return ConfigReader(NAMESPACE, lambda key: None)


def defaults(args_type: type) -> dict[str, Any]:
    """Each field's default, from the args type itself (the one place it is written)."""
    return {
        field.name: field.default
        for field in dataclasses.fields(args_type)
        if field.default is not dataclasses.MISSING
    }


def shared_options(reader: ConfigReader, limits: dict[str, int]) -> dict[str, Any]:
    """Options both clouds have (`PipelineArgs` fields), with each cloud's bounds."""
    from components.args import BACKFILL_CONCURRENCY_RANGE, PipelineArgs

    default = defaults(PipelineArgs)
    return {
        "python_version": reader.choice(
            "pythonVersion", PYTHON_VERSIONS, default["python_version"]
        ),
        "timeout_seconds": reader.integer(
            "timeoutSeconds", default["timeout_seconds"], 1, limits["timeout"]
        ),
        "max_event_age_seconds": reader.integer(
            "maxEventAgeSeconds", default["max_event_age_seconds"], 60, limits["event_age"]
        ),
        "originals_expiry_days": reader.integer("originalsExpiryDays", 0, 0, 36500) or None,
        "alarm_email": reader.string("alarmEmail"),
        "uploads_prefix": reader.string("uploadsPrefix"),
        "uploads_suffix": reader.string("uploadsSuffix"),
        "api": reader.boolean("api", default["api"]),
        "api_auth": reader.choice("apiAuth", API_AUTH_MODES, default["api_auth"]),
        "api_jwt_issuer": reader.issuer("apiJwtIssuer"),
        "api_jwt_audience": reader.string("apiJwtAudience"),
        "api_allowed_origins": reader.origins("apiAllowedOrigins"),
        "api_upload_expiry_seconds": reader.integer(
            "apiUploadExpirySeconds",
            default["api_upload_expiry_seconds"],
            1,
            MAX_UPLOAD_EXPIRY_SECONDS,
        ),
        "backfill_concurrency": reader.integer(
            "backfillConcurrency", default["backfill_concurrency"], *BACKFILL_CONCURRENCY_RANGE
        ),
    }


def aws_options(reader: ConfigReader) -> dict[str, Any]:
    """What only AWS has, as AwsImagePipelineArgs fields (one key read per field, in order)."""
    from components.aws.args import (
        AWS_ARCHITECTURES,
        AWS_LOG_RETENTION_DAYS,
        AWS_PRICE_CLASSES,
        AwsImagePipelineArgs,
    )

    default = defaults(AwsImagePipelineArgs)
    return {
        "architecture": reader.choice("architecture", AWS_ARCHITECTURES, default["architecture"]),
        "log_retention_days": reader.integer_choice(
            "logRetentionDays", AWS_LOG_RETENTION_DAYS, default["log_retention_days"]
        ),
        "tracing": reader.boolean("tracing", default["tracing"]),
        "price_class": reader.choice("priceClass", AWS_PRICE_CLASSES, default["price_class"]),
        # 0 (the declared default) reserves nothing.
        "reserved_concurrency": reader.integer("reservedConcurrency", 0, 0, 100_000) or None,
        "cdn_certificate_arn": reader.string("cdnCertificateArn"),
        "cdn_aliases": reader.strings("cdnAliases"),
        "api_rate_limit": reader.integer("apiRateLimit", default["api_rate_limit"], 1, 100_000),
        "api_burst_limit": reader.integer("apiBurstLimit", default["api_burst_limit"], 1, 100_000),
    }


def gcp_options(reader: ConfigReader) -> dict[str, Any]:
    """What only GCP has, as GcpImagePipelineArgs fields (one key read per field, in order)."""
    from components.gcp.args import GCP_CPUS, GCP_DELIVERY_MODES, GcpImagePipelineArgs

    default = defaults(GcpImagePipelineArgs)
    return {
        "cpu": reader.choice("cpu", GCP_CPUS, default["cpu"]),
        "max_instances": reader.integer("maxInstances", default["max_instances"], 1, 1000),
        "api_max_instances": reader.integer(
            "apiMaxInstances", default["api_max_instances"], 1, 1000
        ),
        "delivery_mode": reader.choice(
            "deliveryMode", GCP_DELIVERY_MODES, default["delivery_mode"]
        ),
    }


def _aws_args_type() -> type:
    from components.aws.args import AwsImagePipelineArgs

    return AwsImagePipelineArgs


def _gcp_args_type() -> type:
    from components.gcp.args import GcpImagePipelineArgs

    return GcpImagePipelineArgs


# cloud -> (its own options, its args type)
CLOUD_OPTIONS: dict[str, tuple[Callable[[ConfigReader], dict[str, Any]], Callable[[], type]]] = {
    "aws": (aws_options, _aws_args_type),
    "gcp": (gcp_options, _gcp_args_type),
}
AWS_LIMITS = {"timeout": 900, "event_age": 21600}
GCP_LIMITS = {"timeout": 540, "event_age": 86400}


def known_keys() -> dict[str, str]:
    """Every key this program reads -> the cloud it belongs to ("" for both)."""
    names = _key_names()
    names.choice("cloud", CLOUDS, "aws")
    names.asked += list(SETTINGS_KEYS)
    shared_options(names, AWS_LIMITS)
    names.key_values("tags")
    owners = dict.fromkeys(names.asked, "")
    for cloud, (options, _) in CLOUD_OPTIONS.items():
        owners.update(dict.fromkeys(_keys_of(options).values(), cloud))
    return owners


def _keys_of(options: Callable[[ConfigReader], dict[str, Any]]) -> dict[str, str]:
    """field -> config key of an options builder, by running it on an empty config."""
    names = _key_names()
    fields = list(options(names))
    return dict(zip(fields, names.asked, strict=True))


def check_keys(present: Iterable[str]) -> None:
    """Every `imagepipe:` key set must be one this program reads."""
    owners = known_keys()
    for full_key in sorted(present):
        namespace, _, key = full_key.partition(":")
        if namespace == NAMESPACE and key not in owners:
            raise SettingsError(unknown_key_message(full_key, list(owners), f"{NAMESPACE}:"))


def check_other_cloud(reader: ConfigReader, cloud: str) -> None:
    """A key of another cloud set to anything but its default stops the program.

    Pulumi hands every declared key to the program with its default filled in, so a
    key counts as set when its value differs from the args type's default.
    """
    for other, (options, args_type) in CLOUD_OPTIONS.items():
        if other == cloud:
            continue
        default = defaults(args_type())
        keys = _keys_of(options)
        try:
            values = options(reader)
        except SettingsError as error:  # a bad value, for a key that does not apply anyway
            key = str(error).split(" ", 1)[0]
            raise SettingsError(
                f"{key} applies to {other.upper()} only; this stack's {NAMESPACE}:cloud is {cloud}."
            ) from None
        for field, value in values.items():
            unset = default.get(field)
            if value != unset and not (value in (None, ()) and unset in (None, ())):
                raise SettingsError(
                    f"{NAMESPACE}:{keys[field]} applies to {other.upper()} only; this stack's "
                    f"{NAMESPACE}:cloud is {cloud}."
                )


def read_settings(reader: ConfigReader):
    values = {key: reader.raw(key) for key in SETTINGS_KEYS}
    return parse_settings(values, prefix=f"{reader.namespace}:")


def aws_args(reader: ConfigReader, settings):
    from components.aws.args import AwsImagePipelineArgs

    args = AwsImagePipelineArgs(
        settings=settings,
        **shared_options(reader, AWS_LIMITS),
        **aws_options(reader),
        tags=reader.key_values("tags"),
    )
    args.api_options()  # an API that cannot work stops here, before any resource
    return args


def gcp_args(reader: ConfigReader, region: str | None, settings):
    from components.gcp.args import GcpImagePipelineArgs

    args = GcpImagePipelineArgs(
        settings=settings,
        region=region or defaults(GcpImagePipelineArgs)["region"],
        **shared_options(reader, GCP_LIMITS),
        **gcp_options(reader),
        tags=reader.key_values("tags"),
    )
    args.api_options()  # an API that cannot work stops here, before any resource
    return args


def validated(lookup: Callable[[str], str | None], present: Iterable[str]) -> tuple[str, Any]:
    """(cloud, settings) of a stack config, after every check a stack config must pass."""
    reader = ConfigReader(NAMESPACE, lookup)
    cloud = reader.choice("cloud", CLOUDS, "aws")
    check_keys(present)
    check_other_cloud(reader, cloud)
    return cloud, read_settings(reader)
