"""FlowGNN: shapes, no link leakage in pretraining, cut-invariance, and a tiny learnable task."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_geometric")

from zeekml.features.flow_features import FlowFeaturizer  # noqa: E402
from zeekml.features.graph import FlowGraphBuilder, GraphConfig  # noqa: E402
from zeekml.flows.table import conn_table  # noqa: E402
from zeekml.nn.gnn import RELATION_EDGES, FlowGNN, GNNConfig, n_params  # noqa: E402
from zeekml.train import gnn as G  # noqa: E402


def synthetic_conns(n: int = 300, seed: int = 0) -> pa.Table:
    """Conns among 8 hosts over 60 s; udp conns are short and small, tcp ones long and big."""
    rng = np.random.default_rng(seed)
    hosts = [f"192.168.1.{i}" for i in range(1, 9)]
    udp = rng.random(n) < 0.5
    t = pa.table({
        "ts": np.sort(rng.uniform(0, 60, n)),
        "uid": [f"C{i}" for i in range(n)],
        "id.orig_h": rng.choice(hosts[:4], n), "id.orig_p": rng.integers(1024, 65535, n).astype(np.uint16),
        "id.resp_h": rng.choice(hosts[4:], n), "id.resp_p": np.where(udp, 53, 8443).astype(np.uint16),
        "proto": np.where(udp, "udp", "tcp"),
        "service": pa.array([("dns" if u else None) for u in udp], pa.string()),
        "duration": np.where(udp, 0.01, rng.exponential(8, n)),
        "orig_bytes": np.where(udp, 40, rng.integers(500, 5000, n)).astype(np.uint64),
        "resp_bytes": np.where(udp, 80, rng.integers(5000, 50000, n)).astype(np.uint64),
        "conn_state": np.where(udp, "SF", "S1"),
        "orig_pkts": np.where(udp, 1, 10).astype(np.uint64),
        "resp_pkts": np.where(udp, 1, 20).astype(np.uint64),
        "label": np.where(udp, "Benign", "Malicious"),
    })
    return conn_table([t])


@pytest.fixture(scope="module")
def setup():
    table = synthetic_conns()
    x = FlowFeaturizer().fit_transform(table)
    cfg = GraphConfig(window=5.0, span=3, context_windows=4, next_flows=3)
    torch.manual_seed(0)
    model = FlowGNN(GNNConfig(flow_in=x.shape[1], hidden=16, dropout=0.0)).eval()
    return table, x, cfg, model


def test_shapes_and_parameter_count(setup):
    table, x, cfg, model = setup
    g = FlowGraphBuilder(cfg).build(table, x)
    h = model(g.x_dict, g.edge_index_dict)
    assert h["flow"].shape == (g["flow"].num_nodes, 16)
    assert h["ip"].shape == (g["ip"].num_nodes, 16)
    assert n_params(model) == sum(p.numel() for p in model.parameters()) > 0
    # the default model is in the size class of the paper (about 1% of other traffic FMs)
    big = FlowGNN(GNNConfig(flow_in=x.shape[1]))
    assert 100_000 < n_params(big) < 600_000
    with pytest.raises(RuntimeError):
        model.classify(h["flow"])


def test_held_out_links_cannot_reach_the_scores(setup):
    """Message passing uses only the kept edges: rewiring the held-out links in the input graph
    changes no score, while passing them in (the reference code's leak) does."""
    table, x, cfg, model = setup
    g = FlowGraphBuilder(cfg).build(table, x)
    nf, nip = g["flow"].num_nodes, g["ip"].num_nodes
    gen = torch.Generator().manual_seed(1)
    split = G.hold_out(g.edge_index_dict, nf, nip, 0.3, gen)
    for rel, (fwd, rev) in RELATION_EDGES.items():
        held = split.held[rel]
        assert 0 < int(held.sum()) < nf
        assert split.pos[rel].shape == split.neg[rel].shape
        pos = {tuple(p) for p in split.pos[rel].t().tolist()}
        kept = {tuple(p) for p in split.edges[fwd].t().tolist()}
        kept_rev = {(f, i) for i, f in split.edges[rev].t().tolist()}
        assert not pos & kept and not pos & kept_rev
        assert split.edges[fwd].size(1) == nf - int(held.sum())
    logits, y = G.link_logits(model, g.x_dict, split)
    assert logits.shape == y.shape and y.sum() == len(y) / 2

    # rewire every held-out link to another address, in both directions
    rewired = dict(g.edge_index_dict)
    for rel, (fwd, rev) in RELATION_EDGES.items():
        held = split.held[rel]
        f, i = rewired[fwd].clone(), rewired[rev].clone()
        f[1, held] = (f[1, held] + 1) % nip
        i[0, held] = (i[0, held] + 1) % nip
        rewired[fwd], rewired[rev] = f, i
    split2 = G.hold_out(rewired, nf, nip, 0.3, gen, held=split.held)
    same = G.LinkSplit(split2.edges, split.pos, split.neg, split.held)
    logits2, _ = G.link_logits(model, g.x_dict, same)
    torch.testing.assert_close(logits2, logits)

    # sanity: the test can see a leak; message passing on the full graph changes the scores
    leaky = G.LinkSplit(dict(g.edge_index_dict), split.pos, split.neg, split.held)
    logits3, _ = G.link_logits(model, g.x_dict, leaky)
    assert not torch.allclose(logits3, logits)


def test_negatives_depend_on_the_generator_alone(setup):
    """``hold_out``'s negatives come from its generator, whatever Python's global random state
    (PyG's negative_sampling draws from it; unseeded, the same pretraining differed between
    processes)."""
    import random

    table, x, cfg, model = setup
    g = FlowGraphBuilder(cfg).build(table, x)
    nf, nip = g["flow"].num_nodes, g["ip"].num_nodes
    splits = []
    for state in (1, 2):
        random.seed(state)
        splits.append(G.hold_out(g.edge_index_dict, nf, nip, 0.3, torch.Generator().manual_seed(5)))
    for rel in RELATION_EDGES:
        assert splits[0].neg[rel].size(1) > 0
        assert torch.equal(splits[0].neg[rel], splits[1].neg[rel]), rel


def test_embeddings_do_not_depend_on_how_the_log_is_cut(setup):
    table, x, cfg, model = setup
    whole = FlowGraphBuilder(cfg).build(table, x)
    with torch.inference_mode():
        h = model(whole.x_dict, whole.edge_index_dict)["flow"]
    t = whole["flow"].target
    ref = dict(zip(whole["flow"].row[t].tolist(), h[t]))
    small = FlowGraphBuilder(GraphConfig(**{**cfg.to_dict(), "segment_flows": 25}))
    pieces = list(small.iter_graphs(table, x))
    assert len(pieces) > 3
    seen = 0
    for g in pieces:
        with torch.inference_mode():
            hg = model(g.x_dict, g.edge_index_dict)["flow"]
        tg = g["flow"].target
        for r, e in zip(g["flow"].row[tg].tolist(), hg[tg]):
            torch.testing.assert_close(e, ref[r], atol=1e-5, rtol=1e-4)
            seen += 1
    assert seen == table.num_rows
    # a graph built for one conn alone gives it the same embedding
    one = FlowGraphBuilder(cfg).build(table, x, targets=np.array([200]))
    with torch.inference_mode():
        e = model(one.x_dict, one.edge_index_dict)["flow"][one["flow"].target]
    torch.testing.assert_close(e[0], ref[200], atol=1e-5, rtol=1e-4)


def test_pretrain_then_finetune_learns_a_separable_task():
    table = synthetic_conns(160, seed=3)
    labels = np.asarray(table.column("label").to_pylist(), dtype=object)
    base, m = G.pretrain_bundle(table, seed=0, epochs=2, hidden=16)
    assert len(m["pretrain_loss"]) == 2 and m["link_auroc"] is not None
    train = np.arange(0, 160, 4)  # 40 labeled conns
    for start in (base, None):
        bundle, fm = G.finetune_bundle(start, table, labels, train, hide_service=False, seed=0,
                                       epochs=30, hidden=16)
        assert bundle.classes == ["Benign", "Malicious"]
        proba = G.predict_proba(bundle, table)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
        test = np.setdiff1d(np.arange(160), train)
        acc = np.mean(np.asarray(bundle.classes)[proba[test].argmax(1)] == labels[test])
        assert acc > 0.9, (start is not None, acc)


def test_hide_service_zeroes_service_and_port_columns():
    table = synthetic_conns(50)
    f = FlowFeaturizer().fit(table)
    cols = G.service_columns(f)
    names = [f.feature_names[i] for i in cols]
    assert names and all(n.startswith(("service_", "resp_p_")) for n in names)
    x = G.featurize(f, table, hide_service=True)
    assert np.all(x[:, cols] == 0.0)
    assert not np.all(G.featurize(f, table, hide_service=False)[:, cols] == 0.0)


@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("n_src,n_dst,n_edges", [(0, 0, 0), (5, 3, 0), (1, 1, 1), (50, 40, 300),
                                                  (2000, 7, 1500)])
def test_csr_adjacency_is_pygs(n_src, n_dst, n_edges, ordered):
    """``csr_adjacency`` gives the tensor ``to_torch_csr_tensor`` gives for unique edges in any
    order, or already ordered by destination then source (no sort then): the same row
    pointers, columns (ascending within a row), values and dtypes."""
    import warnings

    from torch_geometric.utils import to_torch_csr_tensor

    from zeekml.nn.gnn import csr_adjacency

    rng = np.random.default_rng(n_edges)
    pairs = rng.permutation(n_src * n_dst)[:n_edges] if n_src * n_dst else np.zeros(0, np.int64)
    if ordered:
        pairs = np.sort(pairs)
    ei = torch.from_numpy(np.stack([pairs % max(n_src, 1), pairs // max(n_src, 1)]).astype(np.int64))
    got = csr_adjacency(ei, n_src, n_dst)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = to_torch_csr_tensor(ei.flip(0), size=(n_dst, n_src))
    assert got.layout == torch.sparse_csr and got.shape == want.shape
    for part in ("crow_indices", "col_indices", "values"):
        a, b = getattr(got, part)(), getattr(want, part)()
        assert a.dtype == b.dtype and torch.equal(a, b), part


def test_the_targets_cone_gives_the_whole_graphs_bits(setup, avx2):
    """``FlowGNN(..., targets=)`` updates at each step only the rows the targets read through
    the steps after it; the targets' embeddings are the whole graph's bits (1-3 targets too:
    each step's rows are padded to ``MIN_ROWS``), other rows are 0, and the cone is smaller
    than the graph where the targets are a part of it."""
    from checks import assert_same
    from zeekml.nn.gnn import adjacency, cone_rows

    table, x, cfg, model = setup
    g = FlowGraphBuilder(cfg).build(table, x)
    with torch.inference_mode():
        full = model(g.x_dict, g.edge_index_dict)
    n = g["flow"].num_nodes
    rng = np.random.default_rng(1)
    for t in [np.array([n - 1]), np.array([3, 4]), np.arange(n - 40, n), rng.choice(n, 9, replace=False)]:
        t = torch.as_tensor(np.sort(t))
        with torch.inference_mode():
            h = model(g.x_dict, g.edge_index_dict, targets=t)
        assert_same(h["flow"][t].numpy(), full["flow"][t].numpy(), avx2)
        rest = torch.ones(n, dtype=torch.bool)
        rest[t] = False
        assert not h["flow"][rest].any()
    # the last windows' targets: the first step computes fewer flow rows than the graph holds,
    # the last one the targets alone
    t = torch.arange(n - 40, n)
    sizes = {"flow": n, "ip": g["ip"].num_nodes}
    need, _ = cone_rows([c.edge_types for c in model.encoder.convs],
                        adjacency(g.x_dict, g.edge_index_dict), sizes, t)
    assert len(need[-1]["flow"]) == 40 and len(need[-1]["ip"]) == 0
    assert len(need[1]["flow"]) < n


def test_a_graph_built_for_its_targets_alone_gives_them_the_same_bits(setup, avx2):
    """``build(..., targets_only=True)`` leaves out the next-flow edges into windows no target
    reads them in (``targets_reach`` windows before the earliest target window): fewer edges,
    the targets' embeddings the same bits, with the cone or the whole forward pass."""
    from checks import assert_same

    table, x, cfg, model = setup
    builder = FlowGraphBuilder(cfg)
    _, last = builder.windows(table)
    targets = np.flatnonzero(last >= last.max() - 1)          # the last two windows' conns
    whole = builder.build(table, x, targets)
    lean = builder.build(table, x, targets, targets_only=True)
    et = ("flow", "next_orig", "flow")
    assert lean.edge_index_dict[et].shape[1] < whole.edge_index_dict[et].shape[1]
    assert builder.targets_reach() == 2
    dst_w = lean["flow"].window[lean.edge_index_dict[et][1]]
    assert int(dst_w.min()) >= int(last[targets].min()) - 2
    t = whole["flow"].target
    assert torch.equal(t, lean["flow"].target)
    with torch.inference_mode():
        want = model(whole.x_dict, whole.edge_index_dict)["flow"][t].numpy()
        for cone in (None, t.nonzero().squeeze(1)):
            got = model(lean.x_dict, lean.edge_index_dict, targets=cone)["flow"][t].numpy()
            assert_same(got, want, avx2)


def test_known_states_are_filled_in_not_computed(setup, avx2):
    """``FlowGNN(..., targets=, known=)``: rows whose state after a step the caller gives are
    not computed, nor what only they read; the targets get the bits they get without (the
    states given being this graph's), and other bits where the states given are not."""
    from checks import assert_same

    table, x, cfg, model = setup
    g = FlowGraphBuilder(cfg).build(table, x)
    n = g["flow"].num_nodes
    earlier, later = torch.arange(n - 80, n - 40), torch.arange(n - 40, n)
    with torch.inference_mode():
        want = model(g.x_dict, g.edge_index_dict, targets=later)["flow"][later]
        computed: list = []
        model(g.x_dict, g.edge_index_dict, targets=earlier, computed=computed)
        # every step's states but the last, as the live state keeps them
        known = [dict(step) for step in computed[:-1]] + [{}]
        again: list = []
        got = model(g.x_dict, g.edge_index_dict, targets=later, known=known, computed=again)["flow"][later]
        fresh: list = []
        model(g.x_dict, g.edge_index_dict, targets=later, computed=fresh)
        wrong = [{k: (r, torch.zeros_like(s)) for k, (r, s) in step.items()} for step in known]
        moved = model(g.x_dict, g.edge_index_dict, targets=later, known=wrong)["flow"][later]
    assert_same(got.numpy(), want.numpy(), avx2)
    rows = [sum(len(r) for r, _ in step.values()) for step in again]
    assert sum(rows) < sum(sum(len(r) for r, _ in step.values()) for step in fresh)
    assert not torch.equal(moved, want)
