"""What ``zeekml score`` runs: read the logs, fit and calibrate on a baseline, score, write.

source -> parse -> flows -> features -> detectors -> calibration -> verdicts -> sinks, on one
machine chunk by chunk (``zeekml.pipeline.chunked``) or (``options.dask``) on a Dask cluster
(``zeekml.pipeline.dask``).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zeekml._core.errors import InputNotFound, OutputError, UnreadableInput, ZeekmlError
from zeekml._core.preload import start_imports
from zeekml.flows.select import feedback_rows, ts_sort_key
from zeekml.flows.table import conn_table
from zeekml.parse import Quarantine
from zeekml.pipeline.chunked import (TriageBaseline, TriageRows, read_conn_batches, score_spilled,
                                     spill_inputs)
from zeekml.pipeline.fitted import FittedDetectors, fit_calibrate, score_batch
from zeekml.pipeline.options import ScoreOptions, ScoreSummary
from zeekml.scoring.allowlist import Allowlist, suppress
from zeekml.scoring.calibrate import fpr_text
from zeekml.scoring.evidence import SuricataAlerts, attach_suricata_alerts
from zeekml.scoring.incidents import incidents_from_batch
from zeekml.scoring.verdict import VerdictBatch
from zeekml.sinks.run_outputs import ScoreOutputs
from zeekml.sinks.triage import (BASELINE_FILE, INCIDENT_NOTICE_FILE, INCIDENTS_FILE,
                                 mark_suppressed, write_baseline_info, write_incident_notices,
                                 write_incidents)
from zeekml.sinks.verdicts import RenderedVerdicts, render_verdicts
from zeekml.sources import CHECKPOINT_FILE
from zeekml.sources.archive import expand_inputs

__all__ = ["ScoreOptions", "ScoreSummary", "baseline_rows", "benign_feedback_uids",
           "feedback_rows", "load_conns", "score_paths", "score_table"]

log = logging.getLogger(__name__)


ProgressFn = Callable[[str, int], None]


class NoConnInput(ZeekmlError):
    """Nothing to score: no input holds conn records. Exit 2, "missing input" in the README's
    list: the input missing is the conn log (a dns.log alone, an empty directory)."""

    exit_code = 2


def refuse_watch_output(out_dir: str) -> None:
    """Refuse (``OutputError``, exit 6) an ``out_dir`` that holds ``zeekml watch``'s outputs: a
    score run would replace the verdicts watch wrote exactly once, and a later watch would add
    its own to this run's (two runs' verdicts in one file, uids twice)."""
    for name in (CHECKPOINT_FILE, CHECKPOINT_FILE + ".prev"):
        if os.path.lexists(os.path.join(out_dir, name)):
            raise OutputError(f"holds the outputs of zeekml watch ({name}): scoring into it would "
                              "replace the verdicts watch wrote; give another --out", out_dir)


def nothing_to_score(summary: ScoreSummary, quarantine: Quarantine) -> None:
    """Raise the error of an input read without a conn record to score, if it is one.

    - no file read and no record kept: every file failed, and the run exits with the code
      their errors share (``ScoreSummary.failed_exit_code``: 3 unknown format, 4 unreadable);
      a file read partly (a damaged archive's records before the damage) is scored, and the
      run exits 7 for the file that failed;
    - files read, no conn record in them: ``NoConnInput`` (exit 2), naming what they held
      instead (another log's records, lines quarantined, or nothing: empty or a header alone).
    """
    if summary.conn_records:
        return
    if summary.files_failed and summary.records_read == 0:
        err = ZeekmlError("no input file could be read: " +
                          "; ".join(f"{p}: {m}" for p, m in summary.files_failed))
        err.exit_code = summary.failed_exit_code()
        raise err
    if summary.other_records:
        raise NoConnInput("no conn records in any input (Zeek conn.log or "
                          "Suricata eve.json flows): nothing to score")
    held = (f"{quarantine.count:,} malformed lines, quarantined" if quarantine.count else
            "no records: empty, or a header alone")
    raise NoConnInput(f"no conn records in any input ({held}): nothing to score")


def detector_imports(models_dir: str | None) -> list[str]:
    """The modules fitting the detectors of ``--models models_dir`` will import (None: the
    IsolationForest alone), for ``start_imports``: scikit-learn; with learned models torch and
    the model code of each detector's kind (``zeekml.nn.<kind>``; none of them imports PyTorch
    Geometric, which only training needs). A directory that cannot be read gives torch alone:
    the detectors' own load reports what is wrong with it, where it always has."""
    mods = ["sklearn.ensemble"]
    if models_dir is None:
        return mods
    mods.append("torch")
    from zeekml.scoring.detectors.base import read_config
    from zeekml.scoring.registry import default_models_dir, model_dirs

    try:
        root = models_dir or default_models_dir()
        dirs = model_dirs(root)
        kinds = {read_config(d).get("kind") for d in dirs
                 if dirs == [root] or read_config(d).get("detector") is True}
    except (ZeekmlError, OSError, ValueError):
        return mods
    for kind in sorted(k for k in kinds if isinstance(k, str) and k.isidentifier()):
        name = f"zeekml.nn.{kind}"
        if importlib.util.find_spec(name) is not None:
            mods.append(name)
    return mods


def load_conns(paths: list[str], quarantine: Quarantine, summary: ScoreSummary,
               on_bytes: ProgressFn | None = None) -> pa.Table:
    """Read every file, keep conn records; per-file failures are recorded and the rest goes on."""
    return conn_table(list(read_conn_batches(paths, quarantine, summary, on_bytes)))


def baseline_rows(table: pa.Table, options: ScoreOptions | float) -> np.ndarray:
    """Indices of the baseline conns of ``table`` (``ScoreOptions.baseline_rows``: the period
    asked, else the earliest fraction by ts; unset ts sorts last). A float is a fraction."""
    if not isinstance(options, ScoreOptions):
        options = ScoreOptions(baseline_fraction=float(options))
    return options.baseline_rows(ts_sort_key(table))


def benign_feedback_uids(path: str | os.PathLike) -> set[str]:
    """The uids of the conns that ``zeekml feedback`` labeled benign in ``path`` (its
    ``feedback.jsonl``: one record per line, ``label`` and the ``conns`` it covers).

    Conns are known by their Zeek uid: a verdict id is derived from the uid, the ts and the
    detector that ranked the conn highest, which a recalibration may change. Records of other
    labels are skipped. A missing file, a line that is not a JSON object or a benign record
    without a ``conns`` list is a ``ZeekmlError`` naming the file and line."""
    path = os.fspath(path)
    uids: set[str] = set()
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise InputNotFound("feedback file not found", path) from None
    except OSError as e:
        raise UnreadableInput(f"cannot read feedback file: {e.strerror}", path) from None
    with f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                rec = None
            if not isinstance(rec, dict):
                raise UnreadableInput("not a feedback record (a JSON object per line, as "
                                      "`zeekml feedback` writes)", path, line=n)
            if rec.get("label") != "benign":
                continue
            conns = rec.get("conns")
            if not isinstance(conns, list):
                raise UnreadableInput("benign record without a conns list", path, line=n)
            uids.update(c["uid"] for c in conns
                        if isinstance(c, dict) and isinstance(c.get("uid"), str) and c["uid"])
    return uids


def _feedback_extra(fb: np.ndarray, take: Callable[[np.ndarray], pa.Table],
                    baseline: pa.Table | None, rows: np.ndarray | None, benign: set[str],
                    options: ScoreOptions, summary: ScoreSummary) -> pa.Table:
    """The input's benign feedback conns (rows ``fb``; ``take(rows)`` reads input rows) that are
    not in the baseline yet: they join it on its fitting side (``fit_calibrate``). Those already
    in it (drawn from the input, or in a --baseline file by uid) stay where they are: they came
    with a random draw, so they keep the calibration an unbiased sample of normal traffic, which
    hand-picked alerts are not."""
    if rows is not None:
        new = np.setdiff1d(fb, rows)
    elif baseline is not None and "uid" in baseline.column_names and len(fb):
        have = pc.is_in(take(fb).column("uid"), value_set=baseline.column("uid").combine_chunks())
        new = fb[~pc.fill_null(have, False).to_numpy(zero_copy_only=False)]
    else:
        new = fb
    summary.feedback_baseline = len(new)
    log.info("%s: %d benign feedback conns of the input join the baseline, %d were in it "
             "already (of %d uids labeled benign)", options.feedback, len(new), len(fb) - len(new),
             len(benign))
    return take(np.asarray(new, dtype=np.int64))


def score_table(table: pa.Table, baseline: pa.Table, options: ScoreOptions,
                summary: ScoreSummary, rows: np.ndarray | None = None,
                fit_extra: pa.Table | None = None,
                on_step: Callable[[str], None] | None = None) -> VerdictBatch:
    """Fit and calibrate on ``baseline``, score ``table``: its verdicts, one per conn, in order.

    ``rows``: the baseline is ``table.take(rows)`` (drawn from the input), so the conns that
    calibration scores are not scored again (``fit_calibrate``). ``fit_extra``: benign feedback
    conns, fitted on but not calibrated on (``fit_calibrate``). ``on_step``: told each step,
    for a progress display."""
    if table.num_rows == 0:
        return score_batch(table, FittedDetectors([], {}, options.fpr))
    raw: dict[str, np.ndarray] = {}
    fitted = fit_calibrate(baseline, options, summary, scored=table if rows is not None else None,
                           rows=rows, raw=raw, fit_extra=fit_extra, on_step=on_step)
    return score_batch(table, fitted, raw, on_step=on_step)


def score_paths(paths: list[str], out_dir: str, options: ScoreOptions | None = None,
                progress: bool = False) -> ScoreSummary:
    """Score every conn record under ``paths``; write verdicts, notices and quarantine to ``out_dir``.

    Outputs: ``verdicts.jsonl``, ``zeekml_notice.log``, ``quarantine.jsonl``, ``summary.json``
    (and the Zeek feedback file when ``options.zeek_feedback`` is set), and the triage outputs
    ``incidents.jsonl``, ``zeekml_incident.log`` and ``baseline.json`` (``zeekml.sinks.triage``).
    In one process the input is scored in chunks of ``options.rows_per_chunk()`` conns, so memory
    depends on the baseline and the chunk, not the input (``zeekml.pipeline.chunked``); with
    ``options.dask`` the work runs on a Dask cluster (``zeekml.pipeline.dask``). The outputs are
    the same either way.
    """
    options = options or ScoreOptions()
    allowlist = Allowlist.load(options.allowlist) if options.allowlist else None
    benign = benign_feedback_uids(options.feedback) if options.feedback else None
    if options.baseline and options.baseline_period() is not None:
        raise ZeekmlError("give the baseline as logs (--baseline) or as a period of the input "
                          "(--baseline-until/--baseline-range), not both")
    t0 = time.perf_counter()
    files = expand_inputs(paths)
    if not files:
        raise NoConnInput("no conn or eve logs found in " + ", ".join(map(str, paths)))
    baseline_files = expand_inputs(options.baseline) if options.baseline else []
    refuse_watch_output(out_dir)
    outputs = ScoreOutputs(out_dir, options.zeek_feedback, conn_notices=options.conn_notices)
    if not options.dask:
        # the detectors' libraries load while the input is read (waited for in score_spilled);
        # --dask reads on its workers and may fork them, which no importing thread may see
        start_imports(detector_imports(options.models_dir))
    summary = ScoreSummary()
    quarantine = Quarantine(sink=outputs.quarantine)
    triage = TriageRows()
    from zeekml._core.progress import run_progress
    try:
        with run_progress(files + baseline_files, enabled=progress and not options.dask) as bar:
            baseline = None
            if baseline_files:
                baseline = load_conns(baseline_files, quarantine, ScoreSummary(), bar.advance)
            if options.dask:
                from zeekml.pipeline.dask import plan_tasks, score_tasks_dask

                def fit_extra(fb: np.ndarray, take: Callable[[np.ndarray], pa.Table],
                              base: pa.Table | None, rows: np.ndarray | None) -> pa.Table:
                    return _feedback_extra(fb, take, base, rows, benign, options, summary)

                kept = TriageBaseline.of(score_tasks_dask(
                    plan_tasks(files, options.split_bytes), options.dask, options, summary,
                    quarantine, baseline, outputs.write_rendered, triage.add,
                    with_alerts=outputs.wants_alerts, benign=benign,
                    fit_extra=fit_extra if benign is not None else None, allowlist=allowlist))
            else:
                kept = _score_chunked(files, baseline, options, summary, quarantine, outputs,
                                      allowlist, benign, triage, bar)
            bar.step("grouping alerts into incidents")
            summary.outputs.update(_write_triage(out_dir, files, baseline_files, kept, triage,
                                                 options, summary))
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


def _score_chunked(files: list[str], baseline: pa.Table | None, options: ScoreOptions,
                   summary: ScoreSummary, quarantine: Quarantine, outputs: ScoreOutputs,
                   allowlist: Allowlist | None, benign: set[str] | None, triage: TriageRows,
                   bar) -> TriageBaseline:
    """The single-process run (``zeekml.pipeline.chunked``): read once, fit, score and write
    chunk by chunk; returns what the triage outputs need of the baseline."""
    fb_parts: list[np.ndarray] = []

    def feedback_of(table: pa.Table, offset: int) -> None:
        fb_parts.append(feedback_rows(table, benign) + offset)

    suricata = SuricataAlerts()      # joined onto each chunk's conns as evidence (scoring.evidence)
    with spill_inputs(files, quarantine, summary, options.rows_per_chunk(), bar.advance,
                      feedback_of if benign is not None else None, suricata.add) as spill:
        nothing_to_score(summary, quarantine)

        def fit_extra(base: pa.Table | None, rows: np.ndarray | None) -> pa.Table:
            fb = np.concatenate(fb_parts) if fb_parts else np.zeros(0, dtype=np.int64)
            return _feedback_extra(fb, spill.take, base, rows, benign, options, summary)

        # a chunk's lines are rendered while its alerts are explained (score_spilled's
        # on_scored: they hold no explanation), the verdicts written once the alerts are
        pending: list[tuple[VerdictBatch, dict[int, str], RenderedVerdicts]] = []

        def render(batch: VerdictBatch) -> None:
            attach_suricata_alerts(batch, suricata)
            suppressed = suppress(batch, allowlist) if allowlist is not None else {}
            bar.step(f"writing {len(batch):,} verdicts")
            pending.append((batch, suppressed, render_verdicts(batch, alerts=False)))

        def write(batch: VerdictBatch) -> None:
            if not pending or pending[-1][0] is not batch:
                render(batch)
            _, suppressed, rendered = pending.pop()
            if outputs.wants_alerts:    # else counted by note (render_verdicts)
                rendered.alerts = batch.alerts()
            mark_suppressed(rendered.lines, suppressed)
            outputs.write_batch(rendered)
            triage.add_batch(batch)

        return score_spilled(spill, baseline, options, summary, write,
                             fit_extra=fit_extra if benign is not None else None,
                             on_step=bar.step, on_scored=render)


def _write_triage(out_dir: str, files: list[str], baseline_files: list[str],
                  baseline: TriageBaseline, triage: TriageRows,
                  options: ScoreOptions, summary: ScoreSummary) -> dict[str, str]:
    """incidents.jsonl, zeekml_incident.log and baseline.json of a scored run; their paths."""
    profile = baseline.profile
    incidents = incidents_from_batch(triage.alerts(), baseline.table, profile=profile,
                                     host_times=triage.host_times())
    rate = fpr_text(options.fpr, summary.effective_fpr)
    for inc in incidents:
        inc.alert_rate = rate
    source = (", ".join(baseline_files) if baseline_files else
              "the input's conns in the period asked (--baseline-until/--baseline-range)"
              if options.baseline_period() is not None else
              f"the earliest {options.baseline_fraction:.0%} of the input by ts")
    info = {"inputs": files, "source": source, "period": list(baseline.period),
            "conns": baseline.conns, "profile": profile.to_dict() if profile is not None else None}
    out = {"incidents": write_incidents(os.path.join(out_dir, INCIDENTS_FILE), incidents),
           "incident_notices": os.path.join(out_dir, INCIDENT_NOTICE_FILE),
           "baseline": write_baseline_info(os.path.join(out_dir, BASELINE_FILE), info)}
    write_incident_notices(out["incident_notices"], incidents)
    return out
