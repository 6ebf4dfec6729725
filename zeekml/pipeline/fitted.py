"""Detectors fitted on a baseline with calibrated thresholds, and scoring with them.

``zeekml score`` fits once per run, ``--dask`` fits once on the driver and sends the result to
the workers, ``zeekml watch`` fits once at start: all three score with ``score_fitted``, so a
conn gets the same verdict everywhere.
"""
from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from zeekml._core.errors import ZeekmlError
from zeekml.pipeline import side_by_side
from zeekml.pipeline.options import SCORE_BASELINE_OPTIONS, ScoreOptions, ScoreSummary
from zeekml.scoring.calibrate import ThresholdCalibrator, calibrate_with_cuts, fpr_text
from zeekml.scoring.context import horizon
from zeekml.scoring.detector import Detector, IsolationForestDetector
from zeekml.scoring.ensemble import combine
from zeekml.scoring.registry import load_model_detectors
from zeekml.scoring.verdict import KNOWN_BAD_NOTES, Verdict, VerdictBatch

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


# The baseline-size rule. With m calibration conns one conn is a share of 1/m, so a threshold
# at the 1 - fpr quantile is resolved only when m * fpr >= 1; below that every detector's
# threshold is its largest calibration score and the run alerts at about 1/m, whatever --fpr
# says. A baseline that cannot resolve even REFUSE_FACTOR times the asked rate is refused (a
# 7-conn log would alert on every conn); one with fewer than WARN_BEYOND conns expected beyond
# the threshold runs with a warning (the threshold rests on a handful of conns, and the
# effective FPR in summary.json and in each notice says what it delivers).
REFUSE_FACTOR = 10.0
WARN_BEYOND = 10.0


def check_baseline_size(n_calibration: int, fpr: float, how: str = SCORE_BASELINE_OPTIONS) -> str | None:
    """Refuse (``ZeekmlError``) a baseline whose ``n_calibration`` conns cannot resolve
    ``REFUSE_FACTOR * fpr``; return a warning when they resolve ``fpr`` with fewer than
    ``WARN_BEYOND`` conns beyond the threshold; else None. Every baseline conn calibrates
    (``calibration_scores``), so the baseline a message asks for is that many conns; ``how``
    says how the running command takes another (``ScoreOptions.baseline_options``)."""
    m = n_calibration
    min_fpr = 1.0 / max(m, 1)
    if min_fpr > REFUSE_FACTOR * fpr:
        raise ZeekmlError(
            f"the baseline is too small for --fpr {fpr:g}: its {m:,} calibration conns support "
            f"an FPR of {min_fpr:.2g} at the least; give a baseline of at least "
            f"{int(np.ceil(1 / fpr)):,} conns ({how}) or raise --fpr to {min_fpr:.2g}")
    if m * fpr < WARN_BEYOND:
        return (f"baseline small for --fpr {fpr:g}: {m:,} calibration conns, {m * fpr:.2g} "
                f"expected beyond the threshold (the smallest FPR they support is {min_fpr:.2g}); "
                f"{int(np.ceil(WARN_BEYOND / fpr)):,} baseline conns give a stable threshold")
    return None


# "Your baseline looks infected": known-bad classifiers (a finetuned model's probability of the
# malicious classes; see ``is_known_bad``) that flag at least
# INFECTED_SHARE of the baseline, and at least INFECTED_MIN conns, raise a warning. A clean
# baseline is what every anomaly detector's "normal" rests on.
INFECTED_SHARE = 0.01
INFECTED_MIN = 3
INFECTED_HOSTS = 5


def is_known_bad(det: Detector) -> bool:
    """A detector that tells known-bad traffic (a classifier), not anomalies: ``kind`` is
    ``"classifier"``, or it raises a supervised head's note (``KNOWN_BAD_NOTES``)."""
    return getattr(det, "kind", None) == "classifier" or getattr(det, "note", None) in KNOWN_BAD_NOTES


# The baseline check of a run whose detectors hold no known-bad classifier: the shipped
# committee (``models/malicious-committee``, off as a detector) judges BASELINE_CHECK_CONNS
# baseline conns drawn at random (all of a smaller baseline), the rest of the baseline their
# context. On the labeled captures it flags 74-89% of the four infected default baselines, and
# 0-0.6% of the clean ones but CTU-34-1's 4.0% (conns labeled Benign to the malware's own server)
# (docs/results/detection.md, "Baseline check"); a sample resolves the 1% rule with 10 conns, at a
# few tenths of a second.
BASELINE_JUDGE = "malicious-committee"
BASELINE_CHECK_CONNS = 1000
BASELINE_CHECK = "\0baseline-check"     # its task beside the fits (no detector name has a NUL)


