"""``--model gnn``: link-prediction pretraining, few-shot finetuning, prediction and the detector.

Pretraining (labels ignored): in every graph a share of the (flow, orig address) and (flow, resp
address) links is held out, in both directions, from the message-passing graph; the encoder runs
on the kept edges only and a dot-product decoder tells the held-out links from as many uniform
negatives (BCE). Negatives never enter message passing either (the reference code passes both
into message passing, which leaks the answer; ``tests/unit/nn/test_gnn.py`` proves ours does not).

Finetuning: an MLP head on the flow embeddings of the labeled conns' target appearances,
class-weighted cross-entropy, the whole model trained (from the pretrained base or from random
weights with the same budget). With ``hide_service`` the service and port columns of the flow
features are constant (zero after scaling), so neither the inputs nor the graph carry them.

Detector (``zeekml score``): the anomaly score of a conn is the mean cosine distance of its flow
embedding to its nearest neighbours among the baseline conns' embeddings.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from zeekml._core.errors import ModelError
from zeekml.features.flow_features import FlowFeaturizer
from zeekml.features.graph import FlowGraphBuilder, GraphConfig
from zeekml.train.artifact import load_model_dir, save_model_dir
from zeekml.train.data import Prediction, temporal_split

log = logging.getLogger(__name__)

KIND_NAME = "gnn"
PRETRAIN_DEFAULTS = {"epochs": 8, "lr": 2e-3, "holdout": 0.2, "segment_flows": 8000}
FINETUNE_DEFAULTS = {"epochs": 30, "lr": 2e-3, "weight_decay": 1e-4}
KNN = 5
MAX_REFERENCE = 4000


# ---------------------------------------------------------------------------------------------
# link hold-out (the leakage-free split)


@dataclass
class LinkSplit:
    """Message-passing edges (held-out links removed both ways) and the supervision pairs.

    ``pos[rel]``/``neg[rel]``: ``[2, P]`` (flow index, ip index); ``held[rel]``: bool mask over the
    flow nodes whose ``rel`` link was held out.
    """

    edges: dict
    pos: dict
    neg: dict
    held: dict


def hold_out(edge_index_dict: dict, n_flow: int, n_ip: int, ratio: float, generator,
             held: dict | None = None) -> LinkSplit:
    """Hold out ``ratio`` of each relation's (flow, ip) links (or the given ``held`` masks)."""
    import torch
    from torch_geometric.utils import negative_sampling

    from zeekml.nn.gnn import RELATION_EDGES

    edges = dict(edge_index_dict)
    pos, neg, masks = {}, {}, {}
    for rel, (fwd, rev) in RELATION_EDGES.items():
        ei = edge_index_dict[fwd]
        if held is not None:
            mask = held[rel]
        else:
            mask = torch.rand(ei.size(1), generator=generator) < ratio
        keep = ~mask
        edges[fwd] = ei[:, keep]
        edges[rev] = edge_index_dict[rev][:, keep]
        pos[rel] = ei[:, mask]
        n = int(mask.sum())
        if n and n_ip > 1:
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            neg[rel] = negative_sampling(ei, num_nodes=(n_flow, n_ip), num_neg_samples=n)
        else:
            neg[rel] = ei[:, :0]
        masks[rel] = mask
    return LinkSplit(edges, pos, neg, masks)


def link_logits(model, x_dict: dict, split: LinkSplit):
    """Logits and 0/1 targets of every supervision pair, from message passing on the kept edges."""
    import torch

    h = model(x_dict, split.edges)
    logits, target = [], []
    for rel in split.pos:
        for pairs, y in ((split.pos[rel], 1.0), (split.neg[rel], 0.0)):
            if pairs.size(1):
                logits.append(model.link_logits(h, pairs, rel))
                target.append(torch.full((pairs.size(1),), y))
    if not logits:
        return torch.zeros(0), torch.zeros(0)
    return torch.cat(logits), torch.cat(target)


# ---------------------------------------------------------------------------------------------
# features


