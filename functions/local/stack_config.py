"""Read the pipeline settings from a Pulumi stack config file (`stacks/Pulumi.<stack>.yaml`).

The local commands take their settings from the same file `pulumi up` reads, so
what runs on this machine renders exactly what the stack would. Only the
`imagepipe:<setting>` keys are read; cloud options (`aws:region`, ...) and the
other `imagepipe:` keys (`cloud`, memory, alarms) are the component's business.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from functions.core.settings import SETTINGS_KEYS, PipelineSettings, SettingsError, parse_settings

NAMESPACE = "imagepipe:"


@dataclass(frozen=True)
class LocalStackConfig:
    """What the local pipeline takes from a stack config: the settings and the trigger's shape."""

    settings: PipelineSettings = field(default_factory=PipelineSettings)
    uploads_prefix: str = ""  # only keys under it trigger processing, as on the stack
    uploads_suffix: str = ""
    max_event_age_seconds: int = 3600


def settings_from_stack_config(path: str | Path) -> PipelineSettings:
    """Validated settings from a stack config file; `SettingsError` names what is wrong."""
    return read_stack_config(path).settings


def read_stack_config(path: str | Path) -> LocalStackConfig:
    """The settings and trigger options of a stack config file, validated."""
    config = _config_mapping(path)
    settings = parse_settings(_setting_values(config), prefix=NAMESPACE)
    prefix = config.get(f"{NAMESPACE}uploadsPrefix") or ""
    suffix = config.get(f"{NAMESPACE}uploadsSuffix") or ""
    for key, value in (("uploadsPrefix", prefix), ("uploadsSuffix", suffix)):
        if not isinstance(value, str):
            raise SettingsError(
                f"{NAMESPACE}{key} is {value!r}; use a key prefix such as 'incoming/'."
            )
    age = config.get(f"{NAMESPACE}maxEventAgeSeconds", 3600)
    if isinstance(age, str) and age.strip().isdigit():
        age = int(age)
    if isinstance(age, bool) or not isinstance(age, int) or not 60 <= age <= 21600:
        raise SettingsError(
            f"{NAMESPACE}maxEventAgeSeconds is {age!r}; use a whole number from 60 to 21600."
        )
    return LocalStackConfig(settings, prefix, suffix, age)


def _config_mapping(path: str | Path) -> dict[str, Any]:
    import yaml  # PyYAML comes with pulumi and with moto[server]

    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(f"stack config {path} does not exist.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError(f"stack config {path} cannot be read ({error}).") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SettingsError(f"stack config {path} is not valid YAML{where}.") from None
    config = document.get("config") if isinstance(document, dict) else None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise SettingsError(f"stack config {path}: 'config' must be a mapping of key: value.")
    return config


def _setting_values(config: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for full_key, value in config.items():
        if not isinstance(full_key, str) or not full_key.startswith(NAMESPACE):
            continue
        key = full_key[len(NAMESPACE) :]
        if key in SETTINGS_KEYS:
            if isinstance(value, dict) and "secure" in value:
                raise SettingsError(f"{full_key} is a secret; settings are never secret.")
            values[key] = _as_pulumi_reads_it(value)
    return values


def _as_pulumi_reads_it(value: Any) -> Any:
    """Pulumi keeps config values as strings and decodes JSON ones (`"true"`, `"52428800"`)
    for structured reads, as `__main__.py` does; a string that is not JSON stays a string."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value
