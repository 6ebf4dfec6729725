"""The spatio-temporal flow-graph GNN: encoder, link-prediction decoder, classification head.

Runs over the graphs of ``zeekml.features.graph.FlowGraphBuilder``. Each layer runs the temporal
edge types, then the spatial ones; each step is residual
(``h + dropout(leaky_relu(root(h) + sum_r sage_r(h)))``) and layer-normalised per node type.
Address nodes get their degrees in the *message-passing* graph as inputs, so a held-out link
changes nothing the encoder sees.

The relation layers are PyG's ``HeteroConv(aggr="sum")`` of ``SAGEConv(root_weight=False)``
(mean aggregation, then one linear map) rebuilt as two small modules, ``RelationConvs`` and
``MeanSAGE``: the same parameters under the same state_dict keys, initialised from the same
random draws, computing the same bits (tests/unit/nn/test_gnn_pyg_contract.py runs PyG's with
the same weights). Importing PyG costs ~2 s (its ``__init__`` loads ``torch._dynamo``, datasets,
llm code) that every ``zeekml score`` with the shipped models paid for two parameter containers;
PyG stays the reference in tests and gives training its ``negative_sampling``
(``zeekml.train.gnn``).

Legend: F = flow features, H = hidden, C = classes, P = scored (flow, ip) pairs.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zeekml.features.graph import IP_FEATURES, SPATIAL_EDGES, TEMPORAL_EDGES

EdgeType = tuple[str, str, str]
RELATIONS = ("orig", "resp")
# relation -> (edge type holding (flow, ip) pairs, its reverse)
RELATION_EDGES: dict[str, tuple[EdgeType, EdgeType]] = {
    "orig": (("flow", "rev_orig", "ip"), ("ip", "orig_to", "flow")),
    "resp": (("flow", "to_resp", "ip"), ("ip", "rev_resp", "flow")),
}


@dataclass
class GNNConfig:
    """Constructor arguments of ``FlowGNN`` (stored beside the weights).

    Args:
        flow_in: flow feature width F.
        ip_in: static address attributes (default 5, ``IP_FEATURES``); 2 degree inputs are added.
        hidden: width H of every node embedding (default 64; the reference code uses 128, which
            costs 4x the CPU time for a few points of accuracy we could not measure here).
        layers: temporal + spatial layer pairs (default 2).
        dropout: dropout on each residual update (default 0.1).
        n_classes: C; 0 = no classification head (a pretrained base).
        head_hidden: hidden width of the classification MLP (default 64); 0 = one linear layer
            (the linear head of LP-FT finetuning, ``zeekml.train.common.LPFT``).
    """

    flow_in: int
    ip_in: int = len(IP_FEATURES)
    hidden: int = 64
    layers: int = 2
    dropout: float = 0.1
    n_classes: int = 0
    head_hidden: int = 64

    def to_dict(self) -> dict:
        return asdict(self)


class PygLinear(nn.Linear):
    """``nn.Linear`` initialised as PyG's ``Linear`` is (same bounds, written as PyG computes
    them, so the draws give the same bits), for models trained with PyG's layers to start from
    the same weights under the same seed."""

    def reset_parameters(self) -> None:
        fan, a = self.in_features, math.sqrt(5)
        # PyG's kaiming_uniform, to the bit: (1 + a**2) is 6.000000000000001 here, and nn.Linear's
        # gain-based bound differs from this one in the last bit for some fans
        bound = math.sqrt(6 / ((1 + a**2) * fan))
        self.weight.data.uniform_(-bound, bound)
        if self.bias is not None:
            b = 1.0 / math.sqrt(fan)
            self.bias.data.uniform_(-b, b)


class MeanSAGE(nn.Module):
    """PyG's ``SAGEConv(in_channels, out_channels, root_weight=False)`` (aggr="mean", no
    projection, no normalisation) over a transposed CSR adjacency: the mean of each destination's
    source rows, then ``lin_l``. A destination without sources gets ``lin_l(0)`` = its bias.

    Args:
        in_channels: source feature width.
        out_channels: output width.

    Shapes:
        x ``[N_src, in_channels]``, adj_t ``[N_dst, N_src]`` (sparse CSR, values 1.0)
        -> ``[N_dst, out_channels]``.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.lin_l = PygLinear(in_channels, out_channels)
        # PyG's SAGEConv resets lin_l once more after Linear's own reset: the same draws twice,
        # so a model built here under a seed has the weights the PyG-built one had
        self.lin_l.reset_parameters()

    def forward(self, x: Tensor, adj_t: Tensor) -> Tensor:
        if adj_t.is_cuda:
            # torch.sparse.mm has no reduce="mean" on CUDA; PyG's spmm divides the sum by the
            # degree there, and so do we, to give the bits PyG gave
            deg = adj_t.crow_indices().diff()
            agg = torch.sparse.mm(adj_t, x) / deg.view(-1, 1).clamp_(min=1)
        else:
            agg = torch.sparse.mm(adj_t, x, "mean")
        return self.lin_l(agg)


