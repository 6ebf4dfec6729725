"""``--model moe`` and ``--model dense``: training the token transformers (the inference half,
``LoadedTokenModel`` and the detector, is ``zeekml.scoring.detectors.token``).

- ``pretrain``: fit the ``FlowTokenizer`` (bucket edges, vocabularies) on the corpus and train the
  encoder on masked-token prediction: 15% of tokens are masked whole and another 10% of single
  fields are masked, and the model predicts each masked field. A quarter of the sequences have
  service and ports hidden (input and loss), so one base serves the service task too.
- ``finetune``: ``procedure="lp-ft"`` (``zeekml.train.common.LPFT``): a linear head on the CLS and
  anchor states of the frozen encoder, then encoder and head trained together at a small rate
  (class-weighted cross-entropy, plus the MoE auxiliary losses), stopped early on held-out
  labeled rows; ``procedure="lp"``: that linear head alone; ``procedure="full"``: the earlier MLP
  head and encoder trained end to end from a random head. A ``causal_window`` base takes ``lp``
  only, its head on the stream embedding (each conn's own position in its host's stream).
- ``predict``: class probabilities (finetuned dirs); ``score`` for pretrained dirs = negative
  log-likelihood of the conn's own token fields when they are masked (host tokens) or of every
  third packet token (packet tokens).

``moe`` uses ``MoEEncoder(MoEConfig())``; ``dense`` uses ``DenseEncoder(twin_of(MoEConfig()))``,
the twin with the same active parameters per token. Every other setting is shared.

A model directory holds ``weights.pt`` (encoder, masked-token head, classifier head) and
``config.json`` (encoder constructor args, tokenizer vocabulary and bucket edges, token schema
version, classes, ``n_params`` = total and ``n_params_active`` = per token).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from zeekml._core.errors import ZeekmlError
from zeekml.features.modality import load_flow_table
from zeekml.features.tokens import MASK, PAD, SCHEMA_VERSION, FlowTokenizer
# the inference half (bench/ imports LoadedTokenModel and routing_summary from here too)
from zeekml.scoring.detectors.token import LoadedTokenModel, add_routing, routing_summary
from zeekml.train.artifact import save_model_dir
from zeekml.train.common import (LPFT, EarlyStopping, EpochLog, Trainer, apply_epochs, check_procedure,
                                 class_weights, cosine, ft_budget, holdout_rows, lp_val_share, model_config,
                                 optimiser_steps, pick, prefixed_state, probe_into, run_ft, step_epochs, torch_module)
from zeekml.train.data import Prediction
from zeekml.train.registry import register_trainer

log = logging.getLogger(__name__)


@dataclass
class ArchConfig:
    """Encoder size shared by both kinds (``moe``: these experts; ``dense``: their twin).

    Args:
        d_model, n_layers, n_heads, d_ff, dropout: see ``DenseConfig`` (defaults 64, 4, 4, 128, 0.1).
        n_experts, top_k, d_expert, capacity_factor, eval_capacity_factor: see ``MoEConfig``
            (defaults 8, 1, 128, 1.25, None = dropless inference).
        dense_d_ff_alt: ``dense`` only: width at the MoE positions; None = the twin's
            ``top_k * d_expert``. (``n_experts * d_expert`` gives a dense model as big in total
            as the MoE, for the speed comparison.)
        attention: ``"full"`` (default) or ``"causal_window"`` (``zeekml.nn.dense``: pretrained
            on host streams, ``pretrain_stream_loop``; host tokens only).
    """

    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 128
    dropout: float = 0.1
    n_experts: int = 8
    top_k: int = 1
    d_expert: int = 128
    capacity_factor: float = 1.25
    eval_capacity_factor: float | None = None
    dense_d_ff_alt: int | None = None
    attention: str = "full"


@dataclass
class PretrainConfig:
    """Masked-token pretraining.

    Args:
        epochs: passes over the corpus (default 8).
        batch_size: sequences per step (default 256).
        lr: AdamW learning rate (default 1e-3, cosine decay, 100 warm-up steps).
        weight_decay: AdamW weight decay (default 0.01).
        mask_token: share of tokens masked whole (default 0.15).
        mask_field: share of single fields masked (default 0.10).
        hide_prob: share of sequences with service and ports hidden (default 0.25).
        balance_coef: weight of the load-balance loss (default 0.01).
        z_coef: weight of the router z-loss (default 0.001).
        val_share: sequences held out for the validation loss (default 0.05).
        max_sequences: at most this many sequences per epoch (drawn afresh each epoch;
            default 60000).
        chunk: ``causal_window`` only: stream positions whose loss a chunk reads (default 64;
            each chunk also carries the ``seq_len - 1`` positions before them as context).
    """

    epochs: int = 8
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    mask_token: float = 0.15
    mask_field: float = 0.10
    hide_prob: float = 0.25
    balance_coef: float = 0.01
    z_coef: float = 0.001
    val_share: float = 0.05
    max_sequences: int = 60000
    chunk: int = 64


@dataclass
class FinetuneConfig(LPFT):
    """Classifier training (the encoder is trained too, at a lower rate; the procedure's own
    settings: ``zeekml.train.common.LPFT``).

    Args:
        epochs: passes over the labeled rows (default 30; at least ``min_steps`` steps unless
            ``--epochs`` is given: ``zeekml.train.common.apply_epochs``); LP-FT's FT budget.
        batch_size: rows per step (default 64).
        lr: head learning rate (default 2e-3); the encoder gets ``lr * encoder_lr_scale``
            (LP-FT's FT: encoder and head ``lr * ft_lr_scale``).
        encoder_lr_scale: default 0.25 (``procedure="full"``).
        hidden: classifier hidden width of ``procedure="full"`` (default 64; LP-FT's head is
            layer norm + linear).
        min_steps: lower bound on optimiser steps (default 150).
        balance_coef, z_coef: MoE auxiliary loss weights (defaults 0.01, 0.001).
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    encoder_lr_scale: float = 0.25
    hidden: int = 64
    min_steps: int = 150
    balance_coef: float = 0.01
    z_coef: float = 0.001


def build_encoder(kind: str, tok: FlowTokenizer, arch: ArchConfig):
    """``(encoder, constructor dict)`` of ``kind`` for a fitted tokenizer."""
    from zeekml.nn.dense import DenseEncoder
    from zeekml.nn.moe import MoEConfig, MoEEncoder, twin_of

    mcfg = MoEConfig(vocab_size=tok.vocab_size, n_fields=len(tok.fields), seq_len=tok.seq_len,
                     d_model=arch.d_model, n_layers=arch.n_layers, n_heads=arch.n_heads,
                     d_ff=arch.d_ff, dropout=arch.dropout, n_experts=arch.n_experts,
                     top_k=arch.top_k, d_expert=arch.d_expert, capacity_factor=arch.capacity_factor,
                     eval_capacity_factor=arch.eval_capacity_factor, attention=arch.attention)
    if kind == "moe":
        return MoEEncoder(mcfg), mcfg.to_dict()
    dcfg = twin_of(mcfg)
    if arch.dense_d_ff_alt is not None:
        dcfg.d_ff_alt = arch.dense_d_ff_alt
    return DenseEncoder(dcfg), dcfg.to_dict()


# -- masking ------------------------------------------------------------------------------------

def mask_tokens(ids, tok_bases, cfg: PretrainConfig, gen, hidden_fields: list[int], hide_rows=None):
    """``(inputs, targets)``: inputs with masked elements set to MASK; targets = local ids at the
    masked, non-hidden elements and -100 elsewhere.

    Shapes:
        ids ``[b, L, f]`` -> inputs ``[b, L, f]``, targets ``[b, L, f]``
    """
    torch = torch_module()
    real = ids != PAD
    b, L, f = ids.shape
    whole = (torch.rand(b, L, 1, generator=gen) < cfg.mask_token).expand(b, L, f)
    single = torch.rand(b, L, f, generator=gen) < cfg.mask_field
    masked = (whole | single) & real
    if hide_rows is not None and hidden_fields:
        ids = ids.clone()
        for fi in hidden_fields:
            hid = hide_rows[:, None] & real[:, :, fi]
            ids[:, :, fi] = torch.where(hid, tok_bases[fi], ids[:, :, fi])   # local 0 = hidden
    local = ids - tok_bases
    targets = torch.where(masked & (local > 0), local, torch.full_like(local, -100))
    inputs = torch.where(masked, torch.full_like(ids, MASK), ids)
    return inputs, targets


def masked_loss(logits: list, targets):
    """Mean over fields of the cross-entropy on each field's masked elements."""
    torch = torch_module()
    losses = []
    for fi, lg in enumerate(logits):
        t = targets[..., fi].reshape(-1)
        if (t >= 0).any():
            losses.append(torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), t,
                                                            ignore_index=-100))
    return torch.stack(losses).mean() if losses else logits[0].new_zeros(())


