"""Whole writes: every byte of a buffer to a descriptor, and files replaced atomically (the one
helper for both: outputs, checkpoints, calibration, context journals, the Zeek verdict file).
Outputs written in place are opened with ``zeekml._core.outfile.open_output``."""
from __future__ import annotations

import errno
import os
import secrets
import stat
from typing import Callable

from zeekml._core.outfile import OUTPUT_MODE

WriteFn = Callable[[int, memoryview], int]


def write_all(fd: int, data: bytes, write: WriteFn | None = None) -> None:
    """Write all of ``data`` (``os.write`` may write less than asked). ``write`` is injectable,
    and the default ``os.write`` is looked up at call time, so fault-injection tests that patch
    either reach it."""
    write = write or os.write
    view = memoryview(data)
    while view:
        view = view[write(fd, view):]


def create_temp(path: str, mode: int = OUTPUT_MODE) -> tuple[str, int]:
    """A new, empty file beside ``path`` with an unpredictable name (``<name>.<random>.tmp``),
    created with ``O_EXCL | O_NOFOLLOW``: nothing planted in the directory can stand in for it.
    Returns its name and a write descriptor. ``mode`` goes through the umask, as for any new
    file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp = f"{path}.{secrets.token_hex(8)}.tmp"
        try:
            return tmp, os.open(tmp, flags, mode)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", path)


def write_temp(path: str, data: bytes, write: WriteFn | None = None,
               mode: int | None = None) -> str:
    """``data`` written whole and fsynced to a new temporary file beside ``path`` (see
    ``create_temp``); returns its name. Its mode is ``mode``, else that of an existing regular
    ``path`` of ours (a mode someone chose, e.g. to let Zeek read the verdict file, survives
    rewrites), else ``OUTPUT_MODE``. On failure the temporary file is removed."""
    keep = _existing_mode(path) if mode is None else None
    tmp, fd = create_temp(path, OUTPUT_MODE if mode is None else mode)
    try:
        try:
            if keep is not None:
                os.fchmod(fd, keep)
            write_all(fd, data, write)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def _existing_mode(path: str) -> int | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
        return stat.S_IMODE(st.st_mode)
    return None


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


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


def atomic_write(path: str, data: bytes, write: WriteFn | None = None,
                 mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` so that a reader (or a crash) sees the old file or the new
    one, never a part: a temporary file in the same directory (``write_temp``: unpredictable
    name, ``O_EXCL``), written whole and fsynced, renamed over ``path``, then the directory
    fsynced. The rename replaces a symbolic link planted at ``path`` itself, never its target.
    On failure the temporary file is removed and the ``OSError`` raised; ``path`` is
    untouched."""
    tmp = write_temp(path, data, write, mode)
    try:
        os.replace(tmp, path)
    except OSError:
        _unlink_quietly(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def atomic_write_held(path: str, data: bytes, write: WriteFn | None = None,
                      mode: int | None = None) -> tuple[int, os.stat_result]:
    """``atomic_write``, returning the new file open read-only with its ``fstat``. While the
    caller holds the descriptor the file's inode number cannot be given to another file, even
    after a later rewrite unlinks it (``sinks.zeek_input`` relies on that)."""
    tmp = write_temp(path, data, write, mode)
    try:
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        _unlink_quietly(tmp)
        raise
    try:
        st = os.fstat(fd)
        os.replace(tmp, path)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    try:
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    except BaseException:
        os.close(fd)
        raise
    return fd, st
