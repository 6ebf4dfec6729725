"""The GNN detector scores a few conns of a long table by embedding their graph neighbourhood
only (``score_rows``; live and split scoring hand it a batch among its context), with the bits of
scoring the whole table, and declares how far forward in time other conns reach a conn's score
(``forward_context_seconds``), which is how long ``zeekml watch`` holds a conn back."""
from __future__ import annotations


import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("torch_geometric")

from zeekml.scoring.context import detectors_in_context, ts_array  # noqa: E402
from zeekml.scoring.detectors.gnn import MIN_NODES  # noqa: E402
from checks import assert_same  # noqa: E402

def test_score_rows_equals_scoring_the_whole_table_bit_for_bit(fitted_gnn, avx2):
    det, table, full = fitted_gnn
    n = table.num_rows
    rng = np.random.default_rng(0)
    sets = [np.array([0, 5, 200, 201, n - 1, 150, 5]), np.array([n - 1]), np.arange(100, 160),
            np.arange(0, n, 7)] + [rng.choice(n, 12, replace=False) for _ in range(6)]
    for rows in sets:
        assert_same(det.score_rows(table, rows), full[rows], avx2)
    assert det.score_rows(table, np.zeros(0, dtype=np.int64)).shape == (0,)


def test_conns_alone_in_their_windows_get_the_bits_they_get_among_many(fitted_gnn, monkeypatch, avx2):
    """Such a conn's graph has fewer nodes than a CPU matrix product keeps a row's bits for
    (1-3), so it is padded with isolated nodes (``MIN_NODES``), and the rows of its cone
    each step computes with copies of one (``zeekml.nn.gnn.MIN_ROWS``); without them scores
    move."""
    det, table, _ = fitted_gnn
    ts = ts_array(table)
    alone = np.arange(3, table.num_rows, 20)
    late = ts.copy()
    late[alone] = ts.max() + 100.0 * np.arange(1, len(alone) + 1)    # 100 s from any other
    t = table.set_column(table.column_names.index("ts"), "ts", pa.array(late))
    full = det.score(t)
    builder = det.bundle.builder()
    for i in alone:
        assert len(builder.neighbourhood(t, [i])) < MIN_NODES
        assert_same(det.score_rows(t, np.array([i])), full[[i]], avx2)
    if avx2:
        import zeekml.nn.gnn as nn_gnn
        import zeekml.scoring.detectors.gnn as gnn
        monkeypatch.setattr(gnn, "pad_nodes", lambda x: x)
        # the targets' cone pads the rows each step computes the same way (``MIN_ROWS``)
        monkeypatch.setattr(nn_gnn, "_padded", lambda rows: rows)
        unpadded = np.concatenate([det.score_rows(t, np.array([i])) for i in alone])
        assert (unpadded != full[alone]).any()


def test_score_rows_embeds_only_the_neighbourhood(fitted_gnn, monkeypatch):
    det, table, _ = fitted_gnn
    seen = []
    featurize = det.bundle.features
    monkeypatch.setattr(det.bundle, "features", lambda t: seen.append(t.num_rows) or featurize(t))
    det.score_rows(table, np.array([200]))
    assert seen and max(seen) < 40 < table.num_rows


def test_nothing_past_the_forward_reach_changes_a_score_and_within_it_something_does(fitted_gnn, avx2):
    det, table, full = fitted_gnn
    fwd = det.forward_context_seconds
    assert fwd == 20.0 < det.context_seconds           # gnn-base: 4 windows of 5 s
    ts = ts_array(table)
    changed = 0
    for i in range(0, table.num_rows, 9):
        # every conn that started more than fwd seconds after conn i left out
        upto = np.flatnonzero(ts <= ts[i] + fwd)
        assert_same(det.score_rows(table.take(pa.array(upto)), np.searchsorted(upto, [i])),
                    full[[i]], avx2)
        # the conns of (ts_i, ts_i + fwd] left out too: some scores move (the reach is real)
        before = np.flatnonzero((ts <= ts[i]) | (np.arange(len(ts)) == i))
        alone = det.score_rows(table.take(pa.array(before)), np.searchsorted(before, [i]))
        changed += bool(alone[0] != full[i])
    assert changed > 0


