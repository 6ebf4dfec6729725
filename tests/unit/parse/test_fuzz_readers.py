"""Hypothesis fuzz of every reader (issue 17): Zeek TSV, Zeek JSON lines and eve.json, whole and
fed in chunks as the tailer does, then ``conn_table`` and the flow features.

Properties: nothing raises but ``ZeekmlError``s (here: nothing at all); every input line is a
record or a quarantined record (the counts add up); chunking changes nothing; and a line gets
the same fate alone as inside a block of other lines. Inputs mix valid records with the hostile
values of the audit (wrong JSON types, padded numbers, ``0x50``, invalid UTF-8, lone surrogates,
deep nesting, out-of-range counts). The budget is fixed and derandomized so CI is stable.
"""
from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings, strategies as st

from zeekml.features.flow_features import FlowFeaturizer
from zeekml.flows import conn_table, is_conn_batch
from zeekml.parse import Quarantine
from zeekml.parse.suricata_eve import SuricataEveParser
from zeekml.parse.zeek_json import ZeekJsonParser
from zeekml.parse.zeek_tsv import ZeekTsvParser
from zeekml.parse.zeek_types import KNOWN_FIELD_TYPES

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- inputs --------------------------------------------------------------------------------------

HOSTILE_TEXT = ["80", " 80", "0x50", "yes", "T", "-", "", "1e3", "2018-03-24T17:16:39.739898Z",
                "9999-12-31T23:59:59+2359", "\\x2d", "a,b", "10.0.0.1", "fe80::1%eth0"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70),
    st.sampled_from([0, 1, 6, 80, 65535, 65536, -1, 2 ** 53 + 1, 2 ** 63, 2 ** 64 - 1, 2 ** 64]),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0.5, 1.0, 1e300]),
    st.text(max_size=6), st.sampled_from(HOSTILE_TEXT))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=5)
CONN_KEYS = ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service",
             "duration", "orig_bytes", "resp_bytes", "conn_state", "local_orig", "local_resp",
             "missed_bytes", "history", "orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes",
             "tunnel_parents", "ip_proto", "_path", "_write_ts", "src_port", "label", "x"]
keys = st.sampled_from(CONN_KEYS + sorted(KNOWN_FIELD_TYPES)) | st.text(max_size=4)


def _good_conn(i: int) -> dict:
    return {"ts": 1_700_000_000 + i, "uid": f"C{i}", "id.orig_h": "10.0.0.1", "id.orig_p": 1000 + i,
            "id.resp_h": "10.0.0.2", "id.resp_p": 80, "proto": "tcp", "conn_state": "SF",
            "orig_bytes": i, "orig_pkts": 1, "local_orig": True}


@st.composite
def json_record(draw) -> bytes:
    rec = _good_conn(draw(st.integers(0, 9)))
    for k, v in draw(st.dictionaries(keys, values, max_size=4)).items():
        rec[k] = v
    for k in draw(st.lists(st.sampled_from(sorted(rec)), max_size=2)):
        rec.pop(k, None)
    return json.dumps(rec).encode()


def _mutate(line: bytes, how: int, at: int) -> bytes:
    at = at % (len(line) + 1)
    return [line, line[:at] + b"\xff" + line[at:], line[:at] + b'"\\ud800"' + line[at:],
            line[:at] + b" " + line[at:], line[:at] + line[at + 1:],
            line.replace(b":", b": ", 1), line.replace(b"{", b'{"\\udc00":1,', 1)][how]


@st.composite
def hostile_line(draw, record) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=24)).replace(b"\n", b"")
    if kind == 1:
        d = draw(st.sampled_from([63, 64, 65, 300, 3000]))
        return b'{"ts":1.0,"a":' + b"[" * d + b"]" * d + b"}"
    line = draw(record)
    if kind < 5:
        return _mutate(line, draw(st.integers(0, 6)), draw(st.integers(0, 200)))
    return line


def lines_input(line_strategy, n_max: int = 8):
    return st.tuples(st.lists(line_strategy, min_size=1, max_size=n_max), st.booleans())


