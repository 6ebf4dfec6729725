"""Which log a file's records are: by content where the records do not say (Zeek JSON without
``_path``), and eve.json events other than flows and alerts counted, never dropped."""
from __future__ import annotations

import json
import logging

import pytest

from zeekml.flows import is_conn_batch
from zeekml.parse import Quarantine, read_log
from zeekml.parse.suricata_eve import SuricataEveParser, is_other_event_batch
from zeekml.pipeline.chunked import read_conn_batches
from zeekml.pipeline.options import ScoreSummary

CONN = {"ts": 1575413096.052279, "uid": "CH53301MTU21BMj2Bj", "id.orig_h": "10.18.20.97",
        "id.orig_p": 49187, "id.resp_h": "10.18.20.8", "id.resp_p": 88, "proto": "tcp",
        "service": "krb_tcp", "duration": 0.0012, "orig_bytes": 242, "resp_bytes": 283,
        "conn_state": "RSTR", "missed_bytes": 0, "history": "ShADdFar", "orig_pkts": 4,
        "orig_ip_bytes": 414, "resp_pkts": 4, "resp_ip_bytes": 455}
DNS = {"ts": 1575413096.1, "uid": "Cx", "id.orig_h": "10.0.0.1", "id.orig_p": 5353,
       "id.resp_h": "10.0.0.2", "id.resp_p": 53, "proto": "udp", "query": "example.com"}


def write_json_lines(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.mark.parametrize("name", ["zeek-conn.json", "flows.json", "conn_20131203.json",
                                  "x.log"])
def test_json_conn_records_without_path_are_conn_whatever_the_file_name(tmp_path, name):
    path = tmp_path / name
    write_json_lines(path, [CONN, dict(CONN, uid="C2")])
    batches = list(read_log(str(path)))
    assert [(b.log_path, b.num_rows, is_conn_batch(b)) for b in batches] == [("conn", 2, True)]


@pytest.mark.parametrize("name,path", [("dns.log", "dns"), ("http.json", "http")])
def test_json_records_of_another_log_keep_the_name_of_their_file(tmp_path, name, path):
    p = tmp_path / name
    write_json_lines(p, [DNS])
    batches = list(read_log(str(p)))
    assert [(b.log_path, is_conn_batch(b)) for b in batches] == [(path, False)]


def test_json_path_field_wins_over_content(tmp_path):
    p = tmp_path / "flows.json"
    write_json_lines(p, [dict(CONN, _path="conn_long"), dict(CONN, _path="conn_long")])
    assert [b.log_path for b in read_log(str(p))] == ["conn_long"]


FLOW = {"timestamp": "2021-06-06T15:59:46.457984+0200", "flow_id": 5, "event_type": "flow",
        "src_ip": "10.0.0.1", "src_port": 5000, "dest_ip": "10.0.0.2", "dest_port": 53,
        "proto": "UDP", "flow": {"pkts_toserver": 1, "pkts_toclient": 1, "bytes_toserver": 60,
                                 "bytes_toclient": 90, "start": "2021-06-06T15:59:46.457984+0200",
                                 "end": "2021-06-06T15:59:46.500000+0200"}}
EVE_DNS = {"timestamp": "2021-06-06T15:59:46.457984+0200", "event_type": "dns",
           "src_ip": "10.0.0.1", "dest_ip": "10.0.0.2", "proto": "UDP"}


def test_eve_events_other_than_flows_and_alerts_are_rows_of_their_own_batches():
    q = Quarantine()
    p = SuricataEveParser("eve.json", q)
    events = [EVE_DNS, FLOW, dict(EVE_DNS, event_type="tls"), EVE_DNS,
              dict(EVE_DNS, event_type="a b\n"), {"timestamp": "x"}]
    out = p.feed(b"".join(json.dumps(e).encode() + b"\n" for e in events)) + p.finish()
    other = {b.log_path: b.batch.column("event_type").to_pylist()
             for b in out if is_other_event_batch(b)}
    assert other == {"suricata_dns": ["dns", "dns"], "suricata_tls": ["tls"],
                     "suricata_a_b_": ["a b\n"]}
    assert [b.log_path for b in out if not is_other_event_batch(b)] == ["conn"]
    # an object with no event_type is no eve event: quarantined, not counted as one
    assert q.count == 1 and "no event_type" in q.records[0].reason
    assert sum(b.num_rows for b in out) + q.count == len(events)


def test_score_counts_eve_dns_events_as_other_records_and_warns(tmp_path, caplog):
    only_dns = tmp_path / "eve.json"
    write_json_lines(only_dns, [EVE_DNS] * 3)
    mixed = tmp_path / "mixed-eve.json"
    write_json_lines(mixed, [EVE_DNS, FLOW, EVE_DNS])
    summary = ScoreSummary()
    with caplog.at_level(logging.WARNING):
        conns = list(read_conn_batches([str(only_dns), str(mixed)], Quarantine(), summary))
    assert sum(b.num_rows for b in conns) == 1
    assert (summary.records_read, summary.conn_records, summary.other_records) == (6, 1, 5)
    assert f"{only_dns}: no conn records (#path suricata_dns)" in caplog.text
    assert str(mixed) not in caplog.text


def test_a_record_is_conn_by_its_own_fields_not_its_neighbours(tmp_path):
    # a record of another kind in the same block as conn records stays out of the conn batches,
    # and the records stay in file order
    path = tmp_path / "flows.json"
    write_json_lines(path, [CONN, {"ts": 1.0, "note": "x"}, dict(CONN, uid="C2")])
    got = [(b.log_path, b.batch.column("ts").to_pylist()) for b in read_log(str(path))]
    assert got == [("conn", [CONN["ts"]]), ("flows", [1.0]), ("conn", [CONN["ts"]])]
