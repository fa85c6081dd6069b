"""The imaging stages on synthetic images: geometry, orientation, colour, alpha, metadata."""

from __future__ import annotations

from io import BytesIO

import pytest
from PIL import Image, ImageChops, ImageCms, ImageOps

from functions.core.imaging import detect_format, inspect, open_checked, render_image
from functions.core.imaging.encode import output_format
from functions.core.imaging.geometry import plan_rendition
from functions.core.records import PermanentError
from functions.core.settings import Limits, PipelineSettings, RenditionSpec, parse_settings
from functions.core.timing import StageTimer
from tests.core.images import (
    BLUE,
    GREEN,
    RED,
    WHITE,
    dominant,
    encoded,
    jpeg_with_exif,
    quadrants,
)


def render(data: bytes, *specs: str, **settings) -> dict:
    values = {"renditions": list(specs)} if specs else {}
    values.update(settings)
    result = render_image(data, parse_settings(values), StageTimer())
    return {r.spec.name: r for r in result.renditions} | {"_meta": result.metadata}


def opened(rendition) -> Image.Image:
    image = Image.open(BytesIO(rendition.data))
    image.load()
    return image


@pytest.mark.parametrize(
    ("fmt", "options", "expected"),
    [
        ("JPEG", {}, "JPEG"),
        ("PNG", {}, "PNG"),
        ("GIF", {}, "GIF"),
        ("WEBP", {}, "WEBP"),
        ("BMP", {}, "BMP"),
        ("TIFF", {}, "TIFF"),
        ("AVIF", {}, "AVIF"),
    ],
)
def test_detect_format_reads_magic_bytes(fmt, options, expected):
    assert detect_format(encoded(Image.new("RGB", (8, 8), RED), fmt, **options)) == expected


@pytest.mark.parametrize(
    "data", [b"", b"hello", b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"<!doctype html>"]
)
def test_detect_format_refuses_what_it_does_not_know(data):
    assert detect_format(data) is None


def test_detect_format_names_heif_by_its_brands():
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"
    assert detect_format(heic) == "HEIF"


def test_stage_timer_records_every_stage():
    timer = StageTimer()
    render_image(encoded(quadrants()), PipelineSettings(), timer)
    assert {"detect", "validate", "inspect", "render", "encode"} <= set(timer.ms)


def test_contain_fits_the_box_and_keeps_the_aspect():
    out = render(encoded(quadrants((2000, 1000))), "large:1024x768")
    assert (out["large"].width, out["large"].height) == (1024, 512)
    assert opened(out["large"]).size == (1024, 512)


def test_cover_is_exactly_the_box_and_centred():
    # A wide image: cover keeps the centre, so the left red/blue and right green/white
    # columns are both still present, each half of the square.
    out = render(encoded(quadrants((800, 400))), "thumb:200x200:cover")
    image = opened(out["thumb"])
    assert image.size == (200, 200)
    assert dominant(image, (10, 10, 90, 90)) == RED
    assert dominant(image, (110, 110, 190, 190)) == WHITE


def test_never_upscales():
    out = render(encoded(quadrants((120, 90))), "large:1024x768", "thumb:200x200:cover")
    assert (out["large"].width, out["large"].height) == (120, 90)
    # cover of a smaller source: the centred crop with the box's aspect, not enlarged
    assert (out["thumb"].width, out["thumb"].height) == (90, 90)


@pytest.mark.parametrize(
    ("orientation", "corner_colour"),
    [(1, RED), (2, GREEN), (3, WHITE), (4, BLUE), (5, RED), (6, BLUE), (7, WHITE), (8, GREEN)],
)
def test_exif_orientation_is_applied(orientation, corner_colour):
    # Stored 400x300; orientations 5-8 turn it into 300x400 as a viewer shows it.
    data = jpeg_with_exif(quadrants((400, 300)), **{str(0x0112): orientation})
    out = render(data, "large:1024x768")
    image = opened(out["large"])
    swapped = orientation >= 5
    assert image.size == ((300, 400) if swapped else (400, 300))
    assert (out["_meta"].width, out["_meta"].height) == image.size
    assert dominant(image, (5, 5, 60, 60)) == corner_colour
    viewer = ImageOps.exif_transpose(Image.open(BytesIO(data))).convert("RGB")
    assert viewer.size == image.size
    assert dominant(viewer, (5, 5, 60, 60)) == corner_colour


