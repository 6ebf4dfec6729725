"""``zeekml watch``: score a live Zeek log directory, window by window, exactly once.

The loop: the ``DirectoryFollower`` hands over new conn records; they gather in a window that
closes after ``window_seconds`` (default 1 s) or ``window_records`` (default 10 000). A closed
window is scored with the detectors fitted once at start (``pipeline.fit_calibrate`` /
``pipeline.score_fitted``, the code ``zeekml score`` runs, so a conn gets the same verdict live and
in batch), its verdicts, notices and quarantined lines are appended to the outputs and fsynced,
the Zeek feedback file is rewritten, and only then is the checkpoint committed with the new file
offsets *and* the new output lengths.

Exactly once across crashes: at start the outputs are cut back to the lengths in the last
checkpoint and reading resumes at its offsets, so a kill -9 at any point replays at most the one
uncommitted window and its output is never doubled. The verdict sink also drops any verdict id it
has already written (a bounded set seeded from the end of ``verdicts.jsonl``).

Backpressure: when a write fails (disk full, I/O error) the window's partial output is cut back,
the loop stops reading and retries with backoff until the write succeeds; nothing is dropped.
Zeek keeps writing its logs meanwhile and the loop catches up afterwards.

Detectors: those of ``zeekml score`` (the IsolationForest and the shipped learned models). A
per-conn detector's verdict depends on that conn alone: its window is scored at once (in this
process or, with ``score_workers``, in forked processes while the next window is read), its
lines rendered column by column (``_score_columns``). The learned GNN, autoencoder and MoE
detectors score a conn with the conns around it (graph windows either way in time, host
histories of up to an hour back): ``LiveContext`` keeps the conns they need, holds each conn
back until its forward context has arrived (plus ``context_lateness`` for records Zeek writes
late) and scores it among them, as ``zeekml score`` does on the whole log
(``zeekml.scoring.context``, shared with ``--dask``); the kept conns live in a context journal
committed with the checkpoint.

Calibration: with ``--baseline LOG...`` the detectors are fitted on those logs exactly as
``zeekml score --baseline LOG...`` does. Without, the first ``baseline_records`` conns of the
directory are saved to ``OUTDIR/calibration-baseline.log`` (Zeek TSV) and fitted on; either way
``OUTDIR/calibration.json`` records the sources (with sha256) and thresholds, a restart refits on
the same data (fitting is seeded, so it gets the same thresholds), and
``zeekml score LOGS --baseline OUTDIR/calibration-baseline.log`` reproduces the live verdicts.
The verdict-id filter is a set plus a deque (O(1) per id); after windows ``malloc_trim`` hands
freed heap pages back, so RSS stays flat once that set is full.
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import struct
import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa

from zeekml._core.errors import OutputError, ZeekmlError
from zeekml._core.zeek_format import format_header, format_record
from zeekml.flows.table import CONN_SCHEMA, conn_table, is_conn_batch
from zeekml.parse.reject import Quarantine
from zeekml.parse.zeek_types import KNOWN_FIELD_TYPES
from zeekml.pipeline.batch import load_conns
from zeekml.pipeline.fitted import FittedDetectors, fit_calibrate, score_fitted
from zeekml.pipeline.options import ScoreOptions, ScoreSummary
from zeekml.scoring.context import detectors_in_context, horizons, ts_array
from zeekml.scoring.ensemble import combine
from zeekml.scoring.verdict import Verdict
from zeekml.sinks.jsonl import QuarantineWriter, VerdictWriter, _clean, verdict_record
from zeekml.sinks.zeek_notice import NOTICE_FIELDS, NoticeWriter
from zeekml.sources.archive import expand_inputs
from zeekml.sources.checkpoint import Checkpoint, CheckpointStore, fsync_dir
from zeekml.sources.tail import DirectoryFollower

log = logging.getLogger(__name__)

VERDICTS = "verdicts.jsonl"
NOTICES = "zeekml_notice.log"
QUARANTINE = "quarantine.jsonl"
OUTPUTS = (VERDICTS, NOTICES, QUARANTINE)
CALIBRATION = "calibration.json"
BASELINE_LOG = "calibration-baseline.log"
STATS = "stats.json"
LOCK = "watch.lock"


@dataclass
class WatchOptions:
    """Settings of ``zeekml watch``.

    Args:
        score: detectors, fpr, seed, baseline logs and the Zeek feedback file, as for ``score``.
        baseline_records: without ``score.baseline``, calibrate on this many first conns
            (default 10000).
        recalibrate: ignore a calibration saved in the output directory.
        window_seconds: a window closes this long after its first record (default 1.0).
        window_records: ... or when it holds this many records (default 10000).
        catch_up_factor: while behind (unread bytes after a read), windows hold up to this many
            times ``window_records`` (default 4), which spreads a window's fixed costs.
        rescan_seconds: full directory rescan period (default 2.0).
        use_events: react to watchdog events between rescans (default ``True``).
        once: process what exists now, then exit.
        status_seconds: status callback and stats file period (default 5.0).
        max_line_bytes: longer input lines are quarantined (default 1 MiB).
        retry_seconds: first backoff when an output write fails (default 0.5; doubles to
            ``max_retry_seconds``, default 10.0).
        dedup_capacity: verdict ids remembered to drop duplicates (default 200000).
        context_lateness: detectors with a time context: how many seconds behind the newest
            ``ts`` a conn may still arrive and be counted as context of its neighbours (default
            300, Zeek's TCP inactivity timeout); each conn's verdict waits that long plus the
            detectors' forward horizon (see ``LiveContext``).
        context_max_rows: at most this many conns kept as context and pending (default 1000000).
        context_batch_seconds: held-back conns are released in batches spanning this many
            seconds of ``ts`` (default 60; adds up to that much to their delay).
        score_workers: score windows in this many forked processes while this one goes on
            reading (default 0: in this process). Detectors with a time context always score
            here.
    """

    score: ScoreOptions = field(default_factory=ScoreOptions)
    baseline_records: int = 10_000
    recalibrate: bool = False
    window_seconds: float = 1.0
    window_records: int = 10_000
    catch_up_factor: int = 4
    rescan_seconds: float = 2.0
    use_events: bool = True
    once: bool = False
    status_seconds: float = 5.0
    max_line_bytes: int = 1 << 20
    retry_seconds: float = 0.5
    max_retry_seconds: float = 10.0
    dedup_capacity: int = 200_000
    context_lateness: float = 300.0
    context_max_rows: int = 1_000_000
    context_batch_seconds: float = 60.0
    score_workers: int = 0


@dataclass
class WatchStats:
    """Counters of one ``watch`` process (written to ``OUTDIR/stats.json``)."""

    started_at: float = 0.0
    updated_at: float = 0.0
    state: str = "starting"
    records_read: int = 0
    conn_records: int = 0
    other_records: int = 0
    scored: int = 0
    verdicts_written: int = 0
    duplicates_dropped: int = 0
    alerts: int = 0
    alerts_by_note: dict[str, int] = field(default_factory=dict)
    quarantined: int = 0
    quarantine_by_reason: dict[str, int] = field(default_factory=dict)
    windows: int = 0
    commits: int = 0
    checkpoint_generation: int = 0
    stalls: int = 0
    stalled: bool = False
    last_error: str = ""
    records_per_s: float = 0.0
    lag_s: float = 0.0
    bytes_behind: int = 0
    files_tracked: int = 0
    files_open: int = 0
    rescans: int = 0
    rss_bytes: int = 0
    calibration: dict = field(default_factory=dict)
    context: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class _Stopped(Exception):
    """Stop requested while waiting."""


# ---------------------------------------------------------------------------------------------
# rendering: the same formatting code as the batch sinks, into memory

def _json_line(obj: dict) -> bytes:
    """``JsonLinesWriter``'s line for ``obj``; skips ``_clean``'s walk when every float is finite
    (the same bytes: ``_clean`` only turns non-finite floats into null)."""
    try:
        text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except ValueError:
        text = json.dumps(_clean(obj), separators=(",", ":"))
    return text.encode() + b"\n"


class _VerdictLines(VerdictWriter):
    def __init__(self) -> None:  # no file: collects the lines
        self.path, self.count, self.lines = VERDICTS, 0, []

    def write_obj(self, obj: dict) -> None:
        self.lines.append(_json_line(obj))
        self.count += 1


class _QuarantineLines(QuarantineWriter):
    def __init__(self) -> None:
        self.path, self.count, self.lines = QUARANTINE, 0, []

    def write_obj(self, obj: dict) -> None:
        self.lines.append(_json_line(obj))
        self.count += 1


class _ZeekLines:
    def __init__(self, fields: list[tuple[str, str]]) -> None:
        self.names = [n for n, _ in fields]
        self.types = [t for _, t in fields]
        self.lines: list[bytes] = []
        self.count = 0
        self.path = NOTICES

    def write(self, record) -> None:
        self.lines.append(format_record((record.get(n) for n in self.names), self.types))
        self.count += 1

    def header(self) -> bytes:
        return format_header("zeekml_notice", self.names, self.types)


class _NoticeLines(NoticeWriter):
    def __init__(self, suppress_for: float = 3600.0) -> None:
        self.suppress_for = suppress_for
        self._log = _ZeekLines(NOTICE_FIELDS)


_enc_str = json.encoder.encode_basestring_ascii


class _Slow(Exception):
    pass


def _jv(x) -> str:
    """``json.dumps`` of one scalar, or ``_Slow`` where the general path must decide."""
    if x is None:
        return "null"
    t = type(x)
    if t is str:
        return _enc_str(x)
    if t is float:
        if x - x == 0.0:        # finite
            return float.__repr__(x)
        raise _Slow
    if t is bool:
        return "true" if x else "false"
    if t is int:
        return int.__repr__(x)
    raise _Slow


def verdict_line(v: Verdict) -> bytes:
    """``verdicts.jsonl``'s line for ``v``, the same bytes as ``VerdictWriter`` writes, without
    building the dict and walking it through ``json.dumps`` (a third of the time per record)."""
    try:
        scores = ",".join(f"{_enc_str(k)}:{_jv(x)}" for k, x in v.scores.items())
        text = (f'{{"verdict_id":{_jv(v.verdict_id)},"uid":{_jv(v.uid)},"ts":{_jv(v.ts)},'
                f'"id.orig_h":{_jv(v.orig_h)},"id.orig_p":{_jv(v.orig_p)},'
                f'"id.resp_h":{_jv(v.resp_h)},"id.resp_p":{_jv(v.resp_p)},'
                f'"proto":{_jv(v.proto)},"scores":{{{scores}}},"score":{_jv(v.score)},'
                f'"alert":{_jv(v.alert)},"note":{_jv(v.note if v.alert else None)},'
                f'"model":{_jv(v.model)}}}\n')
    except _Slow:
        return _json_line(verdict_record(v))
    return text.encode()


@dataclass
class _Scored:
    """A window's verdicts, rendered: ids and lines in order, the alerting verdicts by index."""

    ids: list[str] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)
    alerts: list[tuple[int, Verdict]] = field(default_factory=list)