def join(lines: list[bytes], final_newline: bool) -> bytes:
    return b"\n".join(lines) + (b"\n" if final_newline else b"")


# TSV: a conn header with every kind of column, and fields from the hostile tokens
TSV_FIELDS = [("ts", "time"), ("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"),
              ("id.resp_h", "addr"), ("id.resp_p", "port"), ("proto", "enum"), ("duration", "interval"),
              ("orig_bytes", "count"), ("conn_state", "string"), ("local_orig", "bool"),
              ("tunnel_parents", "set[string]"), ("v", "vector[count]"), ("n", "int")]
TSV_HEADER = (b"#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn\n"
              b"#fields\t" + b"\t".join(f.encode() for f, _ in TSV_FIELDS) + b"\n"
              b"#types\t" + b"\t".join(t.encode() for _, t in TSV_FIELDS) + b"\n")
GOOD_TSV = [b"1700000000.5", b"C1", b"10.0.0.1", b"80", b"10.0.0.2", b"443", b"tcp", b"0.5", b"10",
            b"SF", b"T", b"(empty)", b"1,2", b"-3"]
TOKENS = [b"-", b"(empty)", b"\\x2d", b" 80", b"80 ", b"0x50", b"1e3", b"nan", b"-inf", b"T", b"F",
          b"true", b"\xff", b"a,b", b"\\xZZ", b"", b"65536", b"18446744073709551616", b"-1", b"+1",
          b"1.5", b"X.X", b"1,-,(empty)", b"9223372036854775808", b"\\x09", b"#"]
TSV_META = [b"#close\t2024-01-01-10-00-00", b"#fields\tts\tuid", b"#types\ttime\tstring",
            b"#fields\tts\tts", b"#types\ttime\tset[set[string]]", b"#fields\tts\tid.orig_p",
            b"#types\ttime\tstring", b"#unset_field\tX", b"#separator \\x2c"]


@st.composite
def tsv_record(draw) -> bytes:
    fields = list(GOOD_TSV)
    for i in draw(st.lists(st.integers(0, len(fields) - 1), max_size=3)):
        fields[i] = draw(st.sampled_from(TOKENS) | st.binary(max_size=5).map(
            lambda b: b.replace(b"\t", b"").replace(b"\n", b"")))
    extra = draw(st.sampled_from([0, 0, 0, 0, -1, 1]))
    fields = fields[:extra] if extra < 0 else fields + [b"x"] * extra
    return b"\t".join(fields)


@st.composite
def eve_record(draw) -> bytes:
    ints = st.integers(-(2 ** 65), 2 ** 65) | st.sampled_from([0, 1, 2 ** 64 - 1, 2 ** 64, -1])
    kind = draw(st.sampled_from(["flow", "flow", "alert", "dns", None]))
    ev = {"timestamp": "2021-06-06T15:59:46.457984+0200", "event_type": kind,
          "flow_id": draw(ints | st.none()), "src_ip": draw(st.sampled_from(["10.0.0.1", 5, None])),
          "src_port": draw(st.integers(-2, 70000)), "dest_ip": "10.0.0.2", "dest_port": 80,
          "proto": draw(st.sampled_from(["TCP", "UDP", "ICMP", 6])),
          "flow": {"pkts_toserver": draw(ints | values), "pkts_toclient": draw(ints),
                   "bytes_toserver": draw(ints), "bytes_toclient": 5,
                   "start": draw(st.sampled_from(["2021-06-06T15:59:46.000000+0200", "x", 5])),
                   "end": "2021-06-06T15:59:47.000000+0200", "state": "closed"},
          "tcp": draw(st.sampled_from([{"syn": True, "tcp_flags_ts": "1b", "tcp_flags_tc": "zz"},
                                       {"tcp_flags_ts": "1b"}, [], None])),
          "alert": {"signature_id": draw(ints), "severity": draw(ints), "signature": "s"}}
    for k, v in draw(st.dictionaries(st.sampled_from(sorted(ev)), values, max_size=2)).items():
        ev[k] = v
    return json.dumps(ev).encode()