def test_alpha_is_flattened_on_white_for_jpeg_and_kept_for_png():
    image = Image.new("RGBA", (300, 200), (0, 0, 0, 0))
    image.paste((255, 0, 0, 255), (0, 0, 150, 200))
    data = encoded(image, "PNG")
    out = render(data, "flat:300x200:contain:jpeg", "clear:300x200:contain:png")
    flat, clear = opened(out["flat"]), opened(out["clear"])
    assert flat.mode == "RGB"
    assert dominant(flat, (200, 50, 290, 150)) == WHITE
    assert dominant(flat, (10, 50, 100, 150)) == RED
    assert clear.mode == "RGBA"
    assert clear.getpixel((250, 100))[3] == 0
    assert clear.getpixel((50, 100)) == (255, 0, 0, 255)


def test_png_output_of_a_flat_image_is_pixel_exact():
    source = quadrants((300, 200))
    out = render(encoded(source, "PNG"), "same:300x200:contain:png")
    assert ImageChops.difference(opened(out["same"]).convert("RGB"), source).getbbox() is None


def test_source_format_resolution():
    meta = inspect(open_checked(encoded(quadrants(), "GIF"), "GIF", Limits()))
    spec = RenditionSpec("s", 100, 100, "contain", "source")
    assert output_format(spec, meta) == "gif"
    bmp = inspect(open_checked(encoded(quadrants(), "BMP"), "BMP", Limits()))
    assert output_format(spec, bmp) == "jpeg"
    rgba = Image.new("RGBA", (10, 10), (1, 2, 3, 4))
    tiff = inspect(open_checked(encoded(rgba, "TIFF"), "TIFF", Limits()))
    assert output_format(spec, tiff) == "png"


def test_animated_gif_renders_its_first_frame_as_a_single_frame_gif():
    frames = [Image.new("RGB", (64, 64), colour) for colour in (RED, GREEN, BLUE)]
    buffer = BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50)
    out = render(buffer.getvalue(), "same:64x64:contain:source")
    assert out["_meta"].frames == 3
    image = Image.open(BytesIO(out["same"].data))
    assert out["same"].format == "gif" and getattr(image, "n_frames", 1) == 1
    assert dominant(image, (0, 0, 64, 64)) == RED


def test_every_output_format_encodes():
    data = encoded(quadrants((300, 200)))
    specs = [f"{fmt}:150x100:contain:{fmt}" for fmt in ("jpeg", "webp", "png", "avif")]
    out = render(data, *specs)
    for fmt in ("jpeg", "webp", "png", "avif"):
        image = opened(out[fmt])
        assert image.format == fmt.upper() and image.size == (150, 100)
        assert out[fmt].content_type == f"image/{fmt}"


def test_metadata_is_read_and_gps_never_recorded_or_written():
    data = jpeg_with_exif(
        quadrants(),
        **{str(0x010F): "Acme\x00", str(0x0110): "Camera 9"},
        taken="2024:05:06 07:08:09",
        gps={1: "N", 2: (52.0, 22.0, 1.0)},
    )
    out = render(data)
    meta = out["_meta"]
    assert (meta.camera_make, meta.camera_model) == ("Acme", "Camera 9")
    assert meta.captured_at == "2024-05-06T07:08:09"
    assert "gps" not in repr(meta).lower()
    for name in ("large", "thumb"):
        image = opened(out[name])
        assert not image.getexif()
        assert not {"exif", "xmp", "icc_profile", "comment"} & set(image.info)


def test_keeping_metadata_embeds_srgb_and_still_no_exif():
    data = jpeg_with_exif(quadrants(), **{str(0x010F): "Acme"}, gps={1: "N"})
    out = render(data, stripMetadata=False)
    image = opened(out["large"])
    assert not image.getexif()
    profile = ImageCms.ImageCmsProfile(BytesIO(image.info["icc_profile"]))
    assert "sRGB" in ImageCms.getProfileDescription(profile)


def test_an_icc_profile_is_converted_to_srgb():
    # A profile that is not sRGB (LAB) changes the pixels; an sRGB one barely does.
    source = quadrants((200, 100))
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    untagged = opened(render(encoded(source, "PNG"), "x:200x100:contain:png")["x"])
    tagged = opened(render(encoded(source, "PNG", icc_profile=srgb), "x:200x100:contain:png")["x"])
    assert max(high for _, high in ImageChops.difference(untagged, tagged).getextrema()) <= 2
    assert render(encoded(source, "PNG", icc_profile=srgb), "x:200x100:contain:png")[
        "_meta"
    ].has_icc_profile


def test_renders_are_deterministic():
    data = encoded(quadrants((900, 700)))
    specs = ("a:300x300:contain:jpeg", "b:100x100:cover:webp", "c:64x64:cover:png")
    first, second = render(data, *specs), render(data, *specs)
    assert all(first[n].data == second[n].data for n in ("a", "b", "c"))


