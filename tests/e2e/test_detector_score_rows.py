"""``score_rows(table, rows)`` of the host-history detectors (MoE/dense tokens, autoencoder) equals
``score(table)[rows]``: the other conns are context only. Live and split scoring rely on it to run
the models on the conns they score, not on an hour of context around them."""
from __future__ import annotations

import os

import numpy as np
import pytest

from zeekml.scoring.registry import get_kind
from zeekml.train.data import load_conns

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
SLICE = os.path.join(ROOT, "tests", "data", "mae", "conn.log.labeled")     # 900 real conns


@pytest.mark.parametrize("kind", ["moe", "dense", "mae"])
def test_score_rows_equals_scoring_the_whole_table(kind):
    det = get_kind(kind).detector(os.path.join(ROOT, "models", f"{kind}-base"), device="cpu")
    table = load_conns(SLICE)
    det.fit(table.slice(0, 300))        # scores are relative to a baseline (issue 14)
    full = det.score(table)
    rows = np.array([0, 5, 450, 451, 899, 300, 5])          # any order, repeats, the last conn
    part = det.score_rows(table, rows)
    assert part.shape == (len(rows),)
    assert np.allclose(part, full[rows], rtol=1e-5, atol=1e-5)
    # the context matters: the same conns scored without their history score otherwise
    alone = det.score(table.take(rows[:5]))
    assert not np.allclose(alone, full[rows[:5]], rtol=1e-3, atol=1e-3)
    assert det.score_rows(table, np.zeros(0, dtype=np.int64)).shape == (0,)
