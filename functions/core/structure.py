"""Walk a file's container structure before Pillow does, with caps on what is walked.

Pillow parses headers in Python, one segment, chunk or block at a time, and some
walks cost more than their bytes suggest: 700 APP1 Exif segments are joined
quadratically (9.5 s for 45 MB), `n_frames` of a GIF steps through every frame
(5.7 s for two million), a PNG's ancillary chunks are read one by one. These walks
are cheap here (no decoding, no copies) and stop at the first cap exceeded, so
every file under `maxBytes` is judged in well under a second, and Pillow is then
only handed structures it walks in milliseconds.

Pure: the standard library only, no Pillow.
"""

from __future__ import annotations

import struct

from functions.core.records import PermanentError

# JPEG: segments before the first scan (SOS). Real files carry a handful: APP0, one
# Exif APP1, an XMP APP1 or two, ICC profile chunks in APP2 (a 4 MB profile is 64),
# APP13/APP14, tables. Pillow concatenates repeated Exif segments quadratically.
JPEG_MAX_SEGMENTS = 512
JPEG_MAX_EXIF_SEGMENTS = 8
MAX_METADATA_BYTES = 16 * 1024 * 1024
# PNG: chunks before the first IDAT (Pillow reads each in Python), and in the whole
# file (Pillow feeds each IDAT to the decoder from Python; encoders write 8-64 KB ones).
PNG_MAX_CHUNKS_BEFORE_PIXELS = 1024
PNG_MAX_CHUNKS = 100_000
# GIF: data sub-blocks are at most 255 bytes and encoders fill them, so a 50 MB GIF has
# about 200,000; a file cut into millions of 1-byte blocks is built to be slow to walk.
GIF_MAX_SUBBLOCKS = 1_000_000


def scan_structure(data: bytes, detected: str, max_frames: int) -> int | None:
    """Check the structure Pillow would walk; the frame count where it had to be counted.

    Raises `PermanentError` (`too_much_metadata`, `too_many_frames`, `corrupt_image`)
    at the first cap exceeded. Returns the number of frames of a GIF (counted up to
    `max_frames`), None for formats whose frame count Pillow reads from a header.
    """
    if detected == "JPEG":
        _scan_jpeg(data)
    elif detected == "PNG":
        _scan_png(data)
    elif detected == "GIF":
        return _count_gif_frames(data, max_frames)
    return None


def _too_much_metadata(message: str) -> PermanentError:
    return PermanentError("too_much_metadata", message)


def _scan_jpeg(data: bytes) -> None:
    position, segments, exif_segments, metadata_bytes = 2, 0, 0, 0
    end = len(data)
    while position + 4 <= end:
        if data[position] != 0xFF:
            return  # not a marker: Pillow will call it corrupt, cheaply
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xD8 or 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length
            position += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan, end of image: the header is over
            return
        (length,) = struct.unpack_from(">H", data, position + 2)
        segments += 1
        if segments > JPEG_MAX_SEGMENTS:
            raise _too_much_metadata(
                f"the JPEG has more than {JPEG_MAX_SEGMENTS} segments before its image data"
            )
        if 0xE0 <= marker <= 0xEF or marker == 0xFE:  # APPn and comments
            metadata_bytes += length
            if marker == 0xE1 and data[position + 4 : position + 10] == b"Exif\x00\x00":
                exif_segments += 1
        if exif_segments > JPEG_MAX_EXIF_SEGMENTS:
            raise _too_much_metadata(
                f"the JPEG has more than {JPEG_MAX_EXIF_SEGMENTS} Exif (APP1) segments; "
                "a camera writes one"
            )
        if metadata_bytes > MAX_METADATA_BYTES:
            raise _too_much_metadata(
                f"the JPEG carries more than {MAX_METADATA_BYTES} bytes of metadata"
            )
        position += 2 + length


def _scan_png(data: bytes) -> None:
    position, chunks, before_pixels = 8, 0, True
    end = len(data)
    while position + 8 <= end:
        length, kind = struct.unpack_from(">I4s", data, position)
        chunks += 1
        if kind == b"IDAT":
            before_pixels = False
        elif before_pixels and chunks > PNG_MAX_CHUNKS_BEFORE_PIXELS:
            raise _too_much_metadata(
                f"the PNG has more than {PNG_MAX_CHUNKS_BEFORE_PIXELS} chunks before its pixels"
            )
        if chunks > PNG_MAX_CHUNKS:
            raise PermanentError(
                "corrupt_image",
                f"the PNG is cut into more than {PNG_MAX_CHUNKS} chunks (encoders write "
                "8-64 KB ones); refused before walking further",
            )
        if kind == b"IEND":
            return
        position += 12 + length


def _count_gif_frames(data: bytes, max_frames: int) -> int:
    """Image descriptors up to `max_frames`, walking blocks by their lengths (no LZW)."""
    end = len(data)
    if end < 13:
        return 1  # Pillow says what is wrong with it
    flags = data[10]
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames = subblocks = 0
    while position < end:
        introducer = data[position]
        if introducer == 0x3B:  # trailer
            break
        if introducer == 0x21:  # extension: label, then sub-blocks
            position += 2
        elif introducer == 0x2C:  # image descriptor, local colour table, LZW code size
            frames += 1
            if frames > max_frames:
                raise PermanentError(
                    "too_many_frames", f"the GIF has more than {max_frames} frames, the limit"
                )
            if position + 10 > end:
                break
            local = data[position + 9]
            position += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0) + 1
        else:
            break  # garbage after the last frame: Pillow stops there too
        # Sub-blocks: a length byte, then that many bytes; a zero length ends them.
        while position < end:
            size = data[position]
            position += 1 + size
            if size == 0:
                break
            subblocks += 1
            if subblocks > GIF_MAX_SUBBLOCKS:
                raise PermanentError(
                    "corrupt_image",
                    f"the GIF is cut into more than {GIF_MAX_SUBBLOCKS} data blocks (encoders "
                    "write 255-byte ones); refused before walking further",
                )
    return max(frames, 1)
