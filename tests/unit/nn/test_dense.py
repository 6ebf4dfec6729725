"""The token embedding's fused gather-and-sum (``embedding_bag``) equals the definition it
replaced: embed every field, sum over fields; pads add nothing and get no gradient."""
from __future__ import annotations

import torch

from zeekml.nn.dense import TokenEmbedding


def test_token_embedding_equals_the_sum_of_field_embeddings():
    torch.manual_seed(0)
    emb = TokenEmbedding(vocab_size=40, seq_len=5, d_model=8)
    ids = torch.randint(2, 40, (3, 5, 4))
    ids[0, :2] = 0                                    # a left-padded sequence
    x, keep = emb(ids)
    want = emb.tok(ids).sum(dim=2)
    assert torch.equal(x[:, 1:], want + emb.pos.weight[1:])
    assert torch.equal(x[:, 0], (emb.cls + emb.pos.weight[0]).expand(3, -1))
    assert keep[0].tolist() == [True, False, False, True, True, True]
    assert torch.equal(x[0, 1], emb.pos.weight[1])    # a pad position: nothing but its position


def test_pads_get_no_gradient_and_values_get_the_same_as_the_unfused_sum():
    torch.manual_seed(1)
    emb = TokenEmbedding(vocab_size=20, seq_len=3, d_model=4)
    ids = torch.tensor([[[0, 0], [3, 5], [5, 7]]])
    emb(ids)[0].sum().backward()
    g = emb.tok.weight.grad.clone()
    emb.zero_grad()
    emb.tok(ids).sum().backward()
    assert torch.equal(g, emb.tok.weight.grad)
    assert torch.count_nonzero(g[0]) == 0
    assert torch.equal(g[5], torch.full((4,), 2.0))   # used twice
