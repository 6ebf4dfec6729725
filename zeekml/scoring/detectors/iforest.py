"""The IsolationForest on the shared flow features: the honest baseline every learned model is
compared against, and the one detector ``--no-models`` keeps.

scikit-learn is imported when a detector is built, not when this module is: ``zeekml score``
imports it while the input is read (``zeekml._core.preload``), and ``zeekml cat`` never does.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable

import numpy as np
import pyarrow as pa

from zeekml._core.errors import ModelError
from zeekml.features.flow_features import FlowFeaturizer
from zeekml.scoring.detectors.reference import distinct_rows
from zeekml.scoring.detectors.unseen import UnseenValues
from zeekml.scoring.explain import feature_value_text

log = logging.getLogger(__name__)

SELF_CHECK_ROWS = 64
"""Rows of the fit matrix on which ``DirectForest`` must give ``score_samples``' bits."""


class DirectForest:
    """``-IsolationForest.score_samples(x)`` without its per-call overhead, the same bits.

    scikit-learn (1.5+) scores through ``joblib.Parallel`` with one task per tree and checks
    the input again in each tree's ``apply``: ~20 ms a call for 200 trees whatever the rows
    (0.1 ms a tree), which ``watch``'s small windows pay every time. Here each tree's Cython
    ``tree_.apply`` is called directly on the once-checked float32 matrix, and each tree's
    path length per leaf (``decision path length + average path length - 1``, sklearn's
    expression, precomputed per leaf instead of per row: the same float64 operations on the
    same values) is added in tree order, as sklearn adds them. ``of`` returns None when the
    fitted forest lacks what this needs (another scikit-learn), so the caller keeps
    ``score_samples``.
    """

    def __init__(self, model: Any):
        from sklearn.ensemble._iforest import _average_path_length

        self.trees = [est.tree_ for est in model.estimators_]
        subsample = model._max_features != model.n_features_in_
        self.features = ([np.asarray(f) for f in model.estimators_features_] if subsample
                         else [None] * len(self.trees))
        # sklearn's own expression, evaluated per leaf: (depth + average path length) - 1.0
        self.leaf_depth = [np.asarray(d) + np.asarray(a) - 1.0 for d, a in
                           zip(model._decision_path_lengths, model._average_path_length_per_tree)]
        self.denominator = len(self.trees) * _average_path_length([model._max_samples])
        self.n_features = model.n_features_in_

    @classmethod
    def of(cls, model: Any, x: np.ndarray) -> DirectForest | None:
        """A ``DirectForest`` of the fitted ``model`` if it gives ``-model.score_samples``'
        bits on the first ``SELF_CHECK_ROWS`` rows of ``x`` (its fit matrix), else None."""
        try:
            direct = cls(model)
        except (AttributeError, ImportError) as e:
            log.info("IsolationForest scored through score_samples (this scikit-learn lacks %s)", e)
            return None
        probe = x[:SELF_CHECK_ROWS]
        if not np.array_equal(direct.scores(probe), -model.score_samples(probe)):
            log.info("IsolationForest scored through score_samples (the direct path's scores "
                     "differ with this scikit-learn)")
            return None
        return direct

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Anomaly score of every row of ``x`` ``[n, n_features]``: ``-score_samples(x)``.

        Each distinct row is scored once (``distinct_rows``: equal bytes, equal row): a row's
        score depends on that row alone, and conns repeat their features (the 100k-conn log of
        bench/score_speed.py: 9,347 distinct rows; its scoring 0.42 -> 0.11 CPU s)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected {self.n_features} features, got shape {x.shape}")
        first, inverse = distinct_rows(x)
        if len(first) < len(x):
            return self._scores(x[first])[inverse]
        return self._scores(x)

    def _depths(self, x: np.ndarray, trees: Iterable[int] | None = None) -> np.ndarray:
        """Sum over ``trees`` (default: all, in order) of each row's path length, ``[n]``."""
        depths = np.zeros(len(x))
        for t in range(len(self.trees)) if trees is None else trees:
            features = self.features[t]
            rows = x if features is None else x[:, features]
            depths += self.leaf_depth[t][self.trees[t].apply(rows)]
        return depths

    def _scores(self, x: np.ndarray) -> np.ndarray:
        depths = self._depths(x)
        return 2 ** (-np.divide(depths, self.denominator, out=np.ones_like(depths),
                                where=self.denominator != 0))

    def out_of_bag(self, x: np.ndarray, samples: list[np.ndarray]) -> np.ndarray:
        """Score of each row of the fit matrix ``x`` by the trees that did not draw it
        (``samples[t]``: the rows tree ``t`` was grown on), as ``scores`` scores a new row by all
        of them: ``2 ** -(mean path length / c(max_samples))``; NaN for a row every tree drew.
        Random forests' out-of-bag estimate: the trees grown on a row look on it as typical
        (its in-sample score is lower than a new conn like it gets), so a threshold set on
        in-sample scores would be too low and alert more than asked.

        Shapes:
            x ``[n, n_features]`` -> ``[n]``
        """
        x = np.asarray(x, dtype=np.float32)
        first, inverse = distinct_rows(x)
        depths = self._depths(x[first])[inverse]
        count = np.full(len(x), float(len(self.trees)))
        for t, drawn in enumerate(samples):
            drawn = np.unique(np.asarray(drawn, dtype=np.int64))
            depths[drawn] -= self._depths(x[drawn], [t])
            count[drawn] -= 1.0
        unit = self.denominator / max(len(self.trees), 1)          # c(max_samples)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, 2 ** (-(depths / np.maximum(count, 1.0)) / unit), np.nan)


