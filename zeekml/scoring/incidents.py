"""From conn alerts to incidents: one record per host and burst of activity, ranked.

Alerting conns are grouped by responder when many originators hit one responder (an inbound
attack: a flood, a brute force, many bots calling one server), and by originator otherwise (a
scan, a beacon, an exfiltration). Within a host, alerts further apart than ``gap`` seconds start a
new incident. Each incident carries its evidence (peers, ports, services, detectors, top conns)
and a one-line description built from it ("scanned 18 hosts on 445/tcp in 40 s").

Input is one Arrow table with the columns of ``verdicts.jsonl`` (``ts``, ``uid``, ``id.orig_h``,
``id.resp_h``, ``id.resp_p``, ``proto``, ``score``, ``alert``, ``model``) and, when known,
``service``, ``orig_bytes``, ``resp_bytes``, ``verdict_id``, ``community_id``, ``explanation``,
``note`` (the verdict's: a known-bad detector's alerts are not called anomalous). Non-alerting
rows only count towards an incident's ``conns``.
"""
from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zeekml.scoring.evidence import incident_signatures
from zeekml.scoring.verdict import KNOWN_BAD_NOTES

REQUIRED = ("ts", "uid", "id.orig_h", "id.resp_h", "id.resp_p", "proto", "score", "alert", "model")
# what an incident says of its top conns alone: ``build_incidents``' ``evidence`` may make these
NAMED_EVIDENCE = ("verdict_id", "community_id", "explanation", "detector_explanation")
OPTIONAL = {"service": pa.string(), "orig_bytes": pa.float64(), "resp_bytes": pa.float64(),
            "verdict_id": pa.string(), "community_id": pa.string(), "explanation": pa.string(),
            # the detector's own reason (the notice's sub: nearest baseline conns, tokens)
            "detector_explanation": pa.string(),
            "suppressed_by": pa.string(),
            # the verdict's note: a known-bad detector's alerts are not "anomalous" (``describe``)
            "note": pa.string(),
            # Suricata alerts joined onto the conn (verdicts.jsonl, scoring.evidence)
            "suricata_alerts": pa.list_(pa.struct([
                ("signature_id", pa.int64()), ("signature", pa.string()),
                ("severity", pa.int64()), ("category", pa.string())]))}


@dataclass
class IncidentOptions:
    """How alerts become incidents.

    Args:
        gap: seconds without an alert that close a host's incident (default 900: longer than
            the beacon periods we want to see as one incident).
        fanin_min: distinct originators of alerts to one responder, within ``gap``, that make it
            an inbound incident of the responder (default 10).
        slow_fanin_min: distinct originators whose few alerts (at most ``small_alerts`` each,
            all to one responder) make a slow inbound incident of that responder when they fall
            within ``slow_gap`` of each other (default 5; internet scanners probing one device a
            few conns each, hours apart).
        small_alerts: see ``slow_fanin_min``; an originator's incidents of at most this many
            alerts are also merged when within ``slow_gap`` (default 3).
        slow_gap: see ``slow_fanin_min`` (default 6 h).
        top_conns: evidence conns kept per incident (default 5).
        max_listed: peers, ports and services listed per incident (default 20; counts are kept).
    """

    gap: float = 900.0
    fanin_min: int = 10
    slow_fanin_min: int = 5
    small_alerts: int = 3
    slow_gap: float = 6 * 3600.0
    top_conns: int = 5
    max_listed: int = 20


@dataclass
class Incident:
    incident_id: str
    host: str
    role: str                       # "orig": the host started the conns; "resp": it received them
    first_ts: float
    last_ts: float
    conns: int                      # all conns of the host in this role between first and last ts
    alerts: int
    peak_alerts: int                # alerts of the densest burst (within the gap), for the score
    score: float
    peers: list[str]
    n_peers: int
    resp_ports: list[str]           # "445/tcp", most alerts first
    services: list[str]
    detectors: list[str]            # most alerts first
    detector_alerts: dict[str, int]
    max_score: float
    description: str
    top_conns: list[dict] = field(default_factory=list)
    suricata_alerts: int = 0        # Suricata alerts on the incident's alerting conns
    suricata_signatures: list[dict] = field(default_factory=list)   # most alerts first
    # the false-positive rate the run's alerts are raised at (``calibrate.fpr_text``): its
    # notices say it, as the per-conn notices do; "" where not known (a report's rebuild)
    alert_rate: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.suricata_alerts:    # Suricata evidence only where there is some
            del d["suricata_alerts"], d["suricata_signatures"]
        if not self.alert_rate:
            del d["alert_rate"]
        return d


