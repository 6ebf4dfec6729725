"""Issue 15, "embed each conn once": a learned detector embeds every baseline conn once, in the
whole baseline's context, and when the baseline is the earliest share of the input it reuses
those embeddings for the input's baseline rows instead of running the model on them again.
Proved here on tiny pretrained models: a baseline conn's embedding in the baseline equals its
embedding in the input, and the reused scores equal the scores of the input embedded afresh."""
from __future__ import annotations


import numpy as np
import pyarrow as pa
import pytest

from zeekml.flows.select import earliest_rows, ts_sort_key
from zeekml.scoring.detectors.reference import same_context_rows
from zeekml.scoring.registry import get_kind
from zeekml.train.data import load_conns
from checks import count_embedded
from tiny import LABELED_LOG, pretrain_tiny

pytest.importorskip("torch")

LOG = LABELED_LOG
KINDS = ("moe", "mae")


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return load_conns([LOG])


@pytest.fixture(scope="module")
def model_dirs(table, tmp_path_factory) -> dict[str, str]:
    out = {}
    for kind in KINDS:
        d = str(tmp_path_factory.mktemp(kind) / kind)
        pretrain_tiny(table, d, kind)
        out[kind] = d
    return out


def test_same_context_rows_are_the_baseline_rows_before_every_other_conn():
    t = pa.table({"ts": pa.array([5.0, 1.0, 3.0, 3.0, None, 2.0])})
    # rows 1, 5, 2 (ts 1, 2, 3); outside: 0 (5), 3 (3, a tie with row 2), 4 (unset)
    assert same_context_rows(t, np.array([1, 2, 5])).tolist() == [True, False, True]
    assert same_context_rows(t, np.arange(6)).all()                  # the whole input
    assert same_context_rows(t, np.arange(4)).tolist() == [False, True, False, False]  # before 2.0


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_baseline_conn_embeds_alike_in_the_baseline_and_in_the_input(kind, model_dirs, table):
    det = get_kind(kind).detector(model_dirs[kind], device="cpu")
    rows = earliest_rows(ts_sort_key(table), 0.3)
    baseline = table.take(pa.array(rows))
    same = same_context_rows(table, rows)
    assert same.mean() > 0.95                              # all but ties at the boundary
    alone = det._reference_input(baseline)[same]
    in_input = det._reference_input(table, rows[same])
    np.testing.assert_allclose(alone, in_input, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_fit_split_reuses_the_baseline_and_scores_as_afresh(kind, model_dirs, table, monkeypatch):
    det = get_kind(kind).detector(model_dirs[kind], device="cpu")
    rows = earliest_rows(ts_sort_key(table), 0.3)
    baseline = table.take(pa.array(rows))
    perm = np.random.default_rng(0).permutation(len(rows))
    fit_idx, cal_idx = np.sort(perm[:len(rows) // 2]), np.sort(perm[len(rows) // 2:])
    embedded = count_embedded(det, monkeypatch)
    cal, full = det.fit_split(baseline, fit_idx, cal_idx, scored=table, rows=rows)
    same = same_context_rows(table, rows)
    # each conn through the model once: the baseline, then the input less the reused rows
    assert embedded == [len(rows), table.num_rows - int(same.sum())]
    monkeypatch.undo()
    afresh = det.score(table)                           # the same fitted reference, no reuse
    np.testing.assert_allclose(full, afresh, rtol=0, atol=1e-6)
    np.testing.assert_allclose(cal, det.score_rows(baseline, cal_idx), rtol=0, atol=1e-6)
    # fitted on the fit half's embeddings in the whole baseline's context
    np.testing.assert_allclose(det.reference.score(det._reference_input(baseline, fit_idx)).mean(),
                               full[rows[fit_idx]].mean(), atol=1e-6)
    # without the input: the same calibration scores, nothing else computed
    det2 = get_kind(kind).detector(model_dirs[kind], device="cpu")
    cal2, none = det2.fit_split(baseline, fit_idx, cal_idx)
    assert none is None
    np.testing.assert_array_equal(cal2, cal)


def test_fit_split_fits_the_feedback_conns_beside_the_fit_half(model_dirs, table):
    det = get_kind("moe").detector(model_dirs["moe"], device="cpu")
    baseline = table.slice(0, 120)
    extra = table.slice(300, 5)
    det.fit_split(baseline, np.arange(0, 120, 2), np.arange(1, 120, 2), extra=extra)
    n_ref = len(det.reference.ref)
    assert n_ref == 60 + 5
    # the feedback conns are in the reference: each is at distance ~0 from itself
    both = pa.concat_tables([baseline, extra])
    e = det._reference_input(both, np.arange(120, 125))
    np.testing.assert_allclose(det.reference.nearest(e, 1)[0][:, 0], 0.0, atol=1e-5)


class SplitBytes:
    """A fake learned detector with a time context: ``fit_split`` scores a conn by its
    ``orig_bytes``; counts the conns each method was asked to score."""

    note = "ZeekML::Anomalous_Flow"
    context_seconds = 60.0
    forward_context_seconds = 0.0
    context_key = "id.orig_h"
    name = "split"

    def __init__(self):
        self.calls: list[tuple[str, int]] = []

    @staticmethod
    def _bytes(t: pa.Table) -> np.ndarray:
        return np.asarray(t.column("orig_bytes").to_pylist(), dtype=np.float64)

    def fit(self, table, reference_input=None):
        raise AssertionError("fit_calibrate fits a fit_split detector through fit_split")

    def fit_split(self, table, fit_rows, cal_rows, extra=None, scored=None, rows=None):
        self.calls.append(("fit_split", table.num_rows if scored is None else scored.num_rows))
        b = self._bytes(table)
        return b[cal_rows], (None if scored is None else self._bytes(scored))

    def score(self, table):
        self.calls.append(("score", table.num_rows))
        return self._bytes(table)

    def score_rows(self, table, rows):
        return self.score(table)[rows]

    def explain(self, table, rows, top=3):
        return ["orig_bytes"] * len(rows)


def test_fit_calibrate_leaves_a_fit_split_detectors_scores_of_the_input_in_raw(monkeypatch):
    import zeekml.pipeline.fitted as fitted_mod
    from zeekml.flows.table import conn_table
    from zeekml.pipeline.batch import score_table
    from zeekml.pipeline.options import ScoreOptions, ScoreSummary

    n = 1000
    t = conn_table([pa.table({
        "ts": np.arange(n, dtype=np.float64) + 1e9, "uid": [f"C{i}" for i in range(n)],
        "id.orig_h": ["10.0.0.1"] * n, "id.resp_h": ["10.9.9.9"] * n,
        "orig_bytes": pa.array((np.arange(n) * 7919) % n, pa.uint64())})])
    rows = np.arange(300)
    det = SplitBytes()
    monkeypatch.setattr(fitted_mod, "build_detectors", lambda *a, **k: [det])
    batch = score_table(t, t.take(pa.array(rows)), ScoreOptions(fpr=0.05), ScoreSummary(), rows)
    assert det.calls == [("fit_split", n)]            # the input scored in the same call, once
    assert batch.alert.sum() > 0
    # a --baseline file (no rows): fitted and calibrated by fit_split, the input scored apart
    det2 = SplitBytes()
    monkeypatch.setattr(fitted_mod, "build_detectors", lambda *a, **k: [det2])
    other = score_table(t, t.take(pa.array(rows)), ScoreOptions(fpr=0.05), ScoreSummary())
    assert det2.calls == [("fit_split", 300), ("score", n)]
    np.testing.assert_array_equal(other.alert, batch.alert)


def test_batch_rows_pads_a_small_batch_with_copies_of_its_first_row():
    from zeekml._core.device import MIN_INFER_ROWS, batch_rows

    assert batch_rows(5, 7).tolist() == [5, 6] + [5] * (MIN_INFER_ROWS - 2)
    assert batch_rows(0, 40).tolist() == list(range(40))
    assert batch_rows(3, 3).tolist() == []


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_conn_scored_alone_gets_the_bits_of_the_whole_table(kind, model_dirs, table):
    """What lets a --dask task of one conn, or watch's small batch, give score's verdict where
    a score sits exactly on its threshold (``MIN_INFER_ROWS``)."""
    det = get_kind(kind).detector(model_dirs[kind], device="cpu")
    whole = det._reference_input(table)
    for i in (0, 57, 399):
        np.testing.assert_array_equal(det._reference_input(table, np.array([i]))[0], whole[i])


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_alerts_name_baseline_conns_when_the_reference_keeps_a_subset(kind, model_dirs, table):
    """A fit half over ``max_reference`` conns keeps a random subset; ``KnnReference.nearest``
    answers rows of the whole fit input, so the identities kept must cover every one of them
    (the 100k-conn benchmark's 15k-conn fit half raised IndexError in ``explain``)."""
    from zeekml.scoring.detectors.reference import KnnReference

    det = get_kind(kind).detector(model_dirs[kind], device="cpu")
    det.reference = KnnReference(k=3, max_reference=20)
    det.fit_split(table.slice(0, 150), np.arange(0, 150, 2), np.arange(1, 150, 2))
    assert len(det.reference.ref) == 20 and det.reference.rows.max() >= 20
    lines = det.explain(table, np.array([200, 390]))
    assert len(lines) == 2 and all("uid C" in x or "unlike" in x for x in lines), lines


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_fit_split_embeds_a_large_baseline_in_pieces_to_the_same_scores(kind, model_dirs, table,
                                                                        monkeypatch):
    """A baseline beyond ``EMBED_PIECE`` rows is embedded a piece at a time (bounded memory on a
    1M-conn input) with the same scores as in one call."""
    from zeekml.scoring.detectors import reference

    rows = earliest_rows(ts_sort_key(table), 0.5)
    baseline = table.take(pa.array(rows))
    fit_idx, cal_idx = np.arange(0, len(rows), 2), np.arange(1, len(rows), 2)
    whole = get_kind(kind).detector(model_dirs[kind], device="cpu")
    cal, full = whole.fit_split(baseline, fit_idx, cal_idx, scored=table, rows=rows)
    monkeypatch.setattr(reference, "EMBED_PIECE", 37)
    det = get_kind(kind).detector(model_dirs[kind], device="cpu")
    calls = count_embedded(det, monkeypatch)
    cal_p, full_p = det.fit_split(baseline, fit_idx, cal_idx, scored=table, rows=rows)
    assert max(calls) <= 37 and sum(calls) == len(rows) + table.num_rows - int(
        same_context_rows(table, rows).sum())
    np.testing.assert_allclose(cal_p, cal, rtol=0, atol=1e-6)
    np.testing.assert_allclose(full_p, full, rtol=0, atol=1e-6)
