"""Scoring a window of conns: in the watch process, or in forked scoring processes.

Two kinds of scoring processes. ``ScorePool`` (per-conn detectors only): each process scores
whole windows, in turn. ``DetectorPool`` (detectors with a time context: the learned ones):
each process owns some of the detectors and scores its share of every release, the watcher
the rest, so a detector always runs in the same process (state it keeps across releases stays
in one place) and the watcher keeps the one context (``live.context``), sending each process
only the context rows of its own detectors.
"""
from __future__ import annotations

import contextlib
import logging
import mmap
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from zeekml._core.errors import ZeekmlError
from zeekml.pipeline.fitted import FittedDetectors, score_batch
from zeekml.pipeline.live.malloc import (release_heap, thread_page_faults, trim_heap,
                                         use_release_heap)
from zeekml.pipeline.side_by_side import kernel_threads
from zeekml.scoring.allowlist import Allowlist, suppress
from zeekml.scoring.context import InContext
from zeekml.scoring.verdict import VerdictBatch
from zeekml.sinks.triage import mark_suppressed
from zeekml.sinks.verdicts import RenderedVerdicts, render_verdicts

log = logging.getLogger(__name__)


def render_allowed(batch: VerdictBatch, allowlist: Allowlist | None) -> RenderedVerdicts:
    """Render ``batch``; with an allowlist its matching conns never alert and their lines name
    the rule, exactly as ``zeekml score --allowlist`` writes them (``pipeline.batch``)."""
    if allowlist is None:
        return render_verdicts(batch)
    labels = suppress(batch, allowlist)
    rendered = render_verdicts(batch)
    mark_suppressed(rendered.lines, labels)
    return rendered


def score_window(table: pa.Table | None, fitted: FittedDetectors,
                 allowlist: Allowlist | None = None) -> RenderedVerdicts:
    """The verdicts of a window's conns, rendered (``sinks.verdicts.render_verdicts``), with
    ``allowlist`` applied."""
    if table is None or table.num_rows == 0:
        return RenderedVerdicts()
    return render_allowed(score_batch(table, fitted), allowlist)


def _child_setup(parent: int) -> None:
    """In a scoring process just forked: leave Ctrl-C to the parent and die with it."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the parent decides when to stop
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(0)


def _serve(conn, handle: Callable[[Any], Any]) -> None:
    """A scoring process's loop: each request in, ``handle(request)`` out (a failure as a
    one-line ``ZeekmlError`` the parent raises), until EOF, a ``None`` request or the parent's
    death."""
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            os._exit(0)
        if msg is None:
            os._exit(0)
        try:
            out = handle(msg)
        except Exception as e:  # noqa: BLE001 - reported by the parent as a scoring error
            out = ZeekmlError(f"scoring process failed: {type(e).__name__}: {e}")
        conn.send(out)


def _worker_main(conn, fitted: FittedDetectors, parent: int,
                 allowlist: Allowlist | None = None) -> None:
    """A scoring process: conn tables in, rendered verdicts out, until EOF or the parent dies."""
    _child_setup(parent)
    _serve(conn, lambda table: score_window(table, fitted, allowlist))


def _send(conn, msg: Any, fd: int | None = None) -> None:
    """Send ``msg`` to a scoring process, then the descriptor ``fd`` if given (passed over the
    pipe: SCM_RIGHTS); a dead process is a one-line ``ZeekmlError``."""
    try:
        conn.send(msg)
        if fd is not None:
            from multiprocessing.reduction import send_handle
            send_handle(conn, fd, 0)      # the pid is not used on Unix
    except OSError as e:
        raise ZeekmlError(f"a scoring process died ({e.strerror or e})") from e


def _receive(conn) -> Any:
    """A scoring process's answer; a dead process, or the failure it reported, is raised as a
    one-line ``ZeekmlError``."""
    try:
        out = conn.recv()
    except (EOFError, OSError) as e:
        raise ZeekmlError(f"a scoring process died ({e or 'EOF'})") from e
    if isinstance(out, ZeekmlError):
        raise out
    return out


def _fork(n: int, serve) -> tuple[list, list[int]]:
    """``n`` forked processes, each running ``serve(conn, parent_pid)`` on its end of a pipe;
    returns the watcher's ends and the process ids. os.fork rather than
    multiprocessing.Process: a watcher may itself run as a daemonic multiprocessing child
    (which may not start Process children)."""
    from multiprocessing.connection import Pipe

    conns: list = []
    pids: list[int] = []
    parent = os.getpid()
    for _ in range(n):
        mine, theirs = Pipe()
        pid = os.fork()
        if pid == 0:                           # the scoring process
            try:
                mine.close()
                for c in conns:
                    c.close()
                serve(theirs, parent)
            finally:
                os._exit(0)
        theirs.close()
        conns.append(mine)
        pids.append(pid)
    return conns, pids


def _close(conns: list, pids: list[int]) -> None:
    """Tell every process to exit, and reap it (killed after 5 s)."""
    for c in conns:
        try:
            c.send(None)
            c.close()
        except OSError:
            pass
    deadline = time.monotonic() + 5
    for pid in pids:
        while True:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                break
            time.sleep(0.01)


class ScorePool:
    """``n`` forked processes that score windows with the detectors fitted before the fork (no
    model is pickled), so reading and parsing overlap with scoring and windows are scored on
    several cores. Results come back in submission order. A worker dies with its parent
    (``PR_SET_PDEATHSIG``), so a kill -9 of ``watch`` leaves none behind."""

    def __init__(self, fitted: FittedDetectors, n: int, allowlist: Allowlist | None = None):
        self._next = 0
        self._conns, self._pids = _fork(
            n, lambda conn, parent: _worker_main(conn, fitted, parent, allowlist))

    @property
    def pids(self) -> list[int]:
        """Process ids of the scoring processes (empty once closed)."""
        return list(self._pids)

    def __len__(self) -> int:
        """How many scoring processes there are."""
        return len(self._conns)

    def submit(self, table: pa.Table) -> int:
        """Send a window's conns to the next process; returns the ticket for ``result``."""
        i = self._next % len(self._conns)
        self._next += 1
        _send(self._conns[i], table)
        return i

    def result(self, ticket: int) -> RenderedVerdicts:
        """The rendered verdicts of the window sent with ``ticket`` (in submission order)."""
        return _receive(self._conns[ticket])

    def close(self) -> None:
        """Tell every process to exit, and reap it (killed after 5 s)."""
        _close(self._conns, self._pids)
        self._pids = []


