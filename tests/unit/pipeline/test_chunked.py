"""Chunked ``score`` (``zeekml.pipeline.chunked``, issue 17): scoring the input in chunks of a
few hundred conns gives the verdicts, notices, summary and incidents of scoring it as one table,
the spill file lives in a private directory that is removed whatever happens, and incidents
built from the alerting rows alone equal those built from every verdict."""
from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from zeekml.parse import Quarantine
from zeekml.pipeline.batch import load_conns, score_paths, score_table
from zeekml.pipeline.chunked import (SpilledConns, TriageBaseline, TriageRows, context_rows,
                                     spill_inputs)
from zeekml.pipeline.options import ScoreOptions, ScoreSummary
from zeekml.scoring.incidents import incidents_from_batch
from zeekml.scoring.verdict import VerdictBatch

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"
IOT23 = EXAMPLES / "iot23" / "conn.log.labeled"      # 2,000 conns of a real IoT-23 capture
MODELS = ROOT / "models"
VOLATILE = ("seconds", "flows_per_s", "outputs")


def _lines(out: Path, name: str) -> list[bytes]:
    return (out / name).read_bytes().splitlines(keepends=True)


def _notices(out: Path) -> list[bytes]:
    return [x for x in _lines(out, "zeekml_notice.log") if not x.startswith((b"#open", b"#close"))]


def _summary(out: Path) -> dict:
    s = json.loads((out / "summary.json").read_text())
    return {k: v for k, v in s.items() if k not in VOLATILE}


# -- whole runs: several chunks == one chunk --------------------------------------------------------

def _in_turn_then_side_by_side(tmp_path: Path, monkeypatch, opts: ScoreOptions, spans: list) -> None:
    """Score the IoT-23 slice with ``opts`` with the detectors in turn (into ``tmp_path/1``),
    then side by side (``tmp_path/2``; ``spans`` keeps that run's lanes only): the same bytes."""
    from zeekml.pipeline import side_by_side

    for workers in ("1", "2"):
        monkeypatch.setenv(side_by_side.THREADS_ENV, workers)
        score_paths([str(IOT23)], str(tmp_path / workers), opts)
        if workers == "1":
            spans.clear()
    for name in ("verdicts.jsonl", "incidents.jsonl", "baseline.json"):
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes(), name
    assert _summary(tmp_path / "1") == _summary(tmp_path / "2")


def _timed_lanes(monkeypatch) -> list[tuple[str, int, float, float]]:
    """``(lane, order, start, end)`` of every call the run's ``side_by_side.Lanes`` run, as
    they end."""
    from zeekml.pipeline import side_by_side

    spans: list[tuple[str, int, float, float]] = []
    submit = side_by_side.Lanes.submit

    def timed(self, lane, call, order=0):
        def go():
            t0 = time.perf_counter()
            try:
                return call()
            finally:
                spans.append((lane, order, t0, time.perf_counter()))
        return submit(self, lane, go, order)

    monkeypatch.setattr(side_by_side.Lanes, "submit", timed)
    return spans


def test_chunks_give_the_bytes_of_one_table(tmp_path):
    """Without learned models every output is the same bytes; the input (examples/: three
    formats, 2,361 conns) spans eight chunks of 300 and is spilled to disk."""
    one, many = tmp_path / "one", tmp_path / "many"
    score_paths([str(EXAMPLES)], str(one), ScoreOptions(fpr=0.01, conn_notices=True))
    s = score_paths([str(EXAMPLES)], str(many), ScoreOptions(fpr=0.01, chunk_rows=300,
                                                             conn_notices=True))
    assert s.scored == 2361 and s.alerts > 0
    for name in ("verdicts.jsonl", "incidents.jsonl", "quarantine.jsonl", "baseline.json"):
        assert (many / name).read_bytes() == (one / name).read_bytes(), name
    assert _notices(many) == _notices(one)
    assert [x for x in _lines(many, "zeekml_incident.log") if not x.startswith((b"#open", b"#close"))] \
        == [x for x in _lines(one, "zeekml_incident.log") if not x.startswith((b"#open", b"#close"))]
    assert _summary(many) == _summary(one)
    assert len(_lines(one, "incidents.jsonl")) > 0


