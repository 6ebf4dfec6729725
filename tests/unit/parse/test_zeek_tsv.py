"""The Zeek TSV reader on hand-built logs: types, escaping, header changes, malformed lines."""
import gzip

import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from zeekml.parse import Quarantine, read_log, read_table
from zeekml.parse.zeek_tsv import ZeekTsvParser

HEADER = (b"#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n"
          b"#path\tconn\n#open\t2024-01-01-10-00-00\n"
          b"#fields\tts\tuid\tid.orig_h\tid.orig_p\tservice\tduration\torig_bytes\tlocal_orig\ttunnel_parents\tv\n"
          b"#types\ttime\tstring\taddr\tport\tstring\tinterval\tcount\tbool\tset[string]\tvector[count]\n")
ROWS = [
    b"1700000000.123456\tC1\t10.0.0.1\t80\thttp\t1.500000\t18446744073709551615\tT\t(empty)\t1,2,3\n",
    b"1700000001.000000\tC2\tfe80::1\t53\t-\t-\t-\tF\tCa,Cb\t(empty)\n",
    b"1700000002.000000\tC3\t10.0.0.2\t0\t\\x2d\t0.000001\t0\t-\t-\t-\n",
    b"1700000003.000000\tC\\x09tab\t10.0.0.3\t1\t(empty)\t0.1\t5\tT\ta\\x2cb,c\t7\n",
    b"1700000004.000000\tC5\t10.0.0.4\t2\t\\xff\\\\x41\t2\t6\tF\t\\x28empty)\t-\n",
]
EXPECTED = [
    {"ts": 1700000000.123456, "uid": b"C1", "id.orig_h": "10.0.0.1", "id.orig_p": 80, "service": b"http",
     "duration": 1.5, "orig_bytes": 2 ** 64 - 1, "local_orig": True, "tunnel_parents": [], "v": [1, 2, 3]},
    {"ts": 1700000001.0, "uid": b"C2", "id.orig_h": "fe80::1", "id.orig_p": 53, "service": None,
     "duration": None, "orig_bytes": None, "local_orig": False, "tunnel_parents": [b"Ca", b"Cb"], "v": []},
    {"ts": 1700000002.0, "uid": b"C3", "id.orig_h": "10.0.0.2", "id.orig_p": 0, "service": b"-",
     "duration": 0.000001, "orig_bytes": 0, "local_orig": None, "tunnel_parents": None, "v": None},
    {"ts": 1700000003.0, "uid": b"C\ttab", "id.orig_h": "10.0.0.3", "id.orig_p": 1, "service": b"",
     "duration": 0.1, "orig_bytes": 5, "local_orig": True, "tunnel_parents": [b"a,b", b"c"], "v": [7]},
    {"ts": 1700000004.0, "uid": b"C5", "id.orig_h": "10.0.0.4", "id.orig_p": 2, "service": b"\xff\\x41",
     "duration": 2.0, "orig_bytes": 6, "local_orig": False, "tunnel_parents": [b"(empty)"], "v": None},
]


def parse(data: bytes, pieces: list[int] | None = None, **kw):
    q = Quarantine()
    p = ZeekTsvParser("mem.log", q, **kw)
    out = []
    if pieces:
        pos = 0
        for n in pieces:
            out += p.feed(data[pos:pos + n])
            pos += n
        out += p.feed(data[pos:])
    else:
        out += p.feed(data)
    out += p.finish()
    return out, q, p


def rows(batches):
    return [r for b in batches for r in b.batch.to_pylist()]


def test_types_and_escapes():
    batches, q, p = parse(HEADER + b"".join(ROWS) + b"#close\t2024-01-01-11-00-00\n")
    assert q.count == 0
    assert rows(batches) == EXPECTED
    b = batches[0]
    assert b.log_path == "conn"
    assert b.batch.schema.field("orig_bytes").type == pa.uint64()
    assert b.batch.schema.field("id.orig_p").type == pa.uint16()
    assert b.zeek_types["tunnel_parents"] == "set[string]"


def test_fast_path_equals_exact_path():
    data = HEADER + b"".join(ROWS)
    fast, _, pf = parse(data)
    # CR bytes force the exact path; compare on rows without them
    exact, _, pe = parse(data.replace(b"C1\t", b"C1\t"), max_line_bytes=1 << 20)
    assert pf.fast_rows == len(ROWS)
    p2 = ZeekTsvParser("mem.log", Quarantine())
    p2.feed(HEADER)
    slow = p2._slow(b"".join(ROWS), 9)
    assert slow.to_pylist() == rows(fast)


def test_fed_in_pieces_equals_whole():
    data = HEADER + b"".join(ROWS)
    whole = rows(parse(data)[0])
    for cut in range(1, len(data), 7):   # cuts inside escapes and UTF-8 sequences too
        assert rows(parse(data, [cut])[0]) == whole


def test_partial_last_line_waits_until_finish():
    q = Quarantine()
    p = ZeekTsvParser("mem.log", q)
    data = HEADER + ROWS[0] + ROWS[1][:10]
    out = p.feed(data)
    assert sum(b.num_rows for b in out) == 1
    assert p.consumed_offset == len(HEADER + ROWS[0])
    out = p.feed(ROWS[1][10:])
    assert sum(b.num_rows for b in out) == 1


