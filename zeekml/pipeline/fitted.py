"""Detectors fitted on a baseline with calibrated thresholds, and scoring with them.

``zeekml score`` fits once per run, ``--dask`` fits once on the driver and sends the result to
the workers, ``zeekml watch`` fits once at start: all three score with ``score_fitted``, so a
conn gets the same verdict everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from zeekml._core.errors import ZeekmlError
from zeekml.pipeline.options import ScoreOptions, ScoreSummary
from zeekml.scoring.calibrate import ThresholdCalibrator
from zeekml.scoring.detector import Detector, IsolationForestDetector
from zeekml.scoring.ensemble import combine
from zeekml.scoring.registry import load_model_detectors
from zeekml.scoring.verdict import Verdict, VerdictBatch


def build_detectors(names: list[str], seed: int, models_dir: str | None = None,
                    device: str = "cpu") -> list[Detector]:
    """The detectors a run scores with: ``names`` (only ``"iforest"`` so far) and, unless
    ``models_dir`` is None, the learned detectors of that ``--models`` directory ("" = the
    shipped models; ``scoring.registry.load_model_detectors``)."""
    out: list[Detector] = []
    for name in names:
        if name == "iforest":
            out.append(IsolationForestDetector(seed=seed))
        else:
            raise ZeekmlError(f"unknown detector {name!r} (available: iforest)")
    if models_dir is not None:
        out.extend(load_model_detectors(models_dir, device))
    return out


def _split_fit_calibrate(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit on one half of the baseline and calibrate on the other, so the threshold is not set
    on the very conns the model memorised (which would make it too low)."""
    idx = np.random.default_rng(seed).permutation(n)
    if n < 200:
        return idx, idx
    half = n // 2
    return np.sort(idx[:half]), np.sort(idx[half:])


@dataclass
class FittedDetectors:
    """Detectors fitted on a baseline and their calibrated thresholds: all that scoring needs.

    ``zeekml score`` fits one per run; ``zeekml watch`` fits one at start and scores every
    window with it, so a conn gets the same verdict live as in batch.
    """

    detectors: list[Detector]
    calibrators: dict[str, ThresholdCalibrator]
    fpr: float


def fit_calibrate(baseline: pa.Table, options: ScoreOptions,
                  summary: ScoreSummary | None = None) -> FittedDetectors:
    """Fit each detector on one half of ``baseline`` and calibrate its threshold on the other."""
    if baseline.num_rows == 0:
        raise ZeekmlError("the baseline holds no conn records to fit on")
    detectors = build_detectors(options.detectors, options.seed, options.models_dir, options.device)
    fit_idx, cal_idx = _split_fit_calibrate(baseline.num_rows, options.seed)
    calibrators: dict[str, ThresholdCalibrator] = {}
    # The combined score alerts when any detector passes its threshold, so each detector gets
    # an equal share of the false-positive budget (union bound): together they stay within fpr.
    per_detector_fpr = options.fpr / len(detectors)
    for det in detectors:
        det.fit(baseline.take(pa.array(fit_idx)))
        cal = ThresholdCalibrator(fpr=per_detector_fpr).fit(det.score(baseline.take(pa.array(cal_idx))))
        calibrators[det.name] = cal
        if summary is not None:
            summary.thresholds[det.name] = cal.to_dict() | {"effective_fpr": cal.effective_fpr}
    return FittedDetectors(detectors, calibrators, options.fpr)


def score_batch(table: pa.Table, fitted: FittedDetectors) -> VerdictBatch:
    """The verdicts of every conn of ``table``, in order, column by column. Each verdict depends
    only on its own row (detectors with a time context get theirs through
    ``zeekml.scoring.context``)."""
    detectors = fitted.detectors
    names = [det.name for det in detectors]
    notes = [det.note for det in detectors]
    if table.num_rows == 0:
        empty = np.zeros(0)
        return VerdictBatch(table, names, notes, {n: empty for n in names}, empty,
                            np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool))
    calibrated: dict[str, np.ndarray] = {}
    for det in detectors:
        calibrated[det.name] = fitted.calibrators[det.name].calibrate(det.score(table))
    combined, top = combine(calibrated)
    alert = combined >= 1.0
    alert_rows = np.flatnonzero(alert)
    sub: dict[int, str] = {}
    for d_i, det in enumerate(detectors):
        rows = alert_rows[top[alert_rows] == d_i]
        for r, text in zip(rows, det.explain(table, rows)):
            sub[int(r)] = text
    msg = {r: f"{names[top[r]]} anomaly score {combined[r]:.3f} (1.0 = threshold at fpr "
              f"{fitted.fpr:g})" for r in alert_rows.tolist()}
    return VerdictBatch(table, names, notes, calibrated, combined, top, alert, msg, sub)


def score_fitted(table: pa.Table, fitted: FittedDetectors) -> list[Verdict]:
    """One verdict per conn of ``table``, in order (``score_batch`` as ``Verdict`` objects)."""
    return score_batch(table, fitted).verdicts()
