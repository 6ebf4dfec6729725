"""``gnn``: the spatio-temporal flow-graph GNN as a detector (the inference half of the kind;
training is ``zeekml.train.gnn``).

The anomaly score of a conn is the mean cosine distance of its flow embedding to its ``k``
nearest neighbours among the baseline conns' embeddings. ``torch`` is imported only when a model
is loaded: ``zeekml cat`` and ``--no-models`` never import it. Scoring never imports PyTorch
Geometric (the graphs are ``FlowGraph``s, the layers ``zeekml.nn.gnn``'s own); training does.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from zeekml._core.errors import ModelError
from zeekml.features import table_memo
from zeekml.features.flow_features import FlowFeaturizer
from zeekml.features.graph import GRAPH_SCHEMA_VERSION, FlowGraphBuilder, GraphConfig
from zeekml.scoring.detectors.base import load_checked, torch_module
from zeekml.scoring.detectors.gnn_live import GNNLiveState, window_fingerprints
from zeekml.scoring.detectors.reference import KNN, MAX_REFERENCE, KnnReference, fit_split
from zeekml.scoring.explain import NEAREST_SHOWN, nearest_text, reference_identity
from zeekml.scoring.registry import register_kind

log = logging.getLogger(__name__)

NAME = "gnn"
# A gnn config's schema is its graph's (the flow features carry their own, checked by
# ``FlowFeaturizer.from_dict``).
SCHEMA_VERSION = GRAPH_SCHEMA_VERSION


def service_columns(featurizer: FlowFeaturizer) -> np.ndarray:
    """Indices of the service and responder-port columns of ``featurizer``'s features."""
    names = featurizer.feature_names
    return np.array([i for i, n in enumerate(names) if n.startswith(("service_", "resp_p_"))], dtype=np.int64)


def featurize(featurizer: FlowFeaturizer, table: pa.Table, hide_service: bool,
              rows: np.ndarray | None = None) -> np.ndarray:
    """Scaled flow features (of ``rows`` only, when given); with ``hide_service`` the service
    and port columns are zero."""
    x = featurizer.transform(table, rows)
    if hide_service and not featurizer.hide_service:
        x[:, service_columns(featurizer)] = 0.0
    return x


def to_device(d: dict, device: str) -> dict:
    """The tensors of ``d`` on ``device`` (``d`` itself on the CPU)."""
    return {k: v.to(device) for k, v in d.items()} if device != "cpu" else d


@dataclass
class GNNBundle:
    """A model with everything needed to use it on a conn table."""

    model: object
    featurizer: FlowFeaturizer
    graph: GraphConfig
    classes: list[str]
    hide_service: bool = False

    def builder(self) -> FlowGraphBuilder:
        """A graph builder with this model's windows."""
        return FlowGraphBuilder(self.graph)

    def features(self, table: pa.Table, rows: np.ndarray | None = None) -> np.ndarray:
        """Scaled flow features of ``table`` (of its ``rows`` only) as the model was trained on
        them."""
        return featurize(self.featurizer, table, self.hide_service, rows)


def config_schema(config: dict) -> int | None:
    """The schema a gnn config was written for: its ``schema_version``, or for configs written
    before the field was lifted to the top level, its graph section's (the same fact)."""
    if "schema_version" in config:
        return config["schema_version"]
    return (config.get("graph") or {}).get("schema_version")


