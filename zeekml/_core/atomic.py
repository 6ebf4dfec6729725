"""Whole writes: every byte of a buffer to a descriptor, and files replaced atomically."""
from __future__ import annotations

import os
from typing import Callable


def write_all(fd: int, data: bytes, write: Callable[[int, memoryview], int] = os.write) -> None:
    """Write all of ``data`` (``os.write`` may write less than asked). ``write`` is injectable so
    callers' fault-injection tests keep working."""
    view = memoryview(data)
    while view:
        view = view[write(fd, view):]


def write_fsync(path: str, data: bytes, flags: int = os.O_TRUNC,
                write: Callable[[int, memoryview], int] = os.write) -> None:
    """Create ``path`` (``flags`` adds O_TRUNC or O_EXCL), write ``data`` whole and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o644)
    try:
        write_all(fd, data, write)
        os.fsync(fd)
    finally:
        os.close(fd)
