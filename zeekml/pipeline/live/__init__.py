"""``zeekml watch``: score a live Zeek log directory, window by window, exactly once.

``watcher`` (the follower loop, ``Watcher``), ``context`` (``LiveContext``: conns held for
detectors with a time context), ``journal`` (``ContextJournal``), ``pool`` (``ScorePool``:
forked processes scoring whole windows; ``DetectorPool``: forked processes each owning some
detectors with a time context), ``calibration``, ``outputs`` (``OutputFiles``, ``VerdictDedup``),
``options`` (``WatchOptions``, ``WatchStats``, ``status_line``), ``malloc`` (memory tuning).
"""
from zeekml.pipeline.live.context import LiveContext
from zeekml.pipeline.live.journal import ContextJournal
from zeekml.pipeline.live.options import WatchOptions, WatchStats, status_line
from zeekml.pipeline.live.outputs import OutputFiles, VerdictDedup
from zeekml.pipeline.live.pool import ScorePool, score_window
from zeekml.pipeline.live.watcher import Watcher

__all__ = ["ContextJournal", "LiveContext", "OutputFiles", "ScorePool", "VerdictDedup",
           "WatchOptions", "WatchStats", "Watcher", "score_window", "status_line"]