def service_columns(featurizer: FlowFeaturizer) -> np.ndarray:
    names = featurizer.feature_names
    return np.array([i for i, n in enumerate(names) if n.startswith(("service_", "resp_p_"))], dtype=np.int64)


def featurize(featurizer: FlowFeaturizer, table: pa.Table, hide_service: bool) -> np.ndarray:
    """Scaled flow features; with ``hide_service`` the service and port columns are zero."""
    x = featurizer.transform(table)
    if hide_service and not featurizer.hide_service:
        x[:, service_columns(featurizer)] = 0.0
    return x


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


# ---------------------------------------------------------------------------------------------
# in-memory training (also used by bench/gnn_fewshot.py)


@dataclass
class GNNBundle:
    """A model with everything needed to use it on a conn table."""

    model: object
    featurizer: FlowFeaturizer
    graph: GraphConfig
    classes: list[str]
    hide_service: bool = False

    def builder(self) -> FlowGraphBuilder:
        return FlowGraphBuilder(self.graph)

    def features(self, table: pa.Table) -> np.ndarray:
        return featurize(self.featurizer, table, self.hide_service)


def pretrain_bundle(table: pa.Table, seed: int = 0, epochs: int | None = None, lr: float | None = None,
                    holdout: float | None = None, hidden: int = 64, graph: GraphConfig | None = None,
                    device: str = "cpu", max_minutes: float | None = None) -> tuple[GNNBundle, dict]:
    import time

    import torch

    from zeekml.nn.gnn import FlowGNN, GNNConfig

    epochs = epochs if epochs is not None else PRETRAIN_DEFAULTS["epochs"]
    lr = lr or PRETRAIN_DEFAULTS["lr"]
    holdout = holdout or PRETRAIN_DEFAULTS["holdout"]
    _seed(seed)
    gcfg = graph or GraphConfig(segment_flows=PRETRAIN_DEFAULTS["segment_flows"])
    featurizer = FlowFeaturizer().fit(table)
    x = featurizer.transform(table)
    graphs = [g for g in FlowGraphBuilder(gcfg).iter_graphs(table, x) if g["flow"].num_nodes > 1]
    model = FlowGNN(GNNConfig(flow_in=x.shape[1], hidden=hidden)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    bce = torch.nn.BCEWithLogitsLoss()
    history = []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        total, count = 0.0, 0
        for gi in torch.randperm(len(graphs), generator=gen).tolist():
            g = graphs[gi]
            split = hold_out(g.edge_index_dict, g["flow"].num_nodes, g["ip"].num_nodes, holdout, gen)
            logits, y = link_logits(model, _to(g.x_dict, device), _split_to(split, device))
            if logits.numel() == 0:
                continue
            loss = bce(logits, y.to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
        history.append(total / max(count, 1))
        log.info("gnn pretrain epoch %d loss %.4f", epoch, history[-1])
        if max_minutes and time.perf_counter() - t0 > max_minutes * 60:
            break
    metrics = {"pretrain_loss": history, "epochs_run": len(history), "graphs": len(graphs),
               "link_auroc": _link_auroc(model, graphs, holdout, seed, device),
               "train_seconds": round(time.perf_counter() - t0, 1), "conns": table.num_rows}
    return GNNBundle(model.cpu(), featurizer, gcfg, []), metrics


def _link_auroc(model, graphs, holdout: float, seed: int, device: str) -> float | None:
    import torch

    from zeekml.train.metrics import binary_auroc

    gen = torch.Generator().manual_seed(seed + 1)
    model.eval()
    ls, ys = [], []
    with torch.inference_mode():
        for g in graphs[:8]:
            split = hold_out(g.edge_index_dict, g["flow"].num_nodes, g["ip"].num_nodes, holdout, gen)
            lo, y = link_logits(model, _to(g.x_dict, device), _split_to(split, device))
            ls.append(lo.cpu().numpy())
            ys.append(y.numpy())
    if not ls:
        return None
    return binary_auroc(np.concatenate(ys) > 0.5, np.concatenate(ls))


def _to(d: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in d.items()} if device != "cpu" else d


def _split_to(s: LinkSplit, device: str) -> LinkSplit:
    if device == "cpu":
        return s
    return LinkSplit(_to(s.edges, device), _to(s.pos, device), _to(s.neg, device), s.held)


def finetune_bundle(base: GNNBundle | None, table: pa.Table, labels: np.ndarray,
                    train_rows: np.ndarray, hide_service: bool, seed: int = 0,
                    epochs: int | None = None, lr: float | None = None, device: str = "cpu",
                    hidden: int = 64, featurizer: FlowFeaturizer | None = None,
                    x: np.ndarray | None = None) -> tuple[GNNBundle, dict]:
    """Finetune ``base`` (None = random start) on the labels of ``train_rows`` only.

    ``featurizer`` (scratch only) and ``x`` (the table's features) skip recomputing them.
    """
    import copy
    import time

    import torch

    from zeekml.nn.gnn import FlowGNN, GNNConfig

    epochs = epochs if epochs is not None else FINETUNE_DEFAULTS["epochs"]
    lr = lr or FINETUNE_DEFAULTS["lr"]
    _seed(seed)
    train_rows = np.asarray(train_rows, dtype=np.int64)
    classes = sorted({str(labels[i]) for i in train_rows if labels[i] is not None})
    if base is not None:
        featurizer, gcfg = base.featurizer, base.graph
        cfg = GNNConfig(**{**base.model.cfg.to_dict(), "n_classes": len(classes)})
        model = FlowGNN(cfg)
        missing, unexpected = model.load_state_dict(base.model.state_dict(), strict=False)
        if unexpected or any(not k.startswith("head.") for k in missing):
            raise ModelError(f"base weights do not fit: missing {missing}, unexpected {unexpected}")
    else:
        featurizer = featurizer or FlowFeaturizer(hide_service=hide_service).fit(table)
        gcfg = GraphConfig()
        model = FlowGNN(GNNConfig(flow_in=len(featurizer.feature_names), hidden=hidden,
                                  n_classes=len(classes)))
    bundle = GNNBundle(model, copy.deepcopy(featurizer), gcfg, classes, hide_service)
    x = bundle.features(table) if x is None else x
    g = bundle.builder().build(table, x, targets=train_rows)
    tmask = g["flow"].target
    rows = g["flow"].row[tmask].numpy()
    index = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([index[str(labels[r])] for r in rows], dtype=torch.long)
    counts = torch.bincount(y, minlength=len(classes)).float()
    weight = counts.sum() / (len(classes) * counts.clamp(min=1))
    from zeekml.nn.gnn import adjacency

    adj = adjacency(g.x_dict, g.edge_index_dict)
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=FINETUNE_DEFAULTS["weight_decay"])
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight.to(device))
    t0 = time.perf_counter()
    losses = []
    for _ in range(epochs):
        model.train()
        h = model(_to(g.x_dict, device), _to(adj, device))
        loss = loss_fn(model.classify(h["flow"][tmask.to(device)]), y.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    bundle.model = model.cpu().eval()
    return bundle, {"finetune_loss": losses[-1] if losses else None, "classes": classes,
                    "train_seconds": round(time.perf_counter() - t0, 1),
                    "graph_flows": int(g["flow"].num_nodes), "base": base is not None}


def embed_rows(bundle: GNNBundle, table: pa.Table, rows: np.ndarray | None = None,
               device: str = "cpu") -> np.ndarray:
    """Flow embeddings ``[n_rows, H]`` of the target appearance of each row (zeros elsewhere)."""
    import torch

    model = bundle.model.to(device).eval()
    x = bundle.features(table)
    out = np.zeros((table.num_rows, model.cfg.hidden), dtype=np.float32)
    with torch.inference_mode():
        for g in bundle.builder().iter_graphs(table, x, rows):
            h = model(_to(g.x_dict, device), _to(g.edge_index_dict, device))["flow"]
            t = g["flow"].target
            out[g["flow"].row[t].numpy()] = h[t.to(device)].cpu().numpy()
    return out


def predict_proba(bundle: GNNBundle, table: pa.Table, rows: np.ndarray | None = None,
                  device: str = "cpu", x: np.ndarray | None = None) -> np.ndarray:
    """Class probabilities ``[n_rows, C]`` (rows not asked for stay zero)."""
    import torch

    model = bundle.model.to(device).eval()
    x = bundle.features(table) if x is None else x
    out = np.zeros((table.num_rows, len(bundle.classes)), dtype=np.float32)
    with torch.inference_mode():
        for g in bundle.builder().iter_graphs(table, x, rows):
            h = model(_to(g.x_dict, device), _to(g.edge_index_dict, device))["flow"]
            t = g["flow"].target
            p = torch.softmax(model.classify(h[t.to(device)]), dim=-1)
            out[g["flow"].row[t].numpy()] = p.cpu().numpy()
    return out


# ---------------------------------------------------------------------------------------------
# model directories


def save_bundle(bundle: GNNBundle, out: str, sources: list[str], metrics: dict, extra: dict | None = None) -> None:
    from zeekml.nn.gnn import n_params

    config = {
        "model": bundle.model.cfg.to_dict(),
        "graph": bundle.graph.to_dict(),
        "featurizer": bundle.featurizer.to_dict(),
        "classes": bundle.classes,
        "hide_service": bundle.hide_service,
        "n_params": n_params(bundle.model),
        **(extra or {}),
    }
    save_model_dir(out, KIND_NAME, config, bundle.model.state_dict(), sources, metrics)


def load_bundle(model_dir: str, device: str = "cpu") -> tuple[GNNBundle, dict]:
    from zeekml.nn.gnn import FlowGNN, GNNConfig

    config, state = load_model_dir(model_dir, map_location=device)
    if config.get("kind") != KIND_NAME:
        raise ModelError(f"not a gnn model (kind {config.get('kind')!r})", model_dir)
    if state is None:
        raise ModelError("the model directory has no weights", model_dir)
    try:
        model = FlowGNN(GNNConfig(**config["model"]))
        model.load_state_dict(state)
        featurizer = FlowFeaturizer.from_dict(config["featurizer"])
        graph = GraphConfig.from_dict(config["graph"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ModelError(f"cannot rebuild the gnn model: {e}", model_dir) from e
    return GNNBundle(model.eval(), featurizer, graph, list(config.get("classes", [])),
                     bool(config.get("hide_service"))), config


# ---------------------------------------------------------------------------------------------
# the detector


class GNNDetector:
    """Anomaly score = mean cosine distance of a conn's flow embedding to its ``k`` nearest
    baseline embeddings (``fit`` stores the baseline's embeddings; weights stay as trained).

    Args:
        bundle: a pretrained (or finetuned) model.
        k: neighbours (default 5).
    """

    name = "gnn"
    note = "ZeekML::Anomalous_Flow"

    def __init__(self, bundle: GNNBundle, k: int = KNN, device: str = "cpu", seed: int = 0):
        self.bundle = bundle
        self.k = k
        self.device = device
        self.seed = seed
        self._ref: np.ndarray | None = None
        self._median: np.ndarray | None = None
        self._mad: np.ndarray | None = None

    @property
    def context_seconds(self) -> float:
        """How far in time (either way) other conns can change a conn's score: its graph holds
        ``context_windows`` windows before its target window and conns lasting up to
        ``max_conn_windows`` windows. Split scoring (``--dask``) gives each piece this overlap."""
        g = self.bundle.graph
        return (g.context_windows + g.max_conn_windows + 2) * g.window

    def _embed(self, table: pa.Table) -> np.ndarray:
        e = embed_rows(self.bundle, table, device=self.device)
        return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-9)

    def fit(self, table: pa.Table) -> "GNNDetector":
        e = self._embed(table)
        if len(e) > MAX_REFERENCE:
            e = e[np.random.default_rng(self.seed).choice(len(e), MAX_REFERENCE, replace=False)]
        self._ref = e
        x = self.bundle.featurizer.transform(table)
        self._median = np.median(x, axis=0)
        mad = np.median(np.abs(x - self._median), axis=0)
        self._mad = np.where(mad > 1e-6, mad, np.maximum(np.std(x, axis=0), 1e-3))
        return self

    def score(self, table: pa.Table) -> np.ndarray:
        if self._ref is None:
            raise ModelError("GNNDetector.score before fit")
        if table.num_rows == 0:
            return np.zeros(0)
        return knn_distance(self._embed(table), self._ref, self.k)

    def explain(self, table: pa.Table, rows: np.ndarray, top: int = 3) -> list[str]:
        """The flow features furthest from the baseline (robust z-score), as the iforest does."""
        if len(rows) == 0:
            return []
        sub = table.take(pa.array(rows, pa.int64()))
        f = self.bundle.featurizer
        z = np.abs(f.transform(sub) - self._median) / self._mad
        raw = f._raw(sub)
        names = f.feature_names
        return ["gnn:" + ",".join(f"{names[j]}={raw[i, j]:.3g}" for j in np.argsort(-z[i])[:top])
                for i in range(len(rows))]


def knn_distance(e: np.ndarray, ref: np.ndarray, k: int) -> np.ndarray:
    """Mean cosine distance of each row of ``e`` (unit vectors) to its ``k`` nearest in ``ref``."""
    k = max(1, min(k, len(ref)))
    out = np.empty(len(e))
    for a in range(0, len(e), 2048):
        d = 1.0 - e[a:a + 2048] @ ref.T
        out[a:a + 2048] = np.partition(d, k - 1, axis=1)[:, :k].mean(axis=1)
    return out


# ---------------------------------------------------------------------------------------------
# the protocol of zeekml.train.registry


class GNNKind:
    name = KIND_NAME

    def pretrain(self, table: pa.Table, out: str, sources: list[str], seed: int = 0,
                 flows: pa.Table | None = None, **opts) -> dict:
        device = opts.pop("device", "cpu")
        bundle, metrics = pretrain_bundle(table, seed=seed, device=device, **opts)
        save_bundle(bundle, out, sources, metrics, {"detector": True, "seed": seed})
        return {k: v for k, v in metrics.items() if k != "pretrain_loss"} | {
            "final_loss": metrics["pretrain_loss"][-1] if metrics["pretrain_loss"] else None}

    def finetune(self, base: str | None, table: pa.Table, labels: np.ndarray, train_rows: np.ndarray,
                 hide_service: bool, seed: int, out: str, sources: list[str],
                 flows: pa.Table | None = None, **opts) -> dict:
        device = opts.pop("device", "cpu")
        label_field = opts.pop("label_field", None)
        base_bundle = load_bundle(base, device)[0] if base else None
        bundle, metrics = finetune_bundle(base_bundle, table, labels, train_rows, hide_service,
                                          seed=seed, device=device, **opts)
        save_bundle(bundle, out, sources, metrics,
                    {"label_field": label_field, "base": os.path.abspath(base) if base else None,
                     "seed": seed})
        return metrics

    def predict(self, model_dir: str, table: pa.Table, device: str = "cpu",
                flows: pa.Table | None = None) -> Prediction:
        """``flows`` (zeekml_flow records) is accepted for a uniform protocol; graphs use conns only."""
        bundle, config = load_bundle(model_dir, device)
        if bundle.classes:
            return Prediction(classes=bundle.classes, proba=predict_proba(bundle, table, device=device))
        # a pretrained base: anomaly score against the earliest 30% of the same input by time
        det = GNNDetector(bundle, device=device)
        base_rows, _ = temporal_split(table, 0.3)
        if len(base_rows) == 0:
            return Prediction(classes=[], proba=None, score=np.zeros(table.num_rows),
                              reason=["empty input"] * table.num_rows)
        det.fit(table.take(pa.array(base_rows)))
        return Prediction(classes=[], proba=None, score=det.score(table))

    def detector(self, model_dir: str, device: str = "cpu") -> GNNDetector:
        return GNNDetector(load_bundle(model_dir, device)[0], device=device)


KIND = GNNKind()