def _render(verdicts: list[Verdict]) -> _Scored:
    return _Scored([v.verdict_id for v in verdicts], [verdict_line(v) for v in verdicts],
                   [(i, v) for i, v in enumerate(verdicts) if v.alert])


def _score_render(table: pa.Table | None, fitted: FittedDetectors) -> _Scored:
    if table is None or table.num_rows == 0:
        return _Scored()
    try:
        fast = _score_columns(table, fitted)
    except Exception:  # noqa: BLE001 - the general path gives the same lines or the real error
        fast = None
    return fast if fast is not None else _render(score_fitted(table, fitted))


_LINE = ('{"verdict_id":"%s","uid":%s,"ts":%s,"id.orig_h":%s,"id.orig_p":%s,"id.resp_h":%s,'
         '"id.resp_p":%s,"proto":%s,"scores":{%s},"score":%s,"alert":false,"note":null,'
         '"model":%s}\n')


def _score_columns(table: pa.Table, fitted: FittedDetectors) -> _Scored | None:
    """``_render(score_fitted(table, fitted))`` for per-conn detectors, column by column: the
    same scores, thresholds and verdict ids, and lines byte for byte as ``VerdictWriter``'s,
    without a ``Verdict`` object and a ``json.dumps`` per conn. Alerting conns (few) go
    through ``score_fitted`` itself. ``None`` where the general path must decide (a missing
    uid or ts, a non-finite score)."""
    dets = fitted.detectors
    if any(float(getattr(d, "context_seconds", 0.0) or 0.0) > 0 for d in dets):
        return None
    calibrated = {d.name: fitted.calibrators[d.name].calibrate(d.score(table)) for d in dets}
    combined, top = combine(calibrated)
    if not all(np.isfinite(c).all() for c in calibrated.values()) or not np.isfinite(combined).all():
        return None
    uids = table.column("uid").to_pylist()
    ts = table.column("ts").to_pylist()
    if None in ts or None in uids or "" in uids:
        return None
    n = table.num_rows
    alert = combined >= 1.0
    rows = np.flatnonzero(alert)
    alerts = list(zip(rows.tolist(), score_fitted(table.take(pa.array(rows)), fitted))) \
        if len(rows) else []
    names = [d.name for d in dets]
    model_of = [names[t] for t in top.tolist()]
    enc = _enc_str
    ids = ["V" + hashlib.sha1(f"{m}|{u}|{t:.6f}".encode()).hexdigest()[:16]
           for m, u, t in zip(model_of, uids, ts)]
    frepr = float.__repr__
    score_cols = [[f"{enc(k)}:{frepr(x)}" for x in calibrated[k].tolist()] for k in names]
    scores = [",".join(p) for p in zip(*score_cols)] if len(score_cols) > 1 else score_cols[0]

    def strs(name: str) -> list[str]:
        return [enc(x) if x is not None else "null" for x in table.column(name).to_pylist()]

    def ints(name: str) -> list[str]:
        return [int.__repr__(x) if x is not None else "null" for x in table.column(name).to_pylist()]

    lines = [(_LINE % row).encode() for row in zip(
        ids, map(enc, uids), map(frepr, ts), strs("id.orig_h"), ints("id.orig_p"),
        strs("id.resp_h"), ints("id.resp_p"), strs("proto"), scores,
        map(frepr, combined.tolist()), map(enc, model_of))]
    for i, v in alerts:
        if v.verdict_id != ids[i]:
            return None
        lines[i] = verdict_line(v)
    if len(lines) != n or any(type(t) is not float for t in ts):
        return None
    return _Scored(ids, lines, alerts)