def relation_key(et: EdgeType) -> str:
    """The module name of edge type ``et`` in ``RelationConvs``: PyG's ``ModuleDict`` key
    (``('ip', 'orig_to', 'flow')`` -> ``'<ip___orig_to___flow>'``), which the state_dicts of
    every model trained so far hold."""
    return f"<{'___'.join(et)}>"


class RelationConvs(nn.Module):
    """One ``MeanSAGE`` per edge type (PyG's ``HeteroConv(convs, aggr="sum")`` as a parameter
    container; ``relation_sum`` runs it). ``convs`` is keyed by ``relation_key``.

    Args:
        convs: edge type -> its layer, in the order their outputs are summed.
    """

    def __init__(self, convs: dict[EdgeType, MeanSAGE]):
        super().__init__()
        self.edge_types = tuple(convs)
        self.convs = nn.ModuleDict({relation_key(et): m for et, m in convs.items()})

    def items(self) -> list[tuple[EdgeType, MeanSAGE]]:
        """``(edge type, layer)`` pairs in summing order."""
        return [(et, self.convs[relation_key(et)]) for et in self.edge_types]

    def forward(self, h: dict[str, Tensor], adj: dict[EdgeType, Tensor]) -> dict[str, Tensor]:
        return relation_sum(self, h, adj)


