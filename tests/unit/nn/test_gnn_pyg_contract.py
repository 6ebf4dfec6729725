"""The GNN's own relation layers (``MeanSAGE``, ``RelationConvs``) against PyTorch Geometric's
``SAGEConv(root_weight=False)`` and ``HeteroConv(aggr="sum")``, which they replace at inference
so that ``zeekml score`` never imports PyG: the same state_dict keys (every shipped gnn model
loads), the same initial weights under a seed (training starts where it started), the same
outputs and gradients bit for bit. PyG stays the reference here."""
from __future__ import annotations

import glob
import json
import os

import pytest

torch = pytest.importorskip("torch")
pyg_nn = pytest.importorskip("torch_geometric.nn")

from torch import nn  # noqa: E402

from zeekml.features.flow_features import FlowFeaturizer  # noqa: E402
from zeekml.features.graph import SPATIAL_EDGES, TEMPORAL_EDGES, FlowGraphBuilder, GraphConfig  # noqa: E402
from zeekml.nn.gnn import FlowGNN, FlowGraphEncoder, GNNConfig, MeanSAGE, RelationConvs, csr_adjacency  # noqa: E402

from test_gnn import synthetic_conns  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


class PygEncoder(nn.Module):
    """``FlowGraphEncoder`` as it was built before (``zeekml/nn/gnn.py`` at 8f91e7e): PyG's
    ``HeteroConv`` of ``SAGEConv``s, then the root weights and the norms, in that order."""

    def __init__(self, cfg: GNNConfig):
        super().__init__()
        h = cfg.hidden
        self.flow_in = nn.Linear(cfg.flow_in, h)
        self.ip_in = nn.Linear(cfg.ip_in + 2, h)
        self.convs = nn.ModuleList()
        self.roots = nn.ModuleList()
        self.norms = nn.ModuleList()
        for _ in range(cfg.layers):
            for types in (TEMPORAL_EDGES, SPATIAL_EDGES):
                self.convs.append(pyg_nn.HeteroConv({et: pyg_nn.SAGEConv(h, h, root_weight=False)
                                                     for et in types}, aggr="sum"))
                self.roots.append(nn.ModuleDict({"flow": nn.Linear(h, h, bias=False),
                                                 "ip": nn.Linear(h, h, bias=False)}))
                self.norms.append(nn.ModuleDict({"flow": nn.LayerNorm(h), "ip": nn.LayerNorm(h)}))

    def forward(self, x_dict, edge_index_dict):
        """The encoder's function through PyG's own code: ``HeteroConv.forward`` (which stacks
        and sums the relations' outputs) over PyG's CSR adjacencies."""
        import warnings

        import torch.nn.functional as F
        from torch_geometric.utils import to_torch_csr_tensor

        sizes = {k: v.size(0) for k, v in x_dict.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adj = {et: to_torch_csr_tensor(ei.flip(0), size=(sizes[et[2]], sizes[et[0]]))
                   for et, ei in edge_index_dict.items()}
        deg = [torch.log1p(adj[et].crow_indices().diff().to(x_dict["ip"].dtype))
               for et in (("flow", "rev_orig", "ip"), ("flow", "to_resp", "ip"))]
        ip = torch.cat([x_dict["ip"], torch.stack(deg, dim=1)], dim=1)
        h = {"flow": F.leaky_relu(self.flow_in(x_dict["flow"])), "ip": F.leaky_relu(self.ip_in(ip))}
        for conv, root, norm in zip(self.convs, self.roots, self.norms):
            out = conv(h, {et: a for et, a in adj.items() if et in conv.convs})
            h = {k: norm[k](v + F.leaky_relu(root[k](v) + out[k] if k in out else root[k](v)))
                 for k, v in h.items()}
        return h


def graph(seed: int, n: int = 400):
    table = synthetic_conns(n, seed=seed)
    x = FlowFeaturizer().fit_transform(table)
    return x.shape[1], FlowGraphBuilder(GraphConfig(window=5.0, next_flows=4)).build(table, x)


def shipped_gnn_dirs() -> list[str]:
    dirs = []
    for cfg in sorted(glob.glob(os.path.join(ROOT, "models", "*", "config.json"))):
        with open(cfg) as f:
            if json.load(f).get("kind") == "gnn":
                dirs.append(os.path.dirname(cfg))
    return dirs


def test_there_are_shipped_gnn_models():
    assert {os.path.basename(d) for d in shipped_gnn_dirs()} >= {"gnn-base", "malicious-gnn"}


@pytest.mark.parametrize("model_dir", shipped_gnn_dirs(), ids=os.path.basename)
def test_shipped_weights_have_exactly_our_keys(model_dir):
    """Every key of the shipped weights (written by the PyG-built model) is one of ours and
    back: ``load_state_dict`` is strict, so a user's model trained before loads too."""
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = GNNConfig(**json.load(f)["model"])
    state = torch.load(os.path.join(model_dir, "weights.pt"), weights_only=True)
    ours = FlowGNN(cfg).state_dict()
    assert list(state) == list(ours)
    assert all(state[k].shape == ours[k].shape for k in state)
    assert any("convs.<ip___orig_to___flow>.lin_l.weight" in k for k in state)
    FlowGNN(cfg).load_state_dict(state)


@pytest.mark.parametrize("hidden,flow_in", [(16, 81), (64, 81), (24, 7)])
def test_same_initial_weights_as_the_pyg_built_encoder(hidden, flow_in):
    """Built under the same seed, our encoder draws PyG's initial weights (PyG's Linear bounds,
    and SAGEConv's second reset), so training from scratch is unchanged."""
    cfg = GNNConfig(flow_in=flow_in, hidden=hidden)
    torch.manual_seed(7)
    want = PygEncoder(cfg).state_dict()
    torch.manual_seed(7)
    got = FlowGraphEncoder(cfg).state_dict()
    assert list(got) == list(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    # and the random stream is left where PyG left it
    torch.manual_seed(7)
    PygEncoder(cfg)
    after_pyg = torch.rand(3)
    torch.manual_seed(7)
    FlowGraphEncoder(cfg)
    assert torch.equal(torch.rand(3), after_pyg)


def test_mean_sage_is_sageconv_on_hand_built_tensors():
    """3 sources -> 3 destinations, destination 2 without sources (gets the bias alone)."""
    torch.manual_seed(0)
    ours = MeanSAGE(4, 2)
    ref = pyg_nn.SAGEConv(4, 2, root_weight=False)
    ref.load_state_dict(ours.state_dict())
    x = torch.tensor([[1.0, 0.0, 2.0, -1.0], [3.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    x_dst = torch.zeros(3, 4)
    ei = torch.tensor([[0, 1, 2], [0, 0, 1]])            # (src, dst): dst 0 <- {0, 1}, dst 1 <- {2}
    adj = csr_adjacency(ei, 3, 3)
    got = ours(x, adj)
    assert got.shape == (3, 2)
    mean = torch.stack([(x[0] + x[1]) / 2, x[2], torch.zeros(4)])
    assert torch.equal(got, mean @ ours.lin_l.weight.t() + ours.lin_l.bias)
    assert torch.equal(got[2], ours.lin_l.bias)
    assert torch.equal(got, ref((x, x_dst), adj))


def test_relation_convs_keys_are_heteroconvs():
    torch.manual_seed(0)
    ours = RelationConvs({et: MeanSAGE(8, 8) for et in SPATIAL_EDGES})
    ref = pyg_nn.HeteroConv({et: pyg_nn.SAGEConv(8, 8, root_weight=False) for et in SPATIAL_EDGES})
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert [et for et, _ in ours.items()] == list(SPATIAL_EDGES) == list(ref.convs.keys())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_encoder_is_pygs_forward_and_backward_bit_for_bit(seed):
    """With the same weights, every embedding (flow and ip nodes) has the bits of PyG's
    HeteroConv path, and so has every parameter's gradient of a loss on them (training's
    steps are the same)."""
    flow_in, g = graph(seed)
    torch.manual_seed(seed)
    model = FlowGNN(GNNConfig(flow_in=flow_in, hidden=32, dropout=0.0))
    ref = PygEncoder(model.cfg)
    ref.load_state_dict(model.encoder.state_dict())
    with torch.inference_mode():
        got = model(g.x_dict, g.edge_index_dict)
        want = ref(g.x_dict, g.edge_index_dict)
    for k in ("flow", "ip"):
        assert got[k].shape == want[k].shape == (g[k].num_nodes, 32)
        assert torch.equal(got[k], want[k]), k
    model.train()
    ref.train()
    for m in (model.encoder, ref):
        h = m(g.x_dict, g.edge_index_dict)
        (h["flow"].square().mean() + h["ip"].sin().mean()).backward()
    got_g = dict(model.encoder.named_parameters())
    for name, p in ref.named_parameters():
        assert p.grad is not None and torch.equal(got_g[name].grad, p.grad), name


def test_flow_graph_is_the_hetero_data_pyg_would_hold():
    """``FlowGraph.to_hetero_data`` holds the same tensors, read the same way."""
    _, g = graph(0, n=120)
    data = g.to_hetero_data()
    assert set(data.node_types) == {"flow", "ip"}
    assert list(data.edge_types) == g.edge_types
    for k in ("flow", "ip"):
        assert data[k].num_nodes == g[k].num_nodes
        assert torch.equal(data.x_dict[k], g.x_dict[k])
        assert torch.equal(data[k].window, g[k].window)
    for et, ei in g.edge_index_dict.items():
        assert torch.equal(data[et].edge_index, ei) and torch.equal(g[et].edge_index, ei)
    assert torch.equal(data["flow"].row, g["flow"].row)
    assert torch.equal(data["flow"].target, g["flow"].target)
    assert data["ip"].addr == g["ip"].addr
    with pytest.raises(KeyError, match="no node or edge type"):
        g["host"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_encoder_is_pygs_on_cuda():
    """On CUDA ``torch.sparse.mm`` has no mean reduction: ``MeanSAGE`` divides the sum by the
    degree there, as PyG's spmm does, for the same bits."""
    flow_in, g = graph(0)
    torch.manual_seed(0)
    model = FlowGNN(GNNConfig(flow_in=flow_in, hidden=32, dropout=0.0)).eval().cuda()
    ref = PygEncoder(model.cfg).cuda().eval()
    ref.load_state_dict(model.encoder.state_dict())
    xd = {k: v.cuda() for k, v in g.x_dict.items()}
    ed = {k: v.cuda() for k, v in g.edge_index_dict.items()}
    with torch.inference_mode():
        got, want = model(xd, ed), ref(xd, ed)
    for k in ("flow", "ip"):
        assert torch.equal(got[k], want[k]), k