@dataclass
class TokenPrediction(Prediction):
    """``Prediction`` plus the expert usage of the run (empty for ``dense``)."""

    routing: list[dict] = field(default_factory=list)


# -- training loops -----------------------------------------------------------------------------

class LoopSetup:
    """What both pretraining loops draw and build first, in this order (the draws are the
    seed's): the held-out conns (``val``, at most 5,000, none under 400 conns), the training
    conns and how many an epoch reads, the optimiser over ``params`` and its cosine schedule."""

    def __init__(self, n: int, cfg: PretrainConfig, params: list, rng: np.random.Generator):
        import torch

        perm = rng.permutation(n)
        self.n_val = min(int(n * cfg.val_share), 5000) if n >= 400 else 0
        self.val, self.train = perm[:self.n_val], perm[self.n_val:]
        self.per_epoch = min(len(self.train), cfg.max_sequences)
        self.steps = optimiser_steps(cfg, self.per_epoch)
        self.params = params
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: cosine(s, self.steps))


def validated(modules: tuple, fn):
    """``fn()`` with ``modules`` in eval mode and under ``torch.inference_mode``, then back in
    training mode: a validation pass between epochs (eval mode draws no random numbers, so
    training goes on exactly as without it)."""
    import torch

    for m in modules:
        m.eval()
    with torch.inference_mode():
        out = fn()
    for m in modules:
        m.train()
    return out


