"""Guarantee 7: a full output disk stalls ingestion and resumes; nothing is dropped or doubled, the
checkpoint is never empty or corrupt.

ENOSPC is injected at the two places that write: the outputs (through ``Watcher(write=...)``, the
``os.pwrite`` the output files use; a failing call first writes part of its data, as a real full
disk does) and the checkpoint commit (the temp file's ``os.write``).
"""
from __future__ import annotations

import errno
import os
import threading
import time
import types

from test_watch_support import ZeekWriter, all_uids, uid_counts, write_baseline

import zeekml.sources.checkpoint as ckpt
from zeekml.pipeline import ScoreOptions
from zeekml.sources.checkpoint import CheckpointStore, decode
from zeekml.pipeline import Watcher, WatchOptions


class DiskFull:
    """``os.pwrite`` that, while armed, writes half of the data and then fails with ENOSPC."""

    def __init__(self):
        self.armed = False
        self.failures = 0

    def __call__(self, fd, data, offset):
        if self.armed:
            self.failures += 1
            half = bytes(data[: len(data) // 2])
            if half:
                os.pwrite(fd, half, offset)
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.pwrite(fd, data, offset)


def _wait(cond, timeout=20.0, what=""):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _checkpoint_intact(out):
    with open(os.path.join(out, "checkpoint.json"), "rb") as f:
        cp = decode(f.read())                      # raises if empty or corrupt
    assert cp.outputs["verdicts.jsonl"] <= os.path.getsize(os.path.join(out, "verdicts.jsonl"))
    return cp


def test_full_disk_stalls_and_resumes_without_loss(tmp_path, monkeypatch):
    root, out = str(tmp_path / "logs"), str(tmp_path / "out")
    os.makedirs(root)
    baseline = write_baseline(str(tmp_path / "baseline.log"))
    w = ZeekWriter(root, "standalone", seed=5)
    disk = DiskFull()
    cp_full = threading.Event()
    real_os = ckpt.os

    def write_or_enospc(fd, data):
        if cp_full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_os.write(fd, data)

    fake_os = types.SimpleNamespace(**{k: getattr(real_os, k) for k in dir(real_os)
                                       if not k.startswith("__")})
    fake_os.write = write_or_enospc
    fake_os.path = real_os.path
    monkeypatch.setattr(ckpt, "os", fake_os)

    opts = WatchOptions(score=ScoreOptions(baseline=[baseline]), window_seconds=0.1,
                        window_records=200, rescan_seconds=0.2, status_seconds=0.2,
                        retry_seconds=0.05, max_retry_seconds=0.2, dedup_capacity=0)
    watcher = Watcher(root, out, opts, write=disk)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("stats", watcher.run()), daemon=True)
    t.start()
    try:
        w.write(300)
        _wait(lambda: len(uid_counts(out)) == 300, what="first 300 verdicts")

        disk.armed = True                                   # outputs cannot be written
        w.write(300)
        _wait(lambda: watcher.stats.stalled and disk.failures >= 3, what="a stall")
        size = os.path.getsize(os.path.join(out, "verdicts.jsonl"))
        cp = _checkpoint_intact(out)
        assert cp.outputs["verdicts.jsonl"] == size        # the half-written window was cut back
        assert len(uid_counts(out)) == 300
        w.write(100)                                        # Zeek keeps writing meanwhile
        time.sleep(0.3)
        disk.armed = False
        _wait(lambda: len(uid_counts(out)) == 700, what="catching up after the stall")
        assert not watcher.stats.stalled and watcher.stats.stalls >= 3

        cp_full.set()                                       # now the checkpoint cannot be written
        w.write(150)
        _wait(lambda: watcher.stats.stalled, what="a checkpoint stall")
        cp = _checkpoint_intact(out)
        # stats.json is rewritten by the status thread meanwhile
        assert not [f for f in os.listdir(out) if f.endswith(".tmp") and not f.startswith("stats.json")]
        watcher.request_stop()                              # stop while stalled
        t.join(20)
        assert result["stats"].state == "stopped (stalled)"
    finally:
        watcher.request_stop()
        t.join(20)
        w.close()
    cp_full.clear()
    # the uncommitted window is cut from the outputs and read again: exactly once in the end
    again = Watcher(root, out, WatchOptions(score=ScoreOptions(baseline=[baseline]), once=True,
                                            use_events=False, dedup_capacity=0))
    again.run()
    counts = uid_counts(out)
    assert set(counts) == all_uids(850) and max(counts.values()) == 1
    assert CheckpointStore(out).load().generation > cp.generation


def test_once_ends_as_stalled_when_an_output_stays_unwritable(tmp_path, monkeypatch):
    """A live watch waits for the disk as long as it takes; ``--once`` must end: an output (here
    the Zeek feedback file) that stays unwritable stops it as stalled after once_stall_seconds."""
    from zeekml._core.errors import OutputError
    from zeekml.sinks import zeek_input

    root, out = str(tmp_path / "logs"), str(tmp_path / "out")
    os.makedirs(root)
    baseline = write_baseline(str(tmp_path / "baseline.log"))
    w = ZeekWriter(root, "standalone", seed=7)
    w.write(300)
    w.close()
    calls = []

    def full(self, alerts=(), incidents=()):
        calls.append(len(alerts))
        raise OutputError("cannot write: No space left on device", self.verdicts.path)

    monkeypatch.setattr(zeek_input.ZeekFeedback, "write", full)
    opts = WatchOptions(score=ScoreOptions(baseline=[baseline], fpr=0.2,
                                           zeek_feedback=str(tmp_path / "verdicts.log")),
                        once=True, retry_seconds=0.05, max_retry_seconds=0.1,
                        once_stall_seconds=0.5, dedup_capacity=0)
    t0 = time.monotonic()
    stats = Watcher(root, out, opts).run()
    assert stats.state == "stopped (stalled)"
    assert len(calls) >= 3 and stats.stalls >= 3
    assert time.monotonic() - t0 < 30
