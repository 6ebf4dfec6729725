"""`zeekml report` end to end: score the bundled IoT-23 slice, then the terminal view and the HTML
file, which headless Chromium opens (skipped when Chromium is absent: CI may not install it)."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from zeekml.cli import main

EXAMPLES = Path(__file__).parent.parent.parent / "examples"


def test_terminal_view(run_dir):
    r = CliRunner().invoke(main, ["report", str(run_dir), "--top", "3"])
    assert r.exit_code == 0, r.output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"from {summary['alerts']:,} alerting conns" in r.output
    assert "top 3 incidents" in r.output


def test_html_default_path_and_errors(run_dir, tmp_path):
    r = CliRunner().invoke(main, ["report", str(run_dir), "--html"])
    assert r.exit_code == 0, r.output
    page = (run_dir / "report.html").read_text()
    assert '<table id="incidents">' in page and "<svg" in page
    r = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert r.exit_code == 2 and "no verdicts.jsonl here" in r.output
    r = CliRunner().invoke(main, ["report", str(run_dir), "--html", str(tmp_path / "no" / "x.html")])
    assert r.exit_code == 6 and "cannot write report" in r.output


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


# Injected into a copy of the report: measures what the browser laid out and writes it into the
# DOM, which --dump-dom prints. The report itself carries no script.
PROBE = """<script>
window.addEventListener('load', () => {
  const rows = document.querySelectorAll('#incidents > tbody > tr');
  const table = document.querySelector('#incidents').getBoundingClientRect();
  const plots = [...document.querySelectorAll('figure.plot svg')].filter(s => {
    const r = s.getBoundingClientRect();
    return r.width > 100 && r.height > 100 && s.querySelectorAll('path').length > 10;
  });
  const p = document.createElement('pre');
  p.id = 'probe';
  p.textContent = JSON.stringify({rows: rows.length, tableHeight: Math.round(table.height),
                                  plots: plots.length});
  document.body.appendChild(p);
});
</script>"""


def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed")
    html_path = tmp_path / "report.html"
    r = CliRunner().invoke(main, ["report", str(run_dir), "--html", str(html_path)])
    assert r.exit_code == 0, r.output
    probe = tmp_path / "probe.html"
    probe.write_text(html_path.read_text().replace("</body>", PROBE + "</body>"))
    out = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                          "--window-size=1400,2000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    start = out.stdout.index('<pre id="probe">') + len('<pre id="probe">')
    got = json.loads(out.stdout[start:out.stdout.index("</pre>", start)].replace("&quot;", '"'))
    incidents = int(r.output.rsplit("(", 1)[1].split()[0].replace(",", ""))
    assert incidents > 0 and got["rows"] == min(incidents, 100)
    assert got["tableHeight"] > 50
    assert got["plots"] >= 1


def test_score_writes_triage_outputs(run_dir):
    incidents = [json.loads(x) for x in (run_dir / "incidents.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert incidents and sum(i["alerts"] for i in incidents) == summary["alerts"]
    assert [i["score"] for i in incidents] == sorted((i["score"] for i in incidents), reverse=True)
    top = incidents[0]["top_conns"][0]
    assert top["community_id"].startswith("1:") and top["verdict_id"].startswith("V") and top["explanation"]
    from zeekml.parse import read_table
    notices = read_table(str(run_dir / "zeekml_incident.log")).to_pylist()
    assert [n["note"] for n in notices] == ["ZeekML::Suspicious_Host"] * len(incidents)
    assert [n["sub"].split(b":")[0].decode() for n in notices] == [i["incident_id"] for i in incidents]
    baseline = json.loads((run_dir / "baseline.json").read_text())
    assert baseline["conns"] == summary["baseline_records"] and baseline["period"][0] <= baseline["period"][1]
    r = CliRunner().invoke(main, ["report", str(run_dir)])
    assert "(incidents.jsonl)" in r.output
