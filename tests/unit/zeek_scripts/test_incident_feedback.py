"""The incident file: zeekml's incidents for Zeek's Input framework, raised by verdicts.zeek as
one ZeekML::Suspicious_Host notice each (issue 16). No Zeek runs here: the file is read as
Zeek's Ascii Input reader reads it (zeek_input_reader), and the script is checked by parsing."""
from __future__ import annotations

import os
import re

import pytest

import zeek_input_reader as zr
import zeek_script_tree as zt
from zeekml._core.zeek_format import format_value
from zeekml.scoring.incidents import Incident
from zeekml.scoring.verdict import Verdict
from zeekml.sinks.triage import incident_notice_record
from zeekml.sinks.zeek_input import (INCIDENT_FIELDS, INCIDENT_LOG_PATH, IncidentFeedbackWriter,
                                     ZeekFeedback, incident_feedback_path, read_verdict_file)

TESTING = zt.REPO / "zeek-scripts" / "testing"
HOSTILE = ["tab\there", "new\nline", "-", "(empty)", "\\x41", "#leading hash", "back\\slash",
           "comma,inside", "\x1b[31mterminal escape", "utf8 \u00e9\u4e2d"]


def incident(i: int = 0, **kw) -> Incident:
    base = dict(incident_id=f"I{i:016x}", host="192.168.1.195", role="orig",
                first_ts=1700000000.0 + 100 * i, last_ts=1700000040.0 + 100 * i, conns=30,
                alerts=18, peak_alerts=18, score=3.5, peers=["10.0.0.1"], n_peers=18,
                resp_ports=["445/tcp", "139/tcp"], services=["smb"], detectors=["iforest", "gnn"],
                detector_alerts={"iforest": 18}, max_score=2.0,
                description="scanned 18 hosts on 445/tcp in 40 s",
                top_conns=[{"uid": f"CTop{i}", "id.resp_h": "10.0.0.1", "id.resp_p": 445,
                            "proto": "tcp"}])
    base.update(kw)
    return Incident(**base)


def incident_columns(script_path=zt.SCRIPTS / "verdicts.zeek") -> list[tuple[str, str]]:
    records = zt.record_decls(zt.parse(script_path))
    return (zt.flatten("IncidentIdx", records, logged_only=False)
            + zt.flatten("Incident", records, logged_only=False))


def zeek_view(data: bytes) -> zr.ZeekRead:
    """``data`` as Zeek's Input framework reads it into ZeekML::Incident."""
    script = zt.parse(zt.SCRIPTS / "verdicts.zeek")
    return zr.read(data, incident_columns(), zt.optional_fields(script, "Incident"))


def zeek_notices(view: zr.ZeekRead) -> list[str]:
    """What verdicts.zeek's raise_incident makes of each record, as ``zeek-cut note uid src dst
    p n msg sub < notice.log`` prints it (``-`` for unset, strings escaped as Zeek's log writer
    escapes them: a msg ``-`` is ``\\x2d``): src = host for an originator, dst = host for a
    responder; msg the description, or "<host>: <n> alerts" when it has none."""
    def given(v) -> bool:
        return v is not zr.UNSET and v != b""

    def logged(v: bytes | str) -> str:
        return format_value(v, "string").decode()

    lines = []
    for r in view.records:
        resp = r["role"] == b"resp"
        msg = r["msg"] if given(r["msg"]) else f"{r['host']}: {r['alerts']} alerts"
        lines.append("\t".join([
            "ZeekML::Suspicious_Host", logged(r["uid"]) if given(r["uid"]) else "-",
            "-" if resp else r["host"], r["host"] if resp else "-",
            str(r["p"]) if r["p"] is not zr.UNSET else "-", str(r["alerts"]), logged(msg),
            logged(r["sub"]) if given(r["sub"]) else "-"]))
    return sorted(lines)


# -- the file's layout equals the Zeek declaration ------------------------------------------

def test_incident_record_equals_incident_fields():
    assert incident_columns() == INCIDENT_FIELDS


