"""``--model gnn``: link-prediction pretraining, few-shot finetuning and prediction (the training
half of the kind; the detector is ``zeekml.scoring.detectors.gnn``).

Pretraining (labels ignored): in every graph a share of the (flow, orig address) and (flow, resp
address) links is held out, in both directions, from the message-passing graph; the encoder runs
on the kept edges only and a dot-product decoder tells the held-out links from as many uniform
negatives (BCE). Negatives never enter message passing either (the reference code passes both
into message passing, which leaks the answer; ``tests/unit/nn/test_gnn.py`` proves ours does not).

Finetuning: a head on the flow embeddings of the labeled conns' target appearances,
class-weighted cross-entropy, the whole model trained (from the pretrained base or from random
weights with the same budget). Each step sees the whole graph, so ``epochs`` = optimiser steps.
``procedure="lp-ft"`` (``zeekml.train.common.LPFT``): a linear head fitted on the frozen encoder's
embeddings first, then everything at a small rate, stopped early on held-out labeled conns;
``procedure="full"``: the earlier MLP head trained with the encoder from a random start.
With ``hide_service`` the service and port columns of the flow features are constant (zero after
scaling), so neither the inputs nor the graph carry them.

Detector (``zeekml score``): the anomaly score of a conn is the mean cosine distance of its flow
embedding to its nearest neighbours among the baseline conns' embeddings.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from zeekml._core.errors import ModelError
from zeekml.features.flow_features import FlowFeaturizer
from zeekml.features.graph import FlowGraphBuilder, GraphConfig
# the inference half, re-exported: bench/ and older callers import these names from here
from zeekml.scoring.detectors.gnn import (NAME, SCHEMA_VERSION, GNNBundle,  # noqa: F401
                                          GNNDetector, featurize, load_bundle, service_columns)
from zeekml.scoring.detectors.gnn import to_device as _to
from zeekml.train.artifact import save_model_dir
from zeekml.train.common import (LPFT, EarlyStopping, EpochLog, Trainer, apply_epochs, check_procedure,
                                 class_weights, ft_budget, holdout_rows, lp_val_share, model_config, optimiser_steps,
                                 pick, probe_into, run_ft)
from zeekml.train.data import Prediction, temporal_split
from zeekml.train.registry import register_trainer

log = logging.getLogger(__name__)

KIND_NAME = NAME


@dataclass
class PretrainConfig:
    """Link-prediction pretraining.

    Args:
        epochs: passes over the graphs (default 8).
        lr: AdamW learning rate (default 2e-3).
        holdout: share of (flow, address) links held out per graph (default 0.2).
        segment_flows: target conns per graph (default 8000).
        hidden: encoder width (default 64).
        max_minutes: stop after the epoch that passes this wall time (default None = no limit).
    """

    epochs: int = 8
    lr: float = 2e-3
    holdout: float = 0.2
    segment_flows: int = 8000
    hidden: int = 64
    max_minutes: float | None = None


@dataclass
class FinetuneConfig(LPFT):
    """Classifier training on the whole graph (one step per epoch; the procedure's own settings:
    ``zeekml.train.common.LPFT``).

    Args:
        epochs: optimiser steps (default 30; LP-FT's FT budget).
        lr: AdamW learning rate (default 2e-3; LP-FT's FT runs at ``lr * ft_lr_scale``).
        weight_decay: AdamW weight decay (default 1e-4).
        hidden: encoder width from scratch (default 64; a base keeps its own).
        min_steps: lower bound on steps (default 0: full-batch steps need no few-shot floor).
        eval_every: LP-FT: steps between validations (default 1: each step is the whole graph).
    """

    epochs: int = 30
    lr: float = 2e-3
    weight_decay: float = 1e-4
    hidden: int = 64
    min_steps: int = 0
    eval_every: int = 1


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
    """Hold out ``ratio`` of each relation's (flow, ip) links (or the given ``held`` masks); the
    negatives are drawn from ``generator`` alone (torch's and Python's global random states are
    seeded from it)."""
    import random

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
            s = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
            torch.manual_seed(s)
            # negative_sampling also draws from Python's random (random.sample); unseeded, two
            # pretrainings with the same seed in two processes gave different weights
            random.seed(s)
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


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


# ---------------------------------------------------------------------------------------------
# in-memory training (also used by bench/gnn_fewshot.py)


def pretrain_bundle(table: pa.Table, seed: int = 0, epochs: int | None = None, lr: float | None = None,
                    holdout: float | None = None, hidden: int = 64, graph: GraphConfig | None = None,
                    device: str = "cpu", max_minutes: float | None = None,
                    cfg: PretrainConfig | None = None) -> tuple[GNNBundle, dict]:
    """Pretrain a GNN on ``table`` by link prediction; ``cfg`` (default ``PretrainConfig()``) with
    the keyword overrides applied."""
    import time

    import torch

    from zeekml.nn.gnn import FlowGNN, GNNConfig

    cfg = cfg or PretrainConfig(hidden=hidden, max_minutes=max_minutes)
    apply_epochs(cfg, epochs)
    cfg.lr = lr or cfg.lr
    cfg.holdout = holdout or cfg.holdout
    epochs, lr, holdout, hidden, max_minutes = cfg.epochs, cfg.lr, cfg.holdout, cfg.hidden, cfg.max_minutes
    _seed(seed)
    gcfg = graph or GraphConfig(segment_flows=cfg.segment_flows)
    featurizer = FlowFeaturizer().fit(table)
    x = featurizer.transform(table)
    graphs = [g for g in FlowGraphBuilder(gcfg).iter_graphs(table, x) if g["flow"].num_nodes > 1]
    model = FlowGNN(GNNConfig(flow_in=x.shape[1], hidden=hidden)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    bce = torch.nn.BCEWithLogitsLoss()
    history = []
    t0 = time.perf_counter()
    progress = EpochLog("gnn pretrain", epochs, "held-out link AUROC")
    for _epoch in range(epochs):
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
        # the held-out links of a few graphs; their negative sampling draws from the global
        # random states, which are put back so that training draws exactly what it drew before
        with _same_random_state():
            auroc = _link_auroc(model, graphs, holdout, seed, device)
        progress.epoch(history[-1], auroc)
        if max_minutes and time.perf_counter() - t0 > max_minutes * 60:
            break
    metrics = {"pretrain_loss": history, "epochs_run": len(history), "graphs": len(graphs),
               "link_auroc": _link_auroc(model, graphs, holdout, seed, device),
               "train_seconds": round(time.perf_counter() - t0, 1), "conns": table.num_rows}
    return GNNBundle(model.cpu(), featurizer, gcfg, []), metrics


@contextlib.contextmanager
def _same_random_state() -> Iterator[None]:
    """Run the block, then restore Python's, numpy's and torch's global random states."""
    import random

    import torch

    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])


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


