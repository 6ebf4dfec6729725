"""``report.html``: one self-contained page (inline CSS and SVG, no script, no network).

Every string that came from a log (hosts, uids, services, explanations, quarantined samples) is
hostile until escaped: ``esc`` escapes HTML, shows control characters as ``\\xHH`` and keeps
undecodable bytes visible instead of failing the write.
"""
from __future__ import annotations

import html
import os
import re
from collections import Counter
from datetime import datetime, timezone
from typing import Iterable

import numpy as np
import pyarrow.compute as pc

from zeekml._core.outfile import OutputFile
from zeekml.sinks.report.plots import score_distribution_svg, timeline_svg
from zeekml.sinks.report.run import RunData, run_warnings, suricata_text

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em;margin:.4em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.desc{font-weight:600}.muted{color:#777}.suricata{color:#a40}.plots{display:flex;flex-wrap:wrap;gap:1em}
.warn{background:#fff4d6;border-left:4px solid #d90;padding:.3em .6em;margin:.3em 0}
details{margin:.2em 0}code{font-size:1.05em}svg{max-width:100%;height:auto}
"""


def esc(value: object) -> str:
    """Text from anywhere, safe inside HTML element content and quoted attributes."""
    s = "" if value is None else str(value)
    s = s.encode("utf-8", "backslashreplace").decode("utf-8")   # lone surrogates from logs
    s = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", s)
    return html.escape(s, quote=True)


def fmt_ts(ts: object) -> str:
    try:
        return datetime.fromtimestamp(float(ts), timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def _num(v: object, digits: int = 2) -> str:
    if isinstance(v, bool) or v is None:
        return esc(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.{digits}f}" if np.isfinite(v) else "-"
    return esc(v)


def _table(headers: Iterable[str], rows: Iterable[Iterable[str]], table_id: str = "",
           num_cols: set[int] = frozenset()) -> str:
    """Cells must already be escaped; headers are ours."""
    ident = f' id="{table_id}"' if table_id else ""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = []
    for row in rows:
        body.append("<tr>" + "".join(
            f'<td class="num">{c}</td>' if i in num_cols else f"<td>{c}</td>"
            for i, c in enumerate(row)) + "</tr>")
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _warnings_section(run: RunData) -> str:
    # first on the page: "your baseline looks infected" changes how every alert below reads
    return "".join(f'<p class="warn">warning: {esc(w)}</p>' for w in run_warnings(run))


def _summary_section(run: RunData) -> str:
    s = run.summary
    b = run.baseline
    rows: list[tuple[str, str]] = []
    inputs = b.get("inputs") or s.get("inputs")
    if isinstance(inputs, list) and inputs:
        shown = ", ".join(esc(p) for p in inputs[:10])
        rows.append(("inputs", shown + (f" and {len(inputs) - 10} more" if len(inputs) > 10 else "")))
    for key, label in (("files", "files read"), ("records_read", "records read"),
                       ("conn_records", "conn records"), ("scored", "conns scored"),
                       ("alerts", "alerting conns"), ("baseline_records", "baseline conns"),
                       ("quarantined", "quarantined records")):
        if key in s:
            rows.append((label, _num(s[key])))
    period = b.get("period")
    if isinstance(period, (list, tuple)) and len(period) == 2:
        rows.append(("baseline period", f"{fmt_ts(period[0])} to {fmt_ts(period[1])} UTC"))
    if b.get("source"):
        rows.append(("baseline taken from", esc(b["source"])))
    thresholds = s.get("thresholds") if isinstance(s.get("thresholds"), dict) else {}
    for name, t in thresholds.items():
        if isinstance(t, dict):
            rows.append((f"detector {esc(name)}",
                         f"target FPR {_num(t.get('fpr'), 5)}, effective FPR "
                         f"{_num(t.get('effective_fpr'), 5)}, calibrated on "
                         f"{_num(t.get('n_baseline'))} baseline conns"))
    if not thresholds:
        rows.append(("detectors", esc(", ".join(run.detectors)) or "-"))
    if s.get("files_failed"):
        rows.append(("files failed", esc("; ".join(": ".join(map(str, f)) for f in s["files_failed"]))))
    rows.append(("incidents", f"{len(run.incidents):,} ({esc(run.incidents_source)})"))
    if not run.summary:
        rows.append(("summary.json", '<span class="muted">absent: counts from the verdicts only</span>'))
    return "<h2>Run</h2>" + _table(["what", "value"], ((f"{k}", v) for k, v in rows))


def _evidence(inc: dict) -> str:
    conns = inc.get("top_conns") or []
    if not isinstance(conns, list) or not conns:
        return ""
    rows = []
    for c in conns:
        if not isinstance(c, dict):
            continue
        rows.append((fmt_ts(c.get("ts")), esc(c.get("uid")), esc(c.get("id.orig_h")),
                     esc(c.get("id.resp_h")), esc(f"{c.get('id.resp_p')}/{c.get('proto')}"),
                     _num(c.get("score")), esc(c.get("model")),
                     esc(c.get("detector_explanation", "")), esc(c.get("explanation", "")),
                     esc(c.get("community_id", "")), _conn_signatures(c)))
    return ("<details><summary>top conns</summary>" +
            _table(["ts (UTC)", "uid", "orig", "resp", "port", "score", "detector",
                    "why the detector alerted", "unlike the baseline's conns of its kind",
                    "community_id", "Suricata signatures"], rows, num_cols={5}) + "</details>")


def _suricata(inc: dict) -> str:
    text = suricata_text(inc)
    return f'<br><span class="suricata">{esc(text)}</span>' if text else ""


def _conn_signatures(c: dict) -> str:
    alerts = c.get("suricata_alerts")
    if not isinstance(alerts, list):
        return ""
    names = [str(a.get("signature") or a.get("signature_id")) for a in alerts if isinstance(a, dict)]
    return esc("; ".join(dict.fromkeys(names)))


def _list(v: object, limit: int = 5) -> str:
    if not isinstance(v, list):
        return esc(v)
    shown = ", ".join(esc(x) for x in v[:limit])
    return shown + (f" <span class=\"muted\">+{len(v) - limit}</span>" if len(v) > limit else "")


def _incidents_section(run: RunData, limit: int) -> str:
    rows = []
    for rank, inc in enumerate(run.incidents[:limit], 1):
        n_peers = inc.get("n_peers", len(inc.get("peers") or []))
        rows.append((
            str(rank), _num(inc.get("score")), f"<code>{esc(inc.get('host'))}</code>",
            esc(inc.get("role")),
            f"{fmt_ts(inc.get('first_ts'))}<br>{fmt_ts(inc.get('last_ts'))}",
            f"{_num(inc.get('alerts'))} / {_num(inc.get('conns'))}",
            f"{_num(n_peers)}: {_list(inc.get('peers'))}", _list(inc.get("resp_ports")),
            _list(inc.get("detectors")),
            f'<span class="desc">{esc(inc.get("description"))}</span>{_suricata(inc)}'
            f'<br><span class="muted">{esc(inc.get("incident_id"))}</span>{_evidence(inc)}'))
    more = len(run.incidents) - limit
    note = f'<p class="muted">{more:,} more incidents in incidents.jsonl.</p>' if more > 0 else ""
    if not rows:
        return "<h2>Incidents</h2><p>No alerts, so no incidents.</p>" + \
            _table(["#", "score", "host", "role", "first / last (UTC)", "alerts / conns", "peers",
                    "ports", "detectors", "what happened"], [], "incidents")
    return ("<h2>Incidents, highest score first</h2>" +
            _table(["#", "score", "host", "role", "first / last (UTC)", "alerts / conns", "peers",
                    "ports", "detectors", "what happened"], rows, "incidents", {0, 1, 5}) + note)


def _top_hosts_section(run: RunData, limit: int = 15) -> str:
    t = run.verdicts
    alert = pc.fill_null(t.column("alert"), False).to_numpy(zero_copy_only=False).astype(bool)
    if not alert.any():
        return ""
    score = pc.fill_null(t.column("score"), 0.0).to_numpy(zero_copy_only=False)
    counts: Counter[tuple[str, str]] = Counter()
    best: dict[tuple[str, str], float] = {}
    for col, role in (("id.orig_h", "orig"), ("id.resp_h", "resp")):
        hosts = np.asarray(t.column(col).to_pylist(), dtype=object)[alert]
        for h, s in zip(hosts, score[alert]):
            counts[(h, role)] += 1
            best[(h, role)] = max(best.get((h, role), -np.inf), float(s))
    rows = [(f"<code>{esc(h)}</code>", role, _num(n), _num(best[(h, role)]))
            for (h, role), n in counts.most_common(limit)]
    return ("<h2>Top hosts by alerting conns</h2>" +
            _table(["host", "as", "alerting conns", "max score"], rows, "top-hosts", {2, 3}))


def _plots_section(run: RunData) -> str:
    t = run.verdicts
    ts = pc.fill_null(t.column("ts"), np.nan).to_numpy(zero_copy_only=False)
    alert = pc.fill_null(t.column("alert"), False).to_numpy(zero_copy_only=False).astype(bool)
    model = np.asarray(pc.fill_null(t.column("model"), "").to_pylist(), dtype=object)
    ok = np.isfinite(ts)
    parts = ["<h2>Timeline of alerts</h2>"]
    svg = timeline_svg(ts[ok], alert[ok], model[ok], run.detectors or sorted(set(model[alert])))
    parts.append(f'<figure class="plot" id="timeline">{svg}</figure>' if svg else "<p>No alerts.</p>")
    parts.append("<h2>Score distributions per detector (1.0 = threshold)</h2><div class=\"plots\">")
    for i, name in enumerate(run.detectors):
        scores = pc.fill_null(t.column(f"score.{name}"), np.nan).to_numpy(zero_copy_only=False)
        svg = score_distribution_svg(name, scores, i)
        if svg:
            parts.append(f'<figure class="plot">{svg}</figure>')
    parts.append("</div>")
    return "".join(parts)


def _quarantine_section(run: RunData) -> str:
    if run.quarantine_total == 0:
        return "<h2>Quarantine</h2><p>No malformed records.</p>"
    reasons = _table(["reason", "records"], ((esc(r), _num(n)) for r, n in run.quarantine_by_reason.items()),
                     num_cols={1})
    samples = _table(["file", "line", "reason", "sample"], (
        (esc(q.get("path")), _num(q.get("line")), esc(q.get("reason")),
         f"<code>{esc(str(q.get('sample', ''))[:200])}</code>") for q in run.quarantine_samples))
    return (f"<h2>Quarantine: {run.quarantine_total:,} malformed records</h2>" + reasons +
            f"<details><summary>first {len(run.quarantine_samples)}</summary>{samples}</details>")


def render_html(run: RunData, max_incidents: int = 100) -> str:
    """The whole page as a string."""
    title = f"zeekml report: {esc(os.path.abspath(run.out_dir))}"
    body = [f"<h1>{title}</h1>",
            f'<p class="muted">generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC '
            f"from {esc(run.out_dir)}</p>",
            _warnings_section(run), _summary_section(run), _incidents_section(run, max_incidents),
            _plots_section(run),
            _top_hosts_section(run), _quarantine_section(run)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{title}</title><style>{CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")


def write_html(run: RunData, path: str | os.PathLike, max_incidents: int = 100) -> str:
    """Render and write the page; returns its path."""
    path = os.fspath(path)
    text = render_html(run, max_incidents)
    with OutputFile(path, what="report") as f:   # no symlinks, mode 0640; failures are OutputError
        f.write(text.encode("utf-8"))
    return path
