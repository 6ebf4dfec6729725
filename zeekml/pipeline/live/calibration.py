"""Calibration of ``zeekml watch``: the baseline it fits on, and the record of it.

With ``--baseline LOG...`` the detectors are fitted on those logs exactly as ``zeekml score
--baseline LOG...`` does. Without, the first ``baseline_records`` conns of the directory are saved
to ``OUTDIR/calibration-baseline.log`` (Zeek TSV) and fitted on; either way
``OUTDIR/calibration.json`` records the sources (with sha256) and thresholds, a restart refits on
the same data (fitting is seeded, so it gets the same thresholds), and ``zeekml score LOGS
--baseline OUTDIR/calibration-baseline.log`` reproduces the live verdicts.

With ``--feedback FILE`` (a ``zeekml feedback`` file), a new calibration looks for the conns it
labels benign (by uid) in the directory's conn logs, saves those not in the baseline to
``OUTDIR/calibration-feedback.log`` and fits on them beside the baseline's fitting half, never
calibrating on them (``fit_calibrate``'s ``fit_extra``, as ``score --feedback``); a restart
refits on that saved file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from typing import Callable

import numpy as np
import pyarrow as pa

from zeekml._core.atomic import atomic_write
from zeekml._core.errors import ZeekmlError
from zeekml._core.zeek_format import format_header, format_record
from zeekml.flows.select import feedback_rows, rows_in_range, ts_sort_key
from zeekml.flows.table import CONN_SCHEMA, conn_table, is_conn_batch
from zeekml.parse.reject import Quarantine
from zeekml.parse.zeek_types import KNOWN_FIELD_TYPES
from zeekml.pipeline.batch import benign_feedback_uids, load_conns
from zeekml.pipeline.fitted import FittedDetectors, fit_calibrate
from zeekml.pipeline.live.options import (BASELINE_LOG, CALIBRATION, FEEDBACK_LOG, Stopped,
                                          WatchOptions, WatchStats)
from zeekml.pipeline.options import ScoreSummary
from zeekml.sources.archive import expand_inputs
from zeekml.sources.checkpoint import Checkpoint
from zeekml.sources.tail import DirectoryFollower

log = logging.getLogger(__name__)

WaitFn = Callable[[DirectoryFollower, int], None]
"""Called with the follower and the conns collected so far while waiting for more."""

BASELINE_FIELDS = [(f.name, KNOWN_FIELD_TYPES.get(f.name, "string")) for f in CONN_SCHEMA]


def sha256_file(path: str) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_baseline_log(table: pa.Table, path: str) -> None:
    """Conns as a Zeek TSV conn log (``#path conn``), written whole and renamed into place."""
    names = [n for n, _ in BASELINE_FIELDS]
    types = [t for _, t in BASELINE_FIELDS]
    cols = {n: table.column(n).to_pylist() for n in names}
    lines = [format_header("conn", names, types)]
    for i in range(table.num_rows):
        lines.append(format_record([cols[n][i] for n in names], types))
    atomic_write(path, b"".join(lines))


def calibrate(root: str, out_dir: str, opts: WatchOptions, cp: Checkpoint, stats: WatchStats,
              stop: threading.Event, on_wait: WaitFn,
              on_baseline: Callable[[pa.Table], None] | None = None) -> FittedDetectors:
    """Fit and calibrate the detectors (see the module docstring); ``stats.calibration`` says
    on what. ``on_baseline`` is handed the baseline's conns (incidents describe against them)."""
    so = opts.score
    cal_path = os.path.join(out_dir, CALIBRATION)
    saved = None
    if os.path.exists(cal_path) and not opts.recalibrate:
        try:
            with open(cal_path) as f:
                saved = json.load(f)
        except (OSError, ValueError) as e:
            raise ZeekmlError(f"unreadable calibration ({e}); use --recalibrate", cal_path) from e
    # the detectors are known once fitted (``--models`` may hold several): the saved list is
    # checked against them after fitting, and left out of this comparison, so that the files
    # written before it was recorded right (``["iforest"]`` whatever ran) still match
    want = {"fpr": so.fpr, "seed": so.seed}
    if so.baseline_period() is not None:   # only then, so older calibration.json files still match
        want["baseline_period"] = list(so.baseline_period())
    if so.feedback:                         # likewise
        want["feedback"] = os.path.abspath(so.feedback)
    if so.baseline and so.baseline_period() is not None:
        raise ZeekmlError("give the baseline as logs (--baseline) or as a period "
                          "(--baseline-until/--baseline-range), not both")
    saved_options = {k: v for k, v in (saved or {}).get("options", {}).items()
                     if k != "detectors"}
    if saved is not None and saved_options != want:
        raise ZeekmlError(f"calibrated with other options {saved.get('options')}; use the "
                          "same --fpr/--seed, a new --out, or --recalibrate", cal_path)

    if so.baseline:
        files = expand_inputs(so.baseline)
        if not files:
            raise ZeekmlError("no conn logs in --baseline")
        sources = [{"path": os.path.abspath(p), "sha256": sha256_file(p)} for p in files]
        if saved is not None and saved.get("sources") != sources:
            raise ZeekmlError("the output directory was calibrated on another baseline; "
                              "use the same --baseline, a new --out, or --recalibrate",
                              cal_path)
    elif saved is not None:
        sources = saved["sources"]
        files = [s["path"] for s in sources]
        for s in sources:
            if not os.path.exists(s["path"]) or sha256_file(s["path"]) != s["sha256"]:
                raise ZeekmlError("baseline changed or missing since calibration; "
                                  "use --recalibrate", s["path"])
    else:
        path = os.path.join(out_dir, BASELINE_LOG)
        table = _collect_baseline(root, out_dir, opts, cp, stats, stop, on_wait)
        write_baseline_log(table, path)
        files = [path]
        sources = [{"path": os.path.abspath(path), "sha256": sha256_file(path)}]

    base_summary = ScoreSummary()
    baseline = load_conns(files, Quarantine(), base_summary)
    extra, fb_source = _feedback_conns(root, out_dir, so.feedback, baseline, saved)
    summary = ScoreSummary()
    fitted = fit_calibrate(baseline, so, summary, fit_extra=extra)
    if on_baseline is not None:
        on_baseline(baseline)
    names = [d.name for d in fitted.detectors]
    if saved is not None and saved.get("models", list(so.detectors)) != names:
        raise ZeekmlError(f"calibrated with the detectors {saved.get('models')}, now "
                          f"{names}; use the same --models/--no-models, a new --out, or "
                          "--recalibrate", cal_path)
    doc = {"options": {**want, "detectors": names}, "models": names, "sources": sources,
           "records": baseline.num_rows, "thresholds": summary.thresholds}
    if fb_source is not None:
        doc["feedback"] = fb_source
    if saved is not None and saved.get("thresholds") != json.loads(json.dumps(
            summary.thresholds)):
        log.warning("refitting gave other thresholds than the saved calibration "
                    "(%s vs %s)", summary.thresholds, saved.get("thresholds"))
    if saved is None or saved != doc:
        atomic_write(cal_path, (json.dumps(doc, indent=2) + "\n").encode())
    stats.calibration = {"records": baseline.num_rows, "sources": len(sources),
                         "thresholds": summary.thresholds, "effective_fpr": summary.effective_fpr,
                         "warnings": summary.warnings}
    if fb_source is not None:
        stats.calibration["feedback_records"] = fb_source["records"]
    log.info("calibrated on %d baseline conns", baseline.num_rows)
    return fitted

def _feedback_conns(root: str, out_dir: str, feedback: str | None, baseline: pa.Table,
                    saved: dict | None) -> tuple[pa.Table | None, dict | None]:
    """The benign feedback conns that join the baseline, and their record in calibration.json.

    A new calibration finds them in the directory's conn logs (by uid; those already in the
    baseline stay there only) and saves them to ``calibration-feedback.log``; a restart takes
    that file back after checking its sha256."""
    if not feedback:
        return None, None
    path = os.path.join(out_dir, FEEDBACK_LOG)
    if saved is not None:
        src = saved.get("feedback")
        if src is None:
            return None, None
        if not os.path.exists(path) or sha256_file(path) != src.get("sha256"):
            raise ZeekmlError("feedback conns changed or missing since calibration; use "
                              "--recalibrate", path)
        return load_conns([path], Quarantine(), ScoreSummary()), src
    uids = benign_feedback_uids(feedback)
    if "uid" in baseline.column_names and baseline.num_rows:
        uids -= {u for u in baseline.column("uid").to_pylist() if u}
    out_abs = os.path.abspath(out_dir) + os.sep
    logs = [p for p in expand_inputs([root]) if not os.path.abspath(p).startswith(out_abs)]
    table = load_conns(logs, Quarantine(), ScoreSummary()) if uids else None
    rows = feedback_rows(table, uids) if table is not None else np.zeros(0, np.int64)
    extra = table.take(pa.array(rows, pa.int64())) if len(rows) else conn_table([])
    write_baseline_log(extra, path)
    log.info("%s: %d benign feedback conns found in %s join the baseline", feedback,
             extra.num_rows, root)
    return extra, {"path": os.path.abspath(path), "sha256": sha256_file(path),
                   "records": extra.num_rows, "from": os.path.abspath(feedback)}


def _in_period(batch, period: tuple[float | None, float | None] | None) -> tuple[object, bool]:
    """The conns of ``batch`` (a parsed conn batch) inside ``period`` (all without one), and
    whether the batch reached the period's end (a conn at or after it: the period is over)."""
    if period is None:
        return batch, False
    table = conn_table([batch])
    ts = ts_sort_key(table)
    start, end = period
    keep = rows_in_range(ts, start, end)
    return table.take(pa.array(keep, pa.int64())), bool(np.any(np.isfinite(ts) & (ts >= end)))


def _collect_baseline(root: str, out_dir: str, opts: WatchOptions, cp: Checkpoint,
                      stats: WatchStats, stop: threading.Event, on_wait: WaitFn) -> pa.Table:
    """The first ``baseline_records`` conns from the checkpoint on (read, not committed); with
    a baseline period (``--baseline-until``/``--baseline-range``), the conns of that period, read
    until a conn past its end arrives (or, with ``--once``, until the logs end), at most
    ``context_max_rows`` of them."""
    period = opts.score.baseline_period()
    limit = opts.baseline_records if period is None else opts.context_max_rows
    stats.state = "calibrating"
    f = DirectoryFollower(root, cp.files, Quarantine(), done=cp.done,
                          max_line_bytes=opts.max_line_bytes,
                          rescan_seconds=opts.rescan_seconds, use_events=opts.use_events,
                          exclude=[out_dir], allow_symlinks_out=opts.follow_symlinks_out)
    batches = []
    n = 0
    over = False
    final_done = False
    f.start()
    try:
        while n < limit and not over:
            if stop.is_set():
                raise Stopped
            got = f.poll(max_records=limit - n)
            if opts.once and not got and f.caught_up and not final_done:
                # --once calibrates on what exists now, as its watch loop then scores it: the
                # archives that will never be whole are opened here (read to their damage,
                # warned about) and unterminated last lines read; more to poll turns
                # ``caught_up`` false
                final_done = True
                got = f.final_pass()
            for b in got:
                if is_conn_batch(b):
                    b, ended = _in_period(b, period)
                    over = over or ended
                    batches.append(b)
                    n += b.num_rows
            if period is not None and n >= limit and not over:
                raise ZeekmlError(f"the baseline period holds more than {limit:,} conns "
                                  "(--context-max-rows); give a shorter period", root)
            if not got and f.caught_up and not over:
                if opts.once:
                    break
                on_wait(f, n)
                f.wait(min(opts.rescan_seconds, 1.0))
    finally:
        f.stop()
    if n == 0:
        raise ZeekmlError("no conn records to calibrate on" + (
            "" if period is None else " in the baseline period"), root)
    table = conn_table(batches)
    return table.slice(0, min(n, limit))
