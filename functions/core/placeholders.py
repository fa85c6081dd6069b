"""What a page shows before the thumbnail arrives: a ThumbHash and a dominant colour.

Both come from the smallest rendition as rendered (sRGB, RGB or RGBA), so they stand in
for the image a list page loads first, crop and all.

ThumbHash, not BlurHash: it keeps alpha (a logo on transparency stays a shape, where
BlurHash paints the transparent area as a colour), it keeps the aspect ratio, and it
carries more detail and truer colour in fewer bytes (25-35 base64 characters). BlurHash
has the better-kept Python libraries, but neither fits here: `blurhash` (pure Python, kept
up) takes 11 ms on a 16x16 input and more above it, five times the budget, and
`blurhash-python` (C) last shipped in January 2024 with no wheel for Python 3.13, which
the functions may run. The Python ThumbHash packages are not usable either: `thumbhash`
0.1.2 (its only release, 2023) raises on every image with alpha (an operator-precedence
slip) and takes 16 ms at 32x32; `thumbhash-python` 1.0.1 requires Pillow < 11 and typer.
So the encoder is written here, from the reference (Evan Wallace, MIT,
https://github.com/evanw/thumbhash, js/thumbhash.js `rgbaToThumbHash`), with the same
steps and the same rounding; it is checked byte for byte against vectors the reference
itself produced. The DCT is summed separably (rows, then columns) with cached cosine
tables, which is what keeps it under 0.5 ms in pure Python.

The string is the hash's bytes in standard base64, as the reference's demo prints it:
a page decodes it with `thumbHashToDataURL(Uint8Array.from(atob(s), c => c.charCodeAt(0)))`.

Dominant colour: the alpha-weighted mean of the same small downscale, in integers. It is
the colour the placeholder blurs towards (ThumbHash's own DC term), so the two agree, and
an exact integer mean is the same on every machine; a palette's most common bucket would
hang on ties and bucket edges. None when no pixel is visible.

Deterministic: Pillow's BOX downscale is integer arithmetic, Python's float arithmetic is
IEEE 754 on both clouds' processors, and the cosine tables are rounded to 12 places so a
last-bit difference between libm builds (x86_64 and arm64) cannot reach the hash.
"""

from __future__ import annotations

import base64
import math
from functools import lru_cache
from itertools import repeat
from math import fsum
from operator import add, mul, sub, truediv

from PIL import Image

# The reference encodes at most 100x100, but the hash keeps at most 7 cosine terms a side.
# Measured on the corpus thumbs against a 100x100 sample: 20 a side moves 1 nibble in 45
# by one step (32 a side: 1 in 60; 12: 1 in 17) at a quarter of the pure-Python cost of 32.
SAMPLE_SIDE = 20
# A term this small is rounding noise on a flat channel (an opaque colour under alpha, say):
# the reference would normalise that noise into arbitrary nibbles (scale 0 hides them from
# decoders); zero keeps them zero, as the reference writes for an exactly flat channel.
FLAT = 1e-12


def placeholder_and_colour(image: Image.Image) -> tuple[str, str | None]:
    """The ThumbHash (base64) and the dominant colour ("#rrggbb") of a rendered image.

    Never mutates `image`: every step works on a new image or on copied bytes.
    """
    small = _sample(image)
    width, height = small.size
    rgba = small.tobytes()
    return thumbhash(width, height, rgba), dominant_colour(rgba)


