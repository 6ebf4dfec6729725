"""Transformer encoder over traffic tokens, dense feed-forward blocks: the MoE model's twin.

The MoE encoder (``zeekml.nn.moe``) is this encoder with every second feed-forward block replaced
by a mixture of experts; everything else (token embedding, attention, norms, heads) is shared from
here, so the two differ only where the comparison is about.

Legend: b = sequences in the batch, l = positions (CLS + tokens), f = token fields, d = model
width, h = heads, k = head width (d / h), m = feed-forward width, v = vocabulary size; streams:
n = stream positions, p = queried positions, s = keys per query (1 + span), S = widest span.

``attention``: ``"full"`` (default) runs each sequence on its own: a CLS position, absolute
position embeddings, every position attending to every other. ``"causal_window"`` runs over a
host's token *stream* (one token per conn, in time order, ``zeekml.features.tokens``): no CLS, no
absolute positions, and block ``i`` lets a position attend to itself and its ``layer_spans[i]``
predecessors only, with a learned bias per head and offset (initialised as ALiBi's distance
penalty). The spans add up to ``seq_len - 1``, so a position's output after the last block depends
on exactly itself and the ``seq_len - 1`` tokens before it: the receptive field of the full
encoder's window, while every token of a stream is pushed through each block once instead of once
per window it sits in (~``seq_len``x fewer token-block passes). Each block's attention is a gather
of the (at most ``span + 1``) keys of each query and a per-query softmax, so a position's output
has the same bits whichever other positions are computed with it.

The *dense twin* of an MoE config (``twin_of``) has the same active parameters per token: its
feed-forward block at each MoE position is ``top_k * d_expert`` wide, the width a routed token
passes through in the MoE (the router's ``d * n_experts`` weights are the only difference).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


ATTENTIONS = ("full", "causal_window")

# Fewest query rows a causal block's GEMMs run on: fewer rows take another BLAS code path (another
# summation order; ``zeekml._core.device.MIN_INFER_ROWS``), so a short query set is padded with
# copies of its first row and a position's bits do not depend on how many are computed with it.
MIN_STREAM_ROWS = 16


def layer_spans(seq_len: int, n_layers: int) -> list[int]:
    """Predecessors each block of a ``causal_window`` encoder attends to: ``seq_len - 1`` split
    over the blocks, the earlier blocks taking the remainder (16 tokens, 4 blocks: 4, 4, 4, 3), so
    that the last block's output at a position depends on exactly that position and its
    ``seq_len - 1`` predecessors."""
    q, r = divmod(max(seq_len - 1, 0), n_layers)
    return [q + (1 if i < r else 0) for i in range(n_layers)]


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
        attention: ``"full"`` or ``"causal_window"`` (default ``"full"``; see the module docstring).
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
    attention: str = "full"

    def __post_init__(self) -> None:
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention {self.attention!r}: one of {', '.join(ATTENTIONS)}")

    @property
    def causal(self) -> bool:
        return self.attention == "causal_window"

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.attention == "full":
            # a full encoder's constructor dict stays what it was before the option existed
            # (config.json of the shipped models, and the manifests' hashes over them)
            d.pop("attention")
        return d

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
    summed over the MoE layers (zero for a dense encoder); ``routing``: one entry per MoE layer;
    ``stream_kv``: what ``Encoder.forward_stream`` was asked to keep (``keep_kv``), per block
    ``(kv [r, 2d], have [r] bool)``: the keys and values of those rows at that block, and
    whether the pass computed (or was given) them."""

    hidden: torch.Tensor
    balance_loss: torch.Tensor
    z_loss: torch.Tensor
    routing: list[RoutingStats] = field(default_factory=list)
    stream_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None


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


