"""Old import path of ``zeekml.pipeline.live`` (kept for one release; import from there)."""
from zeekml.pipeline.live import (ContextJournal, LiveContext, OutputFiles, ScorePool, VerdictDedup,
                                  Watcher, WatchOptions, WatchStats, status_line)
from zeekml.pipeline.live.calibration import BASELINE_FIELDS, write_baseline_log
from zeekml.pipeline.live.options import (BASELINE_LOG, CALIBRATION, LOCK, NOTICES, OUTPUTS,
                                          QUARANTINE, STATS, VERDICTS)
from zeekml.sinks.verdicts import verdict_line

__all__ = ["BASELINE_FIELDS", "BASELINE_LOG", "CALIBRATION", "ContextJournal", "LOCK",
           "LiveContext", "NOTICES", "OUTPUTS", "OutputFiles", "QUARANTINE", "STATS", "ScorePool",
           "VERDICTS", "VerdictDedup", "WatchOptions", "WatchStats", "Watcher", "status_line",
           "verdict_line", "write_baseline_log"]
