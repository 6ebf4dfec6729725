"""``DetectorPool``'s release queue: a release decided while the scoring processes still score
the last one waits in a queue (the watcher reads on meanwhile) and is sent when they answer;
past ``MAX_QUEUED`` waiting releases the watcher waits for them. The processes are held by a
gate (a pipe the test writes one byte per call into), so every step is deterministic: nothing
here depends on how fast anything runs."""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import pyarrow as pa
from context_detector import ContextCounter

from zeekml.flows.table import CONN_SCHEMA
from zeekml.pipeline import FittedDetectors
from zeekml.pipeline.live.context import LiveContext
from zeekml.pipeline.live.pool import DetectorPool
from zeekml.scoring.calibrate import ThresholdCalibrator


def _conns(lo: int, hi: int) -> pa.Table:
    """Conns ``lo .. hi - 1``, one a second of ``ts``."""
    n = hi - lo
    cols = {f.name: pa.nulls(n, f.type) for f in CONN_SCHEMA}
    cols["ts"] = pa.array(np.arange(lo, hi, dtype=float))
    cols["uid"] = pa.array([f"C{i:08d}" for i in range(lo, hi)])
    return pa.table(cols, schema=CONN_SCHEMA)


def _setup(gate: int):
    dets = [ContextCounter("gated", 10.0, gate), ContextCounter("free", 4.0)]
    cal = {d.name: ThresholdCalibrator(fpr=0.02).fit(np.arange(200.0)) for d in dets}
    # "gated" costs most: a scoring process takes it, the watcher keeps "free"
    fitted = FittedDetectors(dets, cal, 0.02, conn_seconds={"gated": 5.0, "free": 1.0})
    ctx = LiveContext(fitted, lateness=0.0, batch_seconds=0.0, release_wait=None)
    return fitted, ctx


def _release(ctx: LiveContext, fitted: FittedDetectors, lo: int, hi: int):
    ctx.add(_conns(lo, hi))
    return ctx.due(fitted)


def _until(cond, pool: DetectorPool) -> None:
    """Wait (on the processes' pipes) until ``cond()``; a hang guard, not a timing check."""
    deadline = time.monotonic() + 60
    while not cond():
        assert time.monotonic() < deadline, "the scoring process never answered"
        pool.wait(0.1)


def _expected(lo: int, hi: int, back: float) -> np.ndarray:
    ts = np.arange(hi, dtype=float)
    return np.array([np.count_nonzero((ts <= t) & (ts >= t - back)) for t in ts[lo:hi]], float)


def test_a_release_decided_while_the_processes_score_waits_and_goes_when_they_answer():
    r, w = os.pipe()
    fitted, ctx = _setup(r)
    pool = DetectorPool(fitted, 1, rebalance=False)
    try:
        assert pool.owner == [0, -1]
        own1, dets1 = _release(ctx, fitted, 0, 30)
        rel1 = pool.submit(own1, dets1, fitted)
        pool.score_own(rel1)
        assert rel1.sent and pool.busy and not pool.answered(rel1)
        own2, dets2 = _release(ctx, fitted, 30, 60)
        rel2 = pool.submit(own2, dets2, fitted)       # returns: the watcher reads on
        pool.score_own(rel2)                          # its own share scored meanwhile
        assert not rel2.sent and pool.queued == 1 and "free" in rel2.raw
        pool.pump()
        assert not rel2.sent, "sent while the process still scores the first release"
        os.write(w, b"1")                             # the process may score release 1
        _until(lambda: rel2.sent, pool)               # ... and, answered, gets release 2
        assert pool.queued == 0 and rel1.waiting == [] and pool.answered(rel1)
        assert pool.busy and not pool.answered(rel2)
        os.write(w, b"2")
        raw1, raw2 = pool.collect(rel1), pool.collect(rel2)
        assert [rel1.number, rel2.number] == [0, 1]
        # every conn's scores are those of its context, whichever release it went in
        for raw, lo, hi in ((raw1, 0, 30), (raw2, 30, 60)):
            assert np.array_equal(raw["gated"], _expected(lo, hi, 10.0))
            assert np.array_equal(raw["free"], _expected(lo, hi, 4.0))
    finally:
        pool.close()
        os.close(r)
        os.close(w)


def test_past_max_queued_releases_the_watcher_waits_for_the_processes(monkeypatch):
    monkeypatch.setattr("zeekml.pipeline.live.pool.MAX_QUEUED", 1)
    r, w = os.pipe()
    fitted, ctx = _setup(r)
    pool = DetectorPool(fitted, 1, rebalance=False)
    try:
        rels = []
        for lo in (0, 30):
            rels.append(pool.submit(*_release(ctx, fitted, lo, lo + 30), fitted))
            pool.score_own(rels[-1])
        assert rels[0].sent and not rels[1].sent and pool.queued == 1
        os.write(w, b"1")          # without it the next submit would wait for ever
        rels.append(pool.submit(*_release(ctx, fitted, 60, 90), fitted))
        # the submit took the first release's answers in, sent the second, queued the third
        assert rels[0].waiting == [] and rels[1].sent and not rels[2].sent
        assert pool.queued == 1
        os.write(w, b"23")
        pool.score_own(rels[2])
        for rel, lo in zip(rels, (0, 30, 60)):
            assert np.array_equal(pool.collect(rel)["gated"], _expected(lo, lo + 30, 10.0))
        assert pool.queued == 0 and not pool.busy
    finally:
        pool.close()
        os.close(r)
        os.close(w)


