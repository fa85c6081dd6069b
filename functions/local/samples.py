"""Sample images the project makes itself, for `make demo`: no download, no checked-in photos.

Each sample says what the pipeline should do with it, so the demo can check
the outcome instead of just printing it.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFilter

# EXIF tags (numbers, so the meaning is visible next to the value).
ORIENTATION, MAKE, MODEL, EXIF_IFD, GPS_IFD, DATETIME_ORIGINAL = (
    0x0112,
    0x010F,
    0x0110,
    0x8769,
    0x8825,
    0x9003,
)
BROKEN_CODES = frozenset({"unsupported_format", "corrupt_image"})


@dataclass(frozen=True)
class Sample:
    path: Path
    expected_status: str  # COMPLETED or FAILED
    expected_codes: frozenset[str] = frozenset()  # for FAILED: any of these
    duplicate_of: str | None = None  # file name of the sample with the same bytes
    note: str = ""


def synthetic_photo(width: int, height: int, seed: int = 1) -> Image.Image:
    """A landscape-like RGB picture: sky gradient, hills, a sun, sensor-like grain.

    Drawn small and scaled up, then grain added at full size: fast to make, and
    with enough texture that it compresses like a photo, not like a flat graphic.
    """
    rng = random.Random(seed)
    small_w, small_h = 320, max(1, 320 * height // width)
    sky = Image.linear_gradient("L").resize((small_w, small_h))
    picture = Image.merge(
        "RGB",
        (
            sky.point(lambda v: 60 + v * 2 // 3),
            sky.point(lambda v: 110 + v // 2),
            sky.point(lambda v: 200 + v // 5),
        ),
    )
    draw = ImageDraw.Draw(picture)
    sun = (rng.randint(small_w // 5, small_w * 4 // 5), small_h // 4)
    draw.ellipse((sun[0] - 18, sun[1] - 18, sun[0] + 18, sun[1] + 18), fill=(255, 236, 180))
    for layer in range(4):
        base = small_h * (5 + layer) // 10
        points = [(0, small_h)]
        for x in range(0, small_w + 20, 20):
            points.append((x, base + rng.randint(-small_h // 10, small_h // 12)))
        points.append((small_w, small_h))
        shade = 40 + layer * 25
        draw.polygon(points, fill=(shade // 2, 70 + shade, shade // 3))
    picture = picture.filter(ImageFilter.GaussianBlur(1)).resize((width, height), Image.BICUBIC)
    grain = Image.effect_noise((width, height), 18).convert("RGB")
    return ImageChops.add(
        ImageChops.multiply(picture, Image.new("RGB", picture.size, (235,) * 3)),
        grain,
        scale=1.0,
        offset=-100,
    )


def camera_jpeg(width: int = 4000, height: int = 3000) -> bytes:
    """A ~12 MP camera JPEG, stored sideways with EXIF orientation 6 (rotate 90° to view)
    and a GPS position that the pipeline must not let through to any rendition."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    exif[MAKE] = "Imagepipe"
    exif[MODEL] = "Synthetic 12MP"
    exif[EXIF_IFD] = {DATETIME_ORIGINAL: "2024:06:01 18:30:00"}
    exif[GPS_IFD] = {1: "N", 2: (52.0, 22.0, 12.5), 3: "E", 4: (4.0, 53.0, 30.0)}
    out = io.BytesIO()
    synthetic_photo(width, height, seed=12).save(out, "JPEG", quality=88, exif=exif)
    return out.getvalue()


def alpha_png(width: int = 640, height: int = 480) -> bytes:
    picture = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(picture)
    draw.rounded_rectangle((40, 40, width - 40, height - 40), radius=60, fill=(30, 110, 200, 220))
    draw.ellipse(
        (width // 3, height // 4, width * 2 // 3, height * 3 // 4), fill=(250, 200, 40, 255)
    )
    out = io.BytesIO()
    picture.save(out, "PNG")
    return out.getvalue()


def animated_gif(side: int = 240, frames: int = 8) -> bytes:
    images = []
    for n in range(frames):
        frame = Image.new("RGB", (side, side), (245, 245, 245))
        draw = ImageDraw.Draw(frame)
        draw.pieslice((20, 20, side - 20, side - 20), n * 45, n * 45 + 90, fill=(200, 40, 60))
        images.append(frame.convert("P", palette=Image.ADAPTIVE, colors=32))
    out = io.BytesIO()
    images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=80, loop=0)
    return out.getvalue()


def landscape_webp(width: int = 1600, height: int = 1067) -> bytes:
    out = io.BytesIO()
    synthetic_photo(width, height, seed=3).save(out, "WEBP", quality=80, method=4)
    return out.getvalue()


def small_png(side: int = 64, seed: int = 0) -> bytes:
    """A tiny distinct PNG per seed: cheap load-test material with distinct content hashes."""
    rng = random.Random(seed)
    picture = Image.new("RGB", (side, side), tuple(rng.randrange(256) for _ in range(3)))
    ImageDraw.Draw(picture).rectangle((8, 8, side - 8, side // 2), fill=(seed % 256, 90, 160))
    out = io.BytesIO()
    picture.save(out, "PNG")
    return out.getvalue()


def write_samples(directory: Path) -> list[Sample]:
    """Write the demo's samples into `directory` and say what each should become."""
    directory.mkdir(parents=True, exist_ok=True)
    png = alpha_png()
    files: list[tuple[str, bytes, Sample]] = []

    def add(name: str, data: bytes, **expect: object) -> None:
        (directory / name).write_bytes(data)
        sample = Sample(directory / name, **expect)  # type: ignore[arg-type]
        files.append((name, data, sample))

    add(
        "camera-12mp-orient6-gps.jpg",
        camera_jpeg(),
        expected_status="COMPLETED",
        note="12 MP, EXIF orientation 6, GPS",
    )
    add("logo-alpha.png", png, expected_status="COMPLETED", note="PNG with alpha")
    add("spinner-animated.gif", animated_gif(), expected_status="COMPLETED", note="animated GIF")
    add("landscape.webp", landscape_webp(), expected_status="COMPLETED", note="WebP")
    add(
        "not-really-a-photo.jpg",
        b"Dear pipeline, I am a text file in a JPEG's clothing.\n",
        expected_status="FAILED",
        expected_codes=BROKEN_CODES,
        note="text named .jpg",
    )
    add(
        "logo-alpha-copy.png",
        png,
        expected_status="COMPLETED",
        duplicate_of="logo-alpha.png",
        note="same bytes, new key",
    )
    return [sample for _, _, sample in files]
