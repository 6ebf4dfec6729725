"""scikit-learn's IsolationForest, remembering the rows each tree was grown on.

Out-of-bag calibration (``DirectForest.out_of_bag``) needs, per tree, the rows it drew.
scikit-learn's public answer, ``estimators_samples_``, draws them all again from each tree's
random state: with 200 trees of 256 rows out of 30,000 (bench/score_speed.py's baseline) its
set-tracking sampler calls ``randint`` once per row, 0.15-0.19 CPU s, as much as the draw the
fit itself made. Here each tree records the rows the fit hands it, so nothing is drawn twice.

How: bagging grows each tree on the whole matrix with ``sample_weight`` = how many times each
row was drawn (scikit-learn 1.9, the version checked, does this for every estimator whose
``fit`` takes a ``sample_weight``); ``DrawRecordingTree.fit`` keeps the rows whose weight is
not zero and fits as ``ExtraTreeRegressor`` does, so the trees, and every score, are the same
bits. Where a scikit-learn grows its trees otherwise, ``drawn_samples`` returns None and the
caller reads ``estimators_samples_`` instead (the same rows, slower): a renamed hook or no
``sample_weight`` records nothing, and a tree handed a copy of the drawn rows (weights or not)
records positions in that copy, which the fit matrix's row count gives away.

This module imports scikit-learn: ``iforest`` imports it when a detector is built.
"""
from __future__ import annotations

import functools

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.tree import ExtraTreeRegressor

_DRAWN = "zeekml_drawn_"


class DrawRecordingTree(ExtraTreeRegressor):
    """``ExtraTreeRegressor`` that keeps the rows of nonzero ``sample_weight`` it was fitted
    with (the rows bagging drew for it) until ``RecordingIsolationForest.drawn_samples`` takes
    them.

    It also reads its parameter names once: scikit-learn derives them from the signature of
    ``__init__`` (``inspect.signature``) at each ``get_params``/``set_params``, four times per
    tree while bagging clones and seeds it, 0.1 of a 200-tree fit's 0.5 CPU s. A class's
    signature does not change, so the names are the same.
    """

    @classmethod
    def _get_param_names(cls):
        return list(_param_names(cls))

    def fit(self, X, y, sample_weight=None, check_input=True):
        """``ExtraTreeRegressor.fit``, the drawn rows kept first."""
        if sample_weight is not None:
            # with the row count it was handed: positions in a copy of the drawn rows would
            # not be rows of the fit matrix
            setattr(self, _DRAWN, (len(X), np.flatnonzero(np.asarray(sample_weight))))
        return super().fit(X, y, sample_weight=sample_weight, check_input=check_input)


@functools.cache
def _param_names(cls: type) -> tuple[str, ...]:
    return tuple(super(DrawRecordingTree, cls)._get_param_names())


class RecordingIsolationForest(IsolationForest):
    """``IsolationForest`` whose trees record the rows they drew (``drawn_samples``): the same
    trees and scores, bit for bit (tests/unit/scoring/detectors/test_iforest_draws.py)."""

    def _get_estimator(self):
        est = super()._get_estimator()
        if type(est) is not ExtraTreeRegressor:      # another scikit-learn: leave it be
            return est
        return DrawRecordingTree(**est.get_params())

    def drawn_samples(self, n_rows: int) -> list[np.ndarray] | None:
        """The rows of the ``n_rows``-row fit matrix each tree of the last ``fit`` was grown on,
        sorted and distinct (the distinct rows of ``estimators_samples_``), each taken out of
        its tree (a pickled forest carries none); None when a tree recorded none, or recorded
        them in a matrix of another row count (a copy of its drawn rows)."""
        drawn = [est.__dict__.pop(_DRAWN, None) for est in getattr(self, "estimators_", [])]
        if not drawn or any(d is None or d[0] != n_rows for d in drawn):
            return None
        return [rows for _, rows in drawn]
