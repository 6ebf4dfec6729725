"""The directory follower loses nothing and copies nothing it should not (issue 17): a last line
without a newline in a finished file, a truncated gzip archive, symlinks out of the tree or
planted by another user."""
from __future__ import annotations

import gzip
import logging
import os
import time

import pytest
from test_tail import drain, follower, hdr, rec, uids

from zeekml.parse import Quarantine

OLD = time.time() - 3600


def _age(path, when: float = OLD) -> None:
    os.utime(path, (when, when))


# -- a last line without a newline ------------------------------------------------------------

def test_final_pass_reads_an_unterminated_last_line_of_a_settled_file(tmp_path):
    path = tmp_path / "conn.log"
    path.write_bytes(hdr() + rec(1) + rec(2) + rec(3)[:-1])      # as IoT-23's files end
    _age(path)
    f = follower(tmp_path)
    got = drain(f)
    assert uids(got) == [b"C000001", b"C000002"]                   # still waits for the newline
    assert f.caught_up
    got = f.final_pass()
    assert uids(got) == [b"C000003"]
    states, _ = f.snapshot()
    (st,) = states.values()
    assert st.offset == os.path.getsize(path) and st.line == 11
    assert f.final_pass() == [] and drain(f) == []               # read once


def test_final_pass_leaves_a_line_being_written(tmp_path):
    """A file changed within ``unterminated_settle_seconds``: its writer may be halfway."""
    path = tmp_path / "conn.log"
    path.write_bytes(hdr() + rec(1) + rec(2)[:-7])
    f = follower(tmp_path, unterminated_settle_seconds=600.0)
    assert uids(drain(f)) == [b"C000001"]
    assert f.final_pass() == []
    with open(path, "ab") as fh:
        fh.write(rec(2)[-7:])
    assert uids(drain(f)) == [b"C000002"]


def test_unterminated_last_line_of_a_deleted_file_is_read_when_it_is_closed(tmp_path):
    path = tmp_path / "conn.log"
    path.write_bytes(hdr() + rec(1) + rec(2)[:-1])
    f = follower(tmp_path, orphan_grace_seconds=0.0)
    got = drain(f)
    assert uids(got) == [b"C000001"]
    os.remove(path)                         # rotated away: the open descriptor is read to its end
    got = drain(f)
    assert uids(got) == [b"C000002"] and not f.readers


def test_unterminated_last_line_of_a_renamed_file_is_read_when_it_is_closed(tmp_path):
    path = tmp_path / "conn.log"
    path.write_bytes(hdr() + rec(1) + rec(2)[:-1])
    f = follower(tmp_path, idle_close_seconds=0.0)
    f.idle_close_seconds = 3600.0
    assert uids(drain(f)) == [b"C000001"]
    os.rename(path, tmp_path / "conn.2024-01-01-10-00-00.log")
    f.rescan()
    f.idle_close_seconds = 0.0
    assert uids(drain(f)) == [b"C000002"] and not f.readers


def test_idle_live_file_keeps_its_unterminated_line_waiting(tmp_path):
    path = tmp_path / "conn.log"
    path.write_bytes(hdr() + rec(1) + rec(2)[:-1])
    f = follower(tmp_path, idle_close_seconds=0.0)
    assert uids(drain(f)) == [b"C000001"]
    assert not f.readers                     # closed idle, the partial line not taken for a record
    with open(path, "ab") as fh:
        fh.write(b"\n")
    assert uids(drain(f)) == [b"C000002"]


# -- truncated gzip archives ------------------------------------------------------------------

def _truncated_gz(path, n: int = 400, keep: float = 0.6) -> bytes:
    data = hdr() + b"".join(rec(i) for i in range(n))
    z = gzip.compress(data)
    path.write_bytes(z[: int(len(z) * keep)])
    return data


def test_truncated_archive_keeps_the_records_before_the_damage_and_says_where(tmp_path, caplog):
    arch = tmp_path / "conn.2024-01-01-10-00-00.log.gz"
    _truncated_gz(arch)
    _age(arch)
    f = follower(tmp_path)
    with caplog.at_level(logging.WARNING, logger="zeekml.sources.tail"):
        got = drain(f, 5)
    n = len(uids(got))
    assert 100 < n < 400 and uids(got) == [b"C%06d" % i for i in range(n)]
    warned = [r.getMessage() for r in caplog.records if "truncated or damaged" in r.getMessage()]
    assert len(warned) == 1 and str(arch) in warned[0] and "uncompressed byte" in warned[0]
    states, done = f.snapshot()
    assert not done and next(iter(states.values())).line == 8 + n
    # reported once, not read again while it stays as it is
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="zeekml.sources.tail"):
        assert drain(f, 3) == []
    assert not [r for r in caplog.records if "truncated" in r.getMessage()]


