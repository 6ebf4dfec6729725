"""Issue 15, "score each conn once", for the GNN: its detector embeds every baseline conn once, in
the whole baseline's graph, fits on the fit half's embeddings and calibrates on the other half's;
with the baseline drawn from the input, the input's baseline conns whose graph is the same there
(``same_graph_rows``) reuse those embeddings. Proved on the shipped model and 400 real conns:
the reused rows have the bits embedding the input gives them, and the input's scores are
``score``'s."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("torch_geometric")

from zeekml.features.graph import FlowGraphBuilder, GraphConfig  # noqa: E402
from zeekml.flows.select import earliest_rows, rows_in_range, ts_sort_key  # noqa: E402
from zeekml.scoring.detectors.gnn import same_graph_rows  # noqa: E402
from zeekml.scoring.registry import get_kind  # noqa: E402
from zeekml.train.data import load_conns  # noqa: E402
from checks import assert_same, count_embedded  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))))
MODEL = os.path.join(ROOT, "models", "gnn-base")
LOG = os.path.join(ROOT, "tests", "data", "gnn", "iot23-ctu-34-1-head400.conn.log.labeled")


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return load_conns(LOG)


@pytest.fixture
def det():
    if not os.path.exists(os.path.join(MODEL, "config.json")):
        pytest.skip("models/ not shipped")
    return get_kind("gnn").detector(MODEL, device="cpu")


def test_same_graph_rows_are_those_no_outside_conn_reaches():
    """Windows of 5 s, two context windows, conns up to 3 windows long: a baseline conn is the
    same in the input unless an outside conn appears in its target window or the two before."""
    b = FlowGraphBuilder(GraphConfig(window=5.0, context_windows=2, max_conn_windows=3))
    ts = [0.0, 1.0, 11.0, 12.0, 14.0, 30.0, 31.0, None, None]
    dur = [0.0, 0.0, 0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 0.0]
    t = pa.table({"ts": pa.array(ts, pa.float64()), "duration": pa.array(dur, pa.float64())})
    # windows: rows 0, 1 -> 0; 2, 3 -> 2; 4 -> 2..4 (target 4); 5, 6 -> 6; 7, 8 unset
    assert same_graph_rows(b, t, np.arange(9)).all()                       # the whole input
    # outside: 3, which starts a second after 2 (both window 2): it reaches 2 and 4 (target 4,
    # windows 2-4), not 0, 1 (window 0) or 5, 6 (target 6: windows 4-6)
    assert same_graph_rows(b, t, np.array([0, 1, 2, 4, 5, 6])).tolist() == [True, True, False, False,
                                                                             True, True]
    # outside: 4, which started 16 s before 5 and 6 but lasts into window 4, their context
    assert same_graph_rows(b, t, np.array([0, 1, 5, 6])).tolist() == [True, True, False, False]
    # conns without ts share one window
    assert same_graph_rows(b, t, np.array([0, 7])).tolist() == [False, False]
    assert same_graph_rows(b, t, np.array([0, 1, 7, 8])).tolist() == [True, True, True, True]
    # rows out of order order tied nodes otherwise: none counted the same
    assert not same_graph_rows(b, t, np.array([1, 0])).any()


@pytest.mark.parametrize("draw", ["earliest", "middle", "every third", "first 200"])
def test_same_graph_rows_embed_bit_for_bit_as_in_the_input(det, table, draw, avx2):
    """Never a row called the same whose bits differ; with the default baseline, every row."""
    ts = ts_sort_key(table)
    rows = {"earliest": earliest_rows(ts, 0.3),
            "middle": rows_in_range(ts, np.quantile(ts, 0.3), np.quantile(ts, 0.6)),
            "every third": np.arange(0, table.num_rows, 3),
            "first 200": np.arange(200)}[draw]
    baseline = table.take(pa.array(rows))
    same = same_graph_rows(det.bundle.builder(), table, rows)
    if draw == "earliest":
        assert same.all()
    assert same.any() and (draw == "earliest" or not same.all())
    assert_same(det._reference_input(baseline)[same], det._reference_input(table, rows[same]), avx2)
    if avx2 and draw == "every third":
        # the rule is not vacuous: most rows of a thinned graph do move
        moved = (det._reference_input(baseline) != det._reference_input(table, rows)).any(axis=1)
        assert moved[~same].mean() > 0.5


@pytest.mark.parametrize("draw", ["earliest", "first 200"])
def test_fit_split_embeds_each_conn_once_and_scores_as_score(det, table, draw, monkeypatch, avx2):
    ts = ts_sort_key(table)
    rows = earliest_rows(ts, 0.3) if draw == "earliest" else np.arange(200)
    baseline = table.take(pa.array(rows))
    fit, cal = np.arange(0, len(rows), 2), np.arange(1, len(rows), 2)
    whole = det._reference_input(baseline)
    calls = count_embedded(det, monkeypatch)
    cal_scores, full = det.fit_split(baseline, fit, cal, scored=table, rows=rows)
    same = same_graph_rows(det.bundle.builder(), table, rows)
    # the baseline once, then the input's conns other than the reused ones
    assert sum(calls) == len(rows) + table.num_rows - int(same.sum()) < len(rows) + table.num_rows
    # fitted on the fit half's embeddings in the whole baseline's graph
    ref = get_kind("gnn").detector(MODEL).fit(baseline.take(pa.array(fit)), reference_input=whole[fit])
    assert det.reference.ref.tobytes() == ref.reference.ref.tobytes()
    # the input's scores are what scoring it afresh gives; the calibration half's are those of
    # its embeddings in the baseline's graph
    assert_same(full, det.score(table), avx2)
    assert_same(cal_scores, ref.reference.score(whole[cal]), avx2)
    # without the input: the same fit and calibration, the baseline embedded once
    calls.clear()
    cal_alone, none = det.fit_split(baseline, fit, cal)
    assert none is None and calls == [len(rows)]
    assert cal_alone.tobytes() == ref.reference.score(whole[cal]).tobytes()


def test_fit_split_fits_feedback_conns_beside_the_fit_half(det, table):
    rows = earliest_rows(ts_sort_key(table), 0.3)
    baseline = table.take(pa.array(rows))
    extra = table.slice(300, 5)
    fit, cal = np.arange(0, len(rows), 2), np.arange(1, len(rows), 2)
    det.fit_split(baseline, fit, cal, extra=extra)
    assert len(det.reference.ref) == len(fit) + 5
    both = pa.concat_tables([baseline, extra])
    want = det._reference_input(both, np.arange(len(rows), len(rows) + 5))
    got = det.reference.ref[-5:]
    np.testing.assert_array_equal(got, want / np.maximum(np.linalg.norm(want, axis=1, keepdims=True), 1e-9))
    # an alert can name the feedback conns: they are rows of the fit input
    assert det._identity.column("uid").to_pylist()[-5:] == extra.column("uid").to_pylist()


def test_fit_calibrate_fits_the_gnn_through_fit_split(table, monkeypatch, avx2):
    """``score``'s path: the GNN calibrates on the whole baseline's embeddings and leaves its
    scores of the input in ``raw`` (not embedded twice)."""
    if not os.path.exists(os.path.join(MODEL, "config.json")):
        pytest.skip("models/ not shipped")
    import zeekml.pipeline.fitted as fitted_mod
    from zeekml.pipeline.options import ScoreOptions
    from zeekml.scoring.detectors import gnn

    # the GNN alone (the shipped models directory holds every learned detector)
    monkeypatch.setattr(fitted_mod, "build_detectors",
                        lambda *a, **k: [get_kind("gnn").detector(MODEL, device="cpu")])
    seen = []
    inner = gnn.GNNDetector.fit_split
    monkeypatch.setattr(gnn.GNNDetector, "fit_split",
                        lambda self, *a, **k: seen.append(k.get("scored") is not None) or inner(self, *a, **k))
    rows = earliest_rows(ts_sort_key(table), 0.3)
    raw: dict = {}
    opts = ScoreOptions(detectors=[], fpr=0.05)
    fitted = fitted_mod.fit_calibrate(table.take(pa.array(rows)), opts, scored=table, rows=rows, raw=raw)
    assert seen == [True] and raw["gnn"].shape == (table.num_rows,)
    assert_same(raw["gnn"], fitted.detectors[0].score(table), avx2)
