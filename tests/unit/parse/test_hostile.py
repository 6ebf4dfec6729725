"""Issue 17, hostile input: each one-line reproduction of the audit, as a regression test.

Every hostile line must end as a quarantined record naming file, line and reason, never as a
crash, a hang or a record whose fate depends on the lines around it.
"""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from zeekml.flows import conn_table
from zeekml.parse import Quarantine, detect_format, read_log
from zeekml.parse.lines import MAX_JSON_DEPTH, json_depth, too_deep_lines
from zeekml.parse.reject import DEFAULT_SAMPLE_CAP
from zeekml.parse.suricata_eve import SuricataEveParser, flow_uid
from zeekml.parse.zeek_json import ZeekJsonParser
from zeekml.parse.zeek_tsv import ZeekTsvParser


def run(parser_cls, data: bytes, source: str = "x.log"):
    q = Quarantine()
    p = parser_cls(source, q)
    out = p.feed(data) + p.finish()
    return [r for b in out for r in b.batch.to_pylist()], q, out


GOOD_JSON = (b'{"ts":1700000000.5,"uid":"C1","id.orig_h":"10.0.0.1","id.orig_p":80,'
             b'"id.resp_h":"10.0.0.2","id.resp_p":443,"proto":"tcp","conn_state":"SF",'
             b'"orig_bytes":10,"local_orig":true,"ip_proto":6}\n')
FLOW = {"timestamp": "2021-06-06T15:59:46.457984+0200", "flow_id": 7, "event_type": "flow",
        "src_ip": "192.168.1.2", "src_port": 5000, "dest_ip": "8.8.8.8", "dest_port": 53,
        "proto": "UDP", "flow": {"pkts_toserver": 1, "pkts_toclient": 1, "bytes_toserver": 80,
                                 "bytes_toclient": 120, "start": "2021-06-06T15:59:46.000000+0200",
                                 "end": "2021-06-06T15:59:46.250000+0200"}}
ALERT = {"timestamp": "2021-06-06T15:59:46.457984+0200", "flow_id": 7, "event_type": "alert",
         "src_ip": "192.168.1.2", "src_port": 5000, "dest_ip": "8.8.8.8", "dest_port": 53,
         "proto": "UDP", "alert": {"signature_id": 1, "signature": "T", "severity": 2}}


def eve(ev: dict) -> bytes:
    return json.dumps(ev).encode() + b"\n"


def with_flow(**flow) -> dict:
    ev = json.loads(json.dumps(FLOW))
    ev["flow"].update(flow)
    return ev


# -- negative flow_id: flow_uid looped forever ------------------------------------------------

def test_negative_flow_id_is_refused_not_a_hang():
    with pytest.raises(ValueError, match="flow_id"):
        flow_uid(-1)
    assert flow_uid(0) == "S0" and flow_uid(61) == "Sz" and flow_uid(62) == "S10"
    rows, q, _ = run(SuricataEveParser, eve(dict(FLOW, flow_id=-1)) + eve(FLOW))
    assert len(rows) == 1 and q.count == 1
    assert q.records[0].line == 1 and "flow_id" in q.records[0].reason


# -- deep nesting: segfault in pyarrow, RecursionError in json --------------------------------

def test_json_depth_ignores_brackets_in_strings():
    assert json_depth(b'[[["a"]]]') == 3
    assert json_depth(b'{"a":"[[[[\\"[[[","b":[1]}') == 2
    assert json_depth(b'{"a":"\\\\","b":[[1]]}') == 3          # an escaped backslash ends no string
    assert json_depth(b'{"a":"' + b"[" * 10_000 + b'"}') == 1
    assert too_deep_lines(b'{"a":1}\n' + b"[" * 65 + b"]" * 65 + b"\n" + b"[" * 64 + b"]" * 64 + b"\n") == {1}


@pytest.mark.parametrize("depth", [2_000, 20_000])
@pytest.mark.parametrize("parser_cls", [ZeekJsonParser, SuricataEveParser])
def test_deeply_nested_line_is_quarantined(parser_cls, depth):
    deep = b'{"a":' + b"[" * depth + b"]" * depth + b"}\n"
    good = GOOD_JSON if parser_cls is ZeekJsonParser else eve(FLOW)
    for data, line in ((deep, 1), (good + deep + good, 2)):
        rows, q, _ = run(parser_cls, data)
        assert len(rows) == data.count(b"\n") - 1
        assert q.count == 1 and q.records[0].line == line
        assert q.records[0].reason == f"JSON nested deeper than {MAX_JSON_DEPTH} levels"


