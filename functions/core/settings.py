"""Pipeline settings: one schema for every cloud and for the local pipeline.

Settings are validated once (at `pulumi up`/preview, or when the CLI starts) and
reach a function as one JSON environment variable, `IMAGEPIPE_SETTINGS`.
Every validation error is one sentence that names the key, the bad value and
what is allowed.
"""

from __future__ import annotations

import json
import re
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

SETTINGS_ENV = "IMAGEPIPE_SETTINGS"

Fit = Literal["contain", "cover"]
OutputFormat = Literal["jpeg", "webp", "png", "avif", "source"]

FITS: tuple[str, ...] = ("contain", "cover")
OUTPUT_FORMATS: tuple[str, ...] = ("jpeg", "webp", "png", "avif", "source")
# The formats an animated rendition may name: WebP, or the input's own (a GIF stays a GIF).
ANIMATED_FORMATS: tuple[str, ...] = ("webp", "source")
ANIMATED_FIELD = "animated"
_COMPACT_FORM = "'name:WIDTHxHEIGHT[:fit[:format[:quality[:animated]]]]'"
# Input formats the core knows how to detect from magic bytes. The allowlist in
# the settings picks from these; anything else is `unsupported_format`.
INPUT_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "AVIF", "BMP", "TIFF", "HEIF")
DEFAULT_INPUT_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP")
# The media type a client declares for each input format (the upload API pins it in the
# presigned POST); the bytes still decide the format.
INPUT_CONTENT_TYPES: dict[str, str] = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "AVIF": "image/avif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    # HEIC as iPhones and browsers label it; HEIF files from other cameras come as the same.
    "HEIF": "image/heic",
}

MAX_RENDITION_SIDE = 8192
MAX_RENDITIONS = 16
_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")

# Upper bounds that keep each guard a guard: beyond them a limit no longer stops
# anything a function could survive (the memory budget applies whatever they say).
MAX_BYTES_CEILING = 512 * 1024 * 1024
MAX_PIXELS_CEILING = 1_000_000_000
MAX_FRAMES_CEILING = 100_000
# The function's memory, from the smallest size both clouds sell to the largest GCP does
# (AWS stops at 10240; its component says so).
MEMORY_MB_RANGE = (128, 32768)


# keep: the upload stays; delete: removed once its image COMPLETED; archive: moved then to
# the archive bucket under YYYY/MM/DD/<key>, in the cloud's coldest instantly readable class.
Originals = Literal["keep", "delete", "archive"]
ORIGINALS: tuple[str, ...] = ("keep", "delete", "archive")


class SettingsError(ValueError):
    """A setting is invalid; the message is one sentence naming key, value and what is allowed."""


# Bounded in work as well as in length: an error about a value built from YAML aliases
# (a million-element list) must not spend seconds and gigabytes describing it.
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxtuple, _SHOWN.maxdict = 2, 4, 4, 4
_SHOWN.maxstring = _SHOWN.maxother = 60
SHOWN_VALUE_CHARS = 80


def shown(value: Any) -> str:
    """A bad value as an error message quotes it: its repr, at most about 80 characters."""
    text = _SHOWN.repr(value)
    return text if len(text) <= SHOWN_VALUE_CHARS else text[: SHOWN_VALUE_CHARS - 3] + "..."


@dataclass(frozen=True)
class RenditionSpec:
    """One output image: a named box, how the source fits it, and how it is encoded.

    Compact form: `name:WIDTHxHEIGHT[:fit[:format[:quality[:animated]]]]`. `animated` is
    an optional sixth field whose only value is the word `animated` (positional, like the
    others: an animated rendition spells out its format and quality, e.g.
    `clip:320x320:contain:webp:75:animated`). It keeps every frame of an animated GIF or
    WebP input (format `webp`, or `source`, which keeps a GIF a GIF and a WebP a WebP);
    any other input gives the usual still rendition. Without it, frame 1 only, as always.
    """

    name: str
    width: int
    height: int
    fit: Fit = "contain"
    format: OutputFormat = "jpeg"
    quality: int = 82
    animated: bool = False
    """Keep an animated input's frames, durations and loop count (formats webp, source)."""

    def to_compact(self) -> str:
        # A still spec's form (and so its rendition keys' digest) is what it always was.
        compact = f"{self.name}:{self.width}x{self.height}:{self.fit}:{self.format}:{self.quality}"
        return f"{compact}:{ANIMATED_FIELD}" if self.animated else compact


