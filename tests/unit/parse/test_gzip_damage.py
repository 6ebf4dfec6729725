"""Damaged gzip archives: every record decompressed before the damage is kept, from a file or
from standard input, and the error names where zlib found the damage."""
from __future__ import annotations

import gzip
import io
import random
import zlib

import pytest

from zeekml._core.errors import UnreadableInput
from zeekml.cli.cat import read_stream
from zeekml.parse import Quarantine, read_log
from zeekml.parse.gzstream import GzipStream

HEADER = (b"#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n"
          b"#path\tconn\n#fields\tts\tuid\tid.orig_h\tid.resp_h\tproto\tconn_state\n"
          b"#types\ttime\tstring\taddr\taddr\tenum\tstring\n")


def records(n: int, seed: int = 1) -> bytes:
    """``n`` conn lines whose uids are random, so that they compress poorly (a large archive)."""
    rnd = random.Random(seed)
    return b"".join(b"%d.5\tC%d%032x\t10.0.0.1\t10.0.0.2\ttcp\tSF\n" % (1_700_000_000 + i, i,
                                                                     rnd.getrandbits(128))
                    for i in range(n))


def damaged_gzip(intact: bytes, after: bytes) -> tuple[bytes, int]:
    """A gzip of ``intact`` then ``after`` whose deflate data is destroyed just where ``after``
    begins (a reserved block type, which zlib refuses at once), and that byte's offset."""
    c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    head = c.compress(intact) + c.flush(zlib.Z_FULL_FLUSH)     # ends on a byte boundary
    tail = bytearray(c.compress(after) + c.flush())
    tail[0] = 0x07                                               # BFINAL=1, BTYPE=11 (reserved)
    return head + bytes(tail), len(head)


@pytest.mark.parametrize("lines", [300, 12_000])   # damage in the first 256 KiB read, and beyond
def test_records_before_mid_stream_damage_are_kept(tmp_path, lines):
    intact = HEADER + records(lines)
    gz, damaged_at = damaged_gzip(intact, records(500, seed=2))
    assert (damaged_at > 256 << 10) == (lines > 1000)
    path = tmp_path / "conn.log.gz"
    path.write_bytes(gz)
    q, got = Quarantine(), 0
    with pytest.raises(UnreadableInput) as exc:
        for b in read_log(str(path), q):
            got += b.num_rows
    assert got == lines and q.count == 0
    msg = str(exc.value)
    assert msg.startswith(f"{path}: archive ends early or is damaged (damaged compressed data")
    assert f"at uncompressed byte {len(intact)} (compressed byte {damaged_at})" in msg
    assert f"kept the records before byte {len(intact)}" in msg


def test_failed_check_keeps_every_decompressed_byte_as_zlib_does():
    # a wrong CRC is only found at the member's end: everything before it decompressed
    data = records(5_000)
    gz = bytearray(gzip.compress(data))
    gz[-6] ^= 0xFF
    stream = GzipStream(io.BytesIO(bytes(gz)))
    out = b""
    with pytest.raises(zlib.error, match="fails its check") as exc:
        while more := stream.read(1 << 20):
            out += more
    assert out == data
    assert f"(compressed byte {len(gz) - 5})" in str(exc.value)     # the CRC's last byte


def test_intact_archive_reads_whole_in_any_read_size():
    data = records(20_000)
    gz = gzip.compress(data) + gzip.compress(b"second member\n")
    for size in (4 << 20, 4096, 100):
        stream, out = GzipStream(io.BytesIO(gz)), b""
        while more := stream.read(size):
            out += more
        assert out == data + b"second member\n"


@pytest.mark.parametrize("kind", ["cut", "damaged"])
def test_stdin_keeps_the_records_before_the_damage_like_a_file(tmp_path, kind):
    intact = HEADER + records(3_000)
    if kind == "cut":
        whole = gzip.compress(intact + records(3_000, seed=3))
        gz = whole[: len(whole) // 2]
    else:
        gz, _ = damaged_gzip(intact, records(500, seed=2))
    path = tmp_path / "conn.log.gz"
    path.write_bytes(gz)

    def rows(batches) -> tuple[int, str]:
        n = 0
        with pytest.raises(UnreadableInput) as exc:
            for b in batches:
                n += b.num_rows
        return n, str(exc.value)

    from_file, file_msg = rows(read_log(str(path), Quarantine()))
    from_stdin, stdin_msg = rows(read_stream(io.BytesIO(gz), Quarantine()))
    assert from_stdin == from_file > 0
    assert stdin_msg == file_msg.replace(str(path), "<stdin>", 1)
