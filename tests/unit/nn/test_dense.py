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


def test_the_last_block_computes_only_the_positions_asked_for():
    """``positions``: the encoder's output at those positions equals the full output's there
    (float32 rounding apart: other GEMM shapes), for the dense encoder and the MoE, pads
    included; the last MoE block routes those positions alone."""
    from zeekml.nn.dense import DenseConfig, DenseEncoder
    from zeekml.nn.moe import MoEConfig, MoEEncoder

    torch.manual_seed(0)
    cfg = dict(vocab_size=40, n_fields=3, seq_len=6, d_model=16, n_layers=4, n_heads=2, d_ff=32, dropout=0.0)
    ids = torch.randint(1, 40, (50, 6, 3))
    ids[:10, :2] = 0                                       # leading pads
    for enc in (DenseEncoder(DenseConfig(**cfg)).eval(),
                MoEEncoder(MoEConfig(**cfg, n_experts=4, d_expert=16)).eval()):
        with torch.inference_mode():
            full = enc(ids)
            some = enc(ids, positions=[0, 6])
            one = enc(ids, positions=[3])
        assert some.hidden.shape == (50, 2, 16) and one.hidden.shape == (50, 1, 16)
        torch.testing.assert_close(some.hidden, full.hidden[:, [0, 6]], rtol=0, atol=1e-6)
        torch.testing.assert_close(one.hidden, full.hidden[:, [3]], rtol=0, atol=1e-6)
        if isinstance(enc, MoEEncoder):
            assert int(full.routing[-1].routed) == int((ids[..., 0] != 0).sum()) + 50   # + CLS
            assert int(some.routing[-1].routed) == 100                             # 2 per sequence
            assert int(some.routing[0].routed) == int(full.routing[0].routed)      # earlier blocks: all
