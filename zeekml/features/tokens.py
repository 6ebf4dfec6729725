"""Traffic tokens for the mixture-of-experts transformer (docs/models.md section 3).

A token is a small tuple of *fields*, each a discrete value; the model embeds every field and sums
the embeddings, and masked-token pretraining predicts each field of a masked token. Two sources:

- ``packets`` (``zeekml_flow.log`` present, from the Zeek package or the built-in flow meter of
  ``zeekml replay``): one sequence per conn, one token per packet of its first ``seq_len`` packets,
  fields ``dir``, ``ip_len`` (quantile bucket), ``iat`` (quantile bucket of the inter-arrival
  time) and ``flags`` (the TCP flags byte, top values plus "other"). Left-aligned, pads at the end.
- ``host`` (conn.log only): one sequence per conn, the same originator's conns of the past
  ``max_age`` seconds, the last ``seq_len`` of them up to and including this one, one token per
  conn with fields ``proto``, ``conn_state``, ``service``, ``port`` (top responder ports plus
  well-known/registered/ephemeral), ``history`` (top strings), quantile buckets of ``duration``,
  ``orig_bytes``, ``resp_bytes``, ``orig_pkts``, ``resp_pkts``, the time-gap bucket to the
  previous conn of the sequence and ``same_resp`` (same responder as this conn).
  Right-aligned: the conn itself is always the last position, pads at the start.

Token ids: ``transform`` returns ``int64 [n, seq_len, n_fields]`` *global* ids into one shared
vocabulary. Global 0 is PAD (every field of a pad position), 1 is MASK; field ``f`` owns the range
``base[f] .. base[f] + size[f] - 1`` where its *local* id 0 = hidden (deliberately removed, e.g.
service and ports for the service task), 1 = unset (Zeek's ``-``, or "first in sequence" for the
gap), 2.. = values. Bucket edges and vocabularies are fitted on the pretraining corpus and
serialised with ``to_dict`` (stored in the model's ``config.json``).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zeekml.features import table_memo
from zeekml.features.host_history import (
    HostHistory,
    dictionary_codes,
    distinct_codes,
    flow_rows,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
PAD = 0
MASK = 1
N_SPECIAL = 2
HIDDEN = 0   # local ids
UNSET = 1
FIRST_VALUE = 2

HOST_FIELDS = ("proto", "conn_state", "service", "port", "history", "duration", "orig_bytes",
               "resp_bytes", "orig_pkts", "resp_pkts", "gap", "same_resp")
PACKET_FIELDS = ("dir", "ip_len", "iat", "flags")
SERVICE_FIELDS = ("service", "port")
"""Fields blanked when the task is to predict ``service`` (service and ports are inputs no more)."""
_QUANTITIES = ("duration", "orig_bytes", "resp_bytes", "orig_pkts", "resp_pkts")


@dataclass
class FieldVocab:
    """One token field: ``quantile`` (``edges`` on log1p values), ``categorical`` (``values``) or
    ``port`` (top ``values`` then three range buckets). ``size`` counts hidden and unset too."""

    name: str
    kind: str
    edges: list[float] = field(default_factory=list)
    values: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        if self.kind == "quantile":
            return FIRST_VALUE + len(self.edges) + 1
        if self.kind == "port":
            return FIRST_VALUE + len(self.values) + 3
        return FIRST_VALUE + len(self.values) + 1      # + "other"

    def encode_quantity(self, x: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """log1p-transformed ``x`` -> local ids (``missing`` rows -> unset)."""
        ids = FIRST_VALUE + np.searchsorted(np.asarray(self.edges), x, side="right")
        return np.where(missing, UNSET, ids).astype(np.int64)

    def encode_category(self, values: np.ndarray) -> np.ndarray:
        """Strings -> local ids; "" -> unset; not in the vocabulary -> "other"."""
        return self.encode_strings(pa.array(np.asarray(values, dtype=object), pa.string()))

    def encode_strings(self, column: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """A string column -> local ids, as ``encode_category``; unset (null) = "". Arrow
        dictionary-encodes the column, so the vocabulary is looked up once per distinct value."""
        lookup = {v: FIRST_VALUE + i for i, v in enumerate(self.values)}
        other = FIRST_VALUE + len(self.values)
        distinct, codes = distinct_codes(column)
        ids = np.fromiter((UNSET if v == "" else lookup.get(v, other) for v in distinct),
                          dtype=np.int64, count=len(distinct))
        return ids[codes]

    def encode_ints(self, values: np.ndarray) -> np.ndarray:
        """Numbers -> local ids of their ``str(int(v))`` (packet directions and TCP flags), looked
        up once per distinct value."""
        distinct, codes = np.unique(np.asarray(values).astype(np.int64), return_inverse=True)
        lookup = {v: FIRST_VALUE + i for i, v in enumerate(self.values)}
        other = FIRST_VALUE + len(self.values)
        ids = np.fromiter((lookup.get(str(int(v)), other) for v in distinct), dtype=np.int64,
                          count=len(distinct))
        return ids[codes.reshape(-1)]

    def encode_port(self, port: np.ndarray, missing: np.ndarray) -> np.ndarray:
        lookup = {int(v): FIRST_VALUE + i for i, v in enumerate(self.values)}
        base = FIRST_VALUE + len(self.values)
        bucket = np.where(port < 1024, 0, np.where(port < 49152, 1, 2)) + base
        distinct, codes = np.unique(np.asarray(port).astype(np.int64), return_inverse=True)
        hit = np.fromiter((lookup.get(int(p), -1) for p in distinct), dtype=np.int64, count=len(distinct))
        ids = hit[codes.reshape(-1)]
        ids = np.where(ids >= 0, ids, bucket)
        return np.where(missing, UNSET, ids).astype(np.int64)


def _quantile_edges(x: np.ndarray, bins: int) -> list[float]:
    if len(x) == 0:
        return []
    qs = np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1])
    return [float(v) for v in np.unique(np.round(qs, 6))]


def _top(values: np.ndarray, k: int) -> list[str]:
    vals = values[values != ""]
    if len(vals) == 0:
        return []
    u, c = np.unique(vals, return_counts=True)
    order = np.lexsort((u, -c))
    return [str(v) for v in u[order][:k]]


def _strings(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name)
    if not pa.types.is_string(col.type):
        col = pc.cast(col, pa.string())
    return np.asarray(pc.fill_null(col, "").to_pylist(), dtype=object)


def _num(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    col = table.column(name)
    missing = pc.is_null(col).to_numpy(zero_copy_only=False)
    v = pc.fill_null(pc.cast(col, pa.float64()), 0.0).to_numpy(zero_copy_only=False)
    v = np.where(np.isfinite(v), np.maximum(v, 0.0), 0.0)
    return v, missing


def _log_iat(iat: np.ndarray) -> np.ndarray:
    return np.log1p(np.maximum(iat, 0.0) * 1e3)     # milliseconds


@dataclass
class HostStream:
    """Conns as host-stream tokens for a ``causal_window`` encoder (``FlowTokenizer.host_stream``).

    Attributes (``n`` = stream rows, ``w`` = predecessors linked):
        ids: ``[n, n_fields]`` global token ids, host by host, each host's conns in time order.
        keys: ``[n, 1 + w]`` column 0 the row itself, column ``o`` the row of its ``o``-th
            predecessor it may attend to, -1 where there is none.
        targets: ``[len(rows)]`` the stream row of each requested row.
        table_rows: ``[n]`` the table row of each stream row.
        run_start: ``[n]`` the stream row where each row's run begins: the run is a host's
            consecutive conns (in its time order) in the stream, so a row's predecessors in
            its run are its host's previous conns in the table (every one up to ``seq_len - 1``
            back is in the stream: it is in the row's window).
    """

    ids: np.ndarray
    keys: np.ndarray
    targets: np.ndarray
    table_rows: np.ndarray
    run_start: np.ndarray


@dataclass
class FlowTokenizer:
    """Conn table (+ optional ``zeekml_flow`` table) -> token ids ``[n, seq_len, n_fields]``.

    Args:
        source: ``"auto"`` (packets when the fit corpus has a flow log covering at least half of
            its conns, else host), ``"packets"`` or ``"host"`` (default ``"auto"``).
        seq_len: tokens per sequence (default 16).
        max_age: host source: only conns that started at most this many seconds before
            (default 3600).
        quantile_bins: buckets per quantity (default 16).
        top_k: values kept per categorical field (default 24).
    """

    source: str = "auto"
    seq_len: int = 16
    max_age: float = 3600.0
    quantile_bins: int = 16
    top_k: int = 24
    fields: list[FieldVocab] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    # -- vocabulary ----------------------------------------------------------------------------

    @property
    def fitted(self) -> bool:
        return bool(self.fields)

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def field_sizes(self) -> list[int]:
        return [f.size for f in self.fields]

    @property
    def bases(self) -> list[int]:
        """Global id of each field's local 0."""
        out, b = [], N_SPECIAL
        for s in self.field_sizes:
            out.append(b)
            b += s
        return out

    @property
    def vocab_size(self) -> int:
        return N_SPECIAL + sum(self.field_sizes)

    @property
    def anchor(self) -> str:
        """Which position stands for the conn: ``last`` (host) or ``mean`` (packets)."""
        return "last" if self.source == "host" else "mean"

    @property
    def context_seconds(self) -> float:
        """How far back other conns change a conn's tokens (split scoring overlap)."""
        return float(self.max_age) if self.source == "host" else 0.0

    def service_fields(self) -> list[int]:
        return [i for i, n in enumerate(self.field_names) if n in SERVICE_FIELDS]

    # -- fitting -------------------------------------------------------------------------------

    def fit(self, table: pa.Table, flows: pa.Table | None = None) -> "FlowTokenizer":
        if self.source == "auto":
            cover = _flow_coverage(table, flows)
            self.source = "packets" if cover >= 0.5 else "host"
            log.info("tokens: %s (flow log covers %.0f%% of the conns)", self.source, 100 * cover)
        if self.source == "packets":
            self.fields = self._fit_packets(flows)
        elif self.source == "host":
            self.fields = self._fit_host(table)
        else:
            raise ValueError(f"unknown token source {self.source!r} (auto, packets or host)")
        return self

    def _fit_host(self, table: pa.Table) -> list[FieldVocab]:
        out = [FieldVocab("proto", "categorical", values=_top(_strings(table, "proto"), 4)),
               FieldVocab("conn_state", "categorical", values=_top(_strings(table, "conn_state"), 16)),
               FieldVocab("service", "categorical", values=_top(_strings(table, "service"), self.top_k))]
        port, miss = _num(table, "id.resp_p")
        out.append(FieldVocab("port", "port", values=_top(
            np.asarray([str(int(p)) for p in port[~miss]], dtype=object), self.top_k)))
        out.append(FieldVocab("history", "categorical", values=_top(_strings(table, "history"), self.top_k)))
        for name in _QUANTITIES:
            v, m = _num(table, name)
            out.append(FieldVocab(name, "quantile", edges=_quantile_edges(np.log1p(v[~m]), self.quantile_bins)))
        gaps = _host_gaps(table)
        out.append(FieldVocab("gap", "quantile",
                              edges=_quantile_edges(_log_iat(gaps[np.isfinite(gaps)]), self.quantile_bins)))
        out.append(FieldVocab("same_resp", "categorical", values=["no", "yes"]))
        return out

    def _fit_packets(self, flows: pa.Table | None) -> list[FieldVocab]:
        if flows is None or flows.num_rows == 0:
            raise ValueError("packet tokens need a zeekml_flow table")
        lens = np.asarray(pc.list_flatten(flows.column("ip_lens")).to_numpy(zero_copy_only=False), float)
        iats = np.asarray(pc.list_flatten(flows.column("iats")).to_numpy(zero_copy_only=False), float)
        flags = np.asarray(pc.list_flatten(flows.column("tcp_flags")).to_numpy(zero_copy_only=False), float)
        return [FieldVocab("dir", "categorical", values=["0", "1"]),
                FieldVocab("ip_len", "quantile", edges=_quantile_edges(np.log1p(np.maximum(lens, 0)),
                                                                       self.quantile_bins)),
                FieldVocab("iat", "quantile", edges=_quantile_edges(_log_iat(iats), self.quantile_bins)),
                FieldVocab("flags", "categorical",
                           values=_top(np.asarray([str(int(f)) for f in flags], dtype=object), self.top_k))]

    # -- transform -----------------------------------------------------------------------------

    def transform(self, table: pa.Table, flows: pa.Table | None = None, rows: np.ndarray | None = None,
                  hide_service: bool = False) -> np.ndarray:
        """Global token ids ``[len(rows), seq_len, n_fields]`` (``rows`` default: every conn).

        Host tokens read the context of every conn of ``table``, whichever ``rows`` are asked for.
        """
        if not self.fitted:
            raise RuntimeError("FlowTokenizer.transform before fit")
        rows = np.arange(table.num_rows) if rows is None else np.asarray(rows, dtype=np.int64)
        if self.source == "packets":
            local = self._packet_tokens(table, flows, rows)
        else:
            local = self._host_tokens(table, rows)
        pad = local[..., 0] < 0
        if hide_service:
            for f in self.service_fields():
                local[..., f] = HIDDEN
        ids = local + np.asarray(self.bases, dtype=np.int64)
        ids[pad] = PAD
        return ids

    def local_ids(self, ids: np.ndarray) -> np.ndarray:
        """Global ids -> local ids per field (PAD and MASK positions -> -1)."""
        local = ids - np.asarray(self.bases, dtype=np.int64)
        return np.where(ids < N_SPECIAL, -1, local)

    def hide(self, ids: np.ndarray, row_mask: np.ndarray) -> np.ndarray:
        """A copy of ``ids`` with service and ports hidden in the sequences where ``row_mask``."""
        out = ids.copy()
        for f in self.service_fields():
            col = out[row_mask, :, f]
            out[row_mask, :, f] = np.where(col == PAD, PAD, self.bases[f] + HIDDEN)
        return out

    def _conn_fields(self, table: pa.Table) -> np.ndarray:
        """Local ids of every conn's own fields, ``[n, n_fields]`` (gap and same_resp left 0);
        in a ``table_memo`` scope computed once per table and vocabulary (every piece of rows
        and every explanation read the whole table's)."""
        if table_memo.active():
            key = ("conn_fields", json.dumps(self.to_dict(), sort_keys=True))
            return table_memo.memoised(table, key, lambda: self._conn_fields_of(table))
        return self._conn_fields_of(table)

    def _conn_fields_of(self, table: pa.Table) -> np.ndarray:
        voc = {f.name: f for f in self.fields}
        n = table.num_rows
        out = np.zeros((n, len(self.fields)), dtype=np.int64)
        idx = {name: i for i, name in enumerate(self.field_names)}
        for name in ("proto", "conn_state", "service", "history"):
            out[:, idx[name]] = voc[name].encode_strings(table.column(name))
        port, miss = _num(table, "id.resp_p")
        out[:, idx["port"]] = voc["port"].encode_port(port, miss)
        for name in _QUANTITIES:
            v, m = _num(table, name)
            out[:, idx[name]] = voc[name].encode_quantity(np.log1p(v), m)
        return out

    def _host_tokens(self, table: pa.Table, rows: np.ndarray) -> np.ndarray:
        L, F = self.seq_len, len(self.fields)
        out = np.full((len(rows), L, F), -1, dtype=np.int64)
        n = table.num_rows
        if n == 0 or len(rows) == 0:
            return out
        conn = self._conn_fields(table)
        hist = HostHistory.of(table)
        resp, t, order = hist.resp, hist.sorted_ts, hist.order
        safe, valid = hist.window(rows, L, self.max_age)
        src = order[safe]                                         # table row of each step
        tok = conn[src]
        # gap to the previous step of the same sequence; the first valid step has none (unset)
        gi = self.field_names.index("gap")
        prev_ok = np.zeros_like(valid)
        prev_ok[:, 1:] = valid[:, :-1] & valid[:, 1:]
        gap = np.zeros(valid.shape)
        gap[:, 1:] = np.maximum(t[safe[:, 1:]] - t[safe[:, :-1]], 0.0)
        tok[..., gi] = self.fields[gi].encode_quantity(_log_iat(gap), ~prev_ok)
        si = self.field_names.index("same_resp")
        tok[..., si] = FIRST_VALUE + (resp[src] == resp[rows][:, None])
        out[valid] = tok[valid]
        return out

    # -- host streams (``causal_window`` encoders, ``zeekml.nn.dense``) ------------------------

    def _stream_local(self, table: pa.Table, hist: HostHistory, pos: np.ndarray) -> np.ndarray:
        """Local ids ``[len(pos), n_fields]`` of the conns at sorted positions ``pos`` as stream
        tokens: a token is its conn alone, so the two relative fields are relative to the host's
        previous conn (the window tokens' are relative to the window's conn and step): ``gap``
        = time since it, ``same_resp`` = same responder as it; both unset when the host has no
        conn before this one within ``max_age``."""
        tok = self._conn_fields(table)[hist.order[pos]]
        prev = np.maximum(pos - 1, 0)
        t = hist.sorted_ts
        gap = np.maximum(t[pos] - t[prev], 0.0)
        has_prev = (pos - 1 >= hist.group_start[pos]) & (gap <= self.max_age)
        gi, si = self.field_names.index("gap"), self.field_names.index("same_resp")
        tok[:, gi] = self.fields[gi].encode_quantity(_log_iat(gap), ~has_prev)
        same = hist.resp[hist.order[pos]] == hist.resp[hist.order[prev]]
        tok[:, si] = np.where(has_prev, FIRST_VALUE + same, UNSET)
        return tok

    def _links(self, hist: HostHistory, pos: np.ndarray, width: int) -> np.ndarray:
        """``[len(pos), width]`` bool: whether the ``o``-th predecessor (``o`` = 1..``width``) of
        each sorted position is a conn of the same host started at most ``max_age`` before it
        (a prefix of each row: ts is sorted within a host)."""
        t = hist.sorted_ts
        o = np.arange(1, width + 1)
        src = pos[:, None] - o[None, :]
        ok = src >= hist.group_start[pos][:, None]
        return ok & (t[pos][:, None] - t[np.maximum(src, 0)] <= self.max_age)

    def _stream_ids(self, local: np.ndarray, hide_service: bool) -> np.ndarray:
        if hide_service:
            for f in self.service_fields():
                local[..., f] = HIDDEN
        return local + np.asarray(self.bases, dtype=np.int64)

    def host_stream(self, table: pa.Table, rows: np.ndarray | None = None, width: int | None = None,
                    hide_service: bool = False) -> HostStream:
        """The host streams that give ``rows`` (default every conn) their outputs under a
        ``causal_window`` encoder: each row's originator's last ``seq_len`` conns up to and
        including it, whatever their age, one token per conn (``_stream_local``), every conn
        once however many rows' windows it is in; ``keys`` link each stream row to the
        predecessors it may attend to (same host, at most ``max_age`` earlier, in the stream),
        ``width`` of them (default ``seq_len - 1``; the encoder's widest span is enough).

        Columnar: the shared ``HostHistory`` index and numpy, no per-row Python."""
        if not self.fitted:
            raise RuntimeError("FlowTokenizer.host_stream before fit")
        if self.source != "host":
            raise ValueError("host streams need host tokens (this tokenizer reads packets)")
        L = self.seq_len
        width = L - 1 if width is None else int(width)
        rows = np.arange(table.num_rows) if rows is None else np.asarray(rows, dtype=np.int64)
        F = len(self.fields)
        if table.num_rows == 0 or len(rows) == 0:
            return HostStream(np.zeros((0, F), np.int64), np.zeros((0, width + 1), np.int64),
                              np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
        hist = HostHistory.of(table)
        win, valid = hist.window(rows, L, None)
        pos = np.unique(win[valid])                                   # sorted stream positions
        ids = self._stream_ids(self._stream_local(table, hist, pos), hide_service)
        links = self._links(hist, pos, width)
        src = pos[:, None] - np.arange(1, width + 1)[None, :]
        at = np.minimum(np.searchsorted(pos, src), len(pos) - 1)
        links &= pos[at] == src                                       # the predecessor is in the stream
        keys = np.concatenate([np.arange(len(pos))[:, None], np.where(links, at, -1)], axis=1)
        targets = np.searchsorted(pos, hist.rank[rows])
        # a run breaks where the stream skips a conn or a new host begins
        starts = np.ones(len(pos), dtype=bool)
        starts[1:] = (pos[1:] != pos[:-1] + 1) | (hist.group_start[pos[1:]] == pos[1:])
        run_start = np.maximum.accumulate(np.where(starts, np.arange(len(pos)), 0))
        return HostStream(ids, keys, targets, hist.order[pos], run_start)

    def stream_windows(self, table: pa.Table, rows: np.ndarray | None = None,
                       hide_service: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``host_stream``'s tokens laid out as one window per row (a ``causal_window``
        encoder's input for per-sequence work: masked-token NLL, explanations, finetuning):
        ``(ids [n, seq_len, n_fields], reach [n, seq_len])``, right-aligned (the row last, pads
        first), ``reach`` = how many predecessors in the window each position may attend to
        (same host, at most ``max_age`` earlier). The encoder's output at the last position is
        the row's output in the stream (``zeekml.nn.dense.window_keys``)."""
        if not self.fitted:
            raise RuntimeError("FlowTokenizer.stream_windows before fit")
        if self.source != "host":
            raise ValueError("host streams need host tokens (this tokenizer reads packets)")
        L, F = self.seq_len, len(self.fields)
        rows = np.arange(table.num_rows) if rows is None else np.asarray(rows, dtype=np.int64)
        ids = np.zeros((len(rows), L, F), np.int64)
        reach = np.zeros((len(rows), L), np.int64)
        if table.num_rows == 0 or len(rows) == 0:
            return ids, reach
        hist = HostHistory.of(table)
        win, valid = hist.window(rows, L, None)
        flat = win[valid]
        ids[valid] = self._stream_ids(self._stream_local(table, hist, flat), hide_service)
        links = self._links(hist, flat, L - 1)
        # a prefix of trues per row: its length is the number of predecessors in reach
        reach[valid] = np.cumprod(links, axis=1).sum(axis=1)
        # counted in the window: a position has no more predecessors there than positions before it
        reach = np.minimum(reach, np.arange(L)[None, :] - np.argmax(valid, axis=1)[:, None])
        return ids, np.maximum(reach, 0)

    def _packet_tokens(self, table: pa.Table, flows: pa.Table | None, rows: np.ndarray) -> np.ndarray:
        L, F = self.seq_len, len(self.fields)
        out = np.full((len(rows), L, F), -1, dtype=np.int64)
        if flows is None or flows.num_rows == 0 or len(rows) == 0:
            return out
        hit = flow_rows(table.column("uid"), flows.column("uid"))[rows]
        ok = np.flatnonzero(hit >= 0)
        if len(ok) == 0:
            return out
        sub = flows.take(pa.array(hit[ok]))
        cols = {c: sub.column(c).combine_chunks() for c in ("dirs", "ip_lens", "iats", "tcp_flags")}
        # flatten each list column, cut to the first L steps per flow
        lengths = np.minimum.reduce([pc.list_value_length(c).fill_null(0).to_numpy(zero_copy_only=False)
                                     for c in cols.values()]).astype(np.int64)
        flat = {}
        for name, c in cols.items():
            offs = c.offsets.to_numpy()
            vals = pc.fill_null(c.values, 0).to_numpy(zero_copy_only=False).astype(np.float64)
            flat[name] = (offs, vals)
        k = np.minimum(lengths, L)
        seq = np.repeat(np.arange(len(ok)), k)
        step = np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k)

        def gather(name: str) -> np.ndarray:
            offs, vals = flat[name]
            return vals[offs[seq] + step]

        voc = {f.name: f for f in self.fields}
        fi = {name: i for i, name in enumerate(self.field_names)}
        tok = np.zeros((len(seq), F), dtype=np.int64)
        tok[:, fi["dir"]] = voc["dir"].encode_ints(gather("dirs"))
        tok[:, fi["ip_len"]] = voc["ip_len"].encode_quantity(np.log1p(np.maximum(gather("ip_lens"), 0)),
                                                             np.zeros(len(seq), bool))
        tok[:, fi["iat"]] = voc["iat"].encode_quantity(_log_iat(gather("iats")), np.zeros(len(seq), bool))
        tok[:, fi["flags"]] = voc["flags"].encode_ints(gather("tcp_flags"))
        out[ok[seq], step] = tok
        return out

    # -- persistence ---------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"source": self.source, "seq_len": self.seq_len, "max_age": self.max_age,
                "quantile_bins": self.quantile_bins, "top_k": self.top_k,
                "schema_version": self.schema_version,
                "fields": [{"name": f.name, "kind": f.kind, "edges": list(f.edges), "values": list(f.values)}
                           for f in self.fields]}

    @classmethod
    def from_dict(cls, d: dict) -> "FlowTokenizer":
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"token schema {d.get('schema_version')} != {SCHEMA_VERSION}; "
                             "pretrain the model again with this zeekml")
        d = dict(d)
        d["fields"] = [FieldVocab(**f) for f in d["fields"]]
        return cls(**d)


def _flow_coverage(table: pa.Table, flows: pa.Table | None) -> float:
    if flows is None or flows.num_rows == 0 or table.num_rows == 0:
        return 0.0
    have = set(flows.column("uid").to_pylist())
    uids = table.column("uid").to_pylist()
    return sum(u in have for u in uids) / len(uids)


def _host_gaps(table: pa.Table) -> np.ndarray:
    """Seconds since the same originator's previous conn (inf for its first)."""
    n = table.num_rows
    if n == 0:
        return np.zeros(0)
    host = dictionary_codes(table.column("id.orig_h"))
    ts = pc.fill_null(table.column("ts"), 0.0).to_numpy(zero_copy_only=False).astype(np.float64)
    order = np.lexsort((np.arange(n), ts, host))
    h, t = host[order], ts[order]
    gap = np.full(n, np.inf)
    same = h[1:] == h[:-1]
    gap[1:][same] = np.maximum(t[1:] - t[:-1], 0.0)[same]
    out = np.empty(n)
    out[order] = gap
    return out
