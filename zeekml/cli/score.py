"""``zeekml score``: batch-score conn logs (files, rotated directories, .gz, Zeek or Suricata)."""
from __future__ import annotations

import os
import sys

import click
from click.core import ParameterSource

from zeekml._core.errors import OutputError, UnreadableInput
from zeekml.cli.dask_options import dask_access_options
from zeekml.pipeline import ScoreOptions, ScoreSummary, score_paths


def print_summary(s: ScoreSummary) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=False)
    t = Table(title="zeekml score", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("files read", str(s.files))
    if s.files_failed:
        t.add_row("files failed", str(len(s.files_failed)))
    if s.tasks_retried:
        t.add_row("tasks retried (--dask)", str(len(s.tasks_retried)))
    t.add_row("records read", f"{s.records_read:,}")
    t.add_row("conn records", f"{s.conn_records:,}")
    if s.other_records:
        t.add_row("other records (not conn)", f"{s.other_records:,}")
    t.add_row("quarantined", f"{s.quarantined:,}")
    t.add_row("baseline records", f"{s.baseline_records:,}")
    if s.feedback_baseline is not None:
        t.add_row("  of which benign feedback", f"{s.feedback_baseline:,}")
    t.add_row("scored", f"{s.scored:,}")
    t.add_row("alerts", f"{s.alerts:,}")
    for note, n in sorted(s.alerts_by_note.items()):
        t.add_row(f"  {note}", f"{n:,}")
    t.add_row("flows/s", f"{s.flows_per_s:,.0f}")
    console.print(t)
    for path, msg in s.files_failed:
        click.echo(f"zeekml: failed: {path}: {msg}", err=True)
    for k, v in s.outputs.items():
        console.print(f"{k}: {v}")


_freeze_at_exit = False


def exit_without_gc_walk() -> None:
    """At interpreter exit, move every object out of the cyclic garbage collector's reach
    (``gc.freeze``) before Python tears the modules down.

    A run that imported scikit-learn, torch and PyTorch Geometric holds ~350k objects in ~3,000
    modules, and the collections of the interpreter's shutdown walk them all: 2.3 s of a
    12 s ``zeekml score examples/`` with the models on the loaded 2-core box, 0.43 s frozen
    (issue 15). Nothing is lost: the outputs are closed before, and Python never
    promised to finalise objects alive at exit. At exit only, so that a process that goes on
    (tests driving the CLI in-process) keeps its collector."""
    global _freeze_at_exit
    if not _freeze_at_exit:             # once per process, however many runs
        import atexit
        import gc

        atexit.register(gc.freeze)
        _freeze_at_exit = True


# Inputs are checked by the readers, not by click: click's Path(readable=True) (its default)
# answers exit 2 for a file without read permission, where the README documents 4 (unreadable
# input), with the file named, and a file among several that cannot be read is reported (exit 7)
# while the others are scored, as a damaged .gz is.
INPUT_PATH = click.Path(readable=False)
INPUT_FILE = click.Path(dir_okay=False, readable=False)
# An --out directory is checked by ``check_out_dir`` (exit 6, output not writable): click's
# Path(file_okay=False) would answer exit 2 for an existing file there.
OUT_DIR_PATH = click.Path(readable=False)


def check_out_dir(out_dir: str) -> None:
    """Refuse an ``--out`` that exists and is not a directory (``OutputError``: exit 6)."""
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise OutputError("is not a directory: --out names the directory the outputs go to",
                          out_dir)


def check_baseline_readable(paths: tuple[str, ...]) -> None:
    """Refuse a ``--baseline`` file that cannot be opened (``UnreadableInput``: exit 4, the
    file named), before any work: unlike an input among several, the baseline cannot do
    without it (the run would end with "the baseline holds no conn records"). Directories and
    missing paths are left to the readers."""
    for p in paths:
        if os.path.isfile(p):
            try:
                with open(p, "rb"):
                    pass
            except OSError as e:
                raise UnreadableInput(f"cannot open --baseline: {e.strerror}", p) from e


def given(ctx: click.Context, name: str) -> bool:
    """Whether the user gave parameter ``name`` rather than leaving it at click's default: only
    an option the user gave can contradict another."""
    src = ctx.get_parameter_source(name)
    return src is not None and src not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)