def incident_id(role: str, host: str, first_ts: float, first_uid: str) -> str:
    """Stable id from the incident's first alert, so it stays the same while the incident grows
    (live) and across reruns of the same input."""
    return "I" + hashlib.sha1(f"{role}|{host}|{first_ts:.6f}|{first_uid}".encode()).hexdigest()[:16]


def incident_score(max_score: float, peak_alerts: int) -> float:
    """Rank by the strongest alert, raised by the alerts of the densest burst (alerts within
    ``gap`` of each other): one alert at 2.0 scores 2.0, a burst of ten 4.0, of a hundred 6.0. A
    sustained pattern outranks a single odd conn, and a host's sporadic alerts merged over hours
    do not outrank a burst."""
    return float(max(max_score, 0.0) * (1.0 + math.log10(max(peak_alerts, 1))))


def _peak(ts: np.ndarray, gap: float) -> int:
    """The most alerts in one run of ``ts`` whose consecutive values are at most ``gap`` apart."""
    t = np.sort(ts)
    cuts = np.flatnonzero(np.diff(t) > gap)
    edges = np.concatenate(([0], cuts + 1, [len(t)]))
    return int(np.max(np.diff(edges))) if len(t) else 0


def _text(s: object) -> object:
    # Undecodable log bytes travel as lone surrogates (surrogateescape); Arrow strings must be
    # UTF-8, so show such a byte as the text \xHH rather than fail or drop it.
    if isinstance(s, str):
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return s


def _strings(values: list) -> pa.Array:
    try:
        return pa.array(values, pa.string())
    except UnicodeEncodeError:
        return pa.array([_text(v) for v in values], pa.string())


def verdict_table(records: Iterable[dict]) -> pa.Table:
    """The incident input table from ``verdicts.jsonl`` objects (extra keys ignored)."""
    recs = list(records)
    cols: dict[str, pa.Array] = {
        "ts": pa.array([r.get("ts") for r in recs], pa.float64()),
        "uid": _strings([r.get("uid") for r in recs]),
        "id.orig_h": _strings([r.get("id.orig_h") for r in recs]),
        "id.resp_h": _strings([r.get("id.resp_h") for r in recs]),
        "id.resp_p": pa.array([r.get("id.resp_p") for r in recs], pa.int64()),
        "proto": _strings([r.get("proto") for r in recs]),
        "score": pa.array([r.get("score") for r in recs], pa.float64()),
        "alert": pa.array([bool(r.get("alert")) for r in recs], pa.bool_()),
        "model": _strings([r.get("model") for r in recs]),
    }
    for name, typ in OPTIONAL.items():
        if any(name in r for r in recs):
            vals = [r.get(name) for r in recs]
            cols[name] = _strings(vals) if typ == pa.string() else pa.array(vals, typ)
    return pa.table(cols)


def _col(table: pa.Table, name: str, fill) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, fill, dtype=object if isinstance(fill, str) else float)
    col = table.column(name)
    if isinstance(fill, str):
        return np.asarray(pc.fill_null(pc.cast(col, pa.string()), fill).to_pylist(), dtype=object)
    return pc.fill_null(pc.cast(col, pa.float64()), fill).to_numpy(zero_copy_only=False)


def _segments(keys: np.ndarray, ts: np.ndarray, rows: np.ndarray, gap: float) -> list[np.ndarray]:
    """Split ``rows`` into runs of one key whose consecutive ts are at most ``gap`` apart."""
    if len(rows) == 0:
        return []
    order = rows[np.lexsort((ts[rows], keys[rows]))]
    k, t = keys[order], ts[order]
    cut = np.flatnonzero((k[1:] != k[:-1]) | (np.diff(t) > gap)) + 1
    return np.split(order, cut)


