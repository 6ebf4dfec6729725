"""The shared per-conn flow feature vector of docs/models.md, with scaling fitted on a corpus.

One row per conn record: log1p of sizes and counts, bytes per packet each way, the resp/orig
byte ratio, header overhead, one-hots of proto, conn_state and the top-K services, counts of each
``history`` letter and its length, the resp_p bucket, and a missing flag for every unset number.
Scaling (quantile clipping, then standardisation) is fitted once and stored with the weights, so
``transform`` is the same function at training and at scoring time.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zeekml.features import table_memo
from zeekml.features.host_history import distinct_codes

SCHEMA_VERSION = 1

NUMERIC = ("duration", "orig_bytes", "resp_bytes", "orig_pkts", "resp_pkts", "orig_ip_bytes",
           "resp_ip_bytes", "missed_bytes")
PROTOS = ("tcp", "udp", "icmp")
CONN_STATES = ("S0", "S1", "SF", "REJ", "S2", "S3", "RSTO", "RSTR", "RSTOS0", "RSTRH", "SH",
               "SHR", "OTH")
HISTORY_LETTERS = "SHADFRCGTWIQ^shadfrcgtwiq"
PORT_BUCKETS = ("well_known", "registered", "ephemeral")
# the responder port's class as ``FlowParts.categorical`` names it (the buckets, and unset)
PORT_CLASSES = ("well-known (< 1024)", "registered (1024-49151)", "ephemeral (>= 49152)", "unset")


def _num(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """float64 values (unset -> 0) and the missing mask."""
    col = table.column(name)
    missing = pc.is_null(col).to_numpy(zero_copy_only=False)
    # unsafe: a count above 2**53 (valid in Zeek) rounds to the nearest float64 instead of failing
    vals = pc.fill_null(pc.cast(col, pa.float64(), safe=False), 0.0).to_numpy(zero_copy_only=False)
    vals = np.where(np.isfinite(vals), vals, 0.0)
    return np.maximum(vals, 0.0), missing


def _strings(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(pc.fill_null(table.column(name), "").to_pylist(), dtype=object)


def _distinct(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(distinct values as an object array, code of each row)`` of a string column (unset = "")."""
    values, codes = distinct_codes(table.column(name))
    return np.asarray(values, dtype=object), codes


