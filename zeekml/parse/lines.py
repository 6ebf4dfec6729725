"""Complete-line buffering shared by every incremental parser.

Only whole lines (ending in ``\\n``) are handed on, so a partial last line waits for the rest; a
line that grows past ``max_line_bytes`` is quarantined and skipped to its end, so memory stays
bounded whatever the input.
"""
from __future__ import annotations

from zeekml.parse.batch import LogBatch
from zeekml.parse.reject import Quarantine

DEFAULT_MAX_LINE_BYTES = 1 << 20


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
