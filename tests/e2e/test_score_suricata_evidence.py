"""``zeekml score`` on Slips' real eve.json (3,512 flows, 745 ET alerts): every verdict names its
conn's Community ID, the alerts of each flow ride on its verdict and its incident, and they
change no score (the same verdicts, less the ``suricata_alerts`` key, as without the alert
events); chunked scoring carries them as one chunk does."""
from __future__ import annotations

import gzip
import json
import os

import pytest
from click.testing import CliRunner

from zeekml.cli import main
from zeekml.flows.community_id import community_id_v1
from zeekml.pipeline.batch import score_paths
from zeekml.pipeline.options import ScoreOptions

EVE = os.path.join(os.path.dirname(__file__), "..", "data", "real", "slips-dataset", "dataset",
                   "test6-malicious.suricata.json.gz")


def _lines(out) -> list[dict]:
    with open(os.path.join(out, "verdicts.jsonl"), "rb") as f:
        return [json.loads(x) for x in f]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eve")
    no_alerts = tmp / "eve-flows.json"
    with gzip.open(EVE, "rb") as f:
        no_alerts.write_bytes(b"".join(x for x in f if b'"event_type":"alert"' not in x))
    out = {}
    for name, path in (("with", EVE), ("without", str(no_alerts))):
        out[name] = tmp / name
        # --fpr 0.01: enough alerts (42) that some fall on flows Suricata alerted on (13)
        r = CliRunner().invoke(main, ["score", path, "--out", str(out[name]), "--no-models",
                                      "--no-progress", "--fpr", "0.01"])
        assert r.exit_code == 0, r.output
    return out


def test_verdicts_carry_community_id_and_the_flows_alerts(scored):
    lines = _lines(scored["with"])
    assert len(lines) == 3512
    for v in lines:
        assert v["community_id"] == community_id_v1(v["id.orig_h"], v["id.resp_h"], v["proto"],
                                                    v["id.orig_p"], v["id.resp_p"])
    with_alerts = [v for v in lines if "suricata_alerts" in v]
    assert len(with_alerts) == 366
    assert sum(len(v["suricata_alerts"]) for v in with_alerts) == 423
    assert all(set(a) == {"signature_id", "signature", "severity", "category"}
               for v in with_alerts for a in v["suricata_alerts"])
    # the key comes after every fixed key (before suppressed_by, which this run has none of)
    assert all(list(v)[-1] == "suricata_alerts" for v in with_alerts)


def test_alerts_change_no_score(scored):
    a, b = _lines(scored["with"]), _lines(scored["without"])
    for v in a:
        v.pop("suricata_alerts", None)
    assert a == b


def test_incidents_count_the_signatures_of_their_conns(scored):
    with open(os.path.join(scored["with"], "incidents.jsonl")) as f:
        incidents = [json.loads(x) for x in f]
    alerting = {v["uid"]: v for v in _lines(scored["with"]) if v["alert"]}
    on_alerts = sum(len(v.get("suricata_alerts", [])) for v in alerting.values())
    assert sum(i.get("suricata_alerts", 0) for i in incidents) == on_alerts
    for i in incidents:
        if "suricata_alerts" in i:
            assert i["suricata_alerts"] == sum(s["alerts"] for s in i["suricata_signatures"])
    if on_alerts == 0:
        pytest.fail("no alerting conn carries a Suricata alert: the incident check is empty")


def test_chunks_carry_the_alerts_as_one_chunk(tmp_path):
    one, many = tmp_path / "one", tmp_path / "many"
    score_paths([EVE], str(one), ScoreOptions())
    score_paths([EVE], str(many), ScoreOptions(chunk_rows=1000))
    a, b = _lines(one), _lines(many)
    assert [v.get("suricata_alerts") for v in a] == [v.get("suricata_alerts") for v in b]
    with open(one / "incidents.jsonl") as f, open(many / "incidents.jsonl") as g:
        assert [json.loads(x).get("suricata_signatures") for x in f] == \
            [json.loads(x).get("suricata_signatures") for x in g]


def test_dask_joins_alerts_read_by_other_tasks(tmp_path):
    """--dask on the eve.json cut into four files (one task each, as a rotated eve.json is):
    many alerts are read by another task than their flow, and the verdicts are the
    single-process run's."""
    with gzip.open(EVE, "rb") as f:
        events = f.read().splitlines(keepends=True)
    root = tmp_path / "logs"
    root.mkdir()
    quarter = len(events) // 4 + 1
    part_of: dict[int, int] = {}
    split = 0
    for p in range(4):
        chunk = events[p * quarter:(p + 1) * quarter]
        (root / f"eve-{p}.json").write_bytes(b"".join(chunk))
        for x in chunk:
            ev = json.loads(x)
            if ev["event_type"] == "flow":
                part_of[ev["flow_id"]] = p
    for p in range(4):
        for x in events[p * quarter:(p + 1) * quarter]:
            ev = json.loads(x)
            split += ev["event_type"] == "alert" and part_of.get(ev["flow_id"], p) != p
    assert split > 50
    one, dask = tmp_path / "one", tmp_path / "dask"
    score_paths([str(root)], str(one), ScoreOptions())
    score_paths([str(root)], str(dask), ScoreOptions(dask="local:1"))
    a, b = _lines(one), _lines(dask)
    assert sum("suricata_alerts" in v for v in b) == 366
    assert sorted(map(json.dumps, a)) == sorted(map(json.dumps, b))


def test_report_names_the_signatures_of_each_incident(scored):
    """``zeekml report`` shows, per incident, the Suricata alerts on its conns and their
    signatures (HTML page and terminal), from the run's incidents.jsonl."""
    from zeekml.sinks.report import load_run, render_html
    from zeekml.sinks.report.run import suricata_text

    run = load_run(str(scored["with"]))
    with_sigs = [i for i in run.incidents if i.get("suricata_alerts")]
    assert with_sigs, "no incident carries Suricata alerts: nothing to show"
    page = render_html(run, max_incidents=len(run.incidents))
    top = with_sigs[0]["suricata_signatures"][0]
    assert f"sid {top['signature_id']}" in page
    assert "Suricata signatures" in page             # the top conns' column
    r = CliRunner().invoke(main, ["report", str(scored["with"]), "--top", str(len(run.incidents))])
    assert r.exit_code == 0, r.output
    assert suricata_text(with_sigs[0]).split(":")[0] in r.output
