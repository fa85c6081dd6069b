"""Colour management: every rendition in sRGB, an embedded ICC profile honoured."""

from __future__ import annotations

from functools import lru_cache
from io import BytesIO

from PIL import Image

from functions.core.imaging.errors import describe


def to_srgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    """RGB or RGBA in sRGB. An embedded profile is honoured; a broken one is ignored."""
    if image.mode == "RGBX":
        image = image.convert("RGB")
    alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else None
    colour = image.convert(image.mode[:-1]) if alpha is not None else image
    converted = None
    if icc:
        transform = _transform_to_srgb(icc, colour.mode)
        if transform is not None:
            from PIL import ImageCms

            converted = ImageCms.applyTransform(colour, transform)
    if converted is None:
        converted = colour if colour.mode == "RGB" else colour.convert("RGB")
    if alpha is not None:
        converted.putalpha(alpha)
    return converted


@lru_cache(maxsize=1)
def srgb_profile():  # -> ImageCms.ImageCmsProfile (imported lazily: most images have no ICC)
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@lru_cache(maxsize=32)
def _transform_to_srgb(icc: bytes, mode: str):  # -> ImageCms.ImageCmsTransform | None
    """Built once per (profile, mode): building a LittleCMS transform costs milliseconds."""
    from PIL import ImageCms

    try:
        source = ImageCms.ImageCmsProfile(BytesIO(icc))
        return ImageCms.buildTransform(source, srgb_profile(), mode, "RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as error:
        import logging  # only here: ~10 ms of a cold start for a rare message

        logging.getLogger("imagepipe").info(
            "ignoring an unusable ICC profile (%s)", describe(error)
        )
        return None