# -- running a parser --------------------------------------------------------------------------

def parse(parser_cls, data: bytes, cuts: list[int] = ()):
    """Rows, quarantine and parser after feeding ``data`` cut at ``cuts`` (whole when empty)."""
    q = Quarantine(sample_cap=None)
    p = parser_cls("fuzz.log", q)
    out, pos = [], 0
    for c in sorted(set(cuts)):
        out += p.feed(data[pos:c])
        pos = c
    out += p.feed(data[pos:]) + p.finish()
    assert p.consumed_offset == len(data)
    return out, q, p


def rejects(q: Quarantine) -> list[tuple[int, int, str]]:
    return [(r.line, r.offset, r.reason) for r in q.records]


def strict_columns(batches) -> dict:
    """The conn columns every parser types strictly (text columns may be inferred per block)."""
    t = conn_table([b for b in batches if is_conn_batch(b)])
    if t.num_rows:
        x = FlowFeaturizer().fit_transform(t)
        assert x.shape[0] == t.num_rows
    cols = ["ts", "id.orig_p", "id.resp_p", "duration", "orig_bytes", "local_orig", "orig_pkts",
            "resp_ip_bytes", "ip_proto"]
    return {c: [repr(v) for v in t.column(c).to_pylist()] for c in cols}


def n_rows(out) -> int:
    return sum(b.num_rows for b in out)


def n_lines(data: bytes) -> int:
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def check_chunked(parser_cls, data: bytes, cuts: list[int]):
    whole, qw, pw = parse(parser_cls, data)
    parts, qc, _ = parse(parser_cls, data, cuts)
    assert n_rows(parts) == n_rows(whole)
    assert rejects(qc) == rejects(qw)
    assert strict_columns(parts) == strict_columns(whole)
    return whole, qw, pw


def check_alone_vs_block(parser_cls, lines: list[bytes], prefix: bytes = b"", first_line: int = 1):
    """Each line's fate (kept or quarantined, and why) is the same alone and in the block."""
    _, q, _ = parse(parser_cls, prefix + join(lines, True))
    in_block = {r.line - first_line + 1: r.reason for r in q.records if r.line >= first_line}
    for i, line in enumerate(lines, 1):
        _, qa, _ = parse(parser_cls, prefix + line + b"\n")
        alone = [r.reason for r in qa.records if r.line >= first_line]
        assert alone == ([in_block[i]] if i in in_block else []), (line, alone, in_block.get(i))


# -- the properties ------------------------------------------------------------------------------

cuts = st.lists(st.integers(0, 4000), max_size=6)


@FUZZ
@given(lines_input(hostile_line(json_record())), cuts)
def test_zeek_json(inp, cut_at):
    lines, nl = inp
    data = join(lines, nl)
    out, q, _ = check_chunked(ZeekJsonParser, data, [c % (len(data) + 1) for c in cut_at])
    assert n_rows(out) + q.count == n_lines(data)


@FUZZ
@given(st.lists(hostile_line(json_record()).filter(lambda x: x.strip()), min_size=1, max_size=6))
def test_zeek_json_fate_alone_or_in_a_block(lines):
    check_alone_vs_block(ZeekJsonParser, lines)


@FUZZ
@given(lines_input(hostile_line(eve_record())), cuts)
def test_suricata_eve(inp, cut_at):
    lines, nl = inp
    data = join(lines, nl)
    out, q, p = check_chunked(SuricataEveParser, data, [c % (len(data) + 1) for c in cut_at])
    # every line is a row (flows, alerts, other events) or quarantined
    assert n_rows(out) + q.count == n_lines(data)


@FUZZ
@given(st.lists(hostile_line(eve_record()).filter(lambda x: x.strip()), min_size=1, max_size=6))
def test_suricata_eve_fate_alone_or_in_a_block(lines):
    check_alone_vs_block(SuricataEveParser, lines)


@FUZZ
@given(lines_input(tsv_record() | st.sampled_from(TSV_META) | st.binary(max_size=12).map(
    lambda b: b.replace(b"\n", b"")), n_max=10), cuts)
