"""Zeek escaping rules: writer then reader returns the same bytes (no log injection)."""
import pytest
from hypothesis import given, settings, strategies as st

from zeekml._core.zeek_format import ZeekHeader, escape, format_record, parse_field, unescape
from zeekml.parse import Quarantine
from zeekml.parse.zeek_tsv import ZeekTsvParser
from zeekml.sinks.zeek_log import ZeekLogWriter


@pytest.mark.parametrize("raw,expected", [
    (b"plain", b"plain"),
    (b"a\\x41b", b"aAb"),
    (b"\\\\x41", b"\\x41"),          # escaped backslash, then literal x41
    (b"\\x2d", b"-"),
    (b"\\xff\\x00", b"\xff\x00"),
    (b"\\q", b"\\q"),                # anything else stays
    (b"\\x4", b"\\x4"),              # incomplete escape stays
])
def test_unescape(raw, expected):
    assert unescape(raw) == expected


@pytest.mark.parametrize("value,expected", [
    (b"", b"(empty)"),
    (b"-", b"\\x2d"),
    (b"(empty)", b"\\x28empty)"),
    (b"a\tb", b"a\\x09b"),
    (b"a\nb", b"a\\x0ab"),
    (b"back\\slash", b"back\\\\slash"),
    (b"\xff", b"\\xff"),
    ("caf\u00e9".encode(), "caf\u00e9".encode()),   # valid UTF-8 stays
    (b"\x1b[31m", b"\\x1b[31m"),                    # terminal escape
    (b"\x7f", b"\\x7f"),
])
def test_escape(value, expected):
    assert escape(value) == expected


def test_escape_in_container_and_first_field():
    assert escape(b"a,b", set_separator=b",") == b"a\\x2cb"
    assert escape(b"#x", first_field=True) == b"\\x23x"
    assert escape(b"#x") == b"#x"


def test_unset_empty_and_literal_dash_are_distinct():
    h = ZeekHeader()
    assert parse_field(b"-", "string", h) is None
    assert parse_field(b"(empty)", "string", h) == b""
    assert parse_field(b"\\x2d", "string", h) == b"-"
    assert parse_field(b"(empty)", "set[string]", h) == []
    assert parse_field(b"-", "set[string]", h) is None
    assert parse_field(b"a\\x2cb,c", "set[string]", h) == [b"a,b", b"c"]
    assert parse_field(b"18446744073709551615", "count", h) == 2 ** 64 - 1
    assert parse_field(b"XXXXXXXXXX.XXXXXX", "time", h) is None
    for bad, t in [(b"18446744073709551616", "count"), (b"65536", "port"), (b"1_0", "count"),
                   (b" 5", "count"), (b"T ", "bool"), (b"(empty)", "count"), (b"1.5x", "double")]:
        with pytest.raises(ValueError):
            parse_field(bad, t, h)


hostile = st.one_of(
    st.binary(max_size=60),
    st.sampled_from([b"-", b"(empty)", b"\\x41", b"\\\\", b"#start", b"a\tb\nc", b"\xff\xfe",
                     b"\xe2\x82", b"\x1b]0;pwn\x07", b"a,b", b"\\x2d", b"\r\n"]),
)


def _roundtrip(tmp_path, values, sets):
    path = tmp_path / "t.log"
    w = ZeekLogWriter(path, "test", [("s", "string"), ("v", "set[string]"), ("n", "count")])
    for v, s in zip(values, sets):
        w.write({"s": v, "v": s, "n": 7})
    w.close()
    q = Quarantine()
    p = ZeekTsvParser(str(path), q)
    batches = p.feed(path.read_bytes()) + p.finish()
    assert q.count == 0, q.records
    rows = [r for b in batches for r in b.batch.to_pylist()]
    return rows


@settings(max_examples=60, deadline=None)
@given(st.lists(hostile, min_size=1, max_size=8), st.data())
def test_writer_reader_roundtrip_hostile(tmp_path_factory, values, data):
    tmp = tmp_path_factory.mktemp("rt")
    sets = [data.draw(st.lists(hostile, max_size=3)) for _ in values]
    rows = _roundtrip(tmp, values, sets)
    assert [r["s"] for r in rows] == values
    assert [r["v"] for r in rows] == sets
    assert all(r["n"] == 7 for r in rows)


def test_record_line_never_breaks(tmp_path):
    line = format_record([b"a\tb\nc", ["x\ny"]], ["string", "set[string]"])
    assert line.count(b"\n") == 1 and line.count(b"\t") == 1