def test_collecting_a_queued_release_sends_it_and_those_before_it():
    r, w = os.pipe()
    fitted, ctx = _setup(r)
    pool = DetectorPool(fitted, 1, rebalance=False)
    try:
        rels = [pool.submit(*_release(ctx, fitted, lo, lo + 30), fitted) for lo in (0, 30)]
        assert not rels[1].sent
        os.write(w, b"12")
        for rel in rels:           # the watcher's share scored by collect itself
            pool.collect(rel)
        assert all(r_.sent and r_.own_done and r_.waiting == [] for r_ in rels)
        assert np.array_equal(rels[1].raw["free"], _expected(30, 60, 4.0))
    finally:
        pool.close()
        os.close(r)
        os.close(w)


def _setup_own_gated(gate: int):
    """"busy" to the scoring process, "own" (gated) to the watcher's scoring thread."""
    dets = [ContextCounter("busy", 10.0), ContextCounter("own", 4.0, gate)]
    cal = {d.name: ThresholdCalibrator(fpr=0.02).fit(np.arange(200.0)) for d in dets}
    fitted = FittedDetectors(dets, cal, 0.02, conn_seconds={"busy": 5.0, "own": 1.0})
    return fitted, LiveContext(fitted, lateness=0.0, batch_seconds=0.0, release_wait=None)


def test_the_watchers_own_share_scores_on_its_thread_while_the_watcher_goes_on():
    r, w = os.pipe()
    fitted, ctx = _setup_own_gated(r)
    pool = DetectorPool(fitted, 1, rebalance=False)
    try:
        assert pool.owner == [0, -1]
        rel = pool.submit(*_release(ctx, fitted, 0, 30), fitted)
        # a hang guard, not a timing check: scored in the watcher's own thread, start_own
        # would return only once this opened the gate
        guard = threading.Timer(30.0, os.write, (w, b"g"))
        guard.start()
        pool.start_own(rel)                   # returns while "own" waits at its gate
        assert not rel.own_done, "the watcher scored its own share before going on"
        _until(lambda: all(pool._conns[i].poll() for i in rel.waiting), pool)
        # the process has answered; the watcher's thread has not: not answered, still busy
        assert not pool.answered(rel) and pool.busy and "own" not in rel.raw
        os.write(w, b"1")
        _until(lambda: pool.answered(rel), pool)
        raw = pool.collect(rel)
        assert not pool.busy and rel.own_done
        assert np.array_equal(raw["own"], _expected(0, 30, 4.0))
        assert np.array_equal(raw["busy"], _expected(0, 30, 10.0))
        assert rel.cpu[1] >= 0.0 and pool.cpu_seconds["own"] == rel.cpu[1]
    finally:
        guard.cancel()
        os.write(w, b"xxxx")
        pool.close()
        os.close(r)
        os.close(w)


def test_past_max_queued_own_shares_the_watcher_waits_for_its_thread(monkeypatch):
    monkeypatch.setattr("zeekml.pipeline.live.pool.MAX_QUEUED", 1)
    r, w = os.pipe()
    fitted, ctx = _setup_own_gated(r)
    pool = DetectorPool(fitted, 1, rebalance=False)
    started = []
    guard = threading.Timer(30.0, os.write, (w, b"gg"))    # a hang guard, as above
    guard.start()
    try:
        rels = [pool.submit(*_release(ctx, fitted, 0, 30), fitted)]
        pool.start_own(rels[0])
        assert not rels[0].own_done
        rels.append(pool.submit(*_release(ctx, fitted, 30, 60), fitted))
        second = threading.Thread(target=pool.start_own, args=(rels[1],))
        second.start()
        # the first share is held at its gate, so the second start waits for it (a start
        # that returned at once would be found finished here; a slow one is not a failure)
        second.join(0.5)
        started.append(second.is_alive())
        os.write(w, b"1")
        second.join(30)
        started.append(rels[0].own_done and not second.is_alive())
        os.write(w, b"2")
        for rel, lo in zip(rels, (0, 30)):
            assert np.array_equal(pool.collect(rel)["own"], _expected(lo, lo + 30, 4.0))
        assert started == [True, True]
    finally:
        guard.cancel()
        pool.close()
        os.close(r)
        os.close(w)


class Broken:
    name, context_seconds, forward_context_seconds = "broken", 4.0, 0.0

    def score(self, table):
        raise RuntimeError("broken detector")


def test_an_own_share_that_raises_is_answered_and_collect_raises_it():
    fitted, ctx = _setup_own_gated(None)
    broken = Broken()
    fitted = FittedDetectors([fitted.detectors[0], broken],
                             {**fitted.calibrators, "broken": fitted.calibrators["own"]}, 0.02,
                             conn_seconds={"busy": 5.0, "broken": 1.0})
    ctx = LiveContext(fitted, lateness=0.0, batch_seconds=0.0, release_wait=None)
    pool = DetectorPool(fitted, 1, rebalance=False)
    try:
        rel = pool.submit(*_release(ctx, fitted, 0, 30), fitted)
        pool.start_own(rel)
        _until(lambda: pool.answered(rel), pool)     # finished, with its error
        with pytest.raises(RuntimeError, match="broken detector"):
            pool.collect(rel)
    finally:
        pool.close()
