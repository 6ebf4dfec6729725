"""One index of every originator's conns in time order, shared by the host-history featurisers.

The token transformer's host tokens (``features.tokens``) and the autoencoder's host sequences
(``features.modality``) both read, for each conn, its originator's earlier conns. Both need the
same sort (originator, then ts, then row) of the same table; ``HostHistory.of(table)`` builds it
once per table and hands the same index to every featuriser that asks for that table, so a run
with both models sorts each table once instead of once per model.

Everything is columnar: Arrow dictionary-encodes the address columns, numpy sorts; there is no
per-row Python. ``flow_rows`` is the other join both featurisers share: each conn's packet record
of ``zeekml_flow.log``, by uid.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zeekml.features import table_memo


def distinct_codes(column: pa.ChunkedArray | pa.Array) -> tuple[list[str], np.ndarray]:
    """``(distinct values, int64 code of each value)`` of a column compared as strings, in order
    of first appearance; unset (null) counts as ``""``. Featurisers look a vocabulary up once
    per distinct value and index the result with the codes: no per-row Python."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if not pa.types.is_string(column.type):
        column = pc.cast(column, pa.string())
    enc = pc.dictionary_encode(pc.fill_null(column, ""))
    return enc.dictionary.to_pylist(), enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def dictionary_codes(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The codes of ``distinct_codes`` alone (equal values, equal codes)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if not pa.types.is_string(column.type):
        column = pc.cast(column, pa.string())
    enc = pc.dictionary_encode(pc.fill_null(column, ""))
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)


@dataclass(frozen=True)
class HostHistory:
    """Per-originator time order of a conn table's rows.

    Attributes (``n`` = rows of the table):
        host: ``[n]`` code of each row's ``id.orig_h`` (unset = ``""``).
        resp: ``[n]`` code of each row's ``id.resp_h``.
        ts: ``[n]`` float64 start time (unset = 0.0).
        sorted_ts: ``[n]`` ``ts`` in sorted order (``ts[order]``).
        order: ``[n]`` rows sorted by (host, ts, row): ``order[k]`` is the table row at sorted
            position ``k``.
        rank: ``[n]`` sorted position of each table row (the inverse of ``order``).
        group_start: ``[n]`` for each sorted position, the sorted position where its host's
            conns begin.
    """

    host: np.ndarray
    resp: np.ndarray
    ts: np.ndarray
    sorted_ts: np.ndarray
    order: np.ndarray
    rank: np.ndarray
    group_start: np.ndarray

    @classmethod
    def build(cls, table: pa.Table) -> HostHistory:
        """The index of ``table`` (columns ``id.orig_h``, ``id.resp_h``, ``ts``)."""
        n = table.num_rows
        host = dictionary_codes(table.column("id.orig_h"))
        resp = dictionary_codes(table.column("id.resp_h"))
        ts = pc.fill_null(table.column("ts"), 0.0).to_numpy(zero_copy_only=False).astype(np.float64)
        order = np.lexsort((np.arange(n), ts, host))
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        h = host[order]
        start = np.ones(n, dtype=bool)
        start[1:] = h[1:] != h[:-1]
        group_start = np.maximum.accumulate(np.where(start, np.arange(n), 0))
        return cls(host, resp, ts, ts[order], order, rank, group_start)

    @classmethod
    def of(cls, table: pa.Table) -> HostHistory:
        """The index of ``table``, built on the first call for this table object and shared by
        later calls (featurisers of several models on one table). Only the most recent table is
        remembered, through a weak reference: the cache never keeps a table alive. While a
        ``table_memo.scope`` is open every table's index is kept until it closes (score's
        detectors alternate between the baseline and the input, which evicted each other)."""
        if table_memo.active():
            return table_memo.memoised(table, ("host_history",), lambda: cls.build(table))
        with _lock:
            ref, index = _last
            if ref is not None and ref() is table:
                return index
        index = cls.build(table)
        with _lock:
            _last[:] = [weakref.ref(table), index]
        return index

    def window(self, rows: np.ndarray, length: int, max_age: float | None) -> tuple[np.ndarray, np.ndarray]:
        """For each of ``rows``, its originator's last ``length`` conns up to and including it.

        Returns ``(pos, valid)``, both ``[len(rows), length]``: ``pos`` the sorted positions
        (the row itself last; 0 where not valid), ``valid`` whether a step holds a conn of the
        same originator started at most ``max_age`` seconds before (None = no limit).
        Look rows up with ``order[pos]``.
        """
        r = self.rank[np.asarray(rows, dtype=np.int64)]
        pos = r[:, None] - (length - 1 - np.arange(length))[None, :]
        valid = pos >= self.group_start[r][:, None]
        pos = np.where(valid, pos, 0)
        if max_age is not None:
            t = self.sorted_ts
            valid &= t[pos] >= (t[r] - max_age)[:, None]
        return pos, valid


_lock = threading.Lock()
_last: list = [None, None]


def flow_rows(conn_uids: pa.ChunkedArray | pa.Array, flow_uids: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """``int64 [n_conns]``: the row of ``flow_uids`` with each conn's uid (the last one when a uid
    repeats), -1 where there is none or the conn's uid is unset or ``""``."""
    if isinstance(flow_uids, pa.ChunkedArray):
        flow_uids = flow_uids.combine_chunks()
    if isinstance(conn_uids, pa.ChunkedArray):
        conn_uids = conn_uids.combine_chunks()
    m = len(flow_uids)
    # index_in finds the first match; on the reversed flow uids that is the last one
    rev = pc.fill_null(pc.index_in(conn_uids, value_set=flow_uids[::-1]), -1)
    rev = rev.to_numpy(zero_copy_only=False).astype(np.int64)
    hit = np.where(rev >= 0, m - 1 - rev, -1)
    unset = pc.fill_null(pc.equal(conn_uids, ""), True).to_numpy(zero_copy_only=False)
    return np.where(unset, -1, hit).astype(np.int64)