def test_malformed_lines_quarantined_with_line_and_offset():
    bad = b"1700000009.000000\tCX\tonly-three\n"
    data = HEADER + ROWS[0] + bad + ROWS[1] + b"notatime\tC9\t10.0.0.9\t1\t-\t-\t-\t-\t-\t-\n"
    batches, q, _ = parse(data)
    assert [r["uid"] for r in rows(batches)] == [b"C1", b"C2"]
    assert q.count == 2
    r0, r1 = q.records
    assert (r0.line, r0.offset) == (10, len(HEADER + ROWS[0]))
    assert r0.reason.startswith("field count: expected 10, got 3")
    assert r1.line == 12 and "bad value in ts" in r1.reason
    assert r0.sample == bad.rstrip(b"\n")


def test_crlf_and_empty_lines_are_records_not_terminators():
    data = HEADER + ROWS[0].replace(b"\n", b"\r\n") + b"\n" + ROWS[1]
    batches, q, _ = parse(data)
    # the CR lands in the last (vector[count]) field: that record is malformed, not silently fixed
    assert [r["uid"] for r in rows(batches)] == [b"C2"]
    assert q.count == 2
    assert {r.reason.split(" (")[0] for r in q.records} == {"bad value in v", "empty line"}


def test_overlong_line_bounded_and_quarantined():
    huge = b"1700000000.000000\tC1\t10.0.0.1\t80\t" + b"A" * (3 << 20) + b"\t1\t1\tT\t-\t-\n"
    data = HEADER + ROWS[0] + huge + ROWS[1]
    batches, q, p = parse(data, pieces=[len(HEADER) + 10, 1 << 20, 1 << 20], max_line_bytes=1 << 20)
    assert [r["uid"] for r in rows(batches)] == [b"C1", b"C2"]
    assert q.count == 1 and "longer than" in q.records[0].reason
    assert len(q.records[0].sample) <= 512
    assert p.consumed_offset == len(data)


def test_header_change_mid_file_and_separator_change():
    other = (b"#separator \\x7c\n#set_separator|;\n#empty_field|(empty)\n#unset_field|-\n#path|dns\n"
             b"#fields|ts|query|answers\n#types|time|string|vector[string]\n"
             b"1.000000|example.com|a;b\n")
    batches, q, _ = parse(HEADER + ROWS[0] + other + HEADER + ROWS[1])
    assert q.count == 0
    assert [b.log_path for b in batches] == ["conn", "dns", "conn"]
    assert batches[1].batch.to_pylist() == [{"ts": 1.0, "query": b"example.com", "answers": [b"a", b"b"]}]


def test_record_before_header_quarantined():
    batches, q, _ = parse(ROWS[0] + HEADER + ROWS[1])
    assert [r["uid"] for r in rows(batches)] == [b"C2"]
    assert q.count == 1 and "before a complete" in q.records[0].reason


def test_iot23_packed_last_column():
    h = (b"#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn\n"
         b"#fields\tts\tuid\ttunnel_parents   label   detailed-label\n"
         b"#types\ttime\tstring\tset[string]   string   string\n")
    data = h + b"1.000000\tC1\t-   Malicious   PartOfAHorizontalPortScan\n2.000000\tC2\t-   Benign   -"
    batches, q, _ = parse(data)   # IoT-23 files end without a newline
    assert q.count == 0
    assert rows(batches) == [
        {"ts": 1.0, "uid": b"C1", "tunnel_parents": None, "label": b"Malicious",
         "detailed-label": b"PartOfAHorizontalPortScan"},
        {"ts": 2.0, "uid": b"C2", "tunnel_parents": None, "label": b"Benign", "detailed-label": None},
    ]


def test_gzip_and_read_table(tmp_path):
    p = tmp_path / "conn.log.gz"
    p.write_bytes(gzip.compress(HEADER + b"".join(ROWS)))
    t = read_table(str(p))
    assert t.num_rows == len(ROWS)
    assert t.column("uid").to_pylist()[0] == b"C1"


def test_truncated_gzip_keeps_records_then_errors(tmp_path):
    from zeekml._core.errors import UnreadableInput

    p = tmp_path / "conn.log.gz"
    blob = gzip.compress(HEADER + b"".join(ROWS) * 200)
    p.write_bytes(blob[: len(blob) // 2])
    got = []
    with pytest.raises(UnreadableInput) as e:
        for b in read_log(str(p)):
            got.append(b.num_rows)
    assert "conn.log.gz" in str(e.value)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=1, max_value=50))
def test_fuzz_random_bytes_never_raise(junk, cut):
    data = HEADER + ROWS[0] + junk + b"\n" + ROWS[1]
    batches, q, p = parse(data, pieces=[cut])
    got = rows(batches)
    assert got[0]["uid"] == b"C1"
    assert p.consumed_offset == len(data)


def test_raw_nul_byte_is_quarantined():
    bad = ROWS[1].replace(b"C2", b"C\x002")
    batches, q, _ = parse(HEADER + ROWS[0] + bad + ROWS[2])
    assert [r["uid"] for r in rows(batches)] == [b"C1", b"C3"]
    assert q.count == 1 and q.records[0].reason == "raw NUL byte" and q.records[0].line == 10
