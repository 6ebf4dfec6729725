"""File identity: by content head (``#open`` included, or the first JSON record), never by name;
live, renamed and gzipped copies share it; a half-written gzip is told apart."""
from __future__ import annotations

import gzip
import os

from zeekml.sources.fingerprint import (HEAD_MAX_BYTES, FingerprintCache, fingerprint_file,
                                        gzip_is_whole, identifying_head, tail_digest)

HDR = (b"#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n"
       b"#path\tconn\n#open\t2024-01-01-10-00-00\n#fields\tts\tuid\n#types\ttime\tstring\n")
REC = b"1.000000\tCabc\n"


def test_tsv_head_is_meta_lines_plus_first_record():
    assert identifying_head(HDR) is None                 # no record yet: no identity yet
    assert identifying_head(HDR + REC[:5]) is None       # partial first record: wait
    assert identifying_head(HDR + REC + b"2.0\tCdef\n") == HDR + REC


def test_json_head_is_first_record():
    assert identifying_head(b'{"ts":1.0,"uid":"C') is None
    assert identifying_head(b'{"ts":1.0}\n{"ts":2') == b'{"ts":1.0}\n'


def test_overlong_head_is_cut():
    big = b"x" * (HEAD_MAX_BYTES + 10)
    assert identifying_head(big) == big[:HEAD_MAX_BYTES]
    assert identifying_head(big[:100]) is None


def test_open_stamp_distinguishes_files_with_equal_first_lines(tmp_path):
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_bytes(HDR + REC)
    b.write_bytes(HDR.replace(b"10-00-00", b"11-00-00") + REC)
    assert fingerprint_file(str(a)).content_id != fingerprint_file(str(b)).content_id


def test_live_renamed_and_gzipped_copies_share_the_content_id(tmp_path):
    live = tmp_path / "conn.log"
    live.write_bytes(HDR + REC * 50)
    fp = fingerprint_file(str(live))
    renamed = tmp_path / "conn.2024-01-01-10-00-00.log"
    os.rename(live, renamed)
    fp2 = fingerprint_file(str(renamed))
    assert (fp2.content_id, fp2.ino) == (fp.content_id, fp.ino)
    gz = tmp_path / "conn.10:00:00-11:00:00.log.gz"
    gz.write_bytes(gzip.compress(renamed.read_bytes()))
    fp3 = fingerprint_file(str(gz))
    assert fp3.content_id == fp.content_id and fp3.compressed and fp3.ino != fp.ino
    # more content after the head does not change the identity
    with open(renamed, "ab") as f:
        f.write(REC * 10)
    assert fingerprint_file(str(renamed)).content_id == fp.content_id


def test_half_written_gzip_has_identity_but_is_not_whole(tmp_path):
    recs = b"".join(b"%d.000000\tC%08x\n" % (i, i * 2654435761 % 2**32) for i in range(5000))
    blob = gzip.compress(HDR + recs)
    gz = tmp_path / "c.log.gz"
    gz.write_bytes(blob[: len(blob) // 2])
    assert fingerprint_file(str(gz)) is not None
    assert not gzip_is_whole(str(gz))
    gz.write_bytes(blob)
    assert gzip_is_whole(str(gz))


def test_cache_refingerprints_a_changed_file(tmp_path):
    p = tmp_path / "conn.log"
    p.write_bytes(HDR + REC)
    cache = FingerprintCache()
    a = cache.get(str(p), os.stat(p))
    p.write_bytes(HDR.replace(b"10-00-00", b"12-00-00") + REC)   # same inode, new content
    b = cache.get(str(p), os.stat(p))
    assert a.ino == b.ino and a.content_id != b.content_id
    for i in range(5):                                    # a growing file keeps one entry
        with open(p, "ab") as f:
            f.write(REC)
        assert cache.get(str(p), os.stat(p)).content_id == b.content_id
    assert len(cache) == 1


def test_tail_digest_uses_the_last_bytes_only():
    assert tail_digest(b"a" * 1000 + b"xyz") == tail_digest(b"b" + b"a" * 1000 + b"xyz")
    assert tail_digest(b"abc") != tail_digest(b"abd")


def test_follower_never_opens_a_fifo_named_like_a_log(tmp_path, caplog):
    """Issue 17: a FIFO named conn.*.log blocked watch forever (open in the gzip sniff)."""
    import json

    import pytest

    from zeekml.parse import Quarantine
    from zeekml.sources.tail import DirectoryFollower
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    os.mkfifo(tmp_path / "conn.fifo.log")
    (tmp_path / "conn.log").write_bytes(json.dumps({
        "ts": 1.0, "uid": "C1", "id.orig_h": "10.0.0.1", "id.orig_p": 1, "id.resp_h": "10.0.0.2",
        "id.resp_p": 53, "proto": "udp", "conn_state": "SF"}).encode() + b"\n")
    f = DirectoryFollower(str(tmp_path), {}, Quarantine(), rescan_seconds=0.0, use_events=False)
    got = [u for _ in range(3) for b in f.poll() for u in b.batch.column("uid").to_pylist()]
    assert got == [b"C1"]
    assert f"{tmp_path / 'conn.fifo.log'}: skipped: not a regular file" in caplog.text
