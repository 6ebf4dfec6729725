"""Detectors fitted on a baseline with calibrated thresholds, and scoring with them.

``zeekml score`` fits once per run, ``--dask`` fits once on the driver and sends the result to
the workers, ``zeekml watch`` fits once at start: all three score with ``score_fitted``, so a
conn gets the same verdict everywhere.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa

from zeekml._core.errors import ZeekmlError
from zeekml.pipeline.options import ScoreOptions, ScoreSummary
from zeekml.scoring.calibrate import ThresholdCalibrator, calibrate_with_cuts
from zeekml.scoring.context import horizon
from zeekml.scoring.detector import Detector, IsolationForestDetector
from zeekml.scoring.ensemble import combine
from zeekml.scoring.registry import load_model_detectors
from zeekml.scoring.verdict import NOTE_TYPES, Verdict, VerdictBatch

log = logging.getLogger(__name__)


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


# The baseline-size rule. With m calibration conns one conn is a share of 1/m, so a threshold
# at the 1 - fpr quantile is resolved only when m * fpr >= 1; below that every detector's
# threshold is its largest calibration score and the run alerts at about 1/m, whatever --fpr
# says. A baseline that cannot resolve even REFUSE_FACTOR times the asked rate is refused (a
# 7-conn log would alert on every conn); one with fewer than WARN_BEYOND conns expected beyond
# the threshold runs with a warning (the threshold rests on a handful of conns, and the
# effective FPR in summary.json and in each notice says what it delivers).
REFUSE_FACTOR = 10.0
WARN_BEYOND = 10.0
BASELINE_OPTIONS = "--baseline, --baseline-fraction, --baseline-until or --baseline-range"


def _conns_for(m_cal: float) -> int:
    """Baseline conns that give ``m_cal`` calibration conns (the baseline is split in halves)."""
    m = int(np.ceil(m_cal))
    return m if m < 100 else 2 * m


def check_baseline_size(n_calibration: int, fpr: float) -> str | None:
    """Refuse (``ZeekmlError``) a baseline whose ``n_calibration`` conns cannot resolve
    ``REFUSE_FACTOR * fpr``; return a warning when they resolve ``fpr`` with fewer than
    ``WARN_BEYOND`` conns beyond the threshold; else None."""
    m = n_calibration
    min_fpr = 1.0 / max(m, 1)
    if min_fpr > REFUSE_FACTOR * fpr:
        raise ZeekmlError(
            f"the baseline is too small for --fpr {fpr:g}: its {m:,} calibration conns support "
            f"an FPR of {min_fpr:.2g} at the least; give a baseline of at least "
            f"{_conns_for(1 / fpr):,} conns ({BASELINE_OPTIONS}) or raise --fpr to {min_fpr:.2g}")
    if m * fpr < WARN_BEYOND:
        return (f"baseline small for --fpr {fpr:g}: {m:,} calibration conns, {m * fpr:.2g} "
                f"expected beyond the threshold (the smallest FPR they support is {min_fpr:.2g}); "
                f"{_conns_for(WARN_BEYOND / fpr):,} baseline conns give a stable threshold")
    return None


# "Your baseline looks infected": known-bad classifiers (a finetuned model's probability of the
# malicious classes; see ``is_known_bad``) that flag at least
# INFECTED_SHARE of the baseline, and at least INFECTED_MIN conns, raise a warning. A clean
# baseline is what every anomaly detector's "normal" rests on.
INFECTED_SHARE = 0.01
INFECTED_MIN = 3
INFECTED_HOSTS = 5


# The notes only a supervised head raises (``scoring.verdict.NOTE_TYPES``): the anomaly note
# is the one that is not known-bad.
KNOWN_BAD_NOTES = frozenset(n for n in NOTE_TYPES if n != "ZeekML::Anomalous_Flow")


def is_known_bad(det: Detector) -> bool:
    """A detector that tells known-bad traffic (a classifier), not anomalies: ``kind`` is
    ``"classifier"``, or it raises a supervised head's note (``KNOWN_BAD_NOTES``)."""
    return getattr(det, "kind", None) == "classifier" or getattr(det, "note", None) in KNOWN_BAD_NOTES