@dataclass(frozen=True)
class Limits:
    """Checked from the header, before any pixel is decoded."""

    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 100_000_000
    max_frames: int = 1000
    memory_mb: int = 1024
    """The function's memory; a decode whose estimated peak would not fit the budget
    derived from it is refused before it starts (`over_memory_budget`)."""


DEFAULT_RENDITIONS: tuple[RenditionSpec, ...] = (
    RenditionSpec("large", 1024, 768, "contain", "jpeg", 82),
    RenditionSpec("thumb", 200, 200, "cover", "jpeg", 82),
)


@dataclass(frozen=True)
class PipelineSettings:
    """Everything the core needs to know about what to accept and what to produce."""

    renditions: tuple[RenditionSpec, ...] = DEFAULT_RENDITIONS
    allowed_formats: tuple[str, ...] = DEFAULT_INPUT_FORMATS
    limits: Limits = field(default_factory=Limits)
    strip_metadata: bool = True
    # Output colour is always sRGB: the only space every browser renders the same.
    output_colour: Literal["srgb"] = "srgb"
    # What happens to an upload once its image COMPLETED (a FAILED one is always kept).
    originals: Originals = "keep"
    # Deleting an original deletes its renditions too, unless another live record shares
    # them (the same bytes uploaded under another key): what a user deleting a photo expects.
    delete_renditions_with_original: bool = True

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> PipelineSettings:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as error:
            raise SettingsError(f"{SETTINGS_ENV} is not valid JSON ({error.msg}).") from None
        if not isinstance(raw, dict):
            raise SettingsError(f"{SETTINGS_ENV} must be a JSON object.")
        return parse_settings(
            {
                "renditions": raw.get("renditions", _UNSET),
                "allowedFormats": raw.get("allowed_formats", _UNSET),
                "maxBytes": raw.get("limits", {}).get("max_bytes", _UNSET),
                "maxPixels": raw.get("limits", {}).get("max_pixels", _UNSET),
                "maxFrames": raw.get("limits", {}).get("max_frames", _UNSET),
                "memoryMb": raw.get("limits", {}).get("memory_mb", _UNSET),
                "stripMetadata": raw.get("strip_metadata", _UNSET),
                "outputColour": raw.get("output_colour", _UNSET),
                "originals": raw.get("originals", _UNSET),
                "deleteRenditionsWithOriginal": raw.get("delete_renditions_with_original", _UNSET),
            },
            prefix=f"{SETTINGS_ENV}.",
        )


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Any = _Unset()

# The config keys (without the `imagepipe:` namespace) that make up the settings.
SETTINGS_KEYS: tuple[str, ...] = (
    "renditions",
    "allowedFormats",
    "maxBytes",
    "maxPixels",
    "maxFrames",
    "memoryMb",
    "stripMetadata",
    "outputColour",
    "originals",
    "deleteRenditionsWithOriginal",
)


