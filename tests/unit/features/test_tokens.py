"""FlowTokenizer: host-sequence tokens (right-aligned, gaps, same responder, age horizon), packet
tokens joined on uid, global/local ids, service hiding, and the vocabulary round trip."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pytest

from zeekml.features.tokens import (FIRST_VALUE, HIDDEN, HOST_FIELDS, MASK, PACKET_FIELDS, PAD, UNSET,
                                    FieldVocab, FlowTokenizer)
from zeekml.flows.table import CONN_SCHEMA
from zeekml.train.data import load_conns

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "data")
SLICE = os.path.join(DATA, "mae", "conn.log.labeled")


def conns(rows: list[dict]) -> pa.Table:
    cols = {f.name: [r.get(f.name) for r in rows] for f in CONN_SCHEMA}
    return pa.table(cols, schema=CONN_SCHEMA)


HOSTS = conns([
    {"ts": 10.0, "uid": "a", "id.orig_h": "10.0.0.1", "id.resp_h": "1.1.1.1", "id.resp_p": 53, "proto": "udp",
     "service": "dns", "orig_bytes": 100, "resp_pkts": 1, "conn_state": "SF", "history": "Dd"},
    {"ts": 5.0, "uid": "b", "id.orig_h": "10.0.0.2", "id.resp_h": "1.1.1.1", "id.resp_p": 443, "proto": "tcp",
     "orig_bytes": 7, "resp_pkts": 0, "conn_state": "S0", "history": "S"},
    {"ts": 12.0, "uid": "c", "id.orig_h": "10.0.0.1", "id.resp_h": "2.2.2.2", "id.resp_p": 80, "proto": "tcp",
     "service": "http", "orig_bytes": 0, "resp_pkts": 0, "conn_state": "SF", "history": "ShADadFf"},
    {"ts": 11.0, "uid": "d", "id.orig_h": "10.0.0.1", "id.resp_h": "2.2.2.2", "id.resp_p": 80, "proto": "tcp",
     "service": "http", "orig_bytes": 3, "resp_pkts": 2, "conn_state": "SF", "history": "ShADadFf"},
    {"ts": 9000.0, "uid": "e", "id.orig_h": "10.0.0.1", "id.resp_h": "2.2.2.2", "id.resp_p": 80,
     "proto": "tcp", "conn_state": "S0", "history": "S"},
])


def test_field_vocab_encodings():
    q = FieldVocab("x", "quantile", edges=[1.0, 2.0])
    assert q.size == FIRST_VALUE + 3
    ids = q.encode_quantity(np.array([0.5, 1.0, 1.5, 9.0, 3.0]), np.array([0, 0, 0, 0, 1], bool))
    assert ids.tolist() == [2, 3, 3, 4, UNSET]
    c = FieldVocab("s", "categorical", values=["dns", "http"])
    assert c.encode_category(np.array(["http", "", "ssl", "dns"], dtype=object)).tolist() == [3, UNSET, 4, 2]
    p = FieldVocab("port", "port", values=["53"])
    assert p.size == FIRST_VALUE + 1 + 3
    assert p.encode_port(np.array([53, 80, 8080, 50000, 0]), np.array([0, 0, 0, 0, 1], bool)).tolist() == \
        [2, 3, 4, 5, UNSET]


def test_host_tokens_are_the_originators_recent_conns_right_aligned():
    tok = FlowTokenizer(source="host", seq_len=4, max_age=3600.0).fit(HOSTS)
    assert tok.field_names == list(HOST_FIELDS)
    ids = tok.transform(HOSTS)
    assert ids.shape == (5, 4, len(HOST_FIELDS)) and ids.dtype == np.int64
    real = ids[..., 0] != PAD
    # a: first of its host; b: alone; c: a, d, c; d: a, d; e: 2.5 h later, alone within the horizon
    assert real.sum(1).tolist() == [1, 1, 3, 2, 1]
    assert not real[:, 0].any()                                            # left padding, conn is last
    assert real[:, -1].all()
    local = tok.local_ids(ids)
    f = {n: i for i, n in enumerate(tok.field_names)}
    svc = tok.fields[f["service"]].values
    c = local[2, -3:]                                                      # a, d, c
    assert [svc[v - FIRST_VALUE] for v in c[:, f["service"]]] == ["dns", "http", "http"]
    assert c[:, f["gap"]][0] == UNSET and c[:, f["gap"]][1] == c[:, f["gap"]][2] > UNSET   # 1 s, 1 s
    assert c[:, f["same_resp"]].tolist() == [FIRST_VALUE, FIRST_VALUE + 1, FIRST_VALUE + 1]
    assert local[4, -1, f["service"]] == UNSET                              # unset service, not hidden
    assert (local[~real] == -1).all()
    # the same row asked alone sees the same context
    assert (tok.transform(HOSTS, rows=np.array([2])) == ids[2:3]).all()


def test_hide_service_blanks_service_and_ports_everywhere():
    tok = FlowTokenizer(source="host", seq_len=4).fit(HOSTS)
    shown = tok.transform(HOSTS)
    hidden = tok.transform(HOSTS, hide_service=True)
    local = tok.local_ids(hidden)
    real = hidden[..., 0] != PAD
    for name in ("service", "port"):
        i = tok.field_names.index(name)
        assert (local[..., i][real] == HIDDEN).all()
    others = [i for i, n in enumerate(tok.field_names) if n not in ("service", "port")]
    assert (hidden[..., others] == shown[..., others]).all()
    rows = np.array([True, False, True, False, False])
    h2 = tok.hide(shown, rows)
    assert (h2[rows] == hidden[rows]).all() and (h2[~rows] == shown[~rows]).all()


def test_global_ids_partition_the_vocabulary():
    tok = FlowTokenizer(source="host", seq_len=4).fit(HOSTS)
    ids = tok.transform(HOSTS)
    assert tok.bases[0] == 2 and tok.vocab_size == 2 + sum(tok.field_sizes)
    real = ids[ids != PAD]
    assert real.min() >= 2 and real.max() < tok.vocab_size and MASK not in real
    for i, (b, s) in enumerate(zip(tok.bases, tok.field_sizes)):
        col = ids[..., i][ids[..., i] != PAD]
        assert ((col >= b) & (col < b + s)).all()


def test_packet_tokens_join_the_flow_log_on_uid():
    t = conns([{"uid": "x"}, {"uid": "y"}, {"uid": "z"}])
    flows = pa.table({"uid": ["y", "z"], "dirs": [[0.0, 1.0, 0.0], [0.0] * 6],
                      "ip_lens": [[60.0, 40.0, 1500.0], [60.0] * 6],
                      "iats": [[0.0, 0.002, 0.5], [0.0] + [0.001] * 5],
                      "tcp_flags": [[2.0, 18.0, 16.0], [2.0] * 6]})
    tok = FlowTokenizer(seq_len=4).fit(t, flows)
    assert tok.source == "packets" and tok.field_names == list(PACKET_FIELDS) and tok.anchor == "mean"
    ids = tok.transform(t, flows)
    real = ids[..., 0] != PAD
    assert real.sum(1).tolist() == [0, 3, 4]                               # x has no record; z cut at 4
    assert real[1].tolist() == [True, True, True, False]                   # left-aligned
    local = tok.local_ids(ids)
    d, ln, fl = (tok.field_names.index(n) for n in ("dir", "ip_len", "flags"))
    assert local[1, :3, d].tolist() == [2, 3, 2]
    assert local[1, 0, ln] < local[1, 2, ln]                               # 60 < 1500 bytes
    flags = tok.fields[fl].values
    assert [flags[v - FIRST_VALUE] for v in local[1, :3, fl]] == ["2", "18", "16"]
    # too little coverage: auto falls back to host tokens
    assert FlowTokenizer().fit(conns([{"uid": u} for u in "abcdef"]), flows).source == "host"


def test_round_trip_and_schema_check():
    table = load_conns(SLICE)
    tok = FlowTokenizer().fit(table)
    d = json.loads(json.dumps(tok.to_dict()))
    back = FlowTokenizer.from_dict(d)
    assert back.to_dict() == tok.to_dict()
    assert (back.transform(table) == tok.transform(table)).all()
    d["schema_version"] = 99
    with pytest.raises(ValueError, match="schema"):
        FlowTokenizer.from_dict(d)
    with pytest.raises(RuntimeError):
        FlowTokenizer().transform(table)
