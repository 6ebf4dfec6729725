"""Thresholds calibrated to a target false-positive rate on a baseline period."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def fpr_text(fpr: float, effective: float | None = None) -> str:
    """The false-positive rate alerts are raised at, in words: ``fpr 0.001``, or, where the
    baseline cannot resolve ``fpr``, ``effective fpr 0.0185, asked 0.001``."""
    if effective is None or effective <= fpr:
        return f"fpr {fpr:g}"
    return f"effective fpr {effective:.3g}, asked {fpr:g}"


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
        return self.fit_stats(BaselineStats.of(baseline_scores))

    def fit_stats(self, stats: "BaselineStats") -> "ThresholdCalibrator":
        """``fit`` from the baseline's scores as ``BaselineStats`` holds them (the combined
        calibration fits each detector at ~60 rates: its median, spread and finite scores are
        the same at each, and were a third of the search's time recomputed)."""
        s = stats.finite
        self.n_baseline = int(s.size)
        self.center = stats.median
        self.threshold = float(np.quantile(s, 1.0 - self.fpr, method="higher"))
        if self.threshold <= self.center:
            self.threshold = self.center + max(1e-9, stats.std or 1e-6)
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


@dataclass(frozen=True)
class BaselineStats:
    """A detector's finite baseline scores, sorted (a quantile of a sorted array is the same
    value, found faster), with their median and standard deviation."""

    finite: np.ndarray
    median: float
    std: float

    @classmethod
    def of(cls, baseline_scores: np.ndarray) -> "BaselineStats":
        """Raises ``ValueError`` when no score is finite."""
        s = np.asarray(baseline_scores, dtype=np.float64)
        s = s[np.isfinite(s)]
        if s.size == 0:
            raise ValueError("no baseline scores to calibrate on")
        # median and std of the scores as given: their bits are the order's (np.std sums
        # pairwise in array order)
        return cls(np.sort(s), float(np.median(s)), float(np.std(s)))


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

    stats = {name: BaselineStats.of(s) for name, s in scores.items()}

    def fitted(q: float) -> dict[str, ThresholdCalibrator]:
        return {name: ThresholdCalibrator(fpr=q).fit_stats(st) for name, st in stats.items()}

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


# How a known-bad classifier's trained cut (its config's "operating_point", chosen at finetune
# time on benign conns it did not train on) meets the baseline quantile (issue 14):
# - "infected": the cut replaces the baseline quantile only when the baseline looks infected
#   (``pipeline.fitted.baseline_infection``), and the classifier then stays out of the combined
#   search (its alerts on an infected baseline are the infection, not false alerts);
# - "min": always the lower of the two thresholds;
# - "never": always the baseline quantile (what zeekml did before).
# "infected" is what zeekml runs; docs/results/detection.md has the measurements.
CUT_RULES = ("infected", "min", "never")
CUT_RULE = "infected"


def cut_calibrator(op: dict) -> ThresholdCalibrator:
    """The calibrator of a trained cut ``op`` (``train.metrics.trained_cut``'s dict): 1.0 at
    P = ``op["cut"]`` and 0 at P = 0, a conn the head is sure is benign (a baseline median
    would be an infected baseline's malware); ``fpr`` and ``n_baseline`` are the validation
    FPR and benign conns it was chosen on, so ``effective_fpr`` states the trained rate."""
    n = int(op.get("validation_benign") or 0)
    fpr = op.get("validation_fpr")
    return ThresholdCalibrator(fpr=float(fpr) if fpr is not None else float(op["fpr"]),
                               threshold=float(op["cut"]), center=0.0, n_baseline=n)


def calibrate_with_cuts(scores: dict[str, np.ndarray], fpr: float, cuts: dict[str, dict],
                        infected: bool, rule: str = CUT_RULE) -> tuple[CombinedCalibration, dict[str, dict]]:
    """``calibrate_combined`` where known-bad classifiers keep their trained cut per ``rule``
    (``CUT_RULES``).

    Args:
        scores: raw calibration scores per detector name, ``[m]`` each.
        fpr: combined false-positive rate wanted.
        cuts: trained cut (``"operating_point"``) per classifier name that has one.
        infected: the baseline looks infected (``baseline_infection`` fired).
        rule: one of ``CUT_RULES`` (default ``CUT_RULE``).

    Returns the calibration (its ``cal_rate``/``q`` cover the detectors calibrated on the
    baseline only) and, per detector whose threshold is its trained cut, that cut's dict with
    the baseline threshold it replaced (``"baseline_threshold"``; None when not computed).
    """
    if rule not in CUT_RULES:
        raise ValueError(f"unknown cut rule {rule!r} (one of {', '.join(CUT_RULES)})")
    cuts = {k: v for k, v in cuts.items() if k in scores}
    used: dict[str, dict] = {}
    if rule == "infected" and infected and cuts:
        rest = {k: v for k, v in scores.items() if k not in cuts}
        if rest:
            combined = calibrate_combined(rest, fpr)
        else:
            # nothing is calibrated on the baseline: no rate measured there
            n = min(int(np.isfinite(np.asarray(s, dtype=np.float64)).sum()) for s in scores.values())
            combined = CombinedCalibration(fpr=fpr, q=fpr, calibrators={}, n_calibration=n, cal_rate=0.0)
        cals = dict(combined.calibrators)
        for name in scores:            # keep the detectors' order
            if name in cuts:
                cals[name] = cut_calibrator(cuts[name])
                used[name] = dict(cuts[name]) | {"baseline_threshold": None}
        combined.calibrators = {name: cals[name] for name in scores}
        return combined, used
    combined = calibrate_combined(scores, fpr)
    if rule == "min":
        for name, op in cuts.items():
            base = combined.calibrators[name]
            if float(op["cut"]) < base.threshold:
                combined.calibrators[name] = cut_calibrator(op)
                used[name] = dict(op) | {"baseline_threshold": base.threshold}
        if used:       # a lower bar alerts more on the calibration conns: say what it delivers
            combined.cal_rate = union_rate(combined.calibrators, scores)
    return combined, used
