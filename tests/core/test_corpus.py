"""Every real photo in the shared corpus completes, the right way up, with no EXIF or GPS."""

from __future__ import annotations

import struct
from io import BytesIO

import pytest
from PIL import Image

from tests.core.images import FakeStack


def _photos(folder):
    return sorted(path for path in folder.iterdir() if path.is_file())


def _jpeg_marker_segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, payload) of every JPEG marker segment; entropy-coded scan data skipped.

    Metadata lives only in marker segments. Searching the whole file for b"GPS"
    also searches compressed pixels, where any 3 bytes turn up by chance (one
    10 MP photo's large rendition has b"GPS" at byte 94175 of its scan data).
    """
    assert data[:2] == b"\xff\xd8"
    segments, at = [], 2
    while at < len(data) - 1:
        assert data[at] == 0xFF, f"no marker at byte {at}"
        marker = data[at + 1]
        if marker == 0xD9:  # EOI
            break
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        segments.append((marker, data[at + 4 : at + 2 + length]))
        at += 2 + length
        if marker == 0xDA:  # SOS: scan data runs to the next marker (not a stuffed 0 or RSTn)
            while not (data[at] == 0xFF and data[at + 1] not in (0x00, *range(0xD0, 0xD8))):
                at += 1
    return segments


def test_marker_walk_sees_metadata_and_ignores_scan_bytes():
    picture = Image.new("RGB", (64, 64), (10, 200, 30))
    exif = Image.Exif()
    exif[0x010F] = "GPS maker"
    buffer = BytesIO()
    picture.save(buffer, "JPEG", exif=exif, progressive=True)
    segments = _jpeg_marker_segments(buffer.getvalue())
    assert any(marker == 0xE1 and b"GPS" in payload for marker, payload in segments)
    assert sum(marker == 0xDA for marker, _ in segments) > 1  # walked past every scan


def test_every_corpus_photo_completes_without_metadata(corpus_photos):
    pipeline = FakeStack()
    for path in _photos(corpus_photos):
        outcome = pipeline.process(pipeline.upload(path.name, path.read_bytes()))
        record = outcome.record
        assert outcome.action == "completed", (path.name, record.error)
        assert [r.name for r in record.renditions] == ["large", "thumb"]
        for rendition in record.renditions:
            data = pipeline.blobs.objects[("renditions", rendition.key)].data
            image = Image.open(BytesIO(data))
            assert image.size == (rendition.width, rendition.height)
            assert rendition.width <= 1024 and rendition.height <= 768
            assert not image.getexif(), f"EXIF survived in {path.name}/{rendition.name}"
            for marker, payload in _jpeg_marker_segments(data):
                assert marker != 0xE1, f"APP1 (EXIF/XMP) in {path.name}/{rendition.name}"
                assert b"Exif\x00\x00" not in payload and b"GPS" not in payload
            assert not {"exif", "xmp", "icc_profile"} & set(image.info)
        assert "gps" not in repr(record.image).lower()


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        # stored 1200x1800 with orientation 6: a viewer shows it landscape
        ("jpg_orient6_2mp.jpg", "landscape"),
        # stored 1800x1200 with orientation 8: a viewer shows it portrait
        ("jpg_orient8_portrait_2mp.jpg", "portrait"),
        ("jpg_canon_sx60_3mp.jpg", "portrait"),
        ("webp_hopper_orient6.webp", "square"),
    ],
)
def test_orientation_matches_a_viewer(corpus_photos, name, shown):
    data = (corpus_photos / name).read_bytes()
    pipeline = FakeStack()
    record = pipeline.process(pipeline.upload(name, data)).record
    large = record.renditions[0]
    stored = Image.open(BytesIO(data)).size
    assert record.image.orientation in (6, 8)
    assert (record.image.width, record.image.height) == (stored[1], stored[0])
    expected = {
        "landscape": large.width > large.height,
        "portrait": large.width < large.height,
        "square": large.width == large.height,
    }
    assert expected[shown], (large.width, large.height)