@pytest.mark.parametrize("old,new", [
    ("\t\tconns: count;\n", "\t\tconns: double;\n"),
    ("\t\tlast_ts: time;\n", ""),
    ("\t\tpeers: count;\n", "\t\tn_peers: count;\n"),
])
def test_incident_drift_is_caught(tmp_path, old, new):
    src = (zt.SCRIPTS / "verdicts.zeek").read_text()
    assert old in src
    copy = tmp_path / "verdicts.zeek"
    copy.write_text(src.replace(old, new, 1))
    zt.parse(copy)
    assert incident_columns(copy) != INCIDENT_FIELDS


def test_header_and_values_as_zeek_reads_them(tmp_path):
    path = tmp_path / "verdicts.incidents.log"
    inc = incident(1)
    IncidentFeedbackWriter(path).write([inc])
    header, rows = read_verdict_file(path)
    assert header.path == INCIDENT_LOG_PATH
    assert list(zip(header.fields, header.types)) == INCIDENT_FIELDS
    view = zeek_view(path.read_bytes())
    assert view.dropped == []
    (r,) = view.records
    assert r == {
        "incident_id": b"I0000000000000001", "ts": 1700000100.0, "last_ts": 1700000140.0,
        "host": "192.168.1.195", "role": b"orig", "uid": b"CTop1", "p": 445, "proto": b"tcp",
        "conns": 30, "alerts": 18, "peers": 18, "score": 3.5, "model": b"iforest,gnn",
        "msg": b"scanned 18 hosts on 445/tcp in 40 s",
        # the sub of zeekml_incident.log's notice for the same incident
        "sub": incident_notice_record(inc)["sub"].encode()}


def test_dicts_from_incidents_jsonl_give_the_same_line(tmp_path):
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    IncidentFeedbackWriter(a, clock=lambda: 5.0).write([incident(2)])
    IncidentFeedbackWriter(b, clock=lambda: 5.0).write([incident(2).to_dict()])
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_descriptions_reach_zeek_unchanged(tmp_path, value):
    path = tmp_path / "i.log"
    IncidentFeedbackWriter(path).write([incident(description=value)])
    view = zeek_view(path.read_bytes())
    assert view.dropped == []
    assert view.records[0]["msg"] == value.encode()
    assert path.read_bytes().count(b"\n") == 10  # 8 header lines, 1 record, #close


def test_absent_parts_are_unset_for_zeek(tmp_path):
    path = tmp_path / "i.log"
    IncidentFeedbackWriter(path).write([incident(description="", top_conns=[], resp_ports=[],
                                                 detectors=[])])
    (r,) = zeek_view(path.read_bytes()).records
    assert r["msg"] is zr.UNSET and r["uid"] is zr.UNSET
    assert r["p"] is zr.UNSET and r["proto"] is zr.UNSET
    assert r["model"] == b""    # a required string: empty, never the literal "(empty)"


@pytest.mark.parametrize("kw", [dict(host="not-an-ip"), dict(host=None),
                                dict(first_ts=float("nan")), dict(last_ts=float("inf"))])
def test_an_incident_zeek_cannot_read_is_skipped_and_counted(tmp_path, kw, caplog):
    path = tmp_path / "i.log"
    w = IncidentFeedbackWriter(path)
    assert w.write([incident(**kw), incident(3)]) == 1
    assert w.skipped == 1
    assert "1 incidents Zeek could not read" in caplog.text
    assert [r["incident_id"] for r in zeek_view(path.read_bytes()).records] == [b"I0000000000000003"]


def test_ipv6_and_unknown_port_protocols(tmp_path):
    path = tmp_path / "i.log"
    IncidentFeedbackWriter(path).write([
        incident(1, host="fe80::1%eth0", role="resp", resp_ports=["8/icmp"]),
        incident(2, host="2001:db8::2", resp_ports=["99/sctp"]),
        incident(3, resp_ports=["notaport/tcp"])])
    recs = zeek_view(path.read_bytes()).records
    assert [(r["host"], r["p"], r["proto"]) for r in recs] == [
        ("fe80::1", 8, b"icmp"), ("2001:db8::2", 99, b"unknown_transport"),
        ("192.168.1.195", zr.UNSET, zr.UNSET)]