def loop_metrics(history: list, step: int, t0: float, train: np.ndarray) -> dict:
    """The metrics both pretraining loops return before their validation figures."""
    return {"train_loss": history[-1] if history else float("nan"), "loss_by_epoch": history,
            "steps": step, "seconds": round(time.perf_counter() - t0, 1),
            "train_sequences": int(len(train))}


def pretrain_step(loss, out, cfg: PretrainConfig, setup: LoopSetup) -> None:
    """One optimiser step of pretraining: the masked-token ``loss`` plus the MoE layers' balance
    and router z-losses of ``out`` (an ``EncoderOutput``; zeros for a dense encoder), gradients
    clipped to norm 1, then the learning-rate schedule. Both loops (windows and host streams)."""
    import torch

    total = loss + cfg.balance_coef * out.balance_loss + cfg.z_coef * out.z_loss
    setup.opt.zero_grad()
    total.backward()
    torch.nn.utils.clip_grad_norm_(setup.params, 1.0)
    setup.opt.step()
    setup.sched.step()


def pretrain_loop(encoder, mlm, tok: FlowTokenizer, ids: np.ndarray, cfg: PretrainConfig, seed: int,
                  device: str = "cpu", kind: str = "moe") -> dict:
    """Masked-token training; returns losses per epoch, validation loss and routing at the end.
    ``kind`` names the loop in the per-epoch progress lines (``EpochLog``)."""
    torch = torch_module()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    setup = LoopSetup(len(ids), cfg, list(encoder.parameters()) + list(mlm.parameters()), rng)
    n_val, val, train, per_epoch = setup.n_val, setup.val, setup.train, setup.per_epoch
    bases = torch.as_tensor(tok.bases)
    hidden_fields = tok.service_fields()
    encoder.to(device).train()
    mlm.to(device).train()

    def val_losses(vseed: int) -> tuple[float, list]:
        vg = torch.Generator().manual_seed(vseed)
        tot, routing = 0.0, []
        for s in range(0, n_val, 1024):
            b = torch.as_tensor(ids[val[s:s + 1024]])
            inp, tgt = mask_tokens(b, bases, cfg, vg, hidden_fields, None)
            out = encoder(inp.to(device))
            add_routing(routing, out.routing)
            tot += float(masked_loss(mlm(out.hidden[:, 1:]), tgt.to(device))) * len(b)
        return tot / n_val, routing

    history, t0, step = [], time.perf_counter(), 0
    progress = EpochLog(f"{kind} pretrain", cfg.epochs,
                        "validation masked-token loss" if n_val else None)
    for _epoch in range(cfg.epochs):
        ep = rng.permutation(train)[:per_epoch]
        tot, seen = 0.0, 0
        for s in range(0, len(ep), cfg.batch_size):
            b = torch.as_tensor(ids[ep[s:s + cfg.batch_size]])
            hide = torch.rand(len(b), generator=gen) < cfg.hide_prob
            inp, tgt = mask_tokens(b, bases, cfg, gen, hidden_fields, hide)
            out = encoder(inp.to(device))
            loss = masked_loss(mlm(out.hidden[:, 1:]), tgt.to(device))
            pretrain_step(loss, out, cfg, setup)
            step += 1
            tot += float(loss.detach()) * len(b)
            seen += len(b)
        history.append(round(tot / max(seen, 1), 4))
        # the same masks every epoch (their own generator)
        vloss = validated((encoder, mlm), lambda: val_losses(seed + 2)[0]) if n_val else None
        progress.epoch(history[-1], vloss)
    encoder.eval()
    mlm.eval()
    metrics = loop_metrics(history, step, t0, train)
    if n_val:
        with torch.inference_mode():
            vl, routing = val_losses(seed + 1)
        metrics["val_loss"] = round(vl, 4)
        if routing:
            metrics["val_routing"] = routing_summary(routing)
    return metrics


