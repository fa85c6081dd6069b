"""Read a Pulumi stack config file (`stacks/Pulumi.<stack>.yaml`) as `pulumi preview` would.

The local commands take their settings from the same file `pulumi up` reads, and
check it with the same rules (`components.config`): an unknown `imagepipe:` key, a
key of the other cloud or a bad value is the same one-sentence error here as at
preview. What the file itself must be is checked first: a mapping with a `config:`
mapping, and no YAML aliases that expand into more values than a stack config has.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components import config
from components.args import PipelineArgs
from functions.core.settings import PipelineSettings, SettingsError, shown
from functions.core.uploads import ApiOptions

# A stack config holds a few dozen values; aliases that expand past this are a bomb
# (nine levels of nine take 6 s and 725 MB to expand).
MAX_EXPANDED_VALUES = 10_000


def _default(field_name: str) -> Any:
    return config.defaults(PipelineArgs)[field_name]


def local_api_options(args: PipelineArgs | None = None) -> ApiOptions:
    """The upload API `imagepipe dev` serves: with no auth, unless the stack turns the API
    on with apiAuth jwt (then tokens are checked locally as they would be deployed)."""
    options = args.api_options() if args is not None else None
    if options is not None and options.auth == "jwt":
        return options
    return ApiOptions(
        upload_expiry_seconds=(
            args.api_upload_expiry_seconds
            if args is not None
            else _default("api_upload_expiry_seconds")
        ),
        auth="none",
        allowed_origins=args.api_allowed_origins if args is not None else (),
    )


@dataclass(frozen=True)
class LocalStackConfig:
    """What the local pipeline takes from a stack config: the cloud, the settings and the
    trigger's shape, each defaulting as the components' args do."""

    settings: PipelineSettings = field(default_factory=PipelineSettings)
    uploads_prefix: str = ""  # only keys under it are processed, as on the stack
    uploads_suffix: str = ""
    max_event_age_seconds: int = field(default_factory=lambda: _default("max_event_age_seconds"))
    timeout_seconds: int = field(default_factory=lambda: _default("timeout_seconds"))
    cloud: str = "aws"
    api: ApiOptions = field(default_factory=local_api_options)
    # GCP's imagepipe:deliveryMode: in signed-urls the API answers signed rendition URLs.
    delivery_mode: str | None = None
    # imagepipe:backfillConcurrency: most work-queue deliveries processed at once.
    backfill_concurrency: int = field(default_factory=lambda: _default("backfill_concurrency"))


def settings_from_stack_config(path: str | Path) -> PipelineSettings:
    """Validated settings from a stack config file; `SettingsError` names what is wrong."""
    return read_stack_config(path).settings


def read_stack_config(path: str | Path) -> LocalStackConfig:
    """The settings and trigger options of a stack config file, validated as at preview."""
    path = Path(path)
    values = _config_mapping(path)
    texts = {key: _as_pulumi_hands_it(key, value) for key, value in values.items()}

    def lookup(namespace: str):
        return lambda key: texts.get(f"{namespace}:{key}")

    try:
        cloud, settings = config.validated(lookup(config.NAMESPACE), texts)
        reader = config.ConfigReader(config.NAMESPACE, lookup(config.NAMESPACE))
        args = (
            config.aws_args(reader, settings)
            if cloud == "aws"
            else config.gcp_args(reader, lookup("gcp")("region"), settings)
        )
    except SettingsError as error:
        raise SettingsError(f"stack config {path}: {error}") from None
    return LocalStackConfig(
        settings=settings,
        uploads_prefix=args.uploads_prefix or "",
        uploads_suffix=args.uploads_suffix or "",
        max_event_age_seconds=args.max_event_age_seconds,
        timeout_seconds=args.timeout_seconds,
        cloud=cloud,
        api=local_api_options(args),
        delivery_mode=getattr(args, "delivery_mode", None),
        backfill_concurrency=args.backfill_concurrency,
    )


def _config_mapping(path: Path) -> dict[str, Any]:
    import yaml  # PyYAML comes with pulumi and with moto[server]

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError(f"stack config {path} does not exist.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError(f"stack config {path} cannot be read ({error}).") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and _expanded_size(node, {}) > MAX_EXPANDED_VALUES:
            raise SettingsError(
                f"stack config {path} expands to more than {MAX_EXPANDED_VALUES} values "
                "(YAML aliases?); write the values out."
            )
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SettingsError(f"stack config {path} is not valid YAML{where}.") from None
    if not isinstance(document, dict):
        kind = "empty" if document is None else f"a {type(document).__name__}"
        raise SettingsError(
            f"stack config {path} is {kind}; it must be a mapping with a 'config:' mapping "
            "of key: value."
        )
    if "config" not in document:
        return {}
    values = document["config"]
    if not isinstance(values, dict):
        raise SettingsError(
            f"stack config {path}: 'config' is {shown(values)}; it must be a mapping of key: value."
        )
    return values


def _expanded_size(node: Any, sizes: dict[int, int]) -> int:
    """How many values `node` stands for once every alias is expanded (memoised: linear)."""
    import yaml

    known = sizes.get(id(node))
    if known is not None:
        return known
    sizes[id(node)] = 1  # a recursive alias counts once instead of looping
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(item, sizes) for item in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(v, sizes) + 1 for _, v in node.value)
    else:
        size = 1
    sizes[id(node)] = min(size, MAX_EXPANDED_VALUES + 1)
    return sizes[id(node)]


def _as_pulumi_hands_it(key: Any, value: Any) -> str:
    """Pulumi hands a program every value as text: scalars as strings, the rest as JSON."""
    if not isinstance(key, str):
        raise SettingsError(f"config key {shown(key)} is not a string.")
    if isinstance(value, dict) and "secure" in value:
        if key.startswith(f"{config.NAMESPACE}:"):
            raise SettingsError(f"{key} is a secret; imagepipe settings are never secret.")
        return ""
    if value is None:  # `key:` with nothing after it: unset, as Pulumi treats it
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)