def load_bundle(model_dir: str, device: str = "cpu") -> tuple[GNNBundle, dict]:
    """``(bundle, config)`` of a gnn model directory (verified against its manifest)."""
    from zeekml.nn.gnn import FlowGNN, GNNConfig

    config, state = load_checked(model_dir, (NAME,), SCHEMA_VERSION, device, schema_of=config_schema)
    try:
        model = FlowGNN(GNNConfig(**config["model"]))
        model.load_state_dict(state)
        featurizer = FlowFeaturizer.from_dict(config["featurizer"])
        graph = GraphConfig.from_dict(config["graph"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ModelError(f"cannot rebuild the gnn model: {e}", model_dir) from e
    return GNNBundle(model.eval(), featurizer, graph, list(config.get("classes") or []),
                     bool(config.get("hide_service"))), config


# CPU matrix products give a row other bits when the matrix has 1-3 rows than when it has more
# (measured: torch 2.13, nn.Linear 64 -> 64, native and AVX2 kernels alike; from 4 rows on every
# row's result is the same whatever the row count). A graph built around a few rows of a long
# table can be that small where the whole table's graph is not, so it gets isolated padding
# nodes (no edges: they change no other node) up to this many per node type.
MIN_NODES = 4


def pad_nodes(x_dict: dict) -> dict:
    """``x_dict`` with zero rows appended to every node type holding fewer than ``MIN_NODES``."""
    torch = torch_module()
    out = {}
    for k, v in x_dict.items():
        short = MIN_NODES - v.size(0)
        out[k] = torch.cat([v, v.new_zeros((short, v.size(1)))]) if short > 0 else v
    return out


# Most rows of a neighbourhood (``embed_rows`` with ``rows``) embedded as one graph, beyond which
# it is cut into ``iter_graphs``' pieces (each with its own context windows): bounds the graph's
# memory (~40 edges a flow node on a dense link: 300,000 rows are ~12M edges, ~0.4 GB with the
# adjacencies built from them).
ONE_GRAPH_ROWS = 300_000


def ready(model, device: str):
    """``model`` on ``device`` in eval mode, moved or switched only when it is not already
    (``Module.to`` and ``eval`` walk every submodule: 5 ms a call, 0.18 of the GNN's 1.4 CPU s
    over a live probe's 33 releases)."""
    torch = torch_module()
    p = next(model.parameters(), None)
    if p is not None and p.device != torch.device(device):
        model = model.to(device)
    if model.training:
        model = model.eval()
    return model


def embed_rows(bundle: GNNBundle, table: pa.Table, rows: np.ndarray | None = None,
               device: str = "cpu", one_graph: bool = False,
               live: GNNLiveState | None = None) -> np.ndarray:
    """Flow embeddings ``[n_rows, H]`` of the target appearance of each row (zeros elsewhere).

    With ``rows``, only their graph neighbourhood (``FlowGraphBuilder.neighbourhood``: the rows
    of their windows and the ``context_windows`` before) is featurised and embedded, however
    long ``table`` is: the graphs are those of the whole table's rows (padded to ``MIN_NODES``
    nodes per type, so a conn alone in its windows gets the bits it gets among many).
    ``one_graph`` (with ``rows``): the neighbourhood as one graph when it holds at most
    ``ONE_GRAPH_ROWS`` rows (the same bits; ``GNNDetector.score_rows``). ``live`` (with
    ``rows``, on the CPU): node states kept from earlier calls, used where their windows are
    the same, and this call's kept for the next (``gnn_live``; the same bits)."""
    torch = torch_module()
    model = ready(bundle.model, device)
    out = np.zeros((table.num_rows, model.cfg.hidden), dtype=np.float32)
    builder = bundle.builder()
    keep = None
    whole = table
    if rows is not None:
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if len(rows) == 0:
            return out
        keep = builder.neighbourhood(table, rows)
        if len(keep) < table.num_rows:
            table = table.take(pa.array(keep, pa.int64()))
            rows = np.searchsorted(keep, rows)
        else:
            keep = None
    # in a table_memo scope the whole table's flow features are shared with the other
    # detectors: take the neighbourhood's rows of them (a conn's features are its own)
    x = (bundle.features(whole, keep) if keep is not None and table_memo.active()
         else bundle.features(table))
    # a neighbourhood is embedded as one graph where it fits: ``iter_graphs``' pieces of
    # ``segment_flows`` targets each hold their own 4 windows of context, and at 5,000 conns/s
    # a live release of 25,000 conns came in two pieces of ~160,000 flow nodes each (one graph
    # of them: ~195,000). A target's embedding is the same bits in either (``score_rows``)
    one = one_graph and rows is not None and table.num_rows <= ONE_GRAPH_ROWS
    # read for its targets alone: the edges no target reads are not built (``targets_only``)
    graphs = ([builder.build(table, x, rows, targets_only=True, next_flows=live is None)] if one
              else builder.iter_graphs(table, x, rows))
    with torch.inference_mode():
        for g in graphs:
            xs = g.x_dict if rows is None else pad_nodes(g.x_dict)
            t = g["flow"].target
            # with rows, the targets' cone only: their graph's context windows are read, not
            # embedded. Not without: the cone pads each step's rows to MIN_ROWS, and a table
            # of 1-3 conns (``score`` of a one-conn file, as --dask scores each file) would
            # then get other bits than it gets today (those of the conns among many)
            cone = None if rows is None else t.nonzero().squeeze(1).to(device)
            keep_states = (live is not None and cone is not None and device == "cpu"
                           and xs["flow"] is g.x_dict["flow"] and xs["ip"] is g.x_dict["ip"])
            if keep_states:
                h = _embed_live(model, g, xs, cone, live, builder, next_flows=not one)
            else:
                if one and live is not None:          # built without them for the live state
                    g.edge_index_dict.update(builder.next_flow_edges(g))
                h = model(to_device(xs, device), to_device(g.edge_index_dict, device), targets=cone)["flow"]
            h = h[:len(t)]
            at = g["flow"].row[t].numpy()
            out[at if keep is None else keep[at]] = h[t.to(device)].cpu().numpy()
    return out


def _embed_live(model, g, xs: dict, cone, live: GNNLiveState, builder: FlowGraphBuilder,
                next_flows: bool):
    """The flow rows of ``model`` over the graph ``g`` for its targets ``cone`` (``embed_rows``),
    with the node states ``live`` holds for ``g``'s windows filled in and this call's kept.
    ``next_flows``: ``g`` has its next-flow edges; else they are added into the nodes the cone
    may compute (``GNNLiveState.next_flows_into``), known once the states kept are."""
    layout = window_fingerprints(g)
    # the next-flow edges into windows before this one are left out of a graph built for its
    # targets alone (``FlowGraphBuilder.build``): states there past the input projection are
    # not kept. A target without a time keeps them all in; its window sorts first
    target_windows = g["flow"].window[g["flow"].target]
    first_target = int(target_windows.min())
    known = live.known(layout)
    if not next_flows:
        g.edge_index_dict.update(builder.next_flow_edges(
            g, live.next_flows_into(g["flow"].window.numpy(), known, first_target)))
    first_full = first_target - builder.targets_reach()
    keep_from = live.keep_from(first_target, int(target_windows.max()))
    # the states of each step the encoder computes, as it goes: of the windows kept only
    computed = live.collector(layout, first_full, keep_from)
    h = model(xs, g.edge_index_dict, targets=cone, known=known, computed=computed)["flow"]
    live.store(layout, computed, keep_from)
    return h


def same_graph_rows(builder: FlowGraphBuilder, scored: pa.Table, rows: np.ndarray) -> np.ndarray:
    """Which of ``rows`` (the baseline ``scored.take(rows)``) embed in the baseline's graph with
    the bits ``scored``'s graph gives them: those whose windows (their target window and the
    ``context_windows`` before it, ``FlowGraphBuilder.needed_windows``) no conn of ``scored``
    outside ``rows`` appears in. Such a row's graph neighbourhood is the same rows in both, and
    windows are absolute (``ts // window``), so its graph is the same. A conn reaches back
    ``context_windows`` and forward up to ``max_conn_windows`` windows (a later conn lasting
    into its target window), so unlike ``reference.same_context_rows`` a baseline conn just
    before the input's next conn is not the same. ``rows`` out of order: none (ties in ``ts``
    order graph nodes by row, and that order would differ).

    Shapes:
        rows ``[m]`` -> ``[m]`` bool
    """
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) > 1 and not (np.diff(rows) > 0).all():
        return np.zeros(len(rows), dtype=bool)
    first, last = builder.windows(scored)
    outside = np.ones(scored.num_rows, dtype=bool)
    outside[rows] = False
    if not outside.any():                        # the whole input: every graph is the same
        return np.ones(len(rows), dtype=bool)
    # every window an outside conn appears in (a conn joins each of first..last)
    o_first, o_last = first[outside], last[outside]
    span = o_last - o_first + 1
    starts = np.cumsum(span) - span
    covered = np.unique(np.repeat(o_first, span) + (np.arange(int(span.sum())) - np.repeat(starts, span)))
    target = last[rows]
    lo = np.searchsorted(covered, target - builder.config.context_windows, side="left")
    hi = np.searchsorted(covered, target, side="right")
    return hi == lo


class GNNDetector:
    """Anomalous = the conn's flow embedding (the conn in its graph of hosts and nearby conns) is
    far from the baseline's: the score is the mean cosine distance to its ``k`` nearest baseline
    embeddings (``fit`` stores the baseline's embeddings; weights stay as trained).

    Args:
        bundle: a pretrained (or finetuned) model.
        k: neighbours (default 5).
        device: where the model runs (default "cpu").
        seed: draws the reference subset of a baseline over ``MAX_REFERENCE`` conns (default 0).
    """

    name = NAME
    note = "ZeekML::Anomalous_Flow"
    context_key = None            # a graph window holds every host's conns

    def __init__(self, bundle: GNNBundle, k: int = KNN, device: str = "cpu", seed: int = 0):
        self.bundle = bundle
        self.k = k
        self.device = device
        self.seed = seed
        # the reference every learned detector keeps (``reference.KnnReference``: the draw of
        # ``MAX_REFERENCE`` rows, the index searched, the baseline's nearest-neighbour p99);
        # it scales the embeddings to unit rows itself, with the formula this detector used
        self.reference = KnnReference(k, MAX_REFERENCE, seed)
        self._identity: pa.Table | None = None     # uid, 4-tuple, service of each fit row
        # node states kept from one ``score_rows`` call to the next (watch's releases)
        self._live = self._new_live_state()

    def _new_live_state(self) -> GNNLiveState | None:
        """Node states kept between calls (``gnn_live``), on the CPU only."""
        encoder = getattr(self.bundle.model, "encoder", None)
        if encoder is None or self.device != "cpu":
            return None
        return GNNLiveState([c.edge_types for c in encoder.convs], self.bundle.graph.span)

    @property
    def context_seconds(self) -> float:
        """How far in time other conns can change a conn's score: its graph holds
        ``context_windows`` windows before its target window and conns lasting up to
        ``max_conn_windows`` windows. Split scoring (``--dask``) gives each piece this overlap."""
        g = self.bundle.graph
        return (g.context_windows + g.max_conn_windows + 2) * g.window

    @property
    def forward_context_seconds(self) -> float:
        """How far forward other conns can change a conn's score: ``max_conn_windows`` windows
        (20 s for ``gnn-base``). A conn's embedding is that of its target appearance, in its
        last window ``L``, and messages only pass inside a window or forward in time, so only
        conns appearing in windows up to ``L`` reach it; they start before ``(L + 1) * window``,
        and ``L`` is at most ``max_conn_windows - 1`` windows after the conn's start window.
        A graph holding several targets also holds later windows, which change nothing for
        this one (tested: the score with and without every conn past the reach)."""
        g = self.bundle.graph
        return float(g.max_conn_windows * g.window)

    def _embed(self, table: pa.Table, rows: np.ndarray | None = None,
               one_graph: bool = False, live: bool = False) -> np.ndarray:
        """Flow embeddings of ``rows`` of ``table`` (every row when None), as the model gives
        them (``reference`` scales them to unit rows); ``one_graph``: ``embed_rows``';
        ``live``: with the node states kept between calls (``gnn_live``)."""
        state = getattr(self, "_live", None) if live else None
        if state is None:
            e = embed_rows(self.bundle, table, rows, device=self.device, one_graph=one_graph)
        else:
            with state.lock:
                e = embed_rows(self.bundle, table, rows, device=self.device, one_graph=one_graph,
                               live=state)
        return e if rows is None else e[rows]

    def _reference_input(self, table: pa.Table, rows: np.ndarray | None = None) -> np.ndarray:
        """What the reference compares for ``fit_split``: the flow embeddings of ``rows`` (every
        row when None) as ``score_rows`` embeds them (graphs padded to ``MIN_NODES``), so a
        baseline conn's embedding is the one scoring it among the input's conns gives."""
        rows = np.arange(table.num_rows, dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        return self._embed(table, rows)

    def _check_fitted(self, what: str) -> None:
        if self.reference.ref is None:
            raise ModelError(f"GNNDetector.{what} before fit")

    def fit(self, table: pa.Table, reference_input: np.ndarray | None = None) -> GNNDetector:
        """Embed the baseline ``table`` as the reference set (and keep who its conns are);
        ``reference_input``: its conns' embeddings when already computed (``fit_split``)."""
        self.reference.fit(self._embed(table) if reference_input is None else reference_input)
        # every fit row's uid, 4-tuple and service, so an alert can name its nearest:
        # ``KnnReference.nearest`` answers rows of the fit table
        self._identity = reference_identity(table, np.arange(table.num_rows))
        return self

    def fit_split(self, table: pa.Table, fit_rows: np.ndarray, cal_rows: np.ndarray,
                  extra: pa.Table | None = None, scored: pa.Table | None = None,
                  rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Fit on ``fit_rows`` of the baseline ``table`` and score its ``cal_rows``, every
        baseline conn embedded once, in the whole baseline's graph (was: the fit half and the
        calibration half each in its own, every other conn of their windows missing); given
        the input ``scored`` it was drawn from (``table = scored.take(rows)``), score every conn
        of the input too, the baseline conns whose graph is the same there (``same_graph_rows``)
        not embedded again (``reference.fit_split``). Returns ``(scores of cal_rows, scores of
        every conn of scored or None)``."""
        builder = self.bundle.builder()
        return fit_split(self, self._reference_input, table, fit_rows, cal_rows, extra, scored, rows,
                         same_context=lambda s, r: same_graph_rows(builder, s, r))

    def score(self, table: pa.Table) -> np.ndarray:
        """Anomaly score of every row, ``[n]``."""
        self._check_fitted("score")
        if table.num_rows == 0:
            return np.zeros(0)
        return self.reference.score(self._embed(table))

    def score_rows(self, table: pa.Table, rows: np.ndarray) -> np.ndarray:
        """``score(table)[rows]``, embedding only the graph neighbourhood of ``rows`` (their
        windows and the ``context_windows`` before them): live and split scoring hand a
        batch's conns with 70 s of context around them (``scoring.context``). The graph
        built around fewer targets holds the same nodes and edges for each of them, in the
        same relative order, so the embeddings are those of the whole table's graph (tested
        bit for bit on the shipped model)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return np.zeros(0)
        self._check_fitted("score_rows")
        return self.reference.score(self._embed(table, rows, one_graph=True, live=True))

    def explain(self, table: pa.Table, rows: np.ndarray, top: int = 3) -> list[str]:
        """Per row, its nearest baseline conns by flow embedding (``scoring.explain.nearest_text``:
        "nearest baseline conns: 192.168.1.5 -> 8.8.8.8:53/udp dns (uid C.., distance 0.41), ...",
        or "unlike any of the baseline's 4,000 conns ..." when even the nearest is further than
        the baseline's own 99th percentile). ``top`` is unused: the line names
        ``NEAREST_SHOWN`` conns, to stay short in a notice."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return []
        self._check_fitted("explain")
        ref = self.reference
        # not with the kept states: storing this call's would drop those of the windows before
        # its alerts' (``GNNLiveState.store``), which the next release reads
        dist, nrows = ref.nearest(self._embed(table, rows), NEAREST_SHOWN)
        return nearest_text(self._identity, dist, nrows, ref.nearest_q99(), len(ref.ref))


@register_kind(NAME)
class GNNKind:
    """The inference half of ``--model gnn``."""

    schema_version = SCHEMA_VERSION

    def __init__(self, name: str):
        self.name = name

    def detector(self, model_dir: str, device: str = "cpu") -> GNNDetector:
        """The detector of a gnn model directory (pretrained or finetuned: both embed flows)."""
        return GNNDetector(load_bundle(model_dir, device)[0], device=device)