def stream_chunks(starts: np.ndarray, n: int, ctx: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Stream rows of chunks that begin at ``starts``: each chunk is the ``ctx`` rows before its
    start (context: read, never scored) and the ``chunk`` rows from it. Returns ``(rows, inside)``
    ``[len(starts), ctx + chunk]``: the stream row of each position (unclipped: it may lie
    outside ``0..n-1``) and whether it is inside the stream.

    Shapes:
        starts ``[c]`` -> ``([c, ctx + chunk], [c, ctx + chunk])``
    """
    rows = starts[:, None] + np.arange(-ctx, chunk)[None, :]
    return rows, (rows >= 0) & (rows < n)


def chunk_keys(keys: np.ndarray, rows: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """The stream's ``keys`` (``FlowTokenizer.host_stream``) of chunked ``rows``
    (``stream_chunks``) as rows of the flattened chunks: a predecessor outside its chunk is none
    (-1); column 0 is each position itself, pads included.

    Shapes:
        keys ``[n, 1 + w]``, rows ``[c, l]`` -> ``[c * l, 1 + w]``
    """
    c, l = rows.shape
    k = keys[np.clip(rows, 0, len(keys) - 1)]                         # [c, l, 1 + w] stream rows
    local = k - rows[:, :1, None]                                     # -> position in the chunk
    ok = (k >= 0) & (local >= 0) & (local < l) & inside[..., None]
    out = np.where(ok, local + (np.arange(c) * l)[:, None, None], -1)
    out[..., 0] = np.arange(c * l).reshape(c, l)
    return out.reshape(c * l, -1)


def pretrain_stream_loop(encoder, mlm, tok: FlowTokenizer, table: pa.Table, cfg: PretrainConfig,
                         seed: int, device: str = "cpu", kind: str = "moe") -> dict:
    """Masked-token training of a ``causal_window`` encoder on host streams (``pretrain_loop``'s
    objective and masks; ``zeekml.nn.dense``).

    The corpus is one stream (``FlowTokenizer.host_stream``: host by host, in time order; keys
    never cross hosts). A step reads ``batch_size * seq_len / chunk`` chunks of ``chunk``
    positions, each with the ``seq_len - 1`` positions before it as context (masked like the
    rest, their loss not read), so every scored position has its whole window in view and a step
    scores as many positions as a step of ``pretrain_loop`` (``batch_size`` windows of
    ``seq_len``). An epoch has ``pretrain_loop``'s number of steps (a chunk start offset drawn
    afresh for each pass over the stream).

    Validation: the conns ``pretrain_loop`` holds out with the same seed (they are never scored
    in training; they are context), as windows (``FlowTokenizer.stream_windows``) with masks drawn
    as there. ``val_loss`` reads every masked position of the windows (positions early in a
    window see part of it); ``val_loss_last`` the conn's own position alone (its whole window in
    view, the state the detector reads)."""
    torch = torch_module()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    setup = LoopSetup(table.num_rows, cfg, list(encoder.parameters()) + list(mlm.parameters()), rng)
    n_val, val, train = setup.n_val, setup.val, setup.train
    steps_per_epoch = max(1, setup.steps // max(cfg.epochs, 1))
    st = tok.host_stream(table, width=max(encoder.spans, default=0))
    N = len(st.ids)
    scored = np.ones(N, dtype=bool)
    scored[st.targets[val]] = False                                  # held out: context only
    ctx, C = tok.seq_len - 1, max(1, cfg.chunk)
    per_step = max(1, cfg.batch_size * tok.seq_len // C)
    bases = torch.as_tensor(tok.bases)
    hidden_fields = tok.service_fields()
    ids_all = np.concatenate([st.ids, np.zeros((1, st.ids.shape[1]), np.int64)])   # last row: pad
    encoder.to(device).train()
    mlm.to(device).train()
    val_ids, val_reach = tok.stream_windows(table, val) if n_val else (None, None)

    def val_losses(vseed: int) -> tuple[float, float, list]:
        vg = torch.Generator().manual_seed(vseed)
        tot, last, routing = 0.0, 0.0, []
        for s in range(0, n_val, 1024):
            b = torch.as_tensor(val_ids[s:s + 1024])
            inp, tgt = mask_tokens(b, bases, cfg, vg, hidden_fields, None)
            out = encoder(inp.to(device), reach=torch.as_tensor(val_reach[s:s + 1024], device=device))
            add_routing(routing, out.routing)
            logits = mlm(out.hidden)
            tgt = tgt.to(device)
            tot += float(masked_loss(logits, tgt)) * len(b)
            only_last = torch.full_like(tgt, -100)
            only_last[:, -1] = tgt[:, -1]
            last += float(masked_loss(logits, only_last)) * len(b)
        return tot / n_val, last / n_val, routing

    def starts_for(k: int) -> np.ndarray:
        out, have = [], 0
        while have < k:
            s0 = np.arange(-int(rng.integers(C)), N, C)
            out.append(rng.permutation(s0))
            have += len(s0)
        return np.concatenate(out)[:k]

    history, t0, step = [], time.perf_counter(), 0
    progress = EpochLog(f"{kind} pretrain (causal_window)", cfg.epochs,
                        "validation masked-token loss" if n_val else None)
    for _epoch in range(cfg.epochs):
        starts = starts_for(steps_per_epoch * per_step)
        tot, seen = 0.0, 0
        for s in range(0, len(starts), per_step):
            rows, inside = stream_chunks(starts[s:s + per_step], N, ctx, C)
            c, l = rows.shape
            keys = torch.as_tensor(chunk_keys(st.keys, rows, inside))
            b = torch.as_tensor(ids_all[np.where(inside, rows, N)])              # [c, l, f], pads outside
            hide = torch.rand(c, generator=gen) < cfg.hide_prob
            inp, tgt = mask_tokens(b, bases, cfg, gen, hidden_fields, hide)
            read = torch.as_tensor(inside & scored[np.clip(rows, 0, N - 1)] & (np.arange(l) >= ctx)[None, :])
            tgt = torch.where(read.unsqueeze(-1), tgt, torch.full_like(tgt, -100))
            out = encoder.forward_stream(inp.reshape(c * l, -1).to(device), keys.to(device))
            loss = masked_loss(mlm(out.hidden.view(c, l, -1)), tgt.to(device))
            pretrain_step(loss, out, cfg, setup)
            step += 1
            k = int(read.sum())
            tot += float(loss.detach()) * k
            seen += k
        history.append(round(tot / max(seen, 1), 4))
        vloss = validated((encoder, mlm), lambda: val_losses(seed + 2)[0]) if n_val else None
        progress.epoch(history[-1], vloss)
    encoder.eval()
    mlm.eval()
    metrics = loop_metrics(history, step, t0, train) | {"stream_rows": int(N), "chunk": C,
                                                        "chunks_per_step": per_step}
    if n_val:
        with torch.inference_mode():
            vl, vlast, routing = val_losses(seed + 1)
        metrics["val_loss"] = round(vl, 4)
        metrics["val_loss_last"] = round(vlast, 4)
        if routing:
            metrics["val_routing"] = routing_summary(routing)
    return metrics


def _train_step(encoder, head, tok: FlowTokenizer, x, yb, weight, fcfg: FinetuneConfig, opt) -> tuple:
    """One optimiser step of encoder + head on the sequences ``x`` ``[b, L, f]`` with labels
    ``yb`` ``[b]`` (class-weighted cross-entropy plus the MoE's balance and router z losses).
    Returns ``(loss, right)``: the detached loss and how many of ``x`` the head got right."""
    import torch.nn.functional as F

    from zeekml.nn.dense import pool

    o = encoder(x)
    logits = head(pool(o.hidden, x, tok.anchor))
    loss = F.cross_entropy(logits, yb, weight=weight)
    total = loss + fcfg.balance_coef * o.balance_loss + fcfg.z_coef * o.z_loss
    opt.zero_grad()
    total.backward()
    opt.step()
    return loss.detach(), int((logits.detach().argmax(1) == yb).sum())


def _finetune_full(kind: str, encoder, tok: FlowTokenizer, ids, y, n_classes: int, fcfg: FinetuneConfig,
                   seed: int, device: str) -> tuple:
    """``procedure="full"``: an MLP head and the encoder trained end to end from a random head
    (the encoder at ``lr * encoder_lr_scale``). Returns ``(head, metrics)``."""
    from zeekml.nn.dense import ClassifierHead

    torch = torch_module()
    d = encoder.config.d_model
    head = ClassifierHead(2 * d, n_classes, fcfg.hidden).to(device)
    weight = class_weights(y, n_classes).to(device)
    opt = torch.optim.AdamW([{"params": encoder.parameters(), "lr": fcfg.lr * fcfg.encoder_lr_scale},
                             {"params": head.parameters(), "lr": fcfg.lr}], weight_decay=0.01)
    n = len(y)
    steps = optimiser_steps(fcfg, n)
    gen = torch.Generator().manual_seed(seed)
    encoder.train()
    head.train()
    loss = torch.zeros(())
    # no validation share: the labeled conns all train (eval's latest 30% is the test set)
    per_epoch = max(1, -(-n // fcfg.batch_size))
    progress = EpochLog(f"{kind} finetune", step_epochs(steps, per_epoch), "train accuracy",
                        steps_per_epoch=per_epoch)
    for _ in range(steps):
        b = torch.randint(0, n, (min(fcfg.batch_size, n),), generator=gen)
        loss, right = _train_step(encoder, head, tok, ids[b].to(device), y[b].to(device), weight, fcfg, opt)
        progress.step(float(loss), right, len(b))
    progress.flush()
    return head, {"train_loss": float(loss.detach()), "steps": steps, "head_hidden": fcfg.hidden}


def _pooled(encoder, tok: FlowTokenizer, ids, rows, device: str, batch: int = 256):
    """The pooled (CLS, anchor) states ``[len(rows), 2d]`` of ``ids[rows]``, the encoder in eval
    mode and without gradients."""
    from zeekml.nn.dense import pool

    torch = torch_module()
    encoder.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(rows), batch):
            x = ids[rows[s:s + batch]].to(device)
            out.append(pool(encoder(x).hidden, x, tok.anchor))
    d = encoder.config.d_model
    return torch.cat(out) if out else torch.zeros(0, 2 * d, device=device)


def _finetune_lpft(kind: str, encoder, tok: FlowTokenizer, ids, y, n_classes: int, fcfg: FinetuneConfig,
                   seed: int, device: str) -> tuple:
    """LP-FT (``zeekml.train.common.LPFT``): the head's linear layer fitted on the layer-normed
    pooled states of the frozen encoder, then encoder and head trained together at
    ``lr * ft_lr_scale``, keeping the step of lowest held-out loss. Returns ``(head, metrics)``."""
    from zeekml.nn.dense import ClassifierHead

    torch = torch_module()
    # indices stay on the CPU: they pick rows of the CPU-resident ids
    fit_t, val_t, weight = holdout_rows(y, lp_val_share(fcfg), seed, n_classes, device, index_device="cpu")
    d = encoder.config.d_model
    head = ClassifierHead(2 * d, n_classes, 0).to(device)
    with torch.no_grad():
        z = head.net[0](_pooled(encoder, tok, ids, fit_t, device))      # the head's own layer norm
    probe_into(head.net[1], z, y[fit_t], n_classes, weight, fcfg.probe_l2)
    y_val = y[val_t].to(device)

    def val_loss() -> float:
        head.eval()
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(head(_pooled(encoder, tok, ids, val_t, device)),
                                                           y_val, weight=weight))

    opt = torch.optim.AdamW(list(encoder.parameters()) + list(head.parameters()),
                            lr=fcfg.lr * fcfg.ft_lr_scale, weight_decay=0.01)
    n = len(fit_t)
    steps = ft_budget(fcfg, optimiser_steps(fcfg, n), len(val_t), f"{kind} finetune")
    gen = torch.Generator().manual_seed(seed)
    stop = EarlyStopping(encoder, head, patience=fcfg.patience)
    per_epoch = max(1, -(-n // fcfg.batch_size))
    progress = EpochLog(f"{kind} finetune", step_epochs(steps, per_epoch), "train accuracy",
                        steps_per_epoch=per_epoch)
    last: list[float | None] = [None]

    def step() -> tuple[float, int, int]:
        encoder.train()
        head.train()
        b = fit_t[torch.randint(0, n, (min(fcfg.batch_size, n),), generator=gen)]
        loss, right = _train_step(encoder, head, tok, ids[b].to(device), y[b].to(device), weight, fcfg, opt)
        last[0] = float(loss)
        return float(loss), right, len(b)

    done = run_ft(step, val_loss if len(val_t) else None, stop, steps, fcfg.eval_every, progress)
    return head, {"train_loss": last[0], "steps": done, "fit_rows": int(n), "val_rows": int(len(val_t)),
                  "early_stopping": stop.summary(), "head_hidden": 0}


def _finetune_stream_lp(loaded, table: pa.Table, train_rows: np.ndarray, y, n_classes: int,
                        fcfg: FinetuneConfig, device: str) -> tuple:
    """``procedure="lp"`` on a ``causal_window`` base: the head's linear layer fitted on the
    layer-normed stream embedding of the labeled rows (``LoadedTokenModel.stream_embedding``:
    each conn's final state at its own position of its host's stream, the rest of ``table`` as
    the streams' context), the encoder frozen. No FT: training a causal encoder on labels would
    need a stream loop like pretraining's (``pretrain_stream_loop``) with labeled positions, and
    the probe alone already met the archive target on as many captures as the full-attention
    member's LP-FT (docs/results/detection.md, "A causal member"). Returns ``(head, metrics)``."""
    from zeekml.nn.dense import ClassifierHead

    torch = torch_module()
    z = torch.as_tensor(loaded.stream_embedding(table, train_rows), device=device)
    head = ClassifierHead(z.shape[1], n_classes, 0).to(device)
    y = y.to(device)
    with torch.no_grad():
        zn = head.net[0](z)                     # the head's own layer norm
    probe_into(head.net[1], zn, y, n_classes, class_weights(y, n_classes), fcfg.probe_l2)
    return head, {"steps": 0, "fit_rows": int(len(y)), "val_rows": 0, "head_hidden": 0}


TOKENIZER_OPTS = ("source", "seq_len", "max_age", "quantile_bins", "top_k")


@register_trainer("moe", "dense")
class TokenTrainer(Trainer):
    """``--model moe`` / ``--model dense`` through the model protocol (``zeekml.train.registry``)."""

    # -- pretrain ----------------------------------------------------------------------------

    def pretrain(self, table: pa.Table, out: str, sources: list[str], seed: int = 0,
                 epochs: int | None = None, device: str = "cpu", flows: pa.Table | None = None,
                 **opts) -> dict:
        """Masked-token pretraining; writes a model dir (``moe`` bases are detectors)."""
        from zeekml.nn.dense import FieldHead

        torch = torch_module()
        cfg = apply_epochs(pick(PretrainConfig, opts), epochs)
        arch = pick(ArchConfig, opts)
        if flows is None:
            flows = load_flow_table(sources)
        t0 = time.perf_counter()
        tok = FlowTokenizer(**{k: v for k, v in opts.items() if k in TOKENIZER_OPTS})
        causal = arch.attention == "causal_window"
        if causal and tok.source == "auto":
            tok.source = "host"          # streams are host streams: packets are not asked about
        tok.fit(table, flows)
        if causal and tok.source != "host":
            raise ZeekmlError(f"attention causal_window reads host streams; token source {tok.source!r}")
        ids = None if causal else tok.transform(table, flows)
        log.info("%s tokens: %s, %s fields, vocabulary %d", self.name, tok.source, len(tok.fields),
                 tok.vocab_size)
        tok_seconds = time.perf_counter() - t0
        torch.manual_seed(seed)
        encoder, enc_cfg = build_encoder(self.name, tok, arch)
        mlm = FieldHead(arch.d_model, tok.field_sizes)
        if causal:
            metrics = pretrain_stream_loop(encoder, mlm, tok, table, cfg, seed, device, kind=self.name)
        else:
            metrics = pretrain_loop(encoder, mlm, tok, ids, cfg, seed, device, kind=self.name)
        metrics["tokenize_seconds"] = round(tok_seconds, 1)
        encoder.cpu()
        mlm.cpu()
        scorer = _Scorer(tok, encoder, mlm)
        score = scorer.score(scorer.tokens(table, flows) if causal else ids)
        n_params = encoder.n_params + sum(p.numel() for p in mlm.parameters())
        config = model_config(
            schema_version=SCHEMA_VERSION, seed=seed, pretrained=True,
            # the dense twin is the MoE's yardstick, not a second detector of the same signal; a
            # causal_window base is a candidate, on only when asked for (--models DIR)
            detector=self.name == "moe" and not causal, n_params=n_params, settings=("pretrain", cfg),
            encoder=enc_cfg, arch=asdict(arch), tokenizer=tok.to_dict(), token_source=tok.source,
            head=None, n_params_encoder=encoder.n_params, n_params_active=encoder.n_active_params,
            score_reference={"median": float(np.median(score)), "p99": float(np.quantile(score, 0.99))})
        metrics.update({"rows": table.num_rows, "token_source": tok.source, "vocab_size": tok.vocab_size,
                        "n_params": n_params, "n_params_encoder": encoder.n_params,
                        "n_params_active": encoder.n_active_params})
        save_model_dir(out, self.name, config, prefixed_state(encoder=encoder, mlm=mlm), sources, metrics)
        return metrics

    # -- finetune ----------------------------------------------------------------------------

    def finetune(self, base: str | None, table: pa.Table, labels: np.ndarray, train_rows: np.ndarray,
                 hide_service: bool, seed: int, out: str, sources: list[str],
                 label_field: str | None = None, epochs: int | None = None, device: str = "cpu",
                 flows: pa.Table | None = None, **opts) -> dict:
        """The encoder and a classifier head trained on ``train_rows`` (``FinetuneConfig``)."""
        from zeekml.nn.dense import FieldHead

        torch = torch_module()
        fcfg = apply_epochs(pick(FinetuneConfig, opts), epochs)
        procedure = check_procedure(fcfg)
        if flows is None:
            flows = load_flow_table(sources)
        train_rows = np.asarray(train_rows, dtype=np.int64)
        y_names = [labels[i] for i in train_rows]
        classes = sorted(set(y_names))
        torch.manual_seed(seed)
        if base is not None:
            loaded = LoadedTokenModel.from_dir(base, device)
            if loaded.kind != self.name:
                raise ZeekmlError(f"--base is a {loaded.kind!r} model, not {self.name!r}", base)
            if loaded.causal and procedure != "lp":
                raise ZeekmlError(f"a causal_window base is finetuned with procedure lp (a linear head "
                                  f"on its frozen stream embedding), not {procedure}", base)
            tok, encoder, mlm = loaded.tokenizer, loaded.encoder, loaded.mlm
            base_cfg = loaded.config
        else:
            arch = pick(ArchConfig, opts)
            if arch.attention != "full":
                raise ZeekmlError("finetuning a causal_window model from scratch is not supported (its "
                                  "one procedure, lp, needs a pretrained encoder); use attention full")
            tok = FlowTokenizer(**{k: v for k, v in opts.items() if k in TOKENIZER_OPTS})
            tok.fit(table, flows)
            encoder, _ = build_encoder(self.name, tok, arch)
            mlm = FieldHead(arch.d_model, tok.field_sizes)
            base_cfg = None
        encoder.to(device)
        causal = bool(encoder.config.causal)
        y = torch.as_tensor([classes.index(c) for c in y_names], dtype=torch.long)
        d = encoder.config.d_model
        t0 = time.perf_counter()
        if causal:
            loaded.hide_service = hide_service
            head, extra = _finetune_stream_lp(loaded, table, train_rows, y, len(classes), fcfg, device)
        else:
            ids = torch.as_tensor(tok.transform(table, flows, rows=train_rows, hide_service=hide_service))
            run = _finetune_full if procedure == "full" else _finetune_lpft
            head, extra = run(self.name, encoder, tok, ids, y, len(classes), fcfg, seed, device)
        encoder.eval()
        head.eval()
        n_params = encoder.n_params + sum(p.numel() for p in head.parameters())
        config = model_config(
            schema_version=SCHEMA_VERSION, seed=seed, pretrained=base is not None, detector=False,
            n_params=n_params, classes=classes, label_field=label_field, hide_service=hide_service,
            settings=("finetune", fcfg), base=base, base_config=base_cfg,
            encoder=encoder.config.to_dict(), tokenizer=tok.to_dict(), token_source=tok.source,
            head={"in_dim": d if causal else 2 * d, "n_classes": len(classes), "hidden": extra.pop("head_hidden")},
            n_params_active=encoder.n_active_params)
        encoder.cpu()
        head.cpu()
        metrics = {**extra, "classes": classes, "n_params": n_params,
                   "seconds": round(time.perf_counter() - t0, 1), "from_base": base is not None}
        save_model_dir(out, self.name, config, prefixed_state(encoder=encoder, mlm=mlm, head=head),
                       sources, metrics)
        return metrics

    # -- prediction --------------------------------------------------------------------------

    def predict(self, model_dir: str, table: pa.Table, device: str = "cpu",
                flows: pa.Table | None = None) -> TokenPrediction:
        """Class probabilities (a classifier) or the masked-token NLL (a base), with routing."""
        loaded = LoadedTokenModel.from_dir(model_dir, device)
        if loaded.causal and loaded.head is not None:
            # a stream pass reports no routing (its tokens per expert are the detector's concern)
            return TokenPrediction(classes=loaded.classes, proba=loaded.stream_proba(table), score=None,
                                   routing=[])
        ids = loaded.tokens(table, flows)
        res = loaded.run(ids, want=("score", "routing") if loaded.head is None else ("proba", "routing"))
        routing = routing_summary(res["routing"])
        for r in routing:
            log.info("%s layer %d: tokens per expert %s, dropped %d of %d (%.1f%%)", loaded.kind,
                     r["layer"], r["tokens_per_expert"], r["dropped"], r["routed"], 100 * r["dropped_share"])
            if r["max_expert_share"] > 0.9:
                log.warning("%s layer %d: one expert took %.0f%% of the tokens (collapsed router)",
                            loaded.kind, r["layer"], 100 * r["max_expert_share"])
        if loaded.head is None:
            return TokenPrediction(classes=[], proba=None, score=res.get("score"), routing=routing)
        return TokenPrediction(classes=loaded.classes, proba=res["proba"], score=None, routing=routing)


class _Scorer(LoadedTokenModel):
    """The scoring half of ``LoadedTokenModel`` on in-memory modules (used right after pretraining)."""

    def __init__(self, tok: FlowTokenizer, encoder, mlm):  # noqa: D107 - no config to load
        self.tokenizer, self.encoder, self.mlm, self.head, self.device = tok, encoder, mlm, None, "cpu"
        self.hide_service = False

    def score(self, ids: np.ndarray) -> np.ndarray:
        return self.run(ids, want=("score",))["score"]


KINDS = {"moe": TokenTrainer("moe"), "dense": TokenTrainer("dense")}