def baseline_judge(options: ScoreOptions, check: dict | None = None) -> Detector | None:
    """The known-bad classifier that checks a baseline when none of the run's detectors is
    one: the shipped committee, with the learned models on (``options.models_dir`` not None)
    and the shipped models holding it; None otherwise (``--no-models`` runs no model; models
    without the committee put why in ``check["skipped"]``, ``summary.json``'s
    ``calibration.baseline_check``)."""
    if options.models_dir is None:
        return None
    from zeekml.scoring.registry import classifier_detector, default_models_dir

    path = os.path.join(default_models_dir(), BASELINE_JUDGE)
    if not os.path.isfile(os.path.join(path, "config.json")):
        why = f"no baseline check: the shipped models ({os.path.dirname(path)}) hold no {BASELINE_JUDGE}"
        log.warning("%s", why)
        if check is not None:
            check["skipped"] = why
        return None
    return classifier_detector(path, options.device)


def judge_baseline(baseline: pa.Table, judge: Detector, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, flagged)``: the ``BASELINE_CHECK_CONNS`` baseline rows drawn with ``seed`` (all
    of a smaller baseline) and whether ``judge`` calls each bad (``flag_rows`` if it has it,
    else its score at its ``decision_threshold``, its trained cut or 0.5), the rest of the
    baseline their context. Needs nothing fitted: ``fit_calibrate`` runs it beside the fits."""
    n_base = baseline.num_rows
    rows = np.arange(n_base, dtype=np.int64)
    if n_base > BASELINE_CHECK_CONNS:
        rows = np.sort(np.random.default_rng(seed).choice(n_base, BASELINE_CHECK_CONNS, replace=False))
    flags = getattr(judge, "flag_rows", None)
    if flags is not None:
        return rows, np.asarray(flags(baseline, rows), dtype=bool)
    p = np.nan_to_num(np.asarray(judge.score_rows(baseline, rows), dtype=np.float64), nan=0.0)
    return rows, p >= float(getattr(judge, "decision_threshold", 0.5))


def baseline_infection(baseline: pa.Table, detectors: list[Detector], judge: Detector | None = None,
                       seed: int = 0, check: dict | None = None,
                       judged: tuple[np.ndarray, np.ndarray] | None = None,
                       how: str = SCORE_BASELINE_OPTIONS) -> str | None:
    """The warning when known-bad classifiers flag a large share of ``baseline`` (see
    ``INFECTED_SHARE``), naming the hosts with the most flagged conns; None otherwise.

    A classifier flags a conn when its score (probability of the malicious classes) reaches
    its ``decision_threshold`` attribute (its trained cut, else 0.5). The run's known-bad
    detectors judge every baseline conn; without one, ``judge`` (``baseline_judge``) judges
    ``BASELINE_CHECK_CONNS`` of them drawn with ``seed`` (``judge_baseline``; ``judged``: its
    result when already computed). ``check``, when given, receives what was judged (``judge``,
    ``conns``, ``flagged``) for ``summary.json``."""
    judges = [d for d in detectors if is_known_bad(d)]
    n_base = baseline.num_rows
    if n_base == 0 or not (judges or judge is not None):
        return None
    if judges:
        rows = np.arange(n_base, dtype=np.int64)
        flagged = np.zeros(n_base, dtype=bool)
        for det in judges:
            p = np.nan_to_num(np.asarray(det.score(baseline), dtype=np.float64), nan=0.0)
            flagged |= p >= float(getattr(det, "decision_threshold", 0.5))
    else:
        judges = [judge]
        rows, flagged = judged if judged is not None else judge_baseline(baseline, judge, seed)
    n = int(flagged.sum())
    if check is not None:
        check.update(judge=", ".join(d.name for d in judges), conns=len(rows), flagged=n)
    if n < INFECTED_MIN or n < INFECTED_SHARE * len(rows):
        return None
    hosts = pa.array(baseline.column("id.orig_h").to_pylist()).take(
        pa.array(rows[flagged])).value_counts().to_pylist()
    hosts.sort(key=lambda h: (-h["counts"], str(h["values"])))
    named = ", ".join(f"{h['values']} ({h['counts']:,})" for h in hosts[:INFECTED_HOSTS])
    more = f" and {len(hosts) - INFECTED_HOSTS} more" if len(hosts) > INFECTED_HOSTS else ""
    judged_text = (f"{n:,} of its {n_base:,} conns" if len(rows) == n_base
                   else f"{n:,} of {len(rows):,} of its {n_base:,} conns (drawn at random)")
    # a run without known-bad detectors learnt that traffic as normal; where no clean period
    # exists, the known-bad classifiers that judged it are the detectors to score with (with
    # them in the run, an infected baseline makes their thresholds their trained cuts)
    judge_dir = getattr(judge, "model_dir", None) if judge is not None and judges == [judge] else None
    instead = (f"; with no clean period, score with the known-bad classifiers that judged it: "
               f"--models {judge_dir}" if judge_dir else "")
    return (f"your baseline looks infected: {judged_text} flagged by "
            f"{', '.join(d.name for d in judges)}, of hosts {named}{more}; calibrate on a clean "
            f"period ({how}){instead}")


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
    """Fit each detector on the whole ``baseline`` and calibrate them together on it, each
    baseline conn scored out of sample (``calibration_scores``), so that the combined alert
    rate there is ``options.fpr`` (``calibrate_combined``).

    When the baseline is ``scored.take(rows)`` (drawn from the input), the detectors score
    ``scored`` in the same pass and leave those scores in ``raw`` for ``score_batch``
    (``calibration_scores``). ``fit_extra``: conns a person labeled benign (``zeekml
    feedback``), fitted on beside the baseline but never calibrated on: they were picked for
    being alerts, not drawn at random from normal traffic, so among the calibration conns they
    would bias the FPR estimate.

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
    warnings = [check_baseline_size(baseline.num_rows, options.fpr, options.baseline_options)]
    detectors = build_detectors(options.detectors, options.seed, options.models_dir, options.device)
    check: dict = {}
    judge = None if any(is_known_bad(d) for d in detectors) else baseline_judge(options, check)
    beside = {}
    if judge is not None:
        # the check needs nothing fitted: it runs beside the fits instead of after them, on a
        # core the fits leave idle (0.13-0.16 s of the 100k-conn log's run, bench/score_speed.py
        # --timeline)
        if on_step is not None:
            on_step(f"checking the baseline with {judge.name}")
        beside[BASELINE_CHECK] = functools.partial(judge_baseline, baseline, judge, options.seed)
    cal_scores, conn_seconds, done = calibration_scores(detectors, baseline, fit_extra, scored,
                                                        rows, raw, on_step, beside)
    unscored = [name for name, sc in cal_scores.items()
                if not np.isfinite(np.asarray(sc, dtype=np.float64)).any()]
    if unscored:
        # e.g. the IsolationForest on a few conns: every tree drew every baseline conn, so none
        # has an out-of-sample score to set a threshold with
        raise ZeekmlError(
            f"the baseline is too small to calibrate {', '.join(unscored)}: none of its "
            f"{baseline.num_rows:,} conns could be scored out of sample; give a larger baseline "
            f"({options.baseline_options})")
    infection = baseline_infection(baseline, detectors, judge, options.seed, check,
                                   done.get(BASELINE_CHECK), options.baseline_options)
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
        if check:
            summary.calibration["baseline_check"] = check | {"infected": infection is not None}
        summary.warnings.extend(warnings)
    return FittedDetectors(detectors, combined.calibrators, options.fpr, combined.effective_fpr,
                           used, conn_seconds)


