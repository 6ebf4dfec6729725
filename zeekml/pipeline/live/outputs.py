"""The append-only outputs of ``zeekml watch`` and the verdict-id filter that drops repeats."""
from __future__ import annotations

import logging
import os
import re
from collections import deque
from typing import Callable

from zeekml._core.atomic import pwrite_all
from zeekml._core.errors import OutputError
from zeekml._core.outfile import OUTPUT_MODE, PRIVATE_MODE, open_output
from zeekml.pipeline.live.options import NOTICES, OUTPUTS, QUARANTINE

log = logging.getLogger(__name__)

WriteFn = Callable[[int, bytes, int], int]
# how far into a resumed Zeek log its #fields line is looked for (the header is ~8 lines)
HEADER_BYTES = 1 << 16


def fields_line(head: bytes) -> bytes | None:
    """The ``#fields`` line (no newline) of the header a Zeek log's bytes ``head`` start with;
    None when the header ends (or ``head`` does) before one."""
    for line in head.split(b"\n"):
        if line.startswith(b"#fields"):
            return line.rstrip(b"\r")
        if not line.startswith(b"#"):
            return None
    return None


class OutputFiles:
    """The append-only outputs with their durable lengths.

    At open, a file longer than its committed length is cut back (that tail was never
    committed). ``append`` writes every part at the current length and fsyncs; on any error it
    cuts every file back to its length before the call and raises ``OutputError``.

    Args:
        out_dir: the output directory.
        committed: file name -> committed length (from the checkpoint).
        write: ``os.pwrite``-like function (tests inject faults here).
        conn_notices: ``zeekml_notice.log`` is written (``--conn-notices``; default ``True``).
            Without it the file is not created; one left by a run with it is still opened and
            cut back to its committed length, and kept, so that a later run with it appends.
        fields: file name -> the ``#fields`` line (bytes, no newline) its records are written
            with. A Zeek log resumed with other columns (written by an older zeekml) is an
            ``OutputError`` naming it: appending would give lines its header does not describe.
    """

    def __init__(self, out_dir: str, committed: dict[str, int], write: WriteFn | None = None,
                 conn_notices: bool = True, fields: dict[str, bytes] | None = None):
        self.out_dir = out_dir
        self._write = write or os.pwrite
        self.lengths: dict[str, int] = {}
        self._fds: dict[str, int] = {}
        for name in OUTPUTS:
            path = os.path.join(out_dir, name)
            if name == NOTICES and not conn_notices and not os.path.lexists(path):
                continue
            # no symlinks or links (a planted one is an OutputError naming it); the quarantine
            # holds raw input lines: 0600
            try:
                fd = open_output(path, mode=PRIVATE_MODE if name == QUARANTINE else OUTPUT_MODE,
                                 truncate=False, readable=True)
            except OutputError:
                self.close()
                raise
            self._fds[name] = fd
            size = os.fstat(fd).st_size
            want = committed.get(name, 0)
            if size > want:
                if want or size:
                    log.info("%s: cutting %d uncommitted bytes", path, size - want)
                try:
                    os.ftruncate(fd, want)
                    os.fsync(fd)
                except OSError as e:
                    self.close()
                    raise OutputError(f"cannot write: {e.strerror}", path) from e
            elif size < want:
                log.warning("%s: shorter (%d) than committed (%d): it was changed by someone "
                            "else; appending after what is there", path, size, want)
                want = size
            self.lengths[name] = want
            expect = (fields or {}).get(name)
            if expect is not None and want > 0:
                have = fields_line(os.pread(fd, min(want, HEADER_BYTES), 0))
                if have is not None and have != expect:
                    self.close()
                    raise OutputError(
                        "was written with other columns (by another zeekml version): "
                        f"{have.decode('utf-8', 'replace')!r} != {expect.decode('utf-8', 'replace')!r}; "
                        "move it away or watch into another --out", path)

    def path(self, name: str) -> str:
        """Where output ``name`` is."""
        return os.path.join(self.out_dir, name)

    def append(self, parts: dict[str, bytes]) -> None:
        """Append ``parts`` (file name -> bytes) durably, all or none (``OutputError``)."""
        done: list[str] = []
        try:
            for name, data in parts.items():
                if not data:
                    continue
                fd = self._fds[name]
                pwrite_all(fd, data, self.lengths[name], self._write)
                os.fsync(fd)
                done.append(name)
        except OSError as e:
            for name in parts:
                if name not in self._fds:   # not opened (zeekml_notice.log without notices)
                    continue
                try:
                    os.ftruncate(self._fds[name], self.lengths[name])
                except OSError:
                    pass
            raise OutputError(f"cannot write: {e.strerror or e}", self.out_dir) from e
        for name, data in parts.items():
            if data:
                self.lengths[name] += len(data)

    def close(self) -> None:
        """Close the files (what was appended is already durable)."""
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()


class VerdictDedup:
    """The verdict ids written most recently (bounded), so a repeated verdict is dropped."""

    _ID = re.compile(rb'"verdict_id":"([^"]+)"')

    def __init__(self, capacity: int = 200_000):
        self.capacity = capacity
        # a set for membership and a deque for age: O(1) per id. (A dict used as a FIFO, popping
        # ``next(iter(d))``, is not: every pop leaves a dead slot at the front that the next
        # ``iter`` walks over, 50-600 us per id once full, and the table keeps growing.)
        self._ids: set[str] = set()
        self._order: deque[str] = deque()

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, vid: str) -> bool:
        """True if ``vid`` is new (and now remembered). A capacity of 0 turns dropping off."""
        if self.capacity <= 0:
            return True
        if vid in self._ids:
            return False
        self._ids.add(vid)
        self._order.append(vid)
        if len(self._order) > self.capacity:
            self._ids.discard(self._order.popleft())
        return True

    def seed_from(self, path: str, length: int, max_bytes: int = 64 << 20) -> None:
        """Remember the ids of the last lines of ``verdicts.jsonl`` (up to ``length``)."""
        if length <= 0:
            return
        start = max(0, length - max_bytes)
        try:
            with open(path, "rb") as f:
                f.seek(start)
                data = f.read(length - start)
        except OSError:
            return
        for m in self._ID.finditer(data):
            self.add(m.group(1).decode())
