"""``zeekml watch`` with detectors that score a conn together with the conns around it in time
(the GNN's graph windows, the autoencoder's and token models' host histories): live verdicts
equal ``zeekml score``'s on a real log fed in pieces, the held-back state survives restarts, and
a toy detector whose score is its neighbour count checks the release rule exactly."""
from __future__ import annotations

import gzip
import json
import os
import threading
import time

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from zeekml.cli import main
from zeekml.flows.table import conn_table
from zeekml.pipeline import FittedDetectors, ScoreOptions, score_fitted
from zeekml.scoring.calibrate import ThresholdCalibrator
from zeekml.scoring.context import horizon
from zeekml.sources.checkpoint import CheckpointStore
from zeekml.pipeline import LiveContext, Watcher, WatchOptions

HERE = os.path.dirname(__file__)
MODELS = os.path.join(HERE, "..", "..", "models")
IOT23 = os.path.join(HERE, "..", "data", "real", "iot23-ctu-34-1", "conn.log.labeled.gz")


def _iot23_head(path: str, n: int = 2000) -> bytes:
    """The header and the first ``n`` records of the IoT-23 capture (span 2 h, records up to
    483 s behind the newest ``ts``: Zeek writes a conn when it ends)."""
    lines = gzip.open(IOT23, "rb").read().split(b"\n")
    head = [l for l in lines[:20] if l.startswith(b"#") and not l.startswith(b"#close")]
    recs = [l for l in lines if l and not l.startswith(b"#")][:n]
    data = b"\n".join(head + recs) + b"\n"
    with open(path, "wb") as f:
        f.write(data)
    return data


def _by_uid(out) -> dict[str, dict]:
    with open(os.path.join(out, "verdicts.jsonl")) as f:
        rows = [json.loads(l) for l in f]
    d = {r["uid"]: r for r in rows}
    assert len(d) == len(rows), "a conn was scored twice"
    return d


def _notices(out) -> list[tuple[bytes, bytes]]:
    with open(os.path.join(out, "zeekml_notice.log"), "rb") as f:
        rows = [l.split(b"\t") for l in f if not l.startswith(b"#")]
    return sorted((r[1], r[10]) for r in rows)


