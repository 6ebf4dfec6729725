"""Guarantees 1 and 3: kill -9 at random moments, rotations while running and while stopped.

A writer process appends conn records with unique uids (in 1-3 pieces each) and rotates; the
watcher runs in a forked process that is killed with SIGKILL at random moments, several rounds.
A last ``--once`` run drains what is left. Every uid must be in ``verdicts.jsonl`` exactly once.
The verdict sink's duplicate filter is turned off (``dedup_capacity=0``) so that the checkpoint
and output cut-back alone must give exactly once.
"""
from __future__ import annotations

import json
import os
import random
import signal
import time

import pytest

from test_watch_support import (ZeekWriter, all_uids, start, uid_counts, watcher_process,
                                write_baseline, writer_process)

from zeekml.sources.checkpoint import CheckpointStore


def _opts(baseline: str, **kw) -> dict:
    d = dict(score={"baseline": [baseline]}, window_seconds=0.15, window_records=400,
             rescan_seconds=0.25, status_seconds=0.5, dedup_capacity=0)
    d.update(kw)
    return d


def _drain(root: str, out: str, baseline: str, opts: dict | None = None) -> None:
    opts = dict(opts or _opts(baseline)) | {"once": True}
    p = start(watcher_process, root, out, opts)
    p.join(60)
    assert p.exitcode == 0, "the final --once run failed"


def _assert_exactly_once(out: str, expected: set[str]) -> None:
    counts = uid_counts(out)
    missing = expected - set(counts)
    extra = set(counts) - expected
    doubled = {u: n for u, n in counts.items() if n > 1}
    assert not missing, f"{len(missing)} uids never scored, e.g. {sorted(missing)[:3]}"
    assert not extra, f"unexpected uids {sorted(extra)[:3]}"
    assert not doubled, f"{len(doubled)} uids scored more than once, e.g. {list(doubled.items())[:3]}"


@pytest.mark.parametrize("workers", [0, 2])
def test_kill9_random_rounds_every_uid_exactly_once(tmp_path, workers):
    """With ``workers`` scoring processes, windows are scored while the next is read; the
    checkpoint of a window still holds the reading progress as of its close. Scoring processes
    die with the watcher."""
    import psutil
    root, out = str(tmp_path / "logs"), str(tmp_path / "out")
    os.makedirs(root)
    baseline = write_baseline(str(tmp_path / "baseline.log"))
    n = 5000
    writer = start(writer_process, root, "standalone", n, 7, 1200, 0.06)
    rng = random.Random(20240101)
    rounds = 0
    deadline = time.monotonic() + 40
    orphans: list = []
    while (writer.is_alive() or rounds < 4) and rounds < 8 and time.monotonic() < deadline:
        p = start(watcher_process, root, out, _opts(baseline, score_workers=workers))
        time.sleep(rng.uniform(0.2, 2.5))
        try:
            orphans += psutil.Process(p.pid).children()
        except psutil.NoSuchProcess:
            pass
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        rounds += 1
    writer.join(30)
    assert writer.exitcode == 0
    assert rounds >= 4
    if workers:
        assert orphans, "no scoring process was seen"
        gone, alive = psutil.wait_procs(orphans, timeout=5)
        assert not alive, f"scoring processes outlived their watcher: {alive}"
    _drain(root, out, baseline, _opts(baseline, score_workers=workers))
    _assert_exactly_once(out, all_uids(n))
    cp = CheckpointStore(out).load()
    assert cp.generation > 0
    assert cp.outputs["verdicts.jsonl"] == os.path.getsize(os.path.join(out, "verdicts.jsonl"))


@pytest.mark.parametrize("workers", [0, 1])
def test_kill9_with_a_context_detector_every_uid_exactly_once(tmp_path, workers):
    """The GNN scores a conn with the conns 50 s around it, so conns are held back until their
    forward context has arrived; the held-back ones live in the context journal committed with
    the checkpoint. Kill -9 at random moments must still give every uid exactly once. With a
    scoring process (``--score-workers 1``: it owns one of the two detectors, a release is
    scored while the next window is read), which dies with its watcher."""
    import psutil
    models = os.path.join(os.path.dirname(__file__), "..", "..", "models", "gnn-base")
    if not os.path.exists(os.path.join(models, "config.json")):
        pytest.skip("models/gnn-base not shipped")
    os.makedirs(tmp_path / "models")
    os.symlink(os.path.abspath(models), tmp_path / "models" / "gnn-base")
    root, out = str(tmp_path / "logs"), str(tmp_path / "out")
    os.makedirs(root)
    baseline = write_baseline(str(tmp_path / "baseline.log"))
    n = 3000
    # records 0.5 s apart in ts: 1500 s, so the 50 s horizon releases conns all along
    writer = start(writer_process, root, "standalone", n, 5, 900, 0.08, 0.5)
    rng = random.Random(20240102)
    opts = _opts(baseline, context_lateness=2.0, score_workers=workers)
    opts["score"]["models_dir"] = str(tmp_path / "models")
    import torch  # noqa: F401  (imported before forking: each watcher starts in about a second)

    import zeekml.train.gnn  # noqa: F401
    rounds, released_live = 0, 0
    orphans: list = []
    deadline = time.monotonic() + 60
    while (writer.is_alive() or rounds < 4) and rounds < 8 and time.monotonic() < deadline:
        p = start(watcher_process, root, out, opts)
        # killed at a random moment once it runs (model loading and fitting take a while)
        stats, t0 = os.path.join(out, "stats.json"), time.monotonic()
        while time.monotonic() - t0 < 15 and not (
                os.path.exists(stats) and os.path.getmtime(stats) > time.time() - 0.3):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.2, 2.5))
        try:
            orphans += psutil.Process(p.pid).children()
        except psutil.NoSuchProcess:
            pass
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        rounds += 1
        released_live = max(released_live, len(uid_counts(out)))
    writer.join(30)
    assert writer.exitcode == 0
    assert rounds >= 4
    cp = CheckpointStore(out).load()
    assert cp.context["length"] > 0 and 0 < released_live < n
    if workers:
        assert orphans, "no scoring process was seen"
        gone, alive = psutil.wait_procs(orphans, timeout=5)
        assert not alive, f"scoring processes outlived their watcher: {alive}"
    _drain(root, out, baseline, opts)
    _assert_exactly_once(out, all_uids(n))
    v = [json.loads(l) for l in open(os.path.join(out, "verdicts.jsonl"))]
    assert all(set(x["scores"]) == {"iforest", "gnn"} for x in v)