def test_chunks_with_the_learned_models_time_context(tmp_path):
    """The shipped GNN, autoencoder and MoE score a conn from the conns around it in time; each
    chunk is scored with the rows of the other chunks within their horizon, so the verdicts are
    those of one table: same alerts, notes and models, the iforest's scores bit for bit, the
    learned ones to float32 precision (their sums run over differently sized batches, as with
    --dask)."""
    if not (MODELS / "gnn-base" / "config.json").exists():
        pytest.skip("models/ not shipped")
    one, many = tmp_path / "one", tmp_path / "many"
    opts = dict(fpr=0.01, models_dir=str(MODELS))
    score_paths([str(IOT23)], str(one), ScoreOptions(**opts))
    score_paths([str(IOT23)], str(many), ScoreOptions(**opts, chunk_rows=450))
    a = [json.loads(x) for x in _lines(one, "verdicts.jsonl")]
    b = [json.loads(x) for x in _lines(many, "verdicts.jsonl")]
    assert len(a) == len(b) == 2000
    assert {"gnn", "mae", "moe"} <= set(a[0]["scores"])
    for x, y in zip(a, b):
        assert (x["uid"], x["alert"], x["note"], x["model"]) == (y["uid"], y["alert"], y["note"], y["model"])
        assert x["scores"]["iforest"] == y["scores"]["iforest"]
        assert x["scores"].keys() == y["scores"].keys()
        assert all(abs(x["scores"][k] - y["scores"][k]) < 1e-5 for k in x["scores"]), x["uid"]
    sa, sb = _summary(one), _summary(many)
    assert sa["thresholds"] == sb["thresholds"] and sa["alerts_by_note"] == sb["alerts_by_note"]
    ia = [json.loads(x) for x in _lines(one, "incidents.jsonl")]
    ib = [json.loads(x) for x in _lines(many, "incidents.jsonl")]
    assert [(i["incident_id"], i["conns"], i["alerts"]) for i in ia] == \
        [(i["incident_id"], i["conns"], i["alerts"]) for i in ib]



def test_chunks_take_the_baselines_scores_from_the_fit(tmp_path, monkeypatch):
    """Beyond one chunk the fit scores the baseline as its own input and the chunks do not score
    its conns again (``BaselineScores``): every output is the bytes of a run that scores them
    again, and the learned detectors' models run on the other conns only."""
    if not (MODELS / "gnn-base" / "config.json").exists():
        pytest.skip("models/ not shipped")
    from zeekml.pipeline import chunked
    from zeekml.scoring.context import WithKnownScores

    opts = ScoreOptions(fpr=0.01, models_dir=str(MODELS), chunk_rows=450, conn_notices=True)
    known: dict[str, int] = {}
    score = WithKnownScores.score

    def counted(self, table):
        known[self.name] = known.get(self.name, 0) + int(self.known.sum())
        return score(self, table)

    monkeypatch.setattr(WithKnownScores, "score", counted)
    reused, again = tmp_path / "reused", tmp_path / "again"
    s = score_paths([str(IOT23)], str(reused), opts)
    # 600 baseline conns (the earliest 30% of 2,000); the GNN scores again the few whose
    # graph reaches past the baseline's end, the others none
    assert known["iforest"] == known["mae"] == known["moe"] == s.baseline_records == 600
    assert 590 <= known["gnn"] < 600
    monkeypatch.setattr(chunked.BaselineScores, "of_chunk", lambda self, start, stop: {})
    score_paths([str(IOT23)], str(again), opts)
    for name in ("verdicts.jsonl", "incidents.jsonl", "baseline.json"):
        assert (reused / name).read_bytes() == (again / name).read_bytes(), name
    assert _notices(reused) == _notices(again)
    assert _summary(reused) == _summary(again)



def test_chunks_overlapped_in_lanes_give_the_bytes_of_chunks_in_turn(tmp_path, monkeypatch):
    """Beyond one chunk the detectors score chunk i + 1 while chunk i is still scored, explained
    and written (``side_by_side.Lanes``): every output is the bytes of the detectors in turn
    (one torch thread each way), and a detector's next chunk did start before another's
    chunk was done."""
    if not (MODELS / "gnn-base" / "config.json").exists():
        pytest.skip("models/ not shipped")

    spans = _timed_lanes(monkeypatch)
    monkeypatch.setenv("ZEEKML_TORCH_THREADS", "1")
    opts = ScoreOptions(fpr=0.01, models_dir=str(MODELS), chunk_rows=450, conn_notices=True)
    _in_turn_then_side_by_side(tmp_path, monkeypatch, opts, spans)
    assert _notices(tmp_path / "1") == _notices(tmp_path / "2")
    # 2,000 conns in chunks of 450: five chunks; a detector's first call of a chunk scores
    # it (the second, if any, explains its alerts); the baseline's triage profile on its own lane
    from zeekml.pipeline.chunked import TRIAGE_LANE

    assert [(lane, order) for lane, order, _, _ in spans if lane == TRIAGE_LANE] == [(TRIAGE_LANE, -1)]
    scored: dict[tuple[str, int], tuple[float, float]] = {}
    for lane, order, t0, t1 in sorted(spans, key=lambda s: s[2]):
        if lane != TRIAGE_LANE:
            scored.setdefault((lane, order), (t0, t1))
    assert {order for _, order in scored} == {0, 1, 2, 3, 4}
    done = {}
    for (lane, order), (_, t1) in scored.items():
        done[order] = max(done.get(order, 0.0), t1)
    assert any(t0 < done[order - 1] for (lane, order), (t0, _) in scored.items() if order > 0)


