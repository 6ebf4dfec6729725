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
