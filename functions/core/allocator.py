"""Give the memory of a large image back to the OS once it is done.

glibc keeps freed heap memory for reuse, and keeps it per thread arena: after a
100-megapixel image rendered on a worker thread (functions-framework serves on
threads; the dev pipeline runs three workers) the process stayed 110-180 MB above
its baseline for good. `malloc_trim(0)` returns the free pages of every arena in
about 2 ms. It is only called when an image left the process more than
`RETAIN_LIMIT` above its resting size (the smallest it was when an image began), so
the common image keeps its warm heap (the next decode would otherwise page-fault its
buffers in again). Fixing the mmap
threshold instead returns everything at once, but cost a 12 MP JPEG about 20% in
page faults on every image.

A no-op where there is no /proc or no glibc (macOS, musl).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

RETAIN_LIMIT = 48 * 1024 * 1024
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int | None:
    """This process's resident set size, from /proc/self/statm (about 20 µs)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


@cache
def _malloc_trim():  # -> the C function, or None
    # Imported here, on the first large image: ctypes.util alone is ~15 ms of a cold start.
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


class _RestingSize:
    """The smallest resident size seen when an image began: what the process comes back to."""

    def __init__(self) -> None:
        self.bytes: int | None = None

    def saw(self, resident: int) -> None:
        # Unlocked: two workers racing here can only keep the larger of two minima a moment.
        if self.bytes is None or resident < self.bytes:
            self.bytes = resident


_resting = _RestingSize()


@contextmanager
def memory_returned_when_large() -> Iterator[None]:
    """Trim the heap after the block when the process is more than RETAIN_LIMIT above its
    resting size. Measured from the resting size, not from the block's start: images that
    each keep a little less than the limit must not add up to a process that never shrinks."""
    before = resident_bytes()
    if before is not None:
        _resting.saw(before)
    try:
        yield
    finally:
        after = resident_bytes()
        resting = _resting.bytes
        grew = after is not None and resting is not None and after - resting > RETAIN_LIMIT
        trim = _malloc_trim() if grew else None
        if trim is not None:
            trim(0)
