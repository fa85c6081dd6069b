"""The shortcuts that make the core fast keep its output: box halving, EXIF dates."""

from __future__ import annotations

import math
from io import BytesIO

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from functions.core.imaging import render_image
from functions.core.imaging.tuning import JPEG_BOX_HALVING_MARGIN
from functions.core.settings import parse_settings
from functions.core.timing import StageTimer
from tests.core.images import encoded, jpeg_with_exif, quadrants


def render(data: bytes, *specs: str) -> dict:
    result = render_image(data, parse_settings({"renditions": list(specs)}), StageTimer())
    return {r.spec.name: r for r in result.renditions} | {"_meta": result.metadata}


def psnr(a: Image.Image, b: Image.Image) -> float:
    histogram = ImageChops.difference(a.convert("RGB"), b.convert("RGB")).histogram()
    squared = sum(count * (value % 256) ** 2 for value, count in enumerate(histogram))
    mse = squared / (a.width * a.height * 3)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def line_art(size: tuple[int, int]) -> Image.Image:
    """Gradients crossed by 1-px lines: the hardest case for a box filter."""
    image = Image.merge(
        "RGB",
        (
            Image.linear_gradient("L").resize(size),
            Image.radial_gradient("L").resize(size),
            Image.linear_gradient("L").resize(size).transpose(Image.Transpose.ROTATE_180),
        ),
    )
    draw = ImageDraw.Draw(image)
    for x in range(0, size[0], 7):
        draw.line((x, 0, x + size[1] // 3, size[1]), fill=(250, 250, 250), width=1)
    return image


# Boxes of 512x384 keep the ratios of 1024x768 renditions at a quarter of the pixels.
def large_of(data: bytes) -> Image.Image:
    large = render(data, "large:512x384:contain:png")["large"]
    return Image.open(BytesIO(large.data)).convert("RGB")


def test_a_jpeg_decoded_full_size_is_halved_first_and_stays_close_to_lanczos():
    # As 8 MP -> 1024x768: too small for a 1/2 draft (1.59 left < 1.8), ratio 3.19
    # from full size, halved to 1.59 (>= JPEG_BOX_HALVING_MARGIN).
    source = line_art((1632, 1224)).filter(ImageFilter.GaussianBlur(1))  # photo-like
    data = encoded(source, "JPEG", quality=95)
    full = Image.open(BytesIO(data)).convert("RGB")
    assert 2 * JPEG_BOX_HALVING_MARGIN <= 1632 / 512
    halved = large_of(data)
    reference = full.resize((512, 384), Image.Resampling.LANCZOS, reducing_gap=3.0)
    assert 45 <= psnr(halved, reference) < math.inf  # close, and not the unhalved path


@pytest.mark.parametrize("width", [1650, 2048, 3100])
def test_sharp_graphics_keep_45_db_against_lanczos_from_full_size(width):
    # Ratio 3.2 is not halved for a PNG; 4.0 is halved once, 6.05 twice.
    source = line_art((width, width * 3 // 4))
    reference = source.resize((512, 384), Image.Resampling.LANCZOS)
    assert psnr(large_of(encoded(source, "PNG", compress_level=1)), reference) >= 44.5


def test_without_halving_the_resize_is_lanczos_from_the_decode():
    source = line_art((1485, 1000))  # ratio 2.9 < 2 x 2.0
    reference = source.resize((512, 345), Image.Resampling.LANCZOS, reducing_gap=3.0)
    difference = ImageChops.difference(
        large_of(encoded(source, "PNG", compress_level=1)), reference
    )
    assert max(high for _, high in difference.getextrema()) <= 1  # strips round alike


def test_halving_keeps_transparent_colour_out_of_opaque_pixels():
    # Pillow reduces RGBA premultiplied: the hidden red must not bleed into the blue.
    rgba = Image.new("RGBA", (1600, 1200), (255, 0, 0, 0))  # ratio 3.1 -> halved
    rgba.paste((0, 0, 255, 255), (0, 0, 800, 1200))
    out = render(encoded(rgba, "PNG", compress_level=1), "large:400x300:contain:png")["large"]
    image = Image.open(BytesIO(out.data)).convert("RGBA")
    assert image.getpixel((190, 150)) == (0, 0, 255, 255)
    red, _, _, alpha = image.getpixel((200, 150))  # straddles the edge
    assert 0 < alpha < 255 and red <= 2
    assert image.getpixel((300, 150))[3] == 0


@pytest.mark.parametrize(
    ("taken", "expected"),
    [
        ("2024:05:06 07:08:09", "2024-05-06T07:08:09"),
        ("2024:05:06 07:08:09\x00", "2024-05-06T07:08:09"),
        ("2024:13:06 07:08:09", None),  # month 13
        ("2023:02:29 00:00:00", None),  # not a leap year
        ("    :  :     :  :  ", None),  # the EXIF spec's "unknown"
        ("2024-05-06 07:08:09", None),
    ],
)
def test_exif_capture_time(taken, expected):
    data = jpeg_with_exif(quadrants(), taken=taken)
    assert render(data, "x:100x100")["_meta"].captured_at == expected
