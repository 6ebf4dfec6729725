"""``--model mae``: training the multi-modal autoencoder (the inference half, ``LoadedMAE``, the
detector and the embedding, is ``zeekml.scoring.detectors.mae``).

- ``pretrain``: fit the modality inputs (scaling, vocabularies, skip-gram IP/port vectors) and
  train the autoencoder on reconstruction. A share of rows (``hide_prob``) has service and ports
  blanked in input and loss, so one base serves the service task (which hides them) too.
- ``finetune``: ``procedure="lp-ft"`` (``zeekml.train.common.LPFT``, this kind's default): a linear head fitted on the
  frozen 64-d embedding of a base, then the encoder and head finetuned together at a small rate,
  stopped early on held-out labeled rows (``--scratch``: the same from a random encoder).
  ``procedure="full"``: the earlier MLP head on the frozen embedding (``--scratch``: trained end
  to end with a random encoder).
- ``predict``: class probabilities (finetuned dirs) and ``score`` = reconstruction error.

A model directory holds ``weights.pt`` (autoencoder, head, Word2Vec vectors) and
``config.json`` (constructor args, feature scaling, vocabularies, schema version, classes).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from zeekml.features.modality import SCHEMA_VERSION, Modalities, ModalityFeaturizer, load_flow_table
# the inference half (bench/ imports LoadedMAE from here too)
from zeekml.scoring.detectors.mae import NAME, LoadedMAE, modality_tensors
from zeekml.train.artifact import save_model_dir
from zeekml.train.common import (LPFT, EarlyStopping, EpochLog, Trainer, apply_epochs, check_procedure,
                                 class_weights, ft_budget, holdout_rows, lp_val_share, model_config, optimiser_steps,
                                 pick, prefixed_state, probe_into, run_ft, step_epochs, torch_module)
from zeekml.train.data import Prediction
from zeekml.train.registry import register_trainer

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    """Autoencoder training settings.

    Args:
        epochs: passes over the corpus (default 20).
        batch_size: conns per step (default 512).
        lr: AdamW learning rate (default 1e-3).
        weight_decay: AdamW weight decay (default 1e-5).
        hide_prob: share of rows per batch with service and ports blanked (default 0.25).
        val_share: rows held out to report the validation loss (default 0.1).
    """

    epochs: int = 20
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-5
    hide_prob: float = 0.25
    val_share: float = 0.1


@dataclass
class FinetuneConfig(LPFT):
    """Classifier training settings (the procedure's own: ``zeekml.train.common.LPFT``).

    Args:
        epochs: passes over the labeled rows (default 60; at least ``min_steps`` steps unless
            ``--epochs`` is given: ``zeekml.train.common.apply_epochs``); LP-FT's FT budget.
        batch_size: rows per step (default 256).
        lr: learning rate (default 2e-3; LP-FT's FT runs at ``lr * ft_lr_scale``).
        hidden: classifier hidden width of ``procedure="full"`` (default 64; LP-FT's head is
            linear).
        min_steps: lower bound on optimiser steps, for few-shot budgets (default 300).
        procedure: default ``"lp-ft"`` for this kind: it measured better than ``"full"``, whose
            MLP head inverted on Stratosphere 010 (docs/results/fewshot.md, "LP-FT").
    """

    epochs: int = 60
    batch_size: int = 256
    lr: float = 2e-3
    hidden: int = 64
    min_steps: int = 300
    procedure: str = "lp-ft"


def _blank_masks(n: int, hide_prob: float, q_hide: np.ndarray, e_hide: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-row keep masks ``[n, Q]`` and ``[n, E]`` (``q_hide``/``e_hide``: bool per column):
    rows drawn with ``hide_prob`` lose the service/port columns."""
    rows = rng.random(n) < hide_prob
    qk = np.ones((n, len(q_hide)), np.float32)
    ek = np.ones((n, len(e_hide)), np.float32)
    qk[np.ix_(rows, np.flatnonzero(q_hide))] = 0.0
    ek[np.ix_(rows, np.flatnonzero(e_hide))] = 0.0
    return qk, ek


def train_autoencoder(model, m: Modalities, featurizer: ModalityFeaturizer, cfg: PretrainConfig,
                      seed: int, device: str = "cpu") -> dict:
    """Reconstruction training; returns the final train and validation losses."""
    from zeekml.nn.mae import mae_loss

    torch = torch_module()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = len(m)
    perm = rng.permutation(n)
    n_val = int(n * cfg.val_share) if n >= 200 else 0
    val, train = perm[:n_val], perm[n_val:]
    q_hide = ModalityFeaturizer.service_columns(featurizer.flow.feature_names)
    e_hide = ModalityFeaturizer.service_columns(featurizer.entity_names)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.to(device).train()
    t0 = time.perf_counter()
    last = float("nan")
    history = []
    progress = EpochLog("mae pretrain", cfg.epochs, "validation loss" if n_val else None)
    if n_val:
        vq, vsq, ve = modality_tensors(m.take(val), device)
    for _epoch in range(cfg.epochs):
        rng.shuffle(train)
        total, seen = 0.0, 0
        for s in range(0, len(train), cfg.batch_size):
            b = train[s:s + cfg.batch_size]
            qk, ek = _blank_masks(len(b), cfg.hide_prob, q_hide, e_hide, rng)
            q, sq, e = modality_tensors(m.take(b), device)
            qk_t, ek_t = torch.as_tensor(qk, device=device), torch.as_tensor(ek, device=device)
            out = model(q * qk_t, sq, e * ek_t)
            loss = mae_loss(out, q, sq, e, qk_t, ek_t)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
            seen += len(b)
        last = total / max(seen, 1)
        history.append(round(last, 5))
        vloss = None
        if n_val:
            # eval mode draws no random numbers: training goes on exactly as without this
            model.eval()
            with torch.inference_mode():
                vloss = float(mae_loss(model(vq, vsq, ve), vq, vsq, ve))
            model.train()
        progress.epoch(last, vloss)
    model.eval()
    metrics = {"train_loss": last, "loss_by_epoch": history, "train_rows": int(len(train)),
               "seconds": round(time.perf_counter() - t0, 1)}
    if n_val:
        with torch.inference_mode():
            q, sq, e = modality_tensors(m.take(val), device)
            metrics["val_loss"] = float(mae_loss(model(q, sq, e), q, sq, e))
    return metrics


def _finetune_full(model, pretrained: bool, q, sq, e, y, n_classes: int, fcfg: FinetuneConfig, seed: int,
                   device: str) -> tuple:
    """``procedure="full"``: an MLP head on the frozen embedding of a base, standardised by the
    labeled rows' statistics (no base: encoder and head end to end from random weights).
    Returns ``(head, emb_mean, emb_std, trained parameters, metrics)``."""
    from zeekml.nn.mae import EmbeddingClassifier

    torch = torch_module()
    emb_dim = model.config.embed_dim
    head = EmbeddingClassifier(emb_dim, n_classes, fcfg.hidden).to(device)
    weight = class_weights(y, n_classes).to(device)
    y = y.to(device)
    if pretrained:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        with torch.inference_mode():
            z = model.encode(q, sq, e)
        z = z.clone()
        emb_mean, emb_std = z.mean(0), z.std(0, unbiased=False).clamp_min(1e-4)
        params = list(head.parameters())
    else:
        emb_mean, emb_std = torch.zeros(emb_dim, device=device), torch.ones(emb_dim, device=device)
        params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=fcfg.lr, weight_decay=1e-4)
    n = len(y)
    steps = optimiser_steps(fcfg, n)
    gen = torch.Generator().manual_seed(seed)
    head.train()
    # no validation share: the labeled conns all train (eval's latest 30% is the test set)
    per_epoch = max(1, -(-n // fcfg.batch_size))
    progress = EpochLog("mae finetune", step_epochs(steps, per_epoch), "train accuracy",
                        steps_per_epoch=per_epoch)
    loss = torch.zeros(())
    for _step in range(steps):
        b = torch.randint(0, n, (min(fcfg.batch_size, n),), generator=gen).to(device)
        if pretrained:
            zb = (z[b] - emb_mean) / emb_std
        else:
            model.train()
            zb = model.encode(q[b], sq[b], e[b])
        logits = head(zb)
        loss = torch.nn.functional.cross_entropy(logits, y[b], weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        progress.step(float(loss.detach()), int((logits.detach().argmax(1) == y[b]).sum()), len(b))
    progress.flush()
    return head, emb_mean, emb_std, params, {"train_loss": float(loss.detach()), "steps": steps,
                                             "head_hidden": fcfg.hidden}


def _finetune_lpft(model, q, sq, e, y, n_classes: int, fcfg: FinetuneConfig, seed: int, device: str) -> tuple:
    """LP-FT (``zeekml.train.common.LPFT``): a linear head fitted on the frozen embedding of the
    fit rows (standardised by their statistics, which are then fixed), then encoder and head
    trained together at ``lr * ft_lr_scale``, keeping the step of lowest held-out loss.
    Returns ``(head, emb_mean, emb_std, trained parameters, metrics)``."""
    from zeekml.nn.mae import EmbeddingClassifier

    torch = torch_module()
    fit_t, val_t, weight = holdout_rows(y, lp_val_share(fcfg), seed, n_classes, device)
    y = y.to(device)
    model.eval()
    with torch.no_grad():
        z = model.encode(q, sq, e)
    emb_mean, emb_std = z[fit_t].mean(0), z[fit_t].std(0, unbiased=False).clamp_min(1e-4)
    head = EmbeddingClassifier(model.config.embed_dim, n_classes, 0).to(device)
    probe_into(head.net[0], (z[fit_t] - emb_mean) / emb_std, y[fit_t], n_classes, weight, fcfg.probe_l2)
    for p in model.parameters():
        p.requires_grad_(True)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=fcfg.lr * fcfg.ft_lr_scale, weight_decay=1e-4)
    n = len(fit_t)
    steps = ft_budget(fcfg, optimiser_steps(fcfg, n), len(val_t), "mae finetune")
    gen = torch.Generator().manual_seed(seed)
    stop = EarlyStopping(model, head, patience=fcfg.patience)

    def val_loss() -> float:
        model.eval()
        with torch.no_grad():
            zv = (model.encode(q[val_t], sq[val_t], e[val_t]) - emb_mean) / emb_std
            return float(torch.nn.functional.cross_entropy(head(zv), y[val_t], weight=weight))

    per_epoch = max(1, -(-n // fcfg.batch_size))
    progress = EpochLog("mae finetune", step_epochs(steps, per_epoch), "train accuracy",
                        steps_per_epoch=per_epoch)
    last: list[float | None] = [None]

    def step() -> tuple[float, int, int]:
        model.train()
        head.train()
        bi = fit_t[torch.randint(0, n, (min(fcfg.batch_size, n),), generator=gen).to(device)]
        logits = head((model.encode(q[bi], sq[bi], e[bi]) - emb_mean) / emb_std)
        loss = torch.nn.functional.cross_entropy(logits, y[bi], weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        last[0] = float(loss.detach())
        return float(loss.detach()), int((logits.detach().argmax(1) == y[bi]).sum()), len(bi)

    done = run_ft(step, val_loss if len(val_t) else None, stop, steps, fcfg.eval_every, progress)
    return head, emb_mean, emb_std, params, {"train_loss": last[0], "steps": done,
                                             "fit_rows": int(n), "val_rows": int(len(val_t)),
                                             "early_stopping": stop.summary(), "head_hidden": 0}


def _state(model, featurizer: ModalityFeaturizer, head=None) -> dict:
    torch = torch_module()
    st = prefixed_state(mae=model, head=head)
    st["w2v_vectors"] = torch.as_tensor(featurizer.w2v_vectors)
    return st


@register_trainer(NAME)
class MAETrainer(Trainer):
    """``--model mae`` through the model protocol (``zeekml.train.registry``)."""

    # -- pretrain ----------------------------------------------------------------------------

    def pretrain(self, table: pa.Table, out: str, sources: list[str], seed: int = 0,
                 epochs: int | None = None, device: str = "cpu", flows: pa.Table | None = None,
                 **opts) -> dict:
        from zeekml.nn.mae import MAEConfig, MultiModalAutoencoder

        torch = torch_module()
        cfg = apply_epochs(pick(PretrainConfig, opts), epochs)
        if flows is None:
            flows = load_flow_table(sources)
        t0 = time.perf_counter()
        featurizer = ModalityFeaturizer(**({"seq_source": opts["seq_source"]} if "seq_source" in opts else {}))
        featurizer.fit(table, flows, seed=seed)
        m = featurizer.transform(table, flows)
        log.info("mae inputs: quantity %s, sequence %s (%s), entity %s", m.quantity.shape,
                 m.sequence.shape, featurizer.seq_source, m.entity.shape)
        torch.manual_seed(seed)
        mcfg = MAEConfig(quantity_dim=featurizer.quantity_dim, seq_channels=len(featurizer.seq_channels),
                         entity_dim=featurizer.entity_dim)
        model = MultiModalAutoencoder(mcfg)
        metrics = train_autoencoder(model, m, featurizer, cfg, seed, device)
        metrics["fit_inputs_seconds"] = round(time.perf_counter() - t0 - metrics["seconds"], 1)
        model.cpu()
        with torch.inference_mode():
            q, sq, e = modality_tensors(m, "cpu")
            score = model(q, sq, e)
        from zeekml.nn.mae import reconstruction_error
        err = reconstruction_error(score, q, sq, e).total.numpy()
        config = model_config(
            schema_version=SCHEMA_VERSION, seed=seed, pretrained=True, detector=True,
            n_params=model.n_params, settings=("pretrain", cfg), mae=mcfg.to_dict(),
            featurizer=featurizer.to_dict(), seq_source=featurizer.seq_source, head=None,
            score_reference={"median": float(np.median(err)), "p99": float(np.quantile(err, 0.99))})
        metrics.update({"rows": table.num_rows, "n_params": model.n_params,
                        "w2v_tokens": len(featurizer.w2v.tokens), "seq_source": featurizer.seq_source})
        save_model_dir(out, NAME, config, _state(model, featurizer), sources, metrics)
        return metrics

    # -- finetune ----------------------------------------------------------------------------

    def finetune(self, base: str | None, table: pa.Table, labels: np.ndarray, train_rows: np.ndarray,
                 hide_service: bool, seed: int, out: str, sources: list[str],
                 label_field: str | None = None, epochs: int | None = None, device: str = "cpu",
                 flows: pa.Table | None = None, **opts) -> dict:
        from zeekml.nn.mae import MAEConfig, MultiModalAutoencoder

        torch = torch_module()
        fcfg = apply_epochs(pick(FinetuneConfig, opts), epochs)
        procedure = check_procedure(fcfg)
        if flows is None:
            flows = load_flow_table(sources)
        train_rows = np.asarray(train_rows, dtype=np.int64)
        y_names = [labels[i] for i in train_rows]
        classes = sorted(set(y_names))
        y = torch.as_tensor([classes.index(c) for c in y_names], dtype=torch.long)
        torch.manual_seed(seed)
        if base is not None:
            loaded = LoadedMAE.from_dir(base, device)
            base_config = loaded.config
            featurizer, model = loaded.featurizer, loaded.model
            pretrained = True
        else:
            featurizer = ModalityFeaturizer().fit(table, flows, seed=seed)
            model = MultiModalAutoencoder(MAEConfig(quantity_dim=featurizer.quantity_dim,
                                                    seq_channels=len(featurizer.seq_channels),
                                                    entity_dim=featurizer.entity_dim)).to(device)
            base_config = None
            pretrained = False
        m = featurizer.transform(table.take(pa.array(train_rows)), flows, hide_service=hide_service) \
            if featurizer.seq_source == "packets" else \
            featurizer.transform(table, flows, hide_service=hide_service).take(train_rows)
        q, sq, e = modality_tensors(m, device)
        t0 = time.perf_counter()
        if procedure == "full":
            head, emb_mean, emb_std, params, extra = _finetune_full(model, pretrained, q, sq, e, y, len(classes),
                                                                    fcfg, seed, device)
        else:
            head, emb_mean, emb_std, params, extra = _finetune_lpft(model, q, sq, e, y, len(classes), fcfg,
                                                                    seed, device)
        head.eval()
        model.eval()
        emb_dim = model.config.embed_dim
        trainable = sum(p.numel() for p in params)
        config = model_config(
            schema_version=SCHEMA_VERSION, seed=seed, pretrained=pretrained, detector=False,
            n_params=trainable, classes=classes, label_field=label_field, hide_service=hide_service,
            settings=("finetune", fcfg), base=base, base_config=base_config,
            mae=model.config.to_dict(), featurizer=featurizer.to_dict(), seq_source=featurizer.seq_source,
            head={"in_dim": emb_dim, "n_classes": len(classes), "hidden": extra.pop("head_hidden"),
                  "emb_mean": emb_mean.cpu().tolist(), "emb_std": emb_std.cpu().tolist()})
        model.cpu()
        head.cpu()
        for p in model.parameters():
            p.requires_grad_(True)
        metrics = {**extra, "classes": classes, "n_params": trainable,
                   "seconds": round(time.perf_counter() - t0, 1)}
        save_model_dir(out, NAME, config, _state(model, featurizer, head), sources, metrics)
        return metrics

    # -- inference ---------------------------------------------------------------------------

    def predict(self, model_dir: str, table: pa.Table, device: str = "cpu",
                flows: pa.Table | None = None) -> Prediction:
        """Class probabilities (a classifier) and the reconstruction error (a pretrained encoder)."""
        loaded = LoadedMAE.from_dir(model_dir, device)
        res = loaded.run(loaded.modalities(table, flows))
        score = res["score"] if loaded.config.get("pretrained", True) else None
        if loaded.head is None:
            return Prediction(classes=[], proba=None, score=score)
        return Prediction(classes=loaded.classes, proba=res["proba"], score=score)

    def embed(self, model_dir: str, table: pa.Table, device: str = "cpu",
              flows: pa.Table | None = None) -> np.ndarray:
        """The 64-d embedding of every conn (``zeekml.scoring.detectors.mae.MAEKind.embed``)."""
        from zeekml.scoring.registry import get_kind

        return get_kind(NAME).embed(model_dir, table, device=device, flows=flows)


KIND = MAETrainer(NAME)