def build_incidents(table: pa.Table, options: IncidentOptions | None = None,
                    baseline_bytes: dict[str, tuple[float, float]] | None = None,
                    host_times: dict | None = None,
                    evidence: Callable[[np.ndarray], dict[str, list]] | None = None) -> list[Incident]:
    """Incidents of the alerting rows of ``table``, highest score first (ties: earliest first).

    Args:
        table: see the module docstring.
        options: grouping settings (default ``IncidentOptions()``).
        baseline_bytes: medians of ``orig_bytes`` and ``resp_bytes`` per conn of each
            originator in the baseline (see ``host_baseline_bytes``; key ``""`` = all hosts), to
            say when a host sent or received far more than it usually does. Without it no
            volume statement is made.
        host_times: ``{"orig": ..., "resp": ...}``, each with ``count(host, t0, t1)``: the
            conns of a host in that role with ``t0 <= ts <= t1``, for an incident's ``conns``.
            Default: counted in ``table``, which then holds every scored conn. Given, ``table``
            may hold just the alerting rows (chunked ``score``, ``--dask``: every conn is never
            in memory at once); the incidents are the same.
        evidence: called once with the rows of ``table`` the incidents name (their top conns,
            ascending), returns lists in that order for any of ``NAMED_EVIDENCE``'s columns,
            which then need not be in ``table``: evidence costly per conn (an explanation, a
            Community ID) is made for the few conns shown instead of every alert.
    """
    opt = options or IncidentOptions()
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise ValueError(f"incident input lacks column(s) {', '.join(missing)}")
    n = table.num_rows
    if n == 0:
        return []
    alert = pc.fill_null(table.column("alert"), False).to_numpy(zero_copy_only=False).astype(bool)
    if not alert.any():
        return []
    c = _Columns(table)
    ts, orig, resp = c.ts, c.orig.codes, c.resp.codes
    alert &= c.orig.set_rows() | c.resp.set_rows()
    alert_rows = np.flatnonzero(alert)
    if len(alert_rows) == 0:
        return []

    # Inbound first: a responder whose alerts within a gap come from fanin_min originators or
    # more owns those alerts; the rest are grouped by their originator. (Hosts as codes in the
    # order of their addresses: the same segments, in the same order, as the addresses give.)
    taken = np.zeros(n, dtype=bool)
    groups: list[tuple[str, np.ndarray]] = []
    for seg in _segments(resp, ts, alert_rows, opt.gap):
        if resp[seg[0]] != c.resp.unset and len(np.unique(orig[seg])) >= opt.fanin_min:
            groups.append(("resp", seg))
            taken[seg] = True
    rest = alert_rows[~taken[alert_rows]]
    by_orig = _segments(orig, ts, rest, opt.gap)
    # Slow fan-in: originators with a few alerts each, all to one responder, hours apart.
    small: dict[int, list[np.ndarray]] = {}
    for seg in by_orig:
        if (len(seg) <= opt.small_alerts and resp[seg[0]] != c.resp.unset
                and (resp[seg] == resp[seg[0]]).all()):
            small.setdefault(int(resp[seg[0]]), []).append(seg)
    for segs in small.values():
        if len(segs) < opt.slow_fanin_min:
            continue
        for seg in _segments(resp, ts, np.concatenate(segs), opt.slow_gap):
            if len(np.unique(orig[seg])) >= opt.slow_fanin_min:
                groups.append(("resp", seg))
                taken[seg] = True
    # A host's sporadic alerts (a few at a time, hours apart; a slow beacon) are one incident
    # within slow_gap; bursts keep their own incidents.
    sporadic = [seg for seg in by_orig if not taken[seg[0]] and len(seg) <= opt.small_alerts]
    groups += [("orig", seg) for seg in by_orig if not taken[seg[0]] and len(seg) > opt.small_alerts]
    if sporadic:
        groups += [("orig", seg) for seg in _segments(orig, ts, np.concatenate(sporadic), opt.slow_gap)]

    # conns = every conn of the host in its role between first and last alert (context)
    sorted_by_host = host_times or {"orig": HostTimes(orig, ts, c.orig.index()),
                                    "resp": HostTimes(resp, ts, c.resp.index())}
    if groups:
        tops = [_top_rows(seg, c, opt) for _, seg in groups]
        if evidence is not None:
            named = np.unique(np.concatenate(tops))
            for name, values in evidence(named).items():
                if name not in NAMED_EVIDENCE:
                    raise ValueError(f"incident evidence {name!r} is not one of {', '.join(NAMED_EVIDENCE)}")
                getattr(c, name).given(named, ["" if v is None else str(v) for v in values])
        # the few rows whose named columns the incidents read (top conns, first uid), in one take
        shown = np.unique(np.concatenate(tops + [seg[:1] for _, seg in groups]))
        for col in c.named():
            col.fetch(shown)
    out = [_incident(role, seg, c, sorted_by_host[role], opt, baseline_bytes) for role, seg in groups]
    out.sort(key=lambda i: (-i.score, i.first_ts, i.incident_id))
    return out


class HostTimes:
    """Each host's ts, sorted, to count its conns in a time range quickly (``count``).

    Args:
        hosts: each conn's host, ``[n]``: the addresses, or codes of them given ``index``.
        ts: each conn's ts, ``[n]``.
        index: address -> code, when ``hosts`` holds codes (chunked scoring and --dask keep
            16 bytes a conn this way, ``pipeline.chunked.TriageRows``); None: addresses.
    """

    def __init__(self, hosts: np.ndarray, ts: np.ndarray, index: dict[str, int] | None = None):
        order = np.lexsort((ts, hosts))
        self.hosts, self.ts, self.index = hosts[order], ts[order], index

    def count(self, host: str, t0: float, t1: float) -> int:
        """The conns of ``host`` with ``t0 <= ts <= t1``."""
        key = host if self.index is None else self.index.get(host)
        if key is None:
            return 0
        lo = np.searchsorted(self.hosts, key, side="left")
        hi = np.searchsorted(self.hosts, key, side="right")
        t = self.ts[lo:hi]
        return int(np.searchsorted(t, t1, side="right") - np.searchsorted(t, t0, side="left"))


