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
import heapq
import itertools
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol, TypeVar

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

    def run(self, calls: dict[str, Callable[[], T]],
            meanwhile: Callable[[], object] | None = None) -> dict[str, T]:
        """``run(calls, self, meanwhile)``."""
        return run(calls, self, meanwhile)


IN_TURN = SideBySide(1, 0)


class Runner(Protocol):
    """What runs a set of detector calls: a ``SideBySide`` plan or one chunk's ``Lane``."""

    def run(self, calls: dict[str, Callable[[], T]],
            meanwhile: Callable[[], object] | None = None) -> dict[str, T]: ...


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

    with kernel_threads(how.kernel_threads):
        threads: list[threading.Thread] = []
        try:
            start_threads(work, min(how.workers, len(names)), threads)
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


class Lanes:
    """Detector calls of several chunks on ``how.workers`` daemon threads, a *lane* per
    detector: a lane's calls run one at a time, in the order of their ``order`` keys (then of
    submission), so a detector object is never used by two threads at once and sees its calls
    in the order it would in turn; different lanes' calls run side by side. A free thread takes,
    of the lanes not running, the call with the lowest key.

    Why (``zeekml score`` beyond one chunk, ``pipeline.chunked``): with one ``run`` per chunk,
    a chunk's four scoring calls (gnn, mae, moe, iforest) split 3.5 against 2.9 s over the two
    threads at best, and its explanations wait on the main thread's rendering of its verdict
    lines, so a core idled ~1 s of each ~4 s chunk (bench/README.md). Here a detector done
    with chunk ``i`` scores chunk ``i + 1`` while another still scores chunk ``i``, and chunk
    ``i``'s explanations and lines overlap chunk ``i + 1``'s scoring. A detector's calls then
    come as ``score(i)``, ``score(i + 1)``, ``explain(i)``: ``explain`` must not depend on what
    ``score`` keeps between calls (the GNN's and the token models' states: theirs do not).

    ``widths``: lanes that may run up to that many of their calls at once (started in their
    order): a detector whose calls on different tables share nothing (``calls_side_by_side``,
    the known-bad classifiers) scores chunks ``i`` and ``i + 1`` on both threads, instead of
    one thread while the other waits on the cheap IsolationForest's lane (the committee on
    300k conns of an infected archive). Each call still runs with the same kernel threads, so
    its bits are those of its call in turn.

    With one worker (``IN_TURN``) ``submit`` runs the call at once in the calling thread (an
    error raised at once): the same calls in the same order per detector. Use as a context
    manager: the kernel threads are set for the block (``kernel_threads``) and the threads end
    with it (on an error or an interrupt they are not waited for: see the module docstring)."""

    def __init__(self, how: SideBySide, widths: dict[str, int] | None = None):
        self.how = how
        self.widths = dict(widths or {})
        self._cond = threading.Condition()
        self._queued: dict[str, list] = {}        # lane -> heap of (order, seq, call, future)
        self._busy: dict[str, int] = {}           # lane -> its calls running
        self._seq = itertools.count()
        self._stop = False
        self._threads: list[threading.Thread] = []
        self._limits: contextlib.ExitStack | None = None

    def __enter__(self) -> "Lanes":
        if self.how.workers > 1:
            self._limits = contextlib.ExitStack()
            self._limits.enter_context(kernel_threads(self.how.kernel_threads))
            start_threads(self._work, self.how.workers, self._threads)
        return self

    def __exit__(self, kind, value, tb) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if kind is None:
            for t in self._threads:
                t.join()
        if self._limits is not None:
            self._limits.close()

    def submit(self, lane: str, call: Callable[[], T], order: int = 0) -> "Future[T]":
        """``call()`` in lane ``lane``, after the lane's calls of lower ``order`` (and of the same
        one submitted before it) that have not started; its result (or exception) in the
        future."""
        done: Future = Future()
        if self.in_turn:
            # an error (or Ctrl-C) is raised here at once, and no later call starts, as ``run``
            # in turn does
            done.set_result(call())
            return done
        with self._cond:
            if self._stop:
                raise RuntimeError("Lanes closed")
            heapq.heappush(self._queued.setdefault(lane, []), (order, next(self._seq), call, done))
            self._cond.notify()
        return done

    @property
    def in_turn(self) -> bool:
        """Whether calls run at once in the calling thread (one worker)."""
        return not self._threads

    def at(self, order: int) -> "Lane":
        """A ``Runner`` whose calls go to the lanes of their names with key ``order``."""
        return Lane(self, order)

    def _next(self) -> tuple[str, Callable, Future] | None:
        with self._cond:
            while not self._stop:
                heads = [(q[0][0], q[0][1], lane) for lane, q in self._queued.items()
                         if q and self._busy.get(lane, 0) < self.widths.get(lane, 1)]
                if heads:
                    lane = min(heads)[2]
                    _, _, call, done = heapq.heappop(self._queued[lane])
                    self._busy[lane] = self._busy.get(lane, 0) + 1
                    return lane, call, done
                self._cond.wait()
            return None

    def _work(self) -> None:
        while (got := self._next()) is not None:
            lane, call, done = got
            try:
                done.set_result(call())
            except BaseException as e:  # noqa: BLE001  raised where the result is read
                done.set_exception(e)
            finally:
                with self._cond:
                    self._busy[lane] -= 1
                    self._cond.notify_all()


