"""``zeekml report OUT``: the incidents of a run in the terminal, or one self-contained HTML file."""
from __future__ import annotations

import os

import click


@click.command("report")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--html", "html_path", default=None, is_flag=False, flag_value="",
              type=click.Path(dir_okay=False),
              help="Write a self-contained HTML report to FILE (plain --html: OUT/report.html) "
                   "instead of printing the top incidents.")
@click.option("--top", default=10, show_default=True, type=click.IntRange(1),
              help="Incidents printed in the terminal view.")
@click.option("--max-incidents", default=100, show_default=True, type=click.IntRange(1),
              help="Incidents listed in the HTML report.")
def report(out_dir: str, html_path: str | None, top: int, max_incidents: int) -> None:
    """Report on the output directory OUT of a score, replay or watch run.

    Reads verdicts.jsonl, summary.json, quarantine.jsonl and incidents.jsonl (computed from the
    verdicts when absent). Exit codes: 0 ok, 2 OUT holds no run, 4 a file of the run is
    unreadable, 6 the report cannot be written.
    """
    from zeekml.sinks.report import load_run, print_incidents, write_html

    run = load_run(out_dir)
    if html_path is None:
        print_incidents(run, top=top)
        return
    path = write_html(run, html_path or os.path.join(out_dir, "report.html"), max_incidents)
    n = len(run.incidents)
    click.echo(f"report: {path} ({n:,} incident{'' if n == 1 else 's'})")


COMMANDS = [report]