def string_codes(col: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """A string column as the incidents read it (cast to string, unset = ""), dictionary-coded:
    ``codes[i]`` (int32) indexes ``names``, in order of first occurrence."""
    arr = pc.fill_null(pc.cast(col, pa.string()), "")
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    enc = arr.dictionary_encode()
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int32), enc.dictionary.to_pylist()


class _Coded:
    """A string column of the incident input, dictionary-coded: ``codes[i]`` indexes ``names``
    (unset = ""), the names sorted so that codes order as the strings do. The per-incident
    counts run over these codes rather than a Python string per row: an infected archive
    scored with a known-bad classifier alerts on most of its conns (845k of 1M)."""

    def __init__(self, table: pa.Table, name: str):
        if name not in table.column_names:
            self.names, self.codes = np.array([""], dtype=object), np.zeros(table.num_rows, np.int32)
        else:
            codes, first = string_codes(table.column(name))
            names = np.array(first, dtype=object)
            order = np.argsort(names, kind="stable")
            rank = np.empty(len(order), dtype=np.int32)
            rank[order] = np.arange(len(order), dtype=np.int32)
            self.names = names[order]
            self.codes = rank[codes]
        hit = np.flatnonzero(self.names == "")
        self.unset = int(hit[0]) if len(hit) else -1     # the code of "" (-1: none unset)

    def __getitem__(self, i) -> str:
        return self.names[self.codes[i]]

    def set_rows(self) -> np.ndarray:
        """Per row: the value is set (not "")."""
        return self.codes != self.unset

    def index(self) -> dict[str, int]:
        """Name -> code."""
        return {h: i for i, h in enumerate(self.names.tolist())}

    def counts(self, rows: np.ndarray) -> Counter:
        """The set values of ``rows`` and how often each occurs, in order of first occurrence
        (``Counter.most_common`` breaks ties by that order)."""
        if len(rows) <= _FEW:
            return Counter(x for x in self.names[self.codes[rows]].tolist() if x)
        codes, counts, _ = _first_seen(self.codes[rows])
        return Counter({self.names[k]: int(n) for k, n in zip(codes.tolist(), counts.tolist())
                        if k != self.unset})


_FEW = 64
"""Rows up to which an incident's counts are taken in Python (numpy's calls cost more there)."""


