"""The windows ``zeekml watch`` has closed but not written yet, and when it writes them.

``Watcher._loop`` reads, closes a window (``Watcher._close_window``: its conns go to be scored),
and writes and commits closed windows in order (``Watcher._finish_window``) once their scores
are in. When that is depends on where they are scored: ``Windows`` (in the watcher, or each in
one ``ScorePool`` process) or ``Releases`` (a ``DetectorPool``'s processes, each owning some of
the detectors of a time context).
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable

import pyarrow as pa

from zeekml.pipeline.live.pool import DetectorPool, Release
from zeekml.scoring.allowlist import Allowlist
from zeekml.sinks.verdicts import RenderedVerdicts


@dataclass
class ClosedWindow:
    """A closed window waiting for its scores: what its commit needs, taken when it closed."""

    scored: RenderedVerdicts | None
    ticket: int | None
    quarantine: list[bytes]
    files: dict
    done: set
    journal: bytes | None = None
    log_time: float | None = None    # the newest ts the window read (closes incidents)
    flush: bool = False              # --once end: every open incident closes
    suricata: dict | None = None     # row -> the Suricata alerts joined onto its conn
    suricata_state: list | None = None   # the alerts still waiting for their flow, as of now
    conns: pa.Table | None = None    # the scored conns (rows as in ``scored``): incident evidence
    release: Release | None = None   # a release scored by the DetectorPool's processes ...
    allowlist: Allowlist | None = None   # ... rendered with the rules as of its close


class InFlight:
    """The windows closed but not written yet, in order, and when ``Watcher._loop`` writes and
    commits them (``finish_window``: ``Watcher._finish_window``); the subclasses say when."""

    busy = False

    def __init__(self, finish_window: Callable[[ClosedWindow], None]):
        self.windows: deque[ClosedWindow] = deque()
        self._finish_window = finish_window

    def finish(self, most: int) -> None:
        """Write the oldest windows until at most ``most`` are left (waiting for their scores)."""
        while len(self.windows) > most:
            self._finish_window(self.windows.popleft())

    def before_close(self) -> None:
        """Called before a window closes."""

    def closed(self, w: ClosedWindow) -> None:
        """A window closed (``Watcher._close_window``)."""
        self.windows.append(w)

    def settle(self, stopping: bool, idle: bool, once: bool) -> None:
        """At the end of each turn of the loop: write what may be written now."""
        raise NotImplementedError

    def wait(self, seconds: float, stop: threading.Event) -> None:
        """The idle loop's wait of up to ``seconds`` (a stop request ends it)."""
        stop.wait(seconds)


class Windows(InFlight):
    """Windows scored in this process or each in one of ``workers`` ``ScorePool`` processes:
    one window in flight per process (a second send could block on a full pipe while the
    process blocks sending its result); with none, each is finished at once."""

    def __init__(self, finish_window: Callable[[ClosedWindow], None], workers: int):
        super().__init__(finish_window)
        self.workers = workers

    def before_close(self) -> None:
        self.finish(max(0, self.workers - 1))

    def settle(self, stopping: bool, idle: bool, once: bool) -> None:
        self.finish(0 if stopping or idle else self.workers)


class Releases(InFlight):
    """Windows whose releases a ``DetectorPool`` scores. A release goes to every process, one
    at a time: the watcher scores its own share, then goes on reading and closing windows
    while the processes score theirs; a release decided meanwhile waits in the pool's queue and
    is sent once they answer (``DetectorPool.pump``), and the windows are written and committed
    in order as their scores come in. Before, the watcher waited for the processes at its next
    window close and read nothing meanwhile: the release after a long one was decided before
    the backlog was read (short), the backlog went into the one after (long), and at 5,000
    conns/s releases alternated short and long (docs/results/watch.md, "releases that stay
    short")."""

    def __init__(self, finish_window: Callable[[ClosedWindow], None], dpool: DetectorPool):
        super().__init__(finish_window)
        self.dpool = dpool

    @property
    def busy(self) -> bool:
        return self.dpool.busy

    def finish_answered(self) -> None:
        """The windows, in order, as far as their scores are in (no waiting)."""
        self.dpool.pump()
        while self.windows and (self.windows[0].release is None
                                or self.dpool.answered(self.windows[0].release)):
            self._finish_window(self.windows.popleft())

    def closed(self, w: ClosedWindow) -> None:
        super().closed(w)
        self.finish_answered()      # the last release, while the processes score this one
        if w.release is not None:
            self.dpool.score_own(w.release)

    def settle(self, stopping: bool, idle: bool, once: bool) -> None:
        if stopping or (once and idle):
            self.finish(0)
        else:
            self.finish_answered()

    def wait(self, seconds: float, stop: threading.Event) -> None:
        # while the processes score, wake when they answer (``DetectorPool.wait``): their
        # verdicts are written and the next release is sent then
        if self.dpool.busy:
            self.dpool.wait(seconds)
        else:
            stop.wait(seconds)
