"""Older entry points of the learned detectors, kept for callers that still use them.

The one way a ``--models`` directory becomes detectors is
``zeekml.scoring.registry.load_model_detectors``; these names forward to it.
"""
from __future__ import annotations

from zeekml.scoring.detector import Detector
from zeekml.scoring.registry import default_models_dir, detector_dirs, load_model_detectors

__all__ = ["default_models_dir", "detector_dirs", "load_learned_detectors"]


def load_learned_detectors(root: str, device: str = "cpu") -> list[Detector]:
    """``load_model_detectors(root, device)``."""
    return load_model_detectors(root, device)