# -- exactly once: ids, restarts, rewrites -------------------------------------------------

def test_an_incident_is_added_once_also_across_a_restart(tmp_path):
    path = tmp_path / "i.log"
    w = IncidentFeedbackWriter(path)
    assert w.write([incident(1), incident(2)]) == 2
    first = path.read_bytes()
    assert w.write([incident(1)]) == 0 and path.read_bytes() == first
    w.close()
    # zeekml restarts and writes the same window again (a crash before its checkpoint)
    again = IncidentFeedbackWriter(path)
    assert len(again) == 2
    assert again.write([incident(2), incident(1)]) == 0
    assert path.read_bytes() == first       # not rewritten: Zeek sees no change at all
    assert again.write([incident(3)]) == 1
    ids = [r["incident_id"] for r in zeek_view(path.read_bytes()).records]
    assert ids == [b"I0000000000000001", b"I0000000000000002", b"I0000000000000003"]
    again.close()


def test_every_rewrite_is_seen_by_zeeks_reread_check(tmp_path):
    # Zeek's REREAD compares (inode, mtime second): no pair may repeat (see zeek_input)
    path = tmp_path / "i.log"
    w = IncidentFeedbackWriter(path)
    seen = set()
    for i in range(12):
        w.write([incident(i)])
        st = os.stat(path)
        key = (st.st_ino, int(st.st_mtime))
        assert key not in seen
        seen.add(key)
    w.close()


def test_bounded_by_count_and_age(tmp_path):
    t = [1000.0]
    w = IncidentFeedbackWriter(tmp_path / "i.log", max_incidents=3, max_age=60.0,
                               clock=lambda: t[0])
    w.write([incident(i) for i in range(5)])
    assert len(w) == 3 and "I0000000000000004" in w and "I0000000000000001" not in w
    t[0] += 61
    w.write([incident(9)])
    assert len(w) == 1


# -- the pair of files --with --zeek-feedback ------------------------------------------------

def V(i: int) -> Verdict:
    return Verdict(ts=1700000000.0 + i, uid=f"C{i}", orig_h="10.0.0.1", orig_p=40000 + i,
                   resp_h="10.0.0.2", resp_p=443, proto="tcp", score=2.0, alert=True,
                   model="gnn-v1", note="ZeekML::Anomalous_Flow", msg="odd", sub="x=1")


@pytest.mark.parametrize("given,want", [
    ("/var/lib/zeekml/verdicts.log", "/var/lib/zeekml/verdicts.incidents.log"),
    ("feedback", "feedback.incidents.log"),
    ("a.log.d/v.tsv", "a.log.d/v.tsv.incidents.log"),
    ("x.logs", "x.logs.incidents.log"),
])
def test_incident_path_is_derived_as_the_zeek_script_derives_it(given, want):
    assert incident_feedback_path(given) == want
    # verdicts.zeek's incident_file_for: cat(sub(path, /<re>/, ""), "<suffix>")
    src = (zt.SCRIPTS / "verdicts.zeek").read_text()
    body = src[src.index("function incident_file_for("):]
    body = body[:body.index("\n\t}\n")]
    m = re.search(r'return cat\(sub\(path, /(.+)/, ""\), "([^"]+)"\);', body)
    assert m, body
    zeek_re, suffix = m.groups()
    assert re.sub(zeek_re, "", given, count=1) + suffix == want