def test_truncated_archive_read_further_once_it_is_whole(tmp_path):
    """A cut archive read to its damage, then found whole: the rest, from the offset reached."""
    arch = tmp_path / "conn.2024-01-01-10-00-00.log.gz"
    data = _truncated_gz(arch)
    _age(arch)
    f = follower(tmp_path)
    first = uids(drain(f, 5))
    arch.write_bytes(gzip.compress(data))
    rest = uids(drain(f, 5))
    assert first + rest == [b"C%06d" % i for i in range(400)]
    assert f.snapshot()[1]                    # whole: done


def test_archive_being_written_waits_until_settled(tmp_path):
    arch = tmp_path / "conn.2024-01-01-10-00-00.log.gz"
    _truncated_gz(arch)                       # fresh: taken for one archive-log is writing
    f = follower(tmp_path, gzip_settle_seconds=600.0)
    assert drain(f) == [] and f.lag_seconds() >= 0 and f._pending_ids
    # --once: whatever exists now is read, to the damage
    got = f.final_pass()
    assert got == [] and not f.caught_up
    assert 100 < len(uids(drain(f, 5))) < 400


# -- symlinks ----------------------------------------------------------------------------------

def test_symlink_out_of_the_tree_is_skipped_with_a_warning(tmp_path, caplog):
    root = tmp_path / "logs"
    root.mkdir()
    secret = tmp_path / "secret.json"
    secret.write_bytes(b'{"password": "hunter2"}\n' * 3)
    (root / "conn.s.log").symlink_to(secret)
    q = Quarantine()
    f = follower(root, quarantine=q)
    with caplog.at_level(logging.WARNING, logger="zeekml.sources.tail"):
        assert drain(f) == []
    assert q.count == 0 and not f.states
    msgs = [r.getMessage() for r in caplog.records if "symlink" in r.getMessage()]
    assert len(msgs) == 1 and "points out of the watched directory" in msgs[0]
    assert f.scan_paths() == []


def test_symlink_out_of_the_tree_is_followed_when_allowed(tmp_path):
    root = tmp_path / "logs"
    root.mkdir()
    target = tmp_path / "elsewhere.log"
    target.write_bytes(hdr() + rec(1))
    (root / "conn.log").symlink_to(target)
    f = follower(root, allow_symlinks_out=True)
    assert uids(drain(f)) == [b"C000001"]


def test_symlink_inside_the_tree_is_followed(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "conn.2024.log").write_bytes(hdr() + rec(1))
    (tmp_path / "conn.log").symlink_to(tmp_path / "a" / "conn.2024.log")
    f = follower(tmp_path)
    assert uids(drain(f)) == [b"C000001"]      # one identity, read once


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own a link by another user")
def test_symlink_planted_by_another_user_is_never_followed(tmp_path, caplog):
    root = tmp_path / "logs"
    root.mkdir()
    target = root / "conn.2024.log.bak"       # inside the tree, root's
    target.write_bytes(hdr() + rec(1))
    link = root / "conn.s.log"
    link.symlink_to(target)
    os.lchown(link, 65534, 65534)             # planted by "nobody"
    f = follower(root, allow_symlinks_out=True, name_filter=lambda n: n == "conn.s.log")
    with caplog.at_level(logging.WARNING, logger="zeekml.sources.tail"):
        assert drain(f) == []
    assert any("planted by another user" in r.getMessage() for r in caplog.records)


def test_a_link_swapped_after_its_check_is_not_opened(tmp_path):
    """The file opened must be the file checked (same device and inode)."""
    good = tmp_path / "conn.log"
    good.write_bytes(hdr() + rec(1))
    f = follower(tmp_path)
    f.rescan()
    (cid, r), = f.readers.items()
    r.close()
    del f.readers[cid]
    # the checked candidate, then the path replaced by other content before the open
    st = os.stat(good)
    from zeekml.sources.fingerprint import fingerprint_file
    from zeekml.sources.tail import _Candidate
    cand = _Candidate(str(good), st, fingerprint_file(str(good)))
    os.rename(good, tmp_path / "aside")       # kept, so its inode is not reused
    good.write_bytes(hdr() + rec(2))
    f._start_reader(cid, cand, 0.0)
    assert cid not in f.readers
