"""Detectors with a time context, live: the conns they still need, held back until due."""
from __future__ import annotations

import dataclasses
import functools
import math
import struct
import time
from typing import Callable

import numpy as np
import pyarrow as pa

from zeekml.features.host_history import dictionary_codes
from zeekml.flows.table import CONN_SCHEMA
from zeekml.pipeline import side_by_side
from zeekml.pipeline.fitted import FittedDetectors, score_batch
from zeekml.pipeline.live.journal import frame, records
from zeekml.scoring.context import (context_key, context_key_rows, context_parts, detectors_in_context,
                                    horizon, horizons, last_per_key, ts_array)
from zeekml.scoring.verdict import VerdictBatch

_ROWS, _MARK = b"R", b"T"
_MARK_FMT = struct.Struct("<dddB")


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def score_in_threads(detectors: list, table: pa.Table, threads: int) -> dict | None:
    """``{name: detector.score(table)}``, the detectors scoring side by side in ``threads``
    threads (None with one thread: ``score_batch`` scores them in turn), one kernel thread each
    (``pipeline.side_by_side``): the MoE on one core and the GNN, autoencoder and
    IsolationForest on another overlap. Each detector's scores are those it gives alone with
    one thread (bit-identical, tested)."""
    if threads <= 1 or len(detectors) < 2 or table.num_rows == 0:
        return None
    return side_by_side.run({d.name: functools.partial(d.score, table) for d in detectors},
                            side_by_side.SideBySide(min(threads, len(detectors)), 1))


def evict_rules(fitted: FittedDetectors) -> tuple[float, dict[str, tuple[int, float]]]:
    """How far back ``LiveContext`` keeps scored conns: ``back_by_time``, the widest backward
    horizon of the detectors that count conns by time, and per ``context_key`` of the detectors
    that declare ``context_key_rows`` (the host histories) the most rows and the widest horizon
    they ask. Those need only their key's latest rows, not every conn of their horizon: the
    causal MoE reaches 5 h back but reads an originator's last 17 conns, and keeping 5 h of a
    busy link's conns filled ``max_rows`` at ~55 conns/s. A composite detector's parts
    (``scoring.context.context_parts``: a committee's members) count one by one."""
    by_time, keyed = 0.0, {}
    for part in (p for det in getattr(fitted, "detectors", fitted) for p in context_parts(det)):
        back = horizon(part)[0]
        key, length = context_key(part), context_key_rows(part)
        if key is not None and length is not None:
            old = keyed.get(key, (0, 0.0))
            keyed[key] = (max(old[0], length), max(old[1], back))
        else:
            by_time = max(by_time, back)
    return by_time, keyed