def test_in_context_scores_are_the_whole_tables(fitted_gnn, avx2):
    """What ``zeekml watch`` and ``--dask`` do: each batch among the rows within the GNN's
    horizon of it (50 s back, 20 s forward)."""
    det, table, full = fitted_gnn
    ts = ts_array(table)
    for a in range(0, table.num_rows, 37):
        targets = np.arange(a, min(a + 37, table.num_rows))
        (d,) = detectors_in_context([det], table, targets, ts)
        assert d is not det and d.context.num_rows < table.num_rows
        assert_same(d.score(table.take(pa.array(targets))), full[targets], avx2)


def test_the_reference_is_knnreference_with_the_detectors_own_formula(fitted_gnn):
    """The detector keeps its reference as the other learned detectors do
    (``reference.KnnReference``), which scales embeddings to unit rows itself; its scores are
    the GNN's own definition bit for bit (embeddings scaled once, the mean cosine distance to
    the ``k`` nearest fit embeddings), and an explanation names fit conns by their uid."""
    from zeekml.scoring.detectors.gnn import embed_rows
    from zeekml.scoring.detectors.reference import knn_distance

    det, table, full = fitted_gnn
    fit = table.slice(0, 150)

    def unit(e):
        return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-9)

    ref = unit(embed_rows(det.bundle, fit))
    want = knn_distance(unit(embed_rows(det.bundle, table)), ref, det.k)
    assert full.tobytes() == want.tobytes()
    assert det.reference.ref.tobytes() == ref.tobytes() and len(det.reference.rows) == 150
    rows = np.argsort(-full)[:3]
    fit_uids = set(fit.column("uid").to_pylist())
    for text in det.explain(table, rows):
        named = [w.split(",")[0].rstrip(")") for w in text.split("uid ")[1:]]
        assert named and set(named) <= fit_uids, text


def test_one_graph_of_a_neighbourhood_gives_the_bits_of_its_pieces(fitted_gnn, monkeypatch, avx2):
    """``score_rows`` embeds a batch's neighbourhood as one graph (``ONE_GRAPH_ROWS``), where
    ``iter_graphs`` cut it into pieces of ``segment_flows`` targets, each with its own context
    windows; the scores are the same bits either way, and past the bound it is cut again."""
    import dataclasses

    import zeekml.scoring.detectors.gnn as gnn

    det, table, full = fitted_gnn
    graph = det.bundle.graph
    monkeypatch.setattr(det.bundle, "graph", dataclasses.replace(graph, segment_flows=10))
    built = []
    build = gnn.FlowGraphBuilder._build
    monkeypatch.setattr(gnn.FlowGraphBuilder, "_build",
                        lambda self, *a: built.append(len(a[4])) or build(self, *a))
    rows = np.arange(60, 200)
    one = det.score_rows(table, rows)
    assert built == [len(rows)]                                  # one graph of every target
    assert_same(one, full[rows], avx2)
    built.clear()
    pieces = det._embed(table, rows)                             # explain's path: pieces
    assert len(built) > 3
    monkeypatch.setattr(gnn, "ONE_GRAPH_ROWS", 50)               # a neighbourhood past the bound
    built.clear()
    assert_same(det.score_rows(table, rows), full[rows], avx2)
    assert len(built) > 3
    assert_same(det.reference.score(pieces), full[rows], avx2)


def test_a_model_is_switched_to_eval_and_moved_only_when_it_is_not_already(fitted_gnn):
    from zeekml.scoring.detectors.gnn import ready

    det, table, full = fitted_gnn
    model = det.bundle.model
    assert ready(model, "cpu") is model and not model.training
    model.train()
    try:
        assert ready(model, "cpu") is model and not model.training
        assert not any(m.training for m in model.modules())
    finally:
        model.eval()
    assert (det.score_rows(table, np.arange(10)) == full[:10]).all()
