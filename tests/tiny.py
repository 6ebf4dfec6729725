"""Tiny model settings and the labeled conn log the learned-model tests train on.

One place for them: the kind contract test, LP-FT, explanation and embed-once tests pretrain the
same tiny models on the same 400 real IoT-23 conns (tests/data/README.md), so each kind trains in
seconds. Imported as ``from tiny import ...`` (pytest puts tests/ on sys.path for its conftest).
"""
from __future__ import annotations

import os

LABELED_LOG = os.path.join(os.path.dirname(__file__), "data", "gnn", "iot23-ctu-34-1-head400.conn.log.labeled")

TINY_TOKEN: dict = {"d_model": 16, "n_layers": 2, "n_heads": 2, "d_ff": 32, "n_experts": 4, "d_expert": 16,
                    "batch_size": 64, "seq_len": 8}
# Per kind; a kind not listed trains one epoch of its defaults.
TINY: dict[str, dict] = {
    "gnn": {"hidden": 16, "segment_flows": 400},
    "moe": TINY_TOKEN,
    "dense": TINY_TOKEN,
    "mae": {"batch_size": 128},
}


def pretrain_tiny(table, out: str, kind: str, **extra) -> dict:
    """Pretrain ``kind``'s tiny model (``TINY``, plus ``extra`` settings) on ``table`` (read
    from ``LABELED_LOG``) into ``out``, one epoch on the CPU, seed 0; its metrics."""
    from zeekml.train.registry import get_trainer

    return get_trainer(kind).pretrain(table, out, sources=[LABELED_LOG], seed=0, epochs=1, device="cpu",
                                      **(TINY.get(kind, {}) | extra))
