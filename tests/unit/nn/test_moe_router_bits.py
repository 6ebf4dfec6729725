"""The MoE's inference router gives a token the same bits wherever it sits in a batch: its
softmax runs along the tokens in vector registers and took the last ``t % 16`` columns through
a scalar ``exp`` (other bits), so a conn's MoE score depended on how many conns were scored
with it (score vs watch vs dask)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from zeekml.nn.moe import ROUTER_COLS, route, route_top1_inference  # noqa: E402


def test_a_token_routes_to_the_same_bits_in_any_batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4 * ROUTER_COLS + 7, 8, generator=g)
    ref = route_top1_inference(logits)
    for start, size in [(0, 1), (0, 17), (3, 29), (100, 61), (5, 200), (250, 13)]:
        part = route_top1_inference(logits[start:start + size])
        assert torch.equal(part.gates, ref.gates[start:start + size]), (start, size)
        assert torch.equal(part.experts, ref.experts[start:start + size]), (start, size)


def test_the_inference_router_chooses_as_the_training_router():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(300, 8, generator=g)
    fast, slow = route_top1_inference(logits), route(logits, 1)
    assert torch.equal(fast.experts, slow.experts)
    torch.testing.assert_close(fast.gates, slow.gates, rtol=0, atol=1e-6)
    assert route_top1_inference(logits[:0]).gates.shape == (0, 1)