def _first_seen(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct ``keys`` in order of first occurrence, their counts, and per key its
    position among them."""
    uniq, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True,
                                             return_counts=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return uniq[order], counts[order], rank[np.reshape(inverse, -1)]


class _Named:
    """A string column an incident reads for a few rows only (its top conns, its first uid):
    left in Arrow, with the values ``build_incidents``' ``evidence`` gives for its rows."""

    def __init__(self, table: pa.Table, name: str):
        self.column = table.column(name) if name in table.column_names else None
        self.known: dict[int, str] = {}

    def given(self, rows: np.ndarray, values: list[str]) -> None:
        """Rows' values made by ``build_incidents``' ``evidence`` (not in the table)."""
        self.known.update(zip(rows.tolist(), values))

    def fetch(self, rows: np.ndarray) -> None:
        """Read the values of ``rows`` not known yet (one ``take`` for all of them)."""
        if self.column is None:
            return
        rows = np.array([r for r in rows.tolist() if r not in self.known], dtype=np.int64)
        vals = self.column.take(pa.array(rows, pa.int64())).to_pylist()
        self.known.update((r, "" if v is None else str(v)) for r, v in zip(rows.tolist(), vals))

    def __getitem__(self, i) -> str:
        i = int(i)
        if i in self.known:
            return self.known[i]
        if self.column is None:
            return ""
        v = self.column[i].as_py()
        return "" if v is None else str(v)


class _Columns:
    def __init__(self, table: pa.Table):
        self.ts = _col(table, "ts", 0.0)
        self.uid = _Named(table, "uid")
        self.orig = _Coded(table, "id.orig_h")
        self.resp = _Coded(table, "id.resp_h")
        self.port = _col(table, "id.resp_p", np.nan)
        self.proto = _Coded(table, "proto")
        self.score = _col(table, "score", 0.0)
        self.model = _Coded(table, "model")
        self.note = _Coded(table, "note")
        self.service = _Coded(table, "service")
        self.known_bad = np.isin(self.note.names, sorted(KNOWN_BAD_NOTES))    # per note code
        self.orig_bytes = _col(table, "orig_bytes", np.nan)
        self.resp_bytes = _col(table, "resp_bytes", np.nan)
        self.has_bytes = "orig_bytes" in table.column_names
        self.verdict_id = _Named(table, "verdict_id")
        self.community_id = _Named(table, "community_id")
        self.explanation = _Named(table, "explanation")
        self.detector_explanation = _Named(table, "detector_explanation")
        # each row's "445/tcp" (``port_label``), coded: one label per distinct proto and port
        port = np.where(np.isfinite(self.port), self.port, -np.inf)
        pairs, at = np.unique(np.column_stack((self.proto.codes.astype(np.float64), port)),
                              axis=0, return_inverse=True)
        labels = [self._label(self.proto.names[int(k)], p) for k, p in pairs.tolist()]
        self.labels = np.array(sorted(set(labels)), dtype=object)
        code = {x: i for i, x in enumerate(self.labels.tolist())}
        self.label = np.array([code[x] for x in labels], dtype=np.int64)[np.reshape(at, -1)] \
            if labels else np.zeros(table.num_rows, dtype=np.int64)
        # the Suricata alerts joined onto the conns, by row (few rows have any)
        self.suricata: dict[int, list] | None = None
        if "suricata_alerts" in table.column_names:
            col = table.column("suricata_alerts")
            has = np.flatnonzero(pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False))
            self.suricata = dict(zip(has.tolist(), col.take(pa.array(has, pa.int64())).to_pylist()))

    def named(self) -> tuple[_Named, ...]:
        """The columns read for a few rows only."""
        return (self.uid, self.verdict_id, self.community_id, self.explanation,
                self.detector_explanation)

    @staticmethod
    def _label(proto: str, port: float) -> str:
        proto = proto or "?"
        if proto == "icmp":
            return "icmp"
        return f"{int(port)}/{proto}" if np.isfinite(port) else proto

    def port_label(self, i: int) -> str:
        return self.labels[self.label[i]]

    def ports(self, rows: np.ndarray) -> Counter:
        """The ``port_label``s of ``rows`` and their counts, in order of first occurrence."""
        if len(rows) <= _FEW:
            return Counter(self.labels[self.label[rows]].tolist())
        codes, counts, _ = _first_seen(self.label[rows])
        return Counter({self.labels[k]: int(n) for k, n in zip(codes.tolist(), counts.tolist())})

    def services(self, rows: np.ndarray) -> Counter:
        """Each service of ``rows`` (a conn's ``"dns,http"`` counts both) and its count, in order
        of first occurrence."""
        if len(rows) <= _FEW:
            return Counter(s for x in self.service.names[self.service.codes[rows]].tolist()
                           for s in x.split(",") if s)
        out: Counter = Counter()
        codes, counts, _ = _first_seen(self.service.codes[rows])
        for k, n in zip(codes.tolist(), counts.tolist()):
            for s in self.service.names[k].split(","):
                if s:
                    out[s] += n
        return out

    def suricata_of(self, rows: np.ndarray) -> list:
        """The Suricata alerts of ``rows``, in their order."""
        if not self.suricata:
            return []
        return [a for i in rows.tolist() for a in (self.suricata.get(i) or ())]


def _top_rows(rows: np.ndarray, c: _Columns, opt: IncidentOptions) -> np.ndarray:
    """The ``top_conns`` conns an incident of ``rows`` shows: highest score first."""
    return rows[np.argsort(-c.score[rows], kind="stable")[: opt.top_conns]]


