"""Sparse mixture-of-experts transformer encoder over traffic tokens (after Traffic-MoE,
arXiv 2601.00357; Switch Transformer routing, ST-MoE router z-loss).

Every second feed-forward block (blocks 1, 3, ...) is an ``MoEFeedForward``: a router picks the
``top_k`` of ``n_experts`` experts for each non-pad token; each expert takes at most ``capacity``
tokens per batch and the rest are *dropped* (their token skips the layer through the residual).
The auxiliary losses are values of ``forward``'s output, never module state (under
``torch.no_grad``/``inference_mode`` they are returned as 0: nothing can descend them):

- load balance (Switch): ``E * sum_e f_e * P_e`` where ``f_e`` is the share of tokens whose
  *first* choice is expert ``e`` and ``P_e`` the mean router probability of ``e``; 1.0 when
  routing is uniform, ``E`` when every token goes to one expert with probability 1;
- router z-loss (ST-MoE): mean over tokens of ``logsumexp(router logits) ** 2``.

Dispatch groups tokens by expert (one sort) and runs each expert once on its contiguous slice:
the only Python loop is over the ``E`` experts, never over tokens.

Legend: b = sequences, l = positions, d = model width, t = routed (non-pad) tokens, e = experts
(E), k = choices per token (top_k), a = assignments kept, m = expert width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zeekml.nn.dense import DenseConfig, Encoder, FeedForward, RoutingStats, make_block


@dataclass
class MoEConfig(DenseConfig):
    """``DenseConfig`` plus the experts (stored beside the weights).

    Args:
        n_experts: E (default 8).
        top_k: experts per token, 1 (Switch) or 2 (default 1).
        d_expert: m, width of each expert (default 128, = ``d_ff``: one active expert per token
            costs what a dense block costs).
        capacity_factor: training capacity = ``ceil(factor * tokens * top_k / E)`` (default 1.25).
        eval_capacity_factor: the same at inference; None = no limit (default None: dropless
            inference. Scoring batches are time-ordered, so a batch is often one kind of traffic that
            one expert takes whole: with a factor of 2.0 over half of the test tokens of a few-shot
            model were dropped, see docs/results/moe.md).
    """

    n_experts: int = 8
    top_k: int = 1
    d_expert: int = 128
    capacity_factor: float = 1.25
    eval_capacity_factor: float | None = None


def twin_of(config: MoEConfig) -> DenseConfig:
    """The dense twin: same everything, with ``top_k * d_expert`` wide blocks at the MoE positions,
    so a token passes through the same number of parameters (less the router's ``d * E`` and, with
    top-2, the second active expert's output bias)."""
    d = {k: v for k, v in config.to_dict().items() if k in DenseConfig.__dataclass_fields__}
    d["d_ff_alt"] = config.top_k * config.d_expert
    return DenseConfig(**d)


@dataclass
class RouterOutput:
    """``gates``, ``experts``: ``[t, k]`` (gate weight and expert index of each choice);
    ``probs``: ``[t, E]`` softmax of ``logits`` ``[t, E]`` (None from ``route_top1_inference``)."""

    logits: torch.Tensor
    probs: torch.Tensor | None
    gates: torch.Tensor
    experts: torch.Tensor


def route(logits: torch.Tensor, top_k: int) -> RouterOutput:
    """Softmax over experts, top-k choices. With ``top_k`` > 1 the chosen gates are renormalised
    to sum to 1 (ST-MoE); with 1 the gate is the chosen probability (Switch), so the router gets a
    gradient through it.

    Shapes:
        logits ``[t, E]`` -> gates, experts ``[t, k]``
    """
    probs = torch.softmax(logits.float(), dim=-1)
    gates, experts = probs.topk(top_k, dim=-1)
    if top_k > 1:
        gates = gates / gates.sum(-1, keepdim=True)
    return RouterOutput(logits, probs, gates, experts)


# Column multiple of the inference router's softmax (``route_top1_inference``): a multiple of
# every CPU vector width (16 floats at AVX-512), with a margin.
ROUTER_COLS = 64


def route_top1_inference(logits: torch.Tensor) -> RouterOutput:
    """``route(logits, 1)`` for inference, where nothing reads ``probs`` (``None`` here): the
    softmax runs over the experts laid out as rows, ``[E, t]``, and the choice is a ``max``.
    Measured on CPU, one thread, 17k tokens x 8 experts: a softmax over a last dimension of 8
    took 5.9 ms and the top-1 of it 2.9 ms; transposed, 0.8 ms and 0.7 ms. Gates agree with
    ``route``'s within two float32 ulps (another summation order of the same 8 exponentials:
    one ulp measured with AVX-512 kernels, two with AVX2);
    experts are the same unless two probabilities tie exactly.

    The columns are padded to a multiple of ``ROUTER_COLS``: the softmax runs along ``t`` in
    vector registers and takes the last ``t % 16`` columns (AVX-512; 8 with AVX2) through a
    scalar ``exp`` with other bits, so unpadded a token's gate depended on its place in the
    batch (measured: 175 of 199 batch sizes gave some token other bits than in a batch of 4,000;
    padded, none of 299), and a conn's MoE score on how many conns were scored with it.

    Shapes:
        logits ``[t, E]`` -> gates, experts ``[t, 1]``
    """
    t, E = logits.shape
    cols = -(-t // ROUTER_COLS) * ROUTER_COLS
    lt = logits.float().new_zeros(E, cols)
    lt[:, :t] = logits.float().t()
    gates, experts = torch.softmax(lt, dim=0)[:, :t].max(dim=0)
    return RouterOutput(logits, None, gates.unsqueeze(1), experts.unsqueeze(1))


def load_balance_loss(r: RouterOutput) -> torch.Tensor:
    """Switch loss ``E * sum_e f_e * P_e`` (``f_e``: share of first choices; ``P_e``: mean prob)."""
    t, E = r.probs.shape
    if t == 0:
        return r.probs.new_zeros(())
    f = torch.bincount(r.experts[:, 0], minlength=E).to(r.probs.dtype) / t
    return E * (f * r.probs.mean(0)).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE z-loss: mean of ``logsumexp(logits) ** 2`` over tokens."""
    if logits.shape[0] == 0:
        return logits.new_zeros(())
    return torch.logsumexp(logits.float(), dim=-1).pow(2).mean()


def capacity(n_tokens: int, top_k: int, n_experts: int, factor: float) -> int:
    """Assignments each expert may take: ``ceil(factor * tokens * k / E)``, at least 1."""
    return max(1, math.ceil(factor * n_tokens * top_k / n_experts))


@dataclass
class Dispatch:
    """Kept assignments grouped by expert: ``token`` ``[a]`` (row into the routed tokens),
    ``gate`` ``[a]``, ``counts`` ``[E]`` (slice lengths, in expert order); ``dropped`` = number of
    assignments over capacity."""

    token: torch.Tensor
    gate: torch.Tensor
    counts: torch.Tensor
    dropped: torch.Tensor


def dispatch(r: RouterOutput, cap: int) -> Dispatch:
    """Priority: every token's first choice before any second choice, then token order (as in
    GShard / Switch). Assignments past an expert's ``cap`` are dropped.

    Shapes:
        r.experts ``[t, k]`` -> Dispatch with ``a`` <= ``t * k`` kept assignments
    """
    t, k = r.experts.shape
    E = r.logits.shape[1]
    expert = r.experts.t().reshape(-1)                                # [k*t], choice-major
    token = torch.arange(t, device=expert.device).repeat(k)
    gate = r.gates.t().reshape(-1)
    if cap >= t * k:                                                  # nothing can overflow
        dropped = expert.new_zeros(())
    else:
        onehot = F.one_hot(expert, E)                                 # [k*t, E]
        slot = (onehot.cumsum(0) * onehot).sum(-1) - 1                # position within its expert
        kept = slot < cap
        expert, token, gate = expert[kept], token[kept], gate[kept]
        dropped = (~kept).sum()
    order = torch.argsort(expert, stable=True)
    counts = torch.bincount(expert, minlength=E)
    return Dispatch(token[order], gate[order], counts, dropped)


# Fewest rows an expert's inference GEMM runs on (measured with MKL at AVX2: 1-3 rows give other
# bits than the same rows inside a larger GEMM; 4 and up agree). 8 leaves a margin.
MIN_GEMM_ROWS = 8


class Experts(nn.Module):
    """``E`` feed-forward experts ``d -> m -> d`` (GELU) with stacked weights.

    Shapes:
        x ``[a, d]`` grouped by expert, counts ``[E]`` -> ``[a, d]``
    """

    def __init__(self, n_experts: int, d_model: int, d_expert: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(n_experts, d_model, d_expert))
        self.b1 = nn.Parameter(torch.zeros(n_experts, d_expert))
        self.w2 = nn.Parameter(torch.empty(n_experts, d_expert, d_model))
        self.b2 = nn.Parameter(torch.zeros(n_experts, d_model))
        nn.init.uniform_(self.w1, -1 / math.sqrt(d_model), 1 / math.sqrt(d_model))
        nn.init.uniform_(self.w2, -1 / math.sqrt(d_expert), 1 / math.sqrt(d_expert))

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` on ``x`` ``[n, d]``."""
        return F.gelu(x @ self.w1[e] + self.b1[e]) @ self.w2[e] + self.b2[e]

    def forward(self, x: torch.Tensor, counts: list[int], inplace: bool = False) -> torch.Tensor:
        """``inplace``: write each expert's output over its own input slice (inference: no
        autograd through ``out=``; saves the ``[a, d]`` output buffer and the concatenation)."""
        if not inplace:
            outs = [self.expert(e, chunk) for e, chunk in enumerate(x.split(counts)) if chunk.shape[0]]
            return torch.cat(outs) if outs else x.new_zeros(x.shape)
        start = 0
        for e, n in enumerate(counts):
            if n:
                chunk = x[start:start + n]
                if n < MIN_GEMM_ROWS:
                    # BLAS takes another code path (another summation order) for a GEMM of 1-3
                    # rows; padded, a token's output does not depend on how many others share
                    # its expert, so a conn scored in a small batch (watch) gets score's bits
                    pad = torch.cat([chunk, chunk.new_zeros(MIN_GEMM_ROWS - n, chunk.shape[1])])
                    h = F.gelu(torch.addmm(self.b1[e], pad, self.w1[e]))
                    chunk.copy_(torch.addmm(self.b2[e], h, self.w2[e])[:n])
                else:
                    h = F.gelu(torch.addmm(self.b1[e], chunk, self.w1[e]))
                    torch.addmm(self.b2[e], h, self.w2[e], out=chunk)
                start += n
        return x


class MoEFeedForward(nn.Module):
    """Router + experts in place of a feed-forward block (``eval_capacity_factor`` None: no
    capacity limit in eval mode).

    Shapes:
        x ``[b, l, d]``, keep ``[b, l]`` (False = pad: not routed, output 0) ->
        ``(y [b, l, d], balance_loss [], z_loss [], RoutingStats)``
    """

    def __init__(self, d_model: int, n_experts: int, d_expert: int, top_k: int = 1,
                 capacity_factor: float = 1.25, eval_capacity_factor: float | None = None):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k {top_k} must be in 1..n_experts ({n_experts})")
        self.n_experts, self.top_k = n_experts, top_k
        self.capacity_factor, self.eval_capacity_factor = capacity_factor, eval_capacity_factor
        self.router = nn.Linear(d_model, n_experts, bias=False)
        nn.init.normal_(self.router.weight, std=0.02)
        self.experts = Experts(n_experts, d_model, d_expert)

    def forward(self, x: torch.Tensor, keep: torch.Tensor):
        b, l, dm = x.shape
        grad = torch.is_grad_enabled()
        flat = x.reshape(-1, dm)
        # inference over sequences without pads (most batches): every row is routed, so no gather
        every = not grad and bool(keep.all())
        pos = None if every else keep.reshape(-1).nonzero().squeeze(1)   # [t] routed rows of flat
        xt = flat if every else flat.index_select(0, pos)                 # [t, d]
        logits = self.router(xt)
        r = route_top1_inference(logits) if not grad and self.top_k == 1 else route(logits, self.top_k)
        factor = self.capacity_factor if self.training else self.eval_capacity_factor
        cap = (capacity(xt.shape[0], self.top_k, self.n_experts, factor) if factor is not None
               else max(1, xt.shape[0] * self.top_k))
        d = dispatch(r, cap)
        xs = xt.index_select(0, d.token)                                  # [a, d], grouped by expert
        ys = self.experts(xs, d.counts.tolist(), inplace=not grad)
        gate = d.gate.unsqueeze(-1).to(x.dtype)
        ys = ys * gate if grad else ys.mul_(gate)
        if every and self.top_k == 1 and int(d.dropped) == 0:
            # each row has exactly one output: put them back in row order with a gather (the
            # inverse of the dispatch order) instead of zeros and a scatter-add (same values)
            inv = torch.empty_like(d.token)
            inv[d.token] = torch.arange(len(d.token), device=x.device)
            y = ys.index_select(0, inv).view(b, l, dm)
        else:
            # dropped assignments add nothing: their token passes the layer on the residual alone
            rows = d.token if pos is None else pos.index_select(0, d.token)
            y = flat.new_zeros(flat.shape).index_add_(0, rows, ys).view(b, l, dm)
        stats = RoutingStats(tokens_per_expert=d.counts, dropped=d.dropped,
                             routed=torch.tensor(xt.shape[0] * self.top_k, device=x.device),
                             first_choice=torch.bincount(r.experts[:, 0], minlength=self.n_experts))
        if grad:
            return y, load_balance_loss(r), router_z_loss(r.logits), stats
        # nothing can descend them: skip their reductions on the inference path
        zero = x.new_zeros(())
        return y, zero, zero, stats


class MoEEncoder(Encoder):
    """The encoder with an ``MoEFeedForward`` in every second block (1, 3, ...); the MoE layers
    are per token, so ``attention="causal_window"`` (``zeekml.nn.dense``) changes only the
    attention and the embedding.

    Shapes:
        ids ``[b, L, f]`` -> ``EncoderOutput`` (hidden ``[b, 1 + L, d]``, losses, routing per MoE block)
    """

    def __init__(self, config: MoEConfig):
        blocks = []
        for i in range(config.n_layers):
            if i % 2 == 1:
                ff: nn.Module = MoEFeedForward(config.d_model, config.n_experts, config.d_expert,
                                               config.top_k, config.capacity_factor,
                                               config.eval_capacity_factor)
            else:
                ff = FeedForward(config.d_model, config.d_ff)
            blocks.append(make_block(config, i, ff))
        super().__init__(config, blocks)

    @property
    def n_active_params(self) -> int:
        """Per token: everything but the embedding table and the unchosen experts."""
        c = self.config
        per_expert = 2 * c.d_model * c.d_expert + c.d_expert + c.d_model
        n_moe = sum(isinstance(b.ff, MoEFeedForward) for b in self.blocks)
        return super().n_active_params - n_moe * (c.n_experts - c.top_k) * per_expert

    @classmethod
    def from_dict(cls, d: dict) -> "MoEEncoder":
        return cls(MoEConfig(**{k: v for k, v in d.items() if k in MoEConfig.__dataclass_fields__}))