# The watch loop's own work beside its detectors (reading, parsing, the context cut, rendering,
# the commits), as a share of what the detectors cost: with every shipped detector 2.2 of the
# loop's 13.9 CPU s went outside them, 11.7 s inside (docs/results/watch.md, per-stage costs),
# so the watcher is counted as already that loaded when detectors are shared out.
WATCHER_SHARE = 0.2


def assign(costs: list[float], workers: int, watcher_share: float = WATCHER_SHARE,
           watcher_load: float | None = None) -> list[int]:
    """Which process scores each detector: ``0 .. workers - 1`` a scoring process, ``-1`` the
    watcher. The costliest first, each to the least loaded process (longest processing time
    first); the watcher starts loaded with its own work: ``watcher_load`` (in the units of
    ``costs``) where measured, else ``watcher_share`` of the total cost; a tie goes to a
    scoring process.

    Shapes: ``costs`` ``[detectors]``; returns ``[detectors]``."""
    start = watcher_share * float(sum(costs)) if watcher_load is None else float(watcher_load)
    loads = [0.0] * workers + [start]
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        j = min(range(len(loads)), key=lambda j: (loads[j], j))
        owner[i] = -1 if j == workers else j
        loads[j] += costs[i]
    return owner


def one_thread() -> contextlib.ExitStack:
    """Give torch (if loaded) and the BLAS/OpenMP libraries one thread in this process, so
    that the watcher and its scoring processes share the cores instead of each spinning threads
    on all of them (``side_by_side.kernel_threads``); closing what it returns sets the counts
    back. One thread also keeps a forked process off the OpenMP thread pool it inherited, whose
    threads do not exist in it (libgomp is not fork-safe; ATen runs a kernel inline with one
    thread)."""
    saved = contextlib.ExitStack()
    saved.enter_context(kernel_threads(1, user_api=None))
    return saved


def loads(owner: list[int], costs: list[float], workers: int, watcher_load: float) -> list[float]:
    """Each process's load under ``owner`` (``assign``'s answer): the scoring processes', then
    the watcher's (``watcher_load`` plus its detectors)."""
    out = [0.0] * workers + [float(watcher_load)]
    for o, c in zip(owner, costs):
        out[o] += c          # -1: the watcher, last
    return out