class IsolationForestDetector:
    """IsolationForest on the shared flow features, plus the values the baseline never had (a
    per-conn detector: no context).

    Anomalous = the conn's flow features are isolated by few random splits of trees grown on
    the baseline (the short average path length of ``2 ** -(depth / c)``, in (0, 1)): a value
    past what the baseline holds, or a rare combination; **plus one for each categorical field
    whose value no baseline conn has** (proto, conn state, service, responder port class, each
    ``history`` letter present or absent: ``UnseenValues``), so such a conn ranks above every
    conn without one. The trees cannot see that novelty: a feature constant on the baseline (a
    protocol it never saw) is never split on (CTU-21-1's TCP/443 C&C SYNs against a DNS and NTP
    baseline: AUROC 0.912 on the trees alone, 1.000 with the count; docs/results/detection.md).

    Args:
        n_estimators: trees (default 200).
        seed: random state, so a run is reproducible (default 0).
        max_samples: rows per tree (default "auto": min(256, n // 2), see ``fit``).
    """

    name = "iforest"
    note = "ZeekML::Anomalous_Flow"
    # a conn's score depends on that conn alone
    context_seconds = 0.0
    forward_context_seconds = 0.0
    context_key = None

    def __init__(self, n_estimators: int = 200, seed: int = 0, max_samples: int | str = "auto"):
        # scikit-learn's IsolationForest whose trees remember the rows they drew, for
        # out_of_bag (the same trees: iforest_draws)
        from zeekml.scoring.detectors.iforest_draws import RecordingIsolationForest

        self.featurizer = FlowFeaturizer()
        self.max_samples = max_samples
        self.model = RecordingIsolationForest(n_estimators=n_estimators, random_state=seed,
                                              max_samples=max_samples, n_jobs=1)
        self._direct: DirectForest | None = None
        self.oob_scores: np.ndarray | None = None
        self._median: np.ndarray | None = None
        self._mad: np.ndarray | None = None
        self._raw_median: np.ndarray | None = None
        self._raw_share: np.ndarray | None = None
        self.unseen = UnseenValues()

    def fit(self, table: pa.Table) -> IsolationForestDetector:
        """Fit the features' scaling and the forest on ``table`` (a baseline period), and score
        each of its rows out of bag (``oob_scores``, ``DirectForest.out_of_bag``: what
        ``pipeline.fitted.fit_calibrate`` calibrates on).

        ``max_samples="auto"`` grows each tree on ``min(256, n // 2)`` rows (scikit-learn's
        auto is ``min(256, n)``: the same from 512 rows up), so that below 512 rows too every
        row is left out of about half the trees."""
        parts = self.featurizer.parts(table)      # once, for the features and the fields
        x, raw = self.featurizer.fit_transform_raw(table, parts)
        fields = parts.categorical()
        self.unseen.fit(fields)
        if self.max_samples == "auto":
            self.model.set_params(max_samples=min(256, max(1, len(x) // 2)))
        self.model.fit(x)
        self._direct = DirectForest.of(self.model, x)
        try:
            trees = self._direct or DirectForest(self.model)
        except (AttributeError, ImportError) as e:
            raise ModelError("this scikit-learn's IsolationForest lacks the per-tree path lengths "
                             f"that out-of-bag calibration reads ({e})") from e
        drawn = self.model.drawn_samples(len(x))
        if drawn is None:
            log.info("IsolationForest's drawn rows read from estimators_samples_ (this "
                     "scikit-learn's trees recorded none)")
            drawn = self.model.estimators_samples_
        # each baseline conn out of its own trees and out of the value counts: as a new conn
        self.oob_scores = trees.out_of_bag(x, drawn) + self.unseen.held_out_unseen(fields).sum(axis=1)
        # what an explanation compares against: the scaled features' medians and MAD, and
        # the medians in the features' own units
        self._median = np.median(x, axis=0)
        mad = np.median(np.abs(x - self._median), axis=0)
        self._mad = np.where(mad > 1e-6, mad, np.maximum(np.std(x, axis=0), 1e-3))
        self._raw_median = np.median(raw, axis=0) if len(raw) else np.zeros(raw.shape[1])
        self._raw_share = raw.mean(axis=0) if len(raw) else np.zeros(raw.shape[1])
        return self

    def score(self, table: pa.Table) -> np.ndarray:
        """Anomaly score of every row, ``[n]`` (higher = more anomalous): ``forest_score`` plus
        the count of its unseen values."""
        if table.num_rows == 0:
            return np.zeros(0)
        parts = self.featurizer.parts(table)
        return (self._forest(self.featurizer.transform_parts(parts))
                + self.unseen.unseen(parts.categorical()).sum(axis=1))

    def forest_score(self, table: pa.Table) -> np.ndarray:
        """The trees' part of ``score``: scikit-learn's ``-score_samples``, ``[n]`` in (0, 1)."""
        if table.num_rows == 0:
            return np.zeros(0)
        return self._forest(self.featurizer.transform(table))

    def _forest(self, x: np.ndarray) -> np.ndarray:
        if self._direct is not None:
            return self._direct.scores(x)
        return -self.model.score_samples(x)

    def score_rows(self, table: pa.Table, rows: np.ndarray) -> np.ndarray:
        """``score(table)[rows]``: per-conn, so only ``rows`` are featurised."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return np.zeros(0)
        return self.score(table.take(pa.array(rows, pa.int64())))

    def explain(self, table: pa.Table, rows: np.ndarray, top: int = 3) -> list[str]:
        """For each of ``rows``: the ``top`` features furthest from the baseline (robust z-score
        of the scaled feature), each in its own units beside the baseline's median (or, for a
        flag such as ``conn_state RSTO``, the baseline's share of conns with it), e.g.
        ``duration 503 s, 162x the baseline median 3.11 s; resp_pkts 184, where the baseline median is 0``;
        led by the values no baseline conn had, when the conn has any (``never in the baseline:
        proto tcp, history with S; ...``)."""
        if len(rows) == 0:
            return []
        sub = table.take(pa.array(rows, pa.int64()))
        parts = self.featurizer.parts(sub)
        x = self.featurizer.transform_parts(parts)
        raw = self.featurizer._raw(sub, parts)
        fields = parts.categorical()
        z = np.abs(x - self._median) / self._mad
        names = self.featurizer.feature_names
        out = []
        for i in range(len(rows)):
            idx = np.argsort(-z[i], kind="stable")[:top]
            text = "; ".join(feature_value_text(names[j], float(raw[i, j]),
                                                float(self._raw_median[j]),
                                                float(self._raw_share[j])) for j in idx)
            new = self.unseen.text(fields, i)
            out.append(f"never in the baseline: {new}; {text}" if new else text)
        return out