@dataclass
class FlowFeaturizer:
    """conn table (``zeekml.flows.CONN_SCHEMA``) -> float32 matrix ``[n_conns, n_features]``.

    Args:
        top_services: how many services get their own one-hot (the rest share "other").
        hide_service: leave ``service`` and the ports out (for the service classification task).
        clip_quantiles: quantiles that bound each raw feature before standardising.
    """

    top_services: int = 12
    hide_service: bool = False
    clip_quantiles: tuple[float, float] = (0.001, 0.999)
    services: list[str] = field(default_factory=list)
    lo: list[float] = field(default_factory=list)
    hi: list[float] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    # -- fitting -----------------------------------------------------------------------------

    def fit(self, table: pa.Table) -> "FlowFeaturizer":
        self._fit(table)
        return self

    def _fit(self, table: pa.Table, parts: "FlowParts | None" = None) -> np.ndarray:
        """Fit on ``table`` (``parts``: its ``FlowParts``, when the caller has them); its raw
        (unscaled) features, which fitting computes anyway."""
        if not self.hide_service:
            svc = _strings(table, "service")
            vals, counts = np.unique(svc[svc != ""], return_counts=True)
            order = np.argsort(-counts, kind="stable")
            self.services = [str(v) for v in vals[order][: self.top_services]]
        raw = self._raw(table, parts)
        stats = raw if len(raw) else np.zeros((1, raw.shape[1]))
        # both bounds from one partition (np.quantile interpolates each quantile on its own:
        # the bits of two calls, in 22 ms instead of 34 on a 30,000-conn baseline)
        lo, hi = np.quantile(stats, list(self.clip_quantiles), axis=0)
        clipped = np.clip(stats, lo, hi)
        self.lo, self.hi = lo.tolist(), hi.tolist()
        self.mean = clipped.mean(axis=0).tolist()
        std = clipped.std(axis=0)
        self.std = np.where(std > 1e-9, std, 1.0).tolist()
        return raw

    @property
    def fitted(self) -> bool:
        return bool(self.mean)

    def transform(self, table: pa.Table, rows: np.ndarray | None = None) -> np.ndarray:
        """Scaled features ``[n, n_features]`` float32 of every conn of ``table``, or of its
        ``rows`` only (``transform(table.take(rows))``: a conn's features are its own)."""
        return self.transform_parts(self.parts(table, rows))

    def _scale(self, raw: np.ndarray) -> np.ndarray:
        x = (np.clip(raw, self.lo, self.hi) - np.asarray(self.mean)) / np.asarray(self.std)
        return x.astype(np.float32)

    def _scale_columns(self, cols: list[np.ndarray]) -> np.ndarray:
        """``_scale(np.stack(cols, axis=1))`` without the float64 matrix: each raw column is
        clipped, centred and scaled on its own (the same float64 operations on each value, so
        the same bits: tests/unit/features/test_vectorised.py) and written into the float32
        result. Stacking 100k conns' 81 columns as float64 and scaling that (65 MB, three
        passes) was most of ``transform``: 0.213 -> 0.122 s with it (bench/README.md).

        Each scaled column is written as a row of the transposed result, then transposed in one
        copy: writing it into a column of the ``[n, n_features]`` matrix touches one value per
        324-byte row, and at a live release's 300k context rows that strided write was most of
        the call (81 columns: 0.29 -> 0.08 CPU s; 100k rows 0.047 -> 0.030 s)."""
        n = len(cols[0]) if cols else 0
        out_t = np.empty((len(cols), n), dtype=np.float32)
        if len(cols) != len(self.mean):
            raise ValueError(f"{len(cols)} features, the scaling was fitted on {len(self.mean)}")
        lo, hi = np.asarray(self.lo, dtype=np.float64), np.asarray(self.hi, dtype=np.float64)
        mean, std = np.asarray(self.mean, dtype=np.float64), np.asarray(self.std, dtype=np.float64)
        buf = np.empty(n, dtype=np.float64)
        for j, col in enumerate(cols):
            np.maximum(col, lo[j], out=buf)
            np.minimum(buf, hi[j], out=buf)
            buf -= mean[j]
            buf /= std[j]
            out_t[j] = buf
        return np.ascontiguousarray(out_t.T)

    def fit_transform(self, table: pa.Table) -> np.ndarray:
        return self._scale(self._fit(table))

    def fit_transform_raw(self, table: pa.Table,
                          parts: "FlowParts | None" = None) -> tuple[np.ndarray, np.ndarray]:
        """``(fit_transform(table), the raw features it scaled)``: the raw features computed once
        (from ``parts``, ``table``'s ``FlowParts``, when given)."""
        raw = self._fit(table, parts)
        return self._scale(raw), raw

    # -- the features ------------------------------------------------------------------------

    @property
    def feature_names(self) -> list[str]:
        names = [f"log1p_{n}" for n in NUMERIC]
        names += ["log1p_orig_bytes_per_pkt", "log1p_resp_bytes_per_pkt", "log1p_resp_orig_ratio",
                  "log1p_header_overhead_per_pkt"]
        names += [f"missing_{n}" for n in NUMERIC]
        names += [f"proto_{p}" for p in PROTOS] + ["proto_other"]
        names += [f"conn_state_{s}" for s in CONN_STATES] + ["conn_state_other"]
        names += [f"history_{'up_' if c.isupper() else 'lo_' if c.islower() else ''}{c if c != '^' else 'caret'}"
                  for c in HISTORY_LETTERS] + ["history_len"]
        if not self.hide_service:
            names += [f"service_{s}" for s in self.services] + ["service_other", "service_none"]
            names += [f"resp_p_{b}" for b in PORT_BUCKETS]
        return names

    def _raw(self, table: pa.Table, parts: "FlowParts | None" = None) -> np.ndarray:
        feats = (self.parts(table) if parts is None else parts).columns(self._service_vocabulary)
        if table.num_rows == 0:
            return np.zeros((0, len(feats)))
        return np.stack(feats, axis=1)

    @property
    def _service_vocabulary(self) -> tuple[str, ...] | None:
        """The services given their own one-hot (None: ``hide_service``, no service columns)."""
        return None if self.hide_service else tuple(self.services)

    def parts(self, table: pa.Table, rows: np.ndarray | None = None) -> "FlowParts":
        """What the raw features of ``table`` (of its ``rows`` only, when given) are made of:
        its ``FlowParts`` (the numbers, missing flags and the codes of the string columns).

        Shared by every featuriser of the table while a ``table_memo.scope`` is open: the
        IsolationForest, the GNN and the autoencoder's quantities read the same conns, so a
        table's parts are computed once and ``rows`` of them taken from the whole table's.
        Outside a scope ``rows`` are featurised alone."""
        if rows is not None and not table_memo.active():
            table, rows = table.take(pa.array(np.asarray(rows, dtype=np.int64), pa.int64())), None
        parts = table_memo.memoised(table, ("flow_parts", SCHEMA_VERSION), lambda: FlowParts.of(table))
        if rows is not None:
            parts = parts.take(np.asarray(rows, dtype=np.int64))
        return parts

    def transform_parts(self, parts: "FlowParts") -> np.ndarray:
        """``transform`` of the conns ``parts`` describes (``parts`` from ``self.parts``)."""
        if not self.fitted:
            raise RuntimeError("FlowFeaturizer.transform before fit")
        return self._scale_columns(parts.columns(self._service_vocabulary))

    # -- persistence -------------------------------------------------------------------------

    def to_dict(self) -> dict:
        d = asdict(self)
        d["clip_quantiles"] = list(self.clip_quantiles)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FlowFeaturizer":
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"flow feature schema {d.get('schema_version')} != {SCHEMA_VERSION}")
        d = dict(d)
        d["clip_quantiles"] = tuple(d["clip_quantiles"])
        return cls(**d)


