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


@dataclass
class CombinedCalibration:
    """Per-detector calibrators whose *combined* alert rate sits at ``fpr``.

    A conn alerts when any detector passes its threshold (``ensemble.combine`` takes the
    maximum), so the alert rate of ``n`` detectors is that of their union. Splitting ``fpr``
    evenly (``fpr / n`` each, the union bound) is safe but, as detectors agree on most outliers,
    alerts far less than asked and needs ``n`` times more baseline conns to resolve. Instead one
    common per-detector quantile ``q`` in ``[0, fpr]`` is searched so that the union alert
    rate on the calibration conns is at most ``fpr`` and as close to it as the data allow
    (``calibrate_combined``).

    Attributes:
        fpr: the combined false-positive rate asked.
        q: the per-detector quantile found (each calibrator's ``fpr``).
        calibrators: one ``ThresholdCalibrator`` per detector name, fitted at ``q``.
        n_calibration: calibration conns (the fewest finite scores of any detector).
        cal_rate: share of calibration conns that the combined score alerts on.
    """

    fpr: float
    q: float
    calibrators: dict[str, ThresholdCalibrator]
    n_calibration: int
    cal_rate: float

    @property
    def min_fpr(self) -> float:
        """The smallest FPR these calibration conns can tell apart: one conn of them."""
        return 1.0 / max(self.n_calibration, 1)

    @property
    def effective_fpr(self) -> float:
        """What the thresholds deliver on the calibration conns: the asked ``fpr``, or the
        measured combined alert rate there when the data could not go that low (ties, or fewer
        than ``1 / fpr`` conns, where each detector's threshold is its largest score)."""
        return max(self.fpr, self.cal_rate)


def union_rate(calibrators: dict[str, ThresholdCalibrator], scores: dict[str, np.ndarray]) -> float:
    """Share of conns whose largest calibrated score is at least 1.0 (the alert rule)."""
    names = list(calibrators)
    if not names:
        raise ValueError("no detector scores to combine")
    n = len(scores[names[0]])
    if n == 0:
        return 0.0
    alert = np.zeros(n, dtype=bool)
    for name in names:
        c = calibrators[name].calibrate(scores[name])
        alert |= np.nan_to_num(c, nan=-np.inf) >= 1.0
    return float(alert.mean())


def calibrate_combined(scores: dict[str, np.ndarray], fpr: float,
                       iterations: int = 60) -> CombinedCalibration:
    """Calibrators for each detector's calibration ``scores`` so that the combined alert rate on
    those conns is at most ``fpr`` (see ``CombinedCalibration``).

    The union rate only grows with ``q``, so bisection over ``[0, fpr]`` finds the largest ``q``
    whose rate is within ``fpr``: ``fpr`` itself when the detectors' tails coincide, about
    ``fpr / n`` when they are disjoint, and below that when a threshold on a calibration conn
    (which alerts too) overshoots. When even ``q = 0`` (each threshold at its detector's largest
    calibration score) alerts more than ``fpr`` (too few conns), ``q = 0`` is kept and
    ``effective_fpr`` says what it delivers.

    Args:
        scores: raw calibration scores per detector name (higher = more anomalous), ``[m]`` each.
        fpr: combined false-positive rate wanted, in (0, 1].
        iterations: bisection steps (default 60: far below any step of the rate).
    """
    if not scores:
        raise ValueError("no detector scores to calibrate")

    def fitted(q: float) -> dict[str, ThresholdCalibrator]:
        return {name: ThresholdCalibrator(fpr=q).fit(s) for name, s in scores.items()}

    lo, hi = 0.0, fpr
    best = fitted(hi)
    rate = union_rate(best, scores)
    if rate > fpr:
        best = fitted(lo)
        rate = union_rate(best, scores)
        if rate <= fpr:
            for _ in range(iterations):
                mid = 0.5 * (lo + hi)
                cals = fitted(mid)
                r = union_rate(cals, scores)
                if r <= fpr:
                    lo, best, rate = mid, cals, r
                else:
                    hi = mid
        q = lo
    else:
        q = hi
    n_cal = min(int(np.isfinite(np.asarray(s, dtype=np.float64)).sum()) for s in scores.values())
    return CombinedCalibration(fpr=fpr, q=q, calibrators=best, n_calibration=n_cal, cal_rate=rate)
