"""Every real photo in the shared corpus completes, the right way up, with no EXIF or GPS."""

from __future__ import annotations

from io import BytesIO

import pytest
from PIL import Image

from tests.core.images import Pipeline


def _photos(folder):
    return sorted(path for path in folder.iterdir() if path.is_file())


def test_every_corpus_photo_completes_without_metadata(corpus_photos):
    pipeline = Pipeline()
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
            assert b"Exif\x00\x00" not in data and b"GPS" not in data
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
    pipeline = Pipeline()
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
