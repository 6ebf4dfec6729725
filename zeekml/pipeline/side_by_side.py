"""Detectors run side by side, one thread each, instead of in turn with every core each.

``zeekml score`` fits, calibrates and scores each detector on its own (``pipeline.fitted``), and
a detector's work is mostly kernels that run without the GIL (torch's matrix products and
top-k, scikit-learn's tree building, numpy's large array operations). In turn, each kernel got
every core through torch's OpenMP threads, and the small products of a model of width 64 leave
them idle at every barrier: the 100k-conn log of ``bench/score_speed.py`` kept 1.44 of the 2
cores busy. Side by side with one kernel thread each, two detectors keep both cores busy
(bench/README.md has the measurement).

A detector's scores are the same bits side by side as in turn with one torch thread (each
runs the same kernels on the same inputs; the shared featurisation memo only shares pure
results, ``features.table_memo``). With more torch threads some last bits move (documented in
``_core.device.configure_torch_if_asked``), so the plan depends on the cores only, never on the
load: the same input gives the same verdicts on the same machine.

The threads are daemon threads: on Ctrl-C the main thread stops waiting at once and the CLI
exits (``zeekml: interrupted``) without waiting for a detector's fit to finish, which a thread
pool's exit handler would (minutes on a large input). The interpreter must not be finalised
under them, though: a daemon thread inside torch is ended by ``pthread_exit``, whose unwinding
through torch's C++ frames aborts the process (measured: exit status -6, "terminate called
without an active exception"), so the CLI leaves without finalising while ``running()``.
"""
from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from zeekml._core.device import asked_torch_threads, threads_from_env, usable_cores

T = TypeVar("T")

THREADS_ENV = "ZEEKML_DETECTOR_THREADS"
"""Environment variable: how many detectors run side by side (1: in turn, as before)."""

THREAD_NAME = "zeekml-detector"


@dataclass(frozen=True)
class SideBySide:
    """How detectors run: ``workers`` side by side, each kernel with ``kernel_threads`` threads
    (``workers == 1``: in turn, torch's and the BLAS's thread counts left as they are)."""

    workers: int
    kernel_threads: int


IN_TURN = SideBySide(1, 0)


def plan(tasks: int, cores: int | None = None) -> SideBySide:
    """How ``tasks`` detectors run on this machine.

    ``$ZEEKML_DETECTOR_THREADS`` (a positive integer) sets the detectors side by side; else one
    per usable core, at most one per detector. Each gets an equal share of the cores for its
    kernels, or the count ``$ZEEKML_TORCH_THREADS``/``$OMP_NUM_THREADS`` asks (then, without
    ``$ZEEKML_DETECTOR_THREADS``, only as many side by side as the cores hold at that count).
    A machine with one usable core runs them in turn.

    Raises ``ZeekmlError`` for a ``$ZEEKML_DETECTOR_THREADS`` that is not a positive integer.
    """
    cores = usable_cores() if cores is None else cores
    asked_kernel = asked_torch_threads()
    workers = threads_from_env(THREADS_ENV)
    if workers is None:
        workers = cores // asked_kernel if asked_kernel else cores
    workers = max(1, min(workers, tasks))
    if workers == 1:
        return IN_TURN
    return SideBySide(workers, asked_kernel or max(1, cores // workers))


@contextlib.contextmanager
def kernel_threads(n: int, user_api: str | None = "blas") -> Iterator[None]:
    """Threads of torch's intra-op kernels and of the native thread pools ``threadpoolctl``
    names ``user_api`` (the BLAS; None: every one, OpenMP's too) at ``n`` inside the block,
    set back after."""
    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")       # loaded with the learned detectors, if any
    before = torch.get_num_threads() if torch is not None else None
    try:
        if torch is not None:
            torch.set_num_threads(n)
        with threadpool_limits(n, user_api=user_api):
            yield
    finally:
        if before is not None:
            torch.set_num_threads(before)


def run(calls: dict[str, Callable[[], T]], how: SideBySide,
        meanwhile: Callable[[], object] | None = None) -> dict[str, T]:
    """``{name: call()}`` for every call, in ``calls``' order: in turn in this thread when
    ``how.workers`` is 1, else side by side in ``how.workers`` daemon threads, each taking the
    next call not yet started (give the costliest first: the last to start ends the run).

    ``meanwhile``: work of the calling thread's own, done while the calls run side by side
    (instead of waiting idle for them; ``fitted.score_batch`` renders the verdict lines while
    the alerts are explained), before them when they run in turn.

    The first call (in ``calls``' order) that raised has its exception raised here, once every
    started call has ended; an interrupt of the waiting thread, or an exception of
    ``meanwhile``, is raised at once, and no call starts after it."""
    names = list(calls)
    if how.workers <= 1 or not names or (len(names) < 2 and meanwhile is None):
        if meanwhile is not None:
            meanwhile()
        return {name: calls[name]() for name in names}
    results: dict[str, T] = {}
    errors: dict[str, BaseException] = {}
    pending = iter(names)
    take = threading.Lock()
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            with take:
                name = next(pending, None)
            if name is None:
                return
            try:
                results[name] = calls[name]()
            except BaseException as e:  # noqa: BLE001  raised in the calling thread, below
                errors[name] = e

    threads = [threading.Thread(target=work, name=f"{THREAD_NAME}-{i}", daemon=True)
               for i in range(min(how.workers, len(names)))]
    with kernel_threads(how.kernel_threads):
        try:
            for t in threads:
                t.start()
            if meanwhile is not None:
                meanwhile()
            for t in threads:
                t.join()
        except BaseException:
            stop.set()
            raise
    for name in names:
        if name in errors:
            raise errors[name]
    return {name: results[name] for name in names}


def running() -> bool:
    """Whether threads of ``run`` still compute (the waiting thread was interrupted)."""
    return any(t.name.startswith(THREAD_NAME) and t.is_alive() for t in threading.enumerate())