def calibration_scores(detectors: list[Detector], baseline: pa.Table,
                       fit_extra: pa.Table | None = None, scored: pa.Table | None = None,
                       rows: np.ndarray | None = None, raw: dict[str, np.ndarray] | None = None,
                       on_step: Callable[[str], None] | None = None,
                       beside: dict[str, Callable[[], Any]] | None = None,
                       ) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, Any]]:
    """Fit every detector on every conn of ``baseline`` (and ``fit_extra``) and score each
    baseline conn as a conn the detector was not fitted on: ``(scores per detector name, [m]
    each; CPU seconds per conn scored per name, FittedDetectors.conn_seconds; the result of
    each call of ``beside``)``. ``beside``: other work that needs no detector fitted, by names
    no detector has: side by side with the fits, after them in order, when the detectors run
    side by side (``side_by_side.run``), else after the fits.

    Out of sample, because a conn scores lower on a model fitted on it, and thresholds set on
    such scores alert more than asked. Each detector says how: the learned ones compare a conn
    with the other baseline conns (``fit_split`` with every conn in both roles: the kNN leaves
    the conn out of its own neighbours), the IsolationForest scores a conn by the trees that did
    not draw it (``oob_scores``), and a detector that learns nothing from the baseline
    (``fits_baseline = False``: the known-bad classifiers) scores it as any conn. Fitting on the
    whole baseline and calibrating on all of it (earlier: fit on one half, calibrate on the
    other) gives the reference twice the conns and the thresholds twice the calibration conns
    (docs/results/detection.md).

    With ``scored`` and ``rows`` (``baseline = scored.take(rows)``) and ``raw``, each detector
    scores ``scored`` in the same pass, into ``raw``: a learned detector reuses its baseline
    conns' embeddings (``fit_split``), a per-conn one takes the baseline conns' plain scores
    from it."""
    reuse = scored is not None and rows is not None and raw is not None
    fit_table = baseline
    if fit_extra is not None and fit_extra.num_rows:
        fit_table = pa.concat_tables([baseline, fit_extra.select(baseline.column_names)],
                                    promote_options="permissive")
    step = on_step or (lambda text: None)
    found: dict[str, np.ndarray] = {}
    beside = beside or {}
    # planned by the detectors alone, so that their kernels' thread counts (and so their bits,
    # ``side_by_side``) do not depend on the work beside them
    how = side_by_side.plan(len(detectors))
    # a detector's own thread's CPU side by side (its kernels run there with one thread each),
    # the process's in turn (torch's other threads work for it)
    clock = time.thread_time if how.workers > 1 and how.kernel_threads == 1 else time.process_time

    def fit(det: Detector) -> Callable[[], Any]:
        return functools.partial(_fit_one, det, baseline, fit_table, fit_extra,
                                 scored if reuse else None, rows if reuse else None,
                                 raw, found, step, clock)

    # a known-bad classifier learns nothing from the baseline and only scores it: in parts,
    # side by side (``score_calls``), where its one call kept one thread busy while the other
    # idled (the committee on 300k conns: 13 s of the run's 43)
    parted = [det for det in detectors if how.workers > 1 and getattr(det, "score_parts", None) is not None
              and getattr(det, "fits_baseline", True) is False
              and not (reuse and _per_conn(det))]
    for det in parted:
        det.fit(fit_table)                 # nothing to fit (``fits_baseline``), as its contract says
        step(f"calibrating {det.name} on {baseline.num_rows:,} conns")
    part_calls, finish = score_calls(parted, baseline, how.workers, clock)
    # the costliest first (the last to start ends the run): the learned detectors' fits, then
    # the parts, then the rest
    learned = [det for det in detectors if getattr(det, "fit_split", None) is not None]
    rest = [det for det in detectors if det not in learned and det not in parted]
    calls = {det.name: fit(det) for det in learned} | part_calls | {det.name: fit(det) for det in rest}
    clash = sorted(set(beside) & set(calls))
    if clash:
        raise ValueError(f"work beside the fits named as a detector: {clash}")
    results = side_by_side.run(calls | beside, how)
    for name, (scores, seconds) in finish(results).items():
        found[name] = np.asarray(scores)
        results[name] = seconds / max(1, baseline.num_rows)
    cal_scores = {det.name: found[det.name] for det in detectors if det.name in found}
    return (cal_scores, {det.name: results[det.name] for det in detectors},
            {name: results[name] for name in beside})


