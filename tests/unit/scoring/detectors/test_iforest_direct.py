"""The IsolationForest's direct scoring path (``DirectForest``): scikit-learn's
``score_samples`` bits without its per-tree joblib tasks, on real conns and any batch size."""
from __future__ import annotations

import os

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from zeekml.scoring.detectors.iforest import DirectForest, IsolationForestDetector
from zeekml.train.data import load_conns

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))),
                    "data")
LOG = os.path.join(DATA, "real", "iot23-ctu-34-1", "conn.log.labeled.gz")


@pytest.fixture(scope="module")
def conns():
    return load_conns([LOG])


def test_detector_scores_are_score_samples_bits_at_every_batch_size(conns):
    det = IsolationForestDetector(seed=3).fit(conns.slice(0, 3000))
    assert det._direct is not None            # this scikit-learn takes the direct path
    rest = conns.slice(3000)
    for n in (1, 2, 25, 600, rest.num_rows):
        table = rest.slice(0, n)
        want = -det.model.score_samples(det.featurizer.transform(table))
        got = det.forest_score(table)
        assert got.dtype == want.dtype and got.shape == (n,)
        assert np.array_equal(got, want), n
        # the detector's score is the trees' plus the count of values the baseline never had
        unseen = det.unseen.unseen(det.featurizer.parts(table).categorical()).sum(axis=1)
        assert np.array_equal(det.score(table), want + unseen), n
    rows = np.array([5, 0, 4000, 17], dtype=np.int64)
    assert np.array_equal(det.score_rows(rest, rows), det.score(rest)[rows])


@pytest.mark.parametrize("max_features", [1.0, 0.5, 3])
def test_feature_subsampling_and_ties_keep_the_bits(max_features):
    """Trees on a subset of the features (``estimators_features_``), few distinct rows (leaves
    holding several samples: the average-path-length term), NaNs as scikit-learn takes them."""
    rng = np.random.default_rng(0)
    x = np.round(rng.normal(size=(700, 7)), 1).astype(np.float32)
    x[::50, 2] = np.nan
    model = IsolationForest(n_estimators=40, max_features=max_features, random_state=1).fit(x[:500])
    direct = DirectForest.of(model, x[:500])
    assert direct is not None
    assert np.array_equal(direct.scores(x[500:]), -model.score_samples(x[500:]))
    assert np.array_equal(direct.scores(x[500:501].astype(np.float64)),
                          -model.score_samples(x[500:501]))


def test_a_forest_without_the_per_leaf_arrays_keeps_score_samples(conns):
    det = IsolationForestDetector(seed=0).fit(conns.slice(0, 400))
    del det.model._decision_path_lengths      # what an older scikit-learn's forest lacks
    assert DirectForest.of(det.model, det.featurizer.transform(conns.slice(0, 400))) is None


def test_a_direct_path_that_disagrees_is_not_used(conns, monkeypatch):
    det = IsolationForestDetector(seed=0).fit(conns.slice(0, 400))
    x = det.featurizer.transform(conns.slice(0, 400))
    monkeypatch.setattr(DirectForest, "scores", lambda self, x: np.zeros(len(x)))
    assert DirectForest.of(det.model, x) is None


def test_wrong_width_is_a_clear_error(conns):
    det = IsolationForestDetector(seed=0).fit(conns.slice(0, 400))
    with pytest.raises(ValueError, match="expected .* features"):
        det._direct.scores(np.zeros((3, 2), dtype=np.float32))


def test_a_pickled_detector_scores_the_same_bits(conns):
    """``--dask`` and ``watch --score-workers`` hand fitted detectors to other processes."""
    import pickle

    det = IsolationForestDetector(seed=0).fit(conns.slice(0, 800))
    back = pickle.loads(pickle.dumps(det))
    assert back._direct is not None
    table = conns.slice(800, 500)
    assert np.array_equal(back.score(table), det.score(table))


def test_repeated_conns_are_scored_once_with_the_bits_of_score_samples(conns, monkeypatch):
    """Real conns repeat their features (scans, beacons): each distinct feature row goes through
    the trees once, and every row still gets ``score_samples``' bits."""
    det = IsolationForestDetector(seed=2).fit(conns.slice(0, 2000))
    x = det.featurizer.transform(conns)
    seen: list[int] = []
    inner = DirectForest._scores
    monkeypatch.setattr(DirectForest, "_scores", lambda self, rows: seen.append(len(rows)) or inner(self, rows))
    got = det._direct.scores(x)
    assert seen == [len(np.unique(x, axis=0))] and seen[0] < len(x) // 2
    assert np.array_equal(got, -det.model.score_samples(x))