def test_default_feedback_sends_incidents_only(tmp_path):
    path = tmp_path / "verdicts.log"
    fb = ZeekFeedback(path)
    assert fb.write([V(1), V(2)], [incident(1)]) == 1
    fb.close()
    # the verdict file is there for Zeek's stream to find, with no rows
    _, verdict_rows = read_verdict_file(path)
    assert verdict_rows == []
    recs = zeek_view((tmp_path / "verdicts.incidents.log").read_bytes()).records
    assert [r["incident_id"] for r in recs] == [b"I0000000000000001"]
    assert fb.paths == {"zeek_feedback": str(path),
                        "zeek_incidents": str(tmp_path / "verdicts.incidents.log")}


def test_conn_notices_also_send_the_alerting_conns(tmp_path):
    path = tmp_path / "verdicts.log"
    fb = ZeekFeedback(path, conn_notices=True)
    assert fb.write([V(1), V(2)], [incident(1)]) == 3
    assert fb.write([V(2)], [incident(1)]) == 0
    fb.close()
    _, verdict_rows = read_verdict_file(path)
    assert [r["uid"] for r in verdict_rows] == [b"C1", b"C2"]


def test_files_exist_from_the_first_write_even_when_empty(tmp_path):
    fb = ZeekFeedback(tmp_path / "v.log")
    fb.write()
    fb.close()
    assert read_verdict_file(tmp_path / "v.log")[1] == []
    assert read_verdict_file(tmp_path / "v.incidents.log")[1] == []


# -- the Zeek side ------------------------------------------------------------------------------

def test_incident_input_stream_wiring():
    src = (zt.SCRIPTS / "verdicts.zeek").read_text()
    init = src[src.index("event zeek_init() &priority=-5"):]
    calls = re.findall(r"Input::add_table\(\[(.*?)\]\);", init, re.S)
    assert len(calls) == 2
    call = " ".join(calls[1].split())
    for part in ("$source=incidents_from", "$name=incident_stream", "$idx=IncidentIdx",
                 "$val=Incident", "$destination=incidents", "$mode=Input::REREAD",
                 "$ev=incident_entry", "$want_record=T"):
        assert part in call, part
    assert ('local incidents_from = incident_file != "" ? incident_file : '
            'incident_file_for(verdict_file);') in init
    # only the manager (or a standalone Zeek) reads it: each incident is raised once
    head = src[:src.index("event zeek_init() &priority=-5")]
    assert head.rstrip().endswith(
        "@if ( ! Cluster::is_enabled() || Cluster::local_node_type() == Cluster::MANAGER )")
    assert f'const incident_stream = "{INCIDENT_LOG_PATH}"' in src
    assert re.search(r"event incident_entry\(desc: Input::TableDescription, tpe: Input::Event,"
                     r"\s+left: IncidentIdx, right: Incident\)", src)
    body = src[src.index("function raise_incident("):src.index("event incident_entry(")]
    for part in ("$note=Suspicious_Host", "$n=inc$alerts", "$identifier=incident_id",
                 "$suppress_for=incident_suppress_for", "n$dst = inc$host", "n$src = inc$host",
                 "n$sub = inc$sub", "n$uid = inc$uid", "with_proto(inc$p, inc$proto)",
                 "hook incident_policy(incident_id, inc, n)", "NOTICE(n);"):
        assert part in body, part


def test_incident_btest_baseline_follows_from_the_file_by_zeeks_rules():
    view = zeek_view((TESTING / "files" / "verdicts.incidents.log").read_bytes())
    assert view.dropped == [] and len(view.records) == 4
    baseline = (TESTING / "Baseline" / "tests.incident-notices" / "incidents.txt").read_text()
    assert [ln for ln in baseline.splitlines() if not ln.startswith("###")] == zeek_notices(view)
    out = (TESTING / "Baseline" / "tests.incident-notices" / "out").read_text()
    assert f"incidents in table: {len(view.records)}, verdicts in table: 4, " \
           f"incident file: verdicts.incidents.log" in out
    btest = (TESTING / "tests" / "incident-notices.zeek").read_text()
    assert 'redef ZeekML::verdict_file = "verdicts.log";' in btest
    assert "incident_file =" not in btest.replace("incident_file_for", "")