class FlowGraphEncoder(nn.Module):
    """Node embeddings of a flow graph.

    Shapes:
        x_dict: ``{'flow': [N_flow, F], 'ip': [N_ip, ip_in]}``; edge_index_dict: ``{type: [2, E]}``.
        returns ``{'flow': [N_flow, H], 'ip': [N_ip, H]}``.
    """

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
                # one root (self) weight per node type instead of one per relation: the sum of
                # per-relation root weights is the same function at half the matmuls
                self.convs.append(RelationConvs({et: MeanSAGE(h, h) for et in types}))
                self.roots.append(nn.ModuleDict({"flow": nn.Linear(h, h, bias=False),
                                                 "ip": nn.Linear(h, h, bias=False)}))
                self.norms.append(nn.ModuleDict({"flow": nn.LayerNorm(h), "ip": nn.LayerNorm(h)}))
        self.dropout = cfg.dropout

    def forward(self, x_dict: dict[str, Tensor], edge_index_dict: dict[EdgeType, Tensor],
                targets: Tensor | None = None, known: list[dict[str, tuple[Tensor, Tensor]]] | None = None,
                computed: list[dict[str, tuple[Tensor, Tensor]]] | None = None) -> dict[str, Tensor]:
        """``targets``: the flow nodes whose embedding is wanted ``[t]`` (default every node).
        Each step then updates only the nodes those depend on through the steps after it (the
        targets' cone: at the last step the targets alone, a step before also their sources,
        and so on), and the other rows of the result are 0: a live batch's graph holds 4
        windows of context before its targets, whose own embeddings nobody reads. Every row
        computed is the bits the whole graph gives it (``cone_rows``).

        With ``targets`` only: ``known[i]`` (``i`` = 0 for the input projection, then one per
        step) gives, per node type, rows whose state after step ``i`` the caller already has
        and those states (``(rows [m], states [m, H])``, the caller's word that they are this
        graph's): they are not computed, nor what only they read (the GNN's live state,
        ``zeekml.scoring.detectors.gnn_live``). ``computed``, a list, gets per step the rows
        computed and their states in the same form (rows may repeat: ``MIN_ROWS`` padding)."""
        adj = adjacency(x_dict, edge_index_dict)
        deg = []
        for et in (("flow", "rev_orig", "ip"), ("flow", "to_resp", "ip")):
            a = adj.get(et)
            d = (a.crow_indices().diff().to(x_dict["ip"].dtype) if a is not None
                 else torch.zeros(x_dict["ip"].size(0), device=x_dict["ip"].device))
            deg.append(torch.log1p(d))
        ip = torch.cat([x_dict["ip"], torch.stack(deg, dim=1)], dim=1)
        if targets is not None:
            return self._cone(x_dict["flow"], ip, adj, targets, known, computed)
        h = {"flow": F.leaky_relu(self.flow_in(x_dict["flow"])), "ip": F.leaky_relu(self.ip_in(ip))}
        for conv, root, norm in zip(self.convs, self.roots, self.norms):
            out = relation_sum(conv, h, adj)
            h = {k: self._update(root, norm, k, v, out.get(k)) for k, v in h.items()}
        return h

    def _update(self, root: nn.ModuleDict, norm: nn.ModuleDict, k: str, v: Tensor,
                agg: Tensor | None) -> Tensor:
        """One step's new state of node type ``k``'s rows ``v`` ``[m, H]`` from the summed
        messages of their relations ``agg`` ``[m, H]`` (None: no relation reaches them)."""
        upd = root[k](v)
        if agg is not None:
            upd = upd + agg
        return norm[k](v + F.dropout(F.leaky_relu(upd), self.dropout, self.training))

    def _cone(self, flow: Tensor, ip: Tensor, adj: dict[EdgeType, Tensor], targets: Tensor,
              known: list[dict[str, tuple[Tensor, Tensor]]] | None = None,
              computed: list[dict[str, tuple[Tensor, Tensor]]] | None = None) -> dict[str, Tensor]:
        """``forward`` of the ``targets``' cone (``cone_rows``): each step's update of the rows
        a later step reads, from those rows' CSR adjacency rows (``csr_rows``: the same sources
        in the same order, so each mean is the same sum); rows of ``known`` are filled in, not
        computed (``forward``)."""
        sizes = {"flow": flow.size(0), "ip": ip.size(0)}
        steps = list(zip(self.convs, self.roots, self.norms))
        masks = None if known is None else [{k: r for k, (r, _) in step.items()} for step in known]
        read: list[dict[str, Tensor]] = []
        need, subs = cone_rows([c.edge_types for c in self.convs], adj, sizes, targets, masks, read)
        # each step's states are kept for the rows read after it only (computed or known), in
        # node order: a step of a live graph reads ~100,000 of its ~200,000 flow nodes (zeroed
        # full-size states were 11 allocations of up to 50 MB a call)
        have = [{k: m.nonzero().squeeze(1) for k, m in step.items()} for step in read]
        place = [{k: _places(rows, sizes[k]) for k, rows in step.items()} for step in have]

        def start(i: int, k: str, like: Tensor, width: int) -> Tensor:
            # every row had is computed or known: none is left unset
            out = like.new_empty(len(have[i][k]), width)
            if known is not None and k in known[i] and len(known[i][k][0]):
                rows, states = known[i][k]
                used = read[i][k][rows]
                out[place[i][k][rows[used]]] = states[used]
            return out

        h: dict[str, Tensor] = {}
        done: dict[str, tuple[Tensor, Tensor]] = {}
        for k, x, lin in (("flow", flow, self.flow_in), ("ip", ip, self.ip_in)):
            rows = need[0][k]
            h[k] = start(0, k, x, lin.out_features)
            if len(rows):
                h[k][place[0][k][rows]] = v = F.leaky_relu(lin(x.index_select(0, rows)))
                done[k] = (rows, v)
        if computed is not None:
            computed.append(done)
        for i, (conv, root, norm) in enumerate(steps):
            # the messages of the rows updated, their sources read at their places in ``h``
            sub = {et: _csr_cols(a, place[i][et[0]], len(have[i][et[0]])) for et, a in subs[i].items()}
            out = relation_sum(conv, h, sub)
            new, done = {}, {}
            for k, v in h.items():
                rows = need[i + 1][k]
                new[k] = start(i + 1, k, v, v.size(1))
                if len(rows):
                    new[k][place[i + 1][k][rows]] = u = self._update(
                        root, norm, k, v.index_select(0, place[i][k][rows]), out.get(k))
                    done[k] = (rows, u)
            if computed is not None:
                computed.append(done)
            h = new
        # every node's row, 0 where not computed
        full = {}
        for k, v in h.items():
            full[k] = v.new_zeros(sizes[k], v.size(1))
            full[k][have[-1][k]] = v
        return full


