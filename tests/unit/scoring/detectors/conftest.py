"""Fixtures of the detector tests: the shipped GNN fitted on real conns."""
from __future__ import annotations

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))))
GNN_MODEL = os.path.join(ROOT, "models", "gnn-base")
# 400 real conns over 32 minutes, a median 2.8 s apart: graph windows of 5 s hold several
GNN_LOG = os.path.join(ROOT, "tests", "data", "gnn", "iot23-ctu-34-1-head400.conn.log.labeled")


@pytest.fixture(scope="module")
def fitted_gnn():
    """``(detector, table, its scores of the whole table)``: the shipped GNN detector fitted on
    the first 150 of ``GNN_LOG``'s conns, one per test module (a module's tests may change its
    live state)."""
    if not os.path.exists(os.path.join(GNN_MODEL, "config.json")):
        pytest.skip("models/ not shipped")
    pytest.importorskip("torch_geometric")
    from zeekml.scoring.registry import get_kind
    from zeekml.train.data import load_conns

    det = get_kind("gnn").detector(GNN_MODEL, device="cpu")
    table = load_conns(GNN_LOG)
    det.fit(table.slice(0, 150))
    return det, table, det.score(table)