# The name of part ``i`` of a detector's scoring, ``f"{name}{PART}{i}"`` (``score_calls``; no
# detector name has a NUL).
PART = "\0part "


def score_calls(detectors: list[Detector], table: pa.Table, workers: int,
                clock: Callable[[], float] | None = None,
                ) -> tuple[dict[str, Callable[[], Any]], Callable[[dict[str, Any]], dict[str, Any]]]:
    """``(calls, finish)``: calls that score ``table`` with each of ``detectors`` when
    ``workers`` threads run them side by side (``side_by_side.run``), and ``finish``, which
    turns the results of ``calls`` into each detector's scores by its name. With more than one
    worker a detector that scores in parts (``score_parts``: the known-bad classifiers, each
    head's rows in runs of whole inference batches, so the parts give ``score``'s bits) gives a
    call per part, first (the costliest work), so that one classifier no longer keeps one
    thread busy while the others idle; every other detector one ``score`` call. With ``clock``
    each detector's result is ``(scores, seconds by clock)``, its parts' seconds summed."""
    def timed(call: Callable[[], Any]) -> Callable[[], Any]:
        if clock is None:
            return call

        def run() -> tuple[Any, float]:
            t0 = clock()
            got = call()
            return got, clock() - t0
        return run

    first: dict[str, Callable[[], Any]] = {}
    rest: dict[str, Callable[[], Any]] = {}
    parted: dict[str, tuple[list[str], Callable[[list[Any]], np.ndarray]]] = {}
    for det in detectors:
        split = getattr(det, "score_parts", None) if workers > 1 else None
        parts = split(table, workers) if split is not None else None
        if parts is None or len(parts.calls) < 2:
            rest[det.name] = timed(functools.partial(det.score, table))
            continue
        names = [f"{det.name}{PART}{i}" for i in range(len(parts.calls))]
        first.update({name: timed(call) for name, call in zip(names, parts.calls)})
        parted[det.name] = (names, parts.combine)

    def finish(results: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for det in detectors:
            if det.name not in parted:
                out[det.name] = results[det.name]
                continue
            names, combine = parted[det.name]
            got = [results[name] for name in names]
            out[det.name] = (combine(got) if clock is None
                             else (combine([g for g, _ in got]), sum(t for _, t in got)))
        return out

    return first | rest, finish


def _fit_one(det: Detector, baseline: pa.Table, fit_table: pa.Table,
             fit_extra: pa.Table | None, scored: pa.Table | None, rows: np.ndarray | None,
             raw: dict[str, np.ndarray] | None, cal_scores: dict[str, np.ndarray],
             step: Callable[[str], None], clock: Callable[[], float] = time.process_time) -> float:
    """Fit ``det`` and put its out-of-sample scores of the baseline in ``cal_scores``
    (``calibration_scores``; with ``scored``, its scores of ``scored`` in ``raw``); returns its
    CPU seconds per conn scored (``FittedDetectors.conn_seconds``) by ``clock``. Touches no
    other detector's entries: detectors are fitted side by side (``pipeline.side_by_side``)."""
    n = baseline.num_rows
    step(f"fitting {det.name} on {fit_table.num_rows:,} conns, calibrating on {n:,}")
    split = getattr(det, "fit_split", None)
    if split is not None:
        # a learned detector: each baseline conn embedded once in the baseline's context and,
        # the baseline drawn from the input, not embedded again (``fit_split``)
        t0 = clock()
        every = np.arange(n, dtype=np.int64)        # every baseline conn fits and calibrates
        cal_scores[det.name], full = split(baseline, every, every, extra=fit_extra,
                                           scored=scored, rows=rows)
        seconds = clock() - t0
        if full is not None:
            raw[det.name] = full
        return seconds / max(1, n if full is None else len(full))
    t0 = clock()
    det.fit(fit_table)
    fit_seconds = clock() - t0
    fits = getattr(det, "fits_baseline", True)
    if fits:
        oob = getattr(det, "oob_scores", None)
        if oob is None:
            raise ZeekmlError(f"detector {det.name} has no out-of-sample scores of its baseline "
                              "to calibrate on (fit_split or oob_scores)")
        cal_scores[det.name] = np.asarray(oob[:n], dtype=np.float64)
    t0 = clock()
    if scored is not None and _per_conn(det):
        step(f"scoring {det.name}: {scored.num_rows:,} conns")
        raw[det.name] = np.asarray(det.score(scored))
        if not fits:
            cal_scores[det.name] = raw[det.name][np.asarray(rows)]
        m = scored.num_rows
    elif not fits:
        step(f"calibrating {det.name} on {n:,} conns")
        cal_scores[det.name] = det.score(baseline)
        m = n
    else:
        # scored apart later: the fit, which scored every fitted conn out of bag, is the cost
        return fit_seconds / max(1, fit_table.num_rows)
    return (clock() - t0) / max(1, m)


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
    return f"1.0 = threshold at {fpr_text(fitted.fpr, fitted.effective_fpr)}"


def score_batch(table: pa.Table, fitted: FittedDetectors,
                raw: dict[str, np.ndarray] | None = None,
                on_step: Callable[[str], None] | None = None,
                how: side_by_side.SideBySide | side_by_side.Runner | None = None,
                while_explaining: Callable[[VerdictBatch], object] | None = None) -> VerdictBatch:
    """The verdicts of every conn of ``table``, in order, column by column. Each verdict depends
    only on its own row (detectors with a time context get theirs through
    ``zeekml.scoring.context``). ``raw`` holds detectors' scores of ``table`` already computed
    (``fit_calibrate``'s), which are not computed again; ``on_step`` as in ``fit_calibrate``;
    ``how``: the detectors that score (and explain their alerts) run side by side so
    (``side_by_side.plan``; default in turn, as ``watch`` and ``--dask`` tasks score, which run
    side by side in their own way), or through a chunk's ``side_by_side.Lane``.

    ``while_explaining(batch)``: called with the batch scored but its alerts not yet explained
    (no ``msg``/``sub``), in this thread while the detectors explain them side by side (the
    verdict lines need only the scores: ``zeekml score`` renders them then, on a core the
    explanations leave idle). It may take rows out of alerting (``batch.alert``, an
    allowlist): those get no explanation."""
    detectors = fitted.detectors
    names = [det.name for det in detectors]
    notes = [det.note for det in detectors]
    if table.num_rows == 0:
        empty = np.zeros(0)
        return VerdictBatch(table, names, notes, {n: empty for n in names}, empty,
                            np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool))
    raw = dict(raw or {})
    step = on_step or (lambda text: None)
    runs = how or side_by_side.IN_TURN
    missing = [det for det in detectors if det.name not in raw]
    if missing:
        step(f"scoring {', '.join(det.name for det in missing)}: {table.num_rows:,} conns")
        if isinstance(runs, side_by_side.SideBySide):
            # one table's run: a classifier's parts side by side (``score_calls``); a chunk's
            # lane scores its detector's calls of other chunks beside it instead
            calls, finish = score_calls(missing, table, runs.workers)
            raw.update(finish(runs.run(calls)))
        else:
            raw.update(runs.run({det.name: functools.partial(det.score, table) for det in missing}))
    calibrated = {det.name: fitted.calibrators[det.name].calibrate(raw[det.name]) for det in detectors}
    combined, top = combine(calibrated)
    alert = combined >= 1.0
    alert_rows = np.flatnonzero(alert)
    step(f"explaining {len(alert_rows):,} alerts")
    batch = VerdictBatch(table, names, notes, calibrated, combined, top, alert)
    # each alert explained by the detector that raised it; the detectors side by side as they
    # scored (``how``): a learned detector's explanation runs its model again on its alerts
    # (0.6 s of the 100k-conn log's run of bench/score_speed.py, most of it the MoE's)
    mine = {det.name: alert_rows[top[alert_rows] == d_i] for d_i, det in enumerate(detectors)}
    texts = runs.run({det.name: functools.partial(det.explain, table, mine[det.name])
                      for det in detectors if len(mine[det.name])},
                     meanwhile=None if while_explaining is None
                     else functools.partial(while_explaining, batch))
    still = batch.alert             # less the rows ``while_explaining`` took out, if any
    for name, got in texts.items():
        for r, text in zip(mine[name], got):
            if still[r]:
                batch.sub[int(r)] = text
    why = threshold_text(fitted)
    # a classifier on its trained cut says so: its 1.0 is not a baseline quantile
    whys = [f"1.0 = trained cut {cut_text(fitted.trained_cuts[n])}, baseline looks infected"
            if n in fitted.trained_cuts else why for n in names]
    batch.msg.update({r: f"{names[top[r]]} anomaly score {combined[r]:.3f} ({whys[top[r]]})"
                      for r in alert_rows.tolist() if still[r]})
    return batch


def score_fitted(table: pa.Table, fitted: FittedDetectors) -> list[Verdict]:
    """One verdict per conn of ``table``, in order (``score_batch`` as ``Verdict`` objects)."""
    return score_batch(table, fitted).verdicts()
