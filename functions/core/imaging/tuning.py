"""The tuning constants of the image stages, one line each on why the value.

The measurements behind them are in README.md, "Performance" (Tuning constants).
"""

from __future__ import annotations

# A reduced JPEG decode keeps >= 1.8 source pixels per output pixel: from 1.8 up every corpus
# JPEG stays above 45 dB against a full decode, and a 12 MP photo still decodes at 1/2.
DRAFT_MARGIN = 1.8
# A smaller rendition is cut from a larger one only with >= 2 pixels per output pixel to spare.
DERIVE_MARGIN = 2.0
# Pillow box-reduces until LANCZOS has at most 3x left: indistinguishable from LANCZOS alone.
REDUCING_GAP = 3.0
# A full-size JPEG decode is halved with a 2x2 box while LANCZOS keeps >= 1.5x (52-53 dB).
JPEG_BOX_HALVING_MARGIN = 1.5
# Pixel-sharp graphics (PNG, GIF, WebP) need >= 2.0x left after halving to stay above 45 dB.
BOX_HALVING_MARGIN = 2.0
# Long side over short side beyond which an image is refused before decoding.
MAX_ASPECT_RATIO = 100
# Output pixels per strip of a large resize: bounds LANCZOS's first pass, at the same speed.
STRIP_PIXELS = 400_000
