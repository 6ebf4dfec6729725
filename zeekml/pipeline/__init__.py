"""The one place that sees every step: sources -> parse -> flows -> features -> nn -> scoring -> sinks.

- ``fitted``: detectors fitted and calibrated on a baseline, and scoring with them;
- ``batch``: what ``zeekml score`` runs (``score_paths``);
- ``dask``: the same on a Dask cluster (imported only with ``--dask``: it loads Dask);
- ``live``: what ``zeekml watch`` runs (``Watcher``);
- ``replay``: what ``zeekml replay`` runs (a capture through Zeek or the flow meter, then scored).
"""
from zeekml.pipeline.batch import load_conns, score_paths
from zeekml.pipeline.fitted import FittedDetectors, fit_calibrate, score_fitted
from zeekml.pipeline.live import LiveContext, Watcher, WatchOptions, WatchStats, status_line
from zeekml.pipeline.options import ScoreOptions, ScoreSummary

__all__ = ["FittedDetectors", "LiveContext", "ScoreOptions", "ScoreSummary", "WatchOptions",
           "WatchStats", "Watcher", "fit_calibrate", "load_conns", "score_fitted", "score_paths",
           "status_line"]
