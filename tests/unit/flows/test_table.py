"""conn_table on columns of every type a parser can hand on, and on ones it never does."""
from __future__ import annotations

import pyarrow as pa
import pytest

from zeekml._core.errors import UnreadableInput
from zeekml.features.flow_features import FlowFeaturizer
from zeekml.flows import CONN_SCHEMA, conn_table
from zeekml.parse.batch import LogBatch

BASE = {"id.orig_h": ["10.0.0.1", "10.0.0.2"], "id.resp_h": ["10.0.0.9", "10.0.0.9"],
        "proto": ["tcp", "udp"], "conn_state": [b"SF", b"S0"]}


def test_text_columns_of_any_type_become_text():
    rb = pa.record_batch(dict(
        BASE, uid=pa.array([b"C\xff", None]), service=pa.array([{"a": 1}, None]),
        history=pa.array([[b"S", b"h"], []]), label=pa.array([1, 2])))
    t = conn_table([rb])
    assert t.schema == CONN_SCHEMA
    assert t.column("uid").to_pylist() == ["C\ufffd", None]
    assert t.column("service").to_pylist() == ["{'a': 1}", None]
    assert t.column("history").to_pylist() == ["S,h", ""]
    assert t.column("label").to_pylist() == ["1", "2"]


def test_a_column_that_cannot_take_its_type_names_file_and_line():
    rb = pa.record_batch(dict(BASE, local_orig=pa.array(["yes", "no"])))
    with pytest.raises(UnreadableInput) as exc:
        conn_table([LogBatch("conn", rb, source="in/conn.log", first_line=9)])
    assert str(exc.value).startswith("in/conn.log:9: conn field local_orig: string values do not fit bool")
    rb = pa.record_batch(dict(BASE, orig_bytes=pa.array([-1, 5])))
    with pytest.raises(UnreadableInput, match="orig_bytes"):
        conn_table([rb])


def test_counts_above_2_53_pass_the_table_and_the_features():
    counts = pa.array([2 ** 53 + 1, 2 ** 64 - 1], pa.uint64())
    t = conn_table([pa.record_batch(dict(BASE, orig_bytes=counts, resp_ip_bytes=counts,
                                         ts=pa.array([2 ** 53 + 1, 5], pa.int64())))])
    assert t.column("orig_bytes").to_pylist() == [2 ** 53 + 1, 2 ** 64 - 1]
    assert t.column("ts").to_pylist() == [float(2 ** 53), 5.0]
    f = FlowFeaturizer().fit(t)
    x = f.transform(t)
    names = f.feature_names
    assert x.shape == (2, len(names))
    raw = f._raw(t)
    assert raw[1, names.index("log1p_orig_bytes")] == pytest.approx(44.361419555836500)
