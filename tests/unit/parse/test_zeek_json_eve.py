"""Zeek JSON lines (epoch and ISO ts, json-streaming fields) and Suricata eve.json."""
import json

from zeekml.parse import Quarantine, detect_format
from zeekml.parse.suricata_eve import SuricataEveParser, flow_uid
from zeekml.parse.zeek_json import ZeekJsonParser, iso_to_epoch


def run(parser_cls, data: bytes, pieces=()):
    q = Quarantine()
    p = parser_cls("x.log", q)
    out, pos = [], 0
    for n in pieces:
        out += p.feed(data[pos:pos + n])
        pos += n
    out += p.feed(data[pos:]) + p.finish()
    return out, q, p


def test_iso_to_epoch_exact():
    assert iso_to_epoch("2018-03-24T17:16:39.739898Z") == 1521911799.739898
    assert iso_to_epoch("2021-06-06T15:59:46.457984+0200") == 1622987986.457984


ZEEK_JSON = (
    b'{"_path":"conn","_write_ts":"2018-03-24T17:16:39.739898Z","ts":"2018-03-24T17:16:39.739898Z",'
    b'"uid":"C1","id.orig_h":"10.0.0.1","id.orig_p":80,"id.resp_h":"10.0.0.2","id.resp_p":443,'
    b'"proto":"tcp","orig_bytes":18446744073709551615,"tunnel_parents":["Ca"]}\n'
    b'{"ts":1575413096.052279,"uid":"C2","id.orig_h":"10.0.0.1","id.orig_p":1,"id.resp_h":"10.0.0.3",'
    b'"id.resp_p":2,"proto":"udp"}\n'
)


def test_zeek_json_types_and_iso_ts():
    out, q, _ = run(ZeekJsonParser, ZEEK_JSON)
    assert q.count == 0
    rows = [r for b in out for r in b.batch.to_pylist()]
    assert rows[0]["ts"] == 1521911799.739898 and rows[1]["ts"] == 1575413096.052279
    assert rows[0]["orig_bytes"] == 2 ** 64 - 1 and rows[1]["orig_bytes"] is None
    assert rows[0]["uid"] == b"C1" and rows[0]["tunnel_parents"] == [b"Ca"]
    assert out[0].log_path == "conn"


def test_zeek_json_bad_lines_quarantined_rest_kept():
    data = ZEEK_JSON + b'{"ts": "not a time", "uid": "C3"}\n{broken\n[1,2]\n' + ZEEK_JSON
    out, q, p = run(ZeekJsonParser, data, pieces=[50, 300])
    assert sum(b.num_rows for b in out) == 4
    assert q.count == 3
    assert [r.line for r in q.records] == [3, 4, 5]
    assert p.consumed_offset == len(data)


EVE = [
    {"timestamp": "2021-06-06T15:59:46.457984+0200", "flow_id": 123456789, "event_type": "flow",
     "src_ip": "192.168.1.2", "src_port": 5000, "dest_ip": "8.8.8.8", "dest_port": 53, "proto": "UDP",
     "app_proto": "dns", "community_id": "1:abc=",
     "flow": {"pkts_toserver": 1, "pkts_toclient": 1, "bytes_toserver": 80, "bytes_toclient": 120,
              "start": "2021-06-06T15:59:46.000000+0200", "end": "2021-06-06T15:59:46.250000+0200",
              "state": "established"}},
    {"timestamp": "2021-06-06T15:59:47.000000+0200", "flow_id": 5, "event_type": "flow",
     "src_ip": "192.168.1.2", "src_port": 5001, "dest_ip": "1.2.3.4", "dest_port": 80, "proto": "TCP",
     "tcp": {"syn": True, "ack": True, "fin": True, "tcp_flags_ts": "1b", "tcp_flags_tc": "1b"},
     "flow": {"pkts_toserver": 5, "pkts_toclient": 4, "bytes_toserver": 400, "bytes_toclient": 900,
              "start": "2021-06-06T15:59:46.000000+0200", "end": "2021-06-06T15:59:47.000000+0200",
              "state": "closed"}},
    {"timestamp": "2021-06-06T15:59:46.457984+0200", "flow_id": 123456789, "event_type": "alert",
     "src_ip": "192.168.1.2", "src_port": 5000, "dest_ip": "8.8.8.8", "dest_port": 53, "proto": "UDP",
     "alert": {"signature_id": 1, "signature": "TEST", "category": "c", "severity": 2, "action": "allowed"}},
    {"timestamp": "2021-06-06T15:59:46.457984+0200", "event_type": "dns", "src_ip": "x"},
]


def test_eve_flows_and_alerts():
    data = b"".join(json.dumps(e).encode() + b"\n" for e in EVE) + b'{"event_type":"flow"}\n'
    out, q, p = run(SuricataEveParser, data)
    conns = [b for b in out if b.log_path == "conn"][0].batch.to_pylist()
    alerts = [b for b in out if b.log_path == "suricata_alert"][0].batch.to_pylist()
    assert len(conns) == 2 and len(alerts) == 1
    c = conns[0]
    assert (c["id.orig_h"], c["id.orig_p"], c["id.resp_h"], c["id.resp_p"], c["proto"]) == \
        ("192.168.1.2", 5000, "8.8.8.8", 53, "udp")
    assert c["duration"] == 0.25 and c["orig_pkts"] == 1 and c["resp_ip_bytes"] == 120
    assert c["conn_state"] == b"SF" and c["service"] == b"dns" and c["uid"] == flow_uid(123456789).encode()
    assert conns[1]["conn_state"] == b"SF"
    assert alerts[0]["flow_id"] == conns[0]["flow_id"]
    assert p.other_events["dns"] == 1
    assert q.count == 1 and "bad eve event" in q.records[0].reason


def test_detect_format(tmp_path):
    cases = {"a.log": b"#separator \\x09\n", "b.json": ZEEK_JSON,
             "c.json": json.dumps(EVE[0]).encode() + b"\n",
             "d.csv": b"ts,uid,id.orig_h,id.orig_p\n1,C,1.1.1.1,1\n"}
    kinds = {}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        kinds[name] = detect_format(str(tmp_path / name))
    assert kinds == {"a.log": "zeek-tsv", "b.json": "zeek-json", "c.json": "suricata-eve", "d.csv": "zeek-csv"}
