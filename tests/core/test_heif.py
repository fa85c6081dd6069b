"""HEIC/HEIF input (opt-in): the shared corpus's iPhone files, orientation applied once, limits.

How orientation is checked against a viewer: a HEIF viewer shows the primary image's
stored pixels (`ispe`) turned by its `irot`/`imir` boxes and never by the EXIF tag
(the iPhone 13 Pro Max file carries irot 270 *and* EXIF orientation 6; turning by
both would show it upside down). Each corpus file's displayed size is read here from
its own boxes, by a reader that shares nothing with pillow-heif, and by libvips's
HEIF loader (pyvips, its own libheif build) where it is installed; the record and
every rendition must have that shape. The pixels must match libheif's own rendition
of the file (`pillow_heif.open_heif(...).to_pillow()`, no EXIF involved) and not that
rendition turned or mirrored. When this was written, the corpus renditions were also
compared with pyheif's decode (libheif 1.18.2, a separate build): mean difference
1.3-3.4 levels as shown, 20-76 for any other turn or mirror; and looked at.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from io import BytesIO

import pillow_heif
import pytest
from PIL import Image, ImageChops, ImageStat

from functions.core.imaging import render_image
from functions.core.imaging.formats import detect_format, load_plugin
from functions.core.imaging.limits import open_checked
from functions.core.records import PermanentError
from functions.core.settings import Limits, PipelineSettings, parse_settings
from functions.core.timing import StageTimer
from functions.core.uploads import UploadApi
from tests.conftest import CORPUS, PROJECT_ROOT, require
from tests.core.images import BLUE, GREEN, RED, WHITE, FakeStack, dominant, quadrants
from tests.core.test_uploads import GOOD, NOW, OPEN, UPLOAD_ID, Api

HEIF_ALLOWED = parse_settings({"allowedFormats": "JPEG,HEIF"})
EXIF_ORIENTATION = 0x0112


def heif(image: Image.Image, **options) -> bytes:
    """`image` as a HEIC, through pillow-heif's encoder (libx265)."""
    load_plugin("HEIF")
    buffer = BytesIO()
    image.save(buffer, format="HEIF", quality=90, **options)
    return buffer.getvalue()


def ten_bit(image: Image.Image) -> bytes:
    """An RGB image as a 10-bit HEIC: 16-bit samples (v * 257), which libheif stores in 10."""
    samples = bytes(byte for value in image.tobytes() for byte in struct.pack("<H", value * 257))
    buffer = BytesIO()
    pillow_heif.from_bytes("RGB;16", image.size, samples).save(buffer, quality=90)
    return buffer.getvalue()


def with_exif_orientation(image: Image.Image, orientation: int) -> bytes:
    """As an iPhone writes it: irot/imir boxes for `orientation` and the same EXIF tag."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return heif(image, exif=exif.tobytes())


def render(data: bytes, settings: PipelineSettings = HEIF_ALLOWED) -> dict[str, Image.Image]:
    result = render_image(data, settings, StageTimer())
    return {r.spec.name: Image.open(BytesIO(r.data)) for r in result.renditions}


# --- the file's own boxes: what a viewer shows -------------------------------------------


def _boxes(data: bytes, start: int, end: int) -> dict[str, list[bytes]]:
    found: dict[str, list[bytes]] = {}
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack(">I4s", data[at : at + 8])
        header = 8
        if size == 1:
            (size,) = struct.unpack(">Q", data[at + 8 : at + 16])
            header = 16
        size = size or end - at
        found.setdefault(kind.decode("latin-1"), []).append(data[at + header : at + size])
        at += size
    return found


def displayed_size(data: bytes) -> tuple[int, int]:
    """The primary item's `ispe`, turned by its `irot` (`imir` keeps the size)."""
    meta = _boxes(data, 0, len(data))["meta"][0][4:]  # a full box: version and flags first
    inside = _boxes(meta, 0, len(meta))
    pitm = inside["pitm"][0]
    primary = int.from_bytes(pitm[4:6] if pitm[0] == 0 else pitm[4:8], "big")
    iprp = _boxes(inside["iprp"][0], 0, len(inside["iprp"][0]))
    ipco = iprp["ipco"][0]
    properties, at = [], 0  # in file order: ipma counts from 1
    while at + 8 <= len(ipco):
        (size,) = struct.unpack(">I", ipco[at : at + 4])
        properties.append((ipco[at + 4 : at + 8].decode("latin-1"), ipco[at + 8 : at + size]))
        at += size
    ipma = iprp["ipma"][0]
    version, flags = ipma[0], int.from_bytes(ipma[1:4], "big")
    (entries,) = struct.unpack(">I", ipma[4:8])
    at, mine = 8, []
    for _ in range(entries):
        width = 2 if version < 1 else 4
        item = int.from_bytes(ipma[at : at + width], "big")
        count = ipma[at + width]
        at += width + 1
        for _ in range(count):
            if flags & 1:
                index = int.from_bytes(ipma[at : at + 2], "big") & 0x7FFF
                at += 2
            else:
                index = ipma[at] & 0x7F
                at += 1
            if item == primary and index:
                mine.append(properties[index - 1])
    ispe = next(body for kind, body in mine if kind == "ispe")
    width, height = struct.unpack(">II", ispe[4:12])
    quarter_turns = next((body[0] & 3 for kind, body in mine if kind == "irot"), 0)
    return (height, width) if quarter_turns % 2 else (width, height)