def baseline_infection(baseline: pa.Table, detectors: list[Detector]) -> str | None:
    """The warning when known-bad classifiers flag a large share of ``baseline`` (see
    ``INFECTED_SHARE``), naming the hosts with the most flagged conns; None otherwise.

    A classifier flags a conn when its score (probability of the malicious classes) reaches
    its ``decision_threshold`` attribute (its trained cut, else 0.5)."""
    judges = [d for d in detectors if is_known_bad(d)]
    if not judges or baseline.num_rows == 0:
        return None
    flagged = np.zeros(baseline.num_rows, dtype=bool)
    for det in judges:
        p = np.nan_to_num(np.asarray(det.score(baseline), dtype=np.float64), nan=0.0)
        flagged |= p >= float(getattr(det, "decision_threshold", 0.5))
    n = int(flagged.sum())
    if n < INFECTED_MIN or n < INFECTED_SHARE * baseline.num_rows:
        return None
    hosts = pa.array(baseline.column("id.orig_h").to_pylist()).take(
        pa.array(np.flatnonzero(flagged))).value_counts().to_pylist()
    hosts.sort(key=lambda h: (-h["counts"], str(h["values"])))
    named = ", ".join(f"{h['values']} ({h['counts']:,})" for h in hosts[:INFECTED_HOSTS])
    more = f" and {len(hosts) - INFECTED_HOSTS} more" if len(hosts) > INFECTED_HOSTS else ""
    return (f"your baseline looks infected: {n:,} of its {baseline.num_rows:,} conns flagged by "
            f"{', '.join(d.name for d in judges)}, of hosts {named}{more}; calibrate on a clean "
            f"period ({BASELINE_OPTIONS})")


@dataclass
class FittedDetectors:
    """Detectors fitted on a baseline and their calibrated thresholds: all that scoring needs.

    ``zeekml score`` fits one per run; ``zeekml watch`` fits one at start and scores every
    window with it, so a conn gets the same verdict live as in batch. ``effective_fpr`` is what
    the thresholds deliver together on the calibration conns (``CombinedCalibration``), the
    rate each notice states; None = ``fpr``. ``trained_cuts``: the known-bad classifiers
    whose threshold is their trained cut, not a baseline quantile (``calibrate_with_cuts``),
    with that cut's record; their notices say so. ``conn_seconds``: each detector's CPU seconds
    (of the process: torch's threads count, other processes' load does not) per conn scored
    while calibrating (``fit_calibrate``; a learned detector's ``fit_split``
    embeds the whole baseline, its time counted per conn embedded), the cost that
    ``watch --score-workers`` shares the detectors out by (``live.pool.assign``).
    """

    detectors: list[Detector]
    calibrators: dict[str, ThresholdCalibrator]
    fpr: float
    effective_fpr: float | None = None
    trained_cuts: dict[str, dict] = field(default_factory=dict)
    conn_seconds: dict[str, float] = field(default_factory=dict)


def _per_conn(det: Detector) -> bool:
    return horizon(det) == (0.0, 0.0)


