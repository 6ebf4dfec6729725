"""``ZeekLogWriter``: Zeek's ASCII TSV format byte for byte (header, typed values, escaping,
``#close``). Exact bytes on hand-built records."""
from __future__ import annotations

import time

import pytest

from zeekml._core.errors import OutputError
from zeekml.sinks.zeek_log import ZeekLogWriter

FIELDS = [("ts", "time"), ("uid", "string"), ("id.orig_p", "port"), ("ok", "bool"),
          ("n", "count"), ("d", "double"), ("dur", "interval"), ("tags", "set[string]"),
          ("v", "vector[count]")]


@pytest.fixture
def utc(monkeypatch):
    """``#open``/``#close`` are local time, as Zeek writes them: pin the zone."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_header_records_and_close_exact_bytes(tmp_path, utc):
    path = tmp_path / "x.log"
    w = ZeekLogWriter(path, "zeekml_test", FIELDS, open_ts=0.0)
    w.write({"ts": 1.5, "uid": "C1", "id.orig_p": 80, "ok": True, "n": 3, "d": 0.1234567,
             "dur": 2.0, "tags": ["a", "b,c"], "v": [1, 2]})
    w.write({})                                           # every field unset
    w.write({"ts": 1700000000.0000004, "uid": "", "ok": False, "n": 2**64 - 1, "d": float("nan"),
             "tags": [], "v": []})
    w.write({"uid": "tab\there\nnl\\bs", "d": float("inf"), "tags": ["-", "(empty)", ""]})
    w.write({"uid": b"\xff\xfeok", "d": float("-inf"), "tags": ["x"]})
    w.write({"uid": "-", "tags": [None]})
    w.write({"uid": "(empty)"})
    assert w.count == 7
    w.close(close_ts=90061.0)
    assert path.read_bytes() == (
        b"#separator \\x09\n"
        b"#set_separator\t,\n"
        b"#empty_field\t(empty)\n"
        b"#unset_field\t-\n"
        b"#path\tzeekml_test\n"
        b"#open\t1970-01-01-00-00-00\n"
        b"#fields\tts\tuid\tid.orig_p\tok\tn\td\tdur\ttags\tv\n"
        b"#types\ttime\tstring\tport\tbool\tcount\tdouble\tinterval\tset[string]\tvector[count]\n"
        b"1.500000\tC1\t80\tT\t3\t0.123457\t2.000000\ta,b\\x2cc\t1,2\n"
        b"-\t-\t-\t-\t-\t-\t-\t-\t-\n"
        b"1700000000.000000\t(empty)\t-\tF\t18446744073709551615\tnan\t-\t(empty)\t(empty)\n"
        b"-\ttab\\x09here\\x0anl\\\\bs\t-\t-\t-\tinf\t-\t\\x2d,\\x28empty),\t-\n"
        b"-\t\\xff\\xfeok\t-\t-\t-\t-inf\t-\tx\t-\n"
        b"-\t\\x2d\t-\t-\t-\t-\t-\t-\t-\n"
        b"-\t\\x28empty)\t-\t-\t-\t-\t-\t-\t-\n"
        b"#close\t1970-01-02-01-01-01\n")


def test_a_leading_hash_in_the_first_field_is_escaped(tmp_path, utc):
    path = tmp_path / "x.log"
    with ZeekLogWriter(path, "p", [("note", "string"), ("msg", "string")], open_ts=0.0) as w:
        w.write({"note": "#not a meta line", "msg": "#fine here"})
    lines = path.read_bytes().split(b"\n")
    assert lines[8] == b"\\x23not a meta line\t#fine here"
    assert lines[9].startswith(b"#close\t")


def test_other_separators(tmp_path, utc):
    path = tmp_path / "x.log"
    w = ZeekLogWriter(path, "p", [("s", "string"), ("t", "set[string]")], open_ts=0.0,
                      separator=b"|", set_separator=b";")
    w.write({"s": "a|b\tc", "t": ["x;y", "z"]})
    w.close(close_ts=0.0)
    assert path.read_bytes().split(b"\n")[:2] == [b"#separator \\x7c", b"#set_separator|;"]
    assert path.read_bytes().split(b"\n")[8] == b"a\\x7cb\\x09c|x\\x3by;z"


def test_close_twice_writes_one_close_line(tmp_path, utc):
    path = tmp_path / "x.log"
    w = ZeekLogWriter(path, "p", [("s", "string")], open_ts=0.0)
    w.close(close_ts=0.0)
    w.close(close_ts=60.0)
    assert path.read_bytes().count(b"#close") == 1


def test_unwritable_path_is_an_output_error_naming_it(tmp_path):
    target = tmp_path / "missing-dir" / "x.log"
    with pytest.raises(OutputError) as e:
        ZeekLogWriter(target, "p", [("s", "string")])
    assert e.value.exit_code == 6 and str(target) in str(e.value)
