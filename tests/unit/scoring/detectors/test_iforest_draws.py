"""The IsolationForest's fit without repeated work, bit for bit: trees that record the rows they
drew (``iforest_draws``: the same trees as scikit-learn's own, and the rows
``estimators_samples_`` draws again, without drawing them), both clip bounds from one quantile
call."""
from __future__ import annotations

import logging
import os
import pickle

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest
from sklearn.tree import ExtraTreeRegressor

from zeekml.features.flow_features import FlowFeaturizer
from zeekml.scoring.detectors.iforest import IsolationForestDetector
from zeekml.scoring.detectors.iforest_draws import DrawRecordingTree, RecordingIsolationForest
from zeekml.train.data import load_conns

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))),
                    "data")
LOG = os.path.join(DATA, "real", "iot23-ctu-34-1", "conn.log.labeled.gz")


# rows, rows per tree: scikit-learn draws 256 of 30,000 with its set-tracking sampler (ratio
# below 0.01), 128 of 1,000 with a permutation, 5 of 10 (the detector's n // 2) by reservoir
@pytest.mark.parametrize("n, max_samples", [(30_000, 256), (1_000, 128), (10, 5)])
def test_recorded_rows_are_estimators_samples_and_the_trees_are_the_same(n, max_samples):
    rng = np.random.default_rng(n)
    x = np.round(rng.normal(size=(n, 4)), 2).astype(np.float32)
    params = dict(n_estimators=25, random_state=7, max_samples=max_samples, n_jobs=1)
    plain = IsolationForest(**params).fit(x)
    rec = RecordingIsolationForest(**params).fit(x)
    drawn = rec.drawn_samples(n)
    assert drawn is not None and len(drawn) == 25
    for got, want in zip(drawn, plain.estimators_samples_):
        assert np.array_equal(got, np.unique(want))
        assert len(got) == max_samples                 # no replacement: every drawn row distinct
    probe = x[:300]
    assert np.array_equal(rec.score_samples(probe), plain.score_samples(probe))
    for a, b in zip(rec.estimators_, plain.estimators_):
        assert np.array_equal(a.tree_.threshold, b.tree_.threshold)
        assert np.array_equal(a.tree_.feature, b.tree_.feature)
        assert a.get_params() == b.get_params()          # the parameter names read once


def test_the_trees_parameter_names_are_scikit_learns():
    assert DrawRecordingTree._get_param_names() == ExtraTreeRegressor._get_param_names()
    names = DrawRecordingTree._get_param_names()
    names.append("not a parameter")                       # a caller's list, not the cache
    assert DrawRecordingTree._get_param_names() == ExtraTreeRegressor._get_param_names()


def test_rows_are_handed_out_once_and_a_pickled_forest_carries_none():
    x = np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32)
    rec = RecordingIsolationForest(n_estimators=10, random_state=0, n_jobs=1).fit(x)
    assert rec.drawn_samples(500) is not None
    assert rec.drawn_samples(500) is None              # taken out of the trees
    back = pickle.loads(pickle.dumps(rec))
    assert back.drawn_samples(500) is None
    assert np.array_equal(back.score_samples(x[:50]), rec.score_samples(x[:50]))


def test_a_forest_whose_trees_record_nothing_calibrates_on_estimators_samples(monkeypatch, caplog):
    """Another scikit-learn that grows its trees without ``sample_weight``: the detector reads
    the rows from ``estimators_samples_`` and gets the same out-of-bag scores."""
    conns = load_conns([LOG]).slice(0, 1200)
    want = IsolationForestDetector(seed=4).fit(conns)
    monkeypatch.setattr(RecordingIsolationForest, "_get_estimator",
                        lambda self: IsolationForest._get_estimator(self))
    with caplog.at_level(logging.INFO, logger="zeekml.scoring.detectors.iforest"):
        got = IsolationForestDetector(seed=4).fit(conns)
    assert type(got.model.estimators_[0]) is ExtraTreeRegressor
    assert "read from estimators_samples_" in caplog.text
    assert np.array_equal(got.oob_scores, want.oob_scores, equal_nan=True)
    assert np.isfinite(want.oob_scores).all()


def test_rows_recorded_in_a_copy_of_the_drawn_rows_are_not_handed_out():
    """A scikit-learn that hands each tree a copy of its drawn rows (with weights of one):
    positions in the copy are not rows of the fit matrix, so none are handed out."""
    x = np.random.default_rng(1).normal(size=(400, 3)).astype(np.float32)
    rec = RecordingIsolationForest(n_estimators=4, random_state=0, max_samples=50, n_jobs=1).fit(x)
    for est in rec.estimators_:
        DrawRecordingTree.fit(est, x[:50], np.zeros(50), sample_weight=np.ones(50))
    assert rec.drawn_samples(400) is None


def test_clip_bounds_are_the_two_quantiles():
    f = FlowFeaturizer()
    _, raw = f.fit_transform_raw(load_conns([LOG]).slice(0, 3000))
    assert f.lo == np.quantile(raw, f.clip_quantiles[0], axis=0).tolist()
    assert f.hi == np.quantile(raw, f.clip_quantiles[1], axis=0).tolist()
