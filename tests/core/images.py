"""Synthetic test images, built with Image.new + ImageDraw, and the real pipeline on fakes."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from io import BytesIO

from PIL import Image, ImageDraw, ImageStat

from functions.core.memory import InMemoryBlobStore, InMemoryEventPublisher, InMemoryRecordStore
from functions.core.records import ObjectRef
from functions.core.service import Outcome, Pipeline
from functions.core.settings import PipelineSettings

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def quadrants(size: tuple[int, int] = (400, 300), mode: str = "RGB") -> Image.Image:
    """Four flat quadrants: red top-left, green top-right, blue bottom-left, white bottom-right.

    Flat colour survives resampling and JPEG, so where each colour ends up tells
    which way the picture was turned.
    """
    width, height = size
    image = Image.new(mode, size, WHITE if mode == "RGB" else (*WHITE, 255))
    draw = ImageDraw.Draw(image)
    half_w, half_h = width // 2, height // 2
    draw.rectangle((0, 0, half_w - 1, half_h - 1), fill=RED)
    draw.rectangle((half_w, 0, width - 1, half_h - 1), fill=GREEN)
    draw.rectangle((0, half_h, half_w - 1, height - 1), fill=BLUE)
    return image


def encoded(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buffer = BytesIO()
    if fmt == "JPEG":
        options.setdefault("quality", 95)
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def jpeg_with_exif(image: Image.Image, **tags) -> bytes:
    """A JPEG whose EXIF carries the given IFD0 tags (by number) plus optional GPS and DTO."""
    exif = Image.Exif()
    gps = tags.pop("gps", None)
    taken = tags.pop("taken", None)
    for tag, value in tags.items():
        exif[int(tag)] = value
    if gps:
        exif.get_ifd(0x8825).update(gps)
    if taken:
        exif.get_ifd(0x8769)[0x9003] = taken
    return encoded(image, "JPEG", exif=exif.tobytes())


def dominant(image: Image.Image, box: tuple[int, int, int, int]) -> tuple[int, int, int]:
    """The mean colour of a region, rounded to the nearest of the four test colours."""
    mean = ImageStat.Stat(image.convert("RGB").crop(box)).mean
    return min(
        (RED, GREEN, BLUE, WHITE),
        key=lambda colour: sum((a - b) ** 2 for a, b in zip(colour, mean, strict=True)),
    )


def png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        checksum = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + checksum

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 64)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def gif_claiming(width: int, height: int) -> bytes:
    screen = b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00"
    frame = b"," + struct.pack("<HHHH", 0, 0, width, height) + b"\x00"
    return screen + frame + b"\x02\x02\x44\x01\x00;"


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose SOF marker is rewritten to claim width x height."""
    data = bytearray(encoded(Image.new("RGB", (16, 16), RED)))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@dataclass
class FakeStack:
    """The real `Pipeline`, bound to the in-memory fakes and a clock the test turns by hand.

    `process` builds the `Pipeline` the clouds run (`functions.core.service.Pipeline`)
    from these fields on each call, so a test can swap a store or a setting, move
    `now`, or pass one delivery's platform limits (`max_attempts`, `max_event_age`).
    """

    settings: PipelineSettings = field(default_factory=PipelineSettings)
    blobs: InMemoryBlobStore = field(default_factory=InMemoryBlobStore)
    records: InMemoryRecordStore = field(default_factory=InMemoryRecordStore)
    events: InMemoryEventPublisher = field(default_factory=InMemoryEventPublisher)
    now: datetime = datetime(2026, 1, 1, tzinfo=UTC)

    def pipeline(self, **fields) -> Pipeline:
        options = dict(
            settings=self.settings,
            blobs=self.blobs,
            records=self.records,
            events=self.events,
            renditions_bucket="renditions",
            event_source="test",
            clock=lambda: self.now,
        )
        return Pipeline(**{**options, **fields})

    def upload(self, key: str, data: bytes, version: str = "v1") -> ObjectRef:
        self.blobs.put_upload("uploads", key, data, version)
        return ObjectRef("uploads", key, version, len(data))

    def process(
        self,
        ref: ObjectRef,
        lease: timedelta | None = None,
        *,
        event_time: datetime | None = None,
        **fields,
    ) -> Outcome:
        return self.pipeline(**fields).process(ref, lease, event_time=event_time)

    def renditions(self) -> dict[str, bytes]:
        return {
            key: blob.data
            for (bucket, key), blob in self.blobs.objects.items()
            if bucket == "renditions"
        }