def _worker_main(conn, fitted: FittedDetectors, parent: int) -> None:
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
            out = _score_render(table, fitted)
        except Exception as e:  # noqa: BLE001 - reported by the parent as a scoring error
            out = ZeekmlError(f"scoring process failed: {type(e).__name__}: {e}")
        conn.send(out)


class ScorePool:
    """``n`` forked processes that score windows with the detectors fitted before the fork (no
    model is pickled), so reading and parsing overlap with scoring and windows are scored on
    several cores. Results come back in submission order. A worker dies with its parent
    (``PR_SET_PDEATHSIG``), so a kill -9 of ``watch`` leaves none behind."""

    def __init__(self, fitted: FittedDetectors, n: int):
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
                    _worker_main(theirs, fitted, parent)
                finally:
                    os._exit(0)
            theirs.close()
            self._conns.append(mine)
            self._pids.append(pid)

    def submit(self, table: pa.Table) -> int:
        i = self._next % len(self._conns)
        self._next += 1
        try:
            self._conns[i].send(table)
        except OSError as e:
            raise ZeekmlError(f"a scoring process died ({e.strerror or e})") from e
        return i

    def result(self, ticket: int) -> _Scored:
        try:
            out = self._conns[ticket].recv()
        except (EOFError, OSError) as e:
            raise ZeekmlError(f"a scoring process died ({e or 'EOF'})") from e
        if isinstance(out, ZeekmlError):
            raise out
        return out

    def close(self) -> None:
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


@dataclass
class _Window:
    """A closed window waiting for its scores: what its commit needs, taken when it closed."""

    scored: _Scored | None
    ticket: int | None
    quarantine: list[bytes]
    files: dict
    done: set
    journal: bytes | None = None


# ---------------------------------------------------------------------------------------------
# outputs

WriteFn = Callable[[int, bytes, int], int]


class OutputFiles:
    """The append-only outputs with their durable lengths.

    At open, a file longer than its committed length is cut back (that tail was never
    committed). ``append`` writes every part at the current length and fsyncs; on any error it
    cuts every file back to its length before the call and raises ``OutputError``.

    Args:
        out_dir: the output directory.
        committed: file name -> committed length (from the checkpoint).
        write: ``os.pwrite``-like function (tests inject faults here).
    """

    def __init__(self, out_dir: str, committed: dict[str, int], write: WriteFn | None = None):
        self.out_dir = out_dir
        self._write = write or os.pwrite
        self.lengths: dict[str, int] = {}
        self._fds: dict[str, int] = {}
        for name in OUTPUTS:
            path = os.path.join(out_dir, name)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise OutputError(f"cannot open: {e.strerror}", path) from e
            size = os.fstat(fd).st_size
            want = committed.get(name, 0)
            if size > want:
                if want or size:
                    log.info("%s: cutting %d uncommitted bytes", path, size - want)
                os.ftruncate(fd, want)
                os.fsync(fd)
            elif size < want:
                log.warning("%s: shorter (%d) than committed (%d): it was changed by someone "
                            "else; appending after what is there", path, size, want)
                want = size
            self._fds[name] = fd
            self.lengths[name] = want

    def path(self, name: str) -> str:
        return os.path.join(self.out_dir, name)

    def append(self, parts: dict[str, bytes]) -> None:
        done: list[str] = []
        try:
            for name, data in parts.items():
                if not data:
                    continue
                fd, off = self._fds[name], self.lengths[name]
                view = memoryview(data)
                while view:
                    n = self._write(fd, view, off)
                    if n <= 0:
                        raise OSError(errno.EIO, "short write")
                    view, off = view[n:], off + n
                os.fsync(fd)
                done.append(name)
        except OSError as e:
            for name in parts:
                try:
                    os.ftruncate(self._fds[name], self.lengths[name])
                except OSError:
                    pass
            raise OutputError(f"cannot write: {e.strerror or e}", self.out_dir) from e
        for name, data in parts.items():
            self.lengths[name] += len(data)

    def close(self) -> None:
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()


class VerdictDedup:
    """The verdict ids written most recently (bounded), so a repeated verdict is dropped."""

    _ID = re.compile(rb'"verdict_id":"([^"]+)"')

    def __init__(self, capacity: int = 200_000):
        self.capacity = capacity
        # a set for membership and a deque for age: O(1) per id. (A dict used as a FIFO, popping
        # ``next(iter(d))``, is not: every pop leaves a dead slot at the front that the next
        # ``iter`` walks over, 50-600 us per id once full, and the table keeps growing.)
        self._ids: set[str] = set()
        self._order: deque[str] = deque()

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, vid: str) -> bool:
        """True if ``vid`` is new (and now remembered). A capacity of 0 turns dropping off."""
        if self.capacity <= 0:
            return True
        if vid in self._ids:
            return False
        self._ids.add(vid)
        self._order.append(vid)
        if len(self._order) > self.capacity:
            self._ids.discard(self._order.popleft())
        return True

    def seed_from(self, path: str, length: int, max_bytes: int = 64 << 20) -> None:
        """Remember the ids of the last lines of ``verdicts.jsonl`` (up to ``length``)."""
        if length <= 0:
            return
        start = max(0, length - max_bytes)
        try:
            with open(path, "rb") as f:
                f.seek(start)
                data = f.read(length - start)
        except OSError:
            return
        for m in self._ID.finditer(data):
            self.add(m.group(1).decode())


