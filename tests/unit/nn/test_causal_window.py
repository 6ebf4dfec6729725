"""``attention="causal_window"`` (issue 15): a token encoder over host streams whose blocks
attend to a band of predecessors, so every conn of a stream is pushed through each block once.
Its output at a position depends on exactly that position and its ``seq_len - 1`` predecessors
(the full encoder's window); a position's bits do not depend on which other positions are
computed with it; ``"full"`` is today's encoder, unchanged."""
from __future__ import annotations

import pytest
import torch

from zeekml.nn.dense import DenseConfig, DenseEncoder, layer_spans, window_keys
from zeekml.nn.moe import MoEConfig, MoEEncoder, twin_of

CFG = dict(vocab_size=40, n_fields=3, seq_len=16, d_model=16, n_layers=4, n_heads=2, d_ff=32,
           dropout=0.0, attention="causal_window")


def encoders():
    torch.manual_seed(0)
    return [DenseEncoder(DenseConfig(**CFG)).eval(),
            MoEEncoder(MoEConfig(**CFG, n_experts=4, d_expert=16)).eval()]


def stream(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(2, 40, (n, 3), generator=torch.Generator().manual_seed(seed))


def test_spans_add_up_to_the_window():
    assert layer_spans(16, 4) == [4, 4, 4, 3]
    assert layer_spans(16, 2) == [8, 7]
    assert layer_spans(8, 4) == [2, 2, 2, 1]
    assert layer_spans(3, 4) == [1, 1, 0, 0]
    assert all(sum(layer_spans(L, n)) == L - 1 for L in range(1, 40) for n in range(1, 7))


@pytest.mark.parametrize("enc", encoders(), ids=["dense", "moe"])
def test_the_output_at_t_is_the_stream_cut_to_its_last_seq_len_tokens(enc):
    ids = stream(60)
    keys = window_keys(ids[None], max(enc.spans))
    with torch.inference_mode():
        whole = enc.forward_stream(ids, keys).hidden                        # [60, d]
        for t in (0, 3, 15, 16, 20, 59):
            cut = ids[max(0, t - 15):t + 1]
            alone = enc(cut[None]).hidden[0, -1]
            torch.testing.assert_close(alone, whole[t], rtol=0, atol=1e-6)
        # exactly the window: the token 16 back changes nothing, the one 15 back does
        far, near = ids.clone(), ids.clone()
        far[59 - 16] = torch.tensor([7, 8, 9])
        near[59 - 15] = torch.tensor([7, 8, 9])
        assert torch.equal(enc.forward_stream(far, keys).hidden[59], whole[59])
        assert not torch.equal(enc.forward_stream(near, keys).hidden[59], whole[59])


@pytest.mark.parametrize("enc", encoders(), ids=["dense", "moe"])
def test_a_position_gets_the_same_bits_whichever_others_are_computed(enc):
    ids = stream(300)
    keys = window_keys(ids[None], max(enc.spans))
    with torch.inference_mode():
        whole = enc.forward_stream(ids, keys).hidden
        for targets in ([299], [0, 1, 2], [5, 40, 41, 42, 250], list(range(100, 164))):
            t = torch.tensor(targets)
            some = enc.forward_stream(ids, keys, targets=t).hidden
            assert torch.equal(some, whole[t]), targets
        # a slice of the stream holding the cone of its targets: the same bits again
        part = enc.forward_stream(ids[200:260], window_keys(ids[None, 200:260], max(enc.spans)),
                                  targets=torch.tensor([15, 59])).hidden
        assert torch.equal(part, whole[[215, 259]])


@pytest.mark.parametrize("enc", encoders(), ids=["dense", "moe"])
def test_known_keys_and_values_of_an_earlier_pass_stop_the_cone(enc):
    """A live scorer keeps its last rows' keys and values at each block (``keep_kv``) and hands
    them back (``known``) for the next rows: the same bits, and the rows before are not
    recomputed (their tokens, scrambled, change nothing)."""
    ids = stream(120)
    keys = window_keys(ids[None], max(enc.spans))
    spans = enc.spans
    with torch.inference_mode():
        whole = enc.forward_stream(ids, keys).hidden
        keep = torch.arange(100 - max(spans), 100)
        first = enc.forward_stream(ids, keys, targets=torch.arange(80, 100), keep_kv=keep)
        assert torch.equal(first.hidden, whole[80:100])
        known = []
        for i, (kv, have) in enumerate(first.stream_kv):
            assert kv.shape == (len(keep), 2 * enc.config.d_model) and have.all()
            known.append((keep[-spans[i]:], kv[-spans[i]:]))
        scrambled = ids.clone()
        scrambled[:100] = stream(100, seed=7)
        for targets in ([100], [100, 101, 102], list(range(100, 120))):
            t = torch.tensor(targets)
            got = enc.forward_stream(scrambled, keys, targets=t, known=known).hidden
            assert torch.equal(got, whole[t]), targets
        # without them the scrambled tokens are read: other outputs
        assert not torch.equal(enc.forward_stream(scrambled, keys, targets=torch.tensor([100])).hidden,
                               whole[[100]])
        with pytest.raises(ValueError, match="known rows need targets"):
            enc.forward_stream(ids, keys, known=known)


@pytest.mark.parametrize("enc", encoders(), ids=["dense", "moe"])
def test_reach_limits_the_predecessors_a_position_attends_to(enc):
    ids = stream(16)[None]
    with torch.inference_mode():
        none = enc(ids, reach=torch.zeros(1, 16, dtype=torch.long)).hidden[0]
        for t in (0, 7, 15):                             # reach 0: each token on its own
            alone = enc(ids[:, t:t + 1]).hidden[0, 0]
            torch.testing.assert_close(none[t], alone, rtol=0, atol=1e-6)
        # reach 3 everywhere: the output at 15 reads positions 15-3*4.. only through hops of 3
        three = enc(ids, reach=torch.full((1, 16), 3)).hidden[0, -1]
        full = enc(ids).hidden[0, -1]
        assert not torch.equal(three, full)
        changed = ids.clone()
        changed[0, 0] = torch.tensor([7, 8, 9])          # 15 back: out of reach in 4 hops of 3
        assert torch.equal(enc(changed, reach=torch.full((1, 16), 3)).hidden[0, -1], three)


def test_leading_pads_of_a_window_are_not_attended_to():
    enc = encoders()[1]
    ids = stream(10)[None]
    padded = torch.cat([torch.zeros(1, 6, 3, dtype=torch.long), ids], dim=1)
    with torch.inference_mode():
        torch.testing.assert_close(enc(padded).hidden[0, 6:], enc(ids).hidden[0], rtol=0, atol=1e-6)
        assert torch.isfinite(enc(padded).hidden).all()


def test_training_reaches_the_offset_bias_and_every_block():
    enc = encoders()[1].train()
    ids = stream(40)
    out = enc.forward_stream(ids, window_keys(ids[None], max(enc.spans)))
    (out.hidden.square().sum() + out.balance_loss).backward()
    for i, block in enumerate(enc.blocks):
        assert block.attn.bias.grad is not None and block.attn.bias.grad.abs().sum() > 0, i
    assert enc.embed.tok.weight.grad.abs().sum() > 0


def test_full_attention_is_the_encoder_it_was():
    """The default stores no new key (a shipped config.json is what it was) and builds the same
    modules: CLS, absolute positions, no offset bias."""
    cfg = {k: v for k, v in CFG.items() if k != "attention"}
    d = DenseConfig(**cfg).to_dict()
    assert "attention" not in d and DenseConfig.from_dict(d).attention == "full"
    enc = MoEEncoder(MoEConfig(**cfg, n_experts=4, d_expert=16))
    names = {n for n, _ in enc.named_parameters()}
    assert {"embed.pos.weight", "embed.cls"} <= names and not any(n.endswith("attn.bias") for n in names)
    assert MoEConfig(**CFG).to_dict()["attention"] == "causal_window"
    assert twin_of(MoEConfig(**CFG)).attention == "causal_window"
    with pytest.raises(ValueError, match="attention 'sliding'"):
        DenseConfig(**{**CFG, "attention": "sliding"})
    with pytest.raises(ValueError, match="causal_window"):
        enc.forward_stream(stream(4), torch.zeros(4, 1, dtype=torch.long))


@pytest.mark.parametrize("enc", encoders(), ids=["dense", "moe"])
def test_a_stream_is_cut_to_the_rows_its_targets_read(enc, monkeypatch):
    """With targets, ``forward_stream`` embeds and projects only the rows the blocks read (the
    cone, the known rows, the rows to keep), renumbered (``_compact``): a live call's stream
    holds each host's latest conns as context that the kept state makes unread. The same bits
    as the whole stream's."""
    ids = stream(200)
    keys = window_keys(ids[None], max(enc.spans))
    spans = enc.spans
    embedded = []
    embed = enc.embed.forward
    monkeypatch.setattr(enc.embed, "forward", lambda x: embedded.append(len(x)) or embed(x))
    with torch.inference_mode():
        whole = enc.forward_stream(ids, keys).hidden
        keep = torch.arange(180 - max(spans), 180)
        first = enc.forward_stream(ids, keys, targets=torch.arange(170, 180), keep_kv=keep)
        known = [(keep[-s:], kv[-s:]) for s, (kv, _) in zip(spans, first.stream_kv)]
        embedded.clear()
        t = torch.tensor([180, 181, 190])
        got = enc.forward_stream(ids, keys, targets=t, known=known, keep_kv=torch.arange(187, 191))
        assert torch.equal(got.hidden, whole[t])
        assert embedded == [len(set(range(176, 191)))]               # not the 200 rows
        assert all(h.all() for _, h in got.stream_kv[:1])
