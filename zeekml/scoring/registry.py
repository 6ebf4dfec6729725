"""The one registry of model kinds, and the one way a ``--models`` directory becomes detectors.

A model kind registers its inference half with a decorator in its own module under
``zeekml.scoring.detectors``::

    @register_kind("gnn")
    class GNNKind:
        schema_version = 1
        def __init__(self, name: str): ...
        def detector(self, model_dir: str, device: str = "cpu") -> Detector: ...

Every module of that package is imported on first use of the registry (they import ``torch``
only when a model is loaded, so listing kinds is cheap); training registers its half beside it
(``zeekml.train.registry``). The CLI's ``--model`` choices come from ``kind_names()``.

Adding a model kind:

1. ``zeekml/scoring/detectors/<kind>.py``: ``@register_kind("<kind>")`` on a class with
   ``schema_version`` and ``detector(model_dir, device)``, returning a ``Detector``
   (``zeekml.scoring.detector``); read the directory with ``detectors.base.load_checked``.
2. ``zeekml/train/<kind>.py``: ``@register_trainer("<kind>")`` on a ``zeekml.train.common.Trainer``
   with ``pretrain``/``finetune``/``predict``; write ``config.json`` with
   ``common.model_config`` (it carries ``schema_version``).
3. ``tests/unit/scoring/test_model_kind_contract.py`` runs the contract on it (give it tiny
   settings in ``TINY`` there so it trains in seconds).
"""
from __future__ import annotations

import importlib
import logging
import os
import pkgutil
from collections.abc import Callable
from typing import TYPE_CHECKING

from zeekml._core.errors import ModelError

if TYPE_CHECKING:
    from zeekml.scoring.detector import Detector, ModelKind

log = logging.getLogger(__name__)

_KINDS: dict[str, ModelKind] = {}
_CLASSIFIER: Callable[[str, str], Detector] | None = None
_discovered = False


def register_kind(*names: str) -> Callable[[type], type]:
    """Class decorator: register ``cls(name)`` as the model kind ``name`` for each of ``names``
    (one class may serve several kinds, as ``moe`` and its ``dense`` twin)."""
    if not names:
        raise TypeError("register_kind needs at least one kind name")

    def deco(cls: type) -> type:
        for name in names:
            if name in _KINDS and type(_KINDS[name]) is not cls:
                raise ValueError(f"model kind {name!r} registered twice "
                                 f"({type(_KINDS[name]).__qualname__} and {cls.__qualname__})")
            _KINDS[name] = cls(name)
        return cls

    return deco


def register_classifier(factory: Callable[[str, str], Detector]) -> Callable[[str, str], Detector]:
    """Function decorator: ``factory(model_dir, device)`` turns a finetuned classifier directory
    into a detector (``zeekml.scoring.detectors.classifier``). Registered, not imported here, so
    that the registry imports no detector module (they import it)."""
    global _CLASSIFIER
    if _CLASSIFIER is not None and _CLASSIFIER is not factory:
        raise ValueError("a classifier detector factory is registered twice")
    _CLASSIFIER = factory
    return factory


def classifier_detector(model_dir: str, device: str = "cpu") -> Detector:
    """The known-bad detector of a finetuned classifier directory (the registered factory)."""
    _discover()
    if _CLASSIFIER is None:
        raise ModelError("this zeekml has no classifier detector", model_dir)
    return _CLASSIFIER(model_dir, device)


def _discover() -> None:
    """Import every module of ``zeekml.scoring.detectors`` once, so their decorators run."""
    global _discovered
    if _discovered:
        return
    import zeekml.scoring.detectors as pkg

    for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{pkg.__name__}.{mod.name}")
    _discovered = True


def kind_names() -> tuple[str, ...]:
    """Names of every registered model kind, sorted."""
    _discover()
    return tuple(sorted(_KINDS))


def get_kind(name: str) -> ModelKind:
    """The registered kind ``name``; an unknown name is a ``ModelError`` listing the known ones."""
    _discover()
    try:
        return _KINDS[name]
    except KeyError:
        raise ModelError(f"unknown model kind {name!r}; available: {', '.join(sorted(_KINDS))}") from None


# -- --models ----------------------------------------------------------------------------------

