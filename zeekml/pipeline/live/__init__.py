"""``zeekml watch``: score a live Zeek log directory, window by window, exactly once.

See ``zeekml.pipeline.live.watcher`` for the loop and its guarantees.
"""
from zeekml.pipeline.live.watcher import LiveContext, Watcher, WatchOptions, WatchStats, status_line

__all__ = ["LiveContext", "WatchOptions", "WatchStats", "Watcher", "status_line"]
