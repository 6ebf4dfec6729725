"""Conn records -> spatio-temporal heterogeneous flow graphs (docs/models.md section 1).

Time is cut into windows of ``window`` seconds. A conn joins every window that its
``[ts, ts + duration]`` overlaps (at most ``max_conn_windows`` of them, so a day-long conn does
not fill thousands of windows); its *target* appearance, the one that is classified or scored, is
the last of those windows: the window in which Zeek writes the record, which keeps live scoring
causal. Unset ``ts`` (masked test baselines) puts a conn in one shared window with no neighbours
in time; unset ``duration`` counts as 0.

Nodes: one ``flow`` node per conn per window, one ``ip`` node per address per window.

Spatial edges (inside a window)::

    ('ip', 'orig_to', 'flow')    orig_h -> flow        ('flow', 'rev_orig', 'ip')   its reverse
    ('flow', 'to_resp', 'ip')    flow -> resp_h        ('ip', 'rev_resp', 'flow')   its reverse

Temporal edges (they only ever point forward in time, so a flow never sees the future)::

    ('ip', 'next_window', 'ip')     an address' latest earlier appearance (at most span-1 windows
                                    back) -> its appearance in this window
    ('flow', 'same_conn', 'flow')   a conn in window w-1 -> the same conn in window w
    ('flow', 'next_orig', 'flow')   a flow -> each of the next ``next_flows`` flows (by ts) of the
                                    same orig_h in its window
    ('flow', 'next_resp', 'flow')   the same for resp_h

Edge ``j`` of ``('flow', 'rev_orig', 'ip')`` and ``('flow', 'to_resp', 'ip')`` belongs to flow
node ``j`` (every flow has exactly one of each); ``('ip', 'orig_to', 'flow')`` and
``('ip', 'rev_resp', 'flow')`` are the same pairs flipped, in the same order.

A graph for a set of target conns holds whole windows: each target's window and the
``context_windows`` before it. With temporal edges reaching at most ``span - 1`` windows back per
hop, an ``L``-layer encoder sees exactly ``L * (span - 1)`` windows back, so with
``context_windows >= L * (span - 1)`` a conn's embedding does not depend on how the log was cut
into graphs (a test checks this). ``FlowGraphBuilder.stream`` builds graphs over an arbitrarily
long log holding only the rows of the last windows in memory.
"""
from __future__ import annotations

import functools
import ipaddress
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from torch import Tensor

GRAPH_SCHEMA_VERSION = 1
NULL_WINDOW = -(1 << 60)  # where conns without ts go: far from every real window

SPATIAL_EDGES = (("ip", "orig_to", "flow"), ("flow", "rev_orig", "ip"),
                 ("flow", "to_resp", "ip"), ("ip", "rev_resp", "flow"))
TEMPORAL_EDGES = (("ip", "next_window", "ip"), ("flow", "same_conn", "flow"),
                  ("flow", "next_orig", "flow"), ("flow", "next_resp", "flow"))
EDGE_TYPES = TEMPORAL_EDGES + SPATIAL_EDGES
IP_FEATURES = ("private", "loopback", "multicast_or_broadcast", "ipv6", "unset")
EdgeType = tuple[str, str, str]


@dataclass
class NodeSet:
    """The nodes of one type of a ``FlowGraph`` (what PyG keeps in a node store).

    Args:
        x: node features.
        window: the window of each node.
        row: ``flow`` nodes: the conn's row in the table (plus the builder's row offset).
        target: ``flow`` nodes: bool, the conn's target appearance for a requested target.
        addr: ``ip`` nodes: the address of each node.

    Shapes:
        x ``[N, F]``; window, row, target ``[N]``; addr ``N`` strings.
    """

    x: Tensor
    window: Tensor
    row: Tensor | None = None
    target: Tensor | None = None
    addr: list[str] | None = None

    @property
    def num_nodes(self) -> int:
        return int(self.x.size(0))