# The least share of the detectors' measured CPU a re-share leaves the watcher. By load alone
# (its own work counted) the watcher is handed the IsolationForest only, ~1% of the detectors'
# CPU, and each release is left to the scoring processes, two on 2 cores, with the watcher's own
# work contending for the same cores; in W's 120 s runs at 5,000/s every move the runs regretted
# was of that kind (releases grew to 25-30k conns after it; they also grow without such a move:
# docs/results/watch.md, "The share-out at 5,000/s")
MIN_WATCHER_SHARE = 0.15


def with_watcher_share(owner: list[int], costs: list[float], workers: int, watcher_load: float,
                       share: float = MIN_WATCHER_SHARE) -> list[int]:
    """``owner`` (``assign``'s answer), or, where its watcher scores detectors costing under
    ``share`` of ``costs`` in all, that share-out with one detector costing at least ``share``
    moved to the watcher from a scoring process that keeps another: the one that leaves the
    busiest process least loaded (ties: the cheapest). ``owner`` as it is where there is no
    such detector (a process that holds one detector keeps it: it is there because it costs
    more than the watcher's work and the rest)."""
    total = float(sum(costs))
    if not workers or sum(c for o, c in zip(owner, costs) if o < 0) >= share * total:
        return list(owner)
    best = None
    for i in sorted(range(len(costs)), key=lambda i: (costs[i], i)):
        if owner[i] < 0 or costs[i] < share * total or owner.count(owner[i]) < 2:
            continue
        moved = list(owner)
        moved[i] = -1
        load = max(loads(moved, costs, workers, watcher_load))
        if best is None or load < best[0]:
            best = (load, moved)
    return list(owner) if best is None else best[1]


# A new share-out is taken only where it promises the busiest process a load under this share of
# what it has now: moving a detector costs the state it keeps (the MoE's per-host keys
# and values are rebuilt), and a look's measured costs moved by up to ~25% from one look to the
# next at a steady rate (120 s runs at 5,000/s), so a smaller promised gain is mostly noise
REBALANCE_GAIN = 0.75


def rebalanced(owner: list[int], costs: list[float], workers: int, watcher_load: float,
               gain: float = REBALANCE_GAIN) -> list[int] | None:
    """A better share-out than ``owner`` by measured ``costs`` (CPU seconds per detector over
    the same releases) and the watcher's own measured work (``assign``'s, leaving the watcher
    ``MIN_WATCHER_SHARE`` of the detectors' cost: ``with_watcher_share``), or None where it
    does not bring the busiest process's load below ``gain`` times what it is now."""
    new = with_watcher_share(assign(costs, workers, watcher_load=watcher_load), costs, workers,
                             watcher_load)
    if max(loads(new, costs, workers, watcher_load)) \
            < gain * max(loads(owner, costs, workers, watcher_load)):
        return new
    return None


def score_release(detectors: list, msg) -> tuple[dict[str, np.ndarray], dict[int, float]]:
    """What a scoring process of ``DetectorPool`` answers to one release: ``msg`` = ((detector
    index, context table, positions) items, the release's own conns or None), answered with
    ``({name: raw scores}, {detector index: CPU seconds})``."""
    items, own = msg
    out, cpu = {}, {}
    for i, context, positions in items:
        det = detectors[i]
        if context is not None:
            det = InContext(det, context, positions)
        t0 = time.process_time()
        out[det.name] = np.asarray(det.score(own))
        cpu[i] = time.process_time() - t0
    # the release's freed arrays back to the system: on the release heap (set for this
    # process in _detector_main, live.malloc) the heap keeps them, and this process would
    # otherwise hold its largest release's worth for good
    trim_heap()
    return out, cpu


# A release's tables go to a scoring process as Arrow IPC streams in a memfd whose descriptor
# is passed over the pipe (SCM_RIGHTS), and are read there in place from a read-only mapping:
# pickled through the pipe, a 300k-row context (56 MB) took the watcher 190-210 ms to send on a
# quiet box against 32 ms (the watcher cannot go on until the process has read the last byte,
# and a busy box schedules it late: 0.18-0.29 s a release for two processes at 5,000 conns/s,
# 0.4-0.6 s at the p90; 0.03 s through the memfd). memfd_create is Linux's; elsewhere the
# tables are pickled as before
SHARED_TABLES = hasattr(os, "memfd_create")


