"""The MoE layer and encoders: routing shapes, top-k gates, capacity drops, the Switch load-balance
loss and router z-loss (exact values on hand-built router outputs), grouped dispatch against a naive
per-token reference, and the dense twin's parameter count."""
from __future__ import annotations

import math

import pytest
import torch

from zeekml.nn.dense import DenseEncoder, EncoderOutput, pool
from zeekml.nn.moe import (MoEConfig, MoEEncoder, MoEFeedForward, capacity, dispatch,
                           load_balance_loss, route, router_z_loss, twin_of)


def test_route_top1_gate_is_the_probability_and_top2_gates_sum_to_one():
    logits = torch.tensor([[0.0, math.log(3.0), 0.0], [math.log(2.0), 0.0, math.log(5.0)]])
    r1 = route(logits, 1)
    assert r1.experts.tolist() == [[1], [2]]
    assert r1.gates[:, 0].tolist() == pytest.approx([3 / 5, 5 / 8])
    assert r1.probs.shape == (2, 3) and r1.gates.shape == (2, 1)
    r2 = route(logits, 2)
    assert r2.experts[1].tolist() == [2, 0]
    assert r2.gates.tolist()[1] == pytest.approx([5 / 7, 2 / 7])
    assert r2.gates.sum(-1).tolist() == pytest.approx([1.0, 1.0])


def test_load_balance_loss_on_a_hand_built_router_output():
    a = math.log(3.0)
    # 3 tokens prefer expert 0 with p = 0.75, one prefers expert 1 with p = 0.75
    r = route(torch.tensor([[a, 0.0], [a, 0.0], [a, 0.0], [0.0, a]]), 1)
    # f = [3/4, 1/4]; P = [(3 * .75 + .25) / 4, (3 * .25 + .75) / 4] = [.625, .375]
    assert float(load_balance_loss(r)) == pytest.approx(2 * (0.75 * 0.625 + 0.25 * 0.375))   # 1.125
    uniform = route(torch.zeros(8, 4), 1)
    assert float(load_balance_loss(uniform)) == pytest.approx(1.0)
    collapsed = route(torch.tensor([[50.0, 0, 0, 0]] * 6), 1)
    assert float(load_balance_loss(collapsed)) == pytest.approx(4.0, rel=1e-6)


def test_router_z_loss_value():
    assert float(router_z_loss(torch.zeros(5, 4))) == pytest.approx(math.log(4.0) ** 2)
    logits = torch.tensor([[1.0, 2.0], [0.0, 3.0]])
    want = ((math.log(math.e + math.e ** 2)) ** 2 + (math.log(1 + math.e ** 3)) ** 2) / 2
    assert float(router_z_loss(logits)) == pytest.approx(want, rel=1e-6)


def test_capacity_drops_the_overflow_in_token_order():
    assert capacity(6, 1, 2, 1.0) == 3 and capacity(6, 2, 4, 1.25) == 4 and capacity(0, 1, 8, 1.0) == 1
    r = route(torch.tensor([[5.0, 0.0]] * 6), 1)               # all six want expert 0
    d = dispatch(r, cap=3)
    assert d.token.tolist() == [0, 1, 2] and d.counts.tolist() == [3, 0] and int(d.dropped) == 3


def test_top2_first_choices_go_before_second_choices():
    # tokens 0,1 choose (0 then 1); token 2 chooses (1 then 0); capacity 2 per expert
    r = route(torch.tensor([[2.0, 1.0, -9], [2.0, 1.0, -9], [1.0, 2.0, -9]]), 2)
    d = dispatch(r, cap=2)
    # expert 0: first choices of 0 and 1 (token 2's second choice is dropped)
    # expert 1: first choice of 2, then token 0's second choice (token 1's second choice dropped)
    assert d.counts.tolist() == [2, 2, 0] and int(d.dropped) == 2
    assert d.token.tolist() == [0, 1, 2, 0]


