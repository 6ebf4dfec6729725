"""The HTML report: hostile strings from logs come out escaped; a run directory's files are read
with one-line errors; incidents come from incidents.jsonl or are computed from the verdicts."""
import io
import json
import re

import pytest

from zeekml._core.errors import InputNotFound, UnreadableInput
from zeekml.sinks.report import load_run, render_html
from zeekml.sinks.report.html import esc

EVIL = '<script>alert(1)</script>"\'&\x1b[31m\udcff'


def verdict(i, orig="10.0.0.1", resp="10.0.1.1", alert=False, score=0.2, uid=None):
    return {"verdict_id": f"V{i}", "uid": uid or f"C{i}", "ts": 1_600_000_000.0 + i,
            "id.orig_h": orig, "id.orig_p": 40000 + i, "id.resp_h": resp, "id.resp_p": 445,
            "proto": "tcp", "scores": {"iforest": score, "gnn": score / 2}, "score": score,
            "alert": alert, "note": "ZeekML::Anomalous_Flow" if alert else None, "model": "iforest"}


def write_run(tmp_path, verdicts, summary=None, quarantine=(), incidents=None):
    out = tmp_path / "run"
    out.mkdir()
    with open(out / "verdicts.jsonl", "w", encoding="utf-8", errors="surrogateescape") as f:
        for v in verdicts:
            f.write(json.dumps(v, ensure_ascii=False) + "\n")
    if summary is not None:
        (out / "summary.json").write_text(json.dumps(summary))
    with open(out / "quarantine.jsonl", "w") as f:
        for q in quarantine:
            f.write(json.dumps(q) + "\n")
    if incidents is not None:
        with open(out / "incidents.jsonl", "w") as f:
            for inc in incidents:
                f.write(json.dumps(inc) + "\n")
    return out


def test_esc():
    assert esc(EVIL) == ("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#x27;&amp;\\x1b[31m\\udcff")
    assert esc(None) == ""


def test_hostile_strings_are_escaped_everywhere(tmp_path):
    vs = [verdict(i) for i in range(30)]
    vs += [verdict(100 + k, orig=EVIL, resp=f"10.0.2.{k}", alert=True, score=2.0, uid=EVIL)
           for k in range(12)]
    q = [{"path": EVIL, "line": 3, "offset": 9, "reason": "bad field: " + EVIL, "sample": EVIL}]
    out = write_run(tmp_path, vs, {"alerts": 12, "scored": 42, "inputs": [EVIL]}, q)
    run = load_run(out)
    assert run.incidents_source == "computed from verdicts.jsonl"
    # the undecodable byte stays visible as the text \xff
    assert [i["host"] for i in run.incidents] == [EVIL.replace("\udcff", "\\xff")]
    page = render_html(run)
    assert "<script" not in page and "\x1b" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 5   # host, uid, input, path, sample
    assert "scanned 12 hosts on 445/tcp in 11 s" in page
    assert re.search(r'<table id="incidents">.*?<tbody><tr>', page, re.S)
    assert page.count("<svg") == 3          # timeline + 2 detectors
    # self-contained: nothing is fetched (no external src/href, no script, no stylesheet link)
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', page)
    assert "<link" not in page and "<script" not in page


def test_incidents_file_is_used_when_present(tmp_path):
    inc = {"incident_id": "Iabc", "host": "10.9.9.9", "role": "orig", "first_ts": 1.0,
           "last_ts": 2.0, "conns": 3, "alerts": 2, "score": 5.0, "peers": ["1.1.1.1"],
           "resp_ports": ["443/tcp"], "detectors": ["gnn"], "description": "from the file"}
    run = load_run(write_run(tmp_path, [verdict(0, alert=True, score=3)], incidents=[inc]))
    assert run.incidents_source == "incidents.jsonl" and run.incidents == [inc]
    assert "from the file" in render_html(run)


def test_no_alerts_still_renders(tmp_path):
    run = load_run(write_run(tmp_path, [verdict(i) for i in range(5)]))
    page = render_html(run)
    assert run.incidents == [] and "No alerts, so no incidents." in page
    assert '<table id="incidents">' in page


def test_errors_name_the_file(tmp_path):
    with pytest.raises(InputNotFound, match="no such output directory"):
        load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFound, match="no verdicts.jsonl here"):
        load_run(tmp_path / "empty")
    out = write_run(tmp_path, [verdict(0)])
    with open(out / "verdicts.jsonl", "a") as f:
        f.write('{"uid": "C9", "ts": \n')
    with pytest.raises(UnreadableInput) as e:
        load_run(out)
    assert str(e.value).startswith(f"{out / 'verdicts.jsonl'}:2: not a JSON object")


def test_arrow_and_line_readers_agree(tmp_path):
    from zeekml.sinks.report.run import _read_verdicts_arrow, _read_verdicts_python
    vs = [verdict(i, alert=i % 7 == 0, score=1.5 if i % 7 == 0 else 0.1) for i in range(50)]
    vs[3]["suppressed_by"] = "allowlist rule 1: lab"
    vs[4]["scores"]["gnn"] = None
    path = str(write_run(tmp_path, vs) / "verdicts.jsonl")
    fast, fast_dets = _read_verdicts_arrow(path)
    slow, slow_dets = _read_verdicts_python(path)
    assert fast_dets == slow_dets == ["iforest", "gnn"]
    assert fast.equals(slow)
    assert fast.column("suppressed_by").to_pylist()[3] == "allowlist rule 1: lab"


def test_baseline_file_shown_and_escaped(tmp_path):
    out = write_run(tmp_path, [verdict(i) for i in range(5)])
    (out / "baseline.json").write_text(json.dumps({
        "inputs": ["conn.<i>log"], "source": "--baseline <script>", "period": [0.0, 3600.0],
        "conns": 5}))
    page = render_html(load_run(out))
    assert "<td>baseline period</td><td>1970-01-01 00:00:00 to 1970-01-01 01:00:00 UTC</td>" in page
    assert "conn.&lt;i&gt;log" in page and "--baseline &lt;script&gt;" in page
    (out / "baseline.json").write_text("[1]")
    with pytest.raises(UnreadableInput, match="baseline.json: not a JSON object"):
        load_run(out)


def test_the_runs_warnings_come_first_escaped_in_both_views(tmp_path):
    """"your baseline looks infected" changes how every alert reads: both views show the run's
    warnings (summary.json) before the incidents, escaped."""
    from rich.console import Console

    from zeekml.sinks.report.terminal import print_incidents

    warn = ["your baseline looks infected: 268 of its 708 conns flagged by clf-x, of hosts 10.0.0.1",
            "baseline small " + EVIL]
    run = load_run(write_run(tmp_path, [verdict(0, alert=True, score=3)], summary={"warnings": warn}))
    page = render_html(run)
    first = page.index('<p class="warn">warning: your baseline looks infected: 268 of its 708')
    assert first < page.index("<h2>Run</h2>") < page.index("<h2>Incidents")
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    buf = io.StringIO()
    print_incidents(run, console=Console(file=buf, width=200))
    text = buf.getvalue()
    assert "warning: your baseline looks infected: 268 of its 708 conns" in text
    assert text.index("warning:") < text.index("top 1 incidents")
    assert "\x1b" not in text and "\\x1b[31m" in text           # the ESC shown, not obeyed
    # no warnings, no warning lines
    (tmp_path / "b").mkdir()
    assert "warning:" not in render_html(load_run(write_run(tmp_path / "b", [verdict(0)], summary={})))
