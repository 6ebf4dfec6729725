"""The context journal of ``zeekml watch``: append-only, committed with the checkpoint."""
from __future__ import annotations

import os
import struct
from typing import Callable, Iterator

from zeekml._core.atomic import atomic_write, pwrite_all
from zeekml._core.errors import OutputError, ZeekmlError
from zeekml._core.outfile import open_output

WriteFn = Callable[[int, bytes, int], int]

JOURNAL_PREFIX = "context."
JOURNAL_SUFFIX = ".journal"
JOURNAL_COMPACT_BYTES = 64 << 20
JOURNAL_COMPACT_RATIO = 4
"""A journal past JOURNAL_COMPACT_BYTES and JOURNAL_COMPACT_RATIO times its live content is
rewritten as a new generation (``WatchOptions.journal_compact_*``)."""


def frame(rec: bytes) -> bytes:
    """One journal record: its length (8 bytes, little-endian), then its bytes."""
    return struct.pack("<Q", len(rec)) + rec


def records(data: bytes) -> Iterator[bytes]:
    """The records of ``frame``d data; a cut record is a ``ZeekmlError``."""
    pos = 0
    while pos + 8 <= len(data):
        (n,) = struct.unpack_from("<Q", data, pos)
        if pos + 8 + n > len(data):
            raise ZeekmlError("context journal ends inside a record")
        yield data[pos + 8:pos + 8 + n]
        pos += 8 + n


class ContextJournal:
    """``OUTDIR/context.<N>.journal``: append-only records of ``LiveContext``, committed (file
    name and length) in the checkpoint with the outputs. At open it is cut back to the committed
    length. When it has grown well past the state it holds, a new generation is written whole and
    the checkpoint switches to it; a generation is deleted once neither the checkpoint nor its
    previous generation names it."""

    def __init__(self, out_dir: str, committed: dict, write: WriteFn | None = None,
                 compact_bytes: int = JOURNAL_COMPACT_BYTES,
                 compact_ratio: float = JOURNAL_COMPACT_RATIO):
        self.out_dir = out_dir
        self.compact_bytes, self.compact_ratio = compact_bytes, compact_ratio
        self._write = write or os.pwrite
        self.name = committed.get("journal") or f"{JOURNAL_PREFIX}{1:06d}{JOURNAL_SUFFIX}"
        self.length = int(committed.get("length", 0))
        self._last_committed = self.name
        self._sweep = True          # generations left behind (a crash after a rewrite)
        self.fd = -1
        self._open(self.name, self.length)

    def _open(self, name: str, length: int) -> None:
        path = os.path.join(self.out_dir, name)
        # no symlinks or links, mode 0640: OutputError naming the file otherwise
        fd = open_output(path, truncate=False, readable=True)
        size = os.fstat(fd).st_size
        if size < length:
            os.close(fd)
            raise ZeekmlError(f"context journal is shorter ({size}) than committed ({length}); "
                              "it was changed by someone else: use a new --out", path)
        if size > length:
            try:
                os.ftruncate(fd, length)
                os.fsync(fd)
            except OSError as e:
                os.close(fd)
                raise OutputError(f"cannot write the context journal: {e.strerror}", path) from e
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = fd

    def needs_compaction(self, live_bytes: int | Callable[[], int]) -> bool:
        """Whether the journal has grown well past the ``live_bytes`` of state it holds (a
        function is called only once the journal is past ``compact_bytes``: the state's size
        means concatenating its pieces)."""
        if self.length <= self.compact_bytes:
            return False
        live = live_bytes() if callable(live_bytes) else live_bytes
        return self.length > self.compact_ratio * live

    def read(self) -> bytes:
        """The committed records."""
        return os.pread(self.fd, self.length, 0) if self.length else b""

    def append(self, data: bytes) -> None:
        """Append records durably; on failure cut back and raise ``OutputError``."""
        if not data:
            return
        try:
            pwrite_all(self.fd, data, self.length, self._write)
            os.fsync(self.fd)
        except OSError as e:
            try:
                os.ftruncate(self.fd, self.length)
            except OSError:
                pass
            raise OutputError(f"cannot write the context journal: {e.strerror or e}",
                              self.out_dir) from e
        self.length += len(data)

    def rewrite(self, data: bytes) -> None:
        """A new generation holding ``data``; the old one stays until two commits later."""
        gen = int(self.name[len(JOURNAL_PREFIX):-len(JOURNAL_SUFFIX)]) + 1
        name = f"{JOURNAL_PREFIX}{gen:06d}{JOURNAL_SUFFIX}"
        path = os.path.join(self.out_dir, name)
        try:
            atomic_write(path, data)
        except OSError as e:
            raise OutputError(f"cannot write the context journal: {e.strerror or e}", path) from e
        self._open(name, len(data))
        self.name, self.length = name, len(data)
        self._sweep = True

    def committed(self) -> dict:
        """What the checkpoint records: the generation's file name and committed length."""
        return {"journal": self.name, "length": self.length}

    def after_commit(self) -> None:
        """Delete generations that neither this commit nor the one before (``.prev``) names."""
        if self._sweep:
            keep = {self._last_committed, self.name}
            for name in os.listdir(self.out_dir):
                if name.startswith(JOURNAL_PREFIX) and name.endswith(JOURNAL_SUFFIX) \
                        and name not in keep:
                    try:
                        os.unlink(os.path.join(self.out_dir, name))
                    except OSError:
                        pass
            self._sweep = self._last_committed != self.name
        self._last_committed = self.name

    def close(self) -> None:
        """Close the journal file."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