class StreamEmbedding(nn.Module):
    """Sum of field embeddings, no position and no CLS (``causal_window``: order reaches the model
    through the causal mask and the per-offset attention bias). The table is ``tok``, as in
    ``TokenEmbedding``.

    Shapes:
        ids ``[n, f]`` int64 (0 = pad) -> ``[n, d]``
    """

    def __init__(self, vocab_size: int, d_model: int):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model, padding_idx=0)
        nn.init.normal_(self.tok.weight, std=0.02)
        with torch.no_grad():
            self.tok.weight[0].zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding_bag(ids, self.tok.weight, mode="sum", padding_idx=self.tok.padding_idx)


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi's per-head slopes ``2 ** (-8 * (i + 1) / h)`` (Press et al., 2022), ``[h]``."""
    return 2.0 ** (-8.0 * torch.arange(1, n_heads + 1, dtype=torch.float32) / n_heads)


class WindowAttention(nn.Module):
    """Causal attention over a token stream, banded: each query attends to itself and the (at
    most ``span``) predecessors ``keys`` names, plus a learned bias per offset and head
    (initialised to ALiBi's ``-slope_h * offset``). Keys are gathered per query and the softmax
    runs over those ``1 + span`` alone: no ``[n, n]`` mask, and a query's bits do not depend on the
    other rows of the stream.

    Shapes:
        qkv ``[n, 3d]`` (projected states of the stream), keys ``[p, s]`` rows of ``qkv`` (column
        0 the query itself, column ``j`` its ``j``-th predecessor; -1 = none) -> ``[p, d]``
    """

    def __init__(self, d_model: int, n_heads: int, span: int, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not a multiple of n_heads {n_heads}")
        self.n_heads, self.span = n_heads, span
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.bias = nn.Parameter(-alibi_slopes(n_heads)[None, :] * torch.arange(span + 1.0)[:, None])  # [s, h]
        self.dropout = dropout

    def attend(self, qkv: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        n, d3 = qkv.shape
        d, h = d3 // 3, self.n_heads
        p, s = keys.shape
        ok = keys >= 0
        idx = torch.where(ok, keys, keys[:, :1])                               # a masked key: any row
        # index_select, not qkv[rows, cols]: the same copies, ~5x faster than advanced indexing
        # (which was a third of a causal token model's stream pass)
        q = qkv[:, :d].index_select(0, keys[:, 0]).view(p, 1, h, d // h)        # [p, 1, h, k]
        kv = qkv[:, d:].index_select(0, idx.reshape(-1)).view(p, s, 2, h, d // h)
        k, v = kv[:, :, 0], kv[:, :, 1]                                        # [p, s, h, k]
        # multiply-and-sum over k: every query reduces its own s x k products in one order
        att = (q * k).sum(-1) * (d // h) ** -0.5 + self.bias                   # [p, s, h]
        att = att.masked_fill(~ok.unsqueeze(-1), float("-inf"))
        w = torch.softmax(att, dim=1)
        if self.training and self.dropout:
            w = F.dropout(w, self.dropout)
        return self.out((w.unsqueeze(-1) * v).sum(1).reshape(p, d))


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


class CausalBlock(nn.Module):
    """Pre-norm block of a ``causal_window`` encoder (the attributes of ``Block``, its attention a
    ``WindowAttention``), on stream positions.

    Shapes:
        x ``[n, d]``, keys ``[p, s]`` (column 0 = the queried rows of ``x``), kv_rows ``[m]`` (the
        rows whose keys are read; None = all) -> ``(y [p, d], balance [], z [], stats)``
    """

    def __init__(self, d_model: int, n_heads: int, span: int, ff: nn.Module, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = WindowAttention(d_model, n_heads, span, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = ff
        self.drop = nn.Dropout(dropout)

    def project(self, x: torch.Tensor, kv_rows: torch.Tensor | None = None,
                known: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Queries, keys and values ``[n, 3d]`` of the rows ``kv_rows`` of ``x`` (None = all;
        the other rows 0), and, from ``known`` = ``(rows [m], kv [m, 2d])``, the keys and values
        of rows computed in an earlier pass (their queries stay 0: a known row is never a
        query). A row in both is computed."""
        if kv_rows is None and known is None:
            return self.attn.qkv(self.norm1(x))
        qkv = x.new_zeros(x.shape[0], self.attn.qkv.out_features)
        if known is not None and len(known[0]):
            qkv[known[0], qkv.shape[1] // 3:] = known[1]
        rows = torch.arange(x.shape[0], device=x.device) if kv_rows is None else kv_rows
        qkv[rows] = self.attn.qkv(self.norm1(x.index_select(0, rows)))
        return qkv

    def forward(self, x: torch.Tensor, keys: torch.Tensor, kv_rows: torch.Tensor | None = None,
                qkv: torch.Tensor | None = None):
        """``qkv``: ``project``'s output when the caller made it (default: made here)."""
        keys = keys[:, :1 + self.attn.span]
        if qkv is None:
            qkv = self.project(x, kv_rows)
        xq = x.index_select(0, keys[:, 0]) + self.drop(self.attn.attend(qkv, keys))
        h = self.norm2(xq)
        if isinstance(self.ff, FeedForward):
            zero = xq.new_zeros(())
            return xq + self.drop(self.ff(h)), zero, zero, None
        keep = torch.ones(1, h.shape[0], dtype=torch.bool, device=h.device)
        y, balance, z, stats = self.ff(h.unsqueeze(0), keep)
        return xq + self.drop(y.squeeze(0)), balance, z, stats


def make_block(config: "DenseConfig", i: int, ff: nn.Module) -> nn.Module:
    """Block ``i`` of an encoder of ``config``: ``Block`` (full attention) or ``CausalBlock``."""
    if config.causal:
        span = layer_spans(config.seq_len, config.n_layers)[i]
        return CausalBlock(config.d_model, config.n_heads, span, ff, config.dropout)
    return Block(config.d_model, config.n_heads, ff, config.dropout)


def _padded(rows: torch.Tensor) -> torch.Tensor:
    """``rows`` with copies of its first row appended up to ``MIN_STREAM_ROWS``."""
    if 0 < len(rows) < MIN_STREAM_ROWS:
        rows = torch.cat([rows, rows[:1].expand(MIN_STREAM_ROWS - len(rows))])
    return rows


def _compact(ids: torch.Tensor, keys: torch.Tensor, queries: list, kv: list, targets: torch.Tensor,
             known: list | None, keep_kv: torch.Tensor | None) -> tuple:
    """``forward_stream``'s stream cut to the rows it reads (block 0's rows, which hold every
    later block's, the known rows and the rows to keep), every row index renumbered: a live
    call's stream holds each host's latest conns as context, and with the per-host state
    most of them are never computed, yet the embedding, the zeroed projections and the
    copies of the states went over all of them. A key to a row cut is -1 (only keys beyond a
    block's span can be: the others are computed or known). The same rows in the same order
    reach every product, so the same bits.

    Shapes: ``ids [n, f]``, ``keys [n, 1 + S]`` -> ``[u, f]``, ``[u, 1 + S]``; the row lists
    keep their lengths."""
    n = len(ids)
    used = torch.zeros(n, dtype=torch.bool, device=ids.device)
    used[kv[0]] = True
    for rows, _ in known or []:
        used[rows] = True
    if keep_kv is not None:
        used[keep_kv] = True
    idx = used.nonzero().squeeze(1)
    if len(idx) == n:
        return ids, keys, queries, kv, targets, known, keep_kv
    pos = torch.full((n,), -1, dtype=torch.int64, device=ids.device)
    pos[idx] = torch.arange(len(idx), device=ids.device)
    k = keys.index_select(0, idx)
    k = torch.where(k >= 0, pos[k.clamp_min(0)], k)
    return (ids.index_select(0, idx), k, [pos[q] for q in queries], [pos[r] for r in kv],
            pos[targets], None if known is None else [(pos[r], v) for r, v in known],
            None if keep_kv is None else pos[keep_kv])


def window_keys(ids: torch.Tensor, width: int, reach: torch.Tensor | None = None) -> torch.Tensor:
    """Stream keys of sequences laid out as windows: position ``j`` of sequence ``i`` is stream
    row ``i * L + j``; its ``o``-th predecessor (``o`` = 1..``width``) is row ``i * L + j - o`` when
    that is in the same sequence, not a pad and ``o <= reach[i, j]`` (default: no limit).

    Shapes:
        ids ``[b, L, f]``, reach ``[b, L]`` -> ``[b * L, 1 + width]``
    """
    b, L, _ = ids.shape
    j = torch.arange(L, device=ids.device)
    o = torch.arange(width + 1, device=ids.device)
    src = j[:, None] - o[None, :]                                              # [L, s]
    real = ids[..., 0] != 0                                                    # [b, L]
    ok = (src >= 0).expand(b, L, -1) & real.gather(1, src.clamp_min(0).reshape(1, -1).expand(b, -1)
                                                   ).view(b, L, -1)
    if reach is not None:
        ok &= o[None, None, :] <= reach.unsqueeze(-1)
    ok[..., 0] = True                                                          # itself, pads too
    rows = (torch.arange(b, device=ids.device) * L)[:, None, None] + src[None]
    return torch.where(ok, rows, torch.full_like(rows, -1)).reshape(b * L, -1)


class Encoder(nn.Module):
    """Token embedding, blocks, final norm. Subclasses choose each block's feed-forward.

    Shapes:
        ids ``[b, L, f]`` -> ``EncoderOutput.hidden [b, 1 + L, d]``
    """

    def __init__(self, config: DenseConfig, blocks: list[nn.Module]):
        super().__init__()
        self.config = config
        if config.causal:
            self.embed: nn.Module = StreamEmbedding(config.vocab_size, config.d_model)
        else:
            self.embed = TokenEmbedding(config.vocab_size, config.seq_len, config.d_model)
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(config.d_model)

    @property
    def causal(self) -> bool:
        return self.config.causal

    @property
    def spans(self) -> list[int]:
        """Predecessors each block attends to (``causal_window``; ``layer_spans``)."""
        return layer_spans(self.config.seq_len, self.config.n_layers)

    def forward(self, ids: torch.Tensor, positions: list[int] | None = None,
                reach: torch.Tensor | None = None) -> EncoderOutput:
        """``positions``: the only output positions the caller reads (of ``1 + L``, CLS = 0),
        default all; the last block then computes those alone (a pooled embedding reads 2 of
        17: measured, see ``bench/README.md``), so ``hidden`` is ``[b, len(positions), d]``.

        A ``causal_window`` encoder reads each sequence as a stream (``window_keys``; ``reach``
        ``[b, L]``: how many predecessors each position may attend to, default all of the
        sequence) and returns ``hidden`` ``[b, L, d]``: no CLS position, position ``j`` sees
        positions ``<= j`` only."""
        if self.causal:
            if positions is not None:
                raise ValueError("positions: a causal_window encoder returns every position")
            b, L, f = ids.shape
            keys = window_keys(ids, max(self.spans, default=0), reach)
            out = self.forward_stream(ids.reshape(b * L, f), keys)
            out.hidden = out.hidden.view(b, L, -1)
            return out
        if reach is not None:
            raise ValueError("reach: only a causal_window encoder takes it")
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

    def forward_stream(self, ids: torch.Tensor, keys: torch.Tensor,
                       targets: torch.Tensor | None = None,
                       known: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
                       keep_kv: torch.Tensor | None = None) -> EncoderOutput:
        """A ``causal_window`` encoder over token streams laid out as rows: ``keys[r, o]`` is the
        row of row ``r``'s ``o``-th predecessor it may attend to (``o`` = 1..``max(spans)``;
        column 0 is ``r`` itself; -1 = none: another host's conn, too old, not in this batch).

        ``targets``: the rows whose output is wanted (default all). Each block then computes only
        the rows the targets' outputs depend on (a target, its predecessors up to the spans of the
        blocks above), so scoring a few conns of a host costs their cone, not the whole stream.
        ``hidden`` is ``[len(targets), d]`` (``[n, d]`` without targets).

        ``known`` (with ``targets``): per block, ``(rows [m], kv [m, 2d])``, the keys and values
        of rows at that block from an earlier pass over the same conns (a live scorer's
        per-host state, ``zeekml.scoring.detectors.stream_state``); the cone stops at them, so a
        new conn whose predecessors are all known costs one row per block. They must be what
        this stream would give those rows: the caller checks that the rows they depend on are
        the same tokens. ``keep_kv`` ``[r]``: rows whose keys and values at every block are
        returned in ``stream_kv`` (to be ``known`` in a later pass).

        Shapes:
            ids ``[n, f]``, keys ``[n, 1 + S]`` -> ``EncoderOutput.hidden [t, d]``
        """
        if not self.causal:
            raise ValueError("forward_stream: only a causal_window encoder reads token streams")
        if known is not None and targets is None:
            raise ValueError("forward_stream: known rows need targets")
        n_blocks = len(self.blocks)
        if targets is None:
            queries: list[torch.Tensor | None] = [None] * n_blocks
            kv: list[torch.Tensor | None] = [None] * n_blocks
        else:
            # rows each block must compute, from the top down: the targets, then every key they
            # read at the block above that is not known there
            need = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
            need[targets] = True
            queries, kv = [None] * n_blocks, [None] * n_blocks
            for i in reversed(range(n_blocks)):
                rows = need.nonzero().squeeze(1)
                queries[i] = _padded(rows)
                k = keys.index_select(0, rows)[:, :1 + self.spans[i]]
                need = need.clone()
                read = torch.zeros_like(need)
                read[k[k >= 0]] = True
                if known is not None and len(known[i][0]):
                    read[known[i][0]] = False
                need |= read
                kv[i] = _padded(need.nonzero().squeeze(1))
            ids, keys, queries, kv, targets, known, keep_kv = _compact(
                ids, keys, queries, kv, targets, known, keep_kv)
        x = self.embed(ids)                                                    # [n, d]
        balance = x.new_zeros(())
        z = x.new_zeros(())
        routing = []
        kept: list[tuple[torch.Tensor, torch.Tensor]] = []
        for i, block in enumerate(self.blocks):
            rows = queries[i]
            k = keys if rows is None else keys.index_select(0, rows)
            qkv = None
            if known is not None or keep_kv is not None:
                qkv = block.project(x, kv[i], None if known is None else known[i])
                if keep_kv is not None:
                    have = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
                    have[torch.arange(len(ids), device=ids.device) if kv[i] is None else kv[i]] = True
                    if known is not None:
                        have[known[i][0]] = True
                    kept.append((qkv.index_select(0, keep_kv)[:, qkv.shape[1] // 3:],
                                 have.index_select(0, keep_kv)))
            y, b_loss, z_loss, stats = block(x, k, kv[i], qkv)
            x = y if rows is None else x.index_copy(0, rows, y)
            balance = balance + b_loss
            z = z + z_loss
            if stats is not None:
                routing.append(stats)
        h = x if targets is None else x.index_select(0, targets)
        return EncoderOutput(self.norm(h), balance, z, routing,
                             kept if keep_kv is not None else None)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def n_active_params(self) -> int:
        """Parameters one token passes through (embedding: its ``f`` field rows, not the table)."""
        emb = self.config.n_fields * self.config.d_model   # fields (+ pos + CLS below)
        if not self.causal:
            emb += 2 * self.config.d_model
        rest = sum(p.numel() for n, p in self.named_parameters() if not n.startswith("embed."))
        return emb + rest


class DenseEncoder(Encoder):
    """Every block dense; block ``i`` with ``i % 2 == 1`` is ``d_ff_alt`` wide (the MoE slots)."""

    def __init__(self, config: DenseConfig):
        alt = config.d_ff_alt or config.d_ff
        blocks = [make_block(config, i, FeedForward(config.d_model, alt if i % 2 == 1 else config.d_ff))
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