# ---------------------------------------------------------------------------------------------
# detectors with a time context

JOURNAL_PREFIX = "context."
JOURNAL_COMPACT_BYTES = 64 << 20
JOURNAL_COMPACT_RATIO = 4
"""A journal past JOURNAL_COMPACT_BYTES and JOURNAL_COMPACT_RATIO times its live content is
rewritten as a new generation."""
JOURNAL_SUFFIX = ".journal"
_ROWS, _MARK = b"R", b"T"
_MARK_FMT = struct.Struct("<dddB")


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


class LiveContext:
    """The conns that detectors with a time context (``scoring.context``) still need, in arrival
    order: already scored ones kept as context for later conns, and pending ones held back until
    their forward context has arrived.

    A conn is scored once the newest ``ts`` seen (the watermark) is past its ``ts`` by the widest
    forward horizon plus ``lateness`` (how far behind the newest conn a record may still arrive:
    Zeek writes a conn when it ends, with ``ts`` its start), or when the input is flushed
    (``--once``). It is scored among every kept conn within each detector's horizon, in arrival
    order, which is what ``zeekml score`` does on the whole log. Scored conns are dropped once
    older than every pending conn's backward horizon. Released conns always satisfy
    ``ts <= released`` (or were flushed), so the state is replayed exactly from a journal of
    "rows" and "release mark" records (see ``ContextJournal``).

    Conns are released in batches spanning ``batch_seconds`` of ``ts`` (each batch is scored
    among the context rows of its whole horizon, which a batch per window would score over and
    over). Memory is bounded by ``max_rows``: beyond it the oldest scored conns are dropped early, and if
    pending conns alone pass it the oldest are released early; both are counted
    (``evicted_early``, ``released_early``), as are conns that arrive later than ``lateness``
    (``late``): for those and their neighbours the verdict may differ from ``zeekml score``.
    """

    def __init__(self, fitted: FittedDetectors, lateness: float = 300.0,
                 max_rows: int = 1_000_000, batch_seconds: float = 60.0):
        self.back, self.fwd = horizons(fitted)
        self.lateness = float(lateness)
        self.max_rows = max(1, int(max_rows))
        self.batch_seconds = float(batch_seconds)
        self.table: pa.Table = CONN_SCHEMA.empty_table()
        self._parts: list[pa.Table] = []
        self.ts = np.zeros(0)
        self.scored = np.zeros(0, dtype=bool)
        self.watermark = -math.inf
        self.released = -math.inf
        self.scored_max = -math.inf
        self.late = 0
        self.evicted_early = 0
        self.released_early = 0
        self._journal: list[bytes] = []

    # -- state -------------------------------------------------------------------------------

    @property
    def rows(self) -> int:
        return len(self.ts)

    @property
    def pending(self) -> int:
        return int(len(self.scored) - np.count_nonzero(self.scored))

    def _tbl(self) -> pa.Table:
        if self._parts:
            self.table = pa.concat_tables([self.table, *self._parts])
            self._parts = []
            if self.table.column(0).num_chunks > 64:
                self.table = self.table.combine_chunks()
        return self.table

    def _append(self, table: pa.Table, scored: np.ndarray | None, journal: bool) -> None:
        if journal:
            self._journal.append(_ROWS + _ipc(table))
        ts = ts_array(table)
        fin = ts[np.isfinite(ts)]
        if len(fin) and self.scored_max > -math.inf:
            self.late += int(np.count_nonzero(fin <= self.scored_max + self.fwd))
        if len(fin):
            self.watermark = max(self.watermark, float(fin.max()))
        self._parts.append(table)
        self.ts = np.concatenate([self.ts, ts])
        self.scored = np.concatenate(
            [self.scored, scored if scored is not None else np.zeros(len(ts), dtype=bool)])

    def add(self, table: pa.Table) -> None:
        """New conns (read, not yet scored)."""
        if table.num_rows:
            self._append(table, None, journal=True)

    # -- releasing ---------------------------------------------------------------------------

    def _release_mask(self, flush: bool) -> np.ndarray:
        todo = ~self.scored
        if flush:
            return todo
        threshold = self.watermark - self.fwd - self.lateness
        extra = self.pending - self.max_rows
        if extra <= 0 and threshold < self.released + self.batch_seconds:
            # release in batches of batch_seconds: each release scores its conns among all the
            # context rows of their horizon, so small batches would score that context again
            # and again
            return np.zeros(len(todo), dtype=bool)
        if self.released < threshold:
            self.released = threshold
        if extra > 0:  # too many pending: release the oldest early
            pts = np.where(todo & np.isfinite(self.ts), self.ts, np.inf)
            forced = float(np.partition(pts, extra - 1)[extra - 1])
            if forced > self.released:
                self.released_early += int(np.count_nonzero(
                    todo & (self.ts > self.released) & (self.ts <= forced)))
                self.released = forced
        with np.errstate(invalid="ignore"):
            return todo & ((self.ts <= self.released) | ~np.isfinite(self.ts))

    def release(self, fitted: FittedDetectors, flush: bool = False) -> list[Verdict]:
        """Score the conns that are due (all pending ones with ``flush``), in arrival order."""
        mask = self._release_mask(flush)
        self._journal.append(_MARK + _MARK_FMT.pack(self.released, self.watermark,
                                                     self.scored_max, int(flush)))
        targets = np.flatnonzero(mask)
        verdicts: list[Verdict] = []
        if len(targets):
            table = self._tbl()
            dets = detectors_in_context(fitted.detectors, table, targets, self.ts)
            verdicts = score_fitted(table.take(pa.array(targets, pa.int64())),
                                    dataclasses.replace(fitted, detectors=dets))
            self._mark(mask)
        self._evict()
        return verdicts

    def _mark(self, mask: np.ndarray) -> None:
        self.scored |= mask
        fin = self.ts[mask & np.isfinite(self.ts)]
        if len(fin):
            self.scored_max = max(self.scored_max, float(fin.max()))

    def _evict(self) -> None:
        """Drop scored conns no pending or future conn can have in its horizon."""
        if not len(self.ts):
            return
        todo = ~self.scored
        oldest = np.min(self.ts[todo & np.isfinite(self.ts)], initial=self.released)
        with np.errstate(invalid="ignore"):
            keep = todo | (self.ts >= min(oldest, self.released) - self.back)
        extra = int(np.count_nonzero(keep)) - self.max_rows
        if extra > 0:  # over the memory bound: the oldest scored conns go early
            sts = np.where(keep & self.scored, self.ts, np.inf)
            cut = np.argsort(sts, kind="stable")[:extra]
            keep[cut] = False
            self.evicted_early += extra
        if keep.all():
            return
        rows = np.flatnonzero(keep)
        self.table = self._tbl().take(pa.array(rows, pa.int64())).combine_chunks() \
            if len(rows) else CONN_SCHEMA.empty_table()
        self.ts, self.scored = self.ts[rows], self.scored[rows]

    # -- journal -----------------------------------------------------------------------------

    def journal_delta(self) -> bytes:
        """The records since the last call (rows added, release marks)."""
        data = b"".join(_frame(r) for r in self._journal)
        self._journal = []
        return data

    def snapshot(self) -> bytes:
        """The whole state as journal records (for compaction)."""
        t = self._tbl().append_column("__scored", pa.array(self.scored, pa.bool_()))
        return _frame(_ROWS + _ipc(t)) + _frame(_MARK + _MARK_FMT.pack(
            self.released, self.watermark, self.scored_max, 0))

    def replay(self, data: bytes) -> None:
        """Rebuild the state from journal records (the committed part of the journal)."""
        for rec in _records(data):
            kind, body = rec[:1], rec[1:]
            if kind == _ROWS:
                t = pa.ipc.open_stream(body).read_all()
                scored = None
                if "__scored" in t.column_names:
                    scored = t.column("__scored").to_numpy(zero_copy_only=False).astype(bool)
                    t = t.drop_columns(["__scored"])
                self._append(t, scored, journal=False)
            elif kind == _MARK:
                released, watermark, scored_max, flush = _MARK_FMT.unpack(body)
                self.released = max(self.released, released)
                self.watermark = max(self.watermark, watermark)
                self.scored_max = max(self.scored_max, scored_max)
                with np.errstate(invalid="ignore"):
                    mask = ~self.scored if flush else ~self.scored & (
                        (self.ts <= self.released) | ~np.isfinite(self.ts))
                self._mark(mask)
                self._evict()
        self._journal = []
        self.late = 0


