"""Pillow's errors on hostile bytes, and the one place they become `corrupt_image`.

`pillow_errors_are_corrupt` wraps Pillow calls only: the tuple below holds
`ValueError`, `TypeError`, `ZeroDivisionError` and the like, so our own
arithmetic inside it would be reported as a broken image instead of a bug.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager

from functions.core.records import PermanentError

# What Pillow may raise while parsing or decoding hostile bytes.
PILLOW_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    struct.error,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
)


@contextmanager
def pillow_errors_are_corrupt(message: str) -> Iterator[None]:
    """Around Pillow calls only: what they raise on bad bytes becomes `corrupt_image`."""
    try:
        yield
    except PILLOW_ERRORS as error:
        raise PermanentError("corrupt_image", f"{message} ({describe(error)})") from None


def describe(error: BaseException) -> str:
    """The error's type and the first line of its message, at most 120 characters of it."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text[:120]}" if text else type(error).__name__
