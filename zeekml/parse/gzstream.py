"""Reading a gzip archive as far as it decompresses, as ``zcat`` does.

Python's ``gzip`` module raises ``EOFError`` on a truncated archive from inside a large
``read``, losing every byte that ``read`` had decompressed: a cut ``.gz`` of 9,801 records gave
none. ``GzipStream`` first returns every complete line before the damage, then raises, naming
the byte reached, so the records before it are kept.
"""
from __future__ import annotations

import os
import sys
import zlib
from typing import BinaryIO

_COMPRESSED_CHUNK = 256 << 10


class GzipStream:
    """A read-only stream of the uncompressed bytes of a gzip file, readable up to any damage.

    ``read`` returns decompressed data as long as there is some, in whole lines until the end
    is reached. A truncated archive (the last member has no end) or corrupt data (a zlib error,
    a wrong CRC) raises ``EOFError`` or ``zlib.error`` only once every whole line before the
    damage has been returned; the bytes of the cut line are never returned (a cut line is no
    record), and the error message gives the uncompressed and compressed byte offsets reached. Concatenated
    members and trailing zero padding are read as ``gzip``/``zcat`` do.

    Args:
        raw: the compressed file, open for binary reading at its start.
        path: its name, for messages.
    """

    def __init__(self, raw: BinaryIO, path: str = ""):
        self._raw = raw
        self.path = path
        self._d: "zlib._Decompress | None" = None
        self._in = b""              # compressed bytes not yet given to the decompressor
        self._buf = bytearray()     # decompressed bytes not yet returned
        self._pos = 0               # uncompressed bytes returned so far
        self._compressed = 0        # compressed bytes read from raw
        self._members = 0           # members read to their end
        self._done = False
        self._error: Exception | None = None

    # -- file protocol ---------------------------------------------------------------------

    def read(self, size: int = -1) -> bytes:
        want = sys.maxsize if size is None or size < 0 else size
        self._fill(want)
        if not self._buf and self._error is not None:
            raise self._error
        n = min(want, len(self._buf))
        if not self._done:
            # more may follow, or a cut: hand on whole lines only, so that the start of a line
            # cut by damage found later never reaches the reader (a line longer than ``size``
            # goes in pieces; the parsers quarantine such lines anyway)
            nl = self._buf.rfind(b"\n", 0, n)
            if nl >= 0:
                n = nl + 1
        if n == len(self._buf):
            out = bytes(self._buf)
            self._buf.clear()
        else:
            out = bytes(self._buf[:n])
            del self._buf[:n]
        self._pos += n
        return out

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Forward only (by decompressing and discarding), or back to 0 from the start."""
        target = offset if whence == os.SEEK_SET else self._pos + offset
        if whence not in (os.SEEK_SET, os.SEEK_CUR) or target < self._pos:
            raise OSError(f"{self.path}: a gzip stream seeks forward only")
        while self._pos < target:
            if not self.read(min(target - self._pos, 1 << 20)):
                break
        return self._pos

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> "GzipStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- decompression ---------------------------------------------------------------------

    def _fill(self, want: int) -> None:
        while len(self._buf) < want and not self._done:
            if not self._in:
                self._in = self._raw.read(_COMPRESSED_CHUNK)
                self._compressed += len(self._in)
                if not self._in:
                    if self._d is not None:
                        try:
                            self._buf += self._d.flush()   # what zlib still holds of the cut member
                        except zlib.error:
                            pass
                        self._fail(EOFError, "compressed data ends before the end of the archive")
                    self._done = True
                    break
            if self._d is None:
                if self._members:
                    # zero padding after a member is allowed (gzip, zcat); anything else starts one
                    self._in = self._in.lstrip(b"\x00")
                    if not self._in:
                        continue
                self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                out = self._d.decompress(self._in, want - len(self._buf))
            except zlib.error as e:
                self._fail(zlib.error, f"damaged compressed data ({e})")
                self._done = True
                break
            self._buf += out
            if self._d.eof:
                self._in = self._d.unused_data
                self._d = None
                self._members += 1
            else:
                self._in = self._d.unconsumed_tail

    def _fail(self, kind: type[Exception], what: str) -> None:
        """Hold back the cut line after the last newline and remember the error for later."""
        reached = self._pos + len(self._buf)
        nl = self._buf.rfind(b"\n")
        cut = len(self._buf) - (nl + 1)
        del self._buf[nl + 1:]
        self._error = kind(f"{what} at uncompressed byte {reached} (compressed byte "
                           f"{self._compressed - len(self._in)}); the {cut} bytes of the cut "
                           f"last line are not read")