def default_models_dir() -> str:
    """``$ZEEKML_MODELS``, else the shipped models (a wheel's package data or the checkout's
    ``models/``: ``zeekml._core.resources.shipped_models_dir``, a ``ModelError`` when none)."""
    from zeekml._core.resources import shipped_models_dir

    return shipped_models_dir()


def _is_model_dir(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, f)) for f in ("config.json", "manifest.json"))


def model_dirs(models_dir: str) -> list[str]:
    """The model directories ``models_dir`` names: itself when it is one (it has a
    ``config.json`` or ``manifest.json``), else its sub-directories that are. A missing
    directory, or one holding no model directory, is a ``ModelError``."""
    if not os.path.isdir(models_dir):
        what = "not a directory" if os.path.exists(models_dir) else "no such directory"
        raise ModelError(f"--models: {what}", models_dir)
    if _is_model_dir(models_dir):
        return [models_dir]
    try:
        names = os.listdir(models_dir)
    except OSError as e:
        raise ModelError(f"--models: cannot list: {e.strerror}", models_dir) from e
    found = sorted(os.path.join(models_dir, d) for d in names
                   if os.path.isdir(os.path.join(models_dir, d)) and _is_model_dir(os.path.join(models_dir, d)))
    if not found:
        raise ModelError("--models: no model directory here (one with config.json and manifest.json, "
                         "or a directory of them); pretrain one or use --no-models", models_dir)
    return found


def detector_dirs(models_dir: str) -> list[str]:
    """The model directories of ``models_dir`` that ``score`` uses as detectors: those whose
    config says ``"detector": true`` (anomaly detectors, and classifiers shipped on by default),
    and a finetuned classifier named by ``models_dir`` itself. A broken config is a
    ``ModelError``; so is a non-detector when ``models_dir`` is that directory itself. Beside
    others, a base that says ``"detector": false`` (the dense twin) is left out, and so is a
    classifier without ``"detector": true`` (logged, with how to use it)."""
    from zeekml.scoring.detectors.base import is_classifier, read_config

    dirs = model_dirs(models_dir)
    single = dirs == [models_dir]
    out = []
    for d in dirs:
        cfg = read_config(d)
        if cfg.get("detector") is True or (single and is_classifier(cfg)):
            out.append(d)
        elif is_classifier(cfg):
            # off by default is the directory's own decision (config), so no warning on every run
            log.info("%s: a finetuned classifier not on by default (config \"detector\": false), "
                     "not used; give it to --models by itself to use it", d)
        elif single:
            raise ModelError("not an anomaly detector (config.json has no \"detector\": true); give a "
                             "detector model directory or a directory of them", d)
        else:
            log.info("%s: not a detector (config \"detector\": false), not used by score", d)
    if not out:
        raise ModelError("--models: no anomaly detector here (config.json \"detector\": true), nor a "
                         "finetuned classifier given by itself", models_dir)
    return out


def load_model_detectors(models_dir: str, device: str = "cpu") -> list[Detector]:
    """The learned detectors of ``--models``: ``models_dir`` is a model directory or a
    directory of model directories ("" = the shipped models, ``default_models_dir()``). A
    pretrained base becomes its kind's anomaly detector, a finetuned classifier a ``classifier``
    detector (``zeekml.scoring.detectors.classifier``). Anything that cannot be used (missing,
    broken, altered weights, two detectors of one name) is a one-line ``ModelError`` (exit 5)
    naming it, never a silent fallback to fewer detectors."""
    models_dir = models_dir or default_models_dir()
    from zeekml.scoring.detectors.base import is_classifier, read_config

    dets: list[Detector] = []
    for d in detector_dirs(models_dir):
        cfg = read_config(d)
        kind = cfg.get("kind")
        if not isinstance(kind, str):
            raise ModelError("config.json has no \"kind\"", d)
        # a classifier's factory knows its kinds, composite ones (a committee) included
        if kind not in kind_names() and not is_classifier(cfg):
            raise ModelError(f"unknown model kind {kind!r}; this zeekml knows {', '.join(kind_names())}", d)
        det = classifier_detector(d, device) if is_classifier(cfg) else get_kind(kind).detector(d, device)
        if any(x.name == det.name for x in dets):
            # thresholds and verdict scores are keyed by detector name
            raise ModelError(f"a second detector named {det.name!r}; rename one of the directories", d)
        dets.append(det)
        log.info("loaded detector %s from %s", det.name, d)
    return dets
