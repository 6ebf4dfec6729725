"""Scoring a window of conns: in the watch process, or in forked scoring processes."""
from __future__ import annotations

import os
import time

import pyarrow as pa

from zeekml._core.errors import ZeekmlError
from zeekml.pipeline.fitted import FittedDetectors, score_batch
from zeekml.scoring.allowlist import Allowlist, suppress
from zeekml.scoring.verdict import VerdictBatch
from zeekml.sinks.triage import mark_suppressed
from zeekml.sinks.verdicts import RenderedVerdicts, render_verdicts


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


def _worker_main(conn, fitted: FittedDetectors, parent: int,
                 allowlist: Allowlist | None = None) -> None:
    """A scoring process: conn tables in, rendered verdicts out, until EOF or the parent dies."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the parent decides when to stop
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(0)
    while True:
        try:
            table = conn.recv()
        except (EOFError, OSError):
            os._exit(0)
        if table is None:
            os._exit(0)
        try:
            out = score_window(table, fitted, allowlist)
        except Exception as e:  # noqa: BLE001 - reported by the parent as a scoring error
            out = ZeekmlError(f"scoring process failed: {type(e).__name__}: {e}")
        conn.send(out)


class ScorePool:
    """``n`` forked processes that score windows with the detectors fitted before the fork (no
    model is pickled), so reading and parsing overlap with scoring and windows are scored on
    several cores. Results come back in submission order. A worker dies with its parent
    (``PR_SET_PDEATHSIG``), so a kill -9 of ``watch`` leaves none behind."""

    def __init__(self, fitted: FittedDetectors, n: int, allowlist: Allowlist | None = None):
        from multiprocessing.connection import Pipe

        # os.fork rather than multiprocessing.Process: a watcher may itself run as a daemonic
        # multiprocessing child (which may not start Process children)
        self._conns, self._pids = [], []
        self._next = 0
        parent = os.getpid()
        for _ in range(n):
            mine, theirs = Pipe()
            pid = os.fork()
            if pid == 0:                           # the scoring process
                try:
                    mine.close()
                    for c in self._conns:
                        c.close()
                    _worker_main(theirs, fitted, parent, allowlist)
                finally:
                    os._exit(0)
            theirs.close()
            self._conns.append(mine)
            self._pids.append(pid)

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
        try:
            self._conns[i].send(table)
        except OSError as e:
            raise ZeekmlError(f"a scoring process died ({e.strerror or e})") from e
        return i

    def result(self, ticket: int) -> RenderedVerdicts:
        """The rendered verdicts of the window sent with ``ticket`` (in submission order)."""
        try:
            out = self._conns[ticket].recv()
        except (EOFError, OSError) as e:
            raise ZeekmlError(f"a scoring process died ({e or 'EOF'})") from e
        if isinstance(out, ZeekmlError):
            raise out
        return out

    def close(self) -> None:
        """Tell every process to exit, and reap it (killed after 5 s)."""
        for c in self._conns:
            try:
                c.send(None)
                c.close()
            except OSError:
                pass
        deadline = time.monotonic() + 5
        for pid in self._pids:
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
        self._pids = []
