"""int8 dynamic quantisation (``zeekml.nn.quantize``), the path bench/score_speed.py --tooling
measures against eager: it quantises the linear layers of a copy, leaves the model alone, and
keeps the shipped models' anomaly scores within the stated ``SCORE_RTOL`` of float32."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from zeekml.nn.quantize import SCORE_RTOL, quantize_int8, relative_spread_difference

ROOT = Path(__file__).resolve().parents[3]
MODELS = ROOT / "models"
LOG = ROOT / "examples" / "iot23" / "conn.log.labeled"


def test_quantises_a_copy_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)).eval()
    before = [p.clone() for p in model.parameters()]
    q = quantize_int8(model)
    assert all(isinstance(m, nn.Linear) for m in model if not isinstance(m, nn.GELU))
    assert "Quantized" in type(q[0]).__name__ or "quantized" in type(q[0]).__module__
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    x = torch.randn(64, 8)
    with torch.inference_mode():
        assert relative_spread_difference(model(x), q(x)) < 0.05


def test_relative_spread_difference_values():
    ref = torch.tensor([0.0, 1.0, 2.0])
    assert relative_spread_difference(ref, ref) == 0.0
    assert relative_spread_difference(ref, torch.tensor([0.0, 1.5, 2.0])) == pytest.approx(0.25)
    assert relative_spread_difference(torch.ones(3), torch.ones(3)) == 0.0
    assert relative_spread_difference(torch.ones(3), torch.tensor([1.0, 2.0, 1.0])) == float("inf")


@pytest.mark.parametrize("name", ["moe-base", "dense-base"])
def test_shipped_token_models_stay_within_the_stated_tolerance(name):
    if not (MODELS / name / "config.json").exists():
        pytest.skip(f"models/{name} not shipped")
    from zeekml.flows.table import conn_table
    from zeekml.parse import Quarantine, read_log
    from zeekml.scoring.detectors.token import LoadedTokenModel

    table = conn_table(list(read_log(str(LOG), Quarantine()))).slice(0, 512)
    loaded = LoadedTokenModel.from_dir(str(MODELS / name))
    ids = torch.as_tensor(loaded.tokens(table))
    with torch.inference_mode():
        ref = loaded._nll(ids, None)
        loaded.encoder, loaded.mlm = quantize_int8(loaded.encoder), quantize_int8(loaded.mlm)
        q = loaded._nll(ids, None)
    assert np.isfinite(q.numpy()).all()
    assert relative_spread_difference(ref, q) <= SCORE_RTOL