def _wait(pred, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_live_verdicts_with_learned_detectors_equal_batch_on_a_real_log(tmp_path):
    if not os.path.exists(os.path.join(MODELS, "gnn-base", "config.json")):
        pytest.skip("models/ not shipped")
    ref = str(tmp_path / "iot23.log")
    data = _iot23_head(ref)
    # --fpr 0.02: the log is its own baseline, scored in sample; at the default 0.001 its
    # thresholds sit above every conn and no alert would be compared
    r = CliRunner().invoke(main, ["score", ref, "--out", str(tmp_path / "batch"), "--baseline", ref,
                                  "--models", MODELS, "--no-progress", "--conn-notices", "--fpr", "0.02"])
    assert r.exit_code == 0, r.output

    root, out = tmp_path / "logs", str(tmp_path / "live")
    root.mkdir()
    opts = dict(score=ScoreOptions(baseline=[ref], models_dir=MODELS, conn_notices=True, fpr=0.02),
                window_records=40,
                window_seconds=0.05, rescan_seconds=0.1, use_events=False, status_seconds=60,
                context_lateness=500.0, dedup_capacity=0)
    w = Watcher(str(root), out, WatchOptions(**opts))
    t = threading.Thread(target=w.run)
    t.start()
    # eleven pieces, cut inside lines; each is read before the next is written
    cuts = [0, 7001, 7013] + [len(data) * k // 10 for k in range(1, 10)] + [len(data)]
    cuts = sorted(set(cuts))
    try:
        with open(root / "conn.log", "wb") as f:
            for a, b in zip(cuts, cuts[1:]):
                f.write(data[a:b])
                f.flush()
                want = data[:b].count(b"\n") - data[:b].count(b"\n#") - (data[:1] == b"#")
                _wait(lambda: w.stats.records_read >= want and w.stats.state == "running")
        _wait(lambda: w.stats.scored > 0)
    finally:
        w.request_stop()
        t.join(120)
    live = w.stats
    assert live.state == "stopped" and 0 < live.scored < 2000
    ctx = live.context
    # forward: the GNN's 4 windows; back: the causal MoE's (blocks + 1) x its hour of max_age
    assert ctx["forward_s"] == 20.0 and ctx["back_s"] == 18000.0 and ctx["late"] == 0
    # some evicted already: the causal MoE's 5 h horizon counts its originators' latest 17 conns
    # only (evict_rules), the GNN's by time
    assert ctx["pending"] == 2000 - live.scored and ctx["rows"] < 2000
    # a restart restores the held-back conns from the journal; --once scores them
    s = Watcher(str(root), out, WatchOptions(**(opts | {"once": True}))).run()
    assert s.scored == 2000 - live.scored and s.context["pending"] == 0

    a, b = _by_uid(tmp_path / "batch"), _by_uid(out)
    assert a.keys() == b.keys() and len(a) == 2000
    assert set(a[next(iter(a))]["scores"]) == {"iforest", "gnn", "mae", "moe"}
    for uid, x in a.items():
        y = b[uid]
        assert {k: v for k, v in x.items() if k not in ("scores", "score")} == \
            {k: v for k, v in y.items() if k not in ("scores", "score")}, uid
        # the learned models' float32 sums run over differently sized batches and graphs: the
        # scores agree to float32 precision (as with --dask), the iforest's bit for bit
        assert all(abs(x["scores"][k] - y["scores"][k]) < 1e-5 for k in x["scores"]), uid
        assert x["scores"]["iforest"] == y["scores"]["iforest"]
    assert any(x["alert"] for x in a.values())
    assert _notices(tmp_path / "batch") == _notices(out)


# -- the release rule on a toy detector ---------------------------------------------------------

class NeighbourCount:
    """Score = how many conns of the table lie within ``back`` seconds before or ``fwd`` after."""

    note = "ZeekML::Anomalous_Flow"

    def __init__(self, name: str, back: float, fwd: float):
        self.name, self.context_seconds, self.forward_context_seconds = name, back, fwd

    def fit(self, table):
        return self

    def score(self, table):
        ts = table.column("ts").to_numpy(zero_copy_only=False)
        lo = np.searchsorted(np.sort(ts), ts - self.context_seconds, "left")
        hi = np.searchsorted(np.sort(ts), ts + self.forward_context_seconds, "right")
        return (hi - lo).astype(float)

    def explain(self, table, rows, top=3):
        return [f"n={int(s)}" for s in self.score(table)[rows]]


class HostNeighbourCount(NeighbourCount):
    """Score = how many conns of the same originator lie within ``back`` seconds before."""

    context_key = "id.orig_h"

    def score(self, table):
        ts = table.column("ts").to_numpy(zero_copy_only=False)
        host = np.asarray(table.column("id.orig_h").to_pylist())
        return np.array([np.sum((host == h) & (ts >= t - self.context_seconds) & (ts <= t))
                         for h, t in zip(host, ts)], dtype=float)


def _toy_table(n: int, seed: int):
    rng = np.random.default_rng(seed)
    ts = 1000.0 + np.arange(n) * 0.5 - rng.exponential(4.0, n) * (rng.random(n) < 0.3)
    uid = [f"C{i:06d}" for i in range(n)]
    hosts = [f"10.0.0.{h}" for h in rng.integers(1, 8, n)]
    return conn_table([pa.table({"ts": ts, "uid": uid, "id.orig_h": hosts})]), ts


def _toy_fitted():
    dets = [NeighbourCount("back", 20.0, 0.0), NeighbourCount("both", 5.0, 7.0),
            HostNeighbourCount("host", 30.0, 0.0)]
    cal = {d.name: ThresholdCalibrator(fpr=0.01).fit(np.arange(100.0)) for d in dets}
    return FittedDetectors(dets, cal, 0.01)


def test_horizon_of_a_detector():
    assert horizon(NeighbourCount("x", 20.0, 3.0)) == (20.0, 3.0)

    class Sym:
        name, context_seconds = "gnn", 50.0

    class Back:
        name, context_seconds, forward_context_seconds = "mae", 3600.0, 0.0

    assert horizon(Sym()) == (50.0, 50.0) and horizon(Back()) == (3600.0, 0.0)


@pytest.mark.parametrize("late_expected", [False, True])
def test_release_rule_gives_batch_scores_and_journal_replays_the_state(late_expected):
    table, ts = _toy_table(600, seed=1)
    # just enough (the most a record lags the newest ts) or far too little
    lateness = 0.0 if late_expected else float(np.max(np.maximum.accumulate(ts) - ts))
    fitted = _toy_fitted()
    batch = {v.uid: v for v in score_fitted(table, fitted)}
    ctx = LiveContext(fitted, lateness=lateness, max_rows=10_000)
    got, journal = [], b""
    for i, a in enumerate(range(0, 600, 37)):
        ctx.add(table.slice(a, 37))
        got += ctx.release(fitted).verdicts()
        journal += ctx.journal_delta()
        if i == 7:      # a restart: the journal rebuilds the same state
            again = LiveContext(fitted, lateness=lateness, max_rows=10_000)
            again.replay(journal)
            assert (again.rows, again.pending, again.released) == (ctx.rows, ctx.pending, ctx.released)
            assert again.ts.tolist() == ctx.ts.tolist() and again.scored.tolist() == ctx.scored.tolist()
            ctx = again
    assert ctx.rows < 600                  # scored conns out of every horizon were dropped
    held = ctx.pending
    assert held > 0
    got += ctx.release(fitted, flush=True).verdicts()
    assert sorted(v.uid for v in got) == sorted(batch) and ctx.pending == 0
    same = sum(v.scores == batch[v.uid].scores for v in got)
    if late_expected:
        assert ctx.late > 0 and same < 600        # conns arrived after their neighbours were scored
    else:
        assert ctx.late == 0 and same == 600
        assert [v.verdict_id for v in got] == [batch[v.uid].verdict_id for v in got]


def _waiting_context():
    """220 toy conns, their detectors, their batch scores, the lateness they need, a settable
    clock ``now[0]`` and a ``LiveContext`` on it whose batches never fill (``batch_seconds``
    1e6), so due conns go out by ``release_wait`` (5 s) alone."""
    table, ts = _toy_table(220, seed=3)
    fitted = _toy_fitted()
    batch = {v.uid: v.scores for v in score_fitted(table, fitted)}
    lateness = float(np.max(np.maximum.accumulate(ts) - ts))
    now = [0.0]
    ctx = LiveContext(fitted, lateness=lateness, max_rows=10_000, batch_seconds=1e6,
                      release_wait=5.0, clock=lambda: now[0])
    return table, fitted, batch, lateness, now, ctx


def test_due_conns_wait_at_most_release_wait_for_their_batch():
    """Due conns (their forward context and the lateness passed) are held until their batch
    spans ``batch_seconds`` of ts, but no longer than ``release_wait`` seconds of wall-clock
    time; released early or not, each gets its batch score."""
    table, fitted, batch, lateness, now, ctx = _waiting_context()
    ctx.add(table.slice(0, 100))              # 50 s of conns
    got = ctx.release(fitted).verdicts()      # the first due ones start the first batch
    first = len(got)
    assert first > 0
    ctx.add(table.slice(100, 40))             # 20 s more: more are due, the batch is not full
    assert len(ctx.release(fitted)) == 0      # the clock starts
    now[0] = 4.9
    ctx.add(table.slice(140, 10))
    assert len(ctx.release(fitted)) == 0
    now[0] = 5.0
    ctx.add(table.slice(150, 10))
    got += ctx.release(fitted).verdicts()
    assert first < len(got) < 160 and all(v.ts <= ctx.released for v in got)
    # the clock starts again with the next due conns
    ctx.add(table.slice(160, 60))
    assert len(ctx.release(fitted)) == 0
    now[0] = 9.9
    assert len(ctx.release(fitted)) == 0
    now[0] = 10.0
    n = len(got)
    got += ctx.release(fitted).verdicts()
    assert len(got) > n
    got += ctx.release(fitted, flush=True).verdicts()
    assert len(got) == 220 and ctx.late == 0
    assert all(v.scores == batch[v.uid] for v in got)
    # without the wait, nothing more is released before the batch is full
    ctx = LiveContext(fitted, lateness=lateness, max_rows=10_000, batch_seconds=1e6,
                      release_wait=None, clock=lambda: now[0])
    ctx.add(table.slice(0, 100))
    first = len(ctx.release(fitted))
    ctx.add(table.slice(100, 100))
    now[0] = 1e9
    assert len(ctx.release(fitted)) == 0 and ctx.pending == 200 - first


def test_conns_due_after_a_long_release_wait_from_that_release():
    """A watcher scoring a release reads nothing meanwhile: conns it finds due at its first
    check after a release wait from that release, so after a release that took longer than
    ``release_wait`` the next one is at once (not ``release_wait`` later); a check after it
    that finds none due lets the next due conns wait their ``release_wait`` again."""
    table, fitted, batch, lateness, now, ctx = _waiting_context()
    ctx.add(table.slice(0, 100))
    got = ctx.release(fitted).verdicts()          # released at 0 (the first batch)
    assert got
    now[0] = 8.0                                  # 8 s scoring it; meanwhile 20 s more of conns
    ctx.add(table.slice(100, 40))
    n = len(got)
    got += ctx.release(fitted).verdicts()         # due since the release at 0: released now
    assert len(got) > n
    now[0] = 9.0                                  # nothing new is due at the check after it
    assert len(ctx.release(fitted)) == 0
    ctx.add(table.slice(140, 40))
    now[0] = 9.5
    assert len(ctx.release(fitted)) == 0          # due from 9.5 on: they wait till 14.5
    now[0] = 14.4
    assert len(ctx.release(fitted)) == 0
    now[0] = 14.5
    n = len(got)
    got += ctx.release(fitted).verdicts()
    assert len(got) > n
    ctx.add(table.slice(180, 40))
    got += ctx.release(fitted, flush=True).verdicts()
    assert len(got) == 220 and all(v.scores == batch[v.uid] for v in got)


def test_memory_bound_releases_and_evicts_early():
    table, _ = _toy_table(600, seed=2)
    fitted = _toy_fitted()
    ctx = LiveContext(fitted, lateness=1e9, max_rows=100)    # nothing would be due on time
    n = 0
    for a in range(0, 600, 50):
        ctx.add(table.slice(a, 50))
        n += len(ctx.release(fitted))
        assert ctx.rows <= 150
    assert ctx.released_early > 0 and ctx.evicted_early > 0 and n + ctx.pending == 600


@pytest.mark.parametrize("damage", ["length", "body"])
def test_a_damaged_context_journal_is_a_one_line_error(tmp_path, damage):
    gnn = os.path.join(MODELS, "gnn-base")
    if not os.path.exists(os.path.join(gnn, "config.json")):
        pytest.skip("models/gnn-base not shipped")
    (tmp_path / "models").mkdir()
    os.symlink(os.path.abspath(gnn), tmp_path / "models" / "gnn-base")
    real = os.path.join(HERE, "..", "data", "real", "zat", "data", "conn.log")
    root, out = tmp_path / "logs", tmp_path / "out"
    root.mkdir()
    (root / "conn.log").write_bytes(open(real, "rb").read())
    args = ["watch", str(root), "--out", str(out), "--once", "--baseline", real, "--quiet",
            "--models", str(tmp_path / "models")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    journal = [p for p in os.listdir(out) if p.endswith(".journal")]
    assert len(journal) == 1
    path = out / journal[0]
    data = bytearray(path.read_bytes())
    if damage == "length":
        data[0:8] = (1 << 40).to_bytes(8, "little")
    else:
        data[9:60] = bytes(51)
    path.write_bytes(bytes(data))
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1
    assert "damaged context journal" in r.output and "use a new --out" in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_journal_generations_compact_and_restore(tmp_path, monkeypatch):
    """With compaction at every window the journal is rewritten as new generations, at most the
    committed one and the one before stay on disk, and a restart restores the held-back conns:
    the verdicts equal those of a run that never compacted."""
    gnn = os.path.join(MODELS, "gnn-base")
    if not os.path.exists(os.path.join(gnn, "config.json")):
        pytest.skip("models/gnn-base not shipped")
    (tmp_path / "models").mkdir()
    os.symlink(os.path.abspath(gnn), tmp_path / "models" / "gnn-base")
    ref = str(tmp_path / "iot23.log")
    data = _iot23_head(ref, 600)
    cut = data.index(b"\n", len(data) // 2) + 1

    def run(out, part, once, **compaction):
        root = tmp_path / f"logs-{out}"
        root.mkdir(exist_ok=True)
        (root / "conn.log").write_bytes(part)
        opts = WatchOptions(score=ScoreOptions(baseline=[ref], models_dir=str(tmp_path / "models")),
                            once=once, window_records=30, catch_up_factor=1, rescan_seconds=0.1,
                            use_events=False, context_lateness=500.0, context_batch_seconds=30.0,
                            **compaction)
        w = Watcher(str(root), str(tmp_path / out), opts)
        if once:
            return w.run()
        t = threading.Thread(target=w.run)
        t.start()
        _wait(lambda: w.stats.records_read >= part.count(b"\n") - 8 and w.stats.windows > 3)
        _wait(lambda: w.follower is None or w.follower.caught_up)
        time.sleep(0.3)
        w.request_stop()
        t.join(60)
        return w.stats

    plain = [run("plain", data[:cut], False), run("plain", data, True)]
    every_window = {"journal_compact_bytes": 1, "journal_compact_ratio": 0}
    compacted = [run("compact", data[:cut], False, **every_window),
                 run("compact", data, True, **every_window)]
    assert plain[0].context["pending"] > 0 and compacted[0].context["pending"] > 0
    journals = sorted(p for p in os.listdir(tmp_path / "compact") if p.endswith(".journal"))
    assert 1 <= len(journals) <= 2 and journals[-1] > "context.000002.journal", journals
    cp = CheckpointStore(str(tmp_path / "compact")).load()
    assert cp.context["journal"] == journals[-1]
    a, b = _by_uid(tmp_path / "plain"), _by_uid(tmp_path / "compact")
    assert a.keys() == b.keys() and len(a) == 600
    for uid, x in a.items():
        assert x["alert"] == b[uid]["alert"] and x["verdict_id"] == b[uid]["verdict_id"]
        assert all(abs(x["scores"][k] - b[uid]["scores"][k]) < 1e-5 for k in x["scores"])


def test_context_of_a_host_keyed_detector_is_its_originators_conns():
    from zeekml.scoring.context import InContext, context_key, detectors_in_context
    table, ts = _toy_table(200, seed=3)
    fitted = _toy_fitted()
    targets = np.arange(100, 103)
    dets = detectors_in_context(fitted.detectors, table, targets)
    assert all(isinstance(d, InContext) for d in dets)
    hosts = set(table.column("id.orig_h").take(pa.array(targets)).to_pylist())
    keyed = dets[2].context.column("id.orig_h").to_pylist()
    assert set(keyed) == hosts and len(set(dets[0].context.column("id.orig_h").to_pylist())) > len(hosts)
    assert context_key(fitted.detectors[0]) is None and context_key(fitted.detectors[2]) == "id.orig_h"

    from zeekml.train.registry import get_kind
    for kind in ("mae", "moe", "dense"):             # the shipped host-history detectors declare it
        det = get_kind(kind).detector(os.path.join(MODELS, f"{kind}-base"), device="cpu")
        assert context_key(det) == "id.orig_h" and det.forward_context_seconds == 0.0
    # the same scores as scoring the whole table
    whole = {v.uid: v.scores for v in score_fitted(table, fitted)}
    import dataclasses
    part = score_fitted(table.take(pa.array(targets)), dataclasses.replace(fitted, detectors=dets))
    assert [v.scores for v in part] == [whole[v.uid] for v in part]


class LatestOfHost(NeighbourCount):
    """Score = a weighted sum of the ts of the originator's latest ``k`` conns up to and
    including this one, by (ts, arrival) (``HostHistory.window``, what the host-history
    featurisers read): only those ``k`` conns change it."""

    context_key = "id.orig_h"

    def __init__(self, name: str, k: int, declare: bool):
        super().__init__(name, 3600.0, 0.0)
        self.k = k
        if declare:
            self.context_key_rows = k

    def score(self, table):
        from zeekml.features.host_history import HostHistory
        hist = HostHistory.build(table)
        pos, valid = hist.window(np.arange(table.num_rows), self.k, None)
        t = hist.sorted_ts[pos] - hist.ts[:, None]
        return (np.where(valid, t, 0.0) * np.arange(1, self.k + 1)).sum(axis=1) + valid.sum(axis=1)


@pytest.mark.parametrize("seed", [4, 5])
def test_a_detector_declaring_its_history_length_gets_that_much_context(seed):
    """``context_key_rows = k``: per originator, only the rows from the ``k - 1``-th before its
    earliest target on; the scores stay those of the whole table (ties in ts included)."""
    import dataclasses

    from zeekml.scoring.context import detectors_in_context, latest_per_key
    table, ts = _toy_table(400, seed=seed)
    ts = np.round(ts)                                  # ties in ts: arrival order decides
    table = table.set_column(0, "ts", pa.array(ts))
    dets = [LatestOfHost("all", 4, declare=False), LatestOfHost("cut", 4, declare=True)]
    cal = {d.name: ThresholdCalibrator(fpr=0.01).fit(np.arange(100.0)) for d in dets}
    fitted = FittedDetectors(dets, cal, 0.01)
    whole = {v.uid: v.scores for v in score_fitted(table, fitted)}
    for targets in (np.arange(300, 340), np.array([399]), np.array([5, 250, 251])):
        full, cut = detectors_in_context(fitted.detectors, table, targets)
        assert cut.context.num_rows < full.context.num_rows
        part = score_fitted(table.take(pa.array(targets)),
                            dataclasses.replace(fitted, detectors=[full, cut]))
        for v in part:
            assert v.scores["cut"] == v.scores["all"] == whole[v.uid]["all"]
    # the rule by hand: key 1's earliest target is at sorted position 3, so 1 and 2 join it
    keep = latest_per_key(np.array([1, 1, 1, 1, 2, 2]), np.array([0., 1, 2, 3, 0, 1]),
                          np.arange(6), np.array([0, 0, 0, 1, 0, 0], bool), 3)
    assert keep.tolist() == [False, True, True, True, False, False]
    # what watch keeps of the older conns: each key's last 2 by (ts, row), ties by row
    from zeekml.scoring.context import last_per_key
    keep = last_per_key(np.array([1, 1, 1, 2, 1, 2]), np.array([0., 2, 1, 5, 2, 0]), np.arange(6), 2)
    assert keep.tolist() == [False, True, False, True, True, True]


def test_host_keyed_history_keeps_only_each_hosts_latest_rows_and_batch_scores():
    """A detector declaring ``context_key_rows = k`` (the host histories) needs of the conns before
    the oldest pending one only each originator's latest ``k - 1``, whatever its time horizon
    (an hour here, the toy log spans 300 s): the context evicts the rest, and every verdict is
    still the batch's."""
    from zeekml.pipeline.live.context import evict_rules

    table, ts = _toy_table(600, seed=2)
    dets = [LatestOfHost("host", 4, declare=True), NeighbourCount("back", 20.0, 0.0)]
    cal = {d.name: ThresholdCalibrator(fpr=0.01).fit(np.arange(100.0)) for d in dets}
    fitted = FittedDetectors(dets, cal, 0.01)
    assert evict_rules(fitted) == (20.0, {"id.orig_h": (4, 3600.0)})
    ctx, rows_after, most = _live_equals_batch(table, ts, fitted)
    # by time alone (an hour back) all 600 would stay; 7 hosts x 3 older rows + the last ~45 s
    assert rows_after < 300 and most < 350 and ctx.evicted_early == 0 and ctx.late == 0


def _live_equals_batch(table: pa.Table, ts: np.ndarray, fitted: FittedDetectors) -> tuple:
    """``table`` through a ``LiveContext`` 37 rows at a time, released after each: every verdict
    must be the batch's. Returns the context, the rows it held before the final flush and the
    most it held."""
    lateness = float(np.max(np.maximum.accumulate(ts) - ts))
    batch = {v.uid: v for v in score_fitted(table, fitted)}
    ctx = LiveContext(fitted, lateness=lateness, max_rows=10_000)
    got, most = [], 0
    for a in range(0, table.num_rows, 37):
        ctx.add(table.slice(a, 37))
        got += ctx.release(fitted).verdicts()
        most = max(most, ctx.rows)
    rows_after = ctx.rows
    got += ctx.release(fitted, flush=True).verdicts()
    assert sorted(v.uid for v in got) == sorted(batch)
    assert all(v.scores == batch[v.uid].scores for v in got)
    return ctx, rows_after, most


class Composite(NeighbourCount):
    """A committee's shape (``scoring.context.context_parts``): the sum of a host-history part
    (an hour back, the originator's latest 4 conns) and a by-time part (20 s of every conn), no
    key of its own, the widest horizon of the two."""

    def __init__(self, name: str):
        super().__init__(name, 3600.0, 0.0)
        self.context_key = None
        self.context_parts = [LatestOfHost("host", 4, declare=True), NeighbourCount("back", 20.0, 0.0)]

    def score(self, table):
        return sum(p.score(table) for p in self.context_parts)


def test_a_composite_detector_keeps_the_union_of_its_parts_contexts():
    """A committee of a graph member (every conn of 50 s) and host-history members (their
    originator's latest conns of 1-5 h) needs their contexts' union, not every conn of its
    widest horizon: split scoring and watch keep that much, and every verdict is the batch's."""
    from zeekml.pipeline.live.context import evict_rules
    from zeekml.scoring.context import InContext, detectors_in_context

    table, ts = _toy_table(600, seed=3)
    det = Composite("committee")
    whole = det.score(table)
    targets = np.arange(400, 420, dtype=np.int64)
    (ctx,) = detectors_in_context([det], table, targets)
    assert isinstance(ctx, InContext)
    # by its horizon alone (an hour, the toy spans 300 s) every earlier row would be context
    assert ctx.context.num_rows < 120
    assert np.array_equal(ctx.score(table.take(pa.array(targets))), whole[targets])
    cal = {det.name: ThresholdCalibrator(fpr=0.01).fit(np.arange(100.0))}
    fitted = FittedDetectors([det], cal, 0.01)
    assert evict_rules(fitted) == (20.0, {"id.orig_h": (4, 3600.0)})
    live, _, most = _live_equals_batch(table, ts, fitted)
    assert most < 350 and live.evicted_early == 0
