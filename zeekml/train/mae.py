"""``--model mae``: the multi-modal autoencoder through the model protocol (``zeekml.train.registry``).

- ``pretrain``: fit the modality inputs (scaling, vocabularies, skip-gram IP/port vectors) and
  train the autoencoder on reconstruction. A share of rows (``hide_prob``) has service and ports
  blanked in input and loss, so one base serves the service task (which hides them) too.
- ``finetune``: a small classifier on the frozen 64-d embedding of a base (``--scratch``: the
  same encoder, randomly initialised and trained end to end with the classifier).
- ``predict``: class probabilities (finetuned dirs) and ``score`` = reconstruction error.
- ``detector``: the reconstruction error as a ``Detector`` for ``zeekml score``/``watch``.

A model directory holds ``weights.pt`` (autoencoder, head, Word2Vec vectors) and
``config.json`` (constructor args, feature scaling, vocabularies, schema version, classes).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from zeekml._core.device import inference_batch
from zeekml._core.errors import ModelError, ZeekmlError
from zeekml.features.modality import (SCHEMA_VERSION, Modalities, ModalityFeaturizer,
                                      load_flow_table)
from zeekml.train.artifact import load_model_dir, save_model_dir
from zeekml.train.data import Prediction

log = logging.getLogger(__name__)

NAME = "mae"
INFER_BATCH = 8192   # rows per inference batch on CPU (zeekml._core.device.inference_batch)


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
class FinetuneConfig:
    """Classifier training settings.

    Args:
        epochs: passes over the labeled rows (default 60; at least ``min_steps`` steps).
        batch_size: rows per step (default 256).
        lr: learning rate (default 2e-3).
        hidden: classifier hidden width (default 64).
        min_steps: lower bound on optimiser steps, for few-shot budgets (default 300).
    """

    epochs: int = 60
    batch_size: int = 256
    lr: float = 2e-3
    hidden: int = 64
    min_steps: int = 300


def _torch():
    import torch
    return torch


def _tensors(m: Modalities, device: str):
    torch = _torch()
    return (torch.as_tensor(m.quantity, device=device), torch.as_tensor(m.sequence, device=device),
            torch.as_tensor(m.entity, device=device))


class LoadedMAE:
    """A model directory in memory: featurizer, autoencoder and (finetuned) classifier head."""

    def __init__(self, config: dict, state: dict, device: str = "cpu"):
        from zeekml.nn.mae import EmbeddingClassifier, MAEConfig, MultiModalAutoencoder

        torch = _torch()
        if config.get("schema_version") != SCHEMA_VERSION:
            raise ModelError(f"modality schema {config.get('schema_version')} != {SCHEMA_VERSION}; "
                             "pretrain the model again with this zeekml")
        self.config = config
        self.device = device
        state = dict(state)
        vectors = state.pop("w2v_vectors").cpu().numpy()
        self.featurizer = ModalityFeaturizer.from_dict(config["featurizer"], vectors)
        self.model = MultiModalAutoencoder(MAEConfig.from_dict(config["mae"]))
        self.model.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("mae.")})
        self.model.to(device).eval()
        self.head = None
        self.classes: list[str] = list(config.get("classes") or [])
        if config.get("head"):
            h = config["head"]
            self.head = EmbeddingClassifier(h["in_dim"], h["n_classes"], h["hidden"])
            self.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
            self.head.to(device).eval()
            self.emb_mean = torch.tensor(h["emb_mean"], device=device)
            self.emb_std = torch.tensor(h["emb_std"], device=device)
        self.hide_service = bool(config.get("hide_service"))

    @classmethod
    def from_dir(cls, model_dir: str, device: str = "cpu") -> "LoadedMAE":
        config, state = load_model_dir(model_dir, map_location=device)
        if config.get("kind") != NAME:
            raise ModelError(f"not an mae model (kind {config.get('kind')!r})", model_dir)
        if state is None:
            raise ModelError("no weights.pt", model_dir)
        return cls(config, state, device)

    def modalities(self, table: pa.Table, flows: pa.Table | None = None) -> Modalities:
        if self.featurizer.seq_source == "packets" and flows is None:
            log.warning("this model reads packet sequences from zeekml_flow.log and none was given; "
                        "conns are scored with empty sequences")
        return self.featurizer.transform(table, flows, hide_service=self.hide_service)

    def run(self, m: Modalities) -> dict[str, np.ndarray]:
        """Embedding, per-modality reconstruction errors and (with a head) probabilities."""
        from zeekml.nn.mae import reconstruction_error

        torch = _torch()
        qk = torch.as_tensor(m.quantity_keep, device=self.device)
        ek = torch.as_tensor(m.entity_keep, device=self.device)
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("embedding", "quantity", "sequence",
                                                                "entity", "score", "proba")}
        batch = inference_batch(self.device, INFER_BATCH)
        with torch.inference_mode():
            for s in range(0, len(m), batch):
                q, sq, e = _tensors(m.take(np.arange(s, min(s + batch, len(m)))), self.device)
                out = self.model(q, sq, e)
                err = reconstruction_error(out, q, sq, e, qk, ek)
                parts["embedding"].append(out.embedding.cpu().numpy())
                for k in ("quantity", "sequence", "entity"):
                    parts[k].append(getattr(err, k).cpu().numpy())
                parts["score"].append(err.total.cpu().numpy())
                if self.head is not None:
                    logits = self.head((out.embedding - self.emb_mean) / self.emb_std)
                    parts["proba"].append(torch.softmax(logits, dim=1).cpu().numpy())
        d = self.model.config.embed_dim
        empty = {"embedding": np.zeros((0, d), np.float32), "proba": np.zeros((0, len(self.classes)))}
        return {k: (np.concatenate(v) if v else empty.get(k, np.zeros(0))) for k, v in parts.items()}


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

    torch = _torch()
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
    for epoch in range(cfg.epochs):
        rng.shuffle(train)
        total, seen = 0.0, 0
        for s in range(0, len(train), cfg.batch_size):
            b = train[s:s + cfg.batch_size]
            qk, ek = _blank_masks(len(b), cfg.hide_prob, q_hide, e_hide, rng)
            q, sq, e = _tensors(m.take(b), device)
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
        log.info("mae epoch %d: loss %.4f", epoch + 1, last)
    model.eval()
    metrics = {"train_loss": last, "loss_by_epoch": history, "train_rows": int(len(train)),
               "seconds": round(time.perf_counter() - t0, 1)}
    if n_val:
        with torch.inference_mode():
            q, sq, e = _tensors(m.take(val), device)
            metrics["val_loss"] = float(mae_loss(model(q, sq, e), q, sq, e))
    return metrics


def _state(model, featurizer: ModalityFeaturizer, head=None) -> dict:
    torch = _torch()
    st = {f"mae.{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    if head is not None:
        st.update({f"head.{k}": v.detach().cpu() for k, v in head.state_dict().items()})
    st["w2v_vectors"] = torch.as_tensor(featurizer.w2v_vectors)
    return st


class MAEDetector:
    """Reconstruction error of an mae model directory as a ``Detector`` (higher = more anomalous)."""

    name = "mae"
    note = "ZeekML::Anomalous_Flow"
    context_key = "id.orig_h"     # host sequences: only the same originator's conns change a score

    def __init__(self, loaded: LoadedMAE):
        self.loaded = loaded

    @property
    def context_seconds(self) -> float:
        """How far in time other conns can change a conn's score (the host-sequence horizon);
        split scoring (``--dask``) gives each piece this overlap."""
        return self.loaded.featurizer.context_seconds

    @property
    def forward_context_seconds(self) -> float:
        """0: host sequences hold a conn's originator's earlier conns only."""
        return 0.0

    def fit(self, table: pa.Table) -> "MAEDetector":
        return self  # the weights stay as trained; calibration happens outside

    def score(self, table: pa.Table) -> np.ndarray:
        if table.num_rows == 0:
            return np.zeros(0)
        return self.loaded.run(self.loaded.modalities(table))["score"]

    def score_rows(self, table: pa.Table, rows: np.ndarray) -> np.ndarray:
        """``score(table)[rows]``, running the model on ``rows`` alone (the other conns of
        ``table`` only feed the host sequences, whose featurisation is vectorised and cheap)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return np.zeros(0)
        return self.loaded.run(self.loaded.modalities(table).take(rows))["score"]

    def explain(self, table: pa.Table, rows: np.ndarray, top: int = 3) -> list[str]:
        """Per-modality errors and the worst-reconstructed quantity features of each row."""
        if len(rows) == 0:
            return []
        torch = _torch()
        sub = table.take(pa.array(np.asarray(rows, dtype=np.int64)))
        m = self.loaded.modalities(sub)
        res = self.loaded.run(m)
        with torch.inference_mode():
            q, sq, e = _tensors(m, self.loaded.device)
            rq = self.loaded.model(q, sq, e).quantity.cpu().numpy()
        sqerr = (rq - m.quantity) ** 2 * m.quantity_keep
        names = self.loaded.featurizer.flow.feature_names
        out = []
        for i in range(len(rows)):
            worst = ";".join(names[j] for j in np.argsort(-sqerr[i])[:top])
            out.append(f"recon_quantity={res['quantity'][i]:.3g},recon_sequence={res['sequence'][i]:.3g},"
                       f"recon_entity={res['entity'][i]:.3g},worst={worst}")
        return out


