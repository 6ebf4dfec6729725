"""Choosing conns by time: the earliest fraction of a table (a baseline, a training split)."""
from __future__ import annotations

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
