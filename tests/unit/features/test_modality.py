"""Adapter inputs of the multi-modal autoencoder: shapes, host and packet sequences, skip-gram
vectors, unseen values and service hiding, on hand-built tables and a small real slice."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from zeekml.features.modality import (HOST_CHANNELS, PACKET_CHANNELS, SEQ_LEN, ModalityFeaturizer,
                                      SkipGram, SkipGramConfig, entity_sentences, find_flow_logs,
                                      host_sequences, ip_class, load_flow_table, packet_sequences,
                                      unseen_token)
from zeekml.flows.table import CONN_SCHEMA
from zeekml.train.data import load_conns

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "data")
SLICE = os.path.join(DATA, "mae", "conn.log.labeled")


def conns(rows: list[dict]) -> pa.Table:
    cols = {f.name: [r.get(f.name) for r in rows] for f in CONN_SCHEMA}
    return pa.table(cols, schema=CONN_SCHEMA)


def test_host_sequence_is_the_originators_last_conns_in_time_order():
    t = conns([
        {"ts": 10.0, "uid": "a", "id.orig_h": "10.0.0.1", "id.resp_h": "1.1.1.1", "orig_bytes": 100, "resp_pkts": 1},
        {"ts": 5.0, "uid": "b", "id.orig_h": "10.0.0.2", "id.resp_h": "1.1.1.1", "orig_bytes": 7, "resp_pkts": 0},
        {"ts": 12.0, "uid": "c", "id.orig_h": "10.0.0.1", "id.resp_h": "2.2.2.2", "orig_bytes": 0, "resp_pkts": 0},
        {"ts": 11.0, "uid": "d", "id.orig_h": "10.0.0.1", "id.resp_h": "2.2.2.2", "orig_bytes": 3, "resp_pkts": 2},
    ])
    s = host_sequences(t)
    assert s.shape == (4, SEQ_LEN, len(HOST_CHANNELS))
    present = s[..., 0]
    # a: first of its host; c: third (a, d, c); b: alone
    assert present.sum(axis=1).tolist() == [1, 1, 3, 2]
    assert (present[:, :-3] == 0).all()                      # left padding
    c = s[2, -3:]
    assert np.allclose(c[:, 2], np.log1p([100, 3, 0]))         # orig_bytes of a, d, c
    assert np.allclose(c[:, 1], np.log1p([0, 1, 1]))           # gaps 0 (first), 1 s, 1 s
    assert c[:, 6].tolist() == [0, 1, 1]                       # same responder as c (2.2.2.2)
    assert c[:, 7].tolist() == [0, 0, 1]                       # no reply
    assert s[1, -1, 7] == 1 and s[1, -1, 2] == pytest.approx(np.log1p(7))


def test_packet_sequences_join_flow_records_on_uid():
    t = conns([{"uid": "x"}, {"uid": "y"}])
    flows = pa.table({"uid": ["y"], "dirs": [[0.0, 1.0, 0.0]], "ip_lens": [[60.0, 40.0, 52.0]],
                      "iats": [[0.0, 0.002, 0.0005]], "tcp_flags": [[0x02, 0x12, 0x10]]})
    s = packet_sequences(t, flows)
    assert s.shape == (2, SEQ_LEN, len(PACKET_CHANNELS))
    assert s[0].sum() == 0                                     # no flow record: empty sequence
    assert s[1, :, 0].tolist() == [1, 1, 1] + [0] * (SEQ_LEN - 3)
    assert s[1, :3, 1].tolist() == [0, 1, 0]
    assert np.allclose(s[1, :3, 2], np.log1p([60, 40, 52]))
    assert np.allclose(s[1, :3, 3], np.log1p([0, 2.0, 0.5]))
    assert s[1, :3, 4].tolist() == [1, 1, 0]                   # SYN
    assert s[1, :3, 5].tolist() == [0, 1, 1]                   # ACK


def test_unseen_tokens_by_class():
    assert ip_class("192.168.1.5") == "v4-private"
    assert ip_class("8.8.8.8") == "v4-public"
    assert ip_class("ff02::fb") == "v6-multicast"
    assert ip_class("not-an-ip") == "invalid"
    assert unseen_token("ip:8.8.4.4") == "ip:<unseen:v4-public>"
    assert unseen_token("port:55000/udp") == "port:<unseen:ephemeral/udp>"
    assert unseen_token("port:22/tcp") == "port:<unseen:well_known/tcp>"


def test_skipgram_puts_co_occurring_tokens_together():
    rng = np.random.default_rng(0)
    a = [f"ip:10.0.0.{i}" for i in range(5)]
    b = [f"ip:8.8.{i}.1" for i in range(5)]
    sentences = [list(rng.choice(a, 40)) for _ in range(30)] + [list(rng.choice(b, 40)) for _ in range(30)]
    sg = SkipGram(SkipGramConfig(dim=8, epochs=3, window=2, max_pairs=50_000)).fit(sentences, seed=0)
    rows = [sg.tokens.index(t) for t in a + b]
    assert np.allclose(np.linalg.norm(sg.vectors[rows], axis=1), 1.0, atol=1e-5)
    within = np.mean([sg.similarity(a[0], x) for x in a[1:]] + [sg.similarity(b[0], x) for x in b[1:]])
    across = np.mean([sg.similarity(x, y) for x in a for y in b])
    assert within > across + 0.5
    row, unseen = sg.lookup("ip:192.168.7.7")
    assert unseen and sg.tokens[row] == "ip:<unseen:v4-private>"
    assert sg.lookup(a[2]) == (sg.tokens.index(a[2]), False)


def test_featurizer_on_real_slice_shapes_hiding_and_round_trip():
    t = load_conns(SLICE)
    f = ModalityFeaturizer(skipgram=SkipGramConfig(dim=8, epochs=1, max_pairs=20_000)).fit(t)
    assert f.seq_source == "host"                              # no zeekml_flow.log beside it
    assert len(entity_sentences(t)) > 10
    m = f.transform(t)
    assert m.quantity.shape == (900, f.quantity_dim)
    assert m.sequence.shape == (900, SEQ_LEN, len(HOST_CHANNELS))
    assert m.entity.shape == (900, f.entity_dim) == (900, 3 * 8 + 3 + len(f.services) + 2 + len(f.histories) + 1)
    assert np.isfinite(m.quantity).all() and np.isfinite(m.sequence).all() and np.isfinite(m.entity).all()
    assert m.quantity_keep.all() and m.entity_keep.all()
    assert "ssl" in f.services
    h = f.transform(t, hide_service=True)
    names = f.entity_names
    hidden = [n for n, k in zip(names, h.entity_keep) if not k]
    assert all(n.startswith(("service_", "port_")) for n in hidden) and "port_w2v0" in hidden
    assert (h.entity[:, ~h.entity_keep] == 0).all() and (h.quantity[:, ~h.quantity_keep] == 0).all()
    assert not any(n.startswith(("service_", "resp_p_"))
                   for n, k in zip(f.flow.feature_names, h.quantity_keep) if k)
    assert h.concat().shape[1] == h.quantity_keep.sum() + SEQ_LEN * len(HOST_CHANNELS) + h.entity_keep.sum()
    g = ModalityFeaturizer.from_dict(f.to_dict(), f.w2v_vectors)
    assert np.array_equal(g.transform(t).entity, m.entity)
    assert np.array_equal(g.transform(t).sequence, m.sequence)
    # an address never seen in fitting is placed, and flagged unseen
    new = conns([{"ts": 1.0, "uid": "n", "id.orig_h": "203.0.113.9", "id.resp_h": "147.32.81.167",
                  "id.resp_p": 61111, "proto": "tcp"}])
    e = f.transform(new).entity[0]
    unseen = e[3 * 8: 3 * 8 + 3]
    assert unseen[0] == 1 and unseen[2] == 1


def test_flow_logs_found_beside_conn_logs(tmp_path):
    (tmp_path / "conn.log").write_text("")
    (tmp_path / "zeekml_flow.log").write_text(
        "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tzeekml_flow\n"
        "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tn_pkts\tdirs\tip_lens\tiats\ttcp_flags\n"
        "#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tcount\tvector[count]\tvector[count]\tvector[interval]\tvector[count]\n"
        "1.0\tCabc\t10.0.0.1\t1234\t10.0.0.2\t80\ttcp\t2\t0,1\t60,40\t0.000000,0.001000\t2,18\n")
    assert find_flow_logs([str(tmp_path / "conn.log")]) == [str(tmp_path / "zeekml_flow.log")]
    flows = load_flow_table([str(tmp_path / "conn.log")])
    assert flows.num_rows == 1 and flows.column("uid").to_pylist() == ["Cabc"]
    s = packet_sequences(conns([{"uid": "Cabc"}]), flows)
    assert s[0, :2, 2].tolist() == pytest.approx(np.log1p([60, 40]).tolist())
    assert load_flow_table([str(tmp_path / "zeekml_flow.log")]).num_rows == 1


def test_host_sequence_horizon_makes_a_slice_with_context_agree():
    t = conns([{"ts": float(x), "uid": f"u{x}", "id.orig_h": "10.0.0.1", "id.resp_h": "1.1.1.1",
                "orig_bytes": x} for x in (0, 100, 150, 160, 400, 420)])
    s = host_sequences(t, max_age=60.0)
    assert s[..., 0].sum(axis=1).tolist() == [1, 1, 2, 3, 1, 2]
    assert s[3, -3:, 1].tolist() == pytest.approx(np.log1p([0, 50, 10]).tolist())   # earliest gap 0
    assert s[4, -1, 1] == 0                                    # predecessor out of the horizon
    # the last three conns (from ts 160) scored with 60 s of context before them (from ts 100)
    # get the same inputs; with less context they do not
    part = host_sequences(t.slice(1), max_age=60.0)
    assert np.array_equal(part[2:], s[3:])
    assert not np.array_equal(host_sequences(t.slice(2), max_age=60.0)[1:], s[3:])
    f = ModalityFeaturizer()
    assert f.host_max_age == 3600.0
    f.seq_source = "host"
    assert f.context_seconds == 3600.0
    f.seq_source = "packets"
    assert f.context_seconds == 0.0


@pytest.mark.parametrize("max_age", [None, 60.0])
def test_modalities_of_some_rows_are_those_rows_of_the_whole_table(max_age):
    """``transform(t, rows=r)`` (and ``host_sequences(t, rows=r)``) equal the whole table's rows
    ``r`` bit for bit, the rest of ``t`` their history: scoring a large baseline a piece at a
    time gives what one pass gives, without a ``[n, 32, 8]`` array of the whole table."""
    t = load_conns(SLICE)
    f = ModalityFeaturizer(skipgram=SkipGramConfig(dim=8, epochs=1, max_pairs=20_000),
                           host_max_age=max_age).fit(t)
    rows = np.random.default_rng(0).permutation(t.num_rows)[:137]     # unsorted, any hosts
    whole, part = f.transform(t), f.transform(t, rows=rows)
    for a, b in ((whole.quantity[rows], part.quantity), (whole.sequence[rows], part.sequence),
                 (whole.entity[rows], part.entity)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(host_sequences(t, max_age)[rows], host_sequences(t, max_age, rows))
    assert host_sequences(t, max_age, rows[:0]).shape == (0, SEQ_LEN, len(HOST_CHANNELS))


@pytest.mark.parametrize("max_age", [None, 60.0])
def test_sequences_are_normalised_by_the_formula_bit_for_bit(max_age):
    """The in-place normalisation (no ``[n, 32, C]`` temporaries) is the float32 formula: each
    present step's channels less the mean over the spread, absent steps 0, channel 0 (present)
    as it is; and asking twice gives the same (the raw sequences are not shared)."""
    t = load_conns(SLICE)
    f = ModalityFeaturizer(skipgram=SkipGramConfig(dim=8, epochs=1, max_pairs=20_000),
                           host_max_age=max_age).fit(t)
    raw = host_sequences(t, max_age)
    want = ((raw - np.asarray(f.seq_mean, np.float32)) / np.asarray(f.seq_std, np.float32)) * (raw[..., :1] > 0)
    want[..., 0] = raw[..., 0]
    got = f.transform(t).sequence
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert got.tobytes() == want.tobytes()                 # signs of zero included
    rows = np.random.default_rng(1).permutation(t.num_rows)[:101]
    assert f.transform(t, rows=rows).sequence.tobytes() == want[rows].tobytes()
    assert (got[..., 1:] != raw[..., 1:]).any()            # normalised, not the raw values
    assert np.array_equal(f.transform(t).sequence, got)
    assert np.array_equal(host_sequences(t, max_age), raw)


def test_skipgram_lookup_keeps_unseen_answers_for_its_vocabulary_only():
    """``SkipGram.lookup`` keeps the class row of each unseen token it was asked (live scoring
    asks the same addresses every release), and a fit on other sentences forgets them."""
    from zeekml.features.modality import SkipGram, SkipGramConfig, unseen_token

    sg = SkipGram(SkipGramConfig(min_steps=1, epochs=1))
    sg.fit([["ip:10.0.0.1", "port:53/udp"] * 3, ["ip:10.0.0.2", "port:80/tcp"]])
    tok = "ip:8.8.8.8"
    want = (sg.index[unseen_token(tok)], True)
    assert sg.lookup(tok) == want and sg.lookup(tok) == want and tok in sg._unseen
    assert sg.lookup("ip:10.0.0.1") == (sg.index["ip:10.0.0.1"], False)
    sg.fit([["ip:8.8.8.8", "port:53/udp"] * 3])
    assert not getattr(sg, "_unseen", {})
    assert sg.lookup(tok) == (sg.index[tok], False)        # seen now: its own row
