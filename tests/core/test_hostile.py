"""Hostile uploads, through Pipeline.process: each ends FAILED with a permanent code,
nothing is written to the renditions bucket, one failure event goes out, nothing escapes."""

from __future__ import annotations

import os
import random

import pytest
from PIL import Image

from functions.core.records import PERMANENT_CODES, Status
from functions.core.settings import parse_settings
from tests.core.images import (
    FakeStack,
    encoded,
    gif_claiming,
    jpeg_claiming,
    png_claiming,
    quadrants,
)


def _truncated_jpeg() -> bytes:
    data = encoded(quadrants((640, 480)))
    return data[: len(data) // 2]


HOSTILE = {
    "empty.png": (b"", "empty_object"),
    "notes.png": (b"just some text, nothing like an image\n", "unsupported_format"),
    "page.png": (b"<!DOCTYPE html><html><body>hi</body></html>", "unsupported_format"),
    "vector.png": (
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
        "unsupported_format",
    ),
    "truncated.jpg": (_truncated_jpeg(), "corrupt_image"),
    "noise.jpg": (random.Random(7).randbytes(4096), "unsupported_format"),
    "magic-only.jpg": (b"\xff\xd8\xff" + os.urandom(64), "corrupt_image"),
    "picture.bmp": (encoded(quadrants((64, 64)), "BMP"), "unsupported_format"),
    "picture.tiff": (encoded(quadrants((64, 64)), "TIFF"), "unsupported_format"),
    "huge.png": (png_claiming(100_000, 100_000), "too_many_pixels"),
    "huge.gif": (gif_claiming(65_535, 65_535), "too_many_pixels"),
    "huge.jpg": (jpeg_claiming(65_000, 65_000), "too_many_pixels"),
    "wide.png": (png_claiming(2**31 - 1, 1), "too_many_pixels"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_upload_fails_permanently_and_writes_nothing(name):
    data, code = HOSTILE[name]
    pipeline = FakeStack()
    outcome = pipeline.process(pipeline.upload(name, data))
    assert outcome.action == "failed"
    record = pipeline.records.get(outcome.record.id)
    assert record.status is Status.FAILED
    assert record.error.code == code and code in PERMANENT_CODES
    assert not record.error.retryable
    assert record.error.message and "\n" not in record.error.message
    assert pipeline.renditions() == {}
    assert [event["type"] for event in pipeline.events.events] == ["imagepipe.image.failed"]


def test_unsupported_message_names_what_is_allowed():
    pipeline = FakeStack()
    outcome = pipeline.process(pipeline.upload("a.bmp", encoded(quadrants(), "BMP")))
    assert outcome.record.error.message == "BMP; allowed: JPEG, PNG, GIF, WEBP"
    outcome = pipeline.process(pipeline.upload("b.png", b"hello"))
    assert outcome.record.error.message.startswith("unrecognised content; allowed: JPEG")


def test_bmp_and_tiff_complete_once_allowed():
    pipeline = FakeStack(settings=parse_settings({"allowedFormats": "JPEG,BMP,TIFF"}))
    for name, fmt in (("a.bmp", "BMP"), ("a.tiff", "TIFF")):
        outcome = pipeline.process(pipeline.upload(name, encoded(quadrants(), fmt)))
        assert outcome.action == "completed"
        assert {r.format for r in outcome.record.renditions} == {"jpeg"}


def test_too_many_frames():
    frames = [Image.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(5)]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    pipeline = FakeStack(settings=parse_settings({"maxFrames": 4}))
    outcome = pipeline.process(pipeline.upload("anim.gif", data))
    assert outcome.record.error.code == "too_many_frames"


def test_too_large_is_refused_unread():
    pipeline = FakeStack(settings=parse_settings({"maxBytes": 100}))
    outcome = pipeline.process(pipeline.upload("big.jpg", encoded(quadrants())))
    assert outcome.record.error.code == "too_large"
    assert pipeline.renditions() == {}
