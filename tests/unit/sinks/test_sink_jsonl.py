"""JSON-lines sinks: compact lines with non-finite floats as null, and ``quarantine.jsonl``'s
record of a rejected line. Exact bytes on hand-built objects."""
from __future__ import annotations

import pytest

from zeekml._core.errors import OutputError
from zeekml.parse.reject import RejectedRecord
from zeekml.sinks.jsonl import JsonLinesWriter, QuarantineWriter


def test_compact_lines_non_finite_floats_as_null(tmp_path):
    path = tmp_path / "x.jsonl"
    w = JsonLinesWriter(path)
    w.write_obj({"a": 1, "b": 1.5, "c": None, "d": "é\t", "e": {"x": float("nan"), "y": float("inf")},
                 "f": float("-inf"), "g": [1, "2"], "h": True, "i": 1e-7, "j": 2**64})
    w.write_obj({})
    assert w.count == 2
    w.close()
    w.close()                                   # closing twice is harmless
    assert path.read_bytes() == (
        b'{"a":1,"b":1.5,"c":null,"d":"\\u00e9\\t","e":{"x":null,"y":null},"f":null,"g":[1,"2"],'
        b'"h":true,"i":1e-07,"j":18446744073709551616}\n'
        b"{}\n")


def test_quarantine_record(tmp_path):
    path = tmp_path / "quarantine.jsonl"
    w = QuarantineWriter(path)
    w.write(RejectedRecord("logs/conn.log", 12, 3456, "field count: 3 of 21", b"a\tb\xff\n"))
    w(RejectedRecord("eve.json", 1, 0, "invalid JSON: Expecting value", b""))    # as a callback
    assert w.count == 2
    w.close()
    assert path.read_bytes() == (
        b'{"path":"logs/conn.log","line":12,"offset":3456,"reason":"field count: 3 of 21",'
        b'"sample":"a\\tb\\\\xff\\n"}\n'
        b'{"path":"eve.json","line":1,"offset":0,"reason":"invalid JSON: Expecting value",'
        b'"sample":""}\n')


def test_unwritable_path_is_an_output_error_naming_it(tmp_path):
    target = tmp_path / "missing-dir" / "q.jsonl"
    with pytest.raises(OutputError) as e:
        QuarantineWriter(target)
    assert e.value.exit_code == 6 and str(target) in str(e.value)