def fit_calibrate(baseline: pa.Table, options: ScoreOptions, summary: ScoreSummary | None = None,
                  scored: pa.Table | None = None, rows: np.ndarray | None = None,
                  raw: dict[str, np.ndarray] | None = None,
                  fit_extra: pa.Table | None = None,
                  on_step: Callable[[str], None] | None = None) -> FittedDetectors:
    """Fit each detector on one half of ``baseline`` and calibrate them together on the other
    half, so that the combined alert rate there is ``options.fpr`` (``calibrate_combined``).

    When the baseline is ``scored.take(rows)`` (drawn from the input), a per-conn detector
    scores ``scored`` once: its calibration scores are taken from that and the scores are left
    in ``raw`` for ``score_batch`` (identical numbers: a per-conn score depends on its row
    alone). Detectors with a time context score the calibration half in the baseline's own
    context, as for a ``--baseline`` file, so ``score`` and ``watch`` calibrate alike. Learned
    detectors (``fit_split``) embed every baseline conn once, in the whole baseline's context
    (not each half's, which holds every other conn of a host's history), fit on the fit half's
    embeddings and calibrate on the other half's; with the baseline drawn from the input they
    score ``scored`` in the same call, reusing the baseline conns' embeddings (left in ``raw``).

    ``fit_extra``: conns a person labeled benign (``zeekml feedback``), fitted on beside the
    fit half but never calibrated on: they were picked for being alerts, not drawn at random
    from normal traffic, so in the calibration half they would bias the FPR estimate.

    ``on_step(text)`` is told each step (fitting, scoring a detector) for a progress display.

    A known-bad classifier with a trained cut (``"operating_point"`` in its config) keeps that
    cut as its threshold when the baseline looks infected (``baseline_infection``): the baseline
    quantile of an infected baseline sits above the malware's own probabilities. It is then left
    out of the combined search, said in a warning, in ``summary.calibration["trained_cuts"]``
    and in its notices (``scoring.calibrate.calibrate_with_cuts``, rule ``CUT_RULE``).

    Raises ``ZeekmlError`` when the baseline is empty or too small for ``options.fpr``
    (``check_baseline_size``); warnings (small or infected baseline, a trained cut used) are
    logged and listed in ``summary.warnings``.
    """
    if baseline.num_rows == 0:
        raise ZeekmlError("the baseline holds no conn records to fit on")
    fit_idx, cal_idx = _split_fit_calibrate(baseline.num_rows, options.seed)
    warnings = [check_baseline_size(len(cal_idx), options.fpr)]
    detectors = build_detectors(options.detectors, options.seed, options.models_dir, options.device)
    reuse = scored is not None and rows is not None and raw is not None
    cal_scores: dict[str, np.ndarray] = {}
    fit_table = baseline.take(pa.array(fit_idx))
    if fit_extra is not None and fit_extra.num_rows:
        fit_table = pa.concat_tables([fit_table, fit_extra.select(fit_table.column_names)],
                                    promote_options="permissive")
    step = on_step or (lambda text: None)
    conn_seconds: dict[str, float] = {}
    for det in detectors:
        conn_seconds[det.name] = _fit_one(
            det, baseline, fit_table, fit_idx, cal_idx, fit_extra, scored if reuse else None,
            rows if reuse else None, raw, cal_scores, step)
    infection = baseline_infection(baseline, detectors)
    warnings.append(infection)
    cuts = {d.name: d.trained_cut for d in detectors
            if is_known_bad(d) and getattr(d, "trained_cut", None)}
    combined, used = calibrate_with_cuts(cal_scores, options.fpr, cuts, infected=infection is not None)
    for name, op in used.items():
        warnings.append(f"{name}: threshold is its trained cut, {cut_text(op)}, not the "
                        "baseline quantile: the baseline looks infected")
    warnings = [w for w in warnings if w]
    for w in warnings:
        log.warning("%s", w)
    if summary is not None:
        for name, cal in combined.calibrators.items():
            summary.thresholds[name] = cal.to_dict() | {"effective_fpr": cal.effective_fpr}
            if name in used:
                summary.thresholds[name]["trained_cut"] = True
        summary.effective_fpr = combined.effective_fpr
        summary.calibration = {"scheme": "combined", "fpr": options.fpr,
                               "effective_fpr": combined.effective_fpr,
                               "per_detector_quantile": combined.q,
                               "calibration_conns": combined.n_calibration,
                               "calibration_alert_rate": combined.cal_rate,
                               "min_fpr": combined.min_fpr}
        if used:
            summary.calibration["trained_cuts"] = used
        summary.warnings.extend(warnings)
    return FittedDetectors(detectors, combined.calibrators, options.fpr, combined.effective_fpr,
                           used, conn_seconds)