def _naive(layer: MoEFeedForward, x: torch.Tensor, keep: torch.Tensor, cap: int) -> torch.Tensor:
    """One token at a time: choices in priority order, a counter per expert."""
    b, l, d = x.shape
    flat = x.reshape(-1, d)
    rows = [i for i in range(b * l) if keep.reshape(-1)[i]]
    out = torch.zeros_like(flat)
    used = [0] * layer.n_experts
    choices = []
    for i in rows:
        p = torch.softmax(layer.router(flat[i]), -1)
        g, e = p.topk(layer.top_k)
        if layer.top_k > 1:
            g = g / g.sum()
        choices.append((i, g, e))
    for j in range(layer.top_k):
        for i, g, e in choices:
            ej = int(e[j])
            if used[ej] < cap:
                used[ej] += 1
                out[i] += g[j] * layer.experts.expert(ej, flat[i:i + 1])[0]
    return out.reshape(b, l, d)


@pytest.mark.parametrize("top_k,factor", [(1, 8.0), (1, 0.5), (2, 4.0), (2, 0.6)])
def test_grouped_dispatch_equals_the_naive_per_token_reference(top_k, factor):
    torch.manual_seed(0)
    layer = MoEFeedForward(d_model=8, n_experts=4, d_expert=16, top_k=top_k, capacity_factor=factor,
                           eval_capacity_factor=factor)
    with torch.no_grad():
        layer.router.weight.normal_(0, 1.0)
    layer.eval()
    x = torch.randn(3, 5, 8)
    keep = torch.ones(3, 5, dtype=torch.bool)
    keep[0, 3:] = False
    keep[2, 4] = False
    y, balance, z, stats = layer(x, keep)
    t = int(keep.sum())
    cap = capacity(t, top_k, 4, factor)
    ref = _naive(layer, x, keep, cap)
    assert torch.allclose(y, ref, atol=1e-5)
    assert (y[~keep] == 0).all()                                        # pads are not routed
    assert int(stats.routed) == t * top_k
    assert int(stats.tokens_per_expert.sum()) + int(stats.dropped) == t * top_k
    assert (stats.tokens_per_expert <= cap).all()
    if factor < 1:
        assert int(stats.dropped) > 0
    assert balance.shape == () and z.shape == () and float(z) > 0


@pytest.mark.parametrize("top_k", [1, 2])
def test_inference_paths_equal_the_training_path(top_k):
    """Under no_grad the experts write over their input slices in place and no aux losses are
    computed; the output and the routing equal the autograd path's, for small and large batches."""
    torch.manual_seed(3)
    layer = MoEFeedForward(d_model=8, n_experts=4, d_expert=16, top_k=top_k).eval()
    with torch.no_grad():
        layer.router.weight.normal_(0, 1.0)
    for n in (3, 40):
        x = torch.randn(n, 5, 8)
        keep = torch.rand(n, 5) > 0.2
        y_grad, balance, _, stats = layer(x, keep)
        with torch.no_grad():
            y, b0, z0, s0 = layer(x, keep)
        assert torch.allclose(y, y_grad, atol=1e-5) and float(balance) > 0
        assert float(b0) == 0.0 and float(z0) == 0.0
        assert s0.tokens_per_expert.tolist() == stats.tokens_per_expert.tolist()


@pytest.mark.parametrize("factor", [None, 0.5])
def test_inference_without_pads_equals_the_training_path(factor):
    """Batches without pads take the inference shortcut (no gather of routed rows, the top-1
    router over experts as rows, outputs put back by the inverse permutation); with a capacity
    that drops assignments they take the scatter-add. Both equal the autograd path's output and
    routing, and the shortcut's gates are ``route``'s within two float32 ulps (another summation
    order of the same exponentials: at most one ulp apart measured with AVX-512 kernels, two with
    AVX2 ones)."""
    from zeekml.nn.moe import route, route_top1_inference

    torch.manual_seed(4)
    layer = MoEFeedForward(d_model=8, n_experts=4, d_expert=16, top_k=1,
                           eval_capacity_factor=factor).eval()
    with torch.no_grad():
        layer.router.weight.normal_(0, 1.0)
    for n in (2, 50):
        x = torch.randn(n, 6, 8)
        keep = torch.ones(n, 6, dtype=torch.bool)
        y_grad, _, _, stats = layer(x, keep)
        with torch.inference_mode():
            y, _, _, s0 = layer(x, keep)
        assert torch.allclose(y, y_grad, atol=1e-6)
        assert s0.tokens_per_expert.tolist() == stats.tokens_per_expert.tolist()
        assert int(s0.dropped) == int(stats.dropped) and (int(s0.dropped) > 0) == (factor is not None)
    logits = torch.randn(1000, 8)
    fast, ref = route_top1_inference(logits), route(logits, 1)
    assert torch.equal(fast.experts, ref.experts) and fast.probs is None
    ulps = (fast.gates.view(torch.int32).long() - ref.gates.view(torch.int32).long()).abs()
    assert int(ulps.max()) <= 2      # positive floats: the ulp distance is that of their bits


