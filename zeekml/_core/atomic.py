"""Whole writes: every byte of a buffer to a descriptor, and files replaced atomically (the one
helper for both: outputs, checkpoints, calibration, context journals, the Zeek verdict file)."""
from __future__ import annotations

import errno
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


def pwrite_all(fd: int, data: bytes, offset: int,
               write: Callable[[int, memoryview, int], int] = os.pwrite) -> None:
    """Write all of ``data`` at ``offset`` (``os.pwrite`` may write less than asked); a write of
    nothing is an ``OSError`` (EIO), so a faulty device cannot loop forever."""
    view = memoryview(data)
    while view:
        n = write(fd, view, offset)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        view, offset = view[n:], offset + n


def fsync_dir(path: str) -> None:
    """Make a rename in directory ``path`` durable. A file system that cannot fsync a directory
    raises; the rename itself is atomic either way."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes,
                 write: Callable[[int, memoryview], int] | None = None) -> None:
    """Replace ``path`` with ``data`` so that a reader (or a crash) sees the old file or the new
    one, never a part: a temporary file in the same directory, written whole and fsynced, renamed
    over ``path``, then the directory fsynced. On failure the temporary file is removed and the
    ``OSError`` raised; ``path`` is untouched."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        write_fsync(tmp, data, write=write or os.write)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))
