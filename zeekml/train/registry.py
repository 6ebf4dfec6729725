"""The training half of every model kind, registered beside the inference half
(``zeekml.scoring.registry``) under the same name.

A kind's training module under ``zeekml.train`` decorates its trainer class::

    @register_trainer("gnn")
    class GNNTrainer:
        def __init__(self, name: str): ...
        def pretrain(self, table, out, sources, seed=0, epochs=None, device="cpu", flows=None, **opts) -> dict
        def finetune(self, base, table, labels, train_rows, hide_service, seed, out, sources,
                     label_field=None, epochs=None, device="cpu", flows=None, **opts) -> dict
        def predict(self, model_dir, table, device="cpu", flows=None) -> Prediction

- ``pretrain``: self-supervised (labels ignored); writes a model dir (``config.json`` with ``kind``
  and ``schema_version``); returns metrics for the manifest.
- ``finetune``: ``base`` None = from scratch; only ``train_rows`` may be used for training
  (graph models may read the other rows' features for context, never their labels).
- ``predict``: class probabilities or anomaly scores of a model dir.

Every module of ``zeekml.train`` that is not one of the shared ones below is imported on first
use, so adding a kind is one file here and one under ``zeekml/scoring/detectors/``.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable

from zeekml._core.errors import ZeekmlError

# shared modules of the training side, not kinds
SHARED = {"artifact", "common", "data", "metrics", "protocol", "registry"}

_TRAINERS: dict[str, Any] = {}
_missing: dict[str, str] = {}     # module -> the optional dependency it lacks
_discovered = False


def register_trainer(*names: str) -> Callable[[type], type]:
    """Class decorator: register ``cls(name)`` as the trainer of each kind in ``names``."""
    def deco(cls: type) -> type:
        for name in names:
            if name in _TRAINERS and type(_TRAINERS[name]) is not cls:
                raise ValueError(f"trainer {name!r} registered twice")
            _TRAINERS[name] = cls(name)
        return cls

    return deco


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    import zeekml.train as pkg

    for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if mod.name in SHARED or mod.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"{pkg.__name__}.{mod.name}")
        except ModuleNotFoundError as e:
            # an optional dependency (torch_geometric) missing from this install: that kind
            # only is unavailable, and saying so is get_trainer's job
            _missing[mod.name] = e.name or str(e)
    _discovered = True


def trainer_names() -> tuple[str, ...]:
    """Kinds with a registered trainer, sorted."""
    _discover()
    return tuple(sorted(_TRAINERS))


def get_trainer(name: str) -> Any:
    """The trainer of kind ``name`` (a one-line error when unknown or not installed)."""
    _discover()
    if name in _TRAINERS:
        return _TRAINERS[name]
    if _missing:
        lacking = ", ".join(f"{m} needs {d}" for m, d in sorted(_missing.items()))
        raise ZeekmlError(f"model {name!r} is not available in this build ({lacking})")
    raise ZeekmlError(f"unknown model {name!r}; available: {', '.join(sorted(_TRAINERS))}")


def get_kind(name: str) -> Any:
    """``get_trainer(name)`` (the name older callers use)."""
    return get_trainer(name)