def test_router_gets_a_gradient_with_top1():
    layer = MoEFeedForward(d_model=4, n_experts=2, d_expert=8, top_k=1)
    x = torch.randn(2, 3, 4)
    y, balance, z, _ = layer(x, torch.ones(2, 3, dtype=torch.bool))
    (y.pow(2).sum() + balance + z).backward()
    assert layer.router.weight.grad is not None and layer.router.weight.grad.abs().sum() > 0


def test_encoders_shapes_losses_and_twin_parameters():
    cfg = MoEConfig(vocab_size=50, n_fields=3, seq_len=6, d_model=16, n_layers=4, n_heads=2, d_ff=32,
                    n_experts=4, top_k=2, d_expert=16)
    moe = MoEEncoder(cfg)
    dense = DenseEncoder(twin_of(cfg))
    ids = torch.randint(2, 50, (5, 6, 3))
    ids[0, :2] = 0
    out = moe(ids)
    assert isinstance(out, EncoderOutput) and out.hidden.shape == (5, 7, 16)
    assert len(out.routing) == 2 and out.balance_loss.requires_grad and float(out.z_loss) > 0
    assert int(out.routing[0].routed) == (5 * 7 - 2) * 2                # CLS + non-pad tokens, k = 2
    d_out = dense(ids)
    assert d_out.routing == [] and float(d_out.balance_loss) == 0.0 and d_out.hidden.shape == (5, 7, 16)
    # same active parameters per token, but for the two routers' d * E weights and, with top-2,
    # the second active expert's output bias (d) in each MoE block
    assert moe.n_active_params - dense.n_active_params == 2 * 16 * 4 + 2 * 16
    per_expert = 2 * 16 * 16 + 16 + 16
    assert moe.n_params - dense.n_params == 2 * (16 * 4 + 4 * per_expert) - 2 * (2 * 16 * 32 + 32 + 16)
    assert [type(b.ff).__name__ for b in moe.blocks] == ["FeedForward", "MoEFeedForward"] * 2
    assert [b.ff.up.out_features for b in dense.blocks] == [32, 32, 32, 32]     # top_k * d_expert = 32
    z = pool(out.hidden, ids, "mean")
    assert z.shape == (5, 32) and torch.allclose(pool(out.hidden, ids, "last")[:, 16:], out.hidden[:, -1])


def test_pads_are_not_routed_nor_attended():
    torch.manual_seed(1)
    cfg = MoEConfig(vocab_size=30, n_fields=2, seq_len=5, d_model=16, n_layers=2, n_heads=2, d_ff=16,
                    n_experts=2, d_expert=16, dropout=0.0, eval_capacity_factor=100.0)
    moe = MoEEncoder(cfg).eval()
    b = torch.randint(2, 30, (1, 5, 2))
    b[0, :2] = 0
    with torch.no_grad():
        out = moe(b)
        # a pad's hidden state is garbage nobody reads: perturbing it must not move the others
        moe.embed.pos.weight[1] += 5.0
        out2 = moe(b)
    assert int(out.routing[0].routed) == 4                               # CLS + 3 tokens
    assert torch.allclose(out.hidden[:, [0, 3, 4, 5]], out2.hidden[:, [0, 3, 4, 5]], atol=1e-5)


def test_eval_is_dropless_by_default_and_training_enforces_capacity():
    layer = MoEFeedForward(d_model=4, n_experts=4, d_expert=8, top_k=1)   # eval_capacity_factor None
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[2] = 10.0                                      # everything wants expert 2
    x = torch.ones(2, 8, 4)
    keep = torch.ones(2, 8, dtype=torch.bool)
    layer.eval()
    _, _, _, stats = layer(x, keep)
    assert stats.tokens_per_expert.tolist() == [0, 0, 16, 0] and int(stats.dropped) == 0
    layer.train()
    _, _, _, stats = layer(x, keep)
    assert stats.tokens_per_expert.tolist() == [0, 0, 5, 0] and int(stats.dropped) == 11   # ceil(1.25*16/4)