def _incident(role: str, rows: np.ndarray, c: _Columns, times: HostTimes, opt: IncidentOptions,
              baseline_bytes: dict[str, tuple[float, float]] | None) -> Incident:
    host_col, peer_col = (c.orig, c.resp) if role == "orig" else (c.resp, c.orig)
    host = host_col[rows[0]]
    first, last = float(c.ts[rows[0]]), float(c.ts[rows[-1]])
    peers = peer_col.counts(rows)
    ports = c.ports(rows)
    services = c.services(rows)
    dets = c.model.counts(rows)
    max_score = float(np.max(c.score[rows]))
    peak = _peak(c.ts[rows], opt.gap)
    top = _top_rows(rows, c, opt)
    top_conns = []
    for i in top:
        conn = {"uid": c.uid[i], "ts": float(c.ts[i]), "id.orig_h": c.orig[i],
                "id.resp_h": c.resp[i],
                "id.resp_p": int(c.port[i]) if np.isfinite(c.port[i]) else None,
                "proto": c.proto[i], "score": float(c.score[i]), "model": c.model[i]}
        for name, col in (("verdict_id", c.verdict_id), ("community_id", c.community_id),
                          ("explanation", c.explanation),
                          ("detector_explanation", c.detector_explanation)):
            if col[i]:
                conn[name] = col[i]
        if c.suricata and c.suricata.get(int(i)):
            conn["suricata_alerts"] = c.suricata[int(i)]
        top_conns.append(conn)
    suricata = c.suricata_of(rows)
    inc = Incident(
        incident_id=incident_id(role, host, first, c.uid[rows[0]]),
        host=host, role=role, first_ts=first, last_ts=last,
        conns=max(times.count(host, first, last), len(rows)), alerts=int(len(rows)),
        peak_alerts=peak, score=incident_score(max_score, peak),
        peers=[p for p, _ in peers.most_common(opt.max_listed)], n_peers=len(peers),
        resp_ports=[p for p, _ in ports.most_common(opt.max_listed)],
        services=[s for s, _ in services.most_common(opt.max_listed)],
        detectors=[d for d, _ in dets.most_common()], detector_alerts=dict(dets.most_common()),
        max_score=max_score, description="", top_conns=top_conns,
        suricata_alerts=len(suricata),
        suricata_signatures=incident_signatures(suricata, opt.max_listed))
    inc.description = describe(inc, rows, c, peers, ports, baseline_bytes)
    return inc


# -- descriptions -------------------------------------------------------------------------------

def fmt_duration(seconds: float) -> str:
    """``40 s``, ``5 min``, ``3 h``, ``2.5 d``: the unit a person would say."""
    s = max(float(seconds), 0.0)
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 36 * 3600:
        h = s / 3600
        return f"{h:.0f} h" if h >= 10 or abs(h - round(h)) < 0.05 else f"{h:.1f} h"
    return f"{s / 86400:.1f} d"


def fmt_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _n(count: int, noun: str) -> str:
    """'1 host', '18 hosts'."""
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def _ports_text(ports: Counter) -> str:
    names = [p for p, _ in ports.most_common(3)]
    more = len(ports) - len(names)
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")