def test_a_classifier_scores_two_chunks_at_once_with_the_bytes_of_chunks_in_turn(tmp_path, monkeypatch):
    """The known-bad committee (``calls_side_by_side``) alone beside the IsolationForest: its
    lane is as wide as the threads, so it scores two chunks at once instead of one thread
    waiting on the cheap lane; every output is the bytes of the detectors in turn, and its
    alerts (most of this IoT-23 slice) are explained without running its members again."""
    committee = MODELS / "malicious-committee"
    if not (committee / "config.json").exists():
        pytest.skip("models/ not shipped")
    from zeekml.scoring.detectors import classifier

    spans = _timed_lanes(monkeypatch)
    explained_by_model = []
    scored_proba = classifier.ClassifierDetector.scored_proba

    def counted(self, table, rows):
        head = self.head.proba
        self.head.proba = lambda t, r: (explained_by_model.append(len(r)), head(t, r))[1]
        try:
            return scored_proba(self, table, rows)
        finally:
            del self.head.proba

    monkeypatch.setattr(classifier.ClassifierDetector, "scored_proba", counted)
    monkeypatch.setenv("ZEEKML_TORCH_THREADS", "1")
    opts = ScoreOptions(fpr=0.01, models_dir=str(committee), chunk_rows=450)
    _in_turn_then_side_by_side(tmp_path, monkeypatch, opts, spans)
    assert _summary(tmp_path / "2")["alerts"] > 500 and explained_by_model == []
    calls = sorted((t0, t1) for lane, _, t0, t1 in spans if lane == "clf-malicious-committee")
    assert any(b0 < a1 for (_, a1), (b0, _) in zip(calls, calls[1:]))     # two at once


def test_each_chunk_starts_on_a_trimmed_heap(tmp_path, monkeypatch):
    """The freed pages of the fit and of each chunk go back to the system before the next chunk
    (glibc kept them, and every chunk started higher: bench/README.md)."""
    from zeekml.pipeline import chunked

    trims = []
    monkeypatch.setattr(chunked, "trim_heap", lambda: trims.append(True))
    score_paths([str(IOT23)], str(tmp_path / "out"), ScoreOptions(fpr=0.02, chunk_rows=500))
    assert len(trims) == 4                           # 2,000 conns, chunks of 500


def test_context_within_the_baseline():
    """A baseline conn's scores carry over only when no other conn lies within the horizon."""
    from zeekml.scoring.context import context_within

    ts = np.array([0.0, 10.0, 20.0, 30.0, 45.0, 50.0])
    rows = np.array([0, 1, 2, 3])                    # the conns at 45 and 50 s are not baseline
    assert context_within(ts, rows, 0.0, 0.0).all()                 # no context: all of them
    assert context_within(ts, rows, 3600.0, 0.0).tolist() == [True] * 4     # looks back only
    assert context_within(ts, rows, 50.0, 25.0).tolist() == [True, True, False, False]
    assert context_within(ts, rows, 50.0, 24.9).tolist() == [True, True, True, False]
    unset = ts.copy()
    unset[5] = np.inf                                # an outside conn without a time
    assert not context_within(unset, rows, 3600.0, 0.0).any()
    unset[0] = np.inf
    unset[5] = 50.0
    assert context_within(unset, rows, 50.0, 5.0).tolist() == [False, True, True, True]   # its own
    # an outside conn before: the horizon back counts too
    early = ts[[5, 0, 1]]                            # 50 (baseline), 0 (baseline), 10 (outside)
    assert context_within(early, np.array([0, 1]), 0.0, 10.0).tolist() == [True, False]
    assert context_within(early, np.array([0, 1]), 39.0, 0.0).tolist() == [True, True]
    assert context_within(early, np.array([0, 1]), 40.0, 0.0).tolist() == [False, True]


