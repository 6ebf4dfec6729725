"""What ``zeekml score`` runs: read the logs, fit and calibrate on a baseline, score, write.

source -> parse -> flows -> features -> detectors -> calibration -> verdicts -> sinks, on one
machine or (``options.dask``) on a Dask cluster (``zeekml.pipeline.dask``).
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zeekml._core.errors import UnknownFormat, InputNotFound, UnreadableInput, ZeekmlError
from zeekml.flows.select import ts_sort_key
from zeekml.flows.table import conn_table, is_conn_batch
from zeekml.parse import Quarantine, read_log
from zeekml.pipeline.fitted import FittedDetectors, fit_calibrate, score_batch
from zeekml.pipeline.options import ScoreOptions, ScoreSummary
from zeekml.scoring.allowlist import Allowlist, suppress
from zeekml.scoring.explain import BaselineProfile
from zeekml.scoring.incidents import incidents_from_batch
from zeekml.scoring.verdict import VerdictBatch
from zeekml.sinks.run_outputs import ScoreOutputs
from zeekml.sinks.triage import (BASELINE_FILE, INCIDENT_NOTICE_FILE, INCIDENTS_FILE,
                                 mark_suppressed, write_baseline_info, write_incident_notices,
                                 write_incidents)
from zeekml.sinks.verdicts import render_verdicts
from zeekml.sources.archive import expand_inputs

__all__ = ["ScoreOptions", "ScoreSummary", "baseline_rows", "benign_feedback_uids",
           "feedback_rows", "load_conns", "score_paths", "score_table"]

log = logging.getLogger(__name__)


ProgressFn = Callable[[str, int], None]


class NoConnInput(ZeekmlError):
    """Nothing to score: no input holds conn records. Exit 2, "missing input" in the README's
    list: the input missing is the conn log (a dns.log alone, an empty directory)."""

    exit_code = 2


def load_conns(paths: list[str], quarantine: Quarantine, summary: ScoreSummary,
               on_bytes: ProgressFn | None = None) -> pa.Table:
    """Read every file, keep conn records; per-file failures are recorded and the rest goes on."""
    batches = []
    for path in paths:
        conns, others = 0, set()
        try:
            for b in read_log(path, quarantine):
                summary.records_read += b.num_rows
                if is_conn_batch(b):
                    batches.append(b)
                    summary.conn_records += b.num_rows
                    conns += b.num_rows
                else:
                    summary.other_records += b.num_rows
                    others.add(b.log_path or "?")
            summary.files += 1
            if others and not conns:
                # a user who names dns.log by mistake must not get "0 conns scored" silently
                log.warning("%s: no conn records (#path %s): nothing in it is scored", path,
                            ", ".join(sorted(others)))
        except ZeekmlError as e:
            if isinstance(e, UnknownFormat) and is_capture(path):
                e = UnknownFormat("looks like a capture: use zeekml replay", path)
            summary.files_failed.append((path, e.message))
            log.warning("%s", e)
        if on_bytes:
            on_bytes(path, os.path.getsize(path) if os.path.exists(path) else 0)
    return conn_table(batches)


# pcap (either byte order, micro- or nanosecond) and pcapng section header block
CAPTURE_MAGICS = (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1",
                  b"\xa1\xb2\x3c\x4d", b"\x0a\x0d\x0d\x0a")


def is_capture(path: str) -> bool:
    """Whether ``path`` starts with a pcap or pcapng magic number (``zeekml replay`` reads it)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) in CAPTURE_MAGICS
    except OSError:
        return False


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


def feedback_rows(table: pa.Table, uids: set[str]) -> np.ndarray:
    """Sorted indices of the conns of ``table`` whose uid is in ``uids``."""
    if not uids or table.num_rows == 0 or "uid" not in table.column_names:
        return np.zeros(0, dtype=np.int64)
    hit = pc.is_in(table.column("uid"), value_set=pa.array(sorted(uids), pa.string()))
    return np.flatnonzero(hit.to_numpy(zero_copy_only=False).astype(bool, copy=False))