def pack_release(items: list, own: pa.Table | None) -> tuple[tuple, int | None]:
    """A release's message for a scoring process (``items`` = (detector index, context table or
    None, positions), ``own`` = its conns or None) with its tables moved into a memfd: returns
    the message to pickle, whose tables are replaced by their (offset, length) in the memfd,
    and the memfd's descriptor (None without tables, or without memfd: the message is then
    ``(items, own)`` itself, tables included)."""
    if not SHARED_TABLES or (own is None and all(ctx is None for _, ctx, _ in items)):
        return (items, own), None
    fd = os.memfd_create("zeekml-release", os.MFD_CLOEXEC)
    try:
        with open(fd, "wb", buffering=0, closefd=False) as f:
            def span(t: pa.Table | None) -> tuple[int, int] | None:
                if t is None:
                    return None
                start = f.tell()
                with pa.ipc.new_stream(f, t.schema) as w:
                    w.write_table(t)
                return start, f.tell() - start     # streams pad to 8 bytes: aligned
            shared = [(i, span(ctx), pos) for i, ctx, pos in items]
            own_span = span(own)
            size = f.tell()
    except BaseException:
        os.close(fd)
        raise
    return ("memfd", shared, own_span, size), fd


def unpack_release(msg: tuple, fd: int | None) -> tuple[list, pa.Table | None]:
    """``pack_release``'s message and memfd back to ``(items, own)``: the tables read in place
    from a read-only mapping of the memfd (closed here; the mapping lives while they do)."""
    if fd is None:
        return msg
    try:
        _, shared, own_span, size = msg
        buf = pa.py_buffer(mmap.mmap(fd, size, prot=mmap.PROT_READ))
    finally:
        os.close(fd)

    def table(span):
        return pa.ipc.open_stream(buf.slice(*span)).read_all()
    items = [(i, None if span is None else table(span), pos) for i, span, pos in shared]
    return items, None if own_span is None else table(own_span)


def send_release(conn, items: list, own: pa.Table | None) -> None:
    """Send a release to a scoring process (``pack_release``; a dead one is a one-line
    ``ZeekmlError``)."""
    msg, fd = pack_release(items, own)
    try:
        _send(conn, msg, fd)
    finally:
        if fd is not None:
            os.close(fd)     # the process holds its own copy of the descriptor now


def receive_release(conn, msg: tuple) -> tuple[list, pa.Table | None]:
    """In a scoring process: the release ``send_release`` sent (``msg`` already received)."""
    fd = None
    if msg[0] == "memfd":
        from multiprocessing.reduction import recv_handle
        fd = recv_handle(conn)
    return unpack_release(msg, fd)


def _detector_main(conn, detectors: list, parent: int) -> None:
    """A scoring process of ``DetectorPool``: releases in, ``score_release``'s answers out,
    until EOF or the parent dies."""
    _child_setup(parent)
    # every call here scores a release: their big arrays from the heap (live.malloc), the
    # freed pages given back after each (score_release)
    use_release_heap()
    with one_thread():          # for the process's life
        _serve(conn, lambda msg: score_release(detectors, receive_release(conn, msg)))


@dataclass
class Release:
    """A release handed to ``DetectorPool``: its conns, their detectors (``LiveContext.due``),
    the scores of the watcher's own detectors, and the processes still scoring the others."""

    own: pa.Table
    dets: list
    fitted: FittedDetectors       # what the verdicts are rendered with
    raw: dict[str, np.ndarray] = field(default_factory=dict)
    waiting: list[int] = field(default_factory=list)
    seconds: float = 0.0          # wall time from its send to its answers taken in
    owner: list[int] = field(default_factory=list)    # the share-out it was sent with
    own_done: bool = False        # the watcher's own detectors have scored it
    cpu: dict[int, float] = field(default_factory=dict)   # detector index -> CPU seconds
    number: int = 0               # releases with conns decided before it (the debug log)
    sent: bool = False            # sent to the processes (not queued behind another)
    decided_at: float = 0.0       # wall clock (time.time) when handed over (the debug log)
    sent_at: float = 0.0          # ... when sent
    answered_at: float = 0.0      # ... when the processes' answers were taken in
    sent_perf: float = 0.0        # time.perf_counter when sent (``seconds``)
    own_seconds: float = 0.0      # wall time of the watcher's own share
    own_faults: int = 0           # minor page faults of the thread that scored it (debug log)
    waited: float = 0.0           # wall time the watcher waited for the processes' answers
    counted: bool = False         # its CPU seconds added to the pool's totals