def test_feedback_and_allowlist_work_chunk_by_chunk(tmp_path):
    """--feedback's benign conns are found while reading (their uids) and read back from the
    spill; --allowlist suppresses per chunk: the outputs equal one table's."""
    first = score_paths([str(IOT23)], str(tmp_path / "first"), ScoreOptions(fpr=0.02))
    alerts = [json.loads(x) for x in _lines(tmp_path / "first", "verdicts.jsonl")]
    alerts = [v for v in alerts if v["alert"]]
    assert first.alerts >= 4
    fb = tmp_path / "feedback.jsonl"
    fb.write_text(json.dumps({"label": "benign", "conns": [{"uid": v["uid"]} for v in alerts[:3]]}) + "\n")
    allow = tmp_path / "allow.toml"
    allow.write_text(f'[[rule]]\nhost = "{alerts[-1]["id.orig_h"]}"\nreason = "lab"\n')
    outs = []
    for name, rows in (("one", 100_000), ("many", 250)):
        out = tmp_path / name
        s = score_paths([str(IOT23)], str(out), ScoreOptions(fpr=0.02, feedback=str(fb),
                                                             allowlist=str(allow), chunk_rows=rows))
        assert s.feedback_baseline is not None
        outs.append(out)
    one, many = outs
    assert (many / "verdicts.jsonl").read_bytes() == (one / "verdicts.jsonl").read_bytes()
    assert (many / "incidents.jsonl").read_bytes() == (one / "incidents.jsonl").read_bytes()
    assert _summary(many) == _summary(one)
    assert b'"suppressed_by"' in (one / "verdicts.jsonl").read_bytes()


# -- the spill --------------------------------------------------------------------------------------

def _conns(n: int = 2000) -> pa.Table:
    return load_conns([str(IOT23)], Quarantine(), ScoreSummary()).slice(0, n)


def test_spill_reads_back_what_was_written_and_is_removed():
    t = _conns()
    with SpilledConns(chunk_rows=300) as spill:
        for a in range(0, t.num_rows, 170):       # parser batches never align with chunks
            spill.append(t.slice(a, 170))
        spill.finish()
        assert spill.spilled and spill.n_chunks == 7
        where = spill._dir
        assert stat.S_IMODE(os.stat(where).st_mode) == 0o700
        got = pa.concat_tables(spill.chunk(i) for i in range(spill.n_chunks))
        assert got.equals(t)
        assert [spill.bounds(i) for i in (0, 6)] == [(0, 300), (1800, 2000)]
        rows = np.array([0, 299, 300, 1234, 1999])
        assert spill.take(rows).equals(t.take(pa.array(rows)))
        assert np.array_equal(spill.ts, np.nan_to_num(t.column("ts").to_numpy(), nan=np.inf))
    assert not os.path.exists(where)


def test_up_to_two_chunks_stay_in_memory_as_one_table():
    """``ONE_TABLE_CHUNKS``: 600 conns in chunks of 300 are one table in memory; one more and
    the input is spilled, in chunks of 300."""
    from zeekml.pipeline.chunked import ONE_TABLE_CHUNKS

    assert ONE_TABLE_CHUNKS == 2
    t = _conns(601)
    for n, spilled, chunks in ((300, False, 1), (600, False, 1), (601, True, 3)):
        with SpilledConns(chunk_rows=300) as spill:
            spill.append(t.slice(0, 100))
            spill.append(t.slice(100, n - 100))
            spill.finish()
            assert (spill.spilled, spill.n_chunks) == (spilled, chunks), n
            got = spill.table() if not spilled else pa.concat_tables(
                spill.chunk(i) for i in range(chunks))
            assert got.equals(t.slice(0, n))
            if spilled:
                assert [spill.bounds(i) for i in range(chunks)] == [(0, 300), (300, 600), (600, 601)]


class _Interrupted(BaseException):
    pass