def check_models_choice(ctx: click.Context) -> None:
    """``--no-models`` with ``--models DIR`` is refused: one of them would be ignored."""
    if ctx.params.get("no_models") and given(ctx, "models_dir"):
        raise click.UsageError("choose one of --models, --no-models: --no-models scores with "
                               "the IsolationForest only, without the learned detectors of "
                               "--models")


# The detectors a scoring run uses; `zeekml replay` scores with the same options.
MODELS_OPTION = click.option(
    "--models", "models_dir", default="", type=click.Path(file_okay=False),
    help="Directory of learned detectors (model dirs whose config.json says "
         "\"detector\": true). Default: the shipped models/ ($ZEEKML_MODELS).")
NO_MODELS_OPTION = click.option("--no-models", is_flag=True,
                                help="Only the IsolationForest baseline, no learned detectors.")
DEVICE_OPTION = click.option("--device", default="cpu", show_default=True,
                             type=click.Choice(["auto", "cpu", "cuda"]),
                             help="Where models run: CPU unless asked; auto = CUDA when present.")


def _time_option(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    from zeekml.flows.select import parse_time

    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _range_option(ctx: click.Context, param: click.Parameter,
                  value: str | None) -> tuple[float, float] | None:
    from zeekml.flows.select import parse_time_range

    if value is None:
        return None
    try:
        return parse_time_range(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


# Per-conn notices are opt-in on `score`, `watch` and `replay` (incidents are the default).
CONN_NOTICES_OPTION = click.option(
    "--conn-notices", is_flag=True,
    help="Also one notice per alerting conn: zeekml_notice.log, and with --zeek-feedback "
         "the verdict file's rows (Zeek's ZeekML::Anomalous_Flow/Intrusion notices). Default: "
         "one ZeekML::Suspicious_Host notice per incident only (zeekml_incident.log).")

# A baseline period of the input, shared by `score` and `watch`.
ALLOWLIST_OPTION = click.option(
    "--allowlist", type=INPUT_FILE, default=None,
    help="TOML file of [[rule]] tables (docs/triage.md): matching conns are scored but never "
         "alert, and their verdicts name the rule.")

BASELINE_UNTIL_OPTION = click.option(
    "--baseline-until", "baseline_until", default=None, metavar="TIME", callback=_time_option,
    help="The input's conns before TIME (epoch seconds or ISO-8601, UTC unless a zone is "
         "given) are the baseline.")
BASELINE_RANGE_OPTION = click.option(
    "--baseline-range", "baseline_range", default=None, metavar="START,END",
    callback=_range_option,
    help="The input's conns with START <= ts < END (epoch seconds or ISO-8601) are the baseline.")


def check_baseline_choice(ctx: click.Context, files: tuple, until: float | None,
                          period: tuple[float, float] | None, other: str) -> None:
    """One way to choose the baseline: logs, a period (until or range), or ``other``."""
    given = [name for name, v in (("--baseline", files), ("--baseline-until", until is not None),
                                  ("--baseline-range", period is not None)) if v]
    src = ctx.get_parameter_source(other.lstrip("-").replace("-", "_"))
    if src is not None and src != click.core.ParameterSource.DEFAULT:
        given.append(other)
    if len(given) > 1:
        raise click.UsageError(f"choose one of {', '.join(given)}: each sets the baseline")


@click.command("score")
@click.argument("paths", nargs=-1, required=True, type=INPUT_PATH)
@click.option("-o", "--out", "out_dir", required=True, type=OUT_DIR_PATH,
              help="Directory for verdicts.jsonl, incidents.jsonl, zeekml_incident.log, "
                   "quarantine.jsonl, summary.json (and zeekml_notice.log with --conn-notices).")
@click.option("--fpr", default=0.001, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Target false-positive rate of all detectors together on held-out baseline "
                   "conns; a baseline too small for it is refused (the effective rate is in "
                   "summary.json and in every notice).")
@click.option("--baseline", multiple=True, type=INPUT_PATH,
              help="Logs of a normal period to fit and calibrate on (default: the earliest "
                   "--baseline-fraction of the input by time).")
@click.option("--baseline-fraction", default=0.3, show_default=True,
              type=click.FloatRange(0, 1, min_open=True),
              help="Without --baseline or a baseline period: the earliest fraction of the input "
                   "conns by ts that the detectors fit and calibrate on (0 < F <= 1).")
@BASELINE_UNTIL_OPTION
@BASELINE_RANGE_OPTION
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the baseline's fit/calibration split and of the IsolationForest: the "
                   "same seed and input give the same verdicts.")
@click.option("--zeek-feedback", type=click.Path(dir_okay=False), default=None,
              help="Also write the files the zeekml Zeek package reads: FILE (verdicts, rows "
                   "only with --conn-notices) and its incident file beside it (FILE with .log "
                   "replaced by .incidents.log).")
@CONN_NOTICES_OPTION
@ALLOWLIST_OPTION
@click.option("--feedback", type=INPUT_FILE, default=None,
              help="feedback.jsonl written by `zeekml feedback`: the input's conns it labels "
                   "benign join the baseline before fitting and calibration.")
@MODELS_OPTION
@NO_MODELS_OPTION
@click.option("--dask", "dask", default=None, metavar="SCHEDULER",
              help="Run on Dask: 'local', 'local:N' (N worker processes) or a scheduler "
                   "address like tls://host:8786. Outputs are the same as without it.")
@click.option("--dask-split-bytes", default=64 << 20, show_default=True, type=click.IntRange(1024),
              help="With --dask: plain log files larger than this are cut into several tasks.")
@dask_access_options
@DEVICE_OPTION
@click.option("--progress/--no-progress", default=None,
              help="Progress bar (default: when stderr is a terminal).")
@click.pass_context
def score(ctx, paths, out_dir, fpr, baseline, baseline_fraction, baseline_until, baseline_range,
          seed, zeek_feedback, conn_notices, allowlist, feedback, models_dir, no_models, dask,
          dask_split_bytes, device, progress) -> None:
    """Score conn records; group the alerts into incidents and write a notice for each.

    Exit codes: 0 ok, 1 error, 2 missing input (or a usage error), 3 unknown format,
    4 unreadable input, 5 model files missing or altered, 6 output not writable, 7 finished
    but some input files failed.
    """
    from zeekml._core.device import resolve_device

    exit_without_gc_walk()
    check_baseline_choice(ctx, baseline, baseline_until, baseline_range, "--baseline-fraction")
    check_models_choice(ctx)
    check_baseline_readable(baseline)
    if dask is None and given(ctx, "dask_split_bytes"):
        # as --dask-security without --dask (dask_options): an option that would do nothing
        raise click.UsageError("--dask-split-bytes needs --dask")
    check_out_dir(out_dir)
    opts = ScoreOptions(fpr=fpr, baseline=list(baseline), baseline_fraction=baseline_fraction,
                        baseline_until=baseline_until, baseline_range=baseline_range,
                        seed=seed, zeek_feedback=zeek_feedback, conn_notices=conn_notices,
                        models_dir=None if no_models else models_dir, dask=dask,
                        split_bytes=dask_split_bytes, device=resolve_device(device),
                        allowlist=allowlist, feedback=feedback)
    if progress is None:
        progress = sys.stderr.isatty()
    summary = score_paths(list(paths), out_dir, opts, progress=progress)
    print_summary(summary)
    if summary.files_failed:
        sys.exit(7)


COMMANDS = [score]
