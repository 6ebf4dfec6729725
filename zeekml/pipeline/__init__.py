"""The one place that sees every step: sources -> parse -> flows -> features -> nn -> scoring -> sinks.

- ``fitted``: detectors fitted and calibrated on a baseline, and scoring with them;
- ``batch``: what ``zeekml score`` runs (``score_paths``);
- ``dask``: the same on a Dask cluster (imported only with ``--dask``: it loads Dask);
- ``live``: what ``zeekml watch`` runs (``Watcher``);
- ``replay``: what ``zeekml replay`` runs (a capture through Zeek or the flow meter, then scored).
"""
from __future__ import annotations

import importlib
from typing import Any

from zeekml.pipeline.batch import load_conns, score_paths
from zeekml.pipeline.fitted import FittedDetectors, fit_calibrate, score_fitted
from zeekml.pipeline.options import ScoreOptions, ScoreSummary

# ``watch``'s names load on first use (PEP 562): ``zeekml score`` imports this package, and
# importing ``live`` eagerly made every score run load the watcher, its pools, journal,
# calibration and the tail follower (sources.tail, sources.checkpoint) that it never runs.
_LIVE = frozenset({"LiveContext", "Watcher", "WatchOptions", "WatchStats", "status_line"})


def __getattr__(name: str) -> Any:
    if name in _LIVE:
        return getattr(importlib.import_module("zeekml.pipeline.live"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LIVE)

__all__ = ["FittedDetectors", "LiveContext", "ScoreOptions", "ScoreSummary", "WatchOptions",
           "WatchStats", "Watcher", "fit_calibrate", "load_conns", "score_fitted", "score_paths",
           "status_line"]
