"""``zeekml score`` in bounded memory: read once, spill, fit on the baseline, score chunk by chunk.

Holding a whole input as one table (and its verdicts as one batch) made peak memory grow with
the input: 1M conns took 2.27 GB with ``--no-models`` and 7.54 GB with the learned models
(issue 17). Here the input is read once; its conn records go, ``chunk_rows`` at a time, to an
Arrow IPC file in a private temporary directory (removed at the end, also on an error or
Ctrl-C), and only what the baseline choice and the incidents need stays in memory: ``ts`` and
the originator and responder of every conn (compactly), the uids of benign feedback conns.
Then:

1. the baseline rows are chosen from ``ts`` (``ScoreOptions.baseline_rows``, as ``--dask``
   does) and read back; the detectors are fitted and calibrated on them;
2. each chunk is read back and scored with the context rows its detectors need (the rows of the
   other chunks within their time horizon, ``zeekml.scoring.context``, as ``--dask`` scores its
   tasks), rendered and appended to the outputs;
3. incidents are built from the alerting verdicts of every chunk and the conn counts per host
   (``TriageRows``), the same incidents as from one batch of everything.

An input of at most ``ONE_TABLE_CHUNKS`` chunks is never spilled and is scored as one table, with
``fit_calibrate``'s reuse of the per-conn detectors' scores of the baseline rows. Beyond that the
fit scores the baseline as its own input and the chunks take those scores where a conn's context
holds baseline conns only (``BaselineScores``), and the chunks overlap: the detectors' calls run
in a lane per detector (``side_by_side.Lanes``), so one done with a chunk starts the next.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zeekml._core.device import configure_torch_if_asked
from zeekml._core.errors import UnknownFormat, ZeekmlError
from zeekml._core.heap import trim_heap
from zeekml._core.preload import wait_started
from zeekml.features import flow_features, table_memo
from zeekml.flows.select import ts_sort_key
from zeekml.flows.table import CONN_SCHEMA, conn_table, is_conn_batch
from zeekml.parse import Quarantine, read_log
from zeekml.parse.reader import LogBatch
from zeekml.pipeline.fitted import FittedDetectors, fit_calibrate, score_batch
from zeekml.pipeline import side_by_side
from zeekml.pipeline.options import DEFAULT_CHUNK_ROWS, ScoreOptions, ScoreSummary
from zeekml.scoring.context import (WithKnownScores, context_window, context_within,
                                    detectors_in_context, horizon, horizons, with_context)
from zeekml.scoring.explain import BaselineProfile
from zeekml.scoring.incidents import HostTimes, string_codes
from zeekml.scoring.verdict import VerdictBatch

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int], None]
BYTES_COLUMNS = ["id.orig_h", "orig_bytes", "resp_bytes"]   # incidents.host_baseline_bytes reads
StepFn = Callable[[str], None]

ONE_TABLE_CHUNKS = 2
"""An input of at most this many chunks is never spilled and is scored as one table: one table
needs no context rows and scores each conn once in the fit, and the ~100k-conn log of
``bench/score_speed.py`` (issue 15's target) is scored as it was with 100k-conn chunks."""


def read_conn_batches(paths: list[str], quarantine: Quarantine, summary: ScoreSummary,
                      on_bytes: ProgressFn | None = None,
                      on_other: Callable[[LogBatch], object] | None = None) -> Iterator[LogBatch]:
    """The conn batches of every file, in order; counts go to ``summary``. A file that fails is
    recorded in ``summary.files_failed`` (its batches before the failure are kept) and the rest
    goes on. ``on_other`` is handed every other batch (Suricata's alerts, for the evidence)."""
    for path in paths:
        conns, others = 0, set()
        try:
            for b in read_log(path, quarantine):
                summary.records_read += b.num_rows
                if is_conn_batch(b):
                    summary.conn_records += b.num_rows
                    conns += b.num_rows
                    yield b
                else:
                    summary.other_records += b.num_rows
                    others.add(b.log_path or "?")
                    if on_other is not None:
                        on_other(b)
            summary.files += 1
            if others and not conns:
                # a user who names dns.log by mistake must not get "0 conns scored" silently
                log.warning("%s: no conn records (#path %s): nothing in it is scored", path,
                            ", ".join(sorted(others)))
        except ZeekmlError as e:
            # imported here: the capture reader pulls in dpkt (~50 ms at every start otherwise)
            from zeekml.sources.pcap import is_capture

            if isinstance(e, UnknownFormat) and is_capture(path):
                e = UnknownFormat("looks like a capture: use zeekml replay", path)
            summary.files_failed.append((path, e.message))
            summary.file_errors.append(e)
            log.warning("%s", e)
        if on_bytes:
            on_bytes(path, os.path.getsize(path) if os.path.exists(path) else 0)


# -- the spilled input ----------------------------------------------------------------------------

class SpilledConns:
    """Conn tables appended in input order, kept as record batches of ``chunk_rows`` rows in an
    Arrow IPC file in a private temporary directory once they exceed ``ONE_TABLE_CHUNKS`` chunks
    (a smaller input stays in memory, one table). ``ts`` (``ts_sort_key``) of every row stays in
    memory.

    Use as a context manager, or call ``close``: the directory is removed either way.

    Args:
        chunk_rows: rows per chunk (default ``DEFAULT_CHUNK_ROWS``).
        on_table: called with each appended table (to keep what else is needed per conn).
    """

    def __init__(self, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 on_table: Callable[[pa.Table, int], None] | None = None):
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, not {chunk_rows}")
        self.chunk_rows = int(chunk_rows)
        self.on_table = on_table
        self.num_rows = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._ts: list[np.ndarray] = []
        self.ts = np.zeros(0)
        self._dir: str | None = None
        self._writer = None
        self._reader = None
        self._file = None
        self._chunks = 0        # batches written to the file
        self._memory: pa.Table | None = None
        self._cached: tuple[int, pa.Table] | None = None

    # writing
    def append(self, table: pa.Table) -> None:
        """Add ``table`` (``CONN_SCHEMA``) after the rows appended so far."""
        if table.num_rows == 0:
            return
        if self.on_table is not None:
            self.on_table(table, self.num_rows)
        self._ts.append(ts_sort_key(table))
        self.num_rows += table.num_rows
        self._pending.append(table)
        self._pending_rows += table.num_rows
        while self._pending_rows >= self.chunk_rows and (
                self._dir is not None or self._pending_rows > ONE_TABLE_CHUNKS * self.chunk_rows):
            # more than one table's chunks: from now on the input lives on disk
            self._write_chunk()

    def _write_chunk(self, rows: int | None = None) -> None:
        rows = self.chunk_rows if rows is None else rows
        if self._writer is None:
            self._dir = tempfile.mkdtemp(prefix="zeekml-score-")   # 0700, ours alone
            path = os.path.join(self._dir, "conns.arrow")
            self._file = pa.OSFile(path, "wb")
            self._writer = pa.ipc.new_file(self._file, CONN_SCHEMA)
        pending = pa.concat_tables(self._pending)
        self._writer.write_table(pending.slice(0, rows).combine_chunks(), max_chunksize=rows)
        rest = pending.slice(rows)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows
        self._chunks += 1

    def finish(self) -> None:
        """No more rows: write the last chunk and open the file for reading."""
        self.ts = np.concatenate(self._ts) if self._ts else np.zeros(0)
        self._ts = []
        if self._writer is None:
            self._memory = (pa.concat_tables(self._pending).combine_chunks() if self._pending
                            else CONN_SCHEMA.empty_table())
            self._pending = []
            return
        if self._pending_rows:
            self._write_chunk(self._pending_rows)
        self._writer.close()
        self._file.close()
        self._writer = None
        self._reader = pa.ipc.open_file(pa.OSFile(os.path.join(self._dir, "conns.arrow"), "rb"))

    @property
    def spilled(self) -> bool:
        """Whether the rows went to disk (more than ``ONE_TABLE_CHUNKS`` chunks)."""
        return self._dir is not None

    @property
    def n_chunks(self) -> int:
        """Chunks to score (at least one)."""
        return max(1, self._reader.num_record_batches) if self._reader is not None else 1

    # reading
    def bounds(self, i: int) -> tuple[int, int]:
        """``[start, stop)`` row range of chunk ``i``."""
        if self._reader is None:
            return 0, self.num_rows
        start = i * self.chunk_rows
        return start, min(start + self.chunk_rows, self.num_rows)

    def chunk(self, i: int) -> pa.Table:
        """The rows of chunk ``i`` (the one last read is kept: context reads hit it often)."""
        if self._reader is None:
            return self._memory
        if self._cached is None or self._cached[0] != i:
            self._cached = (i, pa.Table.from_batches([self._reader.get_batch(i)]))
        return self._cached[1]

    def table(self) -> pa.Table:
        """Every row as one table: only for an input that was not spilled."""
        if self._reader is not None:
            raise RuntimeError("the input was spilled to disk; read it chunk by chunk")
        return self._memory

    def take(self, rows: np.ndarray) -> pa.Table:
        """The rows at the sorted global indices ``rows``, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._reader is None:
            return self._memory.take(pa.array(rows, pa.int64()))
        parts = []
        chunk_of = rows // self.chunk_rows
        for i in np.unique(chunk_of).tolist():
            local = rows[chunk_of == i] - i * self.chunk_rows
            parts.append(self.chunk(i).take(pa.array(local, pa.int64())))
        return pa.concat_tables(parts) if parts else CONN_SCHEMA.empty_table()

    def close(self) -> None:
        """Drop the file and its directory (safe to call twice, also after a failure)."""
        self._cached = None
        self._reader = None
        for closable in (self._writer, self._file):
            if closable is not None:
                try:
                    closable.close()
                except (OSError, pa.ArrowException):
                    pass    # the directory goes anyway; its removal is what matters
        self._writer = self._file = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> "SpilledConns":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def spill_inputs(paths: list[str], quarantine: Quarantine, summary: ScoreSummary,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS, on_bytes: ProgressFn | None = None,
                 on_table: Callable[[pa.Table, int], None] | None = None,
                 on_other: Callable[[LogBatch], object] | None = None) -> SpilledConns:
    """Read every file once into a ``SpilledConns`` (finished: ready to read back). The caller
    closes it; on an error here it is closed before the error goes on. ``on_other``: as for
    ``read_conn_batches``."""
    spill = SpilledConns(chunk_rows, on_table)
    try:
        for b in read_conn_batches(paths, quarantine, summary, on_bytes, on_other):
            spill.append(conn_table([b]))
        spill.finish()
    except BaseException:
        spill.close()
        raise
    return spill


# -- scoring with context -------------------------------------------------------------------------

def score_in_context(table: pa.Table, fitted: FittedDetectors, before: list[pa.Table] | None = None,
                     after: list[pa.Table] | None = None,
                     how: side_by_side.SideBySide | None = None,
                     while_explaining: ChunkFn | None = None,
                     known: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> VerdictBatch:
    """The verdicts of the rows of ``table``; ``before``/``after`` are context rows (in the
    whole input's order, before and after ``table``'s) that detectors with a time context see
    but that get no verdict. ``--dask`` tasks and chunks are scored with it; ``how`` and
    ``while_explaining`` as in ``score_batch``. ``known``: per detector name, ``(rows [n] bool,
    scores [n])``, its scores of those rows computed already (``BaselineScores``): only the
    other rows are scored (``scoring.context.WithKnownScores``)."""
    return score_batch(table, in_context(table, fitted, before, after, known), how=how,
                       while_explaining=while_explaining)


def in_context(table: pa.Table, fitted: FittedDetectors, before: list[pa.Table] | None = None,
               after: list[pa.Table] | None = None,
               known: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> FittedDetectors:
    """``fitted`` with its detectors set up to score the rows of ``table`` among ``before`` and
    ``after`` and to take the ``known`` scores (``score_in_context``)."""
    before, after = before or [], after or []
    known = {name: k for name, k in (known or {}).items() if k[0].any()}
    if not before and not after and not known:
        return fitted
    whole, targets = with_context(before, table, after)
    detectors = detectors_in_context(fitted.detectors, whole, targets)
    detectors = [WithKnownScores(d, base, whole, targets, *known[base.name]) if base.name in known else d
                 for d, base in zip(detectors, fitted.detectors)]
    return dataclasses.replace(fitted, detectors=detectors)


@dataclass
class BaselineScores:
    """The detectors' scores of the baseline conns, from the fit (``fit_calibrate`` scoring
    the baseline table as its own input), for the chunks not to score them again: per detector,
    of the baseline conns whose context in the whole input holds baseline conns only
    (``scoring.context.context_within``; a conn near the end of the baseline period sees later
    conns there, and is scored again). The baseline is the earliest share of the input, so
    beyond one chunk this is 30% of the learned models' work by default; 9 bytes a baseline
    conn per detector.

    Attributes: ``at`` ``[N]`` each input row's place in the baseline (-1: not in it);
    ``scores`` and ``usable`` per detector name, ``[m]`` each."""

    at: np.ndarray
    scores: dict[str, np.ndarray]
    usable: dict[str, np.ndarray]

    @classmethod
    def of(cls, ts: np.ndarray, rows: np.ndarray, raw: dict[str, np.ndarray],
           detectors: list) -> "BaselineScores":
        """``raw``: ``fit_calibrate``'s scores of the baseline ``rows`` (input rows, sorted;
        ``ts`` the input's, as ``ts_sort_key`` gives them)."""
        at = np.full(len(ts), -1, dtype=np.int64)
        at[rows] = np.arange(len(rows), dtype=np.int64)
        usable = {det.name: context_within(ts, rows, *horizon(det))
                  for det in detectors if det.name in raw}
        return cls(at, {name: raw[name] for name in usable}, usable)

    def of_chunk(self, start: int, stop: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per detector, ``(rows known [n] bool, scores [n])`` of input rows ``[start, stop)``."""
        at = self.at[start:stop]
        mine = at >= 0
        out = {}
        for name, usable in self.usable.items():
            known = mine.copy()
            known[mine] = usable[at[mine]]
            scores = np.zeros(len(at))
            scores[known] = self.scores[name][at[known]]
            out[name] = (known, scores)
        return out


def context_rows(ts: np.ndarray, start: int, stop: int, back: float,
                 fwd: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the rows before ``start`` and from ``stop`` on whose ``ts`` lies within
    ``back`` seconds before and ``fwd`` after the time range of rows ``[start, stop)`` (the
    rows a detector with that horizon may look at; ``ts`` as ``ts_sort_key``)."""
    window = context_window(ts[start:stop], back, fwd)
    if window is None:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    lo, hi = window
    with np.errstate(invalid="ignore"):
        near = (ts >= lo) & (ts <= hi)
    return np.flatnonzero(near[:start]), np.flatnonzero(near[stop:]) + stop


# -- what incidents need --------------------------------------------------------------------------

@dataclass
class TriagePart:
    """What the incidents need of one scored batch: its alerting verdicts (an alerts-only
    ``VerdictBatch``) and, per conn, originator and responder (dictionary-coded: ``*_codes``
    index ``*_names``) and ``ts`` as the incidents read it (unset = 0.0). Small enough to send
    back from a Dask worker."""

    alerts: VerdictBatch
    orig_codes: np.ndarray
    orig_names: list[str]
    resp_codes: np.ndarray
    resp_names: list[str]
    ts: np.ndarray


def alerts_only(batch: VerdictBatch) -> VerdictBatch:
    """The alerting rows of ``batch`` as a ``VerdictBatch`` of their own, for the incidents:
    ``sub`` (the detector's reason, which an incident's top conns show) kept, ``msg`` not (the
    incidents write their own; an archive that is mostly malware alerts on nearly every conn,
    and a message is ~200 bytes of Python string a conn)."""
    rows = np.flatnonzero(np.asarray(batch.alert, dtype=bool))
    new = {int(r): i for i, r in enumerate(rows.tolist())}
    return VerdictBatch(batch.table.take(pa.array(rows, pa.int64())), list(batch.names),
                        list(batch.notes), {n: np.asarray(s)[rows] for n, s in batch.scores.items()},
                        np.asarray(batch.score)[rows], np.asarray(batch.top)[rows],
                        np.asarray(batch.alert)[rows], {},
                        {new[r]: s for r, s in batch.sub.items() if r in new},
                        suricata_alerts={new[r]: a for r, a in batch.suricata_alerts.items()
                                         if r in new})


def triage_part(batch: VerdictBatch) -> TriagePart:
    """``batch``'s ``TriagePart`` (after the allowlist: suppressed conns no longer alert)."""
    t = batch.table
    oc, on = string_codes(t.column("id.orig_h"))
    rc, rn = string_codes(t.column("id.resp_h"))
    ts = pc.fill_null(pc.cast(t.column("ts"), pa.float64()), 0.0).to_numpy(zero_copy_only=False)
    return TriagePart(alerts_only(batch), oc, on, rc, rn, np.asarray(ts, dtype=np.float64))


@dataclass
class TriageRows:
    """``TriagePart``s of every chunk or task, in input order, gathered for the incidents:
    ``alerts()`` and ``host_times()`` give ``incidents_from_batch`` the incidents of one batch
    of everything. Memory: the alerting rows, plus 16 bytes per conn."""

    hosts: dict[str, int] = field(default_factory=dict)
    _alerts: list[VerdictBatch] = field(default_factory=list)
    _orig: list[np.ndarray] = field(default_factory=list)
    _resp: list[np.ndarray] = field(default_factory=list)
    _ts: list[np.ndarray] = field(default_factory=list)

    def _global(self, codes: np.ndarray, names: list[str]) -> np.ndarray:
        lut = np.array([self.hosts.setdefault(h, len(self.hosts)) for h in names], dtype=np.int32)
        return lut[codes] if len(codes) else np.zeros(0, dtype=np.int32)

    def add(self, part: TriagePart) -> None:
        """Append the next part."""
        self._alerts.append(part.alerts)
        self._orig.append(self._global(part.orig_codes, part.orig_names))
        self._resp.append(self._global(part.resp_codes, part.resp_names))
        self._ts.append(part.ts)

    def add_batch(self, batch: VerdictBatch) -> None:
        """Append a scored batch (``triage_part`` of it)."""
        self.add(triage_part(batch))

    def alerts(self) -> VerdictBatch:
        """The alerting verdicts of every part, in order, as one ``VerdictBatch``."""
        parts = [a for a in self._alerts if len(a)] or self._alerts[:1]
        if not parts:
            empty = np.zeros(0)
            return VerdictBatch(CONN_SCHEMA.empty_table(), [], [], {}, empty,
                                np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool))
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        # the per-row dicts (the incidents read the detectors' reasons, ``sub``, and the
        # Suricata alerts) are keyed by row: shift each part's rows by the rows before it
        msg, sub, suricata, offset = {}, {}, {}, 0
        for p in parts:
            msg.update({offset + r: m for r, m in p.msg.items()})
            sub.update({offset + r: x for r, x in p.sub.items()})
            suricata.update({offset + r: a for r, a in p.suricata_alerts.items()})
            offset += len(p)
        return VerdictBatch(pa.concat_tables([p.table for p in parts]), first.names, first.notes,
                            {n: np.concatenate([p.scores[n] for p in parts]) for n in first.names},
                            np.concatenate([p.score for p in parts]),
                            np.concatenate([p.top for p in parts]),
                            np.concatenate([p.alert for p in parts]), msg, sub,
                            suricata_alerts=suricata)

    def host_times(self) -> dict[str, HostTimes]:
        """``incidents.build_incidents``'s ``host_times`` over every conn added."""
        ts = np.concatenate(self._ts) if self._ts else np.zeros(0)
        orig = np.concatenate(self._orig) if self._orig else np.zeros(0, dtype=np.int32)
        resp = np.concatenate(self._resp) if self._resp else np.zeros(0, dtype=np.int32)
        return {"orig": HostTimes(orig, ts, self.hosts), "resp": HostTimes(resp, ts, self.hosts)}