# --- the corpus ------------------------------------------------------------------------------


def _corpus_files():
    folder = CORPUS / "heic"
    return sorted(folder.iterdir()) if folder.is_dir() else []


@pytest.fixture(scope="module")
def corpus_heic():
    folder = CORPUS / "heic"
    require(
        None
        if folder.is_dir()
        else f"HEIC corpus not found at {folder} (set IMAGEPIPE_CORPUS to its parent folder)"
    )
    return folder


def _mean_difference(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


@pytest.mark.parametrize("name", [path.name for path in _corpus_files()] or ["(corpus absent)"])
def test_every_corpus_heic_completes_the_way_a_viewer_shows_it(corpus_heic, name):
    data = (corpus_heic / name).read_bytes()
    assert detect_format(data) == "HEIF"
    pipeline = FakeStack(settings=HEIF_ALLOWED)
    outcome = pipeline.process(pipeline.upload(name, data))
    record = outcome.record
    assert outcome.action == "completed", record.error
    shown = displayed_size(data)
    assert (record.image.width, record.image.height) == shown
    assert record.image.format == "HEIF" and record.image.frames == 1
    assert record.image.orientation is None  # irot/imir were applied by libheif, EXIF never
    large = Image.open(
        BytesIO(pipeline.blobs.objects[("renditions", record.renditions[0].key)].data)
    )
    assert large.mode == "RGB"
    # The same shape as shown, to a pixel of rounding.
    assert abs(large.width * shown[1] - large.height * shown[0]) <= max(shown)

    reference = pillow_heif.open_heif(BytesIO(data)).to_pillow()
    assert reference.size == shown
    icc = reference.info.get("icc_profile")
    if icc:
        from PIL import ImageCms

        srgb = ImageCms.createProfile("sRGB")
        reference = ImageCms.profileToProfile(reference, BytesIO(icc), srgb, outputMode="RGB")
    candidates = {
        "as shown": reference,
        "turned 90": reference.transpose(Image.Transpose.ROTATE_90),
        "turned 180": reference.transpose(Image.Transpose.ROTATE_180),
        "mirrored": reference.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    }
    difference = {
        label: _mean_difference(large, image.resize(large.size, Image.Resampling.BILINEAR))
        for label, image in candidates.items()
    }
    assert difference["as shown"] < 6, difference
    assert min(v for k, v in difference.items() if k != "as shown") > 4 * difference["as shown"]


def test_the_corpus_sizes_agree_with_libvips(corpus_heic):
    """A second reader of the displayed geometry: libvips's HEIF loader (its own libheif)."""
    try:
        import pyvips
    except (ImportError, OSError) as error:
        require(f"pyvips is not usable here ({error})")
    for path in sorted(corpus_heic.iterdir()):
        header = pyvips.Image.new_from_file(str(path))
        assert (header.width, header.height) == displayed_size(path.read_bytes()), path.name


def test_an_iphone_file_with_a_gain_map_renders_its_primary_image(corpus_heic):
    """iPhone 13 Pro Max: a 4032x3024 primary (irot 270, EXIF 6) and a 2016x1512 HDR gain
    map as an auxiliary image; the renditions are the primary's, portrait."""
    data = (corpus_heic / "iphone_13_pro_max.heic").read_bytes()
    assert b"urn:com:apple:photo:2020:aux:hdrgainmap" in data  # the gain map's auxC box
    source = open_checked(data, "HEIF", HEIF_ALLOWED.limits)
    assert source.frames == 1 and not source.image.info.get("aux")  # not even listed
    out = render(data)
    assert out["large"].size == (576, 768)
    assert out["thumb"].size == (200, 200)


# --- synthetic files ---------------------------------------------------------------------


def test_heif_is_refused_unless_allowed_naming_the_allowed_formats():
    data = heif(quadrants((64, 48)))
    with pytest.raises(PermanentError) as refused:
        render_image(data, PipelineSettings(), StageTimer())
    assert refused.value.code == "unsupported_format"
    assert str(refused.value.message) == "HEIF; allowed: JPEG, PNG, GIF, WEBP"


def test_settings_accept_heif_and_the_upload_api_takes_image_heic():
    assert "HEIF" not in PipelineSettings().allowed_formats  # opt-in
    assert HEIF_ALLOWED.allowed_formats == ("JPEG", "HEIF")
    heic = {**GOOD, "filename": "IMG_0001.HEIC", "contentType": "image/heic"}
    assert Api().post(heic).status == 400
    api = Api()
    api.api = UploadApi(
        settings=HEIF_ALLOWED,
        options=OPEN,
        bucket=api.bucket,
        records=api.records,
        rendition_url=lambda key: f"https://cdn.example/{key}",
        uploads_prefix="incoming/",
        clock=lambda: NOW,
        new_id=lambda: UPLOAD_ID,
    )
    response = api.post(heic)
    assert response.status == 201
    assert response.body["upload"]["fields"]["Content-Type"] == "image/heic"


def test_irot_and_the_same_exif_tag_turn_the_picture_once():
    """Stored landscape with irot 270 and EXIF orientation 6, as an iPhone writes it: shown
    portrait, red (stored top-left) at the top right. Turned twice it would be landscape."""
    data = with_exif_orientation(quadrants((400, 304)), 6)
    assert Image.open(BytesIO(data)).getexif().get(EXIF_ORIENTATION) in (1, None)  # reset on read
    assert displayed_size(data) == (304, 400)
    large = render(data)["large"]
    assert large.size == (304, 400)
    w, h = large.size
    assert dominant(large, (w // 2 + 8, 8, w - 8, h // 2 - 8)) == RED
    assert dominant(large, (w // 2 + 8, h // 2 + 8, w - 8, h - 8)) == GREEN
    assert dominant(large, (8, 8, w // 2 - 8, h // 2 - 8)) == BLUE
    assert dominant(large, (8, h // 2 + 8, w // 2 - 8, h - 8)) == WHITE


def test_a_ten_bit_file_gives_eight_bit_renditions_with_its_colours():
    data = ten_bit(quadrants((256, 192)))
    assert pillow_heif.open_heif(BytesIO(data), convert_hdr_to_8bit=False).info["bit_depth"] == 10
    large = render(data)["large"]
    assert large.mode == "RGB"  # 8 bits a sample
    w, h = large.size
    assert dominant(large, (8, 8, w // 2 - 8, h // 2 - 8)) == RED
    assert dominant(large, (w // 2 + 8, 8, w - 8, h // 2 - 8)) == GREEN
    red = ImageStat.Stat(large.crop((8, 8, w // 2 - 8, h // 2 - 8))).mean
    assert red[0] > 240 and red[1] < 20 and red[2] < 20, red  # scaled to 8 bits, not clipped


def test_a_file_of_several_images_renders_the_primary():
    red, blue = Image.new("RGB", (64, 64), RED), Image.new("RGB", (64, 64), BLUE)
    first_primary = heif(red, save_all=True, append_images=[blue])
    second_primary = heif(red, save_all=True, append_images=[blue], primary_index=1)
    source = open_checked(first_primary, "HEIF", Limits())
    assert source.frames == 2
    assert dominant(render(first_primary)["large"], (8, 8, 56, 56)) == RED
    assert dominant(render(second_primary)["large"], (8, 8, 56, 56)) == BLUE
    with pytest.raises(PermanentError) as refused:
        open_checked(first_primary, "HEIF", Limits(max_frames=1))
    assert refused.value.code == "too_many_frames"


def _claiming(width: int, height: int) -> bytes:
    """A real 64x64 HEIC whose `ispe` box claims width x height (no crop box to undo it)."""
    data = heif(Image.new("RGB", (64, 64), RED))
    at = data.find(b"ispe")
    assert struct.unpack(">II", data[at + 8 : at + 16]) == (64, 64)
    return data[: at + 8] + struct.pack(">II", width, height) + data[at + 16 :]


@pytest.mark.parametrize("claimed", [(20_000, 20_000), (40_000, 40_000), (200_000, 1_000)])
def test_a_heif_claiming_too_many_pixels_is_refused_from_its_header(claimed):
    data = _claiming(*claimed)
    with pytest.raises(PermanentError) as refused:
        open_checked(data, "HEIF", HEIF_ALLOWED.limits)  # parses the header, decodes nothing
    assert refused.value.code == "too_many_pixels"
    with pytest.raises(PermanentError) as rendered:
        render_image(data, HEIF_ALLOWED, StageTimer())
    assert rendered.value.code == "too_many_pixels"


def test_a_heif_over_the_memory_budget_is_refused_before_it_is_decoded():
    """8000x8000 fits maxPixels; at memoryMb 512 its decode would not fit. Refused as
    over_memory_budget, not the corrupt_image the 64x64 payload would give when decoded."""
    settings = parse_settings({"allowedFormats": "HEIF", "memoryMb": 512})
    with pytest.raises(PermanentError) as refused:
        render_image(_claiming(8000, 8000), settings, StageTimer())
    assert refused.value.code == "over_memory_budget"
    assert "8000x8000 HEIF" in refused.value.message


_JPEG_ONLY_PROBE = """
import sys
from functions.core.imaging import render_image
from functions.core.settings import parse_settings
from functions.core.timing import StageTimer
from tests.core.images import encoded, quadrants

render_image(encoded(quadrants()), parse_settings({"allowedFormats": "JPEG,HEIF"}), StageTimer())
print(sorted(name for name in sys.modules if "heif" in name))
"""


def test_libheif_is_loaded_only_for_a_heif():
    """Allowing HEIF costs other formats nothing: pillow-heif is imported on the first HEIF."""
    output = subprocess.run(
        [sys.executable, "-c", _JPEG_ONLY_PROBE],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert output.strip() == "[]"
