"""Opening output files safely: the one way every zeekml writer creates or opens an output.

An output directory may be shared with, or writable by, someone else (``--out /tmp/x``, a log
directory that other users can write). Whatever they planted there must not make zeekml write
somewhere else, so ``open_output``:

- opens with ``O_NOFOLLOW``: a symbolic link in place of an output is an ``OutputError``
  naming it, never a write to the link's target;
- refuses anything but a regular file with one link (a FIFO would block the open, a device or
  a hard link to another file would be written through);
- creates with mode 0640 (``OUTPUT_MODE``; quarantine 0600, ``PRIVATE_MODE``: it holds raw input
  lines), and tightens an existing file of ours that is wider than that;
- truncates only after those checks, so a refused file is left as it was.

``OutputFile`` is the buffered writer on top of it. Its writes go through ``os.write`` looked up at
call time, so fault-injection tests (``monkeypatch.setattr(os, "write", ...)``) reach them, and
every ``OSError`` (a full disk in ``write``, ``fsync`` or ``close``) is an ``OutputError`` naming
the file.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat

from zeekml._core.errors import OutputError

OUTPUT_MODE = 0o640
"""Mode of the outputs zeekml creates (before the umask)."""

PRIVATE_MODE = 0o600
"""Mode of outputs that hold raw input (the quarantine): only zeekml's user reads them."""

_BUFFER = 1 << 20


def open_output(path: str | os.PathLike, *, mode: int = OUTPUT_MODE, truncate: bool = True,
                append: bool = False, readable: bool = False, what: str = "") -> int:
    """Open output ``path`` for writing and return the descriptor (see the module docstring).

    Args:
        path: the output file; created if missing.
        mode: permission bits for a new file (default ``OUTPUT_MODE``); an existing file owned
            by this user loses the bits outside ``mode``.
        truncate: empty the file (default True); False keeps its content (append-only logs
            that are cut back to a committed length).
        append: ``O_APPEND`` (default False).
        readable: open read-write instead of write-only (default False).
        what: names the output in error messages, ``cannot write <what>: ...`` (default: none).

    Raises:
        OutputError: the path is a symbolic link, not a regular file, has other hard links, or
            cannot be opened; the message names it.
    """
    path = os.fspath(path)
    flags = ((os.O_RDWR if readable else os.O_WRONLY) | os.O_CREAT | os.O_NOFOLLOW
             | os.O_CLOEXEC | os.O_NONBLOCK)   # O_NONBLOCK: a planted FIFO fails, never blocks
    if append:
        flags |= os.O_APPEND
    try:
        fd = os.open(path, flags, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OutputError("is a symbolic link; zeekml does not write through links "
                              "(remove it or choose another output)", path) from e
        if e.errno == errno.ENXIO:
            raise OutputError("is not a regular file (a FIFO or socket)", path) from e
        raise OutputError(f"{_cannot(what)}: {e.strerror}", path) from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OutputError("is not a regular file", path)
        if st.st_nlink > 1:
            raise OutputError(f"has {st.st_nlink - 1} other hard link(s); zeekml does not "
                              "write through links (remove it or choose another output)", path)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        perm = stat.S_IMODE(st.st_mode)
        if st.st_uid == os.geteuid() and perm & ~mode:
            os.fchmod(fd, perm & mode)
        if truncate and st.st_size:
            os.ftruncate(fd, 0)
    except OutputError:
        os.close(fd)
        raise
    except OSError as e:
        os.close(fd)
        raise OutputError(f"{_cannot(what)}: {e.strerror}", path) from e
    return fd


def _cannot(what: str) -> str:
    return f"cannot write {what}" if what else "cannot write"


class OutputFile:
    """A buffered binary output opened with ``open_output``; ``OutputError`` on any failure.

    Args:
        path: the output file (truncated unless ``truncate=False``).
        mode: permission bits of a new file (default ``OUTPUT_MODE``).
        truncate, append, what: as ``open_output``.

    After a failed write the file is marked failed: ``close`` then only releases the descriptor
    (flushing again would fail again and hide the first error).
    """

    def __init__(self, path: str | os.PathLike, *, mode: int = OUTPUT_MODE,
                 truncate: bool = True, append: bool = False, what: str = ""):
        self.path = os.fspath(path)
        self.what = what
        self._fd = open_output(self.path, mode=mode, truncate=truncate, append=append,
                               what=what)
        self._buf = bytearray()
        self.failed = False

    @property
    def closed(self) -> bool:
        """Whether ``close`` has run."""
        return self._fd < 0

    def _error(self, e: OSError) -> OutputError:
        self.failed = True
        return OutputError(f"{_cannot(self.what)}: {e.strerror or e}", self.path)

    def _write_out(self, data: bytes | bytearray) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]   # os.write looked up now: see docstring
        except OSError as e:
            raise self._error(e) from e

    def write(self, data: bytes) -> None:
        """Append ``data`` (buffered up to 1 MiB)."""
        if self.failed:
            raise OutputError("an earlier write failed", self.path)
        if self._buf and len(self._buf) + len(data) > _BUFFER:
            self.flush()
        if len(data) >= _BUFFER:
            self._write_out(data)
        else:
            self._buf += data

    def flush(self) -> None:
        """Write out the buffer."""
        if self._buf:
            data, self._buf = self._buf, bytearray()
            self._write_out(data)

    def close(self, fsync: bool = True) -> None:
        """Flush, fsync (unless ``fsync=False``) and close; the descriptor is released even when
        that fails (``OutputError``). Closing twice does nothing."""
        if self._fd < 0:
            return
        try:
            if not self.failed:
                self.flush()
                if fsync:
                    os.fsync(self._fd)
        except OSError as e:
            raise self._error(e) from e
        finally:
            fd, self._fd = self._fd, -1
            try:
                os.close(fd)
            except OSError as e:
                if not self.failed:     # never hides the error that failed the file first
                    raise self._error(e) from e

    def __del__(self) -> None:
        # like a Python file object dropped unclosed: flush, close, no fsync, errors ignored
        # (every writer here closes explicitly; this only keeps descriptors from leaking)
        if getattr(self, "_fd", -1) >= 0:
            try:
                self.close(fsync=False)
            except OutputError:
                pass

    def __enter__(self) -> "OutputFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
