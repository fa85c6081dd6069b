"""Rendition keys: derived from the content hash and the rendition spec, never from
the upload's name, so the same bytes uploaded twice share their renditions and a
changed spec never overwrites what a CDN may have cached.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from urllib.parse import quote

from functions.core.settings import RenditionSpec

# Bump when a change to the core alters output bytes for an unchanged spec:
# a new key is the only safe way to change an object served as immutable.
RENDER_VERSION = 2  # 2: alpha stays premultiplied between renditions derived from each other

EXTENSIONS = {"jpeg": "jpg", "webp": "webp", "png": "png", "avif": "avif", "gif": "gif"}


def spec_digest(spec: RenditionSpec, output_format: str) -> str:
    """What the rendering of one spec into one format depends on, besides the content."""
    spec_text = f"v{RENDER_VERSION}:{spec.to_compact()}:{output_format}"
    return hashlib.sha256(spec_text.encode()).hexdigest()[:10]


def rendition_key(content_sha256: str, spec: RenditionSpec, output_format: str) -> str:
    """`<sha256>/<name>-<WxH>-<fit>-<spec digest>.<ext>`: URL-safe and immutable.

    A stored rendition whose key equals this one was made from these bytes by this spec,
    in this format, by this render version: what reusing it checks."""
    digest = spec_digest(spec, output_format)
    extension = EXTENSIONS[output_format]
    box = f"{spec.width}x{spec.height}"
    return f"{content_sha256}/{spec.name}-{box}-{spec.fit}-{digest}.{extension}"


def invalidation_paths(keys: Sequence[str]) -> list[str]:
    """The CDN paths that drop these renditions: `/<sha256>/*` per content prefix among the
    keys (a wildcard is one path, and covers every spec's renditions of those bytes); a key
    without a prefix as itself."""
    paths = {
        f"/{quote(key.partition('/')[0])}/*" if "/" in key else f"/{quote(key)}" for key in keys
    }
    return sorted(paths)
