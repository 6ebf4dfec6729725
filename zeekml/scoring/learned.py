"""Learned detectors from model directories (the GNN, MoE and autoencoder), for score and watch.

A model directory whose ``config.json`` has ``"detector": true`` is loaded through its kind's
``KIND.detector(model_dir, device)``, which returns an object with the ``Detector`` protocol.
``fit`` on such a detector only prepares calibration inputs: its weights stay as trained.
"""
from __future__ import annotations

import glob
import json
import logging
import os

from zeekml.scoring.detector import Detector

log = logging.getLogger(__name__)


def default_models_dir() -> str:
    """``$ZEEKML_MODELS``, else ``models/`` of the source checkout."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.environ.get("ZEEKML_MODELS", os.path.join(here, "models"))


def detector_dirs(root: str) -> list[str]:
    out = []
    for cfg_path in sorted(glob.glob(os.path.join(root, "*", "config.json"))):
        try:
            with open(cfg_path) as f:
                cfg = json.load(f)
        except (OSError, ValueError):
            continue
        if cfg.get("detector"):
            out.append(os.path.dirname(cfg_path))
    return out


def load_learned_detectors(root: str, device: str = "cpu") -> list[Detector]:
    from zeekml.train.registry import get_kind

    dets = []
    for d in detector_dirs(root):
        with open(os.path.join(d, "config.json")) as f:
            kind = json.load(f)["kind"]
        dets.append(get_kind(kind).detector(d, device))
        log.info("loaded detector %s from %s", kind, d)
    return dets