def _periodic(rows: np.ndarray, c: _Columns) -> str | None:
    """'periodic conns every 60 s +- 2 s to 1.2.3.4:443 for 3 h' when the alerts to one
    peer:port arrive on a steady clock (std of the intervals within a tenth of the mean, + 1 s)."""
    if len(rows) < 5:
        return None
    # the peer:port with the most alerts (ties: the first to occur)
    keys, counts, at = _first_seen(c.resp.codes[rows].astype(np.int64) * len(c.labels) + c.label[rows])
    top = int(np.argmax(counts))
    if counts[top] < 5:
        return None
    peer, port = c.resp.names[keys[top] // len(c.labels)], c.labels[keys[top] % len(c.labels)]
    sel = np.sort(c.ts[rows[at == top]])
    d = np.diff(sel)
    # mean and std of the intervals: jitter around a clock averages out; a missed or extra beat
    # widens the spread, and then we do not claim a period
    period = float(np.mean(d))
    if period < 5.0:     # faster than that is a burst, not a clock
        return None
    spread = float(np.std(d))
    if spread > 0.1 * period + 1.0:
        return None
    where = f"{peer}:{port.split('/')[0]}" if "/" in port else f"{peer} ({port})"
    return (f"periodic conns every {fmt_duration(period)} +- {spread:.0f} s to {where} "
            f"for {fmt_duration(sel[-1] - sel[0])}")


def _volume(host: str, rows: np.ndarray, c: _Columns,
            baseline_bytes: dict[str, tuple[float, float]] | None, sent: bool) -> str | None:
    """'sent 40x its baseline bytes per conn to 5.6.7.8 (576.0 kB in 12 conns)' (or 'received
    ... from') when the host's alerting conns carried at least 10x the median of its baseline
    conns that way, and at least 100 kB in all."""
    if not baseline_bytes or not c.has_bytes:
        return None
    ref_pair = baseline_bytes.get(host, baseline_bytes.get(""))
    if ref_pair is None:
        return None
    ref = ref_pair[0 if sent else 1]
    b = (c.orig_bytes if sent else c.resp_bytes)[rows]
    b = np.where(np.isfinite(b), b, 0.0)
    total = float(b.sum())
    if total < 100e3 or not np.isfinite(ref):
        return None
    ratio = (total / len(rows)) / max(ref, 1.0)
    if ratio < 10:
        return None
    # bytes per peer, added in the rows' order; the peer with the most (ties: the first)
    keys, _, at = _first_seen(c.resp.codes[rows])
    by_peer = np.bincount(at, weights=b, minlength=len(keys))
    top = int(np.argmax(by_peer))
    peer, peer_bytes = c.resp.names[keys[top]], float(by_peer[top])
    verb, prep = ("sent", "to") if sent else ("received", "from")
    where = f"{prep} {peer}" if peer_bytes >= 0.5 * total else f"{prep} {len(keys)} hosts"
    whose = "its" if host in baseline_bytes else "the network's"
    amount = f"{fmt_bytes(total)} in {_n(len(rows), 'conn')}"
    if ref < 1:
        return (f"{verb} {amount} {where}, where {whose} baseline conns "
                f"{'send' if sent else 'receive'} a median of 0 bytes")
    return f"{verb} {ratio:,.0f}x {whose} baseline bytes per conn {where} ({amount})"


def alert_noun(rows: np.ndarray, c: _Columns) -> str:
    """What the alerts of ``rows`` are, by their verdicts' notes: "known-bad conn" when a
    known-bad detector (a classifier: like the malware it was taught) raised every one,
    "anomalous conn" when none did (unlike the baseline; also without notes), "alerting conn"
    for a mix."""
    bad = int(c.known_bad[c.note.codes[rows]].sum())
    return "known-bad conn" if bad == len(rows) > 0 else "alerting conn" if bad else "anomalous conn"


def describe(inc: Incident, rows: np.ndarray, c: _Columns, peers: Counter, ports: Counter,
             baseline_bytes: dict[str, tuple[float, float]] | None = None) -> str:
    """One line a person can act on, from the incident's evidence; the strongest patterns first."""
    span = fmt_duration(inc.last_ts - inc.first_ts)
    clauses: list[str] = []
    noun = alert_noun(rows, c)
    if inc.role == "resp":
        clauses.append(f"received {_n(inc.alerts, noun)} from {_n(inc.n_peers, 'host')} "
                       f"on {_ports_text(ports)} in {span}")
    else:
        vol = (_volume(inc.host, rows, c, baseline_bytes, sent=True)
               or _volume(inc.host, rows, c, baseline_bytes, sent=False))
        if vol:
            clauses.append(vol)
        if inc.n_peers >= 10 and len(ports) <= 3:
            how = "with icmp" if list(ports) == ["icmp"] else f"on {_ports_text(ports)}"
            clauses.append(f"scanned {inc.n_peers:,} hosts {how} in {span}")
        elif inc.n_peers <= 3 and len(ports) >= 10:
            clauses.append(f"scanned {len(ports):,} ports on {', '.join(peers)} in {span}")
        per = _periodic(rows, c)
        if per:
            clauses.append(per)
    if not clauses:
        if inc.alerts == 1:
            i = rows[0]
            clauses.append(f"1 {noun} to {c.resp[i]} on {c.port_label(i)} "
                           f"(score {inc.max_score:.2f}, {c.model[i]})")
        else:
            clauses.append(f"{_n(inc.alerts, noun)} to {_n(inc.n_peers, 'host')} on "
                           f"{_ports_text(ports)} in {span}")
    return "; ".join(clauses[:2])


def _group_medians(codes: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """Per group ``0..n_groups-1`` of ``codes``, ``np.median`` of its finite ``values`` (NaN for
    a group with none), all groups in one sort: the middle value, or the mean of the two middle
    ones as ``np.median`` takes it."""
    ok = np.isfinite(values)
    c, v = codes[ok], values[ok]
    order = np.lexsort((v, c))
    v = v[order]
    counts = np.bincount(c, minlength=n_groups)
    start = np.cumsum(counts) - counts
    out = np.full(n_groups, np.nan)
    has = counts > 0
    lo = start[has] + (counts[has] - 1) // 2
    hi = start[has] + counts[has] // 2
    out[has] = np.where(lo == hi, v[lo], (v[lo] + v[hi]) / 2)
    return out


def host_baseline_bytes(baseline: pa.Table) -> dict[str, tuple[float, float]]:
    """Median ``orig_bytes`` and ``resp_bytes`` per conn of each originator in a baseline conn
    table (NaN where unset); key ``""`` holds the medians over all conns (the reference for hosts
    absent from the baseline)."""
    if baseline.num_rows == 0:
        return {}
    sent, recv = _col(baseline, "orig_bytes", np.nan), _col(baseline, "resp_bytes", np.nan)
    everyone = np.zeros(len(sent), dtype=np.int64)
    out: dict[str, tuple[float, float]] = {
        "": (float(_group_medians(everyone, sent, 1)[0]), float(_group_medians(everyone, recv, 1)[0]))}
    if "id.orig_h" not in baseline.column_names:
        return out
    codes, names = string_codes(baseline.column("id.orig_h"))
    med_sent = _group_medians(codes, sent, len(names))
    med_recv = _group_medians(codes, recv, len(names))
    for g, h in enumerate(names):
        if h:       # an unset host ("") is no host: only the all-conns medians count it
            out[h] = (float(med_sent[g]), float(med_recv[g]))
    return out


def incidents_from_batch(batch, baseline: pa.Table | None = None,
                         options: IncidentOptions | None = None, profile=None,
                         host_times: dict | None = None) -> list[Incident]:
    """Incidents of a scored ``VerdictBatch`` (its ``table`` is the conn table): with the conns'
    service and bytes, each alert's verdict id and Community ID, and, given the ``baseline`` conns,
    explanations against the baseline of the same kind (``profile``: a fitted
    ``BaselineProfile``, fitted here when not given) and volume statements. ``host_times``: as
    ``build_incidents`` (then ``batch`` may hold the alerting conns only).
    """
    from zeekml.scoring.explain import BaselineProfile
    from zeekml.scoring.verdict import verdict_id

    t = batch.table
    alert = np.asarray(batch.alert, dtype=bool)
    n = t.num_rows
    top = pa.array(np.asarray(batch.top, dtype=np.int32))
    subs = getattr(batch, "sub", None) or {}
    if profile is None and alert.any() and baseline is not None and baseline.num_rows:
        profile = BaselineProfile().fit(baseline)

    def evidence(named: np.ndarray) -> dict[str, list]:
        # made for the conns the incidents show (a few per incident), not every alert: an
        # infected archive scored with a classifier alerts on most of its conns
        uid, ts = batch.column("uid"), batch.column("ts")
        ev = alert_evidence(t, named, profile)
        return {"verdict_id": [verdict_id(batch.names[batch.top[r]], uid[r], ts[r])
                               for r in named.tolist()],
                "community_id": ev["community_id"], "explanation": ev["explanation"],
                "detector_explanation": [subs.get(r) or None for r in named.tolist()]}

    # the top detector's name and note per conn, dictionary-coded: no Python string per conn
    table = pa.table({
        "ts": t.column("ts"), "uid": t.column("uid"), "id.orig_h": t.column("id.orig_h"),
        "id.resp_h": t.column("id.resp_h"), "id.resp_p": pc.cast(t.column("id.resp_p"), pa.int64()),
        "proto": t.column("proto"), "score": pa.array(np.asarray(batch.score, np.float64)),
        "alert": pa.array(alert),
        "model": pa.DictionaryArray.from_arrays(top, pa.array(list(batch.names), pa.string())),
        "service": t.column("service"), "orig_bytes": pc.cast(t.column("orig_bytes"), pa.float64()),
        "resp_bytes": pc.cast(t.column("resp_bytes"), pa.float64()),
        "note": pa.DictionaryArray.from_arrays(top, pa.array(list(batch.notes), pa.string())),
    })
    if getattr(batch, "suricata_alerts", None):
        sur = [batch.suricata_alerts.get(r) for r in range(n)]
        table = table.append_column("suricata_alerts", pa.array(sur, OPTIONAL["suricata_alerts"]))
    ref = host_baseline_bytes(baseline) if baseline is not None else None
    return build_incidents(table, options, baseline_bytes=ref, host_times=host_times,
                           evidence=evidence)


def alert_evidence(table: pa.Table, rows: np.ndarray, profile=None) -> dict[str, list]:
    """What an incident says about each alerting conn of ``rows`` of the conn ``table``, as
    ``score`` and ``watch`` both take it (one helper, so their incidents read the same):
    ``service``, ``orig_bytes``, ``resp_bytes`` (volume statements), ``community_id`` and, given a
    fitted ``scoring.explain.BaselineProfile``, ``explanation`` (how the conn differs from the
    baseline's conns of its kind; None without a profile). Lists in the order of ``rows``."""
    from zeekml.flows.community_id import community_ids

    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return {k: [] for k in ("service", "orig_bytes", "resp_bytes", "community_id", "explanation")}
    sub = table.take(pa.array(rows))

    def floats(name: str) -> list:
        if name not in sub.column_names:
            return [None] * len(rows)
        return pc.cast(sub.column(name), pa.float64()).to_pylist()

    return {
        "service": (sub.column("service").to_pylist() if "service" in sub.column_names
                    else [None] * len(rows)),
        "orig_bytes": floats("orig_bytes"), "resp_bytes": floats("resp_bytes"),
        "community_id": list(community_ids(sub)),
        "explanation": (profile.explain(table, rows) if profile is not None
                        else [None] * len(rows)),
    }
