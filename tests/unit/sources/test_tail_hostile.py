"""Guarantee 9: malformed and hostile lines are quarantined with file, offset and reason, the stream
goes on, memory stays bounded; Hypothesis fuzzes the incremental reader with random bytes cut at
random points (no uncaught exception, and pieces give the same result as the whole file)."""
from __future__ import annotations

import os
import random
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zeekml.parse import Quarantine
from zeekml.sources.tail import DirectoryFollower

HDR = (b"#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n"
       b"#path\tconn\n#open\t2024-01-01-10-00-00\n#fields\tts\tuid\tid.orig_h\tid.orig_p\t"
       b"id.resp_h\tid.resp_p\tproto\tconn_state\torig_pkts\n#types\ttime\tstring\taddr\tport\t"
       b"addr\tport\tenum\tstring\tcount\n")


def rec(i: int, uid: bytes | None = None, orig_h: bytes = b"10.0.0.1", end: bytes = b"\n") -> bytes:
    uid = uid if uid is not None else b"G%06d" % i
    return b"%d.5\t%s\t%s\t%d\t10.0.0.2\t80\ttcp\tSF\t%d%s" % (1_700_000_000 + i, uid, orig_h,
                                                                1000 + i, i, end)


def follow(root, **kw):
    q = Quarantine()
    return DirectoryFollower(str(root), {}, q, rescan_seconds=0.0, use_events=False, **kw), q


def uids(batches):
    return [u for b in batches for u in b.batch.column("uid").to_pylist()]


def test_hostile_lines_are_quarantined_and_the_stream_goes_on(tmp_path):
    new_schema = (b"#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n"
                  b"#path\tconn\n#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\t"
                  b"proto\tconn_state\torig_pkts\textra\n#types\ttime\tstring\taddr\tport\taddr\t"
                  b"port\tenum\tstring\tcount\tstring\n")
    hostile = [
        (b"a\tb\n", "field count"),
        (rec(11, end=b"\r\n"), "bad value"),                        # CRLF: "11\r" is no count
        (rec(1, orig_h=b"\xff\xfe.0.0.1"), "bad value"),             # invalid UTF-8 in an addr
        (b"\n", "empty line"),
        (b"x" * 200_000 + b"\n", "line longer"),                     # huge line
        (rec(3, end=b"\tone-too-many\n"), "field count"),
        (rec(12, uid=b"G\x00NUL"), "raw NUL"),                       # Zeek never writes a raw NUL
    ]
    good_mid = [rec(10, uid=b"G\x1b[2J\x1b]0;pwned\x07")]          # terminal escapes: a value
    data = HDR + rec(0)
    offsets = {}
    for line, reason in hostile:
        offsets[len(data)] = reason
        data += line
    data += b"".join(good_mid) + new_schema + rec(20)[:-1] + b"\tX\n" + rec(21)[:-1] + b"\tY\n"
    (tmp_path / "conn.log").write_bytes(data)
    f, q = follow(tmp_path, max_line_bytes=64 << 10)
    got = []
    for _ in range(5):
        got += f.poll()
    assert uids(got) == [b"G000000", b"G\x1b[2J\x1b]0;pwned\x07", b"G000020", b"G000021"]
    assert q.count == len(hostile)
    for r in q.records:
        assert r.path == str(tmp_path / "conn.log")
        assert r.offset in offsets and offsets[r.offset] in r.reason, (r.offset, r.reason)
        assert data[r.offset:].startswith(r.sample[:50])
        assert r.line == data[:r.offset].count(b"\n") + 1
    state, = f.snapshot()[0].values()
    assert state.offset == len(data) and state.header["fields"][-1] == "extra"


def test_quarantine_file_is_escaped_json(tmp_path):
    """The quarantine output holds no raw control bytes from hostile input (no terminal or log
    injection), and each entry names the file, line, offset and reason."""
    import json

    from zeekml.pipeline import ScoreOptions
    from zeekml.pipeline.live import Watcher, WatchOptions
    root = tmp_path / "logs"
    root.mkdir()
    (root / "conn.log").write_bytes(HDR + rec(0) + b"\x1b]0;pwned\x07\x00\tx\n" + rec(1))
    base = tmp_path / "base.log"
    base.write_bytes(HDR + b"".join(rec(i) for i in range(100, 400)))
    stats = Watcher(str(root), str(tmp_path / "out"),
                    WatchOptions(score=ScoreOptions(baseline=[str(base)]), once=True,
                                 use_events=False)).run()
    assert stats.scored == 2 and stats.quarantined == 1
    raw = (tmp_path / "out" / "quarantine.jsonl").read_bytes()
    assert all(b >= 0x20 for b in raw.replace(b"\n", b""))
    entry = json.loads(raw)
    assert entry["path"].endswith("conn.log") and entry["line"] == 10
    assert entry["offset"] == len(HDR + rec(0)) and entry["reason"] == "raw NUL byte"


def test_memory_stays_bounded_on_an_endless_line(tmp_path):
    path = tmp_path / "conn.log"
    path.write_bytes(HDR + rec(0))
    f, q = follow(tmp_path, max_line_bytes=64 << 10, chunk_bytes=32 << 10)
    f.poll()
    with open(path, "ab") as fh:
        for _ in range(40):                       # 4 MB without a newline, in pieces
            fh.write(b"y" * 100_000)
            fh.flush()
            f.poll()
            for r in f.readers.values():
                assert len(r.parser._buf) <= (64 << 10) + (32 << 10)
        fh.write(b"\n" + rec(1))
    got = []
    for _ in range(3):
        got += f.poll()
    assert uids(got) == [b"G000001"] and q.count == 1


PIECES = [rec(i) for i in range(5)] + [
    b"\n", b"\t", b"\r\n", b"\\x", b"\\x4", b"\\\\", b"\xc3", b"\xe2\x82", b"\x00", b"#", b"-",
    b"(empty)", b"#fields\tts\tuid\n", b"#types\ttime\tstring\n", b"#separator \\x2c\n",
    b"#close\t2024\n", b"\x1b[2J", b"1.0\tC\t10.0.0.1\t1\t10.0.0.2\t2\ttcp\tSF\t3\n"]


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.one_of(st.binary(max_size=40), st.sampled_from(PIECES)), max_size=25),
       seed=st.integers(0, 2**16))
def test_fuzz_incremental_reader(parts, seed):
    """Random bytes after a valid header, written in random pieces and polled after each: no
    exception; every complete line is consumed; the records and the quarantine count equal those
    of one read of the whole file."""
    data = HDR + b"".join(parts)
    rng = random.Random(seed)
    root = tempfile.mkdtemp(prefix="zeekml-fuzz-")
    try:
        path = os.path.join(root, "conn.log")
        open(path, "wb").close()
        f, q = follow(root, max_line_bytes=1 << 16)
        got = []
        pos = 0
        with open(path, "ab") as fh:
            while pos < len(data):
                n = rng.randint(1, 64)
                fh.write(data[pos:pos + n])
                fh.flush()
                pos += n
                got += f.poll()
        got += f.poll()
        states, done = f.snapshot()
        f.stop()
        whole, wq = follow(root, max_line_bytes=1 << 16)
        once = whole.poll() + whole.poll()
        whole.stop()
        assert uids(got) == uids(once)
        assert q.count == wq.count
        if states:
            state, = states.values()
            assert state.offset == data.rfind(b"\n") + 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
