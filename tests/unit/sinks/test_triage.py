"""incidents.jsonl lines and the suppressed_by mark on verdict lines."""
import json

import pytest

from zeekml.sinks.triage import incident_line, mark_suppressed, write_incidents


def test_mark_suppressed_touches_only_those_lines():
    lines = [b'{"verdict_id":"V1","alert":false}\n', b'{"verdict_id":"V2","alert":false}\n']
    before = list(lines)
    mark_suppressed(lines, {1: 'allowlist rule 2: "lab" \u00e9'})
    assert lines[0] == before[0]
    assert lines[1] == b'{"verdict_id":"V2","alert":false,"suppressed_by":"allowlist rule 2: \\"lab\\" \\u00e9"}\n'
    assert json.loads(lines[1])["suppressed_by"] == 'allowlist rule 2: "lab" \u00e9'
    with pytest.raises(ValueError):
        mark_suppressed([b"not json"], {0: "x"})


def test_incidents_file(tmp_path):
    p = write_incidents(tmp_path / "incidents.jsonl",
                        [{"incident_id": "I1", "score": float("nan"), "peers": [1.0, float("inf")]}])
    assert open(p, "rb").read() == b'{"incident_id":"I1","score":null,"peers":[1.0,null]}\n'
    assert incident_line({"a": 1}) == b'{"a":1}\n'


def test_incident_notice_names_the_host_in_its_role():
    from zeekml.scoring.incidents import build_incidents, verdict_table
    from zeekml.sinks.triage import incident_notice

    def rec(k, orig, resp):
        return {"ts": 100.0 + k, "uid": f"C{k}", "id.orig_h": orig, "id.resp_h": resp,
                "id.resp_p": 80, "proto": "tcp", "score": 1.5 + k / 100, "alert": True,
                "model": "gnn"}
    rows = [rec(k, f"172.16.0.{k}", "10.0.0.9") for k in range(12)] + [rec(50, "10.0.0.1", "1.1.1.1")]
    incs = {i.role: i for i in build_incidents(verdict_table(rows))}
    n = incident_notice(incs["resp"])
    assert (n.note, n.resp_h, n.orig_h, n.uid, n.resp_p) == (
        "ZeekML::Suspicious_Host", "10.0.0.9", "172.16.0.11", "C11", 80)
    assert n.msg == incs["resp"].description and n.verdict_id == incs["resp"].incident_id
    assert n.sub.startswith(f"{incs['resp'].incident_id}: 12 alerts, 12 conns, 12 peers as resp")
    o = incident_notice(incs["orig"])
    assert (o.orig_h, o.resp_h, o.model, o.ts) == ("10.0.0.1", "1.1.1.1", "gnn", 150.0)
    assert o.sub.startswith(f"{incs['orig'].incident_id}: 1 alert, 1 conn, 1 peer as orig until 150.0")
    # the rate the alerts are raised at, where the run set it, ends the sub and is in the record
    assert "alerts at" not in n.sub and "alert_rate" not in incs["resp"].to_dict()
    incs["resp"].alert_rate = "effective fpr 0.0185, asked 0.001"
    assert incident_notice(incs["resp"]).sub == n.sub + "; alerts at effective fpr 0.0185, asked 0.001"
    assert incs["resp"].to_dict()["alert_rate"] == "effective fpr 0.0185, asked 0.001"


def test_fpr_text():
    from zeekml.scoring.calibrate import fpr_text

    assert fpr_text(0.001) == fpr_text(0.001, 0.001) == "fpr 0.001"
    assert fpr_text(0.001, 0.018532) == "effective fpr 0.0185, asked 0.001"


def test_incident_notice_log_and_baseline_file(tmp_path):
    from zeekml.parse import read_table
    from zeekml.scoring.incidents import build_incidents, verdict_table
    from zeekml.sinks.triage import write_baseline_info, write_incident_notices

    rows = [{"ts": 100.0 + 3 * k, "uid": f"C{k}", "id.orig_h": "10.0.0.1", "id.resp_h": f"10.0.1.{k}",
             "id.resp_p": 445, "proto": "tcp", "score": 1.5, "alert": True, "model": "iforest"}
            for k in range(12)]
    incs = build_incidents(verdict_table(rows))
    path = tmp_path / "zeekml_incident.log"
    assert write_incident_notices(path, incs) == 1
    [n] = read_table(str(path)).to_pylist()
    assert (n["note"], n["src"], n["n"], n["msg"]) == (
        "ZeekML::Suspicious_Host", "10.0.0.1", 12, b"scanned 12 hosts on 445/tcp in 33 s")
    assert n["suppress_for"] == 33.0 and n["sub"].startswith(incs[0].incident_id.encode())
    assert path.read_bytes().startswith(b"#separator \\x09\n") and b"#path\tzeekml_incident" in path.read_bytes()
    b = write_baseline_info(tmp_path / "baseline.json", {"conns": 3, "period": [1.0, float("nan")]})
    assert json.loads(open(b).read()) == {"conns": 3, "period": [1.0, None]}


def test_incident_notice_carries_its_top_conns_community_id(tmp_path):
    from zeekml.parse import read_table
    from zeekml.scoring.incidents import build_incidents, verdict_table
    from zeekml.sinks.triage import incident_notice, write_incident_notices

    rows = [{"ts": 100.0 + 3 * k, "uid": f"C{k}", "id.orig_h": "10.0.0.1", "id.orig_p": 40000 + k,
             "id.resp_h": f"10.0.1.{k}", "id.resp_p": 445, "proto": "tcp", "score": 1.5 + k,
             "alert": True, "model": "iforest", "community_id": f"1:cid{k}="} for k in range(12)]
    [inc] = build_incidents(verdict_table(rows))
    top = inc.top_conns[0]["community_id"]
    assert top.startswith("1:cid") and incident_notice(inc).community_id == top
    write_incident_notices(tmp_path / "n.log", [inc])
    [n] = read_table(str(tmp_path / "n.log")).to_pylist()
    assert n["community_id"] == top.encode()
