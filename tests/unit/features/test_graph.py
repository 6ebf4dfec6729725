"""FlowGraphBuilder on a hand-made conn log: every node and edge, exactly."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("torch")  # the builder makes torch tensors (PyG is not needed)

from zeekml.features.graph import EDGE_TYPES, NULL_WINDOW, FlowGraphBuilder, GraphConfig  # noqa: E402
from zeekml.train.data import load_conns  # noqa: E402

N = "N"  # the window of conns without ts

FIELDS = ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service",
          "duration", "orig_bytes", "resp_bytes", "conn_state", "history", "orig_pkts", "resp_pkts"]
TYPES = ["time", "string", "addr", "port", "addr", "port", "enum", "string", "interval", "count",
         "count", "string", "string", "count", "count"]
# row: ts, orig, resp, duration   (window 10 s)
ROWS = [
    ("0.000000", "10.0.0.1", "10.0.0.2", "1.0"),     # 0: window 0
    ("1.000000", "10.0.0.1", "10.0.0.3", "15.0"),    # 1: windows 0, 1
    ("2.000000", "10.0.0.1", "10.0.0.2", "0.5"),     # 2: window 0
    ("3.000000", "10.0.0.1", "10.0.0.4", "-"),       # 3: window 0 (unset duration = 0)
    ("12.000000", "10.0.0.3", "10.0.0.1", "1.0"),    # 4: window 1
    ("35.000000", "10.0.0.2", "10.0.0.1", "100.0"),  # 5: windows 3..6 (capped at 4 windows)
    ("-", "10.9.9.9", "10.9.9.8", "1.0"),            # 6: no ts: the null window
]
A, B, C, D, X, Y = "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.9.9.9", "10.9.9.8"


def write_log(path) -> str:
    lines = ["#separator \\x09", "#set_separator\t,", "#empty_field\t(empty)", "#unset_field\t-",
             "#path\tconn", "#fields\t" + "\t".join(FIELDS), "#types\t" + "\t".join(TYPES)]
    for i, (ts, o, r, d) in enumerate(ROWS):
        lines.append("\t".join([ts, f"C{i}", o, "1234", r, "80", "tcp", "-", d, "10", "20", "SF",
                                "ShADadFf", "3", "3"]))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture()
def table(tmp_path) -> pa.Table:
    t = load_conns([write_log(tmp_path / "conn.log")])
    assert t.num_rows == len(ROWS)
    return t


def builder() -> FlowGraphBuilder:
    return FlowGraphBuilder(GraphConfig(window=10.0, span=3, max_conn_windows=4, next_flows=2,
                                        context_windows=4))


def readable(data):
    """Nodes as (row, window) and (address, window); edges as sets of those pairs."""
    def w(v):
        return N if v == NULL_WINDOW else int(v)
    flows = [(int(r), w(v)) for r, v in zip(data["flow"].row.tolist(), data["flow"].window.tolist())]
    ips = [(a, w(v)) for a, v in zip(data["ip"].addr, data["ip"].window.tolist())]
    names = {"flow": flows, "ip": ips}
    edges = {}
    for src, rel, dst in EDGE_TYPES:
        ei = data[src, rel, dst].edge_index.tolist()
        edges[rel] = {(names[src][s], names[dst][d]) for s, d in zip(*ei)}
        assert len(edges[rel]) == len(ei[0]), f"duplicate {rel} edges"
    return flows, ips, edges


def test_nodes_and_edges_exact(table):
    x = np.arange(table.num_rows, dtype=np.float32)[:, None]
    data = builder().build(table, x)
    flows, ips, edges = readable(data)
    # nodes sorted by window, then ts; the null window first
    assert flows == [(6, N), (0, 0), (1, 0), (2, 0), (3, 0), (1, 1), (4, 1),
                     (5, 3), (5, 4), (5, 5), (5, 6)]
    assert data["flow"].x[:, 0].tolist() == [float(r) for r, _ in flows]
    assert sorted(ips, key=str) == sorted([(X, N), (Y, N), (A, 0), (B, 0), (C, 0), (D, 0), (A, 1), (C, 1)]
                                          + [(a, w) for w in (3, 4, 5, 6) for a in (A, B)], key=str)
    # the target appearance of each conn is its last window
    targets = sorted(f for f, t in zip(flows, data["flow"].target.tolist()) if t)
    assert targets == sorted([(0, 0), (1, 1), (2, 0), (3, 0), (4, 1), (5, 6), (6, N)], key=str)

    orig = {(6, N): X, (0, 0): A, (1, 0): A, (2, 0): A, (3, 0): A, (1, 1): A, (4, 1): C,
            (5, 3): B, (5, 4): B, (5, 5): B, (5, 6): B}
    resp = {(6, N): Y, (0, 0): B, (1, 0): C, (2, 0): B, (3, 0): D, (1, 1): C, (4, 1): A,
            (5, 3): A, (5, 4): A, (5, 5): A, (5, 6): A}
    assert edges["rev_orig"] == {(f, (a, f[1])) for f, a in orig.items()}
    assert edges["orig_to"] == {((a, f[1]), f) for f, a in orig.items()}
    assert edges["to_resp"] == {(f, (a, f[1])) for f, a in resp.items()}
    assert edges["rev_resp"] == {((a, f[1]), f) for f, a in resp.items()}
    # an address links back to its latest appearance at most span-1 = 2 windows earlier
    assert edges["next_window"] == {((A, 0), (A, 1)), ((A, 1), (A, 3)), ((A, 3), (A, 4)),
                                    ((A, 4), (A, 5)), ((A, 5), (A, 6)), ((C, 0), (C, 1)),
                                    ((B, 3), (B, 4)), ((B, 4), (B, 5)), ((B, 5), (B, 6))}
    assert edges["same_conn"] == {((1, 0), (1, 1)), ((5, 3), (5, 4)), ((5, 4), (5, 5)),
                                  ((5, 5), (5, 6))}
    # each flow -> the next 2 flows of the same orig_h (resp_h) in its window
    assert edges["next_orig"] == {((0, 0), (1, 0)), ((0, 0), (2, 0)), ((1, 0), (2, 0)),
                                  ((1, 0), (3, 0)), ((2, 0), (3, 0))}
    assert edges["next_resp"] == {((0, 0), (2, 0))}
    # edge j of the flow->ip types belongs to flow node j
    assert data["flow", "rev_orig", "ip"].edge_index[0].tolist() == list(range(len(flows)))
    assert data["flow", "to_resp", "ip"].edge_index[0].tolist() == list(range(len(flows)))


def test_targets_bring_only_their_context_windows(table):
    x = np.zeros((table.num_rows, 1), dtype=np.float32)
    data = builder().build(table, x, targets=np.array([4]))
    flows, _, _ = readable(data)
    assert flows == [(0, 0), (1, 0), (2, 0), (3, 0), (1, 1), (4, 1)]
    assert [f for f, t in zip(flows, data["flow"].target.tolist()) if t] == [(4, 1)]
    # conn 5's last window (6) reaches back to window 2: conns 0-4 are out of its context
    data = builder().build(table, x, targets=np.array([5]))
    assert readable(data)[0] == [(5, 3), (5, 4), (5, 5), (5, 6)]


def test_every_row_is_a_target_exactly_once_in_pieces_and_streams(table):
    x = np.zeros((table.num_rows, 1), dtype=np.float32)
    cfg = GraphConfig(window=10.0, span=3, max_conn_windows=4, next_flows=2, context_windows=4,
                      segment_flows=2)
    b = FlowGraphBuilder(cfg)
    pieces = list(b.iter_graphs(table, x))
    assert len(pieces) > 1
    rows = np.concatenate([g["flow"].row[g["flow"].target].numpy() for g in pieces])
    assert sorted(rows.tolist()) == list(range(table.num_rows))
    # the same table streamed one row at a time, in log order
    streamed = list(b.stream((table.slice(i, 1) for i in range(table.num_rows)),
                             lambda t: np.zeros((t.num_rows, 1), np.float32), lateness=0))
    rows = np.concatenate([g["flow"].row[g["flow"].target].numpy() for g in streamed])
    assert sorted(rows.tolist()) == list(range(table.num_rows))


def test_empty_table_builds_an_empty_graph(table):
    empty = table.slice(0, 0)
    data = builder().build(empty, np.zeros((0, 3), np.float32))
    assert data["flow"].num_nodes == 0 and data["ip"].num_nodes == 0
    for et in EDGE_TYPES:
        assert data[et].edge_index.shape == (2, 0)


@pytest.mark.parametrize("targets", [[4], [5], [0, 4], [6], [2, 6], [0, 1, 2, 3, 4, 5, 6]])
def test_the_neighbourhood_alone_builds_the_same_graph(table, targets):
    """``neighbourhood(table, targets)``: the rows a graph of ``targets`` holds. Built from those
    rows alone (targets renumbered), the graph is node for node and edge for edge the one built
    from the whole table, in the same order (live scoring embeds a batch's conns that way)."""
    b = builder()
    x = np.arange(table.num_rows, dtype=np.float32)[:, None]
    targets = np.array(targets)
    keep = b.neighbourhood(table, targets)
    assert set(targets) <= set(keep.tolist()) and list(keep) == sorted(keep)
    whole = b.build(table, x, targets=targets)
    part = b.build(table.take(pa.array(keep)), x[keep], targets=np.searchsorted(keep, targets))
    assert keep[part["flow"].row.numpy()].tolist() == whole["flow"].row.tolist()
    for attr in ("x", "window", "target"):
        assert getattr(part["flow"], attr).tolist() == getattr(whole["flow"], attr).tolist()
    assert part["ip"].addr == whole["ip"].addr
    assert part["ip"].x.tolist() == whole["ip"].x.tolist()
    for et in EDGE_TYPES:
        assert part[et].edge_index.tolist() == whole[et].edge_index.tolist()
    if len(targets) < table.num_rows:
        assert len(keep) < table.num_rows      # the point: the other rows are left out


def test_neighbourhood_of_conn_4_is_its_windows_and_the_four_before(table):
    # conn 4 is in window 1: windows -3..1 hold conns 0-4; conn 5 (windows 3-6) and the conn
    # without ts (the null window) are out
    assert builder().neighbourhood(table, np.array([4])).tolist() == [0, 1, 2, 3, 4]
    assert builder().neighbourhood(table, np.array([6])).tolist() == [6]


@pytest.mark.parametrize("seed", range(5))
def test_ip_nodes_are_the_sorted_distinct_window_address_pairs(seed):
    """``_window_address_keys`` (one int64 key a pair) gives the ip nodes and the node of each
    (window, address) exactly as ``np.unique`` over the stacked pairs does, the null window,
    one window and no flow at all included."""
    from zeekml.features.graph import _window_address_keys

    rng = np.random.default_rng(seed)
    for nf, n_codes in ((0, 0), (1, 1), (7, 1), (300, 5), (2000, 400)):
        windows = rng.choice(np.array([NULL_WINDOW, -3, 0, 1, 2, 9, 1 << 40]), size=nf)
        app_w = np.sort(windows) if seed % 2 else np.full(nf, 7, dtype=np.int64)
        codes = rng.integers(0, max(n_codes, 1), size=2 * nf).astype(np.int64)
        keys, inv = _window_address_keys(app_w, codes, n_codes)
        if nf:
            want_keys, want_inv = np.unique(np.stack([np.concatenate([app_w, app_w]), codes], axis=1),
                                            axis=0, return_inverse=True)
        else:
            want_keys, want_inv = np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
        assert keys.dtype == np.int64 and inv.dtype == np.int64
        np.testing.assert_array_equal(keys, want_keys)
        np.testing.assert_array_equal(inv, want_inv.reshape(-1))


def _next_flow_edges_loop(app_w, code, k):
    """The next-flows edges as the builder made them before ``_next_flow_edges``: for each
    distance j, every pair of nodes j apart in a (window, host) run."""
    nf = len(app_w)
    grp = np.lexsort((np.arange(nf), code, app_w))
    gw, gc = app_w[grp], code[grp]
    src, dst = [], []
    for j in range(1, min(k, nf - 1) + 1):
        same = (gw[j:] == gw[:-j]) & (gc[j:] == gc[:-j])
        src.append(grp[:-j][same])
        dst.append(grp[j:][same])
    return np.stack([np.concatenate(src), np.concatenate(dst)]) if src else np.zeros((2, 0), np.int64)


@pytest.mark.parametrize("seed", range(4))
def test_next_flow_edges_are_the_pairs_up_to_k_apart_ordered_by_destination(seed):
    """``_next_flow_edges``: the same edges as pairing each node with those 1..k places before
    it in its run, each once, ordered by destination then source (the CSR order)."""
    from zeekml.features.graph import _next_flow_edges

    rng = np.random.default_rng(seed)
    for _ in range(60):
        nf, k = int(rng.integers(0, 80)), int(rng.integers(1, 7))
        app_w = np.sort(rng.choice(np.array([NULL_WINDOW, 0, 1, 2]), size=nf))
        code = rng.integers(0, 3, size=nf)
        got, want = _next_flow_edges(app_w, code, k), _next_flow_edges_loop(app_w, code, k)
        assert got.dtype == np.int64 and got.shape == want.shape
        assert sorted(map(tuple, got.T.tolist())) == sorted(map(tuple, want.T.tolist()))
        key = got[1] * (nf + 1) + got[0]
        assert (np.diff(key) > 0).all()


def test_next_flow_edges_added_afterwards_are_builds():
    """A graph built without its next-flow edges (``next_flows=False``) gets from
    ``next_flow_edges`` the edges ``build`` gives, into every node or into some (those of the
    windows ``targets_only`` keeps them for)."""
    import torch

    rng = np.random.default_rng(3)
    n = 400
    hosts = [f"10.0.0.{i}" for i in range(6)]
    table = pa.table({
        "ts": np.sort(rng.uniform(0, 40, n)), "duration": rng.exponential(3, n),
        "id.orig_h": rng.choice(hosts, n), "id.resp_h": rng.choice(hosts, n),
    })
    x = rng.standard_normal((n, 3)).astype(np.float32)
    builder = FlowGraphBuilder(GraphConfig(next_flows=3))
    _, last = builder.windows(table)
    targets = np.flatnonzero(last >= last.max() - 1)
    for t, lean in ((None, False), (targets, True)):
        want = builder.build(table, x, t, targets_only=lean)
        bare = builder.build(table, x, t, targets_only=lean, next_flows=False)
        et = ("flow", "next_orig", "flow")
        assert bare.edge_index_dict[et].shape[1] == 0 < want.edge_index_dict[et].shape[1]
        w = bare["flow"].window.numpy()
        into = w >= (int(last[targets].min()) - builder.targets_reach() if lean else w.min())
        added = builder.next_flow_edges(bare, into)
        for name in ("next_orig", "next_resp"):
            et = ("flow", name, "flow")
            assert torch.equal(added[et], want.edge_index_dict[et])
        if lean:          # without ``into``: the edges ``targets_only`` gives the graph's targets
            for et, edges in builder.next_flow_edges(bare).items():
                assert torch.equal(edges, want.edge_index_dict[et])
