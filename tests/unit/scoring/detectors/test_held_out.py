"""Out-of-sample scores of the baseline's own conns, which calibration now rests on: the kNN
reference leaves a conn out of its own neighbours, the z-score reference scores a conn by the
other folds, the IsolationForest by the trees that did not draw the conn
(``pipeline.fitted.calibration_scores``)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from zeekml.flows.table import conn_table
from zeekml.scoring.detectors.iforest import IsolationForestDetector
from zeekml.scoring.detectors.reference import KnnReference, ZReference, fit_split, unit_rows


def brute_loo(e: np.ndarray, ref: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Mean cosine distance of each row to its k nearest rows of ``ref`` other than ``own``."""
    u, r = unit_rows(e), unit_rows(ref)
    out = []
    for i, row in enumerate(u):
        d = 1.0 - (r @ row)
        d = np.delete(d, own[i]) if own[i] >= 0 else d
        out.append(np.sort(d)[:k].mean())
    return np.array(out)


@pytest.mark.parametrize("repeats", [False, True])
def test_a_reference_row_is_scored_against_the_other_rows_only(repeats):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    if repeats:       # most rows repeat: the index merges them and counts each distinct row
        x = x[rng.integers(0, 40, size=300)]
    ref = KnnReference(k=5).fit(x)
    rows = np.arange(0, 300, 3)
    got = ref.score_held_out(x[rows], rows)
    want = brute_loo(x[rows], x, rows, 5)
    np.testing.assert_allclose(got, want, atol=2e-6)
    # in sample, a row is its own nearest neighbour: its score is lower, never higher
    assert (ref.score(x[rows]) <= got + 1e-6).all() and (ref.score(x[rows]) < got - 1e-4).any()


def test_a_row_the_draw_left_out_of_the_reference_is_scored_as_any_conn():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 6)).astype(np.float32)
    ref = KnnReference(k=3, max_reference=100, seed=0).fit(x)
    out = np.setdiff1d(np.arange(500), ref.rows)[:50]
    kept = ref.rows[:50]
    np.testing.assert_array_equal(ref.score_held_out(x[out], out), ref.score(x[out]))
    own = np.searchsorted(np.sort(ref.rows), kept)           # positions in the kept rows
    want = brute_loo(x[kept], x[np.sort(ref.rows)], own, 3)
    np.testing.assert_allclose(ref.score_held_out(x[kept], kept), want, atol=2e-6)


def test_a_reference_of_one_row_leaves_nothing_to_compare_with():
    ref = KnnReference(k=5).fit(np.ones((1, 4), np.float32))
    assert np.isnan(ref.score_held_out(np.ones((1, 4), np.float32), np.array([0]))).all()


def test_z_scores_of_fitted_rows_come_from_the_other_folds():
    rng = np.random.default_rng(2)
    p = rng.normal(size=(200, 3))
    z = ZReference(seed=0).fit(p)
    got = z.score_held_out(p, np.arange(200))
    fold = np.random.default_rng(0).permutation(200) % ZReference.HELD_OUT_FOLDS
    for i in (0, 17, 199):
        other = ZReference().fit(p[fold != fold[i]])
        assert got[i] == pytest.approx(other.score(p[i:i + 1])[0])
    # an extreme row does not widen the spread it is measured by
    p[5] = 50.0
    z = ZReference(seed=0).fit(p)
    assert z.score_held_out(p[5:6], np.array([5]))[0] >= z.score(p[5:6])[0]


def flows(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    return conn_table([pa.table({
        "ts": np.arange(n, dtype=np.float64) + 1e9, "uid": [f"C{i}" for i in range(n)],
        "id.orig_h": ["10.0.0.1"] * n, "id.resp_h": ["10.9.9.9"] * n,
        "id.orig_p": pa.array(rng.integers(1024, 65535, n), pa.uint16()),
        "id.resp_p": pa.array(rng.choice([53, 80, 443], n), pa.uint16()), "proto": ["tcp"] * n,
        "duration": rng.exponential(2.0, n), "orig_bytes": pa.array(rng.integers(0, 5000, n), pa.uint64()),
        "resp_bytes": pa.array(rng.integers(0, 50000, n), pa.uint64()),
        "orig_pkts": pa.array(rng.integers(1, 50, n), pa.uint64()),
        "resp_pkts": pa.array(rng.integers(1, 50, n), pa.uint64())})])


@pytest.mark.parametrize("n", [120, 3000])
def test_the_forest_scores_a_fitted_conn_by_the_trees_that_did_not_draw_it(n):
    det = IsolationForestDetector(n_estimators=50, seed=0).fit(flows(n, 3))
    psi = min(256, n // 2)
    assert det.model.max_samples_ == psi         # every row is left out of some trees
    x = det.featurizer.transform(flows(n, 3))
    drawn = [set(s.tolist()) for s in det.model.estimators_samples_]
    from sklearn.ensemble._iforest import _average_path_length

    depth, count = np.zeros(n), np.zeros(n)
    for t, est in enumerate(det.model.estimators_):
        leaves = est.tree_.apply(x.astype(np.float32))
        d = (det.model._decision_path_lengths[t][leaves]
             + det.model._average_path_length_per_tree[t][leaves] - 1.0)
        out = np.array([i not in drawn[t] for i in range(n)])
        depth += d * out
        count += out
    want = 2 ** (-(depth / count) / _average_path_length([psi])[0])
    np.testing.assert_allclose(det.oob_scores, want, rtol=1e-12)
    # in sample, a tree grown on a row finds it typical: the row's scores would be too low
    assert det.oob_scores.mean() > det.score(flows(n, 3)).mean()


class Fake:
    """A detector whose reference input is a conn's bytes (``fit_split``'s protocol)."""

    def __init__(self):
        self.reference = KnnReference(k=3)

    def fit(self, table, reference_input=None):
        self.reference.fit(reference_input)
        return self


def embed(table: pa.Table, rows: np.ndarray | None = None) -> np.ndarray:
    b = np.asarray(table.column("orig_bytes").to_pylist(), np.float32)
    r = np.asarray(table.column("resp_bytes").to_pylist(), np.float32)
    x = np.stack([b, r, np.ones_like(b) * 100], axis=1)
    return x if rows is None else x[rows]


def test_fit_split_scores_the_calibration_rows_it_fitted_on_leave_one_out():
    t = flows(400, 4)
    every = np.arange(400)
    det = Fake()
    cal, none = fit_split(det, embed, t, every, every)
    assert none is None
    np.testing.assert_allclose(cal, brute_loo(embed(t), embed(t), every, 3), atol=2e-6)
    # the input scored in the same call: the calibration scores do not change
    big = pa.concat_tables([t, flows(200, 5).set_column(0, "ts", pa.array(np.arange(200) + 2e9))])
    det2 = Fake()
    cal2, full = fit_split(det2, embed, big.slice(0, 400), every, every, scored=big, rows=every)
    np.testing.assert_array_equal(cal2, cal)
    np.testing.assert_array_equal(full, det2.reference.score(embed(big)))
    # a split (disjoint halves) is scored as any conn
    det3 = Fake()
    cal3, _ = fit_split(det3, embed, t, every[::2], every[1::2])
    np.testing.assert_array_equal(cal3, det3.reference.score(embed(t)[1::2]))