def _split_to(s: LinkSplit, device: str) -> LinkSplit:
    if device == "cpu":
        return s
    return LinkSplit(_to(s.edges, device), _to(s.pos, device), _to(s.neg, device), s.held)


def finetune_bundle(base: GNNBundle | None, table: pa.Table, labels: np.ndarray,
                    train_rows: np.ndarray, hide_service: bool, seed: int = 0,
                    epochs: int | None = None, lr: float | None = None, device: str = "cpu",
                    hidden: int = 64, featurizer: FlowFeaturizer | None = None,
                    x: np.ndarray | None = None, cfg: FinetuneConfig | None = None) -> tuple[GNNBundle, dict]:
    """Finetune ``base`` (None = random start) on the labels of ``train_rows`` only.

    ``featurizer`` (scratch only) and ``x`` (the table's features) skip recomputing them;
    ``cfg`` (default ``FinetuneConfig()``) with the keyword overrides applied.
    """
    import copy
    import time

    import torch

    from zeekml.nn.gnn import FlowGNN, GNNConfig

    cfg = cfg or FinetuneConfig(hidden=hidden)
    apply_epochs(cfg, epochs)
    cfg.lr = lr or cfg.lr
    hidden = cfg.hidden
    lpft = check_procedure(cfg) != "full"
    head_hidden = {"head_hidden": 0} if lpft else {}       # LP-FT's (and LP's) head is linear
    _seed(seed)
    train_rows = np.asarray(train_rows, dtype=np.int64)
    classes = sorted({str(labels[i]) for i in train_rows if labels[i] is not None})
    if base is not None:
        featurizer, gcfg = base.featurizer, base.graph
        model = FlowGNN(GNNConfig(**{**base.model.cfg.to_dict(), "n_classes": len(classes), **head_hidden}))
        missing, unexpected = model.load_state_dict(base.model.state_dict(), strict=False)
        if unexpected or any(not k.startswith("head.") for k in missing):
            raise ModelError(f"base weights do not fit: missing {missing}, unexpected {unexpected}")
    else:
        featurizer = featurizer or FlowFeaturizer(hide_service=hide_service).fit(table)
        gcfg = GraphConfig()
        model = FlowGNN(GNNConfig(flow_in=len(featurizer.feature_names), hidden=hidden,
                                  n_classes=len(classes), **head_hidden))
    bundle = GNNBundle(model, copy.deepcopy(featurizer), gcfg, classes, hide_service)
    x = bundle.features(table) if x is None else x
    g = bundle.builder().build(table, x, targets=train_rows)
    tmask = g["flow"].target
    rows = g["flow"].row[tmask].numpy()
    index = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([index[str(labels[r])] for r in rows], dtype=torch.long)
    from zeekml.nn.gnn import adjacency

    adj = _to(adjacency(g.x_dict, g.edge_index_dict), device)
    xd = _to(g.x_dict, device)
    tm = tmask.to(device)
    model = model.to(device)
    t0 = time.perf_counter()
    if lpft:
        losses, extra = _finetune_lpft(model, xd, adj, tm, y, len(classes), cfg, seed, device)
    else:
        losses, extra = _finetune_full(model, xd, adj, tm, y, len(classes), cfg, device)
    bundle.model = model.cpu().eval()
    return bundle, {"finetune_loss": losses[-1] if losses else None, "classes": classes,
                    "train_seconds": round(time.perf_counter() - t0, 1),
                    "graph_flows": int(g["flow"].num_nodes), "base": base is not None, **extra}