def score_due(own: pa.Table, dets: list, fitted: FittedDetectors,
              raw: dict[str, np.ndarray] | None = None) -> VerdictBatch:
    """The verdicts of the conns ``LiveContext.due`` took (``own``, with ``dets``, its detectors
    among their context), ``raw`` the detectors' scores where already computed (the scoring
    threads', or ``watch --score-workers``' processes')."""
    if not own.num_rows:
        return score_batch(own, fitted)
    return score_batch(own, dataclasses.replace(fitted, detectors=dets), raw=raw)


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
    over), but a conn that is due waits at most ``release_wait`` seconds of wall-clock time for
    its batch to fill: on a busy link a 60 s batch held its first conns a minute longer than
    their context needs, and took tens of seconds to score, while a watcher that falls behind
    reads bigger windows, whose releases are bigger anyway (fewer fixed costs per conn: the
    GNN embeds 25 s of context around any batch). Conns found due at the first check after a
    release wait from that release on (a watcher busy scoring it saw none arrive meanwhile),
    so a watcher that takes longer than ``release_wait`` to score a release releases again at
    once. With ``threads`` > 1 the detectors of a
    release score side by side (``score_in_threads``). Memory is bounded by ``max_rows``:
    beyond it the oldest scored conns are dropped early, and if pending conns alone pass it the
    oldest are released early; both are counted
    (``evicted_early``, ``released_early``), as are conns that arrive later than ``lateness``
    (``late``): for those and their neighbours the verdict may differ from ``zeekml score``.
    """

    def __init__(self, fitted: FittedDetectors, lateness: float = 300.0,
                 max_rows: int = 1_000_000, batch_seconds: float = 60.0,
                 release_wait: float | None = 5.0,
                 clock: Callable[[], float] = time.monotonic, threads: int = 1,
                 idle_wait: float | None = None):
        self.back, self.fwd = horizons(fitted)
        self.back_by_time, self.keyed = evict_rules(fitted)
        self.lateness = float(lateness)
        self.max_rows = max(1, int(max_rows))
        self.batch_seconds = float(batch_seconds)
        self.release_wait = release_wait
        self.idle_wait = idle_wait
        self._clock = clock
        self._due_since: float | None = None    # when conns first were due and held back
        self._released_at: float | None = None  # the last release, until the check after it
        self.threads = max(1, int(threads))
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
        """Conns kept (scored ones kept as context, and pending ones)."""
        return len(self.ts)

    @property
    def pending(self) -> int:
        """Conns held back, not scored yet."""
        return int(len(self.scored) - np.count_nonzero(self.scored))

    @property
    def nbytes(self) -> int:
        """Bytes of the conns kept (what a compacted journal holds)."""
        return self._tbl().nbytes

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

    def _release_mask(self, flush: bool, idle: bool = False) -> np.ndarray:
        todo = ~self.scored
        if flush:
            return todo
        threshold = self.watermark - self.fwd - self.lateness
        extra = self.pending - self.max_rows
        if extra <= 0 and threshold < self.released + self.batch_seconds \
                and not self._waited(todo, threshold, idle):
            # release in batches of batch_seconds: each release scores its conns among all the
            # context rows of their horizon, so small batches would score that context again
            # and again
            return np.zeros(len(todo), dtype=bool)
        self._due_since = None
        self._released_at = self._clock()
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

    def _waited(self, todo: np.ndarray, threshold: float, idle: bool = False) -> bool:
        """Whether conns due by ``threshold`` have waited ``release_wait`` seconds for their
        batch (the clock starts when some are first seen due), or ``idle_wait`` seconds with
        ``idle`` (whoever scores the release has nothing else in hand)."""
        wait = self.release_wait
        if idle and self.idle_wait is not None:
            wait = self.idle_wait if wait is None else min(wait, self.idle_wait)
        if wait is None:
            return False
        with np.errstate(invalid="ignore"):
            due = bool(np.any(todo & (self.ts <= threshold)))
        if not due:
            self._due_since = self._released_at = None
            return False
        now = self._clock()
        if self._due_since is None:
            # due at the first check after a release: they count as due since that release.
            # A watcher scoring a release reads nothing meanwhile, so it sees the conns that
            # came in only once done; counted from then, a release that took 8 s to score was
            # followed by 5 s more of waiting (at 5,000 conns/s live: a release every ~13 s,
            # each the bigger and the later for it), where the wait is for a batch to fill,
            # which it has by then
            self._due_since = now if self._released_at is None else self._released_at
        self._released_at = None
        return now - self._due_since >= wait

    def due(self, fitted: FittedDetectors, flush: bool = False,
            idle: bool = False) -> tuple[pa.Table, list]:
        """Take the conns that are due (all pending ones with ``flush``), in arrival order, and
        mark them scored: returns them and ``fitted``'s detectors set up to score them among
        their context (``scoring.context.detectors_in_context``; the context tables are their
        own, so what is evicted now does not change them). ``release`` scores them here,
        ``watch --score-workers`` in the processes that own the detectors (``live.pool``),
        which say ``idle`` when none has a release in hand (due conns then wait only
        ``idle_wait`` for their batch)."""
        mask = self._release_mask(flush, idle)
        self._journal.append(_MARK + _MARK_FMT.pack(self.released, self.watermark,
                                                     self.scored_max, int(flush)))
        targets = np.flatnonzero(mask)
        if len(targets):
            table = self._tbl()
            dets = detectors_in_context(fitted.detectors, table, targets, self.ts)
            own = table.take(pa.array(targets, pa.int64()))
            self._mark(mask)
        else:
            dets, own = list(fitted.detectors), CONN_SCHEMA.empty_table()
        self._evict()
        return own, dets

    def release(self, fitted: FittedDetectors, flush: bool = False) -> VerdictBatch:
        """Score the conns that are due (all pending ones with ``flush``), in arrival order."""
        own, dets = self.due(fitted, flush)
        raw = score_in_threads(dets, own, self.threads) if own.num_rows else None
        return score_due(own, dets, fitted, raw)

    def _mark(self, mask: np.ndarray) -> None:
        self.scored |= mask
        fin = self.ts[mask & np.isfinite(self.ts)]
        if len(fin):
            self.scored_max = max(self.scored_max, float(fin.max()))

    def _keep_latest_per_key(self, keep: np.ndarray, key: str, n: int, cut: float, back: float) -> None:
        """Also keep, per value of ``key``, its latest ``n`` conns (by ``(ts, arrival)``) among
        those older than ``cut`` and within ``back`` of it: all a conn at or after ``cut`` of that
        key can have in its last ``n + 1`` (``scoring.context.latest_per_key`` cuts a release's
        context to them), whatever their age."""
        tbl = self._tbl()
        if key not in tbl.column_names:
            return
        idx = np.flatnonzero(~keep & (self.ts >= cut - back) & (self.ts < cut))
        if not len(idx):
            return
        codes = dictionary_codes(tbl.column(key).take(pa.array(idx, pa.int64())))
        keep[idx[last_per_key(codes, self.ts[idx], idx, n)]] = True

    def _evict(self) -> None:
        """Drop scored conns no pending or future conn can have in its horizon."""
        if not len(self.ts):
            return
        todo = ~self.scored
        oldest = np.min(self.ts[todo & np.isfinite(self.ts)], initial=self.released)
        cut = min(oldest, self.released)
        with np.errstate(invalid="ignore"):
            keep = todo | (self.ts >= cut - self.back_by_time)
            for key, (length, back) in self.keyed.items():
                self._keep_latest_per_key(keep, key, length - 1, cut, back)
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
        data = b"".join(frame(r) for r in self._journal)
        self._journal = []
        return data

    def snapshot(self) -> bytes:
        """The whole state as journal records (for compaction)."""
        t = self._tbl().append_column("__scored", pa.array(self.scored, pa.bool_()))
        return frame(_ROWS + _ipc(t)) + frame(_MARK + _MARK_FMT.pack(
            self.released, self.watermark, self.scored_max, 0))

    def replay(self, data: bytes) -> None:
        """Rebuild the state from journal records (the committed part of the journal)."""
        for rec in records(data):
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