def test_detect_format_survives_a_deeply_nested_first_line(tmp_path):
    p = tmp_path / "conn.json"
    p.write_bytes(b'{"a":' + b"[" * 2_000 + b"]" * 2_000 + b"}\n" + GOOD_JSON)
    assert detect_format(str(p)) == "zeek-json"
    rows = [r for b in read_log(str(p), Quarantine()) for r in b.batch.to_pylist()]
    assert len(rows) == 1


# -- eve counts outside uint64/uint16: OverflowError outside the per-line try -----------------

@pytest.mark.parametrize("ev", [
    with_flow(pkts_toserver=-1), with_flow(bytes_toclient=2 ** 64), with_flow(pkts_toclient=1.5),
    dict(FLOW, flow_id=2 ** 64), dict(FLOW, src_port=70000),
    dict(ALERT, alert={"signature_id": -3}), dict(ALERT, alert={"severity": 2 ** 64}),
    dict(ALERT, flow_id=-7),
], ids=["pkts-1", "bytes2**64", "pkts1.5", "flow_id2**64", "port70000", "sid-3", "sev2**64",
        "alert_flow_id-7"])
def test_eve_values_out_of_range_are_quarantined(ev):
    rows, q, _ = run(SuricataEveParser, eve(FLOW) + eve(ev) + eve(ALERT))
    assert len(rows) == 2 and q.count == 1 and q.records[0].line == 2
    assert q.records[0].reason.startswith("bad eve event")


def test_eve_largest_values_still_fit():
    ev = with_flow(bytes_toserver=2 ** 64 - 1)
    ev["flow_id"] = 2 ** 64 - 1
    rows, q, _ = run(SuricataEveParser, eve(ev))
    assert q.count == 0 and rows[0]["orig_ip_bytes"] == 2 ** 64 - 1 and rows[0]["flow_id"] == 2 ** 64 - 1


# -- invalid UTF-8 and lone surrogates --------------------------------------------------------

BAD_TEXT = [
    b'{"ts":1.0,"uid":"C\xff","id.orig_h":"10.0.0.1","id.resp_h":"10.0.0.2","proto":"tcp"}\n',
    b'{"ts":1.0,"uid":"C2","\\ud800":1,"id.orig_h":"10.0.0.1","proto":"tcp"}\n',
    b'{"ts":1.0,"uid":"\\udfff","id.orig_h":"10.0.0.1","proto":"tcp"}\n',
]


@pytest.mark.parametrize("line", BAD_TEXT, ids=["utf8", "surrogate-key", "surrogate-value"])
def test_bad_unicode_is_quarantined_alone_and_among_good_lines(line):
    for data, n_good in ((line, 0), (GOOD_JSON * 3 + line + GOOD_JSON, 4)):
        rows, q, out = run(ZeekJsonParser, data)
        assert len(rows) == n_good and q.count == 1, q.records
        assert q.records[0].reason.startswith("invalid JSON")
        for b in out:  # every value of what was kept decodes
            b.batch.to_pylist()
    rows, q, _ = run(SuricataEveParser, eve(FLOW) + line)
    assert len(rows) == 1 and q.count == 1


def test_valid_surrogate_pair_is_kept():
    rows, q, _ = run(ZeekJsonParser, b'{"ts":1.0,"uid":"\\ud83d\\ude00"}\n' + GOOD_JSON)
    assert q.count == 0 and rows[0]["uid"] == "\U0001F600".encode()


# -- a record's fate does not depend on its neighbours -----------------------------------------

JSON_EDGE = [
    b'{"ts":1.0,"id.orig_p":"80"}',            # a number as a string in a strict field
    b'{"ts":1.0,"id.orig_p":" 80"}',
    b'{"ts":1.0,"id.orig_h":5}',               # a number where an address is expected
    b'{"ts":1.0,"orig_bytes":1.0}',
    b'{"ts":1.0,"local_orig":"yes"}',
    b'{"ts":1.0,"ip_proto":"x"}',
    b'{"ts":1.0,"local_orig":1}',
    b'{"ts":true}',
    b'{"ts":1.0,"duration":"1.5"}',
    b'{"ts":1.0,"id.orig_p":70000}',
    b'{"ts":1.0,"orig_bytes":-1}',
    b'{"ts":1.0,"tunnel_parents":"C1"}',
    b'{"ts":1.0,"uid":1}',
    b'{"ts":1.0,"service":{"a":1},"uid":"C"}',
    b'{"ts":1.0,"_write_ts":"9999-12-31T23:59:59+2359"}',
    b'{"ts":"9999-12-31T23:59:59-2359"}',
    # found by the fuzz test (test_fuzz_readers.py)
    b'{"ts":[null,null],"uid":"C"}',           # Arrow IndexError combining a list<null> column
    b'{"ts":1.0,"x":36893488147419103232}',    # an int beyond 64 bits in an unknown field
    b'{"ts":1.0,"_path":1,"id.orig_h":"a","id.resp_h":"b","proto":"tcp","conn_state":"S0"}',
]