@dataclass(frozen=True)
class Lane:
    """``Lanes.at(order)``: ``run`` as ``side_by_side.run`` does (results in ``calls``' order,
    the first error in that order raised once every call ended, ``meanwhile`` in the calling
    thread while they run), each call in the lane of its name."""

    lanes: Lanes
    order: int

    def run(self, calls: dict[str, Callable[[], T]],
            meanwhile: Callable[[], object] | None = None) -> dict[str, T]:
        if self.lanes.in_turn and meanwhile is not None:
            meanwhile()                      # in turn: before the calls, as ``run`` does
            meanwhile = None
        futures = {name: self.lanes.submit(name, call, self.order) for name, call in calls.items()}
        if meanwhile is not None:
            meanwhile()
        return collect(futures)


def collect(futures: dict[str, "Future[T]"]) -> dict[str, T]:
    """The results of ``futures``, in their order, once every one is done; the first error in
    that order raised."""
    for f in futures.values():
        f.exception()                        # waits, raises nothing
    return {name: f.result() for name, f in futures.items()}


# The threads of ``run`` and ``Lanes`` from before their start to the end of their loop. Not
# ``Thread.is_alive``: Ctrl-C inside ``Thread.join`` marks the joined thread stopped while it
# still computes (CPython 3.11, bpo-45274's fix releases the tstate lock the running thread
# holds), so ``running`` said no, the CLI finalised the interpreter under torch, and the
# process aborted (exit -6 when Ctrl-C came a moment after the fits began; a test).
_alive: set[threading.Thread] = set()
_alive_lock = threading.Lock()


def start_threads(loop: Callable[[], None], n: int, into: list[threading.Thread]) -> None:
    """Start ``n`` daemon threads running ``loop``, each appended to ``into`` as it starts (so
    a caller interrupted midway knows the ones started), each counted by ``running`` from
    before its start to the end of ``loop``."""
    def counted() -> None:
        try:
            loop()
        finally:
            with _alive_lock:
                _alive.discard(threading.current_thread())

    for i in range(n):
        t = threading.Thread(target=counted, name=f"{THREAD_NAME}-{i}", daemon=True)
        with _alive_lock:
            _alive.add(t)
        into.append(t)
        t.start()


def running() -> bool:
    """Whether threads of ``run`` or ``Lanes`` still compute (the waiting thread was
    interrupted)."""
    with _alive_lock:
        return bool(_alive)
