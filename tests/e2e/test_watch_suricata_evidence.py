"""``zeekml watch`` on Slips' real eve.json: the Suricata alerts wait for their flows across
windows (Suricata writes a flow's event when it ends, after its alerts) and across a restart,
and the verdict lines are those of ``zeekml score`` on the same file."""
from __future__ import annotations

import gzip
import json
import os

import pytest
from click.testing import CliRunner

from zeekml.cli import main

EVE = os.path.join(os.path.dirname(__file__), "..", "data", "real", "slips-dataset", "dataset",
                   "test6-malicious.suricata.json.gz")


def _lines(path) -> list[bytes]:
    with open(path, "rb") as f:
        return sorted(f)


def _watch(root, out, workers: str = "0"):
    r = CliRunner().invoke(main, ["watch", str(root), "--out", str(out), "--once", "--baseline",
                                  EVE, "--window-records", "300", "--quiet", "--no-models",
                                  "--score-workers", workers, "--fpr", "0.01"])
    assert r.exit_code == 0, r.output


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    out = tmp_path_factory.mktemp("batch")
    # --fpr 0.01: alerts (29) on flows Suricata alerted on (8), so the join is checked
    r = CliRunner().invoke(main, ["score", EVE, "--out", str(out), "--baseline", EVE,
                                  "--no-progress", "--no-models", "--fpr", "0.01"])
    assert r.exit_code == 0, r.output
    lines = _lines(out / "verdicts.jsonl")
    assert sum(b'"suricata_alerts"' in x for x in lines) == 366
    return lines


@pytest.mark.parametrize("workers", ["0", "1"])
def test_watch_joins_the_alerts_as_score_does(tmp_path, batch, workers):
    root = tmp_path / "logs"
    root.mkdir()
    with gzip.open(EVE, "rb") as f:
        (root / "eve.json").write_bytes(f.read())
    _watch(root, tmp_path / "live", workers)
    assert _lines(tmp_path / "live" / "verdicts.jsonl") == batch
    # the live incidents count the alerts on their alerting conns, as score's do
    alerting = [json.loads(x) for x in batch if b'"alert":true' in x]
    on_alerts = sum(len(v.get("suricata_alerts", [])) for v in alerting)
    assert on_alerts > 0, "no alerting conn carries a Suricata alert: nothing checked"
    with open(tmp_path / "live" / "incidents.jsonl") as f:
        incidents = [json.loads(x) for x in f]
    assert incidents and sum(i.get("suricata_alerts", 0) for i in incidents) == on_alerts


def test_waiting_alerts_survive_a_restart(tmp_path, batch):
    """The first run ends between alerts and their flows: the alerts wait in its checkpoint
    and join the flows the second run reads."""
    with gzip.open(EVE, "rb") as f:
        events = f.read().splitlines(keepends=True)
    cut = len(events) // 2
    head = [json.loads(x) for x in events[:cut]]
    waiting = {e["flow_id"] for e in head if e["event_type"] == "alert"} - \
        {e["flow_id"] for e in head if e["event_type"] == "flow"}
    tail_flows = {json.loads(x)["flow_id"] for x in events[cut:] if b'"event_type":"flow"' in x}
    assert len(waiting & tail_flows) > 20, "the cut must leave alerts waiting for their flows"
    root, out = tmp_path / "logs", tmp_path / "live"
    root.mkdir()
    (root / "eve.json").write_bytes(b"".join(events[:cut]))
    _watch(root, out)
    with open(out / "checkpoint.json") as f:
        assert len(json.load(f)["body"]["stats"]["suricata_pending"]) > 20
    with open(root / "eve.json", "ab") as f:
        f.write(b"".join(events[cut:]))
    _watch(root, out)
    assert _lines(out / "verdicts.jsonl") == batch
