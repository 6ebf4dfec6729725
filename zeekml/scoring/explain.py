"""Explanations relative to the baseline: how an alerting conn differs from normal conns of its kind.

A conn's kind is its service (``dns``, ``ssl``; the first of Zeek's list), else its responder port
and proto (``445/tcp``), else its proto, whichever the baseline has enough conns of (``min_count``);
then ``all``. For each kind the baseline's profile holds the median and MAD of every flow
quantity on a log scale (log1p; durations log(x + 1 ms)), its plain median and 99th percentile, and how often
each ``conn_state``
occurs. An alert is explained by the quantities furthest from its kind's profile::

    resp_bytes 48,113, 40x the baseline median 1,200 for dns
    duration 0.002 s, 1/150 of the baseline median 0.31 s for ssl
    conn_state REJ, in 0.2% of the baseline's 445/tcp conns (or: never in ...)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

QUANTITIES = ("duration", "orig_bytes", "resp_bytes", "orig_pkts", "resp_pkts", "orig_ip_bytes",
              "resp_ip_bytes")
# Profiles compare log(x + offset): counts use log1p; durations get a 1 ms offset, because
# log1p would squash every sub-second difference (0.4 ms vs 100 ms) to nothing.
OFFSETS = np.array([1e-3, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
# A log-scale spread below this (about +-28%) is treated as this: a kind whose baseline conns are
# all the same size would otherwise make any difference look infinitely far away.
MIN_LOG_SCALE = 0.25
# conn_states seen in under this share of the kind's baseline conns are called out.
RARE_STATE = 0.01
RARE_STATE_Z = 4.0


@dataclass
class Deviation:
    """One way a conn differs from the baseline of its kind; ``z`` ranks them (robust z-score on
    the log scale for quantities)."""

    feature: str
    value: float | str
    kind: str
    z: float
    baseline_median: float | None = None
    baseline_q99: float | None = None
    baseline_share: float | None = None

    def text(self) -> str:
        if isinstance(self.value, str):
            if not self.baseline_share:
                return f"{self.feature} {self.value}, never in the baseline's {self.kind} conns"
            return (f"{self.feature} {self.value}, in {_pct(self.baseline_share)} of the "
                    f"baseline's {self.kind} conns")
        v, med = float(self.value), self.baseline_median
        unit = " s" if self.feature == "duration" else ""
        head = f"{self.feature} {_num(v)}{unit}"
        if med is None or med <= 0:
            q99 = self.baseline_q99
            tail = f" (99th percentile {_num(q99)}{unit})" if q99 is not None and q99 > 0 else ""
            return f"{head}, where the baseline median for {self.kind} is 0{tail}"
        return f"{head}, {_relative(v, med)} the baseline median {_num(med)}{unit} for {self.kind}"


def _relative(v: float, med: float) -> str:
    """How ``v`` compares with a positive median, as the words before "the baseline median":
    ``40x``, ``1.5x``, ``0.50x``, ``1/20 of``, ``against`` (for 0 or less)."""
    ratio = v / med
    if ratio >= 1:
        return f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:.1f}x"
    if v <= 0:
        return "against"
    inv = med / v
    return f"1/{inv:,.0f} of" if inv >= 10 else f"{ratio:.2f}x"


def _against_median(head: str, v: float, med: float, unit: str = "") -> str:
    """``head`` beside the baseline median in the words of ``Deviation.text``: ``duration 503 s,
    162x the baseline median 3.11 s``; a median of 0 is said as such."""
    if med <= 0:
        return f"{head}, where the baseline median is 0"
    return f"{head}, {_relative(v, med)} the baseline median {_num(med)}{unit}"


def _num(x: float) -> str:
    if abs(x - round(x)) < 1e-9 and abs(x) >= 1:
        return f"{int(round(x)):,}"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def _pct(share: float) -> str:
    return f"{100 * share:.1f}%" if share >= 0.001 else f"{100 * share:.2g}%"


# flow feature name prefixes (``features.flow_features``) that are 0/1 flags, and how to say one
_FLAGS = (("proto_", "proto {}"), ("conn_state_", "conn_state {}"), ("service_", "service {}"),
          ("missing_", "{} unset"), ("resp_p_", "responder port {}"))
_PORT_BUCKETS = {"well_known": "< 1024", "registered": "1024-49151", "ephemeral": ">= 49152"}


def _quantity(name: str, v: float) -> str:
    if name == "duration":
        return f"{_num(v)} s"
    return _num(v)


def feature_value_text(name: str, value: float, median: float, share: float) -> str:
    """A flow feature (``FlowFeaturizer.feature_names``) of one conn in words beside the
    baseline, in the words of ``Deviation.text``: ``log1p_*`` features in their own units
    (``duration 503 s, 162x the baseline median 3.11 s``),
    flags as the share of baseline conns that have them (``conn_state RSTO, in 0.3% of the
    baseline's conns``; a flag the conn lacks: ``not service dns, unlike 97% of ...``), history
    letter counts and the rest as values against the median. ``value``/``median`` are in the
    feature's raw (unscaled) space; ``share`` is the baseline's mean of the feature."""
    for prefix, form in _FLAGS:
        if name.startswith(prefix):
            what = name[len(prefix):]
            if prefix == "resp_p_":
                what = _PORT_BUCKETS.get(what, what)
            if prefix == "service_" and what in ("none", "other"):
                what = {"none": "none", "other": "other (not among the baseline's top services)"}[what]
            said = form.format(what)
            if value >= 0.5:
                return f"{said}, in {_pct(share)} of the baseline's conns"
            return f"not {said}, unlike {_pct(share)} of the baseline's conns"
    if name.startswith("log1p_"):
        base = name[len("log1p_"):]
        v, m = float(np.expm1(value)), float(np.expm1(median))
        return _against_median(f"{base} {_quantity(base, v)}", v, m, " s" if base == "duration" else "")
    if name.startswith("history_"):
        letter = name[len("history_"):]
        if letter == "len":
            return _against_median(f"history length {_num(value)}", value, median)
        letter = {"caret": "^"}.get(letter, letter[3:] if letter[:3] in ("up_", "lo_") else letter)
        return _against_median(f"history letter {letter} x{_num(value)}", value, median)
    return _against_median(f"{name} {_num(value)}", value, median)


@dataclass
class KindProfile:
    count: int
    log_median: list[float]
    log_scale: list[float]
    median: list[float]
    q99: list[float]
    states: dict[str, float] = field(default_factory=dict)


def _quantities(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """``[n, len(QUANTITIES)]`` values and a mask of the set ones (unset stays out of profiles)."""
    vals, sets = [], []
    for name in QUANTITIES:
        col = pc.cast(table.column(name), pa.float64())
        sets.append(pc.is_valid(col).to_numpy(zero_copy_only=False))
        v = pc.fill_null(col, 0.0).to_numpy(zero_copy_only=False)
        vals.append(np.where(np.isfinite(v), np.maximum(v, 0.0), 0.0))
    if table.num_rows == 0:
        return np.zeros((0, len(QUANTITIES))), np.zeros((0, len(QUANTITIES)), bool)
    return np.stack(vals, axis=1), np.stack(sets, axis=1)


def _strings(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(pc.fill_null(pc.cast(table.column(name), pa.string()), "").to_pylist(), dtype=object)


def candidate_kinds(table: pa.Table) -> list[np.ndarray]:
    """Each conn's kind keys, most specific first: service, port/proto, proto."""
    svc = np.asarray([s.split(",")[0] for s in _strings(table, "service")], dtype=object)
    proto = _strings(table, "proto")
    port = pc.fill_null(pc.cast(table.column("id.resp_p"), pa.string()), "").to_pylist()
    port_proto = np.asarray([f"{p}/{q}" if p and q and q != "icmp" else "" for p, q in zip(port, proto)],
                            dtype=object)
    return [svc, port_proto, proto]


@dataclass
class BaselineProfile:
    """Per-kind profiles of a baseline's conns. Fit once on the baseline; ``explain`` any conns.

    Args:
        min_count: baseline conns a kind needs for its own profile (default 20); rarer kinds are
            compared with their next, broader kind.
    """

    min_count: int = 20
    kinds: dict[str, KindProfile] = field(default_factory=dict)

    def fit(self, baseline: pa.Table) -> "BaselineProfile":
        if baseline.num_rows == 0:
            raise ValueError("the baseline holds no conns to profile")
        x, ok = _quantities(baseline)
        # conn states coded once, in sorted order: a kind's shares are counts of its rows' codes
        state_names, state_codes, _ = sorted_groups(_strings(baseline, "conn_state"))
        keys = candidate_kinds(baseline) + [np.full(baseline.num_rows, "all", dtype=object)]
        self.kinds = {}
        for level in keys:
            uniq, inv, counts = sorted_groups(level)
            # each kind's rows in ascending order, as a mask ``inv == k`` picks them, from one
            # stable sort (a mask per kind was a pass over every row for each of ~300 kinds)
            order = np.argsort(inv, kind="stable")
            ends = np.cumsum(counts)
            for k_i, kind in enumerate(uniq):
                if not kind or kind in self.kinds or (counts[k_i] < self.min_count and kind != "all"):
                    continue
                rows = order[ends[k_i] - counts[k_i]:ends[k_i]]
                self.kinds[str(kind)] = _profile(x[rows], ok[rows], state_codes[rows], state_names)
        return self

    def kind_of(self, table: pa.Table) -> np.ndarray:
        """The profile each conn is compared with (its most specific kind the baseline knows)."""
        out = np.full(table.num_rows, "all", dtype=object)
        done = np.zeros(table.num_rows, dtype=bool)
        for level in candidate_kinds(table):
            known = np.fromiter((k in self.kinds for k in level), dtype=bool, count=len(level))
            use = known & ~done
            out[use] = level[use]
            done |= use
        return out

    def deviations(self, table: pa.Table, rows: np.ndarray, top: int = 3) -> list[list[Deviation]]:
        """The ``top`` largest deviations of each of ``rows`` from its kind's profile."""
        return self._deviations(table, rows, top)[0]

    def _deviations(self, table: pa.Table, rows: np.ndarray,
                    top: int) -> tuple[list[list[Deviation]], np.ndarray]:
        """``deviations`` and each row's kind (``kind_of``).

        The z-scores of every row are one array operation and only each row's ``top`` become
        ``Deviation`` objects: a loop building every row's candidates took ~115 us a row, and
        an infected archive or a live sensor on one raises tens of thousands of alerts, each
        explained (``incidents.alert_evidence``). A row's z-scores are element-wise IEEE
        operations on its own values, so they are the per-row loop's bits, and a stable sort of
        the candidates (quantities in ``QUANTITIES`` order, then the conn state) ranks ties
        as it did."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return [], np.zeros(0, dtype=object)
        if not self.kinds:
            raise RuntimeError("BaselineProfile.deviations before fit")
        sub = table.take(pa.array(rows))
        x, ok = _quantities(sub)
        states = _strings(sub, "conn_state")
        kinds = self.kind_of(sub)
        names = list(self.kinds)
        code = {k: i for i, k in enumerate(names)}
        kc = np.fromiter((code[str(k)] for k in kinds), dtype=np.int64, count=len(kinds))
        profs = [self.kinds[k] for k in names]
        log_med = np.array([p.log_median for p in profs], dtype=np.float64).reshape(len(profs), -1)[kc]
        log_scale = np.array([p.log_scale for p in profs], dtype=np.float64).reshape(len(profs), -1)[kc]
        z = np.abs((np.log(x + OFFSETS) - log_med) / log_scale)                # [n, q]
        nq = len(QUANTITIES)
        # the candidates: each set quantity with a finite z, then a rare conn state (z fixed)
        cand = np.full((len(rows), nq + 1), -np.inf)
        use = ok & np.isfinite(z)
        cand[:, :nq] = np.where(use, z, -np.inf)
        shares = [profs[c].states.get(str(st), 0.0) for c, st in zip(kc.tolist(), states)]
        rare = np.array([bool(st) and sh < RARE_STATE for st, sh in zip(states, shares)], dtype=bool)
        cand[rare, nq] = RARE_STATE_Z
        order = np.argsort(-cand, axis=1, kind="stable")[:, :top]              # [n, top]
        best = np.take_along_axis(cand, order, axis=1)
        out: list[list[Deviation]] = []
        for i, (js, zs) in enumerate(zip(order.tolist(), best.tolist())):
            kind = str(kinds[i])
            prof = profs[kc[i]]
            devs = []
            for j, zj in zip(js, zs):
                if not zj >= 1.0:                        # also the -inf of no candidate
                    continue
                if j == nq:
                    devs.append(Deviation("conn_state", str(states[i]), kind, RARE_STATE_Z,
                                          baseline_share=shares[i]))
                else:
                    devs.append(Deviation(QUANTITIES[j], float(x[i, j]), kind, zj,
                                          baseline_median=float(prof.median[j]),
                                          baseline_q99=float(prof.q99[j])))
            out.append(devs)
        return out, kinds

    def explain(self, table: pa.Table, rows: np.ndarray, top: int = 3) -> list[str]:
        """One line per row: its largest deviations in words and numbers, ``; ``-separated
        (``"typical of the baseline for dns"`` when nothing stands out)."""
        devs, kinds = self._deviations(table, rows, top)
        return ["; ".join(d.text() for d in ds) if ds else f"typical of the baseline for {kinds[i]}"
                for i, ds in enumerate(devs)]

    def to_dict(self) -> dict:
        return {"min_count": self.min_count, "kinds": {k: asdict(v) for k, v in self.kinds.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "BaselineProfile":
        return cls(min_count=d["min_count"], kinds={k: KindProfile(**v) for k, v in d["kinds"].items()})


def sorted_groups(values: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True, return_counts=True)`` of an object array of
    strings, the same three results (the distinct strings in sorted order), by a dict of the
    distinct strings instead of sorting every value: ``np.unique`` sorts the whole object array
    with Python comparisons, 0.09 of the 0.14 CPU s of fitting a 30k-conn baseline's profile.

    Shapes:
        values ``[n]`` -> ``([u], [n], [u])``
    """
    # Arrow's dictionary encoding codes the strings in first-seen order (in C++; a dict in a
    # Python generator was 0.83 of the 1.7 s of fitting a 300k-conn baseline's profile)
    enc = pa.array(values, type=pa.string()).dictionary_encode()
    first = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    seen = enc.dictionary.to_pylist()
    order = sorted(range(len(seen)), key=seen.__getitem__)
    rank = np.empty(len(seen), dtype=np.int64)
    rank[order] = np.arange(len(seen))
    inverse = rank[first]
    return [seen[i] for i in order], inverse, np.bincount(inverse, minlength=len(seen))


def _profile(x: np.ndarray, ok: np.ndarray, state_codes: np.ndarray,
             state_names: list[str]) -> KindProfile:
    """The profile of one kind's conns: ``x``/``ok`` their quantities, ``state_codes`` their
    conn states as places in the sorted ``state_names``."""
    lx = np.log(x + OFFSETS)
    log_med, log_scale, med, q99 = [], [], [], []
    for j in range(x.shape[1]):
        col, lcol = x[ok[:, j], j], lx[ok[:, j], j]
        if len(col) == 0:
            log_med.append(float("nan"))
            log_scale.append(1.0)
            med.append(float("nan"))
            q99.append(float("nan"))
            continue
        m = float(np.median(lcol))
        log_med.append(m)
        log_scale.append(max(1.4826 * float(np.median(np.abs(lcol - m))), MIN_LOG_SCALE))
        med.append(float(np.median(col)))
        q99.append(float(np.quantile(col, 0.99)))
    counts = np.bincount(state_codes, minlength=len(state_names))
    n = len(state_codes)
    return KindProfile(count=int(n), log_median=log_med, log_scale=log_scale, median=med, q99=q99,
                       states={str(v): float(c) / n for v, c in zip(state_names, counts)
                               if c and v != ""})


# -- learned detectors: the nearest baseline conns and the least expected tokens -----------------

IDENTITY_COLUMNS = ("uid", "ts", "id.orig_h", "id.resp_h", "id.resp_p", "proto", "service")
"""What a kNN detector keeps of each of its reference rows, to name them in an explanation."""
NEAREST_SHOWN = 2
"""Nearest baseline conns named per alert: the notice ``sub`` stays one short line."""


def reference_identity(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """The ``IDENTITY_COLUMNS`` of ``table``'s ``rows`` (those the table has): a few kB for a
    4,000-row reference, kept beside the embeddings."""
    cols = [c for c in IDENTITY_COLUMNS if c in table.column_names]
    return table.select(cols).take(pa.array(np.asarray(rows, dtype=np.int64)))


def conn_label(conn: dict) -> str:
    """``192.168.1.5 -> 8.8.8.8:53/udp dns`` (``icmp`` without a port; service when set)."""
    proto = conn.get("proto") or "?"
    port = conn.get("id.resp_p")
    where = f"{conn.get('id.resp_h') or '?'}"
    where += f" {proto}" if proto == "icmp" or port is None else f":{port}/{proto}"
    svc = (conn.get("service") or "").split(",")[0]
    return f"{conn.get('id.orig_h') or '?'} -> {where}" + (f" {svc}" if svc else "")


def nearest_text(identity: pa.Table, dist: np.ndarray, rows: np.ndarray, far: float,
                 n_reference: int, shown: int = NEAREST_SHOWN) -> list[str]:
    """One line per alert naming its nearest baseline conns.

    Args:
        identity: ``reference_identity`` of the baseline the rows index.
        dist: cosine distances ``[n, k]``, nearest first.
        rows: the neighbours' rows in ``identity`` ``[n, k]``.
        far: the baseline's own 99th percentile of nearest-neighbour distance; an alert whose
            nearest conn is further than that is "unlike any" baseline conn.
        n_reference: baseline conns compared against.
        shown: neighbours named (default ``NEAREST_SHOWN``).
    """
    dist, rows = np.asarray(dist), np.asarray(rows)
    shown = min(shown, dist.shape[1])
    # only the reference rows named: the whole 4,000-row reference as Python dicts cost more
    # than the alerts' own text, in the GIL-bound end of a run
    named_rows, at = np.unique(rows[:, :shown].astype(np.int64), return_inverse=True)
    recs = identity.take(pa.array(named_rows)).to_pylist()
    at = at.reshape(len(rows), shown)
    out = []
    for d, r in zip(dist, at):
        named = [(float(d[j]), recs[r[j]]) for j in range(shown)]
        # a model that gave NaN embeddings has no distances: say so rather than compare NaN
        if named and np.isfinite(named[0][0]) and np.isfinite(far) and named[0][0] > far:
            c = named[0][1]
            out.append(f"unlike any of the baseline's {n_reference:,} conns (nearest distance "
                       f"{named[0][0]:.2f}, baseline p99 {far:.2f}: {conn_label(c)}, uid "
                       f"{c.get('uid') or '?'})")
        else:
            out.append(f"nearest baseline conns (baseline p99 {_dist(far)}): " + ", ".join(
                f"{conn_label(c)} (uid {c.get('uid') or '?'}, distance {_dist(x)})"
                for x, c in named))
    return out


def _dist(x: float) -> str:
    return f"{x:.2f}" if np.isfinite(x) else "n/a"


def odds(nll: float) -> str:
    """A negative log-likelihood (nats) as the chance a person reads: ``1 in 650``."""
    p = float(np.exp(-max(nll, 0.0)))
    if p >= 0.5:
        return f"{p:.0%}"
    return f"1 in {1 / max(p, 1e-12):,.0f}"


TOKEN_COLUMNS = {"proto": "proto", "conn_state": "conn_state", "service": "service",
                 "port": "id.resp_p", "history": "history", "duration": "duration",
                 "orig_bytes": "orig_bytes", "resp_bytes": "resp_bytes", "orig_pkts": "orig_pkts",
                 "resp_pkts": "resp_pkts"}
"""The conn column each host-token field is read from (``gap`` and ``same_resp`` are relative)."""


def token_value(conn: dict, name: str) -> str:
    """The value of host-token field ``name`` in a conn's own words: ``service telnet``.
    The relative fields read ``conn["_gap"]`` (seconds since the host's previous conn in the
    sequence, None for the first) and ``conn["_same_resp"]`` (its responder is the alert's)."""
    if name == "gap":
        gap = conn.get("_gap")
        return ("first of the sequence" if gap is None else
                f"{_num(float(gap))} s after the host's previous conn")
    if name == "same_resp":
        same = conn.get("_same_resp")
        return ("same responder as the alert" if same else "another responder than the alert's"
                if same is not None else "same_resp")
    col = TOKEN_COLUMNS.get(name)
    if col is None:
        return name
    v = conn.get(col)
    if v is None or v == "":
        return f"{name} unset"
    if isinstance(v, float):
        return f"{name} {_num(v)}{' s' if name == 'duration' else ''}"
    return f"{name} {v}"


def surprise_text(host: str, n_conns: int, conn: dict, fields: list[tuple[str, float]],
                  is_self: bool) -> str:
    """``of 192.168.1.9's last 16 conns the least expected: 192.168.1.9 -> 10.0.0.7:23/tcp
    (service telnet: 1 in 650, port 23: 1 in 130)``: the host's conn (in its token sequence) whose
    fields the model found least likely, each with the chance the model gave it."""
    what = "this conn" if is_self else conn_label(conn)
    parts = ", ".join(f"{token_value(conn, f)}: {odds(nll)}" for f, nll in fields)
    return (f"of {host}'s last {n_conns} conns the least expected: {what} ({parts})")
