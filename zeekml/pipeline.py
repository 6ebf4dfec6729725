"""source -> parse -> flows -> features -> detectors -> calibration -> verdicts -> sinks.

The one place that sees every step. ``score_paths`` is what ``zeekml score`` runs.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zeekml._core.errors import ZeekmlError
from zeekml.flows.table import conn_table, is_conn_batch
from zeekml.parse import Quarantine, read_log
from zeekml.parse.reject import RejectedRecord
from zeekml.scoring.calibrate import ThresholdCalibrator
from zeekml.scoring.detector import Detector, IsolationForestDetector
from zeekml.scoring.ensemble import combine
from zeekml.scoring.verdict import Verdict
from zeekml.sinks.run_outputs import ScoreOutputs
from zeekml.sources.archive import expand_inputs

log = logging.getLogger(__name__)


@dataclass
class ScoreOptions:
    """Settings of one scoring run.

    Args:
        fpr: target false-positive rate of each detector's threshold on the baseline.
        baseline: logs of a period taken as normal, to fit and calibrate on. Default: the
            earliest ``baseline_fraction`` of the scored records by ``ts``.
        seed: makes fitting reproducible.
        zeek_feedback: also write the verdict file that the Zeek package reads.
    """

    fpr: float = 0.001
    baseline: list[str] = field(default_factory=list)
    baseline_fraction: float = 0.3
    seed: int = 0
    zeek_feedback: str | None = None
    detectors: list[str] = field(default_factory=lambda: ["iforest"])
    models_dir: str | None = None   # learned detectors; None = none, "" = the shipped models/
    device: str = "cpu"
    dask: str | None = None         # "local", "local:N" or a scheduler address
    split_bytes: int = 64 << 20     # Dask: plain files larger than this are cut into tasks


@dataclass
class ScoreSummary:
    files: int = 0
    files_failed: list[tuple[str, str]] = field(default_factory=list)
    tasks_retried: list[dict] = field(default_factory=list)   # --dask: path, start, end, step, attempts
    records_read: int = 0
    conn_records: int = 0
    other_records: int = 0
    quarantined: int = 0
    quarantine_by_reason: dict[str, int] = field(default_factory=dict)
    scored: int = 0
    baseline_records: int = 0
    alerts: int = 0
    alerts_by_note: dict[str, int] = field(default_factory=dict)
    thresholds: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def flows_per_s(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["flows_per_s"] = self.flows_per_s
        return d


ProgressFn = Callable[[str, int], None]


def load_conns(paths: list[str], quarantine: Quarantine, summary: ScoreSummary,
               on_bytes: ProgressFn | None = None) -> pa.Table:
    """Read every file, keep conn records; per-file failures are recorded and the rest goes on."""
    batches = []
    for path in paths:
        try:
            for b in read_log(path, quarantine):
                summary.records_read += b.num_rows
                if is_conn_batch(b):
                    batches.append(b)
                    summary.conn_records += b.num_rows
                else:
                    summary.other_records += b.num_rows
            summary.files += 1
        except ZeekmlError as e:
            summary.files_failed.append((path, e.message))
            log.warning("%s", e)
        if on_bytes:
            on_bytes(path, os.path.getsize(path) if os.path.exists(path) else 0)
    return conn_table(batches)


def baseline_rows(table: pa.Table, fraction: float) -> np.ndarray:
    """Indices of the earliest ``fraction`` of conns by ts (unset ts sorts last)."""
    n = table.num_rows
    k = max(1, int(round(n * fraction)))
    ts = pc.fill_null(table.column("ts"), np.inf).to_numpy(zero_copy_only=False)
    return np.sort(np.argsort(ts, kind="stable")[:k])


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


def score_table(table: pa.Table, baseline: pa.Table, options: ScoreOptions,
                summary: ScoreSummary) -> list[Verdict]:
    """Fit, calibrate and score; one verdict per conn of ``table``, in order."""
    if table.num_rows == 0:
        return []
    return score_fitted(table, fit_calibrate(baseline, options, summary))


def score_paths(paths: list[str], out_dir: str, options: ScoreOptions | None = None,
                progress: bool = False) -> ScoreSummary:
    """Score every conn record under ``paths``; write verdicts, notices and quarantine to ``out_dir``.

    Outputs: ``verdicts.jsonl``, ``zeekml_notice.log``, ``quarantine.jsonl``, ``summary.json``
    (and the Zeek feedback file when ``options.zeek_feedback`` is set). With ``options.dask``
    the work runs on a Dask cluster (``zeekml.distributed``) and the outputs are the same.
    """
    options = options or ScoreOptions()
    t0 = time.perf_counter()
    files = expand_inputs(paths)
    if not files:
        raise ZeekmlError("no conn or eve logs found in the given paths")
    baseline_files = expand_inputs(options.baseline) if options.baseline else []
    outputs = ScoreOutputs(out_dir, options.zeek_feedback)
    summary = ScoreSummary()
    quarantine = Quarantine(sink=outputs.quarantine)
    from zeekml._core.progress import file_progress
    try:
        with file_progress(files + baseline_files, enabled=progress and not options.dask) as advance:
            baseline = None
            if baseline_files:
                baseline = load_conns(baseline_files, quarantine, ScoreSummary(), advance)
            if options.dask:
                from zeekml.distributed import plan_tasks, score_tasks_dask
                score_tasks_dask(plan_tasks(files, options.split_bytes), options.dask, options,
                                 summary, quarantine, baseline, outputs.write_rendered)
            else:
                table = load_conns(files, quarantine, summary, advance)
                if summary.files == 0:
                    raise ZeekmlError("no input file could be read: " +
                                      "; ".join(f"{p}: {m}" for p, m in summary.files_failed))
                if baseline is None:
                    baseline = table.take(pa.array(baseline_rows(table, options.baseline_fraction))) \
                        if table.num_rows else table
                summary.baseline_records = baseline.num_rows
                outputs.write(score_table(table, baseline, options, summary))
    except BaseException:
        outputs.close()
        raise
    summary.scored = outputs.scored
    summary.alerts = sum(outputs.notes.values())
    summary.alerts_by_note = dict(outputs.notes)
    summary.quarantined = quarantine.count
    summary.quarantine_by_reason = dict(quarantine.by_reason)
    summary.seconds = time.perf_counter() - t0
    summary.outputs.update(outputs.finish(summary.to_dict()))
    return summary


def rejected_to_dict(r: RejectedRecord) -> dict:
    return {"path": r.path, "line": r.line, "offset": r.offset, "reason": r.reason}
