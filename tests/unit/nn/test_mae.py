"""The multi-modal autoencoder module: shapes, parameter count, the per-modality normalised loss
(exact values on hand-built tensors), masking, and that it learns."""
from __future__ import annotations

import pytest
import torch

from zeekml.nn.mae import (EmbeddingClassifier, MAEConfig, MAEOutput, MultiModalAutoencoder,
                           mae_loss, reconstruction_error)


def test_shapes_and_architecture():
    cfg = MAEConfig(quantity_dim=10, seq_channels=4, entity_dim=7)
    m = MultiModalAutoencoder(cfg)
    out = m(torch.randn(5, 10), torch.randn(5, 32, 4), torch.randn(5, 7))
    assert out.embedding.shape == (5, 64)
    assert out.quantity.shape == (5, 10) and out.sequence.shape == (5, 32, 4) and out.entity.shape == (5, 7)
    enc = [l for l in m.encoder if isinstance(l, torch.nn.Linear)]
    dec = [l for l in m.decoder if isinstance(l, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in enc] == [(96, 512), (512, 256), (256, 64)]
    assert [(l.in_features, l.out_features) for l in dec] == [(64, 256), (256, 512)]
    integration = 96 * 512 + 512 + 512 * 256 + 256 + 256 * 64 + 64 + 64 * 256 + 256 + 256 * 512 + 512
    heads = 512 * 10 + 10 + 512 * 128 + 128 + 512 * 7 + 7
    adapters = sum(p.numel() for a in (m.quantity_adapter, m.sequence_adapter, m.entity_adapter)
                   for p in a.parameters())
    assert m.n_params == integration + heads + adapters
    assert MAEConfig.from_dict(cfg.to_dict()) == cfg


def test_each_adapter_sees_only_its_own_modality():
    torch.manual_seed(0)
    m = MultiModalAutoencoder(MAEConfig(quantity_dim=6, seq_channels=3, entity_dim=5)).eval()
    q, s, e = torch.randn(4, 6), torch.randn(4, 32, 3), torch.randn(4, 5)
    a = m.quantity_adapter(q)
    e2 = e + 10.0
    assert torch.equal(m.quantity_adapter(q), a)
    assert not torch.allclose(m.encode(q, s, e), m.encode(q, s, e2))
    # each adapter's first layer is as wide as its own modality, nothing more
    assert m.quantity_adapter.net[0].in_features == 6
    assert m.entity_adapter.net[0].in_features == 5
    assert m.sequence_adapter.conv[0].in_channels == 3


def test_loss_is_sum_of_per_modality_mse_each_over_its_width():
    q, s, e = torch.zeros(2, 4), torch.zeros(2, 32, 1), torch.zeros(2, 2)
    out = MAEOutput(embedding=torch.zeros(2, 64),
                    quantity=torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 0.0, 0.0]]),
                    sequence=torch.ones(2, 32, 1) * torch.tensor([0.5, 0.0]).view(2, 1, 1),
                    entity=torch.tensor([[3.0, 0.0], [0.0, 0.0]]))
    err = reconstruction_error(out, q, s, e)
    assert err.quantity.tolist() == [1.0, 1.0]                 # 4/4 and 4/4
    assert err.sequence.tolist() == [0.25, 0.0]                # 32*0.25/32
    assert err.entity.tolist() == [4.5, 0.0]                   # 9/2
    assert err.total.tolist() == [5.75, 1.0]
    assert float(mae_loss(out, q, s, e)) == pytest.approx(3.375)
    # blanked columns leave both the numerator and the width
    keep = torch.tensor([True, True, False, False])
    assert reconstruction_error(out, q, s, e, quantity_keep=keep).quantity.tolist() == [1.0, 2.0]
    rowkeep = (torch.tensor([[1.0, 1.0], [1.0, 1.0]]) * torch.tensor([[0.0], [1.0]])
               + torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
    assert reconstruction_error(out, q, s, e, entity_keep=rowkeep).entity.tolist() == [0.0, 0.0]


def test_autoencoder_learns_to_reconstruct():
    torch.manual_seed(0)
    m = MultiModalAutoencoder(MAEConfig(quantity_dim=8, seq_channels=2, entity_dim=6, hidden=(64, 32),
                                        embed_dim=8))
    base = torch.randn(32, 3)
    q = base @ torch.randn(3, 8)
    e = base @ torch.randn(3, 6)
    s = (base @ torch.randn(3, 64)).view(32, 32, 2)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    first = float(mae_loss(m(q, s, e), q, s, e).detach())
    for _ in range(60):
        loss = mae_loss(m(q, s, e), q, s, e)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.2 * first


def test_classifier_head_shape():
    assert EmbeddingClassifier(64, 3)(torch.randn(5, 64)).shape == (5, 3)