def _finetune_full(model, xd: dict, adj: dict, tmask, y, n_classes: int, cfg: FinetuneConfig,
                   device: str) -> tuple[list[float], dict]:
    """``procedure="full"``: the whole model from its (random) head, ``cfg.epochs`` full-graph
    steps at ``cfg.lr``. Returns the per-step losses and metrics."""
    import torch

    weight = class_weights(y, n_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight.to(device))
    losses = []
    steps = optimiser_steps(cfg, len(y), batch_size=0)     # full batch: a step per epoch
    # no validation share: the labeled conns all train (eval's latest 30% is the test set)
    progress = EpochLog("gnn finetune", steps, "train accuracy", steps_per_epoch=1)
    yd = y.to(device)
    for _ in range(steps):
        model.train()
        h = model(xd, adj)
        logits = model.classify(h["flow"][tmask])
        loss = loss_fn(logits, yd)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        progress.step(losses[-1], int((logits.detach().argmax(1) == yd).sum()), len(yd))
    return losses, {}


def _finetune_lpft(model, xd: dict, adj: dict, tmask, y, n_classes: int, cfg: FinetuneConfig, seed: int,
                   device: str) -> tuple[list[float], dict]:
    """LP-FT (``zeekml.train.common.LPFT``): the linear head fitted on the frozen encoder's flow
    embeddings of the fit conns, then the whole model at ``lr * ft_lr_scale`` (full-graph steps),
    keeping the step of lowest loss on the held-out conns. Returns the per-step losses and
    metrics."""
    import torch

    fit_t, val_t, weight = holdout_rows(y, lp_val_share(cfg), seed, n_classes, device)
    yd = y.to(device)
    model.eval()
    with torch.no_grad():
        h = model(xd, adj)["flow"][tmask]
    probe_into(model.head[0], h[fit_t], yd[fit_t], n_classes, weight, cfg.probe_l2)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)

    def val_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(loss_fn(model.classify(model(xd, adj)["flow"][tmask][val_t]), yd[val_t]))

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr * cfg.ft_lr_scale, weight_decay=cfg.weight_decay)
    steps = ft_budget(cfg, optimiser_steps(cfg, len(fit_t), batch_size=0), len(val_t), "gnn finetune")
    stop = EarlyStopping(model, patience=cfg.patience)
    progress = EpochLog("gnn finetune", max(steps, 1), "train accuracy", steps_per_epoch=1)
    losses: list[float] = []

    def step() -> tuple[float, int, int]:
        model.train()
        logits = model.classify(model(xd, adj)["flow"][tmask][fit_t])
        loss = loss_fn(logits, yd[fit_t])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        return losses[-1], int((logits.detach().argmax(1) == yd[fit_t]).sum()), len(fit_t)

    run_ft(step, val_loss if len(val_t) else None, stop, steps, cfg.eval_every, progress)
    return losses, {"steps": len(losses), "fit_rows": int(len(fit_t)), "val_rows": int(len(val_t)),
                    "early_stopping": stop.summary()}


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


