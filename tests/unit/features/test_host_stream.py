"""Host streams for ``causal_window`` token encoders (issue 15): every conn one token, each host's
conns in time order, links to the predecessors a conn may attend to (same host, within
``max_age``), and the same tokens laid out as one window per conn; on real conns the encoder's
output at a conn's stream position is its window's last output, bit for bit."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from zeekml.features.tokens import FIRST_VALUE, PAD, UNSET, FlowTokenizer
from zeekml.flows.table import CONN_SCHEMA
from zeekml.train.data import load_conns

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "data")
LOG = os.path.join(DATA, "gnn", "iot23-ctu-34-1-head400.conn.log.labeled")


def conns(rows: list[dict]) -> pa.Table:
    cols = {f.name: [r.get(f.name) for r in rows] for f in CONN_SCHEMA}
    return pa.table(cols, schema=CONN_SCHEMA)


def conn(ts: float, orig: str, resp: str, port: int = 80) -> dict:
    return {"ts": ts, "uid": f"u{ts}", "id.orig_h": orig, "id.resp_h": resp, "id.resp_p": port,
            "proto": "tcp", "conn_state": "SF", "history": "ShADadFf", "orig_bytes": 10, "resp_pkts": 1}


# host A: 10, 11, 12 (same responder, then another), then 9000 (past max_age: a fresh start);
# host B: one conn between them in the table
T = conns([conn(12.0, "A", "r2"), conn(10.0, "A", "r1"), conn(5.0, "B", "r1"), conn(11.0, "A", "r1"),
           conn(9000.0, "A", "r2")])


@pytest.fixture(scope="module")
def tok() -> FlowTokenizer:
    return FlowTokenizer(source="host", seq_len=3, max_age=3600).fit(T)


def test_every_conn_is_one_token_in_host_time_order(tok):
    st = tok.host_stream(T, width=2)
    assert st.table_rows.tolist() == [1, 3, 0, 4, 2]           # A at 10, 11, 12, 9000; B
    assert np.array_equal(st.table_rows[st.targets], np.arange(5))
    local = tok.local_ids(st.ids)
    gap, same = tok.field_names.index("gap"), tok.field_names.index("same_resp")
    # first of a host and first after max_age: gap and same_resp unset
    assert local[[0, 3, 4], gap].tolist() == [UNSET] * 3
    assert local[[0, 3, 4], same].tolist() == [UNSET] * 3
    assert local[1, same] == FIRST_VALUE + 1 and local[2, same] == FIRST_VALUE   # r1 -> r1, r1 -> r2
    assert local[1, gap] == local[2, gap] > UNSET                                # 1 s each
    # links: the predecessors within max_age on the same host, never across hosts
    assert st.keys.tolist() == [[0, -1, -1], [1, 0, -1], [2, 1, 0], [3, -1, -1], [4, -1, -1]]


def test_runs_are_a_hosts_consecutive_conns_in_the_stream(tok):
    # A at 10, 11, 12, 9000 is one run (consecutive conns of A, whatever their gaps); B another
    assert tok.host_stream(T, width=2).run_start.tolist() == [0, 0, 0, 0, 4]
    # A at 11 and B: A's stream holds 10, 11 (11's window) and B; A at 9000 alone would skip 12
    st = tok.host_stream(T, rows=np.array([3, 2]), width=2)
    assert st.table_rows.tolist() == [1, 3, 2] and st.run_start.tolist() == [0, 0, 2]
    st = tok.host_stream(T, rows=np.array([3, 4]), width=1)
    assert st.table_rows.tolist() == [1, 3, 0, 4] and st.run_start.tolist() == [0, 0, 0, 0]
    tok1 = FlowTokenizer(source="host", seq_len=2, max_age=3600).fit(T)
    st = tok1.host_stream(T, rows=np.array([1, 4]), width=1)
    assert st.table_rows.tolist() == [1, 0, 4] and st.run_start.tolist() == [0, 1, 1]


def test_a_few_rows_take_their_windows_alone(tok):
    st = tok.host_stream(T, rows=np.array([0]), width=2)
    assert st.table_rows.tolist() == [1, 3, 0]                 # the conn and its 2 predecessors
    assert st.targets.tolist() == [2]
    np.testing.assert_array_equal(st.ids, tok.host_stream(T, width=2).ids[:3])


def test_windows_hold_the_stream_tokens_and_their_reach(tok):
    ids, reach = tok.stream_windows(T)
    st = tok.host_stream(T, width=2)
    for row in range(5):
        assert np.array_equal(ids[row, -1], st.ids[st.targets[row]])
    # row 4 (A at 9000): its window is A's last 3 conns whatever their age, none in reach
    assert (ids[4, :, 0] != PAD).all() and reach[4].tolist() == [0, 1, 0]
    assert reach[0].tolist() == [0, 1, 2]                       # A at 12: both predecessors
    assert (ids[2, :2] == PAD).all() and reach[2, -1] == 0      # B: alone
    hidden = tok.stream_windows(T, hide_service=True)[0]
    f = tok.field_names.index("port")
    assert (tok.local_ids(hidden)[..., f][ids[..., 0] != PAD] == 0).all()


def test_packet_tokens_have_no_host_stream():
    t = FlowTokenizer(source="packets")
    t.fields = FlowTokenizer(source="host").fit(T).fields
    with pytest.raises(ValueError, match="host streams need host tokens"):
        t.host_stream(T)


def test_on_real_conns_the_stream_gives_each_window_its_last_output():
    torch = pytest.importorskip("torch")
    from zeekml.nn.moe import MoEConfig, MoEEncoder

    table = load_conns([LOG])
    tok = FlowTokenizer(source="host").fit(table)
    torch.manual_seed(0)
    enc = MoEEncoder(MoEConfig(vocab_size=tok.vocab_size, n_fields=len(tok.fields), seq_len=16,
                               d_model=16, n_layers=4, n_heads=2, d_ff=32, dropout=0.0, n_experts=4,
                               d_expert=16, attention="causal_window")).eval()
    st = tok.host_stream(table, width=max(enc.spans))
    ids, reach = tok.stream_windows(table)
    with torch.inference_mode():
        stream = enc.forward_stream(torch.as_tensor(st.ids), torch.as_tensor(st.keys),
                                    torch.as_tensor(st.targets)).hidden
        windows = enc(torch.as_tensor(ids), reach=torch.as_tensor(reach)).hidden[:, -1]
        rows = np.array([0, 17, 18, 250, 399])
        few = tok.host_stream(table, rows, width=max(enc.spans))
        some = enc.forward_stream(torch.as_tensor(few.ids), torch.as_tensor(few.keys),
                                  torch.as_tensor(few.targets)).hidden
    assert torch.equal(stream, windows)
    assert torch.equal(some, stream[rows])
    assert len(few.ids) < 5 * 16                                  # their windows, not the stream