def _fit_one(det: Detector, baseline: pa.Table, fit_table: pa.Table, fit_idx: np.ndarray,
             cal_idx: np.ndarray, fit_extra: pa.Table | None, scored: pa.Table | None,
             rows: np.ndarray | None, raw: dict[str, np.ndarray] | None,
             cal_scores: dict[str, np.ndarray], step: Callable[[str], None]) -> float:
    """Fit ``det`` and put its calibration scores in ``cal_scores`` (``fit_calibrate``; with
    ``scored``, its scores of ``scored`` in ``raw``); returns its CPU seconds per conn scored
    (``FittedDetectors.conn_seconds``)."""
    split = getattr(det, "fit_split", None)
    if split is not None:
        # a learned detector: each baseline conn embedded once in the baseline's context
        # and, the baseline drawn from the input, not embedded again (``fit_split``)
        step(f"fitting {det.name} on {len(fit_idx):,} conns, calibrating on {len(cal_idx):,}")
        t0 = time.process_time()
        cal_scores[det.name], full = split(baseline, fit_idx, cal_idx, extra=fit_extra,
                                           scored=scored, rows=rows)
        seconds = time.process_time() - t0
        if full is not None:
            raw[det.name] = full
        return seconds / max(1, baseline.num_rows if full is None else len(full))
    step(f"fitting {det.name} on {fit_table.num_rows:,} conns")
    det.fit(fit_table)
    t0 = time.process_time()
    if scored is not None and _per_conn(det):
        step(f"scoring {det.name}: {scored.num_rows:,} conns")
        raw[det.name] = np.asarray(det.score(scored))
        cal_scores[det.name] = raw[det.name][np.asarray(rows)[cal_idx]]
        n = scored.num_rows
    else:
        step(f"calibrating {det.name} on {len(cal_idx):,} conns")
        cal_scores[det.name] = det.score(baseline.take(pa.array(cal_idx)))
        n = len(cal_idx)
    return (time.process_time() - t0) / max(1, n)


def cut_text(op: dict) -> str:
    """A trained cut in words: "P >= 0.5 (chosen at finetune: 0.12% of 5,000 benign conns reach
    it)"."""
    n = int(op.get("validation_benign") or 0)
    rate = op.get("validation_fpr")
    seen = (f"{100 * rate:.2g}% of {n:,} benign conns reach it" if rate is not None
            else "no benign conns to check it on")
    return f"P >= {float(op['cut']):.3g} (chosen at finetune: {seen})"


def threshold_text(fitted: FittedDetectors) -> str:
    """What 1.0 means in a notice: the threshold at the FPR the run delivers."""
    eff = fitted.effective_fpr
    if eff is None or eff <= fitted.fpr:
        return f"1.0 = threshold at fpr {fitted.fpr:g}"
    return f"1.0 = threshold at effective fpr {eff:.3g}, asked {fitted.fpr:g}"


def score_batch(table: pa.Table, fitted: FittedDetectors,
                raw: dict[str, np.ndarray] | None = None,
                on_step: Callable[[str], None] | None = None) -> VerdictBatch:
    """The verdicts of every conn of ``table``, in order, column by column. Each verdict depends
    only on its own row (detectors with a time context get theirs through
    ``zeekml.scoring.context``). ``raw`` holds detectors' scores of ``table`` already computed
    (``fit_calibrate``'s), which are not computed again; ``on_step`` as in ``fit_calibrate``."""
    detectors = fitted.detectors
    names = [det.name for det in detectors]
    notes = [det.note for det in detectors]
    if table.num_rows == 0:
        empty = np.zeros(0)
        return VerdictBatch(table, names, notes, {n: empty for n in names}, empty,
                            np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool))
    raw = raw or {}
    calibrated: dict[str, np.ndarray] = {}
    step = on_step or (lambda text: None)
    for det in detectors:
        if det.name not in raw:
            step(f"scoring {det.name}: {table.num_rows:,} conns")
        s = raw[det.name] if det.name in raw else det.score(table)
        calibrated[det.name] = fitted.calibrators[det.name].calibrate(s)
    combined, top = combine(calibrated)
    alert = combined >= 1.0
    alert_rows = np.flatnonzero(alert)
    step(f"explaining {len(alert_rows):,} alerts")
    sub: dict[int, str] = {}
    for d_i, det in enumerate(detectors):
        rows = alert_rows[top[alert_rows] == d_i]
        for r, text in zip(rows, det.explain(table, rows)):
            sub[int(r)] = text
    why = threshold_text(fitted)
    # a classifier on its trained cut says so: its 1.0 is not a baseline quantile
    whys = [f"1.0 = trained cut {cut_text(fitted.trained_cuts[n])}, baseline looks infected"
            if n in fitted.trained_cuts else why for n in names]
    msg = {r: f"{names[top[r]]} anomaly score {combined[r]:.3f} ({whys[top[r]]})"
           for r in alert_rows.tolist()}
    return VerdictBatch(table, names, notes, calibrated, combined, top, alert, msg, sub)


def score_fitted(table: pa.Table, fitted: FittedDetectors) -> list[Verdict]:
    """One verdict per conn of ``table``, in order (``score_batch`` as ``Verdict`` objects)."""
    return score_batch(table, fitted).verdicts()
