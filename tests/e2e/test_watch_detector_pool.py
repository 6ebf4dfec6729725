"""``zeekml watch --score-workers N`` with detectors that have a time context: each scoring
process owns some detectors (``live.pool.DetectorPool``) and scores its share of every release,
the watcher the rest. The outputs are the bytes of the watcher scoring alone (at one torch
thread, as the test session runs), each detector runs in one process for the whole run, and a
scoring process that dies is a clear error."""
from __future__ import annotations

import gzip
import os
import signal
import time

import numpy as np
import pytest
from checks import run_watcher_in_thread
from test_watch_support import conn_line, header

from zeekml._core.errors import ZeekmlError
from zeekml.pipeline import FittedDetectors, ScoreOptions, Watcher, WatchOptions
from zeekml.pipeline.live.pool import DetectorPool
from zeekml.scoring.calibrate import ThresholdCalibrator

HERE = os.path.dirname(__file__)
MODELS = os.path.join(HERE, "..", "..", "models")
IOT23 = os.path.join(HERE, "..", "data", "real", "iot23-ctu-34-1", "conn.log.labeled.gz")
OUTPUTS = ("verdicts.jsonl", "zeekml_notice.log", "incidents.jsonl", "zeekml_incident.log")


class PidLogged:
    """Score = conns of the scored conn's context within ``back`` s before it, weighted by the
    conn's ``orig_bytes`` parity (so that some conns alert); every call appends
    ``name pid`` to ``log``, which tells in which process it ran."""

    note = "ZeekML::Anomalous_Flow"

    def __init__(self, name: str, back: float, fwd: float, log: str, host: bool = False,
                 burn: float = 0.0):
        self.name, self.context_seconds, self.forward_context_seconds = name, back, fwd
        self.log = log
        self.burn = burn        # CPU seconds each call spends (a detector costlier than said)
        if host:
            self.context_key = "id.orig_h"

    def fit(self, table):
        return self

    def score(self, table):
        with open(self.log, "a") as f:
            f.write(f"{self.name} {os.getpid()}\n")
        end = time.process_time() + self.burn
        while time.process_time() < end:
            pass
        ts = table.column("ts").to_numpy(zero_copy_only=False)
        order = np.sort(ts)
        lo = np.searchsorted(order, ts - self.context_seconds, "left")
        hi = np.searchsorted(order, ts + self.forward_context_seconds, "right")
        odd = np.asarray(table.column("orig_bytes").to_pylist(), dtype=float) % 7
        return (hi - lo) * (1.0 + odd)

    def explain(self, table, rows, top=3):
        return [f"{self.name}: {len(table)} conns in context" for _ in rows]


def _toy_fitted(log: str) -> FittedDetectors:
    dets = [PidLogged("back", 20.0, 0.0, log), PidLogged("both", 5.0, 7.0, log),
            PidLogged("host", 30.0, 0.0, log, host=True)]
    cal = {d.name: ThresholdCalibrator(fpr=0.02).fit(np.arange(200.0)) for d in dets}
    # the costs the detectors are shared out by: "both" costs most
    return FittedDetectors(dets, cal, 0.02, conn_seconds={"back": 2.0, "both": 5.0, "host": 1.0})


def _write_log(root, n: int = 1500) -> None:
    root.mkdir()
    with open(root / "conn.log", "wb") as f:
        f.write(header("2023-01-01-00-00-00"))
        for i in range(n):
            f.write(conn_line(i, ts=1_700_000_000 + i * 0.1))


def _toy_run(root, out, log, monkeypatch, **kw):
    fitted = _toy_fitted(log)
    monkeypatch.setattr("zeekml.pipeline.live.watcher.calibrate", lambda *a, **k: fitted)
    opts = WatchOptions(once=True, window_records=100, catch_up_factor=1, rescan_seconds=0.1,
                        use_events=False, context_lateness=3.0, context_batch_seconds=4.0,
                        score=ScoreOptions(conn_notices=True), **kw)
    return Watcher(str(root), str(out), opts).run()


def _bytes(out) -> dict[str, list[bytes]]:
    got = {}
    for name in OUTPUTS:
        path = os.path.join(out, name)
        lines = open(path, "rb").read().splitlines(keepends=True) if os.path.exists(path) else []
        got[name] = [x for x in lines if not x.startswith(b"#open")]   # stamped when written
    return got


@pytest.mark.parametrize("workers", [1, 2])
def test_detectors_shared_out_give_the_bytes_of_one_process(tmp_path, monkeypatch, workers):
    root = tmp_path / "logs"
    _write_log(root)
    one = _toy_run(root, tmp_path / "one", str(tmp_path / "one.pids"), monkeypatch)
    log = str(tmp_path / "pool.pids")
    pool = _toy_run(root, tmp_path / "pool", log, monkeypatch, score_workers=workers)
    assert one.scored == pool.scored == 1500 and pool.windows == one.windows
    a, b = _bytes(tmp_path / "one"), _bytes(tmp_path / "pool")
    assert a == b
    assert len(a["verdicts.jsonl"]) == 1500 and a["zeekml_notice.log"], "no alert to compare"
    # each detector ran in one process for the whole run; the costliest in a scoring process
    calls: dict[str, set[str]] = {}
    for line in open(log):
        name, pid = line.split()
        calls.setdefault(name, set()).add(pid)
    assert {n: len(p) for n, p in calls.items()} == {"back": 1, "both": 1, "host": 1}
    me = str(os.getpid())
    assert calls["both"] != {me}
    if workers == 2:
        assert calls["back"] != {me} and calls["back"] != calls["both"]
        assert calls["host"] == {me}      # the watcher's 20% head start is the least load