def parse_settings(values: Mapping[str, Any], prefix: str = "imagepipe:") -> PipelineSettings:
    """Validate raw config values (camelCase keys, as in the stack config) into settings.

    A missing key (or one mapped to `_UNSET`/None) takes its default. Renditions are
    given either as compact strings `name:WIDTHxHEIGHT[:fit[:format[:quality[:animated]]]]`
    (the stack config form) or as objects (the JSON form).
    """
    unknown = sorted(set(values) - set(SETTINGS_KEYS))
    if unknown:
        raise SettingsError(unknown_key_message(f"{prefix}{unknown[0]}", SETTINGS_KEYS, prefix))

    def given(key: str) -> bool:
        return values.get(key, _UNSET) not in (_UNSET, None)

    renditions = (
        _parse_renditions(values["renditions"], f"{prefix}renditions")
        if given("renditions")
        else DEFAULT_RENDITIONS
    )
    allowed = (
        _parse_formats(values["allowedFormats"], f"{prefix}allowedFormats")
        if given("allowedFormats")
        else DEFAULT_INPUT_FORMATS
    )
    defaults = Limits()
    limits = Limits(
        max_bytes=_whole(values, "maxBytes", defaults.max_bytes, (1, MAX_BYTES_CEILING), prefix),
        max_pixels=_whole(
            values, "maxPixels", defaults.max_pixels, (1, MAX_PIXELS_CEILING), prefix
        ),
        max_frames=_whole(
            values, "maxFrames", defaults.max_frames, (1, MAX_FRAMES_CEILING), prefix
        ),
        memory_mb=_whole(values, "memoryMb", defaults.memory_mb, MEMORY_MB_RANGE, prefix),
    )
    strip = values["stripMetadata"] if given("stripMetadata") else True
    if not isinstance(strip, bool):
        raise SettingsError(f"{prefix}stripMetadata is {shown(strip)}; use true or false.")
    colour = values["outputColour"] if given("outputColour") else "srgb"
    if colour != "srgb":
        raise SettingsError(
            f"{prefix}outputColour is {shown(colour)}; the only allowed value is srgb."
        )
    originals = values["originals"] if given("originals") else "keep"
    if originals not in ORIGINALS:
        raise SettingsError(
            f"{prefix}originals is {shown(originals)}; use one of {', '.join(ORIGINALS)}."
        )
    delete_renditions = (
        values["deleteRenditionsWithOriginal"] if given("deleteRenditionsWithOriginal") else True
    )
    if not isinstance(delete_renditions, bool):
        raise SettingsError(
            f"{prefix}deleteRenditionsWithOriginal is {shown(delete_renditions)}; "
            "use true or false."
        )
    return PipelineSettings(
        renditions, allowed, limits, strip, "srgb", originals, delete_renditions
    )


def unknown_key_message(full_key: str, known: Sequence[str], prefix: str) -> str:
    """`imagepipe:maxbytes is not a setting; did you mean imagepipe:maxBytes?`"""
    import difflib

    short = full_key.removeprefix(prefix)
    by_lower = {key.lower(): key for key in known}
    close = difflib.get_close_matches(short.lower()[:100], list(by_lower), n=1, cutoff=0.6)
    if close:
        return (
            f"{shown(full_key)[1:-1]} is not a setting; did you mean {prefix}{by_lower[close[0]]}?"
        )
    return f"{shown(full_key)[1:-1]} is not a setting; known settings: {', '.join(known)}."


def _whole(
    values: Mapping[str, Any], key: str, default: int, bounds: tuple[int, int], prefix: str
) -> int:
    value = values.get(key, _UNSET)
    if value in (_UNSET, None):
        return default
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SettingsError(
            f"{prefix}{key} is {shown(value)}; use a whole number from {low} to {high}."
        )
    return value


def _parse_formats(value: Any, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part for part in re.split(r"[,\s]+", value[:1000]) if part]
    if not isinstance(value, Sequence) or not value or len(value) > 2 * len(INPUT_FORMATS):
        raise SettingsError(
            f"{key} is {shown(value)}; use a non-empty list drawn from {', '.join(INPUT_FORMATS)}."
        )
    formats: list[str] = []
    for item in value:
        name = item.upper() if isinstance(item, str) else ""
        name = {"JPG": "JPEG", "TIF": "TIFF"}.get(name, name)
        if name not in INPUT_FORMATS:
            raise SettingsError(
                f"{key} contains {shown(item)}; allowed formats are {', '.join(INPUT_FORMATS)}."
            )
        if name not in formats:
            formats.append(name)
    return tuple(formats)