def _places(rows: Tensor, n: int) -> Tensor:
    """``[n]``: each row's place in the sorted distinct ``rows`` (-1 for the others)."""
    out = torch.full((n,), -1, dtype=torch.int64, device=rows.device)
    out[rows] = torch.arange(len(rows), device=rows.device)
    return out


def _csr_cols(adj_t: Tensor, place: Tensor, n_src: int) -> Tensor:
    """A CSR adjacency ``[m, N_src]`` with its columns moved to their ``place`` ``[N_src]``
    among ``n_src`` (a monotone map: each row's sources keep their order, so a mean over them
    is the same sum)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # "sparse CSR tensor support is in beta state"
        return torch.sparse_csr_tensor(adj_t.crow_indices(), place[adj_t.col_indices()],
                                       adj_t.values(), size=(adj_t.size(0), n_src))


# Rows of a matrix product below which CPU kernels give a row other bits than among more rows
# (``zeekml.scoring.detectors.gnn.MIN_NODES``): a cone's row sets are padded up to it.
MIN_ROWS = 4


def _padded(rows: Tensor) -> Tensor:
    """``rows`` with copies of its first row appended up to ``MIN_ROWS`` (none when empty)."""
    if 0 < len(rows) < MIN_ROWS:
        rows = torch.cat([rows, rows[:1].expand(MIN_ROWS - len(rows))])
    return rows


def csr_rows(adj_t: Tensor, rows: Tensor) -> Tensor:
    """The rows ``rows`` ``[m]`` of a CSR adjacency ``[N_dst, N_src]`` as one ``[m, N_src]``:
    each with its sources in the same order, so a mean over them is the same sum."""
    import warnings

    crow, col = adj_t.crow_indices(), adj_t.col_indices()
    start = crow.index_select(0, rows)
    count = crow.index_select(0, rows + 1) - start
    new_crow = torch.zeros(len(rows) + 1, dtype=crow.dtype, device=crow.device)
    torch.cumsum(count, 0, out=new_crow[1:])
    total = int(new_crow[-1])
    at = torch.repeat_interleave(start - new_crow[:-1], count, output_size=total) + \
        torch.arange(total, device=crow.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # "sparse CSR tensor support is in beta state"
        return torch.sparse_csr_tensor(new_crow, col.index_select(0, at),
                                       torch.ones(total, device=crow.device),
                                       size=(len(rows), adj_t.size(1)))


def cone_rows(step_edges: list[tuple[EdgeType, ...]], adj: dict[EdgeType, Tensor],
              sizes: dict[str, int], targets: Tensor,
              known: list[dict[str, Tensor]] | None = None, read: list | None = None
              ) -> tuple[list[dict[str, Tensor]], list[dict[EdgeType, Tensor]]]:
    """Which rows of each node type each step of the encoder must compute for the flow nodes
    ``targets``: ``need[i]`` the rows whose state after step ``i`` (0 = the input projection)
    is read, padded to ``MIN_ROWS``; ``subs[i]`` the adjacency rows (``csr_rows``) of step
    ``i + 1``'s updated rows per edge type. From the last step down: the targets, then each
    step's rows and every source they read (a node's update reads its own state too).
    ``known[i]`` (per node type, rows ``[m]``): rows whose state after step ``i`` is had
    already, left out of ``need[i]`` with what only they read. ``read``, a list, gets per step
    (from 0) the mask of the rows whose state after it is read (computed or known).

    Shapes:
        targets ``[t]`` -> ``need``: ``len(step_edges) + 1`` dicts of ``[m]`` int64
    """
    n = len(step_edges)
    need: list[dict[str, Tensor]] = [{} for _ in range(n + 1)]
    subs: list[dict[EdgeType, Tensor]] = [{} for _ in range(n)]
    masks = {k: torch.zeros(v, dtype=torch.bool, device=targets.device) for k, v in sizes.items()}
    masks["flow"][targets] = True

    def unknown(i: int) -> None:
        if read is not None:
            read.insert(0, {k: m.clone() for k, m in masks.items()})
        if known is not None:
            for k, rows in known[i].items():
                if len(rows):
                    masks[k][rows] = False

    for i in reversed(range(n)):
        unknown(i + 1)
        need[i + 1] = {k: _padded(m.nonzero().squeeze(1)) for k, m in masks.items()}
        masks = {k: m.clone() for k, m in masks.items()}
        for et in step_edges[i]:
            a = adj.get(et)
            if a is None or not len(need[i + 1][et[2]]):
                continue
            sub = csr_rows(a, need[i + 1][et[2]])
            subs[i][et] = sub
            masks[et[0]][sub.col_indices()] = True
    unknown(0)
    need[0] = {k: _padded(m.nonzero().squeeze(1)) for k, m in masks.items()}
    return need, subs


def relation_sum(conv: RelationConvs, h: dict[str, Tensor], adj: dict[EdgeType, Tensor]) -> dict[str, Tensor]:
    """``conv(h, adj)``: each relation's ``MeanSAGE`` output for the edge types of ``adj``,
    summed per destination type in ``conv``'s order. PyG's HeteroConv sums by
    ``torch.stack(outputs).sum(0)``, a copy of every output and a pass over it (0.28 s of the
    GNN's 2.1 s forward over bench/score_speed.py's 100k conns, one thread); adding them in
    place in the same order gives the same bits (tests/unit/nn/test_gnn_pyg_contract.py)."""
    out: dict[str, Tensor] = {}
    for et, sage in conv.items():
        a = adj.get(et)
        if a is None:
            continue
        src, _, dst = et
        y = sage(h[src], a)
        out[dst] = out[dst] + y if dst in out else y
    return out


def adjacency(x_dict: dict[str, Tensor], edge_index_dict: dict[EdgeType, Tensor]) -> dict[EdgeType, Tensor]:
    """Every edge type as a transposed CSR adjacency (kept as is when it already is one)."""
    sizes = {k: v.size(0) for k, v in x_dict.items()}
    return {et: (ei if ei.layout == torch.sparse_csr else csr_adjacency(ei, sizes[et[0]], sizes[et[2]]))
            for et, ei in edge_index_dict.items()}


def csr_adjacency(edge_index: Tensor, n_src: int, n_dst: int) -> Tensor:
    """``edge_index`` ``[2, E]`` (src, dst) of unique edges -> transposed CSR adjacency
    ``[n_dst, n_src]``: each destination's sources in ascending order, every value 1.0.

    SAGEConv's mean aggregation through ``torch.sparse.mm`` is about 3x faster on CPU than the
    scatter path for our graphs (edges are unique, so the result is the same). The same tensor
    as ``torch_geometric.utils.to_torch_csr_tensor`` (tested), at half its cost: one sort of
    ``dst * n_src + src`` (none when the edges come in that order) and a count per destination,
    without PyG's general coalescing (which also merges duplicate edges, which a flow graph has
    none of): 0.44 -> 0.23 s over the graphs of bench/score_speed.py's 100k conns, one thread.
    """
    import warnings

    src, dst = edge_index[0], edge_index[1]
    key = dst * n_src + src
    # the builder gives its biggest edge types (next_orig, next_resp) and the flow-side
    # spatial ones in this order already: a pass to check it instead of a sort
    ordered = key.numel() < 2 or bool((key[1:] > key[:-1]).all())
    col = src.clone() if ordered else src[torch.sort(key).indices]
    crow = torch.zeros(n_dst + 1, dtype=torch.int64, device=edge_index.device)
    if n_dst:
        torch.cumsum(torch.bincount(dst, minlength=n_dst), 0, out=crow[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # "sparse CSR tensor support is in beta state"
        return torch.sparse_csr_tensor(crow, col, torch.ones(col.numel(), device=edge_index.device),
                                       size=(n_dst, n_src))


class LinkDecoder(nn.Module):
    """Dot product of flow and address embeddings, with one learned diagonal per relation
    (orig, resp) so the two endpoints of a flow are told apart.

    Shapes: flow ``[P, H]``, ip ``[P, H]`` -> logits ``[P]``.
    """

    def __init__(self, hidden: int):
        super().__init__()
        self.rel = nn.Parameter(torch.ones(len(RELATIONS), hidden))
        self.scale = hidden ** -0.5

    def forward(self, flow: Tensor, ip: Tensor, relation: str) -> Tensor:
        return (flow * self.rel[RELATIONS.index(relation)] * ip).sum(-1) * self.scale


class FlowGNN(nn.Module):
    """Encoder + link decoder (pretraining) + optional MLP head (finetuning).

    Shapes:
        ``forward`` -> embeddings ``{'flow': [N_flow, H], 'ip': [N_ip, H]}``;
        ``classify(h_flow [N, H])`` -> logits ``[N, C]``.
    """

    def __init__(self, cfg: GNNConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = FlowGraphEncoder(cfg)
        self.decoder = LinkDecoder(cfg.hidden)
        self.head = None
        if cfg.n_classes and cfg.head_hidden:
            self.head = nn.Sequential(nn.Linear(cfg.hidden, cfg.head_hidden), nn.LeakyReLU(),
                                      nn.Dropout(cfg.dropout), nn.Linear(cfg.head_hidden, cfg.n_classes))
        elif cfg.n_classes:
            self.head = nn.Sequential(nn.Linear(cfg.hidden, cfg.n_classes))

    def forward(self, x_dict: dict[str, Tensor], edge_index_dict: dict[EdgeType, Tensor],
                targets: Tensor | None = None, known: list | None = None,
                computed: list | None = None) -> dict[str, Tensor]:
        """``targets``: the flow nodes whose embedding is read; ``known``, ``computed``: node
        states had already and those computed (``FlowGraphEncoder.forward``)."""
        return self.encoder(x_dict, edge_index_dict, targets, known, computed)

    def classify(self, h_flow: Tensor) -> Tensor:
        if self.head is None:
            raise RuntimeError("this FlowGNN has no classification head (n_classes=0)")
        return self.head(h_flow)

    def link_logits(self, h: dict[str, Tensor], pairs: Tensor, relation: str) -> Tensor:
        """``pairs``: ``[2, P]`` rows (flow index, ip index)."""
        return self.decoder(h["flow"][pairs[0]], h["ip"][pairs[1]], relation)


def n_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))
