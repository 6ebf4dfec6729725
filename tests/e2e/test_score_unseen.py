"""``zeekml score --baseline`` on real IoT-23 conns: against a baseline of the capture's own UDP
conns, every TCP conn carries values no baseline conn had, the IsolationForest counts them
(``scoring/detectors/unseen.py``), so each alerts, the incidents say why, and the calibration still
holds the baseline's alert rate at ``--fpr``."""
from __future__ import annotations

import gzip
import json
import os

from click.testing import CliRunner

from zeekml.cli import main

LOG = os.path.join(os.path.dirname(__file__), "..", "data", "real", "iot23-ctu-34-1", "conn.log.labeled.gz")


def test_a_protocol_the_baseline_never_had_alerts_and_is_named(tmp_path):
    with gzip.open(LOG, "rt") as f:
        lines = f.read().splitlines(True)
    fields = next(ln for ln in lines if ln.startswith("#fields")).rstrip("\n").split("\t")[1:]
    proto = fields.index("proto")
    base = tmp_path / "udp.log"     # the real log's header and its UDP records, nothing else
    base.write_text("".join(ln for ln in lines if ln.startswith("#") or ln.split("\t")[proto] == "udp"))
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["score", LOG, "--baseline", str(base), "--no-models", "--fpr", "0.01",
                                  "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    verdicts = [json.loads(ln) for ln in (out / "verdicts.jsonl").read_text().splitlines()]
    tcp = [v for v in verdicts if v["proto"] == "tcp"]
    udp = [v for v in verdicts if v["proto"] == "udp"]
    assert len(tcp) == 21331 and all(v["alert"] for v in tcp)
    assert sum(v["alert"] for v in udp) <= 0.01 * len(udp) + 1
    cal = json.loads((out / "summary.json").read_text())["calibration"]
    assert cal["calibration_conns"] == len(udp) and cal["calibration_alert_rate"] <= 0.01
    incidents = [json.loads(ln) for ln in (out / "incidents.jsonl").read_text().splitlines()]
    top = [c for i in incidents for c in i["top_conns"] if c["proto"] == "tcp"]
    assert top and all(c["detector_explanation"].startswith("never in the baseline: proto tcp, ") for c in top)
    # at most six values named, the rest counted, then the features furthest from the baseline
    assert any(" more; " in c["detector_explanation"] for c in top)
