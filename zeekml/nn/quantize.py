"""int8 dynamic quantisation of a model's linear layers, for CPU inference.

Not the default path: eager float32 is the reference, and every shipped detector scores with it.
``torch.ao.quantization`` is deprecated in torch 2.13 in favour of torchao (not a dependency);
it still works, with a warning.
``bench/score_speed.py --tooling`` measures this (and ``torch.compile``) against eager on the
same inputs in one run and prints the speed and the largest score difference; bench/README.md
has the figures. ``SCORE_RTOL`` is the tolerance a quantised model's scores are held to
(tests/unit/nn/test_quantize.py checks it on the shipped models).

What is quantised: every ``torch.nn.Linear`` (attention projections, dense feed-forward blocks,
heads, the autoencoder's layers). The MoE's experts are stacked weight tensors multiplied with
``addmm``, not ``Linear`` modules, so they stay float32.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

SCORE_RTOL = 0.1
"""Largest difference of an anomaly score, int8 vs float32, relative to the float32 scores'
spread (``relative_spread_difference``), that the shipped token models stay within. Measured
(bench/score_speed.py --tooling, 8k CTU-34-1 conns): dense-base 0.036, mae-base 0.041, moe-base
0.096. That is far more than a threshold can absorb (verdicts near it would flip), which is why
eager float32 stays the only scoring path; int8 ran 1.1-1.5x faster."""


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) with its ``nn.Linear`` layers int8-quantised
    dynamically (weights int8, activations quantised per batch); ``model`` is left as it is.

    Raises:
        RuntimeError: this torch build has no quantised CPU engine.
    """
    engines = torch.backends.quantized.supported_engines
    if not any(e in engines for e in ("x86", "fbgemm", "qnnpack", "onednn")):
        raise RuntimeError(f"this torch build has no quantised CPU engine (supported: {engines})")
    q = copy.deepcopy(model).eval().cpu()
    return torch.ao.quantization.quantize_dynamic(q, {nn.Linear}, dtype=torch.qint8)


def relative_spread_difference(reference: torch.Tensor, other: torch.Tensor) -> float:
    """``max|other - reference| / (max reference - min reference)`` (0 when the spread is 0 and
    the tensors are equal): how far scores move relative to how far apart they are."""
    ref, oth = reference.double().flatten(), other.double().flatten()
    diff = float((oth - ref).abs().max()) if ref.numel() else 0.0
    spread = float(ref.max() - ref.min()) if ref.numel() else 0.0
    if spread == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / spread