def _feedback_extra(table: pa.Table, baseline: pa.Table | None, rows: np.ndarray | None,
                    benign: set[str], options: ScoreOptions, summary: ScoreSummary) -> pa.Table:
    """The input's benign feedback conns that are not in the baseline yet: they join it on its
    fitting side (``fit_calibrate``). Those already in it (drawn from the input, or in a
    --baseline file by uid) stay where they are: they came with a random draw, so they keep
    the calibration an unbiased sample of normal traffic, which hand-picked alerts are not."""
    fb = feedback_rows(table, benign)
    if rows is not None:
        new = np.setdiff1d(fb, rows)
    elif baseline is not None and "uid" in baseline.column_names and len(fb):
        have = pc.is_in(table.column("uid").take(pa.array(fb)),
                        value_set=baseline.column("uid").combine_chunks())
        new = fb[~pc.fill_null(have, False).to_numpy(zero_copy_only=False)]
    else:
        new = fb
    summary.feedback_baseline = len(new)
    log.info("%s: %d benign feedback conns of the input join the baseline, %d were in it "
             "already (of %d uids labeled benign)", options.feedback, len(new), len(fb) - len(new),
             len(benign))
    return table.take(pa.array(new, pa.int64()))


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
    With ``options.dask`` the work runs on a Dask cluster (``zeekml.pipeline.dask``) and the
    outputs are the same, without the triage outputs (``zeekml report`` computes the incidents
    from the verdicts then).
    """
    options = options or ScoreOptions()
    allowlist = Allowlist.load(options.allowlist) if options.allowlist else None
    if allowlist is not None and options.dask:
        raise ZeekmlError("--allowlist does not work with --dask yet: score without --dask")
    if options.feedback and options.dask:
        raise ZeekmlError("--feedback does not work with --dask yet: score without --dask")
    benign = benign_feedback_uids(options.feedback) if options.feedback else None
    if options.baseline and options.baseline_period() is not None:
        raise ZeekmlError("give the baseline as logs (--baseline) or as a period of the input "
                          "(--baseline-until/--baseline-range), not both")
    t0 = time.perf_counter()
    files = expand_inputs(paths)
    if not files:
        raise NoConnInput("no conn or eve logs found in the given paths")
    baseline_files = expand_inputs(options.baseline) if options.baseline else []
    outputs = ScoreOutputs(out_dir, options.zeek_feedback)
    summary = ScoreSummary()
    quarantine = Quarantine(sink=outputs.quarantine)
    from zeekml._core.progress import run_progress
    try:
        with run_progress(files + baseline_files, enabled=progress and not options.dask) as bar:
            baseline = None
            if baseline_files:
                baseline = load_conns(baseline_files, quarantine, ScoreSummary(), bar.advance)
            if options.dask:
                from zeekml.pipeline.dask import plan_tasks, score_tasks_dask
                score_tasks_dask(plan_tasks(files, options.split_bytes), options.dask, options,
                                 summary, quarantine, baseline, outputs.write_rendered)
            else:
                table = load_conns(files, quarantine, summary, bar.advance)
                if summary.files == 0:
                    raise ZeekmlError("no input file could be read: " +
                                      "; ".join(f"{p}: {m}" for p, m in summary.files_failed))
                if summary.conn_records == 0 and summary.other_records:
                    raise NoConnInput("no conn records in any input (Zeek conn.log or "
                                      "Suricata eve.json flows): nothing to score")
                rows = None
                if baseline is None:
                    rows = baseline_rows(table, options) if table.num_rows else None
                fit_extra = None
                if benign is not None:
                    fit_extra = _feedback_extra(table, baseline, rows, benign, options, summary)
                if baseline is None:
                    baseline = table.take(pa.array(rows)) if rows is not None else table
                summary.baseline_records = baseline.num_rows + (
                    fit_extra.num_rows if fit_extra is not None else 0)
                batch = score_table(table, baseline, options, summary, rows, fit_extra,
                                    on_step=bar.step)
                suppressed = suppress(batch, allowlist) if allowlist is not None else {}
                bar.step(f"writing {len(batch):,} verdicts")
                rendered = render_verdicts(batch)
                mark_suppressed(rendered.lines, suppressed)
                outputs.write_batch(rendered)
                bar.step("grouping alerts into incidents")
                summary.outputs.update(_write_triage(out_dir, files, baseline_files, baseline, batch,
                                                     options))
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


def _write_triage(out_dir: str, files: list[str], baseline_files: list[str], baseline: pa.Table,
                  batch: VerdictBatch, options: ScoreOptions) -> dict[str, str]:
    """incidents.jsonl, zeekml_incident.log and baseline.json of a scored run; their paths."""
    profile = BaselineProfile().fit(baseline) if baseline.num_rows else None
    incidents = incidents_from_batch(batch, baseline, profile=profile)
    ts = pc.min_max(baseline.column("ts")).as_py() if baseline.num_rows else {}
    source = (", ".join(baseline_files) if baseline_files else
              "the input's conns in the period asked (--baseline-until/--baseline-range)"
              if options.baseline_period() is not None else
              f"the earliest {options.baseline_fraction:.0%} of the input by ts")
    info = {"inputs": files, "source": source,
            "period": [ts.get("min"), ts.get("max")], "conns": baseline.num_rows,
            "profile": profile.to_dict() if profile is not None else None}
    out = {"incidents": write_incidents(os.path.join(out_dir, INCIDENTS_FILE), incidents),
           "incident_notices": os.path.join(out_dir, INCIDENT_NOTICE_FILE),
           "baseline": write_baseline_info(os.path.join(out_dir, BASELINE_FILE), info)}
    write_incident_notices(out["incident_notices"], incidents)
    return out
