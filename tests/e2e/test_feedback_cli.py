"""`zeekml feedback`: a verdict, host or incident marked benign becomes an allowlist rule and a
labeled feedback record listing the alerting conns it covers."""
import json
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from zeekml.cli import main
from zeekml.scoring.allowlist import Allowlist

EXAMPLES = Path(__file__).parent.parent.parent / "examples"


def alerts(run_dir):
    return [v for v in map(json.loads, open(run_dir / "verdicts.jsonl")) if v["alert"]]


def test_benign_verdict_host_and_incident(run_dir, tmp_path):
    allow, fb = tmp_path / "allow.toml", tmp_path / "fb.jsonl"
    common = ["--allowlist", str(allow), "--feedback-file", str(fb)]
    a = alerts(run_dir)
    assert a, "the example run should alert at fpr 0.01"
    v = a[0]
    r = CliRunner().invoke(main, ["feedback", str(run_dir), "--benign", v["verdict_id"], *common])
    assert r.exit_code == 0, r.output
    host = a[-1]["id.orig_h"]
    r = CliRunner().invoke(main, ["feedback", str(run_dir), "--host", host, "--reason", "lab box",
                                  *common])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["report", str(run_dir), "--html", str(tmp_path / "r.html")])
    from zeekml.sinks.report import load_run
    inc = load_run(run_dir).incidents[0]
    r = CliRunner().invoke(main, ["feedback", str(run_dir), "--incident", inc["incident_id"], *common])
    assert r.exit_code == 0, r.output

    rules = tomllib.loads(allow.read_text())["rule"]
    assert rules[0] == {"verdict_id": v["verdict_id"], "reason": f"false positive {v['verdict_id']}"}
    assert rules[1] == {"host": host, "reason": "lab box"}
    key = "orig_h" if inc["role"] == "orig" else "resp_h"
    assert rules[2][key] == inc["host"] and rules[2]["reason"].startswith(f"benign incident {inc['incident_id']}")
    assert len(Allowlist.load(allow)) == 3

    recs = [json.loads(x) for x in fb.read_text().splitlines()]
    assert [r["label"] for r in recs] == ["benign"] * 3
    assert [r["rule"] for r in recs] == [1, 2, 3]
    assert [c["verdict_id"] for c in recs[0]["conns"]] == [v["verdict_id"]]
    host_alerts = {x["verdict_id"] for x in a if host in (x["id.orig_h"], x["id.resp_h"])}
    assert {c["verdict_id"] for c in recs[1]["conns"]} == host_alerts
    # the rule names the host in its role, so it covers the incident's alerts and any other
    # alerts of that host in that role in the run
    side = "id.orig_h" if inc["role"] == "orig" else "id.resp_h"
    expected = {x["verdict_id"] for x in a if x[side] == inc["host"] and
                ("resp_p" not in rules[2] or x["id.resp_p"] == rules[2]["resp_p"])}
    assert {c["verdict_id"] for c in recs[2]["conns"]} == expected
    assert len(expected) >= inc["alerts"]


@pytest.mark.parametrize("args,code,message", [
    ([], 2, "give exactly one of"),
    (["--host", "1.2.3.4", "--benign", "Vx"], 2, "give exactly one of"),
    (["--benign", "Vnope"], 2, "no verdict Vnope in verdicts.jsonl"),
    (["--incident", "Inope"], 2, "no incident Inope"),
    (["--host", "not-an-ip"], 2, "is not an IP address or CIDR"),
])
def test_bad_requests(run_dir, tmp_path, args, code, message):
    r = CliRunner().invoke(main, ["feedback", str(run_dir), *args, "--allowlist",
                                  str(tmp_path / "a.toml"), "--feedback-file", str(tmp_path / "f.jsonl")])
    assert r.exit_code == code and message in r.output, r.output
    assert not (tmp_path / "a.toml").exists() and not (tmp_path / "f.jsonl").exists()


def test_broken_allowlist_is_named_and_left_alone(run_dir, tmp_path):
    allow = tmp_path / "a.toml"
    allow.write_text('[[rule]]\nhots = "1.2.3.4"\nreason = "typo"\n')
    r = CliRunner().invoke(main, ["feedback", str(run_dir), "--host", "1.2.3.4", "--allowlist",
                                  str(allow), "--feedback-file", str(tmp_path / "f.jsonl")])
    assert r.exit_code == 1 and f"{allow}: rule 1: unknown field 'hots'" in r.output
    assert allow.read_text() == '[[rule]]\nhots = "1.2.3.4"\nreason = "typo"\n'


