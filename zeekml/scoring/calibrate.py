"""Thresholds calibrated to a target false-positive rate on a baseline period."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class ThresholdCalibrator:
    """Maps raw detector scores (higher = more anomalous) to a calibrated scale.

    Fitted on baseline scores: ``threshold`` is their ``1 - fpr`` quantile and ``center`` their
    median; the calibrated score is ``(s - center) / (threshold - center)``, so 1.0 sits exactly
    at the threshold and 0 at a typical baseline conn. With ``n`` baseline conns the smallest FPR
    that can be told apart is ``1/n``; ``effective_fpr`` says what was achievable.
    """

    fpr: float = 0.001
    threshold: float = float("nan")
    center: float = float("nan")
    n_baseline: int = 0

    def fit(self, baseline_scores: np.ndarray) -> "ThresholdCalibrator":
        s = np.asarray(baseline_scores, dtype=np.float64)
        s = s[np.isfinite(s)]
        if s.size == 0:
            raise ValueError("no baseline scores to calibrate on")
        self.n_baseline = int(s.size)
        self.center = float(np.median(s))
        self.threshold = float(np.quantile(s, 1.0 - self.fpr, method="higher"))
        if self.threshold <= self.center:
            self.threshold = self.center + max(1e-9, float(np.std(s)) or 1e-6)
        return self

    @property
    def effective_fpr(self) -> float:
        return max(self.fpr, 1.0 / max(self.n_baseline, 1))

    def calibrate(self, scores: np.ndarray) -> np.ndarray:
        return (np.asarray(scores, dtype=np.float64) - self.center) / (self.threshold - self.center)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ThresholdCalibrator":
        return cls(**d)
