"""Transformer encoder over traffic tokens, dense feed-forward blocks: the MoE model's twin.

The MoE encoder (``zeekml.nn.moe``) is this encoder with every second feed-forward block replaced
by a mixture of experts; everything else (token embedding, attention, norms, heads) is shared from
here, so the two differ only where the comparison is about.

Legend: b = sequences in the batch, l = positions (CLS + tokens), f = token fields, d = model
width, h = heads, k = head width (d / h), m = feed-forward width, v = vocabulary size.

The *dense twin* of an MoE config (``twin_of``) has the same active parameters per token: its
feed-forward block at each MoE position is ``top_k * d_expert`` wide, the width a routed token
passes through in the MoE (the router's ``d * n_experts`` weights are the only difference).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DenseConfig:
    """Constructor arguments of ``DenseEncoder`` (stored beside the weights).

    Args:
        vocab_size: v, global token ids (``FlowTokenizer.vocab_size``).
        n_fields: f, fields per token.
        seq_len: tokens per sequence (the CLS position is added on top).
        d_model: d (default 64).
        n_layers: encoder blocks (default 4).
        n_heads: h (default 4).
        d_ff: m, feed-forward width of every block (default 128).
        d_ff_alt: feed-forward width of every second block (the MoE positions), None = ``d_ff``.
        dropout: dropout on attention output and feed-forward output (default 0.1).
    """

    vocab_size: int
    n_fields: int
    seq_len: int
    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 128
    d_ff_alt: int | None = None
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DenseConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class RoutingStats:
    """What one MoE layer did with a batch (all tensors, on the model's device).

    ``tokens_per_expert``: ``[E]`` assignments each expert processed; ``dropped``: assignments over
    capacity (their token skips the layer); ``routed``: assignments asked for (tokens * top_k);
    ``first_choice``: ``[E]`` tokens whose first choice was each expert.
    """

    tokens_per_expert: torch.Tensor
    dropped: torch.Tensor
    routed: torch.Tensor
    first_choice: torch.Tensor


@dataclass
class EncoderOutput:
    """``hidden``: ``[b, l, d]`` (position 0 = CLS); ``balance_loss`` and ``z_loss``: scalars,
    summed over the MoE layers (zero for a dense encoder); ``routing``: one entry per MoE layer."""

    hidden: torch.Tensor
    balance_loss: torch.Tensor
    z_loss: torch.Tensor
    routing: list[RoutingStats] = field(default_factory=list)


class TokenEmbedding(nn.Module):
    """Sum of field embeddings + learned position embedding, with a CLS vector in front.

    Shapes:
        ids ``[b, L, f]`` int64 (0 = pad) -> ``[b, 1 + L, d]``, and ``keep`` ``[b, 1 + L]`` bool
        (False at pads; CLS is always kept).
    """

    def __init__(self, vocab_size: int, seq_len: int, d_model: int):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model, padding_idx=0)
        self.pos = nn.Embedding(seq_len + 1, d_model)
        self.cls = nn.Parameter(torch.zeros(d_model))
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)
        with torch.no_grad():
            self.tok.weight[0].zero_()

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, L, f = ids.shape
        # One fused gather-and-sum over the f fields of each token (``embedding_bag``) instead of
        # materialising [b, L, f, d] and summing it: the same sums, ~100x less time on CPU.
        x = F.embedding_bag(ids.reshape(b * L, f), self.tok.weight, mode="sum",
                            padding_idx=self.tok.padding_idx).view(b, L, -1)   # [b, L, d]
        x = torch.cat([self.cls.expand(b, 1, -1), x], dim=1)
        x = x + self.pos.weight[: L + 1]
        keep = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=ids.device), ids[..., 0] != 0], dim=1)
        return x, keep


class SelfAttention(nn.Module):
    """Multi-head self-attention that ignores pad positions.

    Shapes:
        x ``[b, l, d]``, keep ``[b, l]`` -> ``[b, l, d]``
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not a multiple of n_heads {n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, keep: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        """``query``: the positions whose output is wanted (default all), ``[p]``; every
        position is still attended to. Shapes: ``-> [b, p, d]``."""
        b, l, d = x.shape
        q, k, v = self.qkv(x).view(b, l, 3, self.n_heads, d // self.n_heads).unbind(dim=2)  # [b, l, h, k]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))                                    # [b, h, l, k]
        if query is not None:
            q = q[:, :, query]                                                              # [b, h, p, k]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :],
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, q.shape[2], d))


class FeedForward(nn.Module):
    """``d -> m -> d`` with GELU.

    Shapes:
        x ``[..., d]`` -> ``[..., d]``
    """

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.up = nn.Linear(d_model, d_ff)
        self.down = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    """Pre-norm transformer block; ``ff`` is a ``FeedForward`` or an MoE layer.

    The MoE layer takes ``(x, keep)`` and returns ``(y, balance, z, stats)``; a dense block
    returns zeros and no stats, so the encoder loop is the same for both.

    Shapes:
        x ``[b, l, d]``, keep ``[b, l]`` -> ``[b, l, d]``
    """

    def __init__(self, d_model: int, n_heads: int, ff: nn.Module, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = ff
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor, query: torch.Tensor | None = None):
        """``query``: output only these positions ``[p]`` (every position still attended to):
        ``-> [b, p, d]``."""
        a = self.attn(self.norm1(x), keep, query)
        if query is not None:
            x, keep = x[:, query], keep[:, query]
        x = x + self.drop(a)
        h = self.norm2(x)
        if isinstance(self.ff, FeedForward):
            zero = x.new_zeros(())
            return x + self.drop(self.ff(h)), zero, zero, None
        y, balance, z, stats = self.ff(h, keep)
        return x + self.drop(y), balance, z, stats


class Encoder(nn.Module):
    """Token embedding, blocks, final norm. Subclasses choose each block's feed-forward.

    Shapes:
        ids ``[b, L, f]`` -> ``EncoderOutput.hidden [b, 1 + L, d]``
    """

    def __init__(self, config: DenseConfig, blocks: list[Block]):
        super().__init__()
        self.config = config
        self.embed = TokenEmbedding(config.vocab_size, config.seq_len, config.d_model)
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(config.d_model)

    def forward(self, ids: torch.Tensor, positions: list[int] | None = None) -> EncoderOutput:
        """``positions``: the only output positions the caller reads (of ``1 + L``, CLS = 0),
        default all; the last block then computes those alone (a pooled embedding reads 2 of
        17: measured, see ``bench/README.md``), so ``hidden`` is ``[b, len(positions), d]``."""
        x, keep = self.embed(ids)
        balance = x.new_zeros(())
        z = x.new_zeros(())
        routing = []
        last = len(self.blocks) - 1
        query = None if positions is None else torch.as_tensor(positions, device=ids.device)
        for i, block in enumerate(self.blocks):
            x, b_loss, z_loss, stats = block(x, keep, query if i == last else None)
            balance = balance + b_loss
            z = z + z_loss
            if stats is not None:
                routing.append(stats)
        return EncoderOutput(self.norm(x), balance, z, routing)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def n_active_params(self) -> int:
        """Parameters one token passes through (embedding: its ``f`` field rows, not the table)."""
        emb = self.config.n_fields * self.config.d_model + 2 * self.config.d_model   # fields + pos + CLS
        rest = sum(p.numel() for n, p in self.named_parameters() if not n.startswith("embed."))
        return emb + rest


class DenseEncoder(Encoder):
    """Every block dense; block ``i`` with ``i % 2 == 1`` is ``d_ff_alt`` wide (the MoE slots)."""

    def __init__(self, config: DenseConfig):
        alt = config.d_ff_alt or config.d_ff
        blocks = [Block(config.d_model, config.n_heads,
                        FeedForward(config.d_model, alt if i % 2 == 1 else config.d_ff), config.dropout)
                  for i in range(config.n_layers)]
        super().__init__(config, blocks)


class FieldHead(nn.Module):
    """Masked-token prediction: logits over each field's local ids.

    Shapes:
        h ``[..., d]`` -> list of ``f`` tensors ``[..., size_f]``
    """

    def __init__(self, d_model: int, field_sizes: list[int]):
        super().__init__()
        self.sizes = list(field_sizes)
        self.norm = nn.LayerNorm(d_model)
        self.proj = nn.Linear(d_model, sum(self.sizes))

    def forward(self, h: torch.Tensor) -> list[torch.Tensor]:
        return list(self.proj(self.norm(h)).split(self.sizes, dim=-1))


class ClassifierHead(nn.Module):
    """CLS and anchor states (concatenated) -> class logits: layer norm, then an MLP of width
    ``hidden``, or one linear layer when ``hidden`` is 0 (the linear head of LP-FT finetuning,
    ``zeekml.train.common.LPFT``).

    Shapes:
        z ``[b, 2d]`` -> ``[b, n_classes]``
    """

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        if hidden:
            self.net = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(),
                                     nn.Dropout(dropout), nn.Linear(hidden, n_classes))
        else:
            self.net = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, n_classes))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def pool(hidden: torch.Tensor, ids: torch.Tensor, anchor: str) -> torch.Tensor:
    """Sequence summary ``[b, 2d]``: the CLS state and the anchor state (``last``: the last
    position, which is the conn itself for host tokens; ``mean``: mean over non-pad tokens).

    Shapes:
        hidden ``[b, 1 + L, d]``, ids ``[b, L, f]`` -> ``[b, 2d]``
    """
    cls = hidden[:, 0]
    if anchor == "last":
        a = hidden[:, -1]
    else:
        keep = (ids[..., 0] != 0).unsqueeze(-1).to(hidden.dtype)          # [b, L, 1]
        a = (hidden[:, 1:] * keep).sum(1) / keep.sum(1).clamp_min(1.0)
    return torch.cat([cls, a], dim=-1)
