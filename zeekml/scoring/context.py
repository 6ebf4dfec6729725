"""Scoring conns together with the conns around them in time (split and live scoring).

A detector whose score of a conn depends on other conns says how far in time with
``context_seconds`` (the GNN's graph windows, the autoencoder's and the token models' host
histories). Scoring a *part* of a log then gives the verdicts of scoring the whole log when each
contextual detector sees, beside the part's rows, every other row within its horizon of them.
``zeekml score --dask`` (byte-range tasks, ``zeekml.pipeline.dask``) and ``zeekml watch`` (live
windows, ``zeekml.pipeline.live``) both score that way through this module.

Horizon of a detector: ``context_seconds`` back and ``forward_context_seconds`` forward. A
detector without ``forward_context_seconds`` is taken to look as far forward as back (safe).
A detector with a ``context_key`` column sees only the conns sharing a scored conn's value of it:
the host-history detectors (autoencoder, MoE/dense; ``features.modality.host_sequences``,
``features.tokens.FlowTokenizer``) declare ``forward_context_seconds = 0`` and
``context_key = "id.orig_h"``, since only their originator's earlier conns change their score.
One that also declares ``context_key_rows = L`` (only the latest ``L`` conns of its key, up to
and including the conn, count) gets, per key, only the rows from the ``L - 1``-th before its
earliest target on: on a busy link an originator's hour is thousands of conns.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zeekml.features.host_history import dictionary_codes

def context_key(det) -> str | None:
    """The column whose value a context conn must share with the conn scored, if any."""
    return getattr(det, "context_key", None) or None


def context_key_rows(det) -> int | None:
    """How many conns sharing a conn's ``context_key`` value can change its score, if the
    detector says: the latest ones by ``(ts, arrival)`` up to and including it (the host
    histories: the originator's last 16 or 32 conns within the hour)."""
    n = getattr(det, "context_key_rows", None)
    return int(n) if n else None


def latest_per_key(codes: np.ndarray, ts: np.ndarray, rows: np.ndarray, is_target: np.ndarray,
                   length: int) -> np.ndarray:
    """Which of ``rows`` (sorted row indices, their key ``codes``, ``ts`` with unset as 0.0,
    and whether each is a target) a target can have among its key's latest ``length`` conns
    up to and including itself, ordered by ``(ts, row)``: per key, every row from the
    ``length - 1``-th before its earliest target on (a later target's window starts there or
    later). Keys without a target keep nothing.

    Shapes: all ``[n]``; returns a bool mask ``[n]``."""
    n = len(rows)
    if n == 0:
        return np.zeros(0, dtype=bool)
    order, starts, group_of = _key_runs(codes, ts, rows)
    pos = np.arange(n)
    first = np.minimum.reduceat(np.where(is_target[order], pos, n), starts)
    f = first[group_of]
    keep = np.zeros(n, dtype=bool)
    keep[order] = (pos >= f - (length - 1)) & (f < n)
    return keep


def last_per_key(codes: np.ndarray, ts: np.ndarray, rows: np.ndarray, count: int) -> np.ndarray:
    """Which of ``rows`` (row indices, their key ``codes`` and ``ts``) are among their key's last
    ``count`` by ``(ts, row)``: what a conn later than all of them can have of its key's history
    (``zeekml watch`` keeps these of the conns older than its pending ones).

    Shapes: all ``[n]``; returns a bool mask ``[n]``."""
    n = len(rows)
    if n == 0 or count <= 0:
        return np.zeros(n, dtype=bool)
    order, starts, group_of = _key_runs(codes, ts, rows)
    last = np.append(starts[1:], n) - 1                       # each key's last sorted position
    keep = np.zeros(n, dtype=bool)
    keep[order] = last[group_of] - np.arange(n) < count
    return keep


def _key_runs(codes: np.ndarray, ts: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``rows`` ordered by ``(key, ts, row)``: the order, the first sorted position of each key's
    run, and the run of each sorted position."""
    order = np.lexsort((rows, ts, codes))
    grp = codes[order]
    start = np.ones(len(rows), dtype=bool)
    start[1:] = grp[1:] != grp[:-1]
    return order, np.flatnonzero(start), np.cumsum(start) - 1


def context_parts(det) -> list:
    """The parts whose contexts together make ``det``'s: a composite detector (a committee of
    classifiers) declares ``context_parts``, each with its own horizon, ``context_key`` and
    ``context_key_rows`` (its members); any other detector is its one part. A committee of a
    graph member (every conn of 50 s) and host-history members (their hosts' last conns of 5 h)
    needs both, not every conn of 5 h."""
    return list(getattr(det, "context_parts", None) or [det])


def horizon(det) -> tuple[float, float]:
    """``(back, forward)`` seconds of other conns that can change ``det``'s score of a conn."""
    back = float(getattr(det, "context_seconds", 0.0) or 0.0)
    fwd = getattr(det, "forward_context_seconds", None)
    return back, float(back if fwd is None else fwd)


def horizons(detectors) -> tuple[float, float]:
    """The widest ``(back, forward)`` of ``detectors``."""
    dets = getattr(detectors, "detectors", detectors)
    hs = [horizon(d) for d in dets] or [(0.0, 0.0)]
    return max(h[0] for h in hs), max(h[1] for h in hs)


def context_window(ts: np.ndarray, back: float, fwd: float) -> tuple[float, float] | None:
    """The time range ``(lo, hi)`` a detector with horizon ``(back, fwd)`` may look at around
    conns at ``ts`` (unset, NaN or inf, ignored): ``back`` seconds before the earliest to ``fwd``
    after the latest. None when nothing around a conn counts or no ``ts`` is set."""
    own = ts[np.isfinite(ts)]
    if (back <= 0 and fwd <= 0) or len(own) == 0:
        return None
    return float(own.min()) - back, float(own.max()) + fwd


def ts_array(table: pa.Table) -> np.ndarray:
    """``ts`` as float64 with NaN where unset."""
    return pc.fill_null(table.column("ts").cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False)


def take_ts_range(table: pa.Table, lo: float, hi: float) -> pa.Table:
    """Rows with ``lo <= ts <= hi``, in order."""
    ts = ts_array(table)
    return table.filter(pa.array((ts >= lo) & (ts <= hi)))


class InContext:
    """``det`` scoring the rows ``positions`` of ``context`` (a table holding them among their
    neighbours in the original order), presented as a detector of just those rows: ``score`` and
    ``explain`` ignore the table they are handed, which must be ``context.take(positions)``."""

    def __init__(self, det, context: pa.Table, positions: np.ndarray):
        self.det = det
        self.name = det.name
        self.note = det.note
        self.context = context
        self.positions = positions

    def fit(self, table: pa.Table):
        raise TypeError("InContext detectors only score")

    def score(self, table: pa.Table) -> np.ndarray:
        score_rows = getattr(self.det, "score_rows", None)
        if score_rows is not None:            # the model runs on the targets only
            return np.asarray(score_rows(self.context, self.positions))
        return np.asarray(self.det.score(self.context))[self.positions]

    def explain(self, table: pa.Table, rows: np.ndarray, top: int = 3) -> list[str]:
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            # nothing to explain: ``score_batch`` asks every detector, also those that top no
            # alert, and a learned detector featurises its whole context to explain none
            # (0.8 of the watcher's ~8 CPU s on bench/watch.py's dense probe)
            return []
        return self.det.explain(self.context, self.positions[rows], top)


def detectors_in_context(detectors, table: pa.Table, targets: np.ndarray,
                         ts: np.ndarray | None = None) -> list:
    """``detectors`` set up to score ``table.take(targets)``: per-conn detectors as they are,
    each contextual one as ``InContext`` over the rows of ``table`` within its horizon of the
    targets' time range (plus the targets), and for a detector with a ``context_key`` only the
    rows sharing a target's value of that column. ``table`` holds rows in the order the whole log
    would (ties in ``ts`` are broken by that order); ``targets`` are sorted row indices."""
    targets = np.asarray(targets, dtype=np.int64)
    if ts is None:
        ts = ts_array(table)
    own = ts[targets]
    own = own[np.isfinite(own)]
    out = []
    for det in detectors:
        back, fwd = horizon(det)
        if (back <= 0 and fwd <= 0) or len(targets) == table.num_rows:
            out.append(det)
            continue
        parts = context_parts(det)
        rows = _part_rows(parts[0], table, targets, ts, own)
        for part in parts[1:]:
            rows = np.union1d(rows, _part_rows(part, table, targets, ts, own))
        if len(rows) == len(targets):
            out.append(det)
            continue
        ctx = table.take(pa.array(rows, pa.int64()))
        out.append(InContext(det, ctx, np.searchsorted(rows, targets)))
    return out


def _part_rows(det, table: pa.Table, targets: np.ndarray, ts: np.ndarray, own: np.ndarray) -> np.ndarray:
    """The rows of ``table`` one context part ``det`` needs to score ``targets`` (sorted, the
    targets among them): those within its horizon of the targets' time range (``own``: their
    set times), sharing a target's ``context_key`` value if it has one, and of those only each
    key's latest ``context_key_rows`` up to a target if it declares them."""
    back, fwd = horizon(det)
    mask = np.zeros(table.num_rows, dtype=bool)
    if len(own) and (back > 0 or fwd > 0):
        with np.errstate(invalid="ignore"):
            mask = (ts >= own.min() - back) & (ts <= own.max() + fwd)
    key = context_key(det)
    if key is not None and key in table.column_names:
        col = table.column(key)
        wanted = pc.unique(col.take(pa.array(targets, pa.int64())))
        same = pc.is_in(col, value_set=wanted, skip_nulls=False)
        mask &= same.to_numpy(zero_copy_only=False).astype(bool)
    mask[targets] = True
    rows = np.flatnonzero(mask)
    length = context_key_rows(det)
    if length is not None and key is not None and key in table.column_names and len(rows):
        # an originator with an hour of conns keeps only the few its targets can see
        sub = table.column(key).take(pa.array(rows, pa.int64()))
        codes = dictionary_codes(sub)
        is_target = np.zeros(len(rows), dtype=bool)
        is_target[np.searchsorted(rows, targets)] = True
        rows = rows[latest_per_key(codes, np.nan_to_num(ts[rows], nan=0.0), rows,
                                   is_target, length)]
    return rows


def context_within(ts: np.ndarray, rows: np.ndarray, back: float, fwd: float) -> np.ndarray:
    """Which of ``rows`` (indices into the whole input, ``ts`` its times as ``ts_sort_key``
    gives them: unset = +inf) have no other conn than ``rows`` within ``back`` seconds before and
    ``fwd`` after them: a detector with that horizon scores such a row among ``rows`` alone as
    among the whole input. None of them when a conn outside ``rows`` has no time (where it falls
    in a host's history is not a matter of seconds), nor those without one themselves.

    Shapes: ts ``[N]``, rows ``[m]`` -> ``[m]`` bool"""
    rows = np.asarray(rows, dtype=np.int64)
    if back <= 0 and fwd <= 0:
        return np.ones(len(rows), dtype=bool)
    outside = np.ones(len(ts), dtype=bool)
    outside[rows] = False
    other = ts[outside]
    if not np.isfinite(other).all():
        return np.zeros(len(rows), dtype=bool)
    other = np.sort(other)
    t = ts[rows]
    ok = np.isfinite(t)
    lo = np.searchsorted(other, t[ok] - back, side="left")
    hi = np.searchsorted(other, t[ok] + fwd, side="right")
    ok[ok] = hi == lo
    return ok


class WithKnownScores:
    """``det`` (as ``detectors_in_context`` set it up for the targets of ``whole``) with some of
    its targets' scores known already (``known``: ``[n]`` bool, ``scores``: ``[n]``, read where
    known): only the others are scored, among the same context; ``explain`` as ``det``'s. A
    row's score does not depend on the other rows scored with it, so the scores are those of
    scoring every target. ``base``: the detector itself, which scores the rest."""

    def __init__(self, det, base, whole: pa.Table, targets: np.ndarray, known: np.ndarray,
                 scores: np.ndarray):
        self.det, self.base = det, base
        self.name, self.note = det.name, det.note
        self.whole, self.targets = whole, np.asarray(targets, dtype=np.int64)
        self.known, self.scores = np.asarray(known, dtype=bool), np.asarray(scores, dtype=np.float64)

    def fit(self, table: pa.Table):
        raise TypeError("WithKnownScores detectors only score")

    def score(self, table: pa.Table) -> np.ndarray:
        out = np.where(self.known, self.scores, np.nan)
        todo = np.flatnonzero(~self.known)
        if len(todo):
            (sub,) = detectors_in_context([self.base], self.whole, self.targets[todo])
            out[todo] = sub.score(table.take(pa.array(todo, pa.int64())))
        return out

    def explain(self, table: pa.Table, rows: np.ndarray, top: int = 3) -> list[str]:
        return self.det.explain(table, rows, top)


def with_context(before: list[pa.Table], own: pa.Table,
                 after: list[pa.Table]) -> tuple[pa.Table, np.ndarray]:
    """``before + own + after`` as one table and the row indices of ``own`` in it."""
    n0 = sum(t.num_rows for t in before)
    if not before and not after:
        return own, np.arange(own.num_rows, dtype=np.int64)
    table = pa.concat_tables([*before, own, *after])
    return table, np.arange(n0, n0 + own.num_rows, dtype=np.int64)