def test_spill_is_removed_on_an_error_while_reading(monkeypatch, tmp_path):
    """Ctrl-C (a BaseException) while reading: the directory made so far is gone."""
    import zeekml.pipeline.chunked as chunked

    made = []
    real_mkdtemp = chunked.tempfile.mkdtemp

    def mkdtemp(**kw):
        made.append(real_mkdtemp(**kw))
        return made[-1]

    calls = {"n": 0}
    real_append = SpilledConns.append

    def append(self, table):
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Interrupted()
        real_append(self, table)

    monkeypatch.setattr(chunked.tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(SpilledConns, "append", append)
    t = _conns()
    log = tmp_path / "conn.log"
    log.write_text("")   # read_conn_batches is replaced below: the batches come from t
    monkeypatch.setattr(chunked, "read_conn_batches",
                        lambda *a, **k: iter([t.slice(0, 900), t.slice(900, 900), t.slice(1800)]))
    monkeypatch.setattr(chunked, "conn_table", lambda bs: bs[0])
    with pytest.raises(_Interrupted):
        spill_inputs([str(log)], Quarantine(), ScoreSummary(), chunk_rows=500)
    assert made and not any(os.path.exists(d) for d in made)


def test_spill_is_removed_when_scoring_fails(monkeypatch, tmp_path):
    import zeekml.pipeline.chunked as chunked

    made = []
    real_mkdtemp = chunked.tempfile.mkdtemp
    monkeypatch.setattr(chunked.tempfile, "mkdtemp",
                        lambda **kw: made.append(real_mkdtemp(**kw)) or made[-1])

    def boom(*a, **k):
        raise _Interrupted()

    monkeypatch.setattr(chunked, "in_context", boom)
    with pytest.raises(_Interrupted):
        score_paths([str(IOT23)], str(tmp_path / "out"), ScoreOptions(fpr=0.02, chunk_rows=500))
    assert len(made) == 1 and not os.path.exists(made[0])


# -- context rows -----------------------------------------------------------------------------------

def test_context_rows_are_those_within_the_horizon_of_the_chunk():
    ts = np.array([0.0, 5.0, 100.0, 10.0, 11.0, np.inf, 12.0, 30.0, 8.0, 200.0])
    # chunk rows 3..5 ([10, 11, unset]): 6 s back, 2 s forward -> [4, 13]
    before, after = context_rows(ts, 3, 6, 6.0, 2.0)
    assert before.tolist() == [1] and after.tolist() == [6, 8]
    e1, e2 = context_rows(ts, 3, 6, 0.0, 0.0)
    assert len(e1) == len(e2) == 0
    e1, e2 = context_rows(np.array([np.inf, 1.0]), 0, 1, 5.0, 5.0)   # no ts in the chunk
    assert len(e1) == len(e2) == 0


# -- incidents from the alerting rows alone ---------------------------------------------------------

def _slice(batch: VerdictBatch, a: int, b: int) -> VerdictBatch:
    return VerdictBatch(batch.table.slice(a, b - a), batch.names, batch.notes,
                        {n: s[a:b] for n, s in batch.scores.items()}, batch.score[a:b],
                        batch.top[a:b], batch.alert[a:b],
                        {r - a: m for r, m in batch.msg.items() if a <= r < b},
                        {r - a: m for r, m in batch.sub.items() if a <= r < b})


def test_triage_rows_give_the_incidents_of_the_whole_batch():
    """TriageRows keeps the alerting rows and 16 bytes per conn; the incidents (with their
    ``conns`` counts, which need every conn of a host) equal those of the whole batch."""
    t = _conns()
    rows = ScoreOptions(fpr=0.05).baseline_rows(np.nan_to_num(t.column("ts").to_numpy(), nan=np.inf))
    base = t.take(pa.array(rows))
    batch = score_table(t, base, ScoreOptions(fpr=0.05), ScoreSummary(), rows)
    assert 20 < int(batch.alert.sum()) < len(batch)
    want = incidents_from_batch(batch, base)
    acc = TriageRows()
    for a in range(0, len(batch), 333):
        acc.add_batch(_slice(batch, a, min(a + 333, len(batch))))
    alerts = acc.alerts()
    assert len(alerts) == int(batch.alert.sum())
    kept = TriageBaseline.of(base)       # what score keeps of the baseline while it scores
    assert kept.table.column_names == ["id.orig_h", "orig_bytes", "resp_bytes"]
    got = incidents_from_batch(alerts, kept.table, profile=kept.profile, host_times=acc.host_times())
    assert [i.to_dict() for i in got] == [i.to_dict() for i in want]
    # the counts do need every conn: from the alerting rows alone they are smaller
    alone = incidents_from_batch(alerts, base)
    assert sum(i.conns for i in alone) < sum(i.conns for i in want)


THREADS_PROBE = """
import sys
from zeekml.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    import torch
    print("threads", torch.get_num_threads())
"""


def test_score_with_learned_detectors_sets_their_threads(tmp_path):
    """``score`` with the shipped models runs torch with the threads the environment asks for
    (here ``$ZEEKML_TORCH_THREADS`` = 7, which is no machine's default), not torch's own."""
    import subprocess
    import sys

    env = dict(os.environ, ZEEKML_TORCH_THREADS="7")
    env.pop("OMP_NUM_THREADS", None)
    res = subprocess.run([sys.executable, "-c", THREADS_PROBE, "score",
                          str(EXAMPLES / "zeek" / "conn.log"), "--out", str(tmp_path / "out"),
                          "--no-progress", "--models", str(MODELS)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "threads 7", res.stdout[-500:]
