"""Complete-line buffering shared by every incremental parser.

Only whole lines (ending in ``\\n``) are handed on, so a partial last line waits for the rest; a
line that grows past ``max_line_bytes`` is quarantined and skipped to its end, so memory stays
bounded whatever the input.
"""
from __future__ import annotations

import numpy as np

from zeekml.parse.batch import LogBatch
from zeekml.parse.reject import Quarantine

DEFAULT_MAX_LINE_BYTES = 1 << 20

MAX_JSON_DEPTH = 64
"""Deepest JSON nesting a line may have. Zeek JSON logs nest 2 levels and eve.json about 5; a
line nested thousands deep crashes pyarrow's JSON reader (a segfault near 20,000 levels),
costs it quadratic time from about 8,000, and makes Python's ``json`` raise ``RecursionError``
near 1,000, so such lines are quarantined before any JSON parser sees them."""



def json_depth(line: bytes) -> int:
    """Deepest bracket nesting of one JSON line, ignoring brackets inside strings (linear time).

    A quote preceded by an odd run of backslashes is escaped; brackets between an unescaped
    quote and the next one are string content. For invalid JSON the count may differ from
    what a parser would see after the first error, but never before it, which is where a
    parser recurses.
    """
    a = np.frombuffer(line, dtype=np.uint8)
    if a.size == 0:
        return 0
    idx = np.arange(a.size)
    last_plain = np.maximum.accumulate(np.where(a != 0x5C, idx, -1))
    q = np.flatnonzero(a == 0x22)
    prev = q - 1
    run = np.where(prev >= 0, prev - last_plain[np.maximum(prev, 0)], 0)
    marks = np.zeros(a.size, dtype=np.int8)
    marks[q[run % 2 == 0]] = 1
    inside = (np.cumsum(marks, dtype=np.int64) & 1).astype(bool)
    step = ((a == 0x5B) | (a == 0x7B)).astype(np.int32) - ((a == 0x5D) | (a == 0x7D))
    step[inside] = 0
    return int(np.cumsum(step).max(initial=0))


def too_deep_lines(block: bytes, max_depth: int = MAX_JSON_DEPTH) -> set[int]:
    """0-based indices of the lines of ``block`` nested deeper than ``max_depth``.

    Cheap first: a line with at most ``max_depth`` opening brackets cannot be deeper, and only
    the others get the exact (string-aware) scan.
    """
    if block.count(b"[") + block.count(b"{") <= max_depth:
        return set()
    a = np.frombuffer(block, dtype=np.uint8)
    opens = np.flatnonzero((a == 0x5B) | (a == 0x7B))
    ends = np.flatnonzero(a == 0x0A)
    if not ends.size or ends[-1] != a.size - 1:
        ends = np.append(ends, a.size)
    per_line = np.diff(np.searchsorted(opens, ends), prepend=0)
    out = set()
    for i in np.flatnonzero(per_line > max_depth):
        start = int(ends[i - 1]) + 1 if i else 0
        if json_depth(block[start:int(ends[i])]) > max_depth:
            out.add(int(i))
    return out


class LineFeeder:
    """Base of the incremental parsers: ``feed(bytes)``, ``finish()``, ``consumed_offset``.

    Subclasses implement ``_consume(block, final)`` for a block of whole lines (``final``: the
    block is the unterminated last line of a closed file) and advance ``offset``/``line_no``.
    """

    def __init__(self, source: str, quarantine: Quarantine,
                 max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, start_offset: int = 0,
                 start_line: int = 0):
        self.source = source
        self.quarantine = quarantine
        self.max_line_bytes = max_line_bytes
        self.offset = start_offset        # offset of the first byte not yet consumed
        self.line_no = start_line         # lines consumed so far
        self._buf = bytearray()
        self._skipping = False            # inside an overlong line, discarding to its end

    @property
    def consumed_offset(self) -> int:
        """Byte offset just past the last complete line processed."""
        return self.offset

    def feed(self, data: bytes) -> list[LogBatch]:
        if self._skipping:
            nl = data.find(b"\n")
            if nl < 0:
                self.offset += len(data)
                return []
            self.offset += nl + 1
            self.line_no += 1
            self._skipping = False
            data = data[nl + 1:]
        self._buf += data
        out: list[LogBatch] = []
        last = self._buf.rfind(b"\n")
        if last >= 0:
            block = bytes(self._buf[:last + 1])
            del self._buf[:last + 1]
            out = self._consume(block, final=False)
        if len(self._buf) > self.max_line_bytes:
            self.quarantine.reject(self.source, self.line_no + 1, self.offset,
                                   f"line longer than {self.max_line_bytes} bytes", bytes(self._buf[:512]))
            self.offset += len(self._buf)
            self._buf.clear()
            self._skipping = True
        return out

    def finish(self) -> list[LogBatch]:
        """End of a closed file: a last line without ``\\n`` is a whole record (IoT-23 files)."""
        out: list[LogBatch] = []
        if self._buf and not self._skipping:
            block = bytes(self._buf)
            self._buf.clear()
            out = self._consume(block, final=True)
        self._buf.clear()
        self._skipping = False
        return out

    def _consume(self, block: bytes, final: bool) -> list[LogBatch]:
        raise NotImplementedError
