"""The GNN detector's node states kept between scoring calls (issue 15: ``zeekml watch``).

Each release of ``watch`` embeds its conns in the graph of their windows and the
``context_windows`` before them (``gnn.embed_rows``, the targets' cone); consecutive releases
share most of those windows, and the cone of one release computes, at each step of the encoder,
many node states the next one computes again: at 5,000 conns/s about half its rows.

A node's state after a step depends on nothing but what the graph holds in its own window and
a few before it (messages pass inside a window or forward in time): its window's *content* (the
flow nodes' features in node order, the addresses, each flow's two addresses) from ``reach``
windows back, and its window's *links* (each flow's ``same_conn`` source in the window before)
from fewer (``step_reach``: a temporal step reaches ``span - 1`` windows further, a spatial step
none). So the states are kept per window and step with the digests of those windows' content
and links (``window_fingerprints``), and a later graph uses them for a window and step only where
its own digests of the same windows are equal: then the nodes, edges and inputs that state was
computed from are the same, and so are its bits (the row sets of a step are at least
``MIN_ROWS``, and a CSR mean reads its sources in node order, which within a window the content
fixes). A conn that arrives late into a window, or a window cut from the context, changes its
digests and nothing that reads it is reused. Addresses are numbered per graph by first
appearance, so an address' state is kept under its address.

Memory: kept are the states of the windows from a call's earliest target window on (what a
later release reads of them), and at the steps that read the next-flow edges from as far back as
a later call may compute them (``keep_from``); at 5,000 conns/s ~70 MB, hidden 64; the rest are
dropped at each call. Not kept: the last step's (the targets' embeddings, read once).
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

import numpy as np

from zeekml.features.graph import NULL_WINDOW, FlowGraph

FLOW_SAME_CONN = ("flow", "same_conn", "flow")
NEXT_WINDOW = ("ip", "next_window", "ip")
NEXT_FLOWS = (("flow", "next_orig", "flow"), ("flow", "next_resp", "flow"))
EMPTY = b""               # a window with no nodes, or outside the graph: the same thing to it
KEEP_WINDOWS = 24
"""Windows before a call's latest target window whose states are kept (``keep_from``): 2 min
of the shipped model's 5 s windows, almost five times the 25 s a watch holds conns back (the
GNN's 20 s forward reach and ``--context-lateness`` 5 s), so a release of a watch (or of one
of its scoring workers, every other release) finds the windows it shares with the last one
kept. What is kept changes no bits, only what a later call computes again."""


def step_reach(step_edges: list[tuple[tuple[str, str, str], ...]], span: int) -> list[tuple[int, int]]:
    """How many windows back a node's state after each step (0 = the input projection) reads
    the graph's content, and how many back its links (-1: none), as ``(content, links)``.

    The input reads its own window's content (an address' degrees there). A temporal step
    reads, besides its own window's state, the states of up to ``span - 1`` windows back
    (``next_window``; ``same_conn`` one) and the links into its own window: both reaches grow by
    that hop (the links from 0). A spatial step reads its own window only."""
    reach = [(0, -1)]
    for types in step_edges:
        content, links = reach[-1]
        hop = (span - 1) if NEXT_WINDOW in types else 1 if FLOW_SAME_CONN in types else 0
        if hop:
            content, links = content + hop, (links + hop if links >= 0 else 0)
        reach.append((content, links))
    return reach


class GraphWindows:
    """Where each window's nodes are in one ``FlowGraph`` (nodes are ordered by window first),
    and each window's fingerprints (``window_fingerprints``), computed for a window when first
    asked: a chunk of `score` spans tens of thousands of windows, of which a call reads and
    keeps the states of a few dozen (digesting every window was 7% of the GNN's time at 1M
    conns).

    Attributes (``w`` = the graph's windows with a time, ascending):
        windows: ``[w]``.
        flow: ``[w, 2]`` each window's flow nodes ``start, end``.
        ip_window: ``[N_ip]`` each address node's window (its index in ``windows``; -1: none).
    """

    def __init__(self, g: FlowGraph):
        fw = g.flow.window.numpy()
        iw = g.ip.window.numpy()
        wins = np.unique(fw)
        self.windows = wins[wins != NULL_WINDOW]
        self.flow = np.stack([np.searchsorted(fw, self.windows, side="left"),
                              np.searchsorted(fw, self.windows, side="right")], axis=1)
        self._ip = np.stack([np.searchsorted(iw, self.windows, side="left"),
                             np.searchsorted(iw, self.windows, side="right")], axis=1)
        j = np.minimum(np.searchsorted(self.windows, iw), max(len(self.windows) - 1, 0))
        have = (self.windows[j] == iw) if len(self.windows) else np.zeros(len(iw), dtype=bool)
        self.ip_window = np.where(have, j, -1).astype(np.int64)
        self._index = {w: j for j, w in enumerate(self.windows.tolist())}
        self._orig = g.edge_index_dict[("flow", "rev_orig", "ip")][1].numpy()
        self._resp = g.edge_index_dict[("flow", "to_resp", "ip")][1].numpy()
        self._prev = np.full(len(fw), -1, dtype=np.int64)
        sc = g.edge_index_dict[FLOW_SAME_CONN].numpy()
        self._prev[sc[1]] = sc[0]
        self._addrs = np.asarray(g.ip.addr, dtype=object)
        self._x = g.flow.x[:len(fw)].numpy()
        self._order: dict[int, np.ndarray] = {}
        self._prints: dict[int, tuple[bytes, bytes]] = {}

    def window_of(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Each ``name`` (``"flow"``/``"ip"``) node's window, as its index in ``windows``
        (-1: a node without a time, or none of the graph's).

        Shapes: rows ``[m]`` -> ``[m]`` int64"""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(self.windows):
            return np.full(len(rows), -1, dtype=np.int64)
        if name == "flow":
            j = np.searchsorted(self.flow[:, 1], rows, side="right")
            ok = j < len(self.windows)
            ok[ok] &= rows[ok] >= self.flow[j[ok], 0]
            return np.where(ok, j, -1)
        at = np.minimum(rows, len(self.ip_window) - 1)
        return np.where(rows < len(self.ip_window), self.ip_window[at], -1)

    def ip_order(self, j: int) -> np.ndarray:
        """The address nodes of window ``windows[j]``, ordered by address (ties by node)."""
        order = self._order.get(j)
        if order is None:
            c, d = self._ip[j]
            order = self._order[j] = c + np.argsort(self._addrs[c:d], kind="stable")
        return order

    def ip_places(self, j: int, nodes: np.ndarray) -> np.ndarray:
        """The places of address ``nodes`` of window ``windows[j]`` in its ``ip_order``."""
        c, d = self._ip[j]
        place = np.empty(d - c, dtype=np.int64)
        place[self.ip_order(j) - c] = np.arange(d - c)
        return place[np.asarray(nodes) - c]

    def _fingerprints(self, w: int) -> tuple[bytes, bytes]:
        """Window ``w``'s ``(content, links)`` digests (``EMPTY`` twice: no nodes there)."""
        got = self._prints.get(w)
        if got is not None:
            return got
        j = self._index.get(w)
        if j is None:
            return EMPTY, EMPTY
        (a, b), (c, d) = self.flow[j], self._ip[j]
        order = self.ip_order(j) - c
        rank = np.empty(d - c, dtype=np.int64)
        rank[order] = np.arange(d - c)
        before = self._index.get(w - 1)
        p = self._prev[a:b]
        local = np.where(p >= 0, p - (self.flow[before, 0] if before is not None else 0), -1)
        h = hashlib.sha256()
        h.update(np.array([b - a, d - c], dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(self._x[a:b]))
        h.update("\n".join(self._addrs[c:d][order].tolist()).encode())
        h.update(rank[self._orig[a:b] - c].tobytes())
        h.update(rank[self._resp[a:b] - c].tobytes())
        got = self._prints[w] = (h.digest(), hashlib.sha256(local.astype(np.int64).tobytes()).digest())
        return got

    def span_prints(self, w: int, reach: tuple[int, int]) -> tuple[bytes, ...]:
        """The content digests of windows ``w - reach[0] .. w`` and the links' of
        ``w - reach[1] .. w``: what a state of window ``w`` with that ``reach`` is made of."""
        content, links = reach
        return (tuple(self._fingerprints(v)[0] for v in range(w - content, w + 1))
                + tuple(self._fingerprints(v)[1] for v in range(w - links, w + 1)))


def window_fingerprints(g: FlowGraph) -> GraphWindows:
    """Each window of ``g``'s digests of what a node state there can depend on within it: its
    content (the number of flow and address nodes, the flow nodes' features in node order, the
    window's addresses (sorted), each flow's originator and responder (ranks among those)) and
    its links (each flow's node of the same conn in the window before: its place there, or -1).
    Windows without a time (``NULL_WINDOW``) get none (their nodes are never kept). Each
    window's are computed when first asked for (``GraphWindows.span_prints``)."""
    return GraphWindows(g)


@dataclass
class Kept:
    """One window's kept states after one step: ``flow`` and ``ip`` map the window's node
    (flow: its place in the window; address: its place among the window's addresses sorted)
    to a state, as ``(places [m], states [m, H])``; ``prints``: the fingerprints they hold for."""

    prints: tuple[bytes, ...]
    flow: tuple[np.ndarray, object]
    ip: tuple[np.ndarray, object]


class GNNLiveState:
    """Node states of the encoder kept between calls of one GNN detector (module docstring).

    Args:
        step_edges: the encoder's edge types per step (``FlowGraphEncoder.convs``).
        span: the graph's ``span``.
    """

    def __init__(self, step_edges: list[tuple[tuple[str, str, str], ...]], span: int):
        self.step_edges = step_edges
        self.span = span
        self.reach = step_reach(step_edges, span)
        self.kept: dict[tuple[int, int], Kept] = {}       # (step, window) -> states
        self.lock = threading.Lock()
        self.offered = 0         # kept rows that matched a graph, over every call (tests, benches)

    @property
    def nbytes(self) -> int:
        """Bytes of the states kept."""
        return sum(int(part[1].nelement() * part[1].element_size()) + part[0].nbytes
                   for k in self.kept.values() for part in (k.flow, k.ip) if part[1] is not None)

    def __reduce__(self):
        # a copy (a dask worker, a pickled detector) starts with nothing kept: what this process
        # kept is of no use to another and can be tens of MB
        return (GNNLiveState, (self.step_edges, self.span))

    def known(self, layout: GraphWindows) -> list[dict[str, tuple]]:
        """Per step (all but the last), per node type, the rows of the graph of ``layout``
        whose state is kept for it and those states: ``(rows [m], states [m, H])``."""
        import torch

        out: list[dict[str, tuple]] = []
        wins = layout.windows
        for step in range(len(self.reach)):
            rows_f, st_f, rows_i, st_i = [], [], [], []
            # the kept windows of this step that the graph has, in window order (a graph can
            # span tens of thousands of windows, of which only the last few are ever kept)
            mine = np.array(sorted(w for s, w in self.kept if s == step), dtype=np.int64)
            at = np.searchsorted(wins, mine)
            have = at < len(wins)
            have[have] &= wins[at[have]] == mine[have]
            for j, w in zip(at[have].tolist(), mine[have].tolist()):
                k = self.kept[(step, w)]
                if k.prints != layout.span_prints(w, self.reach[step]):
                    continue
                if len(k.flow[0]):
                    rows_f.append(torch.from_numpy(layout.flow[j, 0] + k.flow[0]))
                    st_f.append(k.flow[1])
                if len(k.ip[0]):
                    rows_i.append(torch.from_numpy(layout.ip_order(j)[k.ip[0]]))
                    st_i.append(k.ip[1])
            step_known = {}
            for name, rows, st in (("flow", rows_f, st_f), ("ip", rows_i, st_i)):
                if rows:
                    step_known[name] = (torch.cat(rows), torch.cat(st))
                    self.offered += len(step_known[name][0])
            out.append(step_known)
        return out

    def next_flows_into(self, flow_window: np.ndarray, known: list[dict[str, tuple]],
                        first_target: int) -> np.ndarray:
        """Which flow nodes (their windows ``flow_window`` ``[N_flow]``) a cone with ``known``
        may compute at a step that reads the ``next_orig``/``next_resp`` edges into them: at
        step ``s`` the cone computes rows no earlier than ``first_target`` less the windows the
        steps after it reach back (``step_reach``), and none whose state ``known`` gives. The
        graph needs those edges into these nodes only (``FlowGraphBuilder.next_flow_edges``):
        at 5,000 conns/s the newest window's and the targets', where it had three windows'.

        Shapes: flow_window ``[N_flow]`` -> ``[N_flow]`` bool"""
        last = self.reach[-1][0]
        into = np.zeros(len(flow_window), dtype=bool)
        for step in range(1, len(self.reach)):
            if not self.reads_next_flows(step):
                continue
            may = flow_window >= first_target - (last - self.reach[step][0])
            if "flow" in known[step]:
                may[known[step]["flow"][0].numpy()] = False
            into |= may
        return into

    def reads_next_flows(self, step: int) -> bool:
        """Whether step ``step`` (from 1) reads the ``next_orig``/``next_resp`` edges."""
        return any(et in self.step_edges[step - 1] for et in NEXT_FLOWS)

    def keep_from(self, first_target: int, last_target: int | None = None) -> list[int]:
        """Per step, the first window whose states are kept after a call whose earliest target
        window is ``first_target``: a later call (targets from there on) reads next to nothing
        of those before (at 5,000 conns/s none of their ~100,000 rows); at a step reading the
        next-flow edges, as far back as ``next_flows_into`` looks, so that it finds them kept
        and the graph does without those edges.

        ``last_target``: the call's latest target window. A later call's targets start near it
        (watch's next release; `score`'s next chunk), so no window more than ``KEEP_WINDOWS``
        before it is kept: a 100k-conn chunk of `score` spans up to tens of thousands of
        windows, and keeping them all cost more than the encoder itself. What is kept changes
        no bits, only what a later call computes again."""
        if last_target is not None:
            first_target = max(first_target, last_target - KEEP_WINDOWS)
        last = self.reach[-1][0]
        return [first_target - (last - self.reach[s][0]) if s and self.reads_next_flows(s) else first_target
                for s in range(len(self.reach))]

    def collector(self, layout: GraphWindows, first_full: int, keep_from: list[int]) -> "KeptSteps":
        """The ``computed`` list to hand ``FlowGraphEncoder.forward`` for ``store``: of each
        step but the last it holds the windows from ``keep_from``'s on, and after the input
        projection none before ``first_full`` (the graph's next-flow edges are all there from
        that window: ``FlowGraphBuilder.build``'s ``targets_only``) (``KeptSteps``)."""
        return KeptSteps(layout, [max(keep_from[s], first_full) if s > 0 else keep_from[s]
                                  for s in range(len(self.reach) - 1)])

    def store(self, layout: GraphWindows, computed: "KeptSteps", keep_from: list[int]) -> None:
        """Keep the states ``computed`` (``FlowGraphEncoder.forward``'s, collected by
        ``collector``: only those of the windows to keep) of the graph of ``layout``, all steps
        but the last, merged with those kept for the same windows and digests. Drops every
        state of a window before ``keep_from`` (per step, ``keep_from()``) or after the graph's
        last."""
        import torch

        wins = layout.windows
        if not len(wins):               # conns without a time alone: nothing is kept for them
            self.kept = {}
            return
        hi = int(wins[-1])
        self.kept = {key: k for key, k in self.kept.items() if keep_from[key[0]] <= key[1] <= hi}
        for step, done in enumerate(computed[:-1]):
            groups = {}
            for name in ("flow", "ip"):
                if name not in done:
                    continue
                rows, states = done[name]
                rows_np, first = np.unique(rows.numpy(), return_index=True)
                j = layout.window_of(name, rows_np)
                ok = j >= 0
                if name == "flow":
                    place = rows_np - layout.flow[np.maximum(j, 0), 0]
                else:
                    place = None              # per window, of the kept windows only (below)
                # the rows of each window, in row order: one stable sort, not a pass over every
                # row per window (a 100k-conn chunk of `score` spans thousands of windows)
                rows_ok = np.flatnonzero(ok)
                by_window = rows_ok[np.argsort(j[rows_ok], kind="stable")]
                wj, starts = np.unique(j[by_window], return_index=True)
                for jj, sel in zip(wj.tolist(), np.split(by_window, starts[1:])):
                    places = place[sel] if place is not None else layout.ip_places(jj, rows_np[sel])
                    groups.setdefault(jj, {})[name] = (places, states[torch.from_numpy(first[sel])])
            for jj, parts in groups.items():
                w = int(wins[jj])
                prints = layout.span_prints(w, self.reach[step])
                old = self.kept.get((step, w))
                merged = {}
                for name in ("flow", "ip"):
                    new = parts.get(name)
                    prev = old and old.prints == prints and getattr(old, name)
                    if new is None:
                        merged[name] = prev if prev else (np.zeros(0, np.int64), None)
                    elif prev and len(prev[0]):
                        merged[name] = _union(prev, new)
                    else:
                        merged[name] = new
                self.kept[(step, w)] = Kept(prints, merged["flow"], merged["ip"])


class KeptSteps(list):
    """``FlowGraphEncoder.forward``'s ``computed``: each step's ``{node type: (rows, states)}``,
    of which only the rows of the windows ``GNNLiveState.store`` keeps are held (``los``: per
    step the first such window; the last step's, the targets' embeddings, none). The encoder
    appends every step's states as it goes; held whole until ``store``, a 100k-conn chunk's
    were ~310 MiB at the end of its forward, of which ``store`` kept the last few windows'."""

    def __init__(self, layout: GraphWindows, los: list[int]):
        super().__init__()
        self.layout, self.los = layout, los

    def append(self, done: dict[str, tuple]) -> None:
        import torch

        step = len(self)
        if step >= len(self.los):
            super().append({})
            return
        wins, out = self.layout.windows, {}
        for name, (rows, states) in done.items():
            j = self.layout.window_of(name, rows.numpy())
            keep = j >= 0
            keep[keep] &= wins[j[keep]] >= self.los[step]
            if keep.all():
                out[name] = (rows, states)
            elif keep.any():
                at = torch.from_numpy(np.flatnonzero(keep))
                out[name] = (rows[at], states[at])
        super().append(out)


def _union(old: tuple[np.ndarray, object], new: tuple[np.ndarray, object]) -> tuple[np.ndarray, object]:
    """The places and states of both, each place once (``new``'s where both hold it: the same
    bits, by the fingerprints they were kept under)."""
    import torch

    places = np.concatenate([new[0], old[0]])
    states = torch.cat([new[1], old[1]])
    places, first = np.unique(places, return_index=True)
    return places, states[torch.from_numpy(first)]