@pytest.mark.parametrize("layout", ["standalone", "zeekctl", "supervisor"])
def test_rotation_while_running_and_while_stopped(tmp_path, layout):
    root, out = str(tmp_path / "logs"), str(tmp_path / "out")
    os.makedirs(root)
    baseline = write_baseline(str(tmp_path / "baseline.log"))
    w = ZeekWriter(root, layout, seed=3)
    w.write(200)
    p = start(watcher_process, root, out, _opts(baseline))
    try:
        # while running: rotate (and archive) twice with writes around it
        for _ in range(2):
            time.sleep(0.3)
            w.write(150)
            w.rotate()
            w.write(100)
        time.sleep(0.5)
        os.kill(p.pid, signal.SIGKILL)  # an unclean stop in the middle of things
        p.join(10)
        # while stopped: more records, a rotation and its archive, a new live file
        w.write(120)
        w.rotate()
        w.write(80)
        w.rotate(archive=False)       # rotated but not archived yet when we come back
        w.write(60)
        p = start(watcher_process, root, out, _opts(baseline))
        time.sleep(0.7)
        if layout != "standalone":
            w.archive()               # archived while running: the gz copy must not be re-read
        w.write(40)
        time.sleep(0.7)
        os.kill(p.pid, signal.SIGTERM)  # clean stop with a final checkpoint
        p.join(20)
        assert p.exitcode == 0
    finally:
        if p.is_alive():
            os.kill(p.pid, signal.SIGKILL)
        w.close()
    _drain(root, out, baseline)
    _assert_exactly_once(out, all_uids(w.next_uid))
    if layout != "standalone":
        gz = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".gz")]
        assert len(gz) == w.rotations


def _crashing_watcher(root, out, kwargs, point, after):
    """A watcher that dies (``os._exit``, no cleanup, like SIGKILL) at ``point`` of its
    ``after``-th checkpoint commit."""
    import zeekml.sources.checkpoint as ckpt
    calls = {"n": 0}
    real_commit = ckpt.CheckpointStore.commit
    real_replace = ckpt.os.replace

    def commit(self, cp):
        calls["n"] += 1
        if calls["n"] == after:
            if point == "before-commit":           # outputs written and fsynced, no checkpoint
                os._exit(9)
            if point == "temp-written":            # temp checkpoint fsynced, not renamed
                ckpt.os.replace = lambda *a: os._exit(9)
            if point == "prev-linked":             # previous generation linked, new not renamed
                n = {"k": 0}

                def replace(a, b):
                    n["k"] += 1
                    if n["k"] == 2:
                        os._exit(9)
                    return real_replace(a, b)
                ckpt.os.replace = replace
        return real_commit(self, cp)

    ckpt.CheckpointStore.commit = commit
    watcher_process(root, out, kwargs)


@pytest.mark.parametrize("point", ["before-commit", "temp-written", "prev-linked"])
def test_crash_at_each_commit_step_replays_only_the_uncommitted_window(tmp_path, point):
    root, out = str(tmp_path / "logs"), str(tmp_path / "out")
    os.makedirs(root)
    baseline = write_baseline(str(tmp_path / "baseline.log"))
    w = ZeekWriter(root, "standalone", seed=11)
    w.write(1000, pieces=False)
    p = start(_crashing_watcher, root, out, _opts(baseline, once=True, window_records=200,
                                                  catch_up_factor=1), point, 3)
    p.join(30)
    assert p.exitcode == 9
    verdicts = os.path.join(out, "verdicts.jsonl")
    cp = CheckpointStore(out).load()
    assert cp.generation == 2
    assert os.path.getsize(verdicts) > cp.outputs["verdicts.jsonl"]   # an uncommitted tail
    w.write(10)
    w.close()
    _drain(root, out, baseline)
    _assert_exactly_once(out, all_uids(1010))
