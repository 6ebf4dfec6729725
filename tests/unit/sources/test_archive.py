"""Batch archives under hostile conditions (issue 17): FIFOs named like logs are skipped without
being opened, and a truncated or damaged ``.gz`` gives every record before the damage."""
from __future__ import annotations

import gzip
import io
import logging
import os
import zlib

import pytest

from zeekml._core.errors import UnreadableInput
from zeekml.parse import Quarantine, read_log
from zeekml.parse.gzstream import GzipStream
from zeekml.sources.archive import expand_inputs
from zeekml.sources.fingerprint import FingerprintCache, fingerprint_file, read_head

HEADER = (b"#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n"
          b"#path\tconn\n#fields\tts\tuid\tid.orig_h\tid.resp_h\tproto\tconn_state\n"
          b"#types\ttime\tstring\taddr\taddr\tenum\tstring\n")


def records(n: int) -> bytes:
    return b"".join(b"%d.5\tC%d\t10.0.0.%d\t10.0.1.%d\ttcp\tSF\n" % (1_700_000_000 + i, i, i % 250, i % 200)
                    for i in range(n))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_named_like_a_log_is_skipped_never_opened(tmp_path, caplog):
    (tmp_path / "conn.00.log").write_bytes(HEADER + records(2))
    os.mkfifo(tmp_path / "conn.01.log")       # opening it for reading would block forever
    with caplog.at_level(logging.WARNING):
        files = expand_inputs([tmp_path])
    assert files == [str(tmp_path / "conn.00.log")]
    assert f"{tmp_path / 'conn.01.log'}: skipped: a FIFO" in caplog.text
    # the tailer's view: no fingerprint, so it is never read; warned about once
    caplog.clear()
    fifo = str(tmp_path / "conn.01.log")
    cache = FingerprintCache()
    for _ in range(3):
        assert fingerprint_file(fifo) is None
        assert cache.get(fifo, os.stat(fifo)) is None
    assert caplog.text.count("not a regular file") == 1
    with pytest.raises(OSError, match="not a regular file"):
        read_head(fifo)


@pytest.mark.parametrize("chunk_bytes", [4 << 20, 1000, 37])
def test_truncated_gzip_keeps_the_records_before_the_cut(tmp_path, chunk_bytes):
    data = HEADER + records(9_801)
    gz = gzip.compress(data)
    cut = gz[: len(gz) * 2 // 3]
    path = tmp_path / "conn.log.gz"
    path.write_bytes(cut)
    recoverable = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(cut)   # what zcat prints
    whole_lines = recoverable[: recoverable.rfind(b"\n") + 1]
    expected = whole_lines.count(b"\n") - HEADER.count(b"\n")
    assert 0 < expected < 9_801
    q = Quarantine()
    got = []
    with pytest.raises(UnreadableInput) as exc:
        # whatever the read size, the start of the cut line never reaches the parser
        for b in read_log(str(path), q, chunk_bytes=chunk_bytes):
            got += b.batch.to_pylist()
    assert len(got) == expected and q.count == 0
    assert got[-1]["uid"] == b"C%d" % (expected - 1)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: archive ends early")
    assert f"at uncompressed byte {len(recoverable)}" in msg
    assert f"kept the records before byte {len(whole_lines)}" in msg


def test_gzip_stream_reads_like_zcat():
    data = records(3_000)
    # concatenated members and zero padding, as gzip/zcat accept
    stream = GzipStream(io.BytesIO(gzip.compress(data) + gzip.compress(b"more\n") + b"\0" * 10))
    first = stream.read(100)                   # whole lines while more may follow
    assert first == data[:data.rfind(b"\n", 0, 100) + 1]
    assert stream.read() == data[len(first):] + b"more\n" and stream.read() == b""
    stream = GzipStream(io.BytesIO(gzip.compress(data)))
    stream.seek(1000)
    assert stream.tell() == 1000 and stream.read(10) == data[1000:1010]
    with pytest.raises(OSError):
        stream.seek(0)


def test_gzip_stream_damage_is_raised_after_the_data():
    gz = bytearray(gzip.compress(records(50)))
    gz[-6] ^= 0xFF                                   # the CRC of the trailer
    stream = GzipStream(io.BytesIO(bytes(gz)))
    assert stream.read(10) == records(50)[:10]
    with pytest.raises(zlib.error, match="damaged compressed data"):
        while stream.read(1 << 16):
            pass
    garbage = GzipStream(io.BytesIO(gzip.compress(b"a\n") + b"not gzip"))
    assert garbage.read(1 << 10) == b"a\n"
    with pytest.raises(zlib.error):
        garbage.read(1 << 10)
