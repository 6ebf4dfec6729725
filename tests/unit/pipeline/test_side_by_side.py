"""``zeekml.pipeline.side_by_side``: how many detectors run side by side, and the runner."""
from __future__ import annotations

import _thread
import threading
import time

import pytest

from zeekml._core.errors import ZeekmlError
from zeekml.pipeline import side_by_side as sbs


@pytest.fixture
def env(monkeypatch):
    for name in (sbs.THREADS_ENV, "ZEEKML_TORCH_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_plan_is_one_detector_per_core_with_the_cores_shared(env):
    assert sbs.plan(4, cores=2) == sbs.SideBySide(2, 1)
    assert sbs.plan(4, cores=16) == sbs.SideBySide(4, 4)      # every core still works
    assert sbs.plan(3, cores=8) == sbs.SideBySide(3, 2)
    assert sbs.plan(1, cores=8) == sbs.IN_TURN                # one detector: nothing to overlap
    assert sbs.plan(4, cores=1) == sbs.IN_TURN


def test_plan_keeps_the_kernel_threads_the_environment_asks_for(env):
    env.setenv("OMP_NUM_THREADS", "1")
    assert sbs.plan(4, cores=2) == sbs.SideBySide(2, 1)
    env.setenv("ZEEKML_TORCH_THREADS", "2")
    assert sbs.plan(4, cores=2) == sbs.IN_TURN                # two threads fill both cores
    assert sbs.plan(4, cores=8) == sbs.SideBySide(4, 2)


def test_plan_detector_threads_from_the_environment(env):
    env.setenv(sbs.THREADS_ENV, "1")
    assert sbs.plan(4, cores=16) == sbs.IN_TURN
    env.setenv(sbs.THREADS_ENV, "3")
    assert sbs.plan(4, cores=2) == sbs.SideBySide(3, 1)
    assert sbs.plan(2, cores=2) == sbs.SideBySide(2, 1)       # never more than the detectors
    for bad in ("0", "-1", "two"):
        env.setenv(sbs.THREADS_ENV, bad)
        with pytest.raises(ZeekmlError, match=sbs.THREADS_ENV):
            sbs.plan(4, cores=2)


def test_run_in_turn_calls_in_order_in_this_thread():
    seen = []

    def call(name):
        seen.append((name, threading.current_thread() is threading.main_thread()))
        return name.upper()

    got = sbs.run({n: (lambda n=n: call(n)) for n in "abc"}, sbs.IN_TURN)
    assert got == {"a": "A", "b": "B", "c": "C"}
    assert seen == [("a", True), ("b", True), ("c", True)]


def test_run_side_by_side_overlaps_the_calls_and_keeps_their_order():
    # each of the first two calls waits for the other: in turn, the barrier would time out
    meet = threading.Barrier(2, timeout=10)

    def call(name, wait):
        if wait:
            meet.wait()
        return name * 2

    calls = {"x": lambda: call("x", True), "y": lambda: call("y", True), "z": lambda: call("z", False)}
    got = sbs.run(calls, sbs.SideBySide(2, 1))
    assert list(got) == ["x", "y", "z"]
    assert got == {"x": "xx", "y": "yy", "z": "zz"}


def test_run_raises_the_first_error_in_call_order_after_every_call_ended():
    ended = []

    def slow_fail():
        time.sleep(0.2)
        ended.append("a")
        raise ValueError("a failed")

    def fast_fail():
        ended.append("b")
        raise KeyError("b failed")

    def fine():
        time.sleep(0.3)
        ended.append("c")
        return 1

    with pytest.raises(ValueError, match="a failed"):
        sbs.run({"a": slow_fail, "b": fast_fail, "c": fine}, sbs.SideBySide(2, 1))
    assert sorted(ended) == ["a", "b", "c"]


def test_run_sets_kernel_threads_inside_and_back_after():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    inside = []
    sbs.run({"a": lambda: inside.append(torch.get_num_threads()), "b": lambda: None},
            sbs.SideBySide(2, 1))
    assert inside == [1]
    assert torch.get_num_threads() == before


def test_an_interrupt_stops_the_wait_at_once_and_starts_no_other_call():
    release = threading.Event()
    started = []

    def interrupts():
        started.append("a")
        _thread.interrupt_main()          # what Ctrl-C does to the waiting thread
        release.wait(30)

    def blocks():
        started.append("b")
        release.wait(30)

    def never():
        started.append("c")

    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            sbs.run({"a": interrupts, "b": blocks, "c": never}, sbs.SideBySide(2, 1))
        assert time.monotonic() - t0 < 10          # not waiting for the blocked calls
    finally:
        release.set()
    time.sleep(0.2)
    assert "c" not in started                      # nothing starts after the interrupt


def test_meanwhile_runs_in_the_calling_thread_while_the_calls_run_side_by_side():
    # each call waits for the calling thread's own work: were it done before or after the
    # calls, the event would time out
    done = threading.Event()
    seen = []

    def call(name):
        return name if done.wait(10) else None

    def meanwhile():
        seen.append(threading.current_thread() is threading.main_thread())
        done.set()

    got = sbs.run({"a": lambda: call("a"), "b": lambda: call("b")}, sbs.SideBySide(2, 1), meanwhile)
    assert got == {"a": "a", "b": "b"} and seen == [True]
    # one call alone still runs beside it
    done.clear()
    seen.clear()
    assert sbs.run({"a": lambda: call("a")}, sbs.SideBySide(2, 1), meanwhile) == {"a": "a"}
    assert seen == [True]


def test_meanwhile_runs_before_the_calls_in_turn_and_with_no_calls():
    order = []
    got = sbs.run({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, sbs.IN_TURN,
                  lambda: order.append("meanwhile"))
    assert order == ["meanwhile", "a", "b"] and list(got) == ["a", "b"]
    order.clear()
    assert sbs.run({}, sbs.SideBySide(2, 1), lambda: order.append("meanwhile")) == {}
    assert order == ["meanwhile"]


def test_an_error_of_meanwhile_is_raised_and_starts_no_other_call():
    release = threading.Event()
    started = []

    def blocks(name):
        started.append(name)
        release.wait(10)

    def fails():
        raise OSError("rendering failed")

    try:
        with pytest.raises(OSError, match="rendering failed"):
            sbs.run({n: (lambda n=n: blocks(n)) for n in "abc"}, sbs.SideBySide(2, 1), fails)
    finally:
        release.set()
    time.sleep(0.2)
    assert "c" not in started


# -- Lanes: a detector's calls in order, different detectors' side by side, across chunks ----------

def test_lanes_run_a_lanes_calls_one_at_a_time_in_order_and_lanes_side_by_side():
    """Lane "a"'s later call (chunk 1) starts while lane "b"'s chunk 0 call still runs, as a
    detector done with a chunk starts the next; no lane ever runs two calls at once."""
    lock = threading.Lock()
    running: dict[str, int] = {}
    overlap = []
    seen = []
    b_may_end = threading.Event()

    def call(lane, chunk, wait=None):
        def go():
            with lock:
                running[lane] = running.get(lane, 0) + 1
                overlap.append(running[lane])
                seen.append((lane, chunk))
            if lane == "a" and chunk == 1:
                b_may_end.set()               # b's chunk 0 is still running: side by side
            if wait is not None:
                assert wait.wait(10)
            with lock:
                running[lane] -= 1
            return (lane, chunk)
        return go

    with sbs.Lanes(sbs.SideBySide(2, 1)) as lanes:
        b0 = lanes.submit("b", call("b", 0, b_may_end), order=0)
        a0 = lanes.submit("a", call("a", 0), order=0)
        a1 = lanes.submit("a", call("a", 1), order=1)
        a2 = lanes.submit("a", call("a", 2), order=2)
        assert sbs.collect({"b0": b0, "a0": a0, "a1": a1, "a2": a2}) == \
            {"b0": ("b", 0), "a0": ("a", 0), "a1": ("a", 1), "a2": ("a", 2)}
    assert max(overlap) == 1
    assert [x for x in seen if x[0] == "a"] == [("a", 0), ("a", 1), ("a", 2)]


def test_lanes_a_free_thread_takes_the_lowest_order_of_an_idle_lane():
    """A call of an earlier chunk submitted after a later one of its lane (chunk i's
    explanation after chunk i + 1's score) runs first when neither has started."""
    gate = threading.Event()
    seen = []

    def call(name, wait=None):
        def go():
            if wait is not None:
                assert wait.wait(10)
            seen.append(name)
        return go

    with sbs.Lanes(sbs.SideBySide(2, 1)) as lanes:
        # both threads held, so that the calls below queue before any starts
        held = [lanes.submit("x", call("x", gate)), lanes.submit("y", call("y", gate))]
        later = lanes.submit("a", call("a-score-1"), order=1)
        earlier = lanes.submit("a", call("a-explain-0"), order=0)
        gate.set()
        sbs.collect({"x": held[0], "y": held[1], "later": later, "earlier": earlier})
    assert seen.index("a-explain-0") < seen.index("a-score-1")


def test_a_wide_lane_runs_two_of_its_calls_at_once_in_order_and_a_narrow_one_never():
    """``widths``: lane "c" (a classifier, whose calls share nothing) starts its chunk 1 while
    its chunk 0 still runs, each on a thread of its own; lane "n" (width 1, the default) still
    runs one call at a time. A wide lane's calls start in their order."""
    lock = threading.Lock()
    running: dict[str, int] = {}
    most: dict[str, int] = {}
    started = []
    both = threading.Event()

    def call(lane, chunk):
        def go():
            with lock:
                running[lane] = running.get(lane, 0) + 1
                most[lane] = max(most.get(lane, 0), running[lane])
                started.append((lane, chunk))
                if running.get("c") == 2:
                    both.set()
            if lane == "c":
                both.wait(5)                  # chunk 0 ends only once chunk 1 has started
            else:
                time.sleep(0.05)              # long enough for the other thread to start one
            with lock:
                running[lane] -= 1
        return go

    with sbs.Lanes(sbs.SideBySide(2, 1), widths={"c": 2}) as lanes:
        futures = {f"c{i}": lanes.submit("c", call("c", i), order=i) for i in range(4)}
        sbs.collect(futures)
        assert both.is_set() and most["c"] == 2
        futures = {f"n{i}": lanes.submit("n", call("n", i), order=i) for i in range(4)}
        sbs.collect(futures)
    assert most["n"] == 1
    assert [c for lane, c in started if lane == "c"] == [0, 1, 2, 3]


def test_lanes_in_turn_run_each_call_at_submit_in_this_thread():
    seen = []
    with sbs.Lanes(sbs.IN_TURN) as lanes:
        f = lanes.submit("a", lambda: seen.append(threading.current_thread() is threading.main_thread()) or 1)
        assert f.done() and f.result() == 1 and seen == [True]
        with pytest.raises(ZeroDivisionError):          # at once: no later call starts
            lanes.submit("a", lambda: 1 / 0)
        order = []
        got = lanes.at(0).run({"a": lambda: order.append("a") or "A", "b": lambda: order.append("b") or "B"},
                              meanwhile=lambda: order.append("meanwhile"))
    assert got == {"a": "A", "b": "B"} and order == ["meanwhile", "a", "b"]


def test_lane_run_keeps_runs_contract():
    """``Lanes.at(i).run``: results in the calls' order, the first error in that order raised
    once every call ended, ``meanwhile`` in the calling thread while the calls run."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    ended = []
    release = threading.Event()

    def slow_fail():
        assert release.wait(10)
        ended.append("slow")
        raise ValueError("slow")

    def fast_fail():
        ended.append("fast")
        raise KeyError("fast")

    with sbs.Lanes(sbs.SideBySide(2, 1)) as lanes:
        inside = lanes.submit("t", torch.get_num_threads).result()
        with pytest.raises(ValueError, match="slow"):
            lanes.at(0).run({"a": slow_fail, "b": fast_fail}, meanwhile=release.set)
        assert sorted(ended) == ["fast", "slow"]
        seen = []
        got = lanes.at(1).run({"a": lambda: "A", "b": lambda: "B"},
                              meanwhile=lambda: seen.append(threading.current_thread() is threading.main_thread()))
        assert list(got.items()) == [("a", "A"), ("b", "B")] and seen == [True]
    assert inside == 1                               # each kernel on one thread inside the block
    assert torch.get_num_threads() == before         # and set back after
    assert not sbs.running()                         # the threads ended with the block