def _frame(rec: bytes) -> bytes:
    return struct.pack("<Q", len(rec)) + rec


def _records(data: bytes):
    pos = 0
    while pos + 8 <= len(data):
        (n,) = struct.unpack_from("<Q", data, pos)
        if pos + 8 + n > len(data):
            raise ZeekmlError("context journal ends inside a record")
        yield data[pos + 8:pos + 8 + n]
        pos += 8 + n


class ContextJournal:
    """``OUTDIR/context.<N>.journal``: append-only records of ``LiveContext``, committed (file
    name and length) in the checkpoint with the outputs. At open it is cut back to the committed
    length. When it has grown well past the state it holds, a new generation is written whole and
    the checkpoint switches to it; a generation is deleted once neither the checkpoint nor its
    previous generation names it."""

    def __init__(self, out_dir: str, committed: dict, write: WriteFn | None = None):
        self.out_dir = out_dir
        self._write = write or os.pwrite
        self.name = committed.get("journal") or f"{JOURNAL_PREFIX}{1:06d}{JOURNAL_SUFFIX}"
        self.length = int(committed.get("length", 0))
        self._last_committed = self.name
        self._sweep = True          # generations left behind (a crash after a rewrite)
        self.fd = -1
        self._open(self.name, self.length)

    def _open(self, name: str, length: int) -> None:
        path = os.path.join(self.out_dir, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(f"cannot open: {e.strerror}", path) from e
        size = os.fstat(fd).st_size
        if size < length:
            os.close(fd)
            raise ZeekmlError(f"context journal is shorter ({size}) than committed ({length}); "
                              "it was changed by someone else: use a new --out", path)
        if size > length:
            os.ftruncate(fd, length)
            os.fsync(fd)
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = fd

    def read(self) -> bytes:
        return os.pread(self.fd, self.length, 0) if self.length else b""

    def append(self, data: bytes) -> None:
        if not data:
            return
        try:
            view, off = memoryview(data), self.length
            while view:
                n = self._write(self.fd, view, off)
                if n <= 0:
                    raise OSError(errno.EIO, "short write")
                view, off = view[n:], off + n
            os.fsync(self.fd)
        except OSError as e:
            try:
                os.ftruncate(self.fd, self.length)
            except OSError:
                pass
            raise OutputError(f"cannot write the context journal: {e.strerror or e}",
                              self.out_dir) from e
        self.length += len(data)

    def rewrite(self, data: bytes) -> None:
        """A new generation holding ``data``; the old one stays until two commits later."""
        gen = int(self.name[len(JOURNAL_PREFIX):-len(JOURNAL_SUFFIX)]) + 1
        name = f"{JOURNAL_PREFIX}{gen:06d}{JOURNAL_SUFFIX}"
        path = os.path.join(self.out_dir, name)
        try:
            _atomic_write(path, data)
        except OSError as e:
            raise OutputError(f"cannot write the context journal: {e.strerror or e}", path) from e
        self._open(name, len(data))
        self.name, self.length = name, len(data)
        self._sweep = True

    def committed(self) -> dict:
        return {"journal": self.name, "length": self.length}

    def after_commit(self) -> None:
        """Delete generations that neither this commit nor the one before (``.prev``) names."""
        if self._sweep:
            keep = {self._last_committed, self.name}
            for name in os.listdir(self.out_dir):
                if name.startswith(JOURNAL_PREFIX) and name.endswith(JOURNAL_SUFFIX) \
                        and name not in keep:
                    try:
                        os.unlink(os.path.join(self.out_dir, name))
                    except OSError:
                        pass
            self._sweep = self._last_committed != self.name
        self._last_committed = self.name

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# ---------------------------------------------------------------------------------------------
# calibration

BASELINE_FIELDS = [(f.name, KNOWN_FIELD_TYPES.get(f.name, "string")) for f in CONN_SCHEMA]


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def write_baseline_log(table: pa.Table, path: str) -> None:
    """Conns as a Zeek TSV conn log (``#path conn``), written whole and renamed into place."""
    names = [n for n, _ in BASELINE_FIELDS]
    types = [t for _, t in BASELINE_FIELDS]
    cols = {n: table.column(n).to_pylist() for n in names}
    lines = [format_header("conn", names, types)]
    for i in range(table.num_rows):
        lines.append(format_record([cols[n][i] for n in names], types))
    _atomic_write(path, b"".join(lines))


# ---------------------------------------------------------------------------------------------
# the loop

class Watcher:
    """Follows ``root`` and writes verdicts to ``out_dir``; ``run()`` until stopped.

    Args:
        root: the Zeek log directory.
        out_dir: where verdicts, notices, quarantine, checkpoint, calibration and stats go.
        options: see ``WatchOptions``.
        on_status: called with the stats dict every ``status_seconds``.
        write: ``os.pwrite``-like function for the outputs (fault injection in tests).
    """

    def __init__(self, root: str | os.PathLike, out_dir: str | os.PathLike,
                 options: WatchOptions | None = None,
                 on_status: Callable[[dict], None] | None = None,
                 write: WriteFn | None = None):
        self.root = os.fspath(root)
        self.out_dir = os.fspath(out_dir)
        self.options = options or WatchOptions()
        self.on_status = on_status
        self._write = write
        self.stats = WatchStats()
        self._stop = threading.Event()
        self._follower: DirectoryFollower | None = None
        self._pending_quarantine = _QuarantineLines()
        self._quarantine = Quarantine(sink=self._pending_quarantine.write)
        self._ctx: LiveContext | None = None
        self._journal: ContextJournal | None = None
        self._pool: ScorePool | None = None
        self._trimmed = 0.0

    def request_stop(self) -> None:
        """Finish the current window, commit and return from ``run`` (signal-handler safe)."""
        self._stop.set()
        if self._follower is not None:
            self._follower.wake()

    # -- setup -------------------------------------------------------------------------------

    def _lock(self) -> int:
        path = os.path.join(self.out_dir, LOCK)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            raise OutputError("another zeekml watch is using this output directory", path) from e
        return fd

    def _calibrate(self, cp: Checkpoint) -> FittedDetectors:
        opts = self.options
        so = opts.score
        cal_path = os.path.join(self.out_dir, CALIBRATION)
        saved = None
        if os.path.exists(cal_path) and not opts.recalibrate:
            try:
                with open(cal_path) as f:
                    saved = json.load(f)
            except (OSError, ValueError) as e:
                raise ZeekmlError(f"unreadable calibration ({e}); use --recalibrate", cal_path)
        want = {"fpr": so.fpr, "seed": so.seed, "detectors": list(so.detectors)}
        if saved is not None and saved.get("options") != want:
            raise ZeekmlError(f"calibrated with other options {saved.get('options')}; use the "
                              "same --fpr/--seed, a new --out, or --recalibrate", cal_path)

        if so.baseline:
            files = expand_inputs(so.baseline)
            if not files:
                raise ZeekmlError("no conn logs in --baseline")
            sources = [{"path": os.path.abspath(p), "sha256": _sha256(p)} for p in files]
            if saved is not None and saved.get("sources") != sources:
                raise ZeekmlError("the output directory was calibrated on another baseline; "
                                  "use the same --baseline, a new --out, or --recalibrate",
                                  cal_path)
        elif saved is not None:
            sources = saved["sources"]
            files = [s["path"] for s in sources]
            for s in sources:
                if not os.path.exists(s["path"]) or _sha256(s["path"]) != s["sha256"]:
                    raise ZeekmlError("baseline changed or missing since calibration; "
                                      "use --recalibrate", s["path"])
        else:
            path = os.path.join(self.out_dir, BASELINE_LOG)
            table = self._collect_baseline(cp)
            write_baseline_log(table, path)
            files = [path]
            sources = [{"path": os.path.abspath(path), "sha256": _sha256(path)}]

        base_summary = ScoreSummary()
        baseline = load_conns(files, Quarantine(), base_summary)
        summary = ScoreSummary()
        fitted = fit_calibrate(baseline, so, summary)
        names = [d.name for d in fitted.detectors]
        if saved is not None and saved.get("models", list(so.detectors)) != names:
            raise ZeekmlError(f"calibrated with the detectors {saved.get('models')}, now "
                              f"{names}; use the same --models/--no-models, a new --out, or "
                              "--recalibrate", cal_path)
        doc = {"options": want, "models": names, "sources": sources,
               "records": baseline.num_rows, "thresholds": summary.thresholds}
        if saved is not None and saved.get("thresholds") != json.loads(json.dumps(
                summary.thresholds)):
            log.warning("refitting gave other thresholds than the saved calibration "
                        "(%s vs %s)", summary.thresholds, saved.get("thresholds"))
        if saved is None or saved != doc:
            _atomic_write(cal_path, (json.dumps(doc, indent=2) + "\n").encode())
        self.stats.calibration = {"records": baseline.num_rows, "sources": len(sources),
                                  "thresholds": summary.thresholds}
        log.info("calibrated on %d baseline conns", baseline.num_rows)
        return fitted

    def _collect_baseline(self, cp: Checkpoint) -> pa.Table:
        """The first ``baseline_records`` conns from the checkpoint on (read, not committed)."""
        opts = self.options
        self.stats.state = "calibrating"
        f = DirectoryFollower(self.root, cp.files, Quarantine(), done=cp.done,
                              max_line_bytes=opts.max_line_bytes,
                              rescan_seconds=opts.rescan_seconds, use_events=opts.use_events,
                              exclude=[self.out_dir])
        batches = []
        n = 0
        f.start()
        try:
            while n < opts.baseline_records:
                if self._stop.is_set():
                    raise _Stopped
                got = f.poll(max_records=opts.baseline_records - n)
                for b in got:
                    if is_conn_batch(b):
                        batches.append(b)
                        n += b.num_rows
                if not got and f.caught_up:
                    if opts.once:
                        break
                    self._status_maybe(f, force=False, calibrating=n)
                    f.wait(min(opts.rescan_seconds, 1.0))
        finally:
            f.stop()
        if n == 0:
            raise ZeekmlError("no conn records to calibrate on", self.root)
        table = conn_table(batches)
        return table.slice(0, min(n, opts.baseline_records))

    # -- run ---------------------------------------------------------------------------------

    def run(self) -> WatchStats:
        opts = self.options
        try:
            os.makedirs(self.out_dir, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create output directory: {e.strerror}", self.out_dir) from e
        if not os.path.isdir(self.root):
            from zeekml._core.errors import InputNotFound
            raise InputNotFound("no such directory", self.root)
        lock_fd = self._lock()
        _fix_mmap_threshold()
        # Arrow's default pool (mimalloc) keeps freed segments: with the system allocator RSS
        # is 15-20 MB lower (bench/watch.py --rss-probe); the previous pool is back after run()
        arrow_pool = pa.default_memory_pool()
        pa.set_memory_pool(pa.system_memory_pool())
        self.stats.started_at = time.time()
        self._t0 = time.monotonic()
        self._last_status = self._t0
        self._records_at_status = 0
        store = CheckpointStore(self.out_dir)
        cp = store.load()
        outputs = OutputFiles(self.out_dir, cp.outputs, self._write)
        feedback = None
        try:
            dedup = VerdictDedup(opts.dedup_capacity)
            dedup.seed_from(outputs.path(VERDICTS), outputs.lengths[VERDICTS])
            try:
                fitted = self._calibrate(cp)
            except _Stopped:
                self.stats.state = "stopped"
                return self.stats
            back, fwd = horizons(fitted)
            if back > 0 or fwd > 0:
                self._journal = ContextJournal(self.out_dir, cp.context, self._write)
                self._ctx = LiveContext(fitted, opts.context_lateness, opts.context_max_rows,
                                        opts.context_batch_seconds)
                try:
                    self._ctx.replay(self._journal.read())
                except (ZeekmlError, ValueError, KeyError, struct.error, pa.ArrowException) as e:
                    raise ZeekmlError(
                        f"damaged context journal ({type(e).__name__}: {e}); the conns it holds "
                        "back cannot be restored: use a new --out",
                        os.path.join(self.out_dir, self._journal.name)) from e
                log.info("detectors with a time context: %g s back, %g s forward; %d conns "
                         "restored (%d pending)", back, fwd, self._ctx.rows, self._ctx.pending)
                self._context_stats()
            if opts.score.zeek_feedback:
                from zeekml.sinks.zeek_input import VerdictFeedbackWriter
                feedback = VerdictFeedbackWriter(opts.score.zeek_feedback)
            if self._ctx is None and opts.score_workers > 0:
                self._pool = ScorePool(fitted, opts.score_workers)
            follower = DirectoryFollower(
                self.root, cp.files, self._quarantine, done=cp.done,
                max_line_bytes=opts.max_line_bytes,
                rescan_seconds=opts.rescan_seconds, use_events=opts.use_events,
                exclude=[self.out_dir])
            self._follower = follower
            follower.start()
            self.stats.state = "running"
            try:
                self._loop(follower, fitted, outputs, dedup, feedback, store, cp)
            finally:
                follower.stop()
                self._follower = None
        finally:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
            outputs.close()
            if self._journal is not None:
                self._journal.close()
            self._status_maybe(self._follower, force=True)
            os.close(lock_fd)
            pa.set_memory_pool(arrow_pool)
        return self.stats

    def _loop(self, follower, fitted, outputs, dedup, feedback, store, cp) -> None:
        opts = self.options
        window: list = []
        window_rows = 0
        window_started: float | None = None
        dirty = False
        q_seen = self._quarantine.count
        inflight: deque[_Window] = deque()
        pool = self._pool
        # one window in flight per scoring process (a second send could block on a full pipe
        # while the process blocks sending its result); with none, each is finished at once
        max_inflight = len(pool._conns) if pool is not None else 0

        def finish(most: int) -> None:
            while len(inflight) > most:
                self._finish_window(inflight.popleft(), outputs, dedup, feedback, store, cp)

        try:
            while True:
                stopping = self._stop.is_set()
                # behind (unread bytes left after the last read): windows of up to 4x
                # window_records, so the fixed costs of a window (fsyncs, the checkpoint, the
                # detectors' per-call overhead) are paid less often while catching up
                limit = opts.window_records * (1 if follower.caught_up else opts.catch_up_factor)
                want = max(1, limit - window_rows)
                got = [] if stopping else follower.poll(max_records=want)
                now = time.monotonic()
                for b in got:
                    self.stats.records_read += b.num_rows
                    if is_conn_batch(b):
                        window.append(b)
                        window_rows += b.num_rows
                        self.stats.conn_records += b.num_rows
                    else:
                        self.stats.other_records += b.num_rows
                if got or not follower.caught_up or self._quarantine.count != q_seen:
                    dirty = True
                    q_seen = self._quarantine.count
                    if window_started is None:
                        window_started = now
                idle = follower.caught_up and not got
                if opts.once and idle and self._ctx is not None and self._ctx.pending:
                    dirty = True       # --once: the conns held back for their context are due now
                due = dirty and (stopping or window_rows >= limit
                                 or (window_started is not None
                                     and now - window_started >= opts.window_seconds)
                                 or (opts.once and idle))
                if due:
                    finish(max(0, max_inflight - 1))
                    inflight.append(self._close_window(window, follower, fitted,
                                                       flush=opts.once and idle and not stopping))
                    window, window_rows, window_started, dirty = [], 0, None, False
                finish(0 if stopping or idle else max_inflight)
                self._status_maybe(follower)
                if stopping:
                    self.stats.state = "stopped"
                    return
                if opts.once and idle and not dirty:
                    self.stats.state = "done"
                    return
                if idle:
                    if window_started is not None:
                        # a window is open: read what arrives in bigger bites (a tenth of the
                        # window) instead of waking on every write, whose small batches cost
                        # about twice as much per record to parse and gather
                        left = max(0.0, opts.window_seconds - (now - window_started))
                        self._stop.wait(min(left, opts.window_seconds / 10, 0.1))
                    else:
                        follower.wait(min(opts.rescan_seconds, opts.status_seconds, 1.0))
        except _Stopped:
            log.warning("stopped while the output was not writable; the last windows were not "
                        "committed and will be read again")
            self.stats.state = "stopped (stalled)"

    def _close_window(self, window, follower, fitted, flush: bool = False) -> _Window:
        """Take what the window's commit needs now (its conns go to be scored, its quarantined
        lines and the follower's progress are kept) and go on reading."""
        table = conn_table(window) if window else None
        q = self._pending_quarantine
        qlines, q.lines = q.lines, []
        files, done = follower.snapshot()
        self.stats.windows += 1
        ctx = self._ctx
        if ctx is not None:
            if table is not None:
                ctx.add(table)
            scored = _render(ctx.release(fitted, flush=flush))
            return _Window(scored, None, qlines, files, done, ctx.journal_delta())
        if self._pool is not None and table is not None and table.num_rows:
            return _Window(None, self._pool.submit(table), qlines, files, done)
        return _Window(_score_render(table, fitted), None, qlines, files, done)

    def _finish_window(self, w: _Window, outputs, dedup, feedback, store, cp) -> None:
        """Write the window's verdicts, notices and quarantined lines, then commit the
        checkpoint with the follower's progress as of the window's close."""
        scored = w.scored if w.scored is not None else self._pool.result(w.ticket)
        ids, lines = scored.ids, scored.lines
        keep: list[bytes] | None = None
        if dedup.capacity > 0:
            add = dedup.add
            fresh = [add(i) for i in ids]
            if not all(fresh):
                keep = [line for line, f in zip(lines, fresh) if f]
                self.stats.duplicates_dropped += len(ids) - len(keep)
        else:
            fresh = None
        notice_lines = _NoticeLines()
        alerts: list[Verdict] = []
        notes: Counter[str] = Counter()
        for i, v in scored.alerts:
            if fresh is not None and not fresh[i]:
                continue
            notice_lines.write(v)
            alerts.append(v)
            notes[v.note] += 1
        written = lines if keep is None else keep
        parts = {VERDICTS: b"".join(written), QUARANTINE: b"".join(w.quarantine),
                 NOTICES: b"".join(notice_lines._log.lines)}
        if parts[NOTICES] and outputs.lengths[NOTICES] == 0:
            parts[NOTICES] = notice_lines._log.header() + parts[NOTICES]
        self._durably(lambda: outputs.append(parts))
        journal, ctx = self._journal, self._ctx
        if journal is not None:
            if journal.length > JOURNAL_COMPACT_BYTES and \
                    journal.length > JOURNAL_COMPACT_RATIO * ctx._tbl().nbytes:
                snap = ctx.snapshot()
                self._durably(lambda: journal.rewrite(snap))
            else:
                self._durably(lambda: journal.append(w.journal or b""))
            cp.context = journal.committed()
            self._context_stats()
        if feedback is not None and alerts:
            self._durably(lambda: feedback.write(alerts))
        cp.files, cp.done = w.files, w.done
        cp.outputs = dict(outputs.lengths)
        self.stats.scored += len(ids)
        self.stats.verdicts_written += len(written)
        self.stats.alerts += len(alerts)
        for k, n in notes.items():
            self.stats.alerts_by_note[k] = self.stats.alerts_by_note.get(k, 0) + n
        cp.stats = {"verdicts_written": self.stats.verdicts_written, "alerts": self.stats.alerts}
        self._durably(lambda: store.commit(cp))
        if journal is not None:
            journal.after_commit()
        self.stats.commits += 1
        self.stats.checkpoint_generation = cp.generation
        now = time.monotonic()
        if _malloc_trim is not None and now - self._trimmed >= 0.1:
            # give the freed pages of the window's arrays back to the system: without it glibc
            # keeps them in its heaps and RSS wanders 10-25 MB above the live size
            _malloc_trim(0)
            self._trimmed = now

    def _context_stats(self) -> None:
        c = self._ctx
        self.stats.context = {
            "back_s": c.back, "forward_s": c.fwd, "lateness_s": c.lateness, "rows": c.rows,
            "pending": c.pending, "late": c.late, "evicted_early": c.evicted_early,
            "released_early": c.released_early,
            "journal_bytes": self._journal.length if self._journal else 0}

    def _durably(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` until it succeeds; on output errors wait and retry (backpressure)."""
        delay = self.options.retry_seconds
        while True:
            try:
                fn()
                if self.stats.stalled:
                    log.warning("output writable again; resuming")
                self.stats.stalled = False
                return
            except OutputError as e:
                self.stats.stalls += 1
                self.stats.stalled = True
                self.stats.last_error = str(e)
                log.warning("output stalled (%s); retrying in %.1f s, nothing is dropped", e, delay)
                self._status_maybe(self._follower, force=False)
                if self._stop.wait(delay):
                    raise _Stopped from e
                delay = min(delay * 2, self.options.max_retry_seconds)

    # -- status ------------------------------------------------------------------------------

    def _status_maybe(self, follower: DirectoryFollower | None, force: bool = False,
                      calibrating: int | None = None) -> None:
        now = time.monotonic()
        if not force and now - self._last_status < self.options.status_seconds:
            return
        s = self.stats
        dt = now - self._last_status
        if dt > 0:
            s.records_per_s = (s.records_read - self._records_at_status) / dt
        self._last_status = now
        self._records_at_status = s.records_read
        s.quarantined = self._quarantine.count
        s.quarantine_by_reason = dict(self._quarantine.by_reason)
        if follower is not None:
            s.lag_s = follower.lag_seconds()
            s.bytes_behind = follower.bytes_behind()
            s.files_tracked = len(follower.states) + len(follower.done)
            s.files_open = len(follower.readers)
            s.rescans = follower.rescans
        if calibrating is not None:
            s.calibration = {"collected": calibrating, "wanted": self.options.baseline_records}
        s.rss_bytes = _rss()
        s.updated_at = time.time()
        d = s.to_dict()
        try:
            _atomic_write(os.path.join(self.out_dir, STATS), (json.dumps(d, indent=1) + "\n").encode())
        except OSError as e:
            log.debug("cannot write stats: %s", e)
        if self.on_status is not None:
            self.on_status(d)


def _libc_malloc_trim():
    try:
        import ctypes
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_malloc_trim = _libc_malloc_trim()


def _fix_mmap_threshold(nbytes: int = 1 << 20) -> None:
    """Blocks of ``nbytes`` and more always come from mmap and go back to the system when freed.
    glibc otherwise raises that threshold each time such a block is freed (up to 32 MiB), after
    which a window's big arrays (features of 40 000 conns: ~19 MB) land in the heap and fragment
    it: RSS crept ~15 MB over 2M records, and stays flat with the threshold fixed."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").mallopt(-3, nbytes)     # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def status_line(d: dict) -> str:
    """One human line from a stats dict."""
    line = (f"{d['state']}: {d['records_per_s']:,.0f} records/s, lag {d['lag_s']:.1f} s, "
            f"{d['scored']:,} scored, {d['alerts']:,} alerts, {d['quarantined']:,} quarantined, "
            f"{d['files_open']}/{d['files_tracked']} files")
    c = d.get("context") or {}
    if c:
        line += f", {c.get('pending', 0):,} held for context"
        if c.get("late"):
            line += f" ({c['late']:,} late)"
    if d.get("stalled"):
        line += f", STALLED: {d['last_error']}"
    return line
