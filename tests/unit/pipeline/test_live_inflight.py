"""When ``zeekml watch`` writes the windows it has closed (``pipeline.live.inflight``): in order,
one window in flight per scoring process for ``Windows``, as far as the ``DetectorPool`` has
answered for ``Releases`` (the e2e tests check the bytes; these the order and the waits)."""
from __future__ import annotations

import threading

from zeekml.pipeline.live.inflight import ClosedWindow, Releases, Windows
from zeekml.sinks.verdicts import RenderedVerdicts


def _window(name: str, release=None) -> ClosedWindow:
    return ClosedWindow(RenderedVerdicts(), None, [name.encode()], {}, set(), release=release)


def _names(ws) -> list[str]:
    return [w.quarantine[0].decode() for w in ws]


def test_windows_keep_one_in_flight_per_process_and_write_in_order():
    written = []
    flight = Windows(written.append, workers=2)
    for name in "abc":
        flight.before_close()
        flight.closed(_window(name))
        flight.settle(stopping=False, idle=False, once=False)
    # before each close at most workers - 1 wait, after it at most workers
    assert _names(written) == ["a"] and _names(flight.windows) == ["b", "c"]
    flight.settle(stopping=False, idle=True, once=False)     # idle: everything is written
    assert _names(written) == ["a", "b", "c"] and not flight.windows
    assert not flight.busy


def test_windows_scored_in_the_watcher_are_written_at_once():
    written = []
    flight = Windows(written.append, workers=0)
    flight.before_close()
    flight.closed(_window("a"))
    flight.settle(stopping=False, idle=False, once=False)
    assert _names(written) == ["a"]


class FakePool:
    """A ``DetectorPool`` whose answers the test gives (``done``), recording what was asked."""

    def __init__(self):
        self.done: set[str] = set()
        self.calls: list[str] = []
        self.busy = False

    def pump(self) -> None:
        self.calls.append("pump")

    def answered(self, rel: str) -> bool:
        return rel in self.done

    def score_own(self, rel: str) -> None:
        self.calls.append(f"own {rel}")

    def wait(self, seconds: float) -> None:
        self.calls.append(f"wait {seconds}")


def test_releases_are_written_in_order_as_far_as_answered():
    written, pool = [], FakePool()
    flight = Releases(written.append, pool)
    flight.closed(_window("a", release="r1"))
    # the last release is looked at first, then the watcher scores its own share of this one
    assert pool.calls == ["pump", "own r1"]
    flight.closed(_window("b"))                   # a window that released nothing
    flight.closed(_window("c", release="r2"))
    pool.done.add("r2")                            # r2 answered before r1: nothing goes out of order
    flight.settle(stopping=False, idle=False, once=False)
    assert written == []
    pool.done.add("r1")
    flight.settle(stopping=False, idle=False, once=False)
    assert _names(written) == ["a", "b", "c"]


def test_releases_are_all_written_when_stopping_or_at_the_end_of_once():
    for kw in ({"stopping": True, "idle": False, "once": False},
               {"stopping": False, "idle": True, "once": True}):
        written, pool = [], FakePool()
        flight = Releases(written.append, pool)
        flight.closed(_window("a", release="r1"))
        flight.settle(**kw)                        # finish(0): collects even unanswered ones
        assert _names(written) == ["a"]


def test_releases_wait_on_the_processes_only_while_they_score():
    pool, stop = FakePool(), threading.Event()
    flight = Releases(lambda w: None, pool)
    stop.set()                                     # a stop wait returns at once
    flight.wait(0.05, stop)
    assert pool.calls == [] and not flight.busy
    pool.busy = True
    flight.wait(0.05, stop)
    assert pool.calls == ["wait 0.05"] and flight.busy
