"""The terminal view of a run: its top incidents as a rich table."""
from __future__ import annotations

import re
import shutil
from datetime import datetime, timezone

from rich.console import Console
from rich.table import Table
from rich.text import Text

from zeekml.sinks.report.run import RunData, run_warnings, suricata_text


def _ts(v: object) -> str:
    try:
        return datetime.fromtimestamp(float(v), timezone.utc).strftime("%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


# C0 and C1 control characters and DEL: rich passes them (ESC included) to the terminal as they are
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def plain(value: object) -> str:
    """``value`` as text a terminal shows and does not obey: each control character (an ESC
    that would start a terminal control sequence a hostile log carries, a newline that would
    fake a row) written as its ``\\xHH`` escape."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def print_incidents(run: RunData, top: int = 10, console: Console | None = None) -> None:
    """Print the ``top`` incidents. Log strings go in as ``Text`` (never markup) with their
    control characters escaped (``plain``): rich would pass an ESC to the terminal."""
    # piped output gets 140 columns rather than rich's 80, so descriptions stay on one line or two
    console = console or Console(width=shutil.get_terminal_size((140, 24)).columns)
    s = run.summary
    head = (f"{len(run.incidents):,} incident{'' if len(run.incidents) == 1 else 's'} "
            f"({run.incidents_source}) from "
            f"{s.get('alerts', int(sum(run.verdicts.column('alert').to_pylist())) if run.verdicts.num_rows else 0):,}"
            f" alerting conns of {s.get('scored', run.verdicts.num_rows):,}")
    console.print(Text(head))
    for w in run_warnings(run):
        console.print(Text(f"warning: {plain(w)}", style="yellow"))
    if not run.incidents:
        return
    t = Table(title=f"top {min(top, len(run.incidents))} incidents", show_lines=False)
    for col, kw in (("#", {"justify": "right"}), ("score", {"justify": "right"}),
                    ("host", {"no_wrap": True, "min_width": 15}), ("role", {}),
                    ("first (UTC)", {"no_wrap": True}), ("alerts/conns", {"justify": "right"}),
                    ("what happened", {"overflow": "fold"})):
        t.add_column(col, **kw)
    for rank, inc in enumerate(run.incidents[:top], 1):
        score = inc.get("score")
        t.add_row(str(rank), f"{score:.2f}" if isinstance(score, (int, float)) else "?",
                  Text(plain(inc.get("host"))), Text(plain(inc.get("role"))), _ts(inc.get("first_ts")),
                  f"{inc.get('alerts', '?')}/{inc.get('conns', '?')}", _what(inc))
    console.print(t)


def _what(inc: dict) -> Text:
    """The description, then why its strongest conn alerted (the detector's reason, and how it
    differs from the baseline's conns of its kind), dimmed."""
    text = Text(plain(inc.get("description")))
    top = inc.get("top_conns")
    if isinstance(top, list) and top and isinstance(top[0], dict):
        why = [str(top[0][k]) for k in ("detector_explanation", "explanation") if top[0].get(k)]
        if why:
            text.append("\nstrongest conn: " + plain("; ".join(why)), style="dim")
    sur = suricata_text(inc)
    if sur:
        text.append("\n" + plain(sur), style="bold")
    return text
