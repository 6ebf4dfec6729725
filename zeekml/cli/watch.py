"""``zeekml watch``: live scoring of a Zeek log directory (see ``zeekml.pipeline.live``)."""
from __future__ import annotations

import signal
import sys

import click

from zeekml.cli import ignore_sigint
from zeekml.cli.score import (ALLOWLIST_OPTION, BASELINE_RANGE_OPTION, BASELINE_UNTIL_OPTION,
                              CONN_NOTICES_OPTION, DEVICE_OPTION, MODELS_OPTION, NO_MODELS_OPTION,
                              INPUT_FILE, INPUT_PATH, OUT_DIR_PATH, check_baseline_choice,
                              check_baseline_readable, check_models_choice, check_out_dir)
from zeekml.pipeline import ScoreOptions, Watcher, WatchOptions, status_line
from zeekml.pipeline.options import WATCH_BASELINE_OPTIONS


@click.command("watch")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("-o", "--out", "out_dir", required=True, type=OUT_DIR_PATH,
              help="Directory for verdicts.jsonl, quarantine.jsonl, incidents.jsonl, "
                   "zeekml_incident.log, incidents-open.jsonl, checkpoint.json, "
                   "calibration.json and stats.json (and zeekml_notice.log with --conn-notices).")
@click.option("--zeek-feedback", type=click.Path(dir_okay=False), default=None,
              help="Also keep the files the zeekml Zeek package reads: FILE (verdicts, rows "
                   "only with --conn-notices) and its incident file beside it (FILE with .log "
                   "replaced by .incidents.log), each closed incident added once.")
@CONN_NOTICES_OPTION
@click.option("--once", is_flag=True, help="Process what exists now, then exit.")
@ALLOWLIST_OPTION
@click.option("--feedback", type=INPUT_FILE, default=None,
              help="feedback.jsonl written by `zeekml feedback`: at calibration, the conns of "
                   "DIRECTORY it labels benign join the baseline (as `zeekml score --feedback`).")
@click.option("--baseline", multiple=True, type=INPUT_PATH,
              help="Logs of a normal period to fit and calibrate on, as `zeekml score --no-models` does "
                   "(default: the first --baseline-records conns of DIRECTORY).")
@click.option("--baseline-records", default=10_000, show_default=True, type=click.IntRange(1))
@BASELINE_UNTIL_OPTION
@BASELINE_RANGE_OPTION
@click.option("--recalibrate", is_flag=True,
              help="Ignore the calibration saved in --out and fit again.")
@click.option("--fpr", default=0.001, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Target false-positive rate of all detectors together on held-out baseline "
                   "conns; a baseline too small for it is refused.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the baseline's fit/calibration split and of the IsolationForest, as "
                   "in `zeekml score` (recorded in calibration.json).")
@click.option("--window-seconds", default=1.0, show_default=True, type=click.FloatRange(0.01),
              help="A window is scored and committed this long after its first record...")
@click.option("--window-records", default=10_000, show_default=True, type=click.IntRange(1),
              help="...or when it holds this many records (up to 4x that while behind).")
@click.option("--rescan-seconds", default=2.0, show_default=True, type=click.FloatRange(0.05),
              help="Full directory rescan period (file-system events can be lost).")
@click.option("--no-events", is_flag=True, help="Rely on the periodic rescan only.")
@click.option("--status-seconds", default=5.0, show_default=True, type=click.FloatRange(0.1),
              help="Status line and stats.json period.")
@MODELS_OPTION
@NO_MODELS_OPTION
@DEVICE_OPTION
@click.option("--context-lateness", default=300.0, show_default=True,
              type=click.FloatRange(0),
              help="Detectors that look at neighbouring conns (GNN, autoencoder, MoE): a conn "
                   "is scored once conns this many seconds newer (plus the detectors' forward "
                   "horizon) have arrived, so that conns Zeek writes late still count as its "
                   "context.")
@click.option("--context-batch-seconds", default=60.0, show_default=True,
              type=click.FloatRange(0),
              help="Held-back conns are scored in batches spanning this many seconds of ts "
                   "(each batch is scored among all the conns of its detectors' horizons); "
                   "conns already due wait at most 5 s of wall-clock time for their batch to fill.")
@click.option("--context-max-rows", default=1_000_000, show_default=True,
              type=click.IntRange(1000),
              help="At most this many conns kept in memory as context and pending.")
@click.option("--score-workers", default=0, show_default=True, type=click.IntRange(0, 64),
              help="Score in this many forked processes while reading goes on (0 = in the "
                   "watch process); with learned detectors each process owns some of them.")