@dataclass
class EdgeSet:
    """The edges of one type of a ``FlowGraph``: ``edge_index`` ``[2, E]`` (src, dst) int64."""

    edge_index: Tensor


@dataclass
class FlowGraph:
    """A heterogeneous flow graph: ``flow`` and ``ip`` nodes, the edge types of ``EDGE_TYPES``.

    Read as PyG's ``HeteroData`` is (``g.x_dict``, ``g.edge_index_dict``, ``g["flow"].row``,
    ``g["flow", "to_resp", "ip"].edge_index``), without importing PyG: scoring needs none of
    it, and importing it (1,530 modules, ``torch._dynamo`` among them) cost ``zeekml score``
    1.4-2 s of CPU (docs/results/gnn.md). ``to_hetero_data`` gives the PyG object.

    Args:
        flow: the flow nodes.
        ip: the address nodes.
        edge_index_dict: edge type -> ``[2, E]`` int64 (src, dst), in ``EDGE_TYPES`` order.
    """

    flow: NodeSet
    ip: NodeSet
    edge_index_dict: dict[EdgeType, Tensor]

    node_types = ("flow", "ip")

    @property
    def x_dict(self) -> dict[str, Tensor]:
        """``{'flow': [N_flow, F], 'ip': [N_ip, 5]}``."""
        return {"flow": self.flow.x, "ip": self.ip.x}

    @property
    def edge_types(self) -> list[EdgeType]:
        return list(self.edge_index_dict)

    def __getitem__(self, key: str | EdgeType) -> Any:
        """``g["flow"]``/``g["ip"]``: a ``NodeSet``; ``g[src, rel, dst]``: an ``EdgeSet``."""
        if key in self.node_types:
            return getattr(self, key)
        if isinstance(key, tuple) and key in self.edge_index_dict:
            return EdgeSet(self.edge_index_dict[key])
        raise KeyError(f"a flow graph has no node or edge type {key!r}")

    def to_hetero_data(self) -> Any:
        """The same graph as PyG's ``HeteroData`` (the same tensors, not copies); imports PyG."""
        from torch_geometric.data import HeteroData

        data = HeteroData()
        for name in self.node_types:
            nodes = getattr(self, name)
            for attr in ("x", "row", "window", "target", "addr"):
                value = getattr(nodes, attr)
                if value is not None:
                    data[name][attr] = value
        for et, ei in self.edge_index_dict.items():
            data[et].edge_index = ei
        return data


@dataclass
class GraphConfig:
    """How conns become graphs.

    Args:
        window: window length in seconds (default 5).
        span: windows per graph M (default 3): an address links back to its latest appearance
            at most ``span - 1`` windows earlier.
        max_conn_windows: most windows one conn joins (default 4).
        next_flows: temporal edges from a flow to the next flows of the same host (default 20).
        context_windows: windows before a target window that its graph includes (default 4 =
            2 layers x (span - 1)).
        segment_flows: about how many flow nodes one streamed graph holds (default 50,000).
    """

    window: float = 5.0
    span: int = 3
    max_conn_windows: int = 4
    next_flows: int = 20
    context_windows: int = 4
    segment_flows: int = 50_000
    schema_version: int = GRAPH_SCHEMA_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GraphConfig":
        if d.get("schema_version", GRAPH_SCHEMA_VERSION) != GRAPH_SCHEMA_VERSION:
            raise ValueError(f"graph schema {d.get('schema_version')} != {GRAPH_SCHEMA_VERSION}")
        return cls(**d)