def test_a_scoring_process_that_dies_is_a_clear_error(tmp_path, monkeypatch):
    root = tmp_path / "logs"
    _write_log(root, 300)
    fitted = _toy_fitted(str(tmp_path / "pids"))
    monkeypatch.setattr("zeekml.pipeline.live.watcher.calibrate", lambda *a, **k: fitted)
    empty = tmp_path / "empty"
    empty.mkdir()
    w = Watcher(str(empty), str(tmp_path / "out"), WatchOptions(
        score_workers=1, rescan_seconds=0.1, use_events=False, window_seconds=0.05,
        context_lateness=0.0, context_batch_seconds=0.0, context_release_wait=0.0))
    t, err = run_watcher_in_thread(w)
    assert isinstance(w.pool, DetectorPool) and len(w.pool.pids) == 1
    os.kill(w.pool.pids[0], signal.SIGKILL)
    os.replace(root / "conn.log", empty / "conn.log")
    t.join(30)
    if t.is_alive():
        w.request_stop()
        t.join(10)
    assert err and isinstance(err[0], ZeekmlError) and "scoring process died" in str(err[0])
    assert "\n" not in str(err[0])


def test_shipped_learned_detectors_shared_out_give_the_bytes_of_one_process(tmp_path, caplog):
    if not os.path.exists(os.path.join(MODELS, "moe-causal", "config.json")):
        pytest.skip("models/ not shipped")
    lines = gzip.open(IOT23, "rb").read().split(b"\n")
    head = [x for x in lines[:20] if x.startswith(b"#") and not x.startswith(b"#close")]
    recs = [x for x in lines if x and not x.startswith(b"#")][:1200]
    ref = tmp_path / "iot23.log"
    ref.write_bytes(b"\n".join(head + recs) + b"\n")
    root = tmp_path / "logs"
    root.mkdir()
    os.link(ref, root / "conn.log")
    outs = {}
    caplog.set_level("INFO", logger="zeekml.pipeline.live.watcher")
    for workers in (0, 1, 2):
        out = tmp_path / f"w{workers}"
        w = Watcher(str(root), str(out), WatchOptions(
            # fpr 0.02: the log is its own baseline (in sample), alerts only at a higher rate
            score=ScoreOptions(baseline=[str(ref)], models_dir=MODELS, conn_notices=True, fpr=0.02),
            once=True, window_records=150, catch_up_factor=1, rescan_seconds=0.1,
            use_events=False, context_lateness=500.0, context_batch_seconds=600.0,
            score_workers=workers))
        s = w.run()
        assert s.scored == 1200 and s.context["late"] == 0
        outs[workers] = _bytes(out)
    assert outs[0] == outs[1] == outs[2]
    assert outs[0]["zeekml_notice.log"], "no alert to compare"
    shared = [r.getMessage() for r in caplog.records if "shared out" in r.getMessage()]
    # shared out by their calibration cost per conn: some learned detector in a process
    assert len(shared) == 2 and all("-> process 0" in m for m in shared), shared
    assert "-> process 1" in shared[1], shared


def test_detectors_are_shared_out_again_by_their_measured_cost(tmp_path, monkeypatch, caplog):
    # "slow" says it is cheap (calibration's cost per conn) but spends 40 ms of CPU a call:
    # shared out by the said costs the watcher gets it; measured, it goes to the process, and
    # the bytes stay those of one process. "host" spends 20 ms a call, so that the watcher
    # keeps a detector of weight after the move (live.pool.MIN_WATCHER_SHARE: with the other
    # two near free, whether the move was allowed hung on how long their numpy took)
    monkeypatch.setattr("zeekml.pipeline.live.pool.REBALANCE_CPU_SECONDS", 0.3)
    root = tmp_path / "logs"
    _write_log(root)

    def fitted(log):
        dets = [PidLogged("back", 20.0, 0.0, log), PidLogged("slow", 5.0, 7.0, log, burn=0.04),
                PidLogged("host", 30.0, 0.0, log, host=True, burn=0.02)]
        cal = {d.name: ThresholdCalibrator(fpr=0.02).fit(np.arange(200.0)) for d in dets}
        return FittedDetectors(dets, cal, 0.02, conn_seconds={"back": 5.0, "slow": 0.1, "host": 3.0})

    runs = {}
    caplog.set_level("INFO", logger="zeekml.pipeline.live.pool")
    for workers in (0, 1):
        log = str(tmp_path / f"w{workers}.pids")
        f = fitted(log)
        monkeypatch.setattr("zeekml.pipeline.live.watcher.calibrate", lambda *a, f=f, **k: f)
        out = tmp_path / f"w{workers}"
        s = Watcher(str(root), str(out), WatchOptions(
            once=True, window_records=50, catch_up_factor=1, rescan_seconds=0.1,
            use_events=False, context_lateness=1.0, context_batch_seconds=1.0,
            score=ScoreOptions(conn_notices=True), score_workers=workers)).run()
        assert s.scored == 1500
        runs[workers] = (_bytes(out), [line.split() for line in open(log)])
    assert runs[0][0] == runs[1][0]
    assert runs[0][0]["zeekml_notice.log"], "no alert to compare"
    calls = runs[1][1]
    me = str(os.getpid())
    slow = [pid for name, pid in calls if name == "slow"]
    assert slow[0] == me and slow[-1] != me, "slow was not moved to the scoring process"
    assert any("reassigned" in r.getMessage() for r in caplog.records)