@pytest.mark.parametrize("line", JSON_EDGE)
def test_json_fate_is_the_same_alone_and_in_a_block(line):
    alone, qa, _ = run(ZeekJsonParser, line + b"\n")
    block, qb, _ = run(ZeekJsonParser, GOOD_JSON * 3 + line + b"\n" + GOOD_JSON)
    assert (len(alone), qa.count) in ((1, 0), (0, 1))
    assert len(block) == 4 + len(alone) and qb.count == qa.count


def test_a_path_that_is_no_name_names_no_log():
    rows, q, out = run(ZeekJsonParser, b'{"ts":1.0,"_path":1}\n{"ts":2.0,"_path":1}\n', "conn.json")
    assert len(rows) == 2 and q.count == 0 and {b.log_path for b in out} == {"conn"}


def test_json_wrong_conn_types_quarantined_and_conn_table_casts():
    data = GOOD_JSON + (b'{"ts":2.0,"local_orig":"yes","id.orig_h":"a","id.resp_h":"b",'
                        b'"proto":"tcp","conn_state":"S0"}\n') \
        + b'{"ts":3.0,"ip_proto":"x","id.orig_h":"a","id.resp_h":"b","proto":"tcp","conn_state":"S0"}\n' + GOOD_JSON
    rows, q, out = run(ZeekJsonParser, data, "conn.log")
    assert len(rows) == 2 and [r.line for r in q.records] == [2, 3]
    t = conn_table(out)
    assert t.num_rows == 2 and t.column("local_orig").to_pylist() == [True, True]


# -- Zeek TSV: numbers padded with spaces, unusable headers ------------------------------------

TSV_HEADER = (b"#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n"
              b"#path\tconn\n#fields\tts\tuid\tid.orig_h\tid.orig_p\tlocal_orig\torig_bytes\tduration\n"
              b"#types\ttime\tstring\taddr\tport\tbool\tcount\tinterval\n")
TSV_GOOD = b"1700000000.5\tC1\t10.0.0.1\t80\tT\t10\t0.5\n"


@pytest.mark.parametrize("line", [
    b"1700000000.5\tC1\t10.0.0.1\t 80\tT\t10\t0.5\n",
    b"1700000000.5\tC1\t10.0.0.1\t80 \tT\t10\t0.5\n",
    b"1700000000.5\tC1\t10.0.0.1\t0x50\tT\t10\t0.5\n",
    b"1700000000.5\tC1\t10.0.0.1\t80\tT\t+10\t0.5\n",
    b"1700000000.5\tC1\t10.0.0.1\t80\tT\t10\t+0.5\n",
    b" 1700000000.5\tC1\t10.0.0.1\t80\tT\t10\t0.5\n",
    b"1700000000.5\tC1\t10.0.0.1\t80\ttrue\t10\t0.5\n",
    b"1700000000.5\tC1\t10.0.0.1\t80\tT\t10\t1e3\n",
    b"1700000000.5\tC1\t10.0.0.1\t80\tT\t10\tnan\n",
    b"1700000000.5\tC1\t10.0.0.1\t65536\tT\t10\t0.5\n",
    b"1700000000.5\tC1\t10.0.0.\xff\t80\tT\t10\t0.5\n",
])
def test_tsv_fate_is_the_same_alone_and_in_a_block(line):
    alone, qa, _ = run(ZeekTsvParser, TSV_HEADER + line)
    block, qb, _ = run(ZeekTsvParser, TSV_HEADER + TSV_GOOD * 3 + line + TSV_GOOD)
    # and in a block that another bad line sends to the exact path
    slow, qs, _ = run(ZeekTsvParser, TSV_HEADER + TSV_GOOD + b"bad\n" + line + TSV_GOOD)
    assert (len(alone), qa.count) in ((1, 0), (0, 1))
    assert len(block) == 4 + len(alone) and qb.count == qa.count
    assert len(slow) == 2 + len(alone) and qs.count == qa.count + 1


def _header(fields: bytes, types: bytes) -> bytes:
    return (b"#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n"
            b"#path\tconn\n#fields\t" + fields + b"\n#types\t" + types + b"\n")