# Every graph parses the addresses it holds; live scoring builds a graph per release batch over
# mostly the same addresses, and ``ipaddress`` costs ~10 us an address (1,000 addresses x 33
# batches were 4 s of a 20,000-conn dense probe): remember the answers, bounded.
@functools.lru_cache(maxsize=1 << 16)
def _ip_attributes(addr: str) -> tuple[float, ...]:
    if not addr:
        return (0.0, 0.0, 0.0, 0.0, 1.0)
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return (0.0, 0.0, 0.0, 0.0, 0.0)
    bcast = ip.is_multicast or (ip.version == 4 and str(ip).endswith(".255"))
    return (float(ip.is_private), float(ip.is_loopback), float(bcast), float(ip.version == 6), 0.0)


class FlowGraphBuilder:
    """conn table -> ``FlowGraph`` flow graphs.

    Args:
        config: ``GraphConfig`` (default: the defaults above).

    Every graph carries ``data['flow'].x`` (the caller's per-conn features of the conn behind
    each node), ``data['flow'].row`` (its row in the table), ``data['flow'].window``,
    ``data['flow'].target`` (bool: the conn's target appearance, for a requested target),
    ``data['ip'].x`` (static address attributes, ``IP_FEATURES``) and every edge type of
    ``EDGE_TYPES`` (possibly empty).

    Shapes:
        x: ``[n_rows, F]`` float32 per-conn features of the table.
        data['flow'].x: ``[n_flow, F]``; data['ip'].x: ``[n_ip, 5]``; edge_index: ``[2, E]``.
    """

    def __init__(self, config: GraphConfig | None = None):
        self.config = config or GraphConfig()

    # -- per-row windows ---------------------------------------------------------------------

    def windows(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """First and last (= target) window of every row, int64."""
        cfg = self.config
        ts = pc.fill_null(pc.cast(table.column("ts"), pa.float64()), np.nan).to_numpy(zero_copy_only=False)
        dur = pc.fill_null(pc.cast(table.column("duration"), pa.float64()), 0.0).to_numpy(zero_copy_only=False)
        dur = np.where(np.isfinite(dur) & (dur > 0), dur, 0.0)
        ok = np.isfinite(ts)
        safe = np.where(ok, ts, 0.0)
        first = np.floor(safe / cfg.window).astype(np.int64)
        last = np.floor((safe + dur) / cfg.window).astype(np.int64)
        last = np.minimum(last, first + cfg.max_conn_windows - 1)
        first = np.where(ok, first, NULL_WINDOW)
        last = np.where(ok, last, NULL_WINDOW)
        return first, last

    def needed_windows(self, last: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """The sorted windows a graph of ``targets`` holds: each target window (``last`` of a
        target row) and the ``context_windows`` before it."""
        cfg = self.config
        tw = np.unique(last[targets]) if len(targets) else np.zeros(0, np.int64)
        real = tw[tw != NULL_WINDOW]
        needed = np.unique((real[:, None] - np.arange(cfg.context_windows + 1)[None, :]).ravel())
        if (tw == NULL_WINDOW).any():
            needed = np.concatenate([[NULL_WINDOW], needed])
        return needed

    def neighbourhood(self, table: pa.Table, targets: np.ndarray) -> np.ndarray:
        """The sorted rows a graph of ``targets`` holds: those overlapping one of its windows
        (``needed_windows``), the targets among them. A graph built from ``table.take`` of
        these rows, with the targets renumbered, is the graph ``build(table, x, targets)``
        builds: the same nodes in the same order, the same edges (the other rows never join
        it). Live and split scoring embed a few conns of a long context table that way."""
        first, last = self.windows(table)
        targets = np.asarray(targets, dtype=np.int64)
        return np.flatnonzero(_overlaps(first, last, self.needed_windows(last, targets)))

    # -- building ----------------------------------------------------------------------------

    def build(self, table: pa.Table, x: np.ndarray, targets: np.ndarray | None = None,
              row_offset: int = 0, targets_only: bool = False, next_flows: bool = True) -> FlowGraph:
        """One graph holding ``targets`` (row indices; default all rows) and their context.

        ``row_offset`` is added to ``data['flow'].row`` (for streamed pieces of a longer log).
        ``targets_only``: the graph is read for its targets' embeddings alone, so the
        ``next_orig``/``next_resp`` edges into windows that no target's embedding reads them
        in are left out (``targets_reach``): the first layer's temporal step updates only
        nodes of the last ``context_windows - (span - 1)`` windows before a target window
        for them, and on a dense link those edges (up to ``2 x next_flows`` per flow) are most
        of the graph. The targets' embeddings are the same bits.
        ``next_flows=False``: no ``next_orig``/``next_resp`` edges at all (empty), for a caller
        that adds those it reads (``next_flow_edges``)."""
        first, last = self.windows(table)
        n = table.num_rows
        targets = np.arange(n, dtype=np.int64) if targets is None else np.asarray(targets, np.int64)
        return self._build(table, x, first, last, targets, row_offset, targets_only, next_flows)

    def next_flow_edges(self, g: FlowGraph, into: np.ndarray | None = None) -> dict[EdgeType, Tensor]:
        """The ``next_orig``/``next_resp`` edges of ``g`` into its flow nodes ``into`` (bool
        ``[N_flow]``), as ``build`` gives them (edges into the other nodes left out): a host is
        its address node there, one per (window, address), so the runs are the same. Without
        ``into``: those ``build(..., targets_only=True)`` gives ``g``'s targets.

        Shapes:
            into ``[N_flow]`` -> each type's ``[2, E]`` int64
        """
        import torch

        app_w = g.flow.window.numpy()
        dst_from = None
        if into is None:
            dst_from = self._next_flows_from(app_w[g.flow.target.numpy()])
        else:
            app_w = app_w[:len(into)]
        nf = len(app_w)
        out = {}
        for name, et in (("next_orig", ("flow", "rev_orig", "ip")), ("next_resp", ("flow", "to_resp", "ip"))):
            code = g.edge_index_dict[et][1].numpy()[:nf]
            edges = _next_flow_edges(app_w, code, self.config.next_flows, dst_from, into)
            out[("flow", name, "flow")] = torch.from_numpy(np.ascontiguousarray(edges, dtype=np.int64))
        return out

    def _next_flows_from(self, target_windows: np.ndarray) -> int | None:
        """The first window whose flow nodes get next-flow edges in a graph built for targets
        in ``target_windows`` alone (``targets_only``): no node of a window before it is
        updated for a target by the first layer's temporal step (``targets_reach``); None
        (every window) without targets or with a target without ts (one shared window)."""
        if not len(target_windows) or (target_windows == NULL_WINDOW).any():
            return None
        return int(target_windows.min()) - self.targets_reach()

    def targets_reach(self) -> int:
        """How many windows before its target window a target's embedding reads the
        ``next_orig``/``next_resp`` edges into: those of the first layer's temporal step, whose
        updates reach it through the ``context_windows - (span - 1)`` windows the later layers'
        address links span (``context_windows`` = layers x (span - 1), or more)."""
        cfg = self.config
        return max(cfg.context_windows - (cfg.span - 1), 0)

    def iter_graphs(self, table: pa.Table, x: np.ndarray,
                    targets: np.ndarray | None = None) -> Iterator[FlowGraph]:
        """Graphs of at most about ``segment_flows`` flow nodes that together cover ``targets``
        (default all rows), in time order; each target row is a target of exactly one graph."""
        first, last = self.windows(table)
        n = table.num_rows
        targets = np.arange(n, dtype=np.int64) if targets is None else np.asarray(targets, np.int64)
        if len(targets) == 0:
            return
        order = targets[np.argsort(last[targets], kind="stable")]
        tw = last[order]
        # cut only between windows, once a piece holds about segment_flows targets
        cuts = [0]
        budget = max(1, self.config.segment_flows)
        starts = np.concatenate([[0], np.flatnonzero(np.diff(tw)) + 1])
        for s in starts[1:]:
            if s - cuts[-1] >= budget:
                cuts.append(int(s))
        cuts.append(len(order))
        for a, b in zip(cuts[:-1], cuts[1:]):
            if b > a:
                yield self._build(table, x, first, last, np.sort(order[a:b]), 0)

    def stream(self, tables: Iterable[pa.Table],
               featurize: Callable[[pa.Table], np.ndarray], lateness: int = 2) -> Iterator[FlowGraph]:
        """Graphs over an arbitrarily long stream of conn tables (in log order), with bounded memory.

        A row becomes a target once the stream has moved ``lateness`` windows past its target
        window; rows are kept only while a future target may still need them as context.
        ``data['flow'].row`` counts rows from the start of the stream. Every row is a target of
        exactly one yielded graph.
        """
        cfg = self.config
        buf: pa.Table | None = None
        buf_x: np.ndarray | None = None
        buf_off = 0        # stream row number of buf's first row
        done = np.zeros(0, dtype=bool)  # per buffered row: already a target
        for t in tables:
            if t.num_rows == 0:
                continue
            fx = featurize(t)
            if buf is None:
                buf, buf_x = t, fx
            else:
                buf = pa.concat_tables([buf, t.cast(buf.schema)])
                buf_x = np.concatenate([buf_x, fx])
            done = np.concatenate([done, np.zeros(t.num_rows, dtype=bool)])
            first, last = self.windows(buf)
            real = last[last != NULL_WINDOW]
            if len(real) == 0:
                continue
            horizon = int(real.max()) - lateness
            ready = np.flatnonzero(~done & (last <= horizon) & (last != NULL_WINDOW))
            if len(ready) < cfg.segment_flows:
                continue
            yield self._build(buf, buf_x, first, last, ready, buf_off)
            done[ready] = True
            # drop rows no future target (target window > horizon) can reach as context
            keep = ~done | (last > horizon - cfg.context_windows)
            keep |= last == NULL_WINDOW
            drop_n = int(np.argmax(keep)) if keep.any() else len(keep)
            # only a prefix can be dropped (row numbers stay contiguous)
            if drop_n:
                buf = buf.slice(drop_n)
                buf_x = buf_x[drop_n:]
                done = done[drop_n:]
                buf_off += drop_n
        if buf is not None and (~done).any():
            first, last = self.windows(buf)
            yield self._build(buf, buf_x, first, last, np.flatnonzero(~done), buf_off)

    # -- the graph itself --------------------------------------------------------------------

    def _build(self, table: pa.Table, x: np.ndarray, first: np.ndarray, last: np.ndarray,
               targets: np.ndarray, row_offset: int, targets_only: bool = False,
               next_flows: bool = True) -> FlowGraph:
        import torch

        cfg = self.config
        x = np.asarray(x, dtype=np.float32)
        if len(x) != table.num_rows:
            raise ValueError(f"x has {len(x)} rows, the table {table.num_rows}")
        needed = self.needed_windows(last, targets)
        # appearances (row, window) of every row that overlaps a needed window
        span = (last - first + 1).astype(np.int64)
        cand = np.flatnonzero(_overlaps(first, last, needed))
        reps = span[cand]
        app_row = np.repeat(cand, reps)
        starts = np.cumsum(reps) - reps
        app_w = first[app_row] + (np.arange(len(app_row)) - np.repeat(starts, reps))
        keep = np.isin(app_w, needed)
        app_row, app_w = app_row[keep], app_w[keep]
        ts = pc.fill_null(pc.cast(table.column("ts"), pa.float64()), 0.0).to_numpy(zero_copy_only=False)
        order = np.lexsort((app_row, ts[app_row], app_w))
        app_row, app_w = app_row[order], app_w[order]
        nf = len(app_row)

        is_target_row = np.zeros(table.num_rows, dtype=bool)
        is_target_row[targets] = True
        target = is_target_row[app_row] & (app_w == last[app_row])

        # ip nodes: one per (address, window)
        # the addresses of the graph's flow nodes only: a graph of a long table (a piece of
        # ``iter_graphs``, a live batch's context) holds a fraction of its rows
        at = pa.array(app_row, pa.int64())
        orig = pc.fill_null(table.column("id.orig_h").take(at), "").to_numpy(zero_copy_only=False)
        resp = pc.fill_null(table.column("id.resp_h").take(at), "").to_numpy(zero_copy_only=False)
        codes, uniq = pd.factorize(np.concatenate([np.asarray(orig, dtype=object),
                                                   np.asarray(resp, dtype=object)]))
        o_code, r_code = codes[:nf], codes[nf:]
        ip_keys, ip_inv = _window_address_keys(app_w, codes.astype(np.int64), len(uniq))
        o_ip, r_ip = ip_inv[:nf], ip_inv[nf:]
        attrs = np.asarray([_ip_attributes(str(a)) for a in uniq], dtype=np.float32).reshape(-1, len(IP_FEATURES))
        ip_x = attrs[ip_keys[:, 1]] if len(ip_keys) else np.zeros((0, len(IP_FEATURES)), np.float32)

        fidx = np.arange(nf, dtype=np.int64)
        edges: dict[tuple[str, str, str], np.ndarray] = {
            ("ip", "orig_to", "flow"): np.stack([o_ip, fidx]),
            ("flow", "rev_orig", "ip"): np.stack([fidx, o_ip]),
            ("flow", "to_resp", "ip"): np.stack([fidx, r_ip]),
            ("ip", "rev_resp", "flow"): np.stack([r_ip, fidx]),
        }
        # the same address in a later window (ip_keys are sorted by window, then address)
        by_addr = np.lexsort((ip_keys[:, 0], ip_keys[:, 1])) if len(ip_keys) else np.zeros(0, np.int64)
        a_w, a_c = ip_keys[by_addr, 0], ip_keys[by_addr, 1]
        link = (a_c[1:] == a_c[:-1]) & (a_w[1:] - a_w[:-1] <= cfg.span - 1) & (a_w[:-1] != NULL_WINDOW)
        edges[("ip", "next_window", "ip")] = np.stack([by_addr[:-1][link], by_addr[1:][link]]) \
            if len(by_addr) else np.zeros((2, 0), np.int64)
        # the same conn in consecutive windows
        by_row = np.lexsort((app_w, app_row))
        rr, ww = app_row[by_row], app_w[by_row]
        link = (rr[1:] == rr[:-1]) & (ww[1:] - ww[:-1] == 1)
        edges[("flow", "same_conn", "flow")] = np.stack([by_row[:-1][link], by_row[1:][link]]) \
            if nf else np.zeros((2, 0), np.int64)
        # the next K flows of the same host in the window (nodes are sorted by window, then ts)
        dst_from = self._next_flows_from(last[targets]) if targets_only else None
        for name, code in (("next_orig", o_code), ("next_resp", r_code)):
            edges[("flow", name, "flow")] = (_next_flow_edges(app_w, code, cfg.next_flows, dst_from)
                                             if next_flows else np.zeros((2, 0), np.int64))

        flow = NodeSet(x=torch.from_numpy(x[app_row]) if nf else torch.zeros((0, x.shape[1])),
                       window=torch.from_numpy(app_w), row=torch.from_numpy(app_row + row_offset),
                       target=torch.from_numpy(target))
        ip = NodeSet(x=torch.from_numpy(ip_x), window=torch.from_numpy(ip_keys[:, 0].copy()),
                     addr=np.asarray(uniq, dtype=object)[ip_keys[:, 1]].tolist())
        return FlowGraph(flow, ip, {et: torch.from_numpy(np.ascontiguousarray(edges[et], dtype=np.int64))
                                    for et in EDGE_TYPES})


def _next_flow_edges(app_w: np.ndarray, code: np.ndarray, k: int,
                     dst_from: int | None = None, into: np.ndarray | None = None) -> np.ndarray:
    """Edges from each flow node to each of the next ``k`` flow nodes of the same host
    (``code``) in its window, as ``[2, E]`` (src, dst), ordered by destination, then source;
    with ``dst_from``, only those into windows from ``dst_from`` on; with ``into`` (bool
    ``[nf]``), only those into its nodes.

    Flow nodes are numbered by window, then ts, so a host's flows in a window are a run of
    ascending node numbers and a node's sources are the up to ``k`` nodes before it in its
    run. In this order the edges are already the rows of the transposed CSR adjacency the
    encoder builds from them (``zeekml.nn.gnn.csr_adjacency`` then skips its sort: they are
    the biggest edge types, up to ``k`` per flow). Only their set matters elsewhere:
    training holds out links of the spatial edge types, not these.

    Shapes:
        app_w, code ``[nf]`` -> ``[2, E]`` int64
    """
    nf = len(app_w)
    if nf == 0 or k <= 0:
        return np.zeros((2, 0), np.int64)
    grp = np.lexsort((np.arange(nf), code, app_w))    # stable: keeps node (ts) order within a run
    gw, gc = app_w[grp], code[grp]
    run_start = np.concatenate([[True], (gw[1:] != gw[:-1]) | (gc[1:] != gc[:-1])])
    first = np.maximum.accumulate(np.where(run_start, np.arange(nf), 0))
    pos = np.empty(nf, dtype=np.int64)
    pos[grp] = np.arange(nf)                           # each node's place in grp
    n_src = np.minimum(pos - first[pos], k)            # sources of each node, in node order
    if dst_from is not None:
        n_src[app_w < dst_from] = 0
    if into is not None:
        n_src[~into] = 0
    total = int(n_src.sum())
    ends = np.cumsum(n_src)
    offset = np.arange(total, dtype=np.int64) - np.repeat(ends - n_src, n_src)
    src = grp[np.repeat(pos - n_src, n_src) + offset]
    dst = np.repeat(np.arange(nf, dtype=np.int64), n_src)
    return np.stack([src, dst])


def _window_address_keys(app_w: np.ndarray, codes: np.ndarray, n_codes: int) -> tuple[np.ndarray, np.ndarray]:
    """The ip nodes of a graph: the distinct ``(window, address code)`` pairs of its flows'
    originators then responders, sorted by window then code, and each pair's node.

    ``np.unique(np.stack([w, codes], 1), axis=0, return_inverse=True)`` gives the same two
    arrays, but sorts the rows as a structured view: 0.52 s of the 1.0 s that building the
    graphs of bench/score_speed.py's 100k conns took (one thread). Here a pair is one int64
    (the window's rank among the graph's windows, then the code), sorted as a plain vector.

    Shapes:
        app_w ``[nf]`` (sorted: flow nodes are ordered by window first), codes ``[2 nf]``
        -> ``([u, 2] (window, code), [2 nf])``
    """
    nf = len(app_w)
    if nf == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    width = max(n_codes, 1)
    new = np.concatenate([[True], app_w[1:] != app_w[:-1]])
    windows = app_w[new]
    rank = np.cumsum(new) - 1
    u, inv = np.unique(np.concatenate([rank, rank]) * width + codes, return_inverse=True)
    keys = np.stack([windows[u // width], u % width], axis=1)
    return keys, inv.reshape(-1).astype(np.int64)


def _overlaps(first: np.ndarray, last: np.ndarray, needed: np.ndarray) -> np.ndarray:
    """Rows whose window range [first, last] holds any of the sorted ``needed`` windows."""
    if len(needed) == 0:
        return np.zeros(len(first), dtype=bool)
    i = np.searchsorted(needed, first, side="left")
    ok = i < len(needed)
    hit = np.zeros(len(first), dtype=bool)
    hit[ok] = needed[i[ok]] <= last[ok]
    return hit
