"""The IsolationForest on the shared flow features: the honest baseline every learned model is
compared against, and the one detector ``--no-models`` keeps."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from sklearn.ensemble import IsolationForest

from zeekml.features.flow_features import FlowFeaturizer
from zeekml.scoring.explain import feature_value_text


class IsolationForestDetector:
    """IsolationForest on the shared flow features (a per-conn detector: no context).

    Args:
        n_estimators: trees (default 200).
        seed: random state, so a run is reproducible (default 0).
        max_samples: rows per tree (default "auto", scikit-learn's min(256, n)).
    """

    name = "iforest"
    note = "ZeekML::Anomalous_Flow"
    # a conn's score depends on that conn alone
    context_seconds = 0.0
    forward_context_seconds = 0.0
    context_key = None

    def __init__(self, n_estimators: int = 200, seed: int = 0, max_samples: int | str = "auto"):
        self.featurizer = FlowFeaturizer()
        self.model = IsolationForest(n_estimators=n_estimators, random_state=seed,
                                     max_samples=max_samples, n_jobs=1)
        self._median: np.ndarray | None = None
        self._mad: np.ndarray | None = None
        self._raw_median: np.ndarray | None = None
        self._raw_share: np.ndarray | None = None

    def fit(self, table: pa.Table) -> IsolationForestDetector:
        """Fit the features' scaling and the forest on ``table`` (a baseline period)."""
        x, raw = self.featurizer.fit_transform_raw(table)
        self.model.fit(x)
        self._median = np.median(x, axis=0)
        mad = np.median(np.abs(x - self._median), axis=0)
        self._mad = np.where(mad > 1e-6, mad, np.maximum(np.std(x, axis=0), 1e-3))
        # what an explanation compares against, in the features' own units
        self._raw_median = np.median(raw, axis=0) if len(raw) else np.zeros(raw.shape[1])
        self._raw_share = raw.mean(axis=0) if len(raw) else np.zeros(raw.shape[1])
        return self

    def score(self, table: pa.Table) -> np.ndarray:
        """Anomaly score of every row, ``[n]`` (higher = more anomalous)."""
        if table.num_rows == 0:
            return np.zeros(0)
        return -self.model.score_samples(self.featurizer.transform(table))

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
        ``duration 503 s, 162x the baseline median 3.11 s; resp_pkts 184, where the baseline median is 0``."""
        if len(rows) == 0:
            return []
        sub = table.take(pa.array(rows, pa.int64()))
        x = self.featurizer.transform(sub)
        raw = self.featurizer._raw(sub)
        z = np.abs(x - self._median) / self._mad
        names = self.featurizer.feature_names
        out = []
        for i in range(len(rows)):
            idx = np.argsort(-z[i], kind="stable")[:top]
            out.append("; ".join(feature_value_text(names[j], float(raw[i, j]),
                                                    float(self._raw_median[j]),
                                                    float(self._raw_share[j])) for j in idx))
        return out
