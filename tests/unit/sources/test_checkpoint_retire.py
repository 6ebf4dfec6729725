"""Retiring finished files from the watch checkpoint (issue 17): with many small files the
checkpoint stays small, and a retired file is never read again."""
from __future__ import annotations

import json
import os
import time

from test_tail import drain, follower

from zeekml.sources.checkpoint import (Checkpoint, CheckpointStore, FileState, Presence,
                                       retirable)

NOW = 1_800_000_000.0


def _st(cid: str, age: float, offset: int = 10) -> FileState:
    return FileState(content_id=cid, offset=offset, updated=NOW - age)


def test_retirable_rules():
    states = {
        "rotated-idle": _st("rotated-idle", 400),
        "rotated-recent": _st("rotated-recent", 10),
        "rotated-unread": _st("rotated-unread", 400),
        "live-old": _st("live-old", 10 ** 6),
        "gone-idle": _st("gone-idle", 400),
        "gone-recent": _st("gone-recent", 10),
        "gz-young": _st("gz-young", 400),
        "gz-old": _st("gz-old", 10 ** 6),
    }
    present = {
        "rotated-idle": Presence(unread=False, live=False),
        "rotated-recent": Presence(unread=False, live=False),
        "rotated-unread": Presence(unread=True, live=False),
        "live-old": Presence(unread=False, live=True),
        "gz-young": Presence(unread=None, live=False),
        "gz-old": Presence(unread=None, live=False),
    }
    got = retirable(states, present, NOW, idle_seconds=300, retention_seconds=86400)
    assert sorted(got) == ["gone-idle", "gz-old", "rotated-idle"]


def _json_rec(i: int) -> bytes:
    return (b'{"ts":%d.0,"uid":"J%05d","id.orig_h":"10.0.0.1","id.orig_p":%d,'
            b'"id.resp_h":"10.0.0.2","id.resp_p":80,"proto":"tcp","conn_state":"SF"}\n'
            % (1_700_000_000 + i, i, 1024 + i % 50000))


def test_many_small_json_files_leave_the_checkpoint_once_finished(tmp_path):
    """JSON logs never get ``#close``: without retirement each kept an entry for ever."""
    root = tmp_path / "logs"
    root.mkdir()
    n = 300
    for i in range(n):
        (root / f"conn.{i:05d}.log").write_bytes(_json_rec(i))
    (root / "conn.log").write_bytes(_json_rec(n))               # the live file
    clock = {"t": time.time()}
    f = follower(root, wall_clock=lambda: clock["t"], retire_idle_seconds=300.0,
                 idle_close_seconds=0.0)
    got = drain(f, 4)
    assert sum(b.num_rows for b in got) == n + 1
    states, done = f.snapshot()
    assert len(states) == n + 1 and not done              # just read: kept
    clock["t"] += 301
    f.rescan()
    states, done = f.snapshot()
    assert len(done) == n and f.retired == n
    assert [s.path for s in states.values()] == [str(root / "conn.log")]   # live: kept
    # the document committed every window is small; the ledger holds the ids
    out = tmp_path / "out"
    out.mkdir()
    store = CheckpointStore(out)
    store.commit(Checkpoint(files=states, done=done))
    assert os.path.getsize(out / "checkpoint.json") < 2000
    assert len(json.loads((out / "checkpoint.json.done").read_text())["done"]) == n
    # a restart from it reads nothing again
    cp = CheckpointStore(out).load()
    g = follower(root, wall_clock=lambda: clock["t"])
    g.states, g.done = cp.files, cp.done
    assert drain(g, 3) == []


def test_a_rotated_file_with_unread_bytes_is_not_retired(tmp_path):
    root = tmp_path / "logs"
    root.mkdir()
    path = root / "conn.00001.log"
    path.write_bytes(_json_rec(1))
    clock = {"t": time.time()}
    f = follower(root, wall_clock=lambda: clock["t"], idle_close_seconds=0.0)
    drain(f)
    with open(path, "ab") as fh:
        fh.write(_json_rec(2)[:-5])            # a partial line: bytes past the offset
    drain(f)
    clock["t"] += 10_000
    f.rescan()
    assert len(f.states) == 1 and not f.done


def test_a_deleted_file_is_retired_after_the_idle_time(tmp_path):
    root = tmp_path / "logs"
    root.mkdir()
    path = root / "conn.log"
    path.write_bytes(_json_rec(1))
    clock = {"t": time.time()}
    f = follower(root, wall_clock=lambda: clock["t"], idle_close_seconds=0.0,
                 orphan_grace_seconds=0.0)
    drain(f)
    os.remove(path)
    drain(f)
    assert len(f.states) == 1
    clock["t"] += 301
    f.rescan()
    assert not f.states and len(f.done) == 1