@dataclass
class TriageBaseline:
    """What the triage outputs need of the baseline once the detectors are fitted (the baseline
    itself, up to 30% of the input, is not kept while the chunks are scored): its size and
    period, its per-kind profile (the explanations' reference) and the columns of
    ``incidents.host_baseline_bytes``."""

    conns: int
    period: tuple[float | None, float | None]
    profile: BaselineProfile | None
    table: pa.Table

    @classmethod
    def of(cls, baseline: pa.Table) -> "TriageBaseline":
        """Made from the baseline conn table."""
        if baseline.num_rows == 0:
            return cls(0, (None, None), None, baseline)
        ts = pc.min_max(baseline.column("ts")).as_py()
        return cls(baseline.num_rows, (ts.get("min"), ts.get("max")), BaselineProfile().fit(baseline),
                   baseline.select(BYTES_COLUMNS))


# -- the run --------------------------------------------------------------------------------------

TRIAGE_LANE = "triage baseline"
"""The lane ``TriageBaseline.of`` runs on beyond one table (no detector has that name)."""

ChunkFn = Callable[[VerdictBatch], None]
"""Receives each scored chunk's verdicts, in input order."""


def score_spilled(spill: SpilledConns, baseline: pa.Table | None, options: ScoreOptions,
                  summary: ScoreSummary, on_chunk: ChunkFn,
                  fit_extra: Callable[[pa.Table | None, np.ndarray | None], pa.Table] | None = None,
                  on_step: StepFn | None = None,
                  on_scored: ChunkFn | None = None) -> TriageBaseline:
    """Choose the baseline (unless ``baseline`` is given), fit and calibrate, score every chunk
    of ``spill`` and hand its verdicts to ``on_chunk``; returns what the triage outputs need of
    the baseline (``TriageBaseline``: the baseline table is dropped before the chunks are
    scored). ``on_scored(batch)``: each chunk's verdicts before ``on_chunk`` gets them, scored
    but not yet explained, while the detectors explain its alerts (``score_batch``'s
    ``while_explaining``: what needs no explanation, such as rendering the verdict lines).

    ``fit_extra(baseline, rows)``: the benign feedback conns that join the fitting side
    (``batch._feedback_extra``), given the baseline and the chosen rows (None with a
    ``--baseline`` file)."""
    step = on_step or (lambda text: None)
    # with learned detectors every detector featurises the same tables: share what they
    # compute of each (features.table_memo) while they fit and score, and compute the part
    # that needs no model now, while the background thread still imports torch and
    # scikit-learn (``prepare``)
    shared = table_memo.scope if options.models_dir is not None else contextlib.nullcontext
    rows = None
    known: BaselineScores | None = None     # the baseline's scores from the fit (below)
    if baseline is None:
        rows = options.baseline_rows(spill.ts) if spill.num_rows else None
    extra = fit_extra(baseline, rows) if fit_extra is not None else None
    if baseline is None:
        baseline = spill.take(rows) if rows is not None else spill.table()
    summary.baseline_records = baseline.num_rows + (extra.num_rows if extra is not None else 0)
    if spill.num_rows == 0:
        wait_started()
        on_chunk(score_batch(CONN_SCHEMA.empty_table(), FittedDetectors([], {}, options.fpr)))
        return TriageBaseline.of(baseline)
    with shared():
        prepare([baseline] if spill.spilled else [baseline, spill.table()])
        # the libraries of the detectors were imported in the background while the input was
        # read (score_paths): this thread imports none of them before they are in
        # (_core.preload)
        wait_started()
        if options.models_dir is not None:
            # $ZEEKML_TORCH_THREADS / $OMP_NUM_THREADS when set; never a count chosen from the
            # load, which would move the MoE's last bits with it
            # (_core.device.configure_torch_if_asked)
            configure_torch_if_asked()
        if not spill.spilled:
            # one chunk: fit_calibrate scores the per-conn detectors once over the whole input
            # and takes the calibration scores from that (``fit_calibrate``'s reuse)
            table = spill.table()
            raw: dict[str, np.ndarray] = {}
            fitted = fit_calibrate(baseline, options, summary,
                                   scored=table if rows is not None else None, rows=rows, raw=raw,
                                   fit_extra=extra, on_step=on_step)
            batch = score_batch(table, fitted, raw, on_step=on_step,
                                how=side_by_side.plan(len(fitted.detectors)),
                                while_explaining=on_scored)
        elif rows is not None:
            # the baseline drawn from the input: the fit scores it as its own input, and the
            # chunks take those scores where its conns' context is the same (BaselineScores)
            raw = {}
            fitted = fit_calibrate(baseline, options, summary, scored=baseline,
                                   rows=np.arange(baseline.num_rows, dtype=np.int64), raw=raw,
                                   fit_extra=extra, on_step=on_step)
            known = BaselineScores.of(spill.ts, rows, raw, fitted.detectors)
            del raw
        else:
            fitted = fit_calibrate(baseline, options, summary, fit_extra=extra, on_step=on_step)
    if not spill.spilled:
        on_chunk(batch)          # written once the shared features are dropped (``on_scored``
                                 # rendered its lines while its alerts were explained)
        return TriageBaseline.of(baseline)
    back, fwd = horizons(fitted)
    # chunk i + 1 is handed to the detectors before chunk i is explained and written: a
    # detector done with chunk i starts the next while another still scores chunk i, and
    # chunk i's explanations and verdict lines overlap the next one's scoring
    # (``side_by_side.Lanes``; the same calls per detector in the same order, so the same bits)
    in_flight: list[tuple[int, pa.Table, FittedDetectors, dict]] = []

    def finish(lanes: side_by_side.Lanes) -> None:
        i, table, fitted_i, futures = in_flight.pop(0)
        raw = side_by_side.collect(futures)
        on_chunk(score_batch(table, fitted_i, raw, how=lanes.at(i), while_explaining=on_scored))

    how = side_by_side.plan(len(fitted.detectors))
    # a detector whose calls share nothing (the known-bad classifiers) may score two chunks at
    # once: alone among cheap ones it would keep one thread busy and the other waiting
    widths = {det.name: how.workers for det in fitted.detectors
              if getattr(det, "calls_side_by_side", False)}
    with side_by_side.Lanes(how, widths) as lanes, shared():
        # what the triage outputs keep of the baseline, made on a lane of its own while the
        # first chunks are scored (0.8 s of a 300k-conn baseline's profile, in which the
        # threads had nothing to do); the chunks are scored without the baseline
        kept = lanes.submit(TRIAGE_LANE, functools.partial(TriageBaseline.of, baseline), order=-1)
        del baseline, extra
        for i in range(spill.n_chunks):
            start, stop = spill.bounds(i)
            step(f"scoring conns {start + 1:,}-{stop:,} of {spill.num_rows:,}")
            # the freed pages of the chunks done (or of the fit) back to the system: glibc kept
            # them, and each chunk began higher (1M conns with the shipped models: 883 -> 1,922
            # MiB at a chunk's start, peak 2,499 MiB; trimmed, 729-953 MiB and 2,124 MiB;
            # bench/README.md); the shared featurisation of the tables of chunks done goes too
            table_memo.drop_dead()
            trim_heap()
            before_rows, after_rows = context_rows(spill.ts, start, stop, back, fwd)
            before = [spill.take(before_rows)] if len(before_rows) else []
            after = [spill.take(after_rows)] if len(after_rows) else []
            table = spill.chunk(i)
            fitted_i = in_context(table, fitted, before, after,
                                  known.of_chunk(start, stop) if known is not None else None)
            del before, after
            in_flight.append((i, table, fitted_i, {
                det.name: lanes.submit(det.name, functools.partial(det.score, table), order=i)
                for det in fitted_i.detectors}))
            if len(in_flight) > 1:
                finish(lanes)
        while in_flight:
            finish(lanes)
        return kept.result()


def prepare(tables: list[pa.Table]) -> None:
    """Featurise ``tables`` as far as no model is needed, into the open ``table_memo`` scope
    (nothing outside one): each table's flow features that depend on the conn alone, its
    host-history index and host-sequence steps (``features.flow_features.prepare``,
    ``features.modality.prepare``), which the IsolationForest, the GNN, the autoencoder and
    the token models read later. ``score_spilled`` calls it before waiting for the background
    imports, so this work runs while they do instead of after them."""
    if not table_memo.active():
        return
    # imported here: --no-models never reads host sequences (10 ms at every start otherwise)
    from zeekml.features import modality

    for t in tables:
        flow_features.prepare(t)
        modality.prepare(t)
