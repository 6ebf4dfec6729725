"""The directory follower: records written in pieces (guarantee 2), renames, in-place truncation
and inode reuse (5), lost file-system events (8), renamed-away files read to their end."""
from __future__ import annotations

import gzip
import json
import os
import time

from zeekml.parse import Quarantine
from zeekml.sources.tail import DirectoryFollower

HDR = (b"#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n"
       b"#path\tconn\n#open\t%s\n#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p"
       b"\tproto\tconn_state\torig_pkts\thistory\n#types\ttime\tstring\taddr\tport\taddr\tport\t"
       b"enum\tstring\tcount\tstring\n")


def hdr(stamp: str = "2024-01-01-10-00-00") -> bytes:
    return HDR % stamp.encode()


def rec(i: int, uid: bytes | None = None, history: bytes = b"ShADad") -> bytes:
    uid = uid if uid is not None else b"C%06d" % i
    return b"%d.000000\t%s\t10.0.0.1\t%d\t10.0.0.2\t80\ttcp\tSF\t%d\t%s\n" % (
        1_700_000_000 + i, uid, 1024 + i, i, history)


def follower(root, **kw) -> DirectoryFollower:
    kw.setdefault("rescan_seconds", 0.0)
    kw.setdefault("use_events", False)
    return DirectoryFollower(str(root), {}, kw.pop("quarantine", Quarantine()), **kw)


def uids(batches) -> list:
    return [u for b in batches for u in b.batch.column("uid").to_pylist()]


def drain(f: DirectoryFollower, rounds: int = 3) -> list:
    out = []
    for _ in range(rounds):
        out += f.poll()
    return out


def test_records_written_in_pieces_cut_inside_escapes_and_utf8(tmp_path):
    """Guarantee 2: each record is parsed once, whole, however it is cut."""
    tricky = [b"C\\x41\\x09\\\\end", "Cé€😀".encode(), b"C\\x2d", b"C\\xe2\\x82\\xac"]
    expect = [b"CA\t\\end", "Cé€😀".encode(), b"C-", "C€".encode()]
    data = hdr() + b"".join(rec(i, u, history="hé\\x41".encode()) for i, u in enumerate(tricky))
    path = tmp_path / "conn.log"
    path.write_bytes(b"")
    q = Quarantine()
    f = follower(tmp_path, quarantine=q)
    got = []
    with open(path, "ab") as fh:
        for i in range(len(data)):           # one byte at a time: every cut point is tried
            fh.write(data[i:i + 1])
            fh.flush()
            got += f.poll()
    got += f.poll()
    assert uids(got) == expect
    assert [h for b in got for h in b.batch.column("history").to_pylist()] == \
        ["héA".encode()] * 4
    assert q.count == 0


def test_json_records_in_pieces(tmp_path):
    lines = [json.dumps({"ts": 1.0 + i, "uid": f"Cé{i}", "id.orig_h": "10.0.0.1",
                         "id.orig_p": 1, "id.resp_h": "10.0.0.2", "id.resp_p": 53,
                         "proto": "udp", "conn_state": "SF", "orig_pkts": 1},
                        ensure_ascii=False).encode() + b"\n" for i in range(20)]
    data = b"".join(lines)
    path = tmp_path / "conn.log"
    path.write_bytes(b"")
    f = follower(tmp_path)
    got = []
    with open(path, "ab") as fh:
        for i in range(0, len(data), 7):
            fh.write(data[i:i + 7])
            fh.flush()
            got += f.poll()
    assert [u.decode() for u in uids(got)] == [f"Cé{i}" for i in range(20)]


def test_rename_is_followed_and_new_live_file_read(tmp_path):
    live = tmp_path / "conn.log"
    live.write_bytes(hdr() + b"".join(rec(i) for i in range(10)))
    f = follower(tmp_path)
    got = drain(f)
    with open(live, "ab") as fh:
        fh.write(b"".join(rec(i) for i in range(10, 15)))
    os.rename(live, tmp_path / "conn.2024-01-01-10-00-00.log")
    live.write_bytes(hdr("2024-01-01-11-00-00") + b"".join(rec(i) for i in range(15, 20)))
    got += drain(f)
    assert sorted(uids(got)) == [b"C%06d" % i for i in range(20)]


def test_in_place_truncation_is_read_from_zero(tmp_path):
    """Guarantee 5: Zeek restarted without rotating truncates conn.log (same inode)."""
    live = tmp_path / "conn.log"
    live.write_bytes(hdr() + b"".join(rec(i) for i in range(50)))
    ino = os.stat(live).st_ino
    f = follower(tmp_path)
    assert len(uids(drain(f))) == 50
    with open(live, "r+b") as fh:          # O_TRUNC in place, then the new header and records
        fh.truncate(0)
        fh.write(hdr("2024-01-01-12-00-00") + b"".join(rec(i) for i in range(100, 130)))
    assert os.stat(live).st_ino == ino
    got = drain(f)
    assert uids(got) == [b"C%06d" % i for i in range(100, 130)]


