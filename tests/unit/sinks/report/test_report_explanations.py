"""The report shows why each top conn alerted (the detector's reason and how it differs from the
baseline's conns of its kind), escaped; the terminal view too; score plots never go negative."""
import io
import json

import numpy as np
from rich.console import Console

from zeekml.sinks.report import load_run, render_html
from zeekml.sinks.report.plots import score_distribution_svg
from zeekml.sinks.report.terminal import print_incidents

WHY = "nearest baseline conns (baseline p99 0.19): 10.0.0.1 -> 10.0.1.1:445/tcp (uid Cb<x>, distance 0.03)"
UNLIKE = "resp_bytes 48,113, 40x the baseline median 1,200 for 445/tcp"


def _run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    v = {"verdict_id": "V1", "uid": "C1", "ts": 1_600_000_000.0, "id.orig_h": "10.0.0.9",
         "id.orig_p": 4000, "id.resp_h": "10.0.1.1", "id.resp_p": 445, "proto": "tcp",
         "scores": {"gnn": 2.0}, "score": 2.0, "alert": True, "note": "ZeekML::Anomalous_Flow",
         "model": "gnn"}
    (out / "verdicts.jsonl").write_text(json.dumps(v) + "\n")
    inc = {"incident_id": "I1", "host": "10.0.0.9", "role": "orig", "first_ts": v["ts"],
           "last_ts": v["ts"], "conns": 1, "alerts": 1, "score": 2.0, "peers": ["10.0.1.1"],
           "n_peers": 1, "resp_ports": ["445/tcp"], "services": [], "detectors": ["gnn"],
           "description": "1 anomalous conn to 10.0.1.1 on 445/tcp (score 2.00, gnn)",
           "top_conns": [{"uid": "C1", "ts": v["ts"], "id.orig_h": "10.0.0.9",
                          "id.resp_h": "10.0.1.1", "id.resp_p": 445, "proto": "tcp",
                          "score": 2.0, "model": "gnn", "detector_explanation": WHY,
                          "explanation": UNLIKE}]}
    (out / "incidents.jsonl").write_text(json.dumps(inc) + "\n")
    return load_run(out)


def test_html_top_conns_say_why(tmp_path):
    page = render_html(_run(tmp_path))
    assert "why the detector alerted" in page and "unlike the baseline's conns of its kind" in page
    assert WHY.replace("<", "&lt;").replace(">", "&gt;") in page
    assert UNLIKE in page and "Cb<x>" not in page


def test_terminal_shows_the_strongest_conns_reason(tmp_path):
    buf = io.StringIO()
    print_incidents(_run(tmp_path), console=Console(file=buf, width=400, color_system=None))
    text = buf.getvalue()
    assert "strongest conn: nearest baseline conns (baseline p99 0.19)" in text
    assert UNLIKE in text


def test_score_plot_axis_starts_at_zero():
    svg = score_distribution_svg("gnn", np.array([-0.5, -0.1, 0.2, 0.4, 1.3]), 0)
    assert svg and "0 = baseline median" in svg
    assert "\u22120.5" not in svg and "-0.5" not in svg        # no negative tick


def test_suricata_evidence_in_words(tmp_path):
    """An incident with joined Suricata alerts names them, most frequent first, escaped in the
    page; one without shows no Suricata line at all."""
    from zeekml.sinks.report.run import suricata_text

    run = _run(tmp_path)
    assert suricata_text(run.incidents[0]) == ""
    assert "Suricata:" not in render_html(run)
    sigs = [{"signature_id": 2001219, "signature": "ET SCAN <Potential> SSH Scan", "severity": 2,
             "category": "Attempted Information Leak", "alerts": 7},
            {"signature_id": 2003068, "signature": "ET SCAN SSH BruteForce", "severity": 2,
             "category": "Misc activity", "alerts": 2},
            {"signature_id": 9, "signature": None, "severity": 3, "category": None, "alerts": 1},
            {"signature_id": 10, "signature": "four", "severity": 3, "category": None, "alerts": 1}]
    run.incidents[0].update(suricata_alerts=11, suricata_signatures=sigs)
    run.incidents[0]["top_conns"][0]["suricata_alerts"] = [sigs[0], sigs[0]]
    text = suricata_text(run.incidents[0])
    assert text == ("Suricata: 11 alerts on its conns: ET SCAN <Potential> SSH Scan (sid 2001219, 7x); "
                    "ET SCAN SSH BruteForce (sid 2003068, 2x); ? (sid 9, 1x); +1 more signature")
    page = render_html(run)
    assert "ET SCAN &lt;Potential&gt; SSH Scan (sid 2001219, 7x)" in page and "<Potential>" not in page
    assert page.count("ET SCAN &lt;Potential&gt; SSH Scan") == 2     # the line and the conn's column, once
    buf = io.StringIO()
    print_incidents(run, console=Console(file=buf, width=400, color_system=None))
    assert text in buf.getvalue()
