"""File identity for the live tailer: what a log holds, never what it is called.

A Zeek log is renamed on rotation (``conn.log`` -> ``conn.2024-01-01-10-00-00.log``), then maybe
gzipped into an archive directory under yet another name, and a standalone Zeek restart truncates
``conn.log`` in place (same inode, new content). So a file is known by:

- ``content_id``: a hash of its identifying head, computed on the *uncompressed* bytes, so the
  live, renamed and gzipped copies of one log share it. For Zeek TSV the head is every leading
  ``#`` meta line (``#open`` included: every TSV file starts with the same ``#separator \\x09``)
  plus the first record line; for JSON (and anything else) it is the first line, i.e. the first
  record. Until that head is complete on disk the file has no identity yet (``None``) and waits.
- ``dev`` and ``ino``: where the bytes live now. The tailer uses them to notice that a known inode
  now holds other content (in-place truncation, inode reuse) and to follow a renamed file.

``tail_digest`` hashes the bytes just before a checkpoint offset; the tailer checks it when it
resumes, so content rewritten under an unchanged head is also noticed.
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import io
import logging
import os
import stat
import zlib
from dataclasses import dataclass

log = logging.getLogger(__name__)

HEAD_MAX_BYTES = 64 << 10
"""The identifying head is at most this many bytes (a longer first line is cut here)."""

TAIL_BYTES = 256
"""``tail_digest`` hashes at most this many bytes before the offset."""

GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class Fingerprint:
    """The identity of one file on disk.

    Attributes:
        content_id: hash of the uncompressed identifying head (32 hex digits).
        dev: device of the file.
        ino: inode of the file.
        compressed: the file is a gzip archive.
        head_len: how many uncompressed bytes the head spans.
    """

    content_id: str
    dev: int
    ino: int
    compressed: bool
    head_len: int


def identifying_head(data: bytes) -> bytes | None:
    """The identifying head at the start of ``data`` (uncompressed), or ``None`` while incomplete.

    Zeek TSV: the leading ``#`` lines and the first record line after them. Anything else: the
    first line. A head that would be longer than ``HEAD_MAX_BYTES`` is cut at that length once
    that many bytes exist.
    """
    end = 0
    if data.startswith(b"#"):
        while True:
            nl = data.find(b"\n", end)
            if nl < 0:
                break
            line_start, end = end, nl + 1
            if data[line_start:line_start + 1] != b"#":
                return data[:end]
            if end >= HEAD_MAX_BYTES:
                break
    else:
        nl = data.find(b"\n")
        if 0 <= nl < HEAD_MAX_BYTES:
            return data[:nl + 1]
    if len(data) >= HEAD_MAX_BYTES:
        return data[:HEAD_MAX_BYTES]
    return None


def content_id(head: bytes) -> str:
    return hashlib.sha256(head).hexdigest()[:32]


def tail_digest(data: bytes) -> str:
    """Digest of the (at most ``TAIL_BYTES``) bytes before a checkpoint offset."""
    return hashlib.sha256(data[-TAIL_BYTES:]).hexdigest()[:16]


_warned_irregular: set[str] = set()


def open_regular(path: str) -> io.BufferedReader:
    """``open(path, "rb")`` that refuses anything but a regular file without blocking.

    A FIFO named like a log would block a plain ``open`` until something writes to it (``watch``
    and ``score DIR`` hung there); it is opened non-blocking and refused with ``OSError``.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def is_gzip(path: str) -> bool:
    try:
        with open_regular(path) as f:
            return f.read(2) == GZIP_MAGIC
    except OSError:
        return False


def read_head(path: str, compressed: bool | None = None, limit: int = HEAD_MAX_BYTES) -> bytes:
    """Up to ``limit`` uncompressed bytes from the start of ``path``.

    A gzip archive that is still being written yields what can be decompressed so far.
    Raises ``OSError`` when the file cannot be opened.
    """
    if compressed is None:
        compressed = is_gzip(path)
    with open_regular(path) as raw:
        if not compressed:
            return raw.read(limit)
        out = bytearray()
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        while len(out) < limit:
            chunk = raw.read(64 << 10)
            if not chunk:
                break
            try:
                out += d.decompress(chunk, limit - len(out))
            except zlib.error:
                break
            if d.eof:
                break
        return bytes(out[:limit])


def fingerprint_file(path: str, st: os.stat_result | None = None) -> Fingerprint | None:
    """The fingerprint of ``path``, or ``None`` when it has no complete head yet (or vanished)."""
    try:
        st = st or os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            if path not in _warned_irregular and len(_warned_irregular) < 10_000:
                _warned_irregular.add(path)
                log.warning("%s: skipped: not a regular file (a FIFO, socket or device is "
                            "never opened)", path)
            return None
        compressed = is_gzip(path)
        head = identifying_head(read_head(path, compressed))
    except OSError as e:
        log.debug("%s: cannot fingerprint: %s", path, e)
        return None
    if head is None:
        return None
    return Fingerprint(content_id(head), st.st_dev, st.st_ino, compressed, len(head))


def fingerprint_fd(fd: int) -> str | None:
    """``content_id`` of the plain file open at ``fd`` (read with ``pread``; no seek)."""
    try:
        head = identifying_head(os.pread(fd, HEAD_MAX_BYTES, 0))
    except OSError:
        return None
    return content_id(head) if head is not None else None


def gzip_is_whole(path: str) -> bool:
    """Whether ``path`` is a complete gzip archive (every member ends with its trailer).

    zeekctl's ``archive-log`` writes the ``.gz`` in place, so a reader can see it half written;
    such a file fails here and is left alone until it is whole.
    """
    try:
        with open_regular(path) as raw, gzip.GzipFile(fileobj=raw, mode="rb") as f:
            while f.read(1 << 20):
                pass
        return True
    except (OSError, EOFError, zlib.error):
        return False


def stat_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What must stay equal for a cached fingerprint to stay valid."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class FingerprintCache:
    """The last fingerprint of each file (by device and inode), reused while its ``stat_key``
    is unchanged, so a rescan re-reads only files that changed. One entry per file: a growing
    live file replaces its entry instead of adding one per size."""

    def __init__(self, max_entries: int = 100_000):
        self.max_entries = max_entries
        self._fps: dict[tuple[int, int], tuple[tuple, Fingerprint]] = {}
        self._whole: dict[tuple[int, int], tuple[tuple, bool]] = {}

    def __len__(self) -> int:
        return len(self._fps)

    def get(self, path: str, st: os.stat_result) -> Fingerprint | None:
        key = stat_key(st)
        hit = self._fps.get(key[:2])
        if hit is not None and hit[0] == key:
            return hit[1]
        fp = fingerprint_file(path, st)
        if fp is not None:  # incomplete heads are retried next time
            self._remember(self._fps, key, fp)
        return fp

    def gzip_whole(self, path: str, st: os.stat_result) -> bool:
        key = stat_key(st)
        hit = self._whole.get(key[:2])
        if hit is not None and hit[0] == key:
            return hit[1]
        whole = gzip_is_whole(path)
        self._remember(self._whole, key, whole)
        return whole

    def _remember(self, d: dict, key: tuple, value) -> None:
        d.pop(key[:2], None)
        if len(d) >= self.max_entries:
            d.pop(next(iter(d)))
        d[key[:2]] = (key, value)