def test_truncated_and_regrown_past_the_offset_with_the_same_head(tmp_path):
    """Same head (same #open and first record) but other bytes before the checkpoint offset:
    the tail digest tells, and the file is read from 0 (also after a restart)."""
    live = tmp_path / "conn.log"
    live.write_bytes(hdr() + b"".join(rec(i) for i in range(20)))
    f = follower(tmp_path)
    assert len(uids(drain(f))) == 20
    states, _ = f.snapshot()
    f.stop()
    live.write_bytes(hdr() + rec(0) + b"".join(rec(i) for i in range(200, 260)))
    f2 = DirectoryFollower(str(tmp_path), states, Quarantine(), rescan_seconds=0.0,
                           use_events=False)
    got = uids(drain(f2))
    assert got == [b"C%06d" % 0] + [b"C%06d" % i for i in range(200, 260)]


def test_inode_reuse_is_read_from_zero(tmp_path, monkeypatch):
    """Guarantee 5: a deleted file's inode given to a new file with other content. ext4 rarely
    hands the same inode out at once, so the new file's inode number is made equal to the old
    one where the follower looks at it (``os.stat`` in the tail module)."""
    import types

    import zeekml.sources.tail as tail
    a = tmp_path / "conn.log"
    a.write_bytes(hdr() + b"".join(rec(i) for i in range(30)))
    f = follower(tmp_path, orphan_grace_seconds=0.0)
    assert len(uids(drain(f))) == 30
    old = os.stat(a)
    os.unlink(a)
    assert uids(drain(f)) == [] and f.readers == {}
    a.write_bytes(hdr("2024-01-01-13-00-00") + rec(1000))
    real_stat = os.stat

    def stat_with_reused_inode(path, *args, **kw):
        st = real_stat(path, *args, **kw)
        if os.fspath(path) == str(a):
            st = _with_ino(st, old.st_ino)
        return st

    proxy = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
    proxy.path = os.path
    proxy.stat = stat_with_reused_inode
    monkeypatch.setattr(tail, "os", proxy)
    got = uids(f.poll())
    with open(a, "ab") as fh:
        fh.write(b"".join(rec(i) for i in range(2000, 2010)))
    got += uids(drain(f))
    assert got == [b"C001000"] + [b"C%06d" % i for i in range(2000, 2010)]
    assert len(f.states) == 2


class _with_ino:
    """A stat result with another inode number (everything else as the real one)."""

    def __init__(self, st, ino):
        self._st, self.st_ino = st, ino

    def __getattr__(self, name):
        return getattr(self._st, name)


def test_lost_events_are_found_by_the_rescan(tmp_path):
    """Guarantee 8: with watchdog's events lost (observer stopped), the periodic rescan still
    finds a new file; with events, it is found before the rescan is due."""
    f = follower(tmp_path, use_events=True, rescan_seconds=0.6)
    f.start()
    assert f.poll() == []
    f._observer.stop()                     # every event from now on is lost
    f._observer.join(5)
    (tmp_path / "conn.log").write_bytes(hdr() + b"".join(rec(i) for i in range(5)))
    time.sleep(0.1)
    assert f.poll() == []                  # no event, rescan not due yet
    time.sleep(0.6)
    assert len(uids(f.poll())) == 5        # the rescan found it
    f._observer = None
    f.stop()

    g = follower(tmp_path / "sub", use_events=True, rescan_seconds=60.0) \
        if (tmp_path / "sub").mkdir() is None else None
    g.start()
    try:
        g.poll()
        (tmp_path / "sub" / "conn.log").write_bytes(hdr() + rec(7))
        deadline = time.monotonic() + 5
        got = []
        while not got and time.monotonic() < deadline:
            g.wait(0.2)
            got = g.poll()
        assert uids(got) == [b"C000007"]
    finally:
        g.stop()


def test_renamed_away_file_is_read_to_its_end_then_closed(tmp_path):
    live = tmp_path / "conn.log"
    live.write_bytes(hdr() + rec(0))
    f = follower(tmp_path, orphan_grace_seconds=0.0)
    assert len(uids(drain(f))) == 1
    with open(live, "ab") as fh:
        fh.write(b"".join(rec(i) for i in range(1, 6)))
    os.rename(live, tmp_path / "rotated.tmp")   # a name the follower does not read
    got = drain(f)
    assert uids(got) == [b"C%06d" % i for i in range(1, 6)]
    assert f.readers == {}


def test_gzip_copy_of_a_completed_file_is_not_opened(tmp_path):
    live = tmp_path / "conn.log"
    data = hdr() + b"".join(rec(i) for i in range(10)) + b"#close\t2024-01-01-11-00-00\n"
    live.write_bytes(data)
    f = follower(tmp_path)
    assert len(uids(drain(f))) == 10
    assert f.readers == {} and f.states[next(iter(f.states))].complete
    (tmp_path / "conn.10:00:00-11:00:00.log.gz").write_bytes(gzip.compress(data))
    os.unlink(live)
    assert drain(f) == [] and f.readers == {}
    assert f.states == {} and len(f.done) == 1