def _parse_renditions(value: Any, key: str) -> tuple[RenditionSpec, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise SettingsError(
            f"{key} is {shown(value)}; use a non-empty list of {_COMPACT_FORM} entries."
        )
    if len(value) > MAX_RENDITIONS:
        raise SettingsError(
            f"{key} has {len(value)} entries; at most {MAX_RENDITIONS} renditions are allowed."
        )
    specs = tuple(_parse_rendition(item, f"{key}[{index}]") for index, item in enumerate(value))
    names = [spec.name for spec in specs]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise SettingsError(
            f"{key} names {shown(duplicated[0])} twice; rendition names must be unique."
        )
    return specs


def _parse_rendition(item: Any, key: str) -> RenditionSpec:
    if isinstance(item, str):
        fields = _compact_fields(item, key)
    elif isinstance(item, Mapping):
        fields = dict(item)
    else:
        raise SettingsError(
            f"{key} is {shown(item)}; use {_COMPACT_FORM}, "
            "for example 'large:1024x768:contain:jpeg:82'."
        )
    unknown = sorted(str(name) for name in set(fields) - set(_RENDITION_FIELDS))
    if unknown:
        raise SettingsError(
            f"{key}.{shown(unknown[0])[1:-1]} is not a rendition field; "
            f"fields are {', '.join(_RENDITION_FIELDS)}."
        )
    name = fields.get("name")
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise SettingsError(
            f"{key}.name is {shown(name)}; use 1-32 characters of a-z, 0-9, '-' or '_', "
            "starting with a letter or digit."
        )
    width = _side(fields.get("width"), f"{key}.width")
    height = _side(fields.get("height"), f"{key}.height")
    fit = fields.get("fit", "contain")
    if fit not in FITS:
        raise SettingsError(f"{key}.fit is {shown(fit)}; use one of {', '.join(FITS)}.")
    fmt = fields.get("format", "jpeg")
    fmt = "jpeg" if fmt == "jpg" else fmt
    if not isinstance(fmt, str) or fmt not in OUTPUT_FORMATS:
        raise SettingsError(
            f"{key}.format is {shown(fmt)}; use one of {', '.join(OUTPUT_FORMATS)}."
        )
    quality = fields.get("quality", 82)
    if isinstance(quality, str) and quality.isdigit():
        quality = int(quality)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise SettingsError(f"{key}.quality is {shown(quality)}; use a whole number from 1 to 100.")
    animated = _animated(fields.get("animated", False), fmt, key)
    return RenditionSpec(name, width, height, fit, fmt, quality, animated)


_RENDITION_FIELDS = ("name", "width", "height", "fit", "format", "quality", "animated")


def _animated(value: Any, fmt: str, key: str) -> bool:
    if not isinstance(value, bool):
        raise SettingsError(f"{key}.animated is {shown(value)}; use true or false.")
    if value and fmt not in ANIMATED_FORMATS:
        raise SettingsError(
            f"{key}.animated is set with format {fmt}; an animated rendition's format is "
            f"{' or '.join(ANIMATED_FORMATS)}."
        )
    return value


def _compact_fields(text: str, key: str) -> dict[str, Any]:
    parts = text.strip().split(":")
    if len(parts) < 2 or len(parts) > 6:
        raise SettingsError(
            f"{key} is {shown(text)}; use {_COMPACT_FORM}, "
            "for example 'thumb:200x200:cover:jpeg:82'."
        )
    if len(parts) == 6 and parts[5] != ANIMATED_FIELD:
        raise SettingsError(
            f"{key} has {shown(parts[5])} as its sixth field; the only value allowed there "
            f"is {ANIMATED_FIELD}."
        )
    size = re.fullmatch(r"(\d{1,9})x(\d{1,9})", parts[1])
    if not size:
        raise SettingsError(
            f"{key} has size {shown(parts[1])}; write it as WIDTHxHEIGHT, e.g. 1024x768."
        )
    fields: dict[str, Any] = {"name": parts[0], "width": int(size[1]), "height": int(size[2])}
    for name, part in zip(("fit", "format", "quality"), parts[2:5], strict=False):
        fields[name] = int(part) if name == "quality" and part.isdigit() else part
    if len(parts) == 6:
        fields["animated"] = True
    return fields


def _side(value: Any, key: str) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 1 <= value <= MAX_RENDITION_SIDE
    ):
        raise SettingsError(
            f"{key} is {shown(value)}; use a whole number from 1 to {MAX_RENDITION_SIDE}."
        )
    return value
