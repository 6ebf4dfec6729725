"""The one command protocol every model implements (pretrain, finetune, predict, eval).

A model kind is a module under ``zeekml.train`` exposing ``KIND``, an object with:

- ``name: str``
- ``pretrain(table: pa.Table, out: str, sources: list[str], seed: int, **opts) -> dict``
  (self-supervised; labels ignored; writes a model dir; returns metrics for the manifest)
- ``finetune(base: str | None, table: pa.Table, labels: np.ndarray, train_rows: np.ndarray,
  hide_service: bool, seed: int, out: str, sources: list[str], **opts) -> dict``
  (``base`` None = from scratch; only ``train_rows`` may be used for training; graph models may
  still read the other rows' features for context but never their labels)
- ``predict(model_dir: str, table: pa.Table, device: str = "cpu") -> Prediction``

Shared code around it (k-shot draws, metrics, plots, output files) lives in ``zeekml.train.protocol``.
"""
from __future__ import annotations

import importlib
from typing import Any

# kind name -> module implementing it (imported lazily: torch-geometric is slow to import)
KINDS: dict[str, str] = {
    "gnn": "zeekml.train.gnn",
    "moe": "zeekml.train.moe",
    "dense": "zeekml.train.moe",
    "mae": "zeekml.train.mae",
}


def get_kind(name: str) -> Any:
    from zeekml._core.errors import ZeekmlError

    if name not in KINDS:
        raise ZeekmlError(f"unknown model {name!r}; available: {', '.join(sorted(KINDS))}")
    try:
        mod = importlib.import_module(KINDS[name])
    except ModuleNotFoundError as e:
        raise ZeekmlError(f"model {name!r} is not available in this build ({e.name} missing)") from e
    kinds = getattr(mod, "KINDS", None)
    if isinstance(kinds, dict) and name in kinds:
        return kinds[name]
    return mod.KIND