class MAEKind:
    """The protocol object (see ``zeekml.train.registry``)."""

    name = NAME

    # -- pretrain ----------------------------------------------------------------------------

    def pretrain(self, table: pa.Table, out: str, sources: list[str], seed: int = 0,
                 epochs: int | None = None, device: str = "cpu", flows: pa.Table | None = None,
                 **opts) -> dict:
        from zeekml.nn.mae import MAEConfig, MultiModalAutoencoder

        torch = _torch()
        cfg = PretrainConfig(**{k: v for k, v in opts.items() if k in PretrainConfig.__dataclass_fields__})
        if epochs is not None:
            cfg.epochs = epochs
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
            q, sq, e = _tensors(m, "cpu")
            score = model(q, sq, e)
        from zeekml.nn.mae import reconstruction_error
        err = reconstruction_error(score, q, sq, e).total.numpy()
        config = {
            "mae": mcfg.to_dict(), "featurizer": featurizer.to_dict(), "schema_version": SCHEMA_VERSION,
            "pretrain": asdict(cfg), "seed": seed, "seq_source": featurizer.seq_source,
            "hide_service": False, "head": None, "classes": None, "label_field": None,
            "pretrained": True, "detector": True, "n_params": model.n_params,
            "score_reference": {"median": float(np.median(err)), "p99": float(np.quantile(err, 0.99))},
        }
        metrics.update({"rows": table.num_rows, "n_params": model.n_params,
                        "w2v_tokens": len(featurizer.w2v.tokens), "seq_source": featurizer.seq_source})
        save_model_dir(out, NAME, config, _state(model, featurizer), sources, metrics)
        return metrics

    # -- finetune ----------------------------------------------------------------------------

    def finetune(self, base: str | None, table: pa.Table, labels: np.ndarray, train_rows: np.ndarray,
                 hide_service: bool, seed: int, out: str, sources: list[str],
                 label_field: str | None = None, epochs: int | None = None, device: str = "cpu",
                 flows: pa.Table | None = None, **opts) -> dict:
        from zeekml.nn.mae import EmbeddingClassifier, MAEConfig, MultiModalAutoencoder

        torch = _torch()
        fcfg = FinetuneConfig(**{k: v for k, v in opts.items() if k in FinetuneConfig.__dataclass_fields__})
        if epochs is not None:
            fcfg.epochs = epochs
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
        q, sq, e = _tensors(m, device)
        emb_dim = model.config.embed_dim
        head = EmbeddingClassifier(emb_dim, len(classes), fcfg.hidden).to(device)
        counts = torch.bincount(y, minlength=len(classes)).float()
        weight = (counts.sum() / (len(classes) * counts.clamp_min(1))).to(device)
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
        n = len(train_rows)
        steps_per_epoch = max(1, -(-n // fcfg.batch_size))
        steps = max(fcfg.min_steps, fcfg.epochs * steps_per_epoch)
        gen = torch.Generator().manual_seed(seed)
        head.train()
        t0 = time.perf_counter()
        for step in range(steps):
            b = torch.randint(0, n, (min(fcfg.batch_size, n),), generator=gen).to(device)
            if pretrained:
                zb = (z[b] - emb_mean) / emb_std
            else:
                model.train()
                zb = model.encode(q[b], sq[b], e[b])
            loss = torch.nn.functional.cross_entropy(head(zb), y[b], weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        model.eval()
        trainable = sum(p.numel() for p in params)
        config = {
            "mae": model.config.to_dict(), "featurizer": featurizer.to_dict(),
            "schema_version": SCHEMA_VERSION, "seq_source": featurizer.seq_source,
            "hide_service": bool(hide_service), "label_field": label_field, "classes": classes,
            "head": {"in_dim": emb_dim, "n_classes": len(classes), "hidden": fcfg.hidden,
                     "emb_mean": emb_mean.cpu().tolist(), "emb_std": emb_std.cpu().tolist()},
            "finetune": asdict(fcfg), "seed": seed, "pretrained": pretrained, "detector": False,
            "base": base, "base_pretrain": (base_config or {}).get("pretrain"),
            "n_params": trainable,
        }
        model.cpu()
        head.cpu()
        for p in model.parameters():
            p.requires_grad_(True)
        metrics = {"train_loss": float(loss.detach()), "steps": steps, "classes": classes,
                   "n_params": trainable, "seconds": round(time.perf_counter() - t0, 1)}
        save_model_dir(out, NAME, config, _state(model, featurizer, head), sources, metrics)
        return metrics

    # -- inference ---------------------------------------------------------------------------

    def predict(self, model_dir: str, table: pa.Table, device: str = "cpu",
                flows: pa.Table | None = None) -> Prediction:
        loaded = LoadedMAE.from_dir(model_dir, device)
        res = loaded.run(loaded.modalities(table, flows))
        score = res["score"] if loaded.config.get("pretrained", True) else None
        if loaded.head is None:
            return Prediction(classes=[], proba=None, score=score)
        return Prediction(classes=loaded.classes, proba=res["proba"], score=score)

    def embed(self, model_dir: str, table: pa.Table, device: str = "cpu",
              flows: pa.Table | None = None) -> np.ndarray:
        """The 64-d embedding of every conn, ``[n, D]`` float32."""
        loaded = LoadedMAE.from_dir(model_dir, device)
        return loaded.run(loaded.modalities(table, flows))["embedding"].astype(np.float32)

    def detector(self, model_dir: str, device: str = "cpu") -> MAEDetector:
        loaded = LoadedMAE.from_dir(model_dir, device)
        if not loaded.config.get("pretrained", True):
            raise ZeekmlError("a model trained from scratch has no reconstruction score", model_dir)
        return MAEDetector(loaded)


KIND = MAEKind()