# Detector CPU seconds measured (every process's) per look at the share-out by measured costs:
# calibration's costs per conn are a rough guide live (the IsolationForest's is its fit, which
# scores every baseline conn out of bag; the learned detectors' grow as the context fills), and
# the watcher's own work is a guessed share (WATCHER_SHARE)
REBALANCE_CPU_SECONDS = 2.0

# ... and at least this many releases: at 5,000 conns/s one release alone spends more than
# REBALANCE_CPU_SECONDS, and over one release the watcher's own work measured anywhere from 0.4
# to 2.1 CPU s at the same rate (the span of its CPU clock and the releases counted do not
# line up exactly): looks of one release moved the detectors on noise
REBALANCE_MIN_RELEASES = 4

# Releases decided while the processes still score an earlier one wait in a queue, at most
# this many (each holds its detectors' context tables: the GNN's ~45 s of conns); past it the
# watcher waits for the processes before it reads on
MAX_QUEUED = 2


class DetectorPool:
    """``n`` forked processes that each own some of the detectors fitted before the fork
    (``assign``, by ``fitted.conn_seconds``: each detector's seconds per conn when calibrating)
    and score their share of every release of the live context; the watcher scores the rest
    meanwhile, then calibrates, combines and renders as ``LiveContext.release`` does, so the
    verdicts are the bytes of the watcher scoring alone at one torch thread.

    The share-out is revised by measured costs (``rebalanced``; unless ``rebalance`` is
    False): each time the detectors have spent ``REBALANCE_CPU_SECONDS`` of CPU over at least
    ``REBALANCE_MIN_RELEASES`` releases, each detector's CPU seconds over that time and the
    watcher's own work beside its detectors (reading, the context cut, rendering, commits) give
    a new share-out (``rebalanced``: one that leaves the watcher ``MIN_WATCHER_SHARE`` of the
    detectors' cost), taken if it promises the busiest process a load under ``REBALANCE_GAIN``
    times what it has now. Every process forked
    holds every detector, so any can score any; a detector that moves loses only what it keeps
    between releases to save work (the MoE's per-host state, ``stream_state``, used only where
    it matches its stream on content): the bits are the same.

    A release is sent (``submit``) before the previous one is rendered and committed, the
    watcher's share scored after (``score_own``), so the processes score while the watcher
    writes: the processes' answers to the previous release are taken in before the next is
    sent (a process blocked sending them would not read the next). Each process and the
    watcher run torch and the BLAS on one thread (``one_thread``): the processes take the cores
    instead. Each process gets, per release, its detectors' context rows (``InContext``: the
    targets among their horizon), not a copy of the whole context. Processes die with the
    watcher (``PR_SET_PDEATHSIG``). CUDA cannot be used across a fork: a run whose torch has
    initialised CUDA is refused (``ZeekmlError``).
    """

    def __init__(self, fitted: FittedDetectors, n: int, rebalance: bool = True):
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            raise ZeekmlError("--score-workers with learned detectors forks CPU scoring processes, "
                              "which cannot use CUDA: use --score-workers 0 with --device cuda")
        dets = list(fitted.detectors)
        self.names = [d.name for d in dets]
        costs = [float(fitted.conn_seconds.get(d.name, 1.0)) for d in dets]
        self.workers = max(0, min(int(n), len(dets)))
        self.owner = assign(costs, self.workers)
        self.rebalance_after: float | None = (REBALANCE_CPU_SECONDS if rebalance and self.workers
                                              else None)
        self._measured = [0.0] * len(dets)      # CPU seconds per detector since _since
        self._releases = 0                      # releases measured since _since
        self._own_measured = 0.0                # the watcher's own detectors' CPU, since _since
        self._since: float | None = None        # the watcher's process_time when measuring began
        self._last: Release | None = None       # sent, answers not taken in yet
        self._queue: deque[Release] = deque()   # decided, waiting for the processes
        self._decided = 0                       # releases with conns decided so far
        self.cpu_seconds = dict.fromkeys(self.names, 0.0)   # each detector's, for the whole run
        self._conns, self._pids = _fork(
            self.workers, lambda conn, parent: _detector_main(conn, dets, parent))

    @property
    def pids(self) -> list[int]:
        """Process ids of the scoring processes (empty once closed)."""
        return list(self._pids)

    def __len__(self) -> int:
        """How many scoring processes there are."""
        return len(self._conns)

    def answered(self, rel: Release) -> bool:
        """Whether ``collect(rel)`` would not wait: ``rel`` was sent, the watcher's own share is
        scored and every process's answer is in (or its pipe says it is dead, which ``collect``
        raises). Checked without waiting."""
        return rel.sent and rel.own_done and all(self._conns[w].poll() for w in rel.waiting)

    @property
    def busy(self) -> bool:
        """Whether a process is still scoring a release (checked without waiting)."""
        rel = self._last
        return rel is not None and not all(self._conns[w].poll() for w in rel.waiting)

    @property
    def queued(self) -> int:
        """Releases decided but not sent yet (the processes still score an earlier one)."""
        return len(self._queue)

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the processes' answers to the release they
        score, then send the next one if they are free (``pump``)."""
        rel = self._last
        # only the pipes with nothing to read yet: one that has answered is readable at once,
        # and waiting on it too would spin until the slowest process answers
        pending = [] if rel is None else [c for c in (self._conns[w] for w in rel.waiting)
                                          if not c.poll()]
        if pending:
            from multiprocessing.connection import wait
            wait(pending, timeout)
        self.pump()

    def submit(self, own: pa.Table, dets: list, fitted: FittedDetectors) -> Release:
        """Hand over the release of ``own`` (``dets`` as ``LiveContext.due`` returns them, from
        ``fitted``): sent to the processes at once if they are free, else queued behind the
        one they score and sent when they answer (``pump``), so the watcher goes on reading
        meanwhile instead of waiting for them. The watcher's own share is scored by
        ``score_own`` (or ``collect``). At most ``MAX_QUEUED`` releases wait: past that the
        watcher waits here for the processes (backpressure: each queued release holds its
        detectors' context tables)."""
        rel = Release(own, dets, fitted, owner=list(self.owner), decided_at=time.time())
        if not own.num_rows:
            rel.own_done = rel.sent = True
            return rel
        rel.number = self._decided
        self._decided += 1
        while len(self._queue) >= MAX_QUEUED:
            self._take(self._last)             # blocks: the processes are behind
            self.pump()
        self._queue.append(rel)
        self.pump()
        return rel

    def pump(self) -> None:
        """Send the next queued release if the processes have answered the last one (their
        answers are taken in first: a process blocked sending them would not read). Never
        waits."""
        while self._queue:
            if self._last is not None:
                if not all(self._conns[w].poll() for w in self._last.waiting):
                    return
                self._take(self._last)
            self._send(self._queue.popleft())

    def _send(self, rel: Release) -> None:
        """Send each process its detectors' share of ``rel``."""
        rel.sent_at, rel.sent_perf, rel.sent = time.time(), time.perf_counter(), True
        for w, c in enumerate(self._conns):
            items = [(i, d.context, d.positions) if isinstance(d, InContext) else (i, None, None)
                     for i, d in enumerate(rel.dets) if rel.owner[i] == w]
            if not items:
                continue
            bare = any(ctx is None for _, ctx, _ in items)
            send_release(c, items, rel.own if bare else None)
            rel.waiting.append(w)
        self._last = rel if rel.waiting else None

    def score_own(self, rel: Release) -> None:
        """Score the watcher's share of ``rel`` here (once; releases in the order decided)."""
        if rel.own_done:
            return
        t0, f0 = time.perf_counter(), thread_page_faults()
        with release_heap():        # the learned detectors' big arrays (live.malloc)
            self._score_own(rel)
        rel.own_done = True
        rel.own_seconds = time.perf_counter() - t0
        rel.own_faults = thread_page_faults() - f0

    def _score_own(self, rel: Release) -> None:
        for i, d in enumerate(rel.dets):
            if rel.owner[i] == -1:
                c0 = time.process_time()
                rel.raw[d.name] = np.asarray(d.score(rel.own))
                rel.cpu[i] = time.process_time() - c0
                if self._since is not None:
                    # counted when spent, not when the release is collected: the watcher
                    # scores its share of a queued release before the one ahead of it is
                    # collected, and its own work is its CPU less this over the same span
                    # (counted at collect, it swung between 0 and 4.5 s a look, and the
                    # detectors were reassigned at every look)
                    self._own_measured += rel.cpu[i]

    def _take(self, rel: Release) -> None:
        """Take in the processes' answers to ``rel`` (waiting for them)."""
        t0 = time.perf_counter()
        waiting, rel.waiting = rel.waiting, []
        for w in waiting:
            raw, cpu = _receive(self._conns[w])
            rel.raw.update(raw)
            rel.cpu.update(cpu)
        if self._last is rel:
            self._last = None
        rel.waited = time.perf_counter() - t0
        # from its send until its answers were taken in: the processes score while the watcher
        # reads, so the watcher's own time on it says little about how long it took
        rel.seconds = time.perf_counter() - rel.sent_perf
        rel.answered_at = time.time()

    def collect(self, rel: Release) -> dict[str, np.ndarray]:
        """Every detector's raw scores of ``rel``'s conns (scoring the watcher's share if not
        yet done; sending the releases queued before it and ``rel`` itself, and waiting for the
        processes, where needed). Releases are collected in the order decided."""
        self.score_own(rel)
        while not rel.sent:
            if self._last is not None:
                self._take(self._last)
            self._send(self._queue.popleft())
        if rel.waiting:
            self._take(rel)
        if not rel.counted:
            rel.counted = True
            rel.seconds = rel.seconds or rel.own_seconds
            for i, c in rel.cpu.items():
                self.cpu_seconds[self.names[i]] += c
            if rel.own.num_rows and any(o >= 0 for o in rel.owner):
                if log.isEnabledFor(logging.DEBUG):
                    # the timeline of releases (bench/watch.py --watch-log): wall clock, so it
                    # lines up with the conns' ts there
                    log.debug("release %d: %d conns decided at %.3f, sent at %.3f, answers in "
                              "at %.3f (%.2f s waited for them), the watcher's own share %.2f s"
                              " (%d minor page faults), collected at %.3f; CPU s: %s",
                              rel.number, rel.own.num_rows, rel.decided_at, rel.sent_at,
                              rel.answered_at, rel.waited, rel.own_seconds, rel.own_faults,
                              time.time(), ", ".join(
                                  f"{self.names[i]} {c:.2f}" for i, c in sorted(rel.cpu.items())))
                self._measure(rel)
        return rel.raw

    def _measure(self, rel: Release) -> None:
        """Count ``rel``'s measured costs and, once enough are in, re-share (``rebalanced``)."""
        if self.rebalance_after is None:
            return
        if self._since is None:         # the first release's costs include warming up
            self._since = time.process_time()
            return
        for i, c in rel.cpu.items():
            self._measured[i] += c
        self._releases += 1
        if sum(self._measured) < self.rebalance_after or self._releases < REBALANCE_MIN_RELEASES:
            return
        now = time.process_time()
        watcher = max(0.0, now - self._since - self._own_measured)
        new = rebalanced(self.owner, self._measured, self.workers, watcher)
        log.info("measured CPU s over %.1f s of detectors (%d releases): %s, the watcher's own "
                 "work %.2f; the busiest process %.2f: %s",
                 sum(self._measured), self._releases,
                 ", ".join(f"{n} {c:.2f}" for n, c in zip(self.names, self._measured)), watcher,
                 max(loads(self.owner, self._measured, self.workers, watcher)),
                 "kept as it is" if new is None else "detectors reassigned: " + ", ".join(
                     f"{n} -> {'watcher' if o < 0 else f'process {o}'}"
                     for n, o in zip(self.names, new)))
        if new is not None:
            self.owner = new
        # measured afresh for the next look: costs move as the context fills (the host
        # histories grow to their length, the GNN's graph to its windows), so a share-out made
        # on the first seconds alone was worse later than the one it replaced
        self._measured = [0.0] * len(self._measured)
        self._releases = 0
        self._own_measured = 0.0
        self._since = now

    def close(self) -> None:
        """Tell every process to exit, and reap it (killed after 5 s)."""
        if self._pids:
            log.info("detectors' CPU seconds scoring releases: %s", ", ".join(
                f"{n} {c:.2f} ({'watcher' if o < 0 else f'process {o}'})"
                for (n, c), o in zip(self.cpu_seconds.items(), self.owner)))
        _close(self._conns, self._pids)
        self._pids = []
