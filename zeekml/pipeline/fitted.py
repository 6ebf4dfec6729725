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
from zeekml.scoring.verdict import Verdict


def build_detectors(names: list[str], seed: int, models_dir: str | None = None,
                    device: str = "cpu") -> list[Detector]:
    out: list[Detector] = []
    for name in names:
        if name == "iforest":
            out.append(IsolationForestDetector(seed=seed))
        else:
            raise ZeekmlError(f"unknown detector {name!r} (available: iforest)")
    if models_dir is not None:
        from zeekml.scoring.learned import default_models_dir, load_learned_detectors
        out.extend(load_learned_detectors(models_dir or default_models_dir(), device))
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


def score_fitted(table: pa.Table, fitted: FittedDetectors) -> list[Verdict]:
    """One verdict per conn of ``table``, in order. Each verdict depends only on its own row."""
    if table.num_rows == 0:
        return []
    detectors = fitted.detectors
    calibrated: dict[str, np.ndarray] = {}
    for det in detectors:
        calibrated[det.name] = fitted.calibrators[det.name].calibrate(det.score(table))
    combined, top = combine(calibrated)
    alert = combined >= 1.0
    alert_rows = np.flatnonzero(alert)
    explanations: dict[int, str] = {}
    for d_i, det in enumerate(detectors):
        rows = alert_rows[top[alert_rows] == d_i]
        for r, text in zip(rows, det.explain(table, rows)):
            explanations[int(r)] = text
    cols = {name: table.column(name).to_pylist() for name in
            ("ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto")}
    verdicts = []
    names = list(calibrated)
    for i in range(table.num_rows):
        det = detectors[int(top[i])]
        score = float(combined[i])
        is_alert = bool(alert[i])
        v = Verdict(
            ts=cols["ts"][i] if cols["ts"][i] is not None else 0.0,
            uid=cols["uid"][i] or f"row{i}", orig_h=cols["id.orig_h"][i], orig_p=cols["id.orig_p"][i],
            resp_h=cols["id.resp_h"][i], resp_p=cols["id.resp_p"][i], proto=cols["proto"][i],
            score=score, alert=is_alert, model=det.name, note=det.note,
            msg=(f"{det.name} anomaly score {score:.3f} (1.0 = threshold at fpr {fitted.fpr:g})"
                 if is_alert else ""),
            sub=explanations.get(i, ""),
            scores={n: float(calibrated[n][i]) for n in names},
        )
        verdicts.append(v)
    return verdicts


