"""Old import path of ``zeekml.pipeline.live`` (kept for one release)."""
from zeekml.pipeline.live import LiveContext, Watcher, WatchOptions, WatchStats, status_line

__all__ = ["LiveContext", "WatchOptions", "WatchStats", "Watcher", "status_line"]