def test_feedback_then_score_with_the_allowlist(run_dir, tmp_path):
    """An allowlisted host raises no alert; its verdicts name the rule; every other verdict line
    is byte for byte the run's without the allowlist; incidents and notices follow."""
    a = alerts(run_dir)
    host = a[0]["id.resp_h"]
    allow = tmp_path / "allow.toml"
    r = CliRunner().invoke(main, ["feedback", str(run_dir), "--host", host, "--reason", "lab box",
                                  "--allowlist", str(allow), "--feedback-file", str(tmp_path / "f.jsonl")])
    assert r.exit_code == 0, r.output
    out = tmp_path / "again"
    r = CliRunner().invoke(main, ["score", str(EXAMPLES / "iot23" / "conn.log.labeled"), "--out",
                                  str(out), "--no-models", "--no-progress", "--fpr", "0.02",
                                  "--allowlist", str(allow), "--conn-notices"])
    assert r.exit_code == 0, r.output
    before = (run_dir / "verdicts.jsonl").read_text().splitlines()
    after = (out / "verdicts.jsonl").read_text().splitlines()
    assert len(before) == len(after)
    n_suppressed = 0
    for b, x in zip(before, after):
        vb, vx = json.loads(b), json.loads(x)
        if host in (vb["id.orig_h"], vb["id.resp_h"]):
            n_suppressed += 1
            assert vx["alert"] is False and vx["note"] is None
            assert vx["suppressed_by"] == "allowlist rule 1: lab box"
            assert vx["score"] == vb["score"]        # still scored
            assert {k: v for k, v in vx.items() if k not in ("alert", "note", "suppressed_by")} == \
                {k: v for k, v in vb.items() if k not in ("alert", "note")}
        else:
            assert x == b
    assert n_suppressed > 0
    incidents = [json.loads(x) for x in (out / "incidents.jsonl").read_text().splitlines()]
    assert all(host not in (i["host"], *i["peers"]) for i in incidents)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["alerts"] == sum(1 for v in a if host not in (v["id.orig_h"], v["id.resp_h"]))
    from zeekml.parse import read_table
    notices = read_table(str(out / "zeekml_notice.log")).to_pylist()
    assert len(notices) == summary["alerts"]
    assert all(host not in (n["id.orig_h"], n["id.resp_h"]) for n in notices)


def test_allowlist_errors_on_score(tmp_path):
    bad = tmp_path / "allow.toml"
    bad.write_text('[[rule]]\nhost = "1.2.3"\nreason = "x"\n')
    args = ["score", str(EXAMPLES / "iot23" / "conn.log.labeled"), "--no-models", "--no-progress"]
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "o1"), "--allowlist", str(bad)])
    assert r.exit_code == 1 and f"{bad}: rule 1: host: '1.2.3' is not an IP address or CIDR" in r.output
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "o2"), "--allowlist",
                                  str(tmp_path / "missing.toml")])
    assert r.exit_code == 2 and "allowlist file not found" in r.output
    assert not (tmp_path / "o1").exists()


def test_allowlist_with_dask_equals_one_process(run_dir, tmp_path):
    """`--dask` applies the allowlist in its tasks: the verdict lines (with `suppressed_by`),
    the incidents, the conn notices and the counts of one process, over several tasks."""
    a = alerts(run_dir)
    allow = tmp_path / "allow.toml"
    allow.write_text(f'[[rule]]\nhost = "{a[0]["id.resp_h"]}"\nreason = "lab box"\n'
                     f'[[rule]]\nverdict_id = "{a[-1]["verdict_id"]}"\nreason = "seen"\n')
    outs = {}
    for way, extra in (("one", []), ("dask", ["--dask", "local:2", "--dask-split-bytes", "65536"])):
        outs[way] = out = tmp_path / way
        r = CliRunner().invoke(main, ["score", str(EXAMPLES / "iot23" / "conn.log.labeled"), "--out",
                                      str(out), "--no-models", "--no-progress", "--fpr", "0.02",
                                      "--allowlist", str(allow), "--conn-notices", *extra])
        assert r.exit_code == 0, r.output
    lines = (outs["one"] / "verdicts.jsonl").read_bytes()
    assert lines.count(b'"suppressed_by":"allowlist rule 1: lab box"') > 0
    assert lines.count(b'"suppressed_by":"allowlist rule 2: seen"') == 1
    for name in ("verdicts.jsonl", "incidents.jsonl"):
        assert (outs["one"] / name).read_bytes() == (outs["dask"] / name).read_bytes(), name
    from zeekml.parse import read_table
    assert read_table(str(outs["one"] / "zeekml_notice.log")).to_pylist() == \
        read_table(str(outs["dask"] / "zeekml_notice.log")).to_pylist()
    s1, s2 = (json.loads((outs[w] / "summary.json").read_text()) for w in ("one", "dask"))
    assert s1["alerts"] == s2["alerts"] and s1["alerts_by_note"] == s2["alerts_by_note"]
