"""Reading a gzip archive as far as it decompresses, as ``zcat`` does.

Python's ``gzip`` module raises ``EOFError`` on a truncated archive from inside a large
``read``, losing every byte that ``read`` had decompressed: a cut ``.gz`` of 9,801 records gave
none. ``GzipStream`` first returns every complete line before the damage, then raises, naming
the byte reached, so the records before it are kept. zlib likewise drops everything a call had
decompressed when it finds damage, so that call is replayed in small pieces to the byte zlib
refuses (``_inflate_to_damage``). A wrong CRC or length is only found at a member's end: all its
data has then been decompressed and returned (as ``zcat`` prints it), and the error says that
some of it is damaged.
"""
from __future__ import annotations

import os
import sys
import zlib
from typing import BinaryIO

_COMPRESSED_CHUNK = 256 << 10
_REPLAY_PIECE = 4 << 10     # compressed bytes per step when replaying up to damage


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
            self._inflate(want - len(self._buf))

    def _inflate(self, limit: int) -> None:
        """Decompress ``self._in`` into ``self._buf``, at most ``limit`` bytes.

        zlib raises for damage from inside a call and drops what that call decompressed (up to
        a whole compressed chunk), so the decompressor is copied first and, on an error, the
        same input is replayed from the copy in small pieces up to the byte zlib refuses.
        """
        before = self._d.copy()      # ~40 KiB of state: cheap beside a 256 KiB chunk's inflate
        try:
            out = self._d.decompress(self._in, limit)
        except zlib.error:
            self._d = before
            self._inflate_to_damage(limit)
            return
        self._buf += out
        if self._d.eof:
            self._end_member(self._d.unused_data)
        else:
            self._in = self._d.unconsumed_tail

    def _inflate_to_damage(self, limit: int) -> None:
        """Replay input that made zlib raise: ``_REPLAY_PIECE`` bytes at a time, then byte by
        byte in the piece that raises, so every byte decompressed before the damage is kept and
        the error names the compressed byte where zlib found it. Stops early, with the rest
        left in ``self._in``, once ``limit`` bytes came out (memory stays bounded; the next
        call finds the damage again)."""
        piece_size, produced = _REPLAY_PIECE, 0
        while self._in and produced < limit:
            piece, rest = self._in[:piece_size], self._in[piece_size:]
            before = self._d.copy()
            try:
                out = self._d.decompress(piece)
            except zlib.error as e:
                if piece_size > 1:
                    self._d, piece_size = before, 1     # find the byte within this piece
                    continue
                self._fail(zlib.error, _damage_text(e))
                self._done = True
                return
            self._buf += out
            produced += len(out)
            if self._d.eof:      # the member ended inside the piece: the rest starts the next
                self._end_member(self._d.unused_data + rest)
                return
            self._in = rest

    def _end_member(self, after: bytes) -> None:
        self._in = after
        self._d = None
        self._members += 1

    def _fail(self, kind: type[Exception], what: str) -> None:
        """Hold back the cut line after the last newline and remember the error for later."""
        reached = self._pos + len(self._buf)
        nl = self._buf.rfind(b"\n")
        cut = len(self._buf) - (nl + 1)
        del self._buf[nl + 1:]
        self._error = kind(f"{what} at uncompressed byte {reached} (compressed byte "
                           f"{self._compressed - len(self._in)}); the {cut} bytes of the cut "
                           f"last line are not read")


def _damage_text(e: zlib.error) -> str:
    """What zlib's error means for the bytes already returned."""
    text = str(e)
    if "incorrect data check" in text or "incorrect length check" in text:
        # the check is at the end of a member, so zlib cannot say where its data went wrong
        return (f"damaged compressed data ({text}: the gzip member's data decompressed but "
                f"fails its check, so some of what was read before is damaged)")
    return f"damaged compressed data ({text})"