@click.option("--quiet", is_flag=True, help="No status line.")
@click.option("--overwrite", is_flag=True,
              help="Replace verdicts, notices and quarantine found in --out without a watch "
                   "checkpoint (a score output, or a deleted checkpoint); refused otherwise.")
@click.option("--follow-symlinks-out", is_flag=True,
              help="Follow symlinks in DIRECTORY that point out of it (skipped with a warning "
                   "otherwise). A link whose target has another owner is never followed.")
@click.pass_context
def watch(ctx, directory, out_dir, zeek_feedback, conn_notices, once, allowlist, feedback, baseline,
          baseline_records,
          baseline_until, baseline_range, recalibrate, fpr,
          seed, window_seconds, window_records, rescan_seconds, no_events, status_seconds,
          models_dir, no_models, device, context_lateness, context_batch_seconds,
          context_max_rows, score_workers, quiet, overwrite, follow_symlinks_out) -> None:
    """Score the conn logs of a live Zeek log directory as they are written.

    Follows DIRECTORY in any of Zeek's layouts (standalone, zeekctl current/ + dated archives,
    supervisor log-queue/), TSV or JSON, across rotations and restarts; each record is scored
    exactly once. SIGTERM/SIGINT finish the current window and commit a final checkpoint.

    Detectors are those of `zeekml score`: the IsolationForest and the learned models of
    --models (default: the shipped ones). Those that look at neighbouring conns get them: a conn
    is scored once the conns within their horizon have arrived (see --context-lateness), so its
    verdict equals `zeekml score`'s on the same log; --once scores every pending conn at the end.

    Exit codes: 0 ok, 1 error, 2 missing directory (or a usage error), 4 unreadable input
    (--baseline, --allowlist, --feedback), 5 model files missing or altered, 6 output
    not writable (stopped while stalled, or --out holds outputs but no watch checkpoint and
    --overwrite was not given), 130 interrupted (Ctrl-C, after the final commit).
    """
    from zeekml._core.device import resolve_device

    check_baseline_choice(ctx, baseline, baseline_until, baseline_range, "--baseline-records")
    check_models_choice(ctx)
    check_baseline_readable(baseline)
    check_out_dir(out_dir)
    opts = WatchOptions(
        score=ScoreOptions(fpr=fpr, baseline=list(baseline), baseline_until=baseline_until,
                           baseline_options=WATCH_BASELINE_OPTIONS,
                           baseline_range=baseline_range, seed=seed, zeek_feedback=zeek_feedback,
                           conn_notices=conn_notices, models_dir=None if no_models else models_dir,
                           device=resolve_device(device), allowlist=allowlist,
                           feedback=feedback),
        baseline_records=baseline_records, recalibrate=recalibrate,
        window_seconds=window_seconds, window_records=window_records,
        rescan_seconds=rescan_seconds, use_events=not no_events, once=once,
        status_seconds=status_seconds, context_lateness=context_lateness,
        context_max_rows=context_max_rows, context_batch_seconds=context_batch_seconds,
        score_workers=score_workers, overwrite=overwrite,
        follow_symlinks_out=follow_symlinks_out)

    def on_status(d: dict) -> None:
        if not quiet:
            click.echo("zeekml watch: " + status_line(d), err=True)

    watcher = Watcher(directory, out_dir, opts, on_status=on_status)

    interrupted = []

    def stop(signum, frame) -> None:
        if signum == signal.SIGINT:
            interrupted.append(signum)
        watcher.request_stop()

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        stats = watcher.run()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    held = (f", {stats.context['pending']:,} held back for their context (scored after the "
            "next start, or by --once)") if stats.context.get("pending") else ""
    late = (f", {stats.context['late']:,} arrived later than --context-lateness"
            if stats.context.get("late") else "")
    if interrupted:
        # Ctrl-C: no noise if pressed again while the interpreter shuts down, and exit 130
        # below; SIGTERM (a service manager stopping watch) stays a clean stop, exit 0
        ignore_sigint()
    state = "interrupted" if interrupted and stats.state == "stopped" else stats.state
    click.echo(f"zeekml watch: {state}: {stats.scored:,} scored, {stats.alerts:,} alerts, "
               f"{stats.quarantined:,} quarantined, {stats.duplicates_dropped:,} duplicates "
               f"dropped, {stats.commits:,} commits{held}{late}", err=True)
    if stats.state.endswith("(stalled)"):
        sys.exit(6)
    if interrupted:
        sys.exit(130)


COMMANDS = [watch]
