"""``DetectorPool``'s release queue: a release decided while the scoring processes still score
the last one waits in a queue (the watcher reads on meanwhile) and is sent when they answer;
past ``MAX_QUEUED`` waiting releases the watcher waits for them. The processes are held by a
gate (a pipe the test writes one byte per call into), so every step is deterministic: nothing
here depends on how fast anything runs."""
from __future__ import annotations

import os
import time

import numpy as np
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