def test_panorama_thumb_is_cut_from_the_source_not_the_small_large():
    # 4000x500: the 1024x128 "large" has too few pixels for a 200x200 thumb of the
    # centre, so the thumb must equal one made straight from the source.
    panorama = Image.linear_gradient("L").resize((4000, 500)).convert("RGB")
    data = encoded(panorama, "PNG")
    out = render(data, "large:1024x768:contain:png", "thumb:200x200:cover:png")
    direct = panorama.resize(
        (200, 200), Image.Resampling.LANCZOS, box=(1750, 0, 2250, 500), reducing_gap=3.0
    )
    assert ImageChops.difference(opened(out["thumb"]).convert("RGB"), direct).getbbox() is None


def test_reduced_jpeg_decode_matches_a_full_decode_closely():
    source = quadrants((4000, 3000))
    data = encoded(source)
    large = opened(render(data, "large:1024x768")["large"])
    reference = Image.open(BytesIO(data)).convert("RGB").resize((1024, 768), Image.LANCZOS)
    diff = ImageChops.difference(large, reference).convert("L")
    histogram = diff.histogram()
    assert sum(histogram[16:]) < 0.005 * 1024 * 768  # edges only, a fraction of a percent


def test_sixteen_bit_greys_are_scaled_not_clipped():
    grey = Image.new("I;16", (64, 64), 32768)
    out = render(encoded(grey, "PNG"), "x:64x64:contain:png")
    assert abs(opened(out["x"]).convert("L").getpixel((10, 10)) - 128) <= 1


def test_limits_come_from_the_header():
    data = encoded(quadrants((400, 300)))
    with pytest.raises(PermanentError) as caught:
        open_checked(data, "JPEG", Limits(max_pixels=100_000))
    assert caught.value.code == "too_many_pixels"
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, GREEN, BLUE)]
    buffer = BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(PermanentError) as caught:
        open_checked(buffer.getvalue(), "GIF", Limits(max_frames=2))
    assert caught.value.code == "too_many_frames"


def test_pillow_bomb_threshold_follows_the_setting_and_is_restored():
    # 95 MP is over Pillow's 89 MP default but under our 100 MP: accepted from the header.
    before = Image.MAX_IMAGE_PIXELS
    from tests.core.images import png_claiming

    source = open_checked(png_claiming(10_000, 9_500), "PNG", Limits())
    assert source.image.size == (10_000, 9_500)
    assert before == Image.MAX_IMAGE_PIXELS


def test_plan_geometry():
    spec = RenditionSpec("t", 200, 100, "cover")
    plan = plan_rendition((1000, 1000), spec, None)
    assert plan.size == (200, 100) and plan.region == (0.0, 250.0, 1000.0, 750.0)
    turned = plan_rendition((1000, 2000), spec, 6)  # shown as 2000 wide, 1000 tall
    assert turned.size == (100, 200)


def test_colour_key_transparency_becomes_alpha():
    image = Image.new("RGB", (60, 40), RED)
    image.paste(BLUE, (0, 0, 30, 40))
    out = render(encoded(image, "PNG", transparency=BLUE), "x:60x40:contain:png")
    result = opened(out["x"]).convert("RGBA")
    assert result.getpixel((5, 5))[3] == 0 and result.getpixel((50, 5)) == (*RED, 255)


def test_transparent_gif_stays_transparent_as_source():
    image = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    image.paste((*GREEN, 255), (0, 0, 20, 40))
    out = render(encoded(image, "GIF"), "x:40x40:contain:source")
    result = opened(out["x"]).convert("RGBA")
    assert out["x"].format == "gif"
    assert result.getpixel((30, 5))[3] == 0 and result.getpixel((5, 5)) == (*GREEN, 255)


def test_concurrent_renders_with_different_limits_do_not_interfere():
    from concurrent.futures import ThreadPoolExecutor

    data = encoded(quadrants((600, 400)))  # 240 000 pixels
    strict = PipelineSettings(limits=Limits(max_pixels=100_000))
    loose = PipelineSettings()
    before = Image.MAX_IMAGE_PIXELS

    def attempt(settings: PipelineSettings) -> str:
        try:
            render_image(data, settings, StageTimer())
            return "completed"
        except PermanentError as error:
            return error.code

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(attempt, [strict, loose] * 16))
    assert results == ["too_many_pixels", "completed"] * 16
    assert before == Image.MAX_IMAGE_PIXELS