def _sample(image: Image.Image) -> Image.Image:
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA")
    width, height = image.size
    longest = max(width, height)
    if longest > SAMPLE_SIDE:
        size = (
            max(1, (width * SAMPLE_SIDE + longest // 2) // longest),
            max(1, (height * SAMPLE_SIDE + longest // 2) // longest),
        )
        # Pillow premultiplies RGBA for the resize, so transparent pixels bleed no colour.
        image = image.resize(size, Image.Resampling.BOX)
    return image if image.mode == "RGBA" else image.convert("RGBA")


def dominant_colour(rgba: bytes) -> str | None:
    """The alpha-weighted mean of RGBA bytes as "#rrggbb", rounded half up; None if all clear."""
    alphas = rgba[3::4]
    weight = sum(alphas)
    if weight == 0:
        return None
    channels = (sum(map(mul, rgba[offset::4], alphas)) for offset in range(3))
    return "#" + "".join(f"{(2 * total + weight) // (2 * weight):02x}" for total in channels)


def thumbhash(width: int, height: int, rgba: bytes) -> str:
    """ThumbHash of RGBA bytes (not premultiplied), as the reference `rgbaToThumbHash`."""
    if not (0 < width <= 100 and 0 < height <= 100) or len(rgba) != width * height * 4:
        raise ValueError(f"{width}x{height} with {len(rgba)} bytes is no RGBA image of <=100x100")
    count = width * height
    # Per pixel, the reference's own arithmetic, mapped over whole channels in C.
    alphas = list(map(truediv, rgba[3::4], repeat(255)))
    weights = list(map(truediv, alphas, repeat(255)))
    total_alpha = fsum(alphas)
    has_alpha = total_alpha < count
    l_limit = 5 if has_alpha else 7  # fewer luminance terms when alpha needs the bytes
    longest = max(width, height)
    lx = max(1, _round(l_limit * width / longest))
    ly = max(1, _round(l_limit * height / longest))

    # RGBA -> LPQA, composited over the average colour (a no-op when opaque: the
    # reference adds average * 0.0, which leaves every value as it was).
    channels = [rgba[offset::4] for offset in range(3)]
    if has_alpha:
        clear = list(map(sub, repeat(1), alphas))
        averages = [fsum(map(mul, weights, channel)) for channel in channels]
        if total_alpha:
            averages = [average / total_alpha for average in averages]
        r, g, b = (
            list(map(add, map(mul, repeat(average), clear), map(mul, weights, channel)))
            for average, channel in zip(averages, channels, strict=True)
        )
    else:
        r, g, b = (list(map(mul, weights, channel)) for channel in channels)
    red_plus_green = list(map(add, r, g))
    lum = list(map(truediv, map(add, red_plus_green, b), repeat(3)))
    yellow_blue = list(map(sub, map(truediv, red_plus_green, repeat(2)), b))
    red_green = list(map(sub, r, g))

    def encode(channel: list[float], nx: int, ny: int) -> tuple[float, list[float], float]:
        return _encode_channel(channel, width, height, nx, ny)

    l_dc, l_ac, l_scale = encode(lum, max(3, lx), max(3, ly))
    p_dc, p_ac, p_scale = encode(yellow_blue, 3, 3)
    q_dc, q_ac, q_scale = encode(red_green, 3, 3)

    is_landscape = width > height
    header24 = (
        _round(63 * l_dc)
        | _round(31.5 + 31.5 * p_dc) << 6
        | _round(31.5 + 31.5 * q_dc) << 12
        | _round(31 * l_scale) << 18
        | has_alpha << 23
    )
    header16 = (
        (ly if is_landscape else lx)
        | _round(63 * p_scale) << 3
        | _round(63 * q_scale) << 9
        | is_landscape << 15
    )
    out = [header24 & 255, (header24 >> 8) & 255, header24 >> 16, header16 & 255, header16 >> 8]
    factors = [l_ac, p_ac, q_ac]
    if has_alpha:
        a_dc, a_ac, a_scale = encode(alphas, 5, 5)
        out.append(_round(15 * a_dc) | _round(15 * a_scale) << 4)
        factors.append(a_ac)
    nibbles = [_round(15 * f) for ac in factors for f in ac]
    nibbles.append(0)  # an odd count leaves the last byte's high nibble zero, as the reference
    out.extend(low | high << 4 for low, high in zip(nibbles[0::2], nibbles[1::2], strict=False))
    return base64.b64encode(bytes(out)).decode("ascii")


def _encode_channel(
    channel: list[float], width: int, height: int, nx: int, ny: int
) -> tuple[float, list[float], float]:
    """DC, normalised AC terms and their scale: the reference's `encodeChannel`, summed
    separably (each row against each x cosine, then each column sum against each y cosine)."""
    x_cosines = _cosines(width, nx)
    y_cosines = _cosines(height, ny)
    rows = [channel[start : start + width] for start in range(0, width * height, width)]
    # by_x[cx][y]: row y summed against the cx-th cosine.
    by_x = [[fsum(map(mul, row, x_cosines[cx])) for row in rows] for cx in range(nx)]
    dc, ac, scale = 0.0, [], 0.0
    for cy in range(ny):
        cx = 0
        while cx * ny < nx * (ny - cy):
            f = fsum(map(mul, by_x[cx], y_cosines[cy])) / (width * height)
            if abs(f) < FLAT:
                f = 0.0
            if cx or cy:
                ac.append(f)
                scale = max(scale, abs(f))
            else:
                dc = f
            cx += 1
    if scale:
        ac = [0.5 + 0.5 / scale * f for f in ac]
    return dc, ac, scale


@lru_cache(maxsize=256)
def _cosines(size: int, terms: int) -> tuple[tuple[float, ...], ...]:
    return tuple(
        tuple(round(math.cos(math.pi / size * k * (i + 0.5)), 12) for i in range(size))
        for k in range(terms)
    )


def _round(value: float) -> int:
    """JavaScript's Math.round (half up), which the reference uses; Python's rounds half even."""
    return math.floor(value + 0.5)
