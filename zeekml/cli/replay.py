"""``zeekml replay``: turn captures into conn.log + zeekml_flow.log (Zeek or the built-in meter), then score."""
from __future__ import annotations

import sys

import click

from zeekml.cli.score import (ALLOWLIST_OPTION, CONN_NOTICES_OPTION, DEVICE_OPTION, INPUT_PATH,
                              MODELS_OPTION, NO_MODELS_OPTION, OUT_DIR_PATH, check_models_choice,
                              check_out_dir, given)
from zeekml.pipeline.replay import ENGINES, replay as run_replay

# Options that only the scoring step reads: with --no-score they would do nothing.
SCORING_OPTIONS = (("fpr", "--fpr"), ("allowlist", "--allowlist"),
                   ("conn_notices", "--conn-notices"), ("models_dir", "--models"),
                   ("no_models", "--no-models"), ("device", "--device"))


def check_score_choice(ctx: click.Context) -> None:
    """``--no-score`` with a scoring option is refused, naming both: the option would be
    ignored without a word."""
    if ctx.params.get("score"):
        return
    extra = [flag for name, flag in SCORING_OPTIONS if given(ctx, name)]
    if extra:
        what = "is a scoring option" if len(extra) == 1 else "are scoring options"
        raise click.UsageError(f"{', '.join(extra)} {what}: not used with --no-score")


@click.command("replay")
@click.argument("pcaps", nargs=-1, required=True, type=INPUT_PATH)
@click.option("-o", "--out", "out_dir", required=True, type=OUT_DIR_PATH,
              help="Directory for conn.log, zeekml_flow.log and (with --score) the scoring outputs.")
@click.option("--engine", type=click.Choice(ENGINES), default="auto", show_default=True,
              help="zeek: run `zeek -r` with our scripts; builtin: zeekml's flow meter; "
                   "auto: zeek when it is on PATH, else builtin.")
@click.option("--score/--no-score", default=True, show_default=True,
              help="Score the written conn.log (as `zeekml score`).")
@click.option("--json", "json_logs", is_flag=True,
              help="Write the logs as Zeek JSON lines (as LogAscii::use_json=T; still named *.log).")
@click.option("--flow-packets", default=32, show_default=True, type=click.IntRange(1, 100000),
              help="Packets per connection recorded in zeekml_flow.log.")
@click.option("--ignore-checksums", is_flag=True,
              help="Do not validate IP/TCP/UDP/ICMP checksums (zeek -C): for captures taken where "
                   "the NIC computes checksums (offloading). Default: as Zeek, packets with bad "
                   "checksums are not analysed.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed for uids (built-in meter) and scoring.")
@click.option("--fpr", default=0.001, show_default=True,
              type=click.FloatRange(0, 1, min_open=True), help="Scoring: target false-positive rate.")
@ALLOWLIST_OPTION
@CONN_NOTICES_OPTION
@MODELS_OPTION
@NO_MODELS_OPTION
@DEVICE_OPTION
@click.pass_context
def replay(ctx, pcaps, out_dir, engine, score, json_logs, flow_packets, ignore_checksums, seed,
           fpr, allowlist, conn_notices, models_dir, no_models, device) -> None:
    """Replay pcap/pcapng captures into Zeek-style logs and score them.

    Exit codes: 0 ok, 1 error, 2 missing input (or a usage error), 4 unreadable input, not a
    capture, or a damaged capture (the packets before the damage are logged and scored; the
    message names the packet), 5 model files missing or altered, 6 output not writable, 7 zeek
    asked for but unavailable or failed.
    """
    from zeekml._core.device import resolve_device

    check_score_choice(ctx)
    check_models_choice(ctx)
    check_out_dir(out_dir)

    if score:  # before the capture is read, so that a device that is not there fails at once
        device = resolve_device(device)
        if allowlist:   # ... and a bad allowlist (a one-line error naming the file and rule)
            from zeekml.scoring.allowlist import Allowlist
            Allowlist.load(allowlist)
    result = run_replay(list(pcaps), out_dir, engine=engine, json_logs=json_logs,
                        flow_packets=flow_packets, seed=seed, ignore_checksums=ignore_checksums)
    click.echo(f"engine: {result.engine}")
    if result.engine == "builtin":
        click.echo(f"packets: {result.packets:,}  connections: {result.connections:,}"
                   + (f"  undecodable frames: {result.skipped:,}" if result.skipped else "")
                   + (f"  bad checksums: {result.bad_checksums:,} (--ignore-checksums to analyse them)"
                      if result.bad_checksums else ""))
    click.echo(f"conn log: {result.conn_log}")
    if result.flow_log:
        click.echo(f"flow log: {result.flow_log}")
    try:
        if score:
            score_conn_log(result.conn_log, out_dir, seed=seed, fpr=fpr,
                           models_dir=None if no_models else models_dir, device=device,
                           allowlist=allowlist, conn_notices=conn_notices)
    finally:
        # the damage is reported here, once (the replay logs it at info only), even when
        # scoring the packets before it fails
        if result.error is not None:
            click.echo(f"zeekml: error: {result.error}", err=True)
    if result.error is not None:
        sys.exit(result.error.exit_code)


def score_conn_log(conn_log: str, out_dir: str, seed: int = 0, fpr: float = 0.001,
                   models_dir: str | None = "", device: str = "cpu",
                   allowlist: str | None = None, conn_notices: bool = False) -> None:
    """Hand the written conn.log to the scoring pipeline (``zeekml.pipeline.score_paths``) with
    the detectors ``zeekml score`` uses: ``models_dir`` as its ``--models`` ("" = the shipped
    models, None = IsolationForest only) on ``device`` (resolved: ``cpu`` or ``cuda``), with
    ``allowlist`` (a TOML rules file, as ``score --allowlist``) applied, and per-conn notices
    only with ``conn_notices`` (as ``score --conn-notices``)."""
    from zeekml.cli.score import print_summary
    from zeekml.pipeline import ScoreOptions, score_paths
    from zeekml.pipeline.options import REPLAY_BASELINE_OPTIONS

    summary = score_paths([conn_log], out_dir, ScoreOptions(fpr=fpr, seed=seed, models_dir=models_dir,
                                                            baseline_options=REPLAY_BASELINE_OPTIONS,
                                                            device=device, allowlist=allowlist,
                                                            conn_notices=conn_notices),
                          progress=sys.stderr.isatty())
    print_summary(summary)


COMMANDS = [replay]