def test_zeek_tsv(inp, cut_at):
    lines, nl = inp
    data = TSV_HEADER + join(lines, nl)
    out, q, _ = check_chunked(ZeekTsvParser, data, [c % (len(data) + 1) for c in cut_at])
    body = data[len(TSV_HEADER):]
    records = [ln for ln in body.split(b"\n")[:n_lines(body)] if not ln.startswith(b"#")]
    header_rejects = sum(1 for r in q.records if r.reason.startswith(("unusable header", "#fields")))
    assert n_rows(out) + q.count - header_rejects == len(records)


@FUZZ
@given(st.lists(tsv_record().filter(lambda x: not x.startswith(b"#")), min_size=1, max_size=8))
def test_zeek_tsv_fate_alone_or_in_a_block(lines):
    check_alone_vs_block(ZeekTsvParser, lines, TSV_HEADER, TSV_HEADER.count(b"\n") + 1)


# IoT-23's packed column and its CSV conversion: the same reader with other layouts
PACKED_HEADER = (b"#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n"
                 b"#path\tconn\n#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tproto\t"
                 b"tunnel_parents   label   detailed-label\n"
                 b"#types\ttime\tstring\taddr\tport\taddr\tenum\tset[string]   string   string\n")
GOOD_PACKED = [b"1.5", b"C1", b"10.0.0.1", b"80", b"10.0.0.2", b"tcp", b"-   Benign   -"]
CSV_HEADER = b"ts,uid,id.orig_h,id.orig_p,id.resp_h,id.resp_p,proto,conn_state,orig_bytes,local_orig\n"
GOOD_CSV = [b"1.5", b"C1", b"10.0.0.1", b"80", b"10.0.0.2", b"443", b"tcp", b"SF", b"10", b"T"]


@st.composite
def layout_record(draw, good: list[bytes], sep: bytes) -> bytes:
    fields = list(good)
    for i in draw(st.lists(st.integers(0, len(fields) - 1), max_size=3)):
        fields[i] = draw(st.sampled_from(TOKENS + [b"-   -", b"a   b   c   d", b"x,y"])
                         | st.binary(max_size=5).map(lambda b: b.replace(b"\n", b"")))
    return sep.join(fields)


@FUZZ
@given(st.lists(layout_record(GOOD_PACKED, b"\t"), min_size=1, max_size=6), cuts)
def test_iot23_packed_column(lines, cut_at):
    lines = [ln for ln in lines if not ln.startswith(b"#")] or [b"\t".join(GOOD_PACKED)]
    data = PACKED_HEADER + join(lines, True)
    out, q, _ = check_chunked(ZeekTsvParser, data, [c % (len(data) + 1) for c in cut_at])
    assert n_rows(out) + q.count == len(lines)
    check_alone_vs_block(ZeekTsvParser, lines, PACKED_HEADER, PACKED_HEADER.count(b"\n") + 1)


class _Csv(ZeekTsvParser):
    def __init__(self, source, quarantine):
        super().__init__(source, quarantine, csv=True)


@FUZZ
@given(st.lists(layout_record(GOOD_CSV, b","), min_size=1, max_size=6), cuts)
def test_zeek_csv(lines, cut_at):
    data = CSV_HEADER + join(lines, True)
    out, q, _ = check_chunked(_Csv, data, [c % (len(data) + 1) for c in cut_at])
    assert n_rows(out) + q.count == len(lines)
    check_alone_vs_block(_Csv, lines, CSV_HEADER, 2)


def test_the_strategies_reach_both_fates():
    """The fuzz inputs are not all good or all bad: both fates occur on each path."""
    good = json.dumps(_good_conn(1)).encode()
    for parser_cls, line in ((ZeekJsonParser, good), (ZeekTsvParser, b"\t".join(GOOD_TSV))):
        prefix = TSV_HEADER if parser_cls is ZeekTsvParser else b""
        out, q, _ = parse(parser_cls, prefix + line + b"\n" + line[:-3] + b"\xff\n")
        assert n_rows(out) == 1 and q.count == 1
