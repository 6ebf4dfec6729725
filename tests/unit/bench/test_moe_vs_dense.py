"""bench/moe_vs_dense.py's speed bound of a sparse feed-forward (``ffn=W:DIR``, ``ffn-alt=W:DIR``):
the dense model with its feed-forward blocks cut to ``W`` units, everywhere or at the MoE positions
only, loads as a detector and keeps every other weight; and ``arch:`` values parse as ints, floats
or words. The benchmark itself (which needs ../shared/data) is run by hand."""
from __future__ import annotations

import os

import numpy as np
import pytest
from bench_script import load_bench

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DENSE = os.path.join(ROOT, "models", "dense-causal")
MOE = os.path.join(ROOT, "models", "moe-causal")
# 400 real conns of IoT-23 CTU-34-1 (tests/data/README.md)
LOG = os.path.join(ROOT, "tests", "data", "gnn", "iot23-ctu-34-1-head400.conn.log.labeled")


@pytest.fixture(scope="module")
def mvd():
    return load_bench("moe_vs_dense")


def test_arch_values_are_ints_floats_or_words(mvd):
    assert mvd._arch_value("64") == 64 and isinstance(mvd._arch_value("64"), int)
    assert mvd._arch_value("1.25") == 1.25
    assert mvd._arch_value("causal_window") == "causal_window"


@pytest.mark.parametrize("what, cut", [("ffn-alt", {1, 3}), ("ffn", {0, 1, 2, 3})])
def test_ffn_variant_cuts_the_feed_forward_blocks_and_keeps_the_rest(mvd, what, cut):
    torch = pytest.importorskip("torch")
    if not os.path.exists(os.path.join(DENSE, "config.json")):
        pytest.skip("models/ not shipped")
    from zeekml.scoring.detectors.base import read_config
    from zeekml.scoring.registry import get_kind
    from zeekml.train.data import load_conns

    out = mvd.ffn_variant(f"{what}=3:{DENSE}")
    src = torch.load(os.path.join(DENSE, "weights.pt"), weights_only=True)
    got = torch.load(os.path.join(out, "weights.pt"), weights_only=True)
    assert set(got) == set(src)
    for name, w in src.items():
        block = int(name.split(".")[2]) if name.startswith("encoder.blocks.") else None
        if block in cut and ".ff." in name and not name.endswith("down.bias"):
            # the first 3 units of the trained block
            want = w[:3] if ".up." in name else w[:, :3]
            assert torch.equal(got[name], want), name
        else:
            assert torch.equal(got[name], w), name
    enc = read_config(out)["encoder"]
    assert enc["d_ff_alt"] == 3 and enc["d_ff"] == (3 if what == "ffn" else read_config(DENSE)["encoder"]["d_ff"])
    # it loads and scores as the twin's detector does (its scores mean nothing: a speed bound)
    det = get_kind(read_config(out)["kind"]).detector(out)
    table = load_conns([LOG])
    det.fit(table)
    scores = det.reference.score(det._reference_input(table))
    assert len(scores) == table.num_rows and np.isfinite(scores).all()


def test_ffn_variant_refuses_a_model_that_is_not_dense(mvd):
    if not os.path.exists(os.path.join(MOE, "config.json")):
        pytest.skip("models/ not shipped")
    with pytest.raises(SystemExit, match="not a dense token model"):
        mvd.ffn_variant(f"ffn=1:{MOE}")