def save_bundle(bundle: GNNBundle, out: str, sources: list[str], metrics: dict, *, seed: int,
                settings: tuple[str, object], label_field: str | None = None,
                base: str | None = None, base_config: dict | None = None,
                detector: bool | None = None, **extra: object) -> None:
    """Write ``bundle`` as a gnn model directory. ``detector`` defaults to: a base is one, a
    classifier is not; ``extra`` keys (a note) go into config.json as they are."""
    from zeekml.nn.gnn import n_params

    pretrained = settings[0] == "pretrain" or base is not None
    config = model_config(
        schema_version=SCHEMA_VERSION, seed=seed, pretrained=pretrained,
        detector=not bundle.classes if detector is None else detector, n_params=n_params(bundle.model),
        classes=bundle.classes or None, label_field=label_field, hide_service=bundle.hide_service,
        settings=settings, base=base, base_config=base_config,
        model=bundle.model.cfg.to_dict(), graph=bundle.graph.to_dict(),
        featurizer=bundle.featurizer.to_dict(), **extra)
    save_model_dir(out, KIND_NAME, config, bundle.model.state_dict(), sources, metrics)


# ---------------------------------------------------------------------------------------------
# the protocol of zeekml.train.registry


@register_trainer(KIND_NAME)
class GNNTrainer(Trainer):
    """``--model gnn`` through the model protocol."""

    def pretrain(self, table: pa.Table, out: str, sources: list[str], seed: int = 0,
                 epochs: int | None = None, device: str = "cpu", flows: pa.Table | None = None,
                 **opts) -> dict:
        """``flows`` is accepted for a uniform protocol; graphs use conns only."""
        cfg = apply_epochs(pick(PretrainConfig, opts), epochs)
        bundle, metrics = pretrain_bundle(table, seed=seed, device=device, cfg=cfg)
        save_bundle(bundle, out, sources, metrics, seed=seed, settings=("pretrain", cfg))
        return {k: v for k, v in metrics.items() if k != "pretrain_loss"} | {
            "final_loss": metrics["pretrain_loss"][-1] if metrics["pretrain_loss"] else None}

    def finetune(self, base: str | None, table: pa.Table, labels: np.ndarray, train_rows: np.ndarray,
                 hide_service: bool, seed: int, out: str, sources: list[str],
                 label_field: str | None = None, epochs: int | None = None, device: str = "cpu",
                 flows: pa.Table | None = None, **opts) -> dict:
        """Finetune from ``base`` (None = scratch) on ``train_rows``."""
        cfg = apply_epochs(pick(FinetuneConfig, opts), epochs)
        base_bundle, base_config = load_bundle(base, device) if base else (None, None)
        bundle, metrics = finetune_bundle(base_bundle, table, labels, train_rows, hide_service,
                                          seed=seed, device=device, cfg=cfg)
        save_bundle(bundle, out, sources, metrics, seed=seed, settings=("finetune", cfg),
                    label_field=label_field, base=os.path.abspath(base) if base else None,
                    base_config=base_config)
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


KIND = GNNTrainer(KIND_NAME)
