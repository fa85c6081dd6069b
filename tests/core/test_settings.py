"""Settings: defaults, the compact and JSON forms, and errors that name the key."""

from __future__ import annotations

import pytest

from functions.core.settings import (
    DEFAULT_RENDITIONS,
    PipelineSettings,
    RenditionSpec,
    SettingsError,
    parse_settings,
)


def test_defaults():
    settings = parse_settings({})
    assert settings.renditions == DEFAULT_RENDITIONS
    assert settings.allowed_formats == ("JPEG", "PNG", "GIF", "WEBP")
    assert settings.limits.max_pixels == 100_000_000 and settings.strip_metadata


def test_compact_renditions_and_json_round_trip():
    settings = parse_settings(
        {"renditions": ["hero:1600x900:cover:webp:70", "tiny:64x64"], "allowedFormats": "jpg, tif"}
    )
    assert settings.renditions == (
        RenditionSpec("hero", 1600, 900, "cover", "webp", 70),
        RenditionSpec("tiny", 64, 64, "contain", "jpeg", 82),
    )
    assert settings.allowed_formats == ("JPEG", "TIFF")
    assert PipelineSettings.from_json(settings.to_json()) == settings


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"renditions": ["big:10x10:stretch"]}, "imagepipe:renditions[0].fit"),
        ({"renditions": ["a:0x10"]}, "imagepipe:renditions[0].width"),
        ({"renditions": ["a:10by10"]}, "imagepipe:renditions[0]"),
        ({"renditions": ["a:10x10:contain:gif"]}, "imagepipe:renditions[0].format"),
        ({"renditions": ["a:10x10:contain:jpeg:101"]}, "imagepipe:renditions[0].quality"),
        ({"renditions": ["a:10x10", "a:20x20"]}, "imagepipe:renditions"),
        ({"allowedFormats": ["JPEG", "HEIC"]}, "imagepipe:allowedFormats"),
        ({"maxPixels": -1}, "imagepipe:maxPixels"),
        ({"maxBytes": "lots"}, "imagepipe:maxBytes"),
        ({"stripMetadata": "yes"}, "imagepipe:stripMetadata"),
        ({"outputColour": "p3"}, "imagepipe:outputColour"),
        ({"colour": "srgb"}, "imagepipe:colour"),
    ],
)
def test_errors_name_the_key(values, named):
    with pytest.raises(SettingsError) as caught:
        parse_settings(values)
    message = str(caught.value)
    assert message.startswith(named) and "\n" not in message


def test_bad_environment_json_names_the_variable():
    with pytest.raises(SettingsError, match="IMAGEPIPE_SETTINGS"):
        PipelineSettings.from_json("{not json")