def prepare(table: pa.Table) -> None:
    """Compute ``table``'s ``FlowParts`` into the open ``table_memo`` scope now (a no-op outside
    one), so that the featurisers that ask later find them."""
    if table_memo.active():
        table_memo.memoised(table, ("flow_parts", SCHEMA_VERSION), lambda: FlowParts.of(table))


@dataclass
class FlowParts:
    """What a conn table's flow features are made of, before any featuriser's services: the
    float64 features that are numbers (``NUMBERS``: the log sizes and counts, the ratios), the
    missing flags, and the distinct values and per-conn codes of proto, conn_state, history
    and service, the responder port. Kept per table while a ``table_memo`` scope is open: the
    one-hot and flag columns (most of the 81) are expanded from codes per call, so the memo
    holds ~150 bytes a conn instead of 650 (every column as float64).

    Shapes (``n`` conns): ``numbers`` 12 x ``[n]`` float64, ``missing`` 8 x ``[n]`` bool,
    ``*_code`` ``[n]`` int64, ``port`` ``[n]`` float64, ``port_missing`` ``[n]`` bool.
    """

    numbers: list[np.ndarray]
    missing: list[np.ndarray]
    proto: np.ndarray
    proto_code: np.ndarray
    state: np.ndarray
    state_code: np.ndarray
    history: np.ndarray
    history_code: np.ndarray
    service: np.ndarray
    service_code: np.ndarray
    port: np.ndarray
    port_missing: np.ndarray

    @classmethod
    def of(cls, table: pa.Table) -> "FlowParts":
        """The parts of every conn of ``table``."""
        cols, miss = {}, {}
        for name in NUMERIC:
            cols[name], miss[name] = _num(table, name)
        feats = [np.log1p(cols[name]) for name in NUMERIC]
        opk, rpk = cols["orig_pkts"], cols["resp_pkts"]
        feats.append(np.log1p(cols["orig_bytes"] / np.maximum(opk, 1)))
        feats.append(np.log1p(cols["resp_bytes"] / np.maximum(rpk, 1)))
        feats.append(np.log1p(cols["resp_bytes"] / np.maximum(cols["orig_bytes"], 1)))
        overhead = (cols["orig_ip_bytes"] + cols["resp_ip_bytes"] - cols["orig_bytes"] - cols["resp_bytes"])
        feats.append(np.log1p(np.maximum(overhead, 0) / np.maximum(opk + rpk, 1)))
        # String features are computed once per distinct value (Arrow dictionary encoding) and
        # indexed by each row's code: a log has few distinct protos, states, histories, services.
        proto, proto_code = _distinct(table, "proto")
        state, state_code = _distinct(table, "conn_state")
        hist, hist_code = _distinct(table, "history")
        svc, svc_code = _distinct(table, "service")
        port, port_missing = _num(table, "id.resp_p")
        return cls(feats, [miss[name] for name in NUMERIC], proto, proto_code, state, state_code,
                   hist, hist_code, svc, svc_code, port, port_missing)

    def take(self, rows: np.ndarray) -> "FlowParts":
        """The parts of ``rows`` (the distinct values stay whole)."""
        return FlowParts([x[rows] for x in self.numbers], [m[rows] for m in self.missing],
                         self.proto, self.proto_code[rows], self.state, self.state_code[rows],
                         self.history, self.history_code[rows], self.service,
                         self.service_code[rows], self.port[rows], self.port_missing[rows])

    def columns(self, services: tuple[str, ...] | None) -> list[np.ndarray]:
        """The raw features, one float64 ``[n]`` array each in ``feature_names`` order, with
        ``services`` one-hot (None: ``hide_service``, no service or port columns)."""
        feats = list(self.numbers)
        feats += [m.astype(np.float64) for m in self.missing]
        feats += [col[self.proto_code] for col in _one_hot(self.proto, PROTOS)]
        feats += [col[self.state_code] for col in _one_hot(self.state, CONN_STATES)]
        hist, code = self.history, self.history_code
        for c in HISTORY_LETTERS:
            feats.append(np.fromiter((h.count(c) for h in hist), dtype=np.float64, count=len(hist))[code])
        feats.append(np.fromiter((len(h) for h in hist), dtype=np.float64, count=len(hist))[code])
        if services is not None:
            svc, code = self.service, self.service_code
            hot = _one_hot(svc, services)
            feats += [col[code] for col in hot[:-1]]
            feats.append((hot[-1] * (svc != ""))[code])      # other
            feats.append((svc == "").astype(np.float64)[code])  # none
            port, port_missing = self.port, self.port_missing
            feats.append(((port < 1024) & ~port_missing).astype(np.float64))
            feats.append(((port >= 1024) & (port < 49152)).astype(np.float64))
            feats.append((port >= 49152).astype(np.float64))
        return feats

    def categorical(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each conn's value of its categorical fields, as ``{field: (distinct values, code of
        each conn)}``: ``proto``, ``conn_state``, ``service`` (unset = ``""``), the responder
        port's class (``PORT_CLASSES``) and, per ``HISTORY_LETTERS`` letter, whether
        ``history`` holds it (``history S``: ``"without"``/``"with"``). The values are Zeek's own,
        not a featuriser's vocabulary: a service no top-K list holds is still itself.

        Shapes: each value array ``[distinct]`` (object), each code array ``[n]`` int64.
        """
        out = {"proto": (self.proto, self.proto_code), "conn_state": (self.state, self.state_code),
               "service": (self.service, self.service_code)}
        port, missing = self.port, self.port_missing
        cls = np.where(missing, 3, np.where(port < 1024, 0, np.where(port < 49152, 1, 2)))
        out["responder port"] = (np.asarray(PORT_CLASSES, dtype=object), cls.astype(np.int64))
        with_without = np.asarray(("without", "with"), dtype=object)
        for c in HISTORY_LETTERS:
            has = np.fromiter((c in h for h in self.history), dtype=np.int64, count=len(self.history))
            out[f"history {c}"] = (with_without, has[self.history_code])
        return out


def _one_hot(values: np.ndarray, vocab: tuple[str, ...]) -> list[np.ndarray]:
    """One column per vocab entry plus a last "other" column."""
    out = [(values == v).astype(np.float64) for v in vocab]
    known = np.zeros(len(values), dtype=bool)
    for v in vocab:
        known |= values == v
    out.append((~known).astype(np.float64))
    return out