@pytest.mark.parametrize("fields,types,row,problem", [
    (b"ts\tid.orig_p", b"time\tstring", b"1.0\t80", "id.orig_p: declared 'string'"),
    (b"ts\tlocal_orig", b"time\tstring", b"1.0\tyes", "local_orig: declared 'string'"),
    (b"ts\tid.orig_p", b"string\tport", b"x\t80", "ts: declared 'string'"),
    (b"ts\tid.orig_p", b"time\tfoo", b"1.0\t80", "id.orig_p: declared 'foo'"),
    (b"ts\tx", b"time\tset[set[string]]", b"1.0\ta,b", "nested container"),
    (b"ts\tuid\tuid", b"time\tstring\tstring", b"1.0\tC\tD", "'uid' appears twice"),
    (b"ts\ttunnel_parents   label   detailed-label", b"time\tset[string]   string",
     b"1.0\t-   Benign   -", "3 names but 2 types"),
])
def test_tsv_unusable_header_quarantines_its_records(fields, types, row, problem):
    data = _header(fields, types) + row + b"\n" + row + b"\n"
    rows, q, _ = run(ZeekTsvParser, data, "conn.log")
    assert rows == [] and q.count == 3
    head, *recs = q.records
    assert head.line == 7 and head.reason.startswith("unusable header") and problem in head.reason
    assert [r.line for r in recs] == [8, 9]
    assert {r.reason for r in recs} == {"record under an unusable header: see line 7"}
    # a later good header is read again
    rows, q, _ = run(ZeekTsvParser, data + TSV_HEADER + TSV_GOOD, "conn.log")
    assert len(rows) == 1 and q.count == 3


def test_tsv_unknown_type_of_an_unknown_field_is_kept_as_bytes():
    rows, q, _ = run(ZeekTsvParser, _header(b"ts\tmine", b"time\tfoo") + b"1.0\tx\n")
    assert q.count == 0 and rows == [{"ts": 1.0, "mine": b"x"}]


def test_huge_counts_reach_the_conn_table_and_features():
    from zeekml.features.flow_features import FlowFeaturizer
    data = _header(b"ts\tid.orig_h\tid.resp_h\tproto\tconn_state\torig_bytes",
                   b"time\taddr\taddr\tenum\tstring\tcount") + \
        b"1.0\ta\tb\ttcp\tSF\t%d\n2.0\ta\tb\ttcp\tSF\t%d\n" % (2 ** 53 + 1, 2 ** 64 - 1)
    rows, q, out = run(ZeekTsvParser, data, "conn.log")
    t = conn_table(out)
    assert t.column("orig_bytes").to_pylist() == [2 ** 53 + 1, 2 ** 64 - 1]
    x = FlowFeaturizer().fit_transform(t)
    assert x.shape[0] == 2 and np.isfinite(x).all()


# -- quarantine cap ------------------------------------------------------------------------------

def test_quarantine_sample_is_capped_counts_stay_exact(tmp_path):
    p = tmp_path / "conn.json.gz"
    p.write_bytes(gzip.compress(GOOD_JSON + b"\n" * 5_000 + b"{bad\n" * 3))
    sunk = []
    q = Quarantine(sink=sunk.append)
    rows = [r for b in read_log(str(p), q) for r in b.batch.to_pylist()]
    assert len(rows) == 1
    assert q.count == 5_003 and q.by_reason == {"empty line": 5_000, "invalid JSON": 3}
    assert len(sunk) == DEFAULT_SAMPLE_CAP + 3
    assert q.suppressed == {(str(p), "empty line"): 5_000 - DEFAULT_SAMPLE_CAP}
    assert [r.line for r in sunk[:2]] == [2, 3]


def test_quarantine_cap_is_per_file_and_configurable():
    sunk = []
    q = Quarantine(sink=sunk.append, sample_cap=2)
    for path in ("a", "b"):
        for i in range(5):
            q.reject(path, i + 1, i, "empty line", b"")
    q.reject("a", 9, 9, "invalid JSON: x", b"{")
    assert [(r.path, r.line) for r in sunk] == [("a", 1), ("a", 2), ("b", 1), ("b", 2), ("a", 9)]
    assert q.count == 11 and q.suppressed_count == 6
    unlimited = Quarantine(sink=sunk.append, sample_cap=None)
    for i in range(3):
        unlimited.reject("a", i, i, "empty line", b"")
    assert len(sunk) == 8
    with pytest.raises(ValueError):
        Quarantine(sample_cap=-1)


def test_empty_marker_as_a_number_element_is_refused_on_both_paths():
    # found by the fuzz test: the exact path turned it into b"" and Arrow failed on the run
    data = _header(b"ts\tv", b"time\tvector[count]")
    for body in (b"1.0\t1,(empty)\n", b"1.0\t1,2\n1.0\t1,(empty)\n", b"x\n1.0\t1,(empty)\n"):
        rows, q, _ = run(ZeekTsvParser, data + body)
        assert q.records[-1].reason == "bad value in v (vector[count]): (empty) as a count element"
        assert len(rows) == body.count(b"\n") - q.count
    rows, q, _ = run(ZeekTsvParser, _header(b"ts\tv", b"time\tvector[string]") + b"1.0\ta,(empty)\n")
    assert q.count == 0 and rows[0]["v"] == [b"a", b""]
