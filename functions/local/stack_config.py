"""Read the pipeline settings from a Pulumi stack config file (`stacks/Pulumi.<stack>.yaml`).

The local commands take their settings from the same file `pulumi up` reads, so
what runs on this machine renders exactly what the stack would. Only the
`imagepipe:<setting>` keys are read; cloud options (`aws:region`, ...) and the
other `imagepipe:` keys (`cloud`, memory, alarms) are the component's business.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from functions.core.settings import SETTINGS_KEYS, PipelineSettings, SettingsError, parse_settings

NAMESPACE = "imagepipe:"


def settings_from_stack_config(path: str | Path) -> PipelineSettings:
    """Validated settings from a stack config file; `SettingsError` names what is wrong."""
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
    return parse_settings(_setting_values(document, path), prefix=NAMESPACE)


def _setting_values(document: Any, path: Path) -> dict[str, Any]:
    if document is None:
        return {}
    config = document.get("config") if isinstance(document, dict) else None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise SettingsError(f"stack config {path}: 'config' must be a mapping of key: value.")
    values: dict[str, Any] = {}
    for full_key, value in config.items():
        if not isinstance(full_key, str) or not full_key.startswith(NAMESPACE):
            continue
        key = full_key[len(NAMESPACE) :]
        if key in SETTINGS_KEYS:
            if isinstance(value, dict) and "secure" in value:
                raise SettingsError(f"{full_key} is a secret; settings are never secret.")
            values[key] = value
    return values
