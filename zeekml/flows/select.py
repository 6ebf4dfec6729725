"""Choosing conns: by time (the earliest fraction of a table, or a period: a baseline, a
training split; the times a user gives, epoch seconds or ISO-8601) and by uid (the conns
``zeekml feedback`` labeled benign)."""
from __future__ import annotations

import datetime as _dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def ts_sort_key(table: pa.Table) -> np.ndarray:
    """``ts`` as float64 for ordering by time: an unset ``ts`` is +inf, so it sorts last."""
    return pc.fill_null(table.column("ts"), np.inf).to_numpy(zero_copy_only=False)


def earliest_rows(ts: np.ndarray, fraction: float, min_rows: int = 0) -> np.ndarray:
    """Sorted indices of the earliest ``round(len(ts) * fraction)`` rows by ``ts`` (at least
    ``min_rows``, at most all): ties keep input order, so the choice is the same however the
    rows were read (one process or a Dask cluster of any size).

    Args:
        ts: per-row time, as ``ts_sort_key`` gives it.
        fraction: the share of rows wanted, in (0, 1].
        min_rows: fewest rows to choose (default 0).
    """
    k = max(min_rows, int(round(len(ts) * fraction)))
    return np.sort(np.argsort(ts, kind="stable")[:k])


def parse_time(text: str) -> float:
    """Epoch seconds from ``text``: a number (``1700000000``, ``1.7e9``) or ISO-8601
    (``2026-11-23``, ``2026-11-23T10:00:00``, ``...Z``, ``...+01:00``; no zone = UTC).

    Raises ``ValueError`` with a one-line message when it is neither.
    """
    t = text.strip()
    try:
        value = float(t)
    except ValueError:
        pass
    else:
        if not np.isfinite(value):
            raise ValueError(f"not a finite time: {text!r}")
        return value
    try:
        when = _dt.datetime.fromisoformat(t[:-1] + "+00:00" if t.endswith(("Z", "z")) else t)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (epoch seconds or ISO-8601 such as "
                         "2026-11-23T10:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return when.timestamp()


def parse_time_range(text: str) -> tuple[float, float]:
    """``(start, end)`` epoch seconds from ``START,END`` (each as ``parse_time`` reads it);
    ``end`` must be after ``start``. Raises ``ValueError`` with a one-line message."""
    parts = text.split(",")
    if len(parts) != 2:
        raise ValueError(f"not a time range: {text!r} (START,END)")
    start, end = parse_time(parts[0]), parse_time(parts[1])
    if end <= start:
        raise ValueError(f"the range ends before it starts: {text!r}")
    return start, end


def format_time(t: float) -> str:
    """``t`` (epoch seconds) as ISO-8601 UTC, for messages."""
    when = _dt.datetime.fromtimestamp(t, tz=_dt.timezone.utc)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def rows_in_range(ts: np.ndarray, start: float | None, end: float | None) -> np.ndarray:
    """Sorted indices of the rows with ``start <= ts < end`` (None = open on that side); an
    unset ``ts`` (+inf in ``ts_sort_key``) is in no closed period."""
    keep = np.isfinite(ts)
    if start is not None:
        keep &= ts >= start
    if end is not None:
        keep &= ts < end
    return np.flatnonzero(keep)


def feedback_rows(table: pa.Table, uids: set[str]) -> np.ndarray:
    """Sorted indices of the conns of ``table`` whose uid is in ``uids`` (``zeekml feedback``'s
    benign conns)."""
    if not uids or table.num_rows == 0 or "uid" not in table.column_names:
        return np.zeros(0, dtype=np.int64)
    hit = pc.is_in(table.column("uid"), value_set=pa.array(sorted(uids), pa.string()))
    return np.flatnonzero(hit.to_numpy(zero_copy_only=False).astype(bool, copy=False))
