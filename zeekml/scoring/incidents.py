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
NAMED_EVIDENCE = ("verdict_id", "community_id", "explanation")
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
    ts = _col(table, "ts", 0.0)
    orig = _col(table, "id.orig_h", "")
    resp = _col(table, "id.resp_h", "")
    alert = pc.fill_null(table.column("alert"), False).to_numpy(zero_copy_only=False).astype(bool)
    alert &= (orig != "") | (resp != "")
    alert_rows = np.flatnonzero(alert)
    if len(alert_rows) == 0:
        return []
    c = _Columns(table)

    # Inbound first: a responder whose alerts within a gap come from fanin_min originators or
    # more owns those alerts; the rest are grouped by their originator.
    taken = np.zeros(n, dtype=bool)
    groups: list[tuple[str, np.ndarray]] = []
    for seg in _segments(resp, ts, alert_rows, opt.gap):
        if resp[seg[0]] and len(set(orig[seg])) >= opt.fanin_min:
            groups.append(("resp", seg))
            taken[seg] = True
    rest = alert_rows[~taken[alert_rows]]
    by_orig = _segments(orig, ts, rest, opt.gap)
    # Slow fan-in: originators with a few alerts each, all to one responder, hours apart.
    small: dict[str, list[np.ndarray]] = {}
    for seg in by_orig:
        peers = set(resp[seg])
        if len(seg) <= opt.small_alerts and len(peers) == 1 and resp[seg[0]]:
            small.setdefault(str(resp[seg[0]]), []).append(seg)
    for segs in small.values():
        if len(segs) < opt.slow_fanin_min:
            continue
        for seg in _segments(resp, ts, np.concatenate(segs), opt.slow_gap):
            if len(set(orig[seg])) >= opt.slow_fanin_min:
                groups.append(("resp", seg))
                taken[seg] = True
    # A host's sporadic alerts (a few at a time, hours apart; a slow beacon) are one incident
    # within slow_gap; bursts keep their own incidents.
    sporadic = [seg for seg in by_orig if not taken[seg[0]] and len(seg) <= opt.small_alerts]
    groups += [("orig", seg) for seg in by_orig if not taken[seg[0]] and len(seg) > opt.small_alerts]
    if sporadic:
        groups += [("orig", seg) for seg in _segments(orig, ts, np.concatenate(sporadic), opt.slow_gap)]

    # conns = every conn of the host in its role between first and last alert (context)
    sorted_by_host = host_times or {"orig": HostTimes(orig, ts), "resp": HostTimes(resp, ts)}
    if evidence is not None and groups:
        named = np.unique(np.concatenate([_top_rows(seg, c, opt) for _, seg in groups]))
        for name, values in evidence(named).items():
            if name not in NAMED_EVIDENCE:
                raise ValueError(f"incident evidence {name!r} is not one of {', '.join(NAMED_EVIDENCE)}")
            getattr(c, name)[named] = ["" if v is None else str(v) for v in values]
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


class _Columns:
    def __init__(self, table: pa.Table):
        self.ts = _col(table, "ts", 0.0)
        self.uid = _col(table, "uid", "")
        self.orig = _col(table, "id.orig_h", "")
        self.resp = _col(table, "id.resp_h", "")
        self.port = _col(table, "id.resp_p", np.nan)
        self.proto = _col(table, "proto", "")
        self.score = _col(table, "score", 0.0)
        self.model = _col(table, "model", "")
        self.note = _col(table, "note", "")
        self.service = _col(table, "service", "")
        self.orig_bytes = _col(table, "orig_bytes", np.nan)
        self.resp_bytes = _col(table, "resp_bytes", np.nan)
        self.has_bytes = "orig_bytes" in table.column_names
        self.verdict_id = _col(table, "verdict_id", "")
        self.community_id = _col(table, "community_id", "")
        self.explanation = _col(table, "explanation", "")
        self.detector_explanation = _col(table, "detector_explanation", "")
        self.suricata = (table.column("suricata_alerts").to_pylist()
                         if "suricata_alerts" in table.column_names else None)

    def port_label(self, i: int) -> str:
        proto = self.proto[i] or "?"
        if proto == "icmp":
            return "icmp"
        p = self.port[i]
        return f"{int(p)}/{proto}" if np.isfinite(p) else proto


def _top_rows(rows: np.ndarray, c: _Columns, opt: IncidentOptions) -> np.ndarray:
    """The ``top_conns`` conns an incident of ``rows`` shows: highest score first."""
    return rows[np.argsort(-c.score[rows], kind="stable")[: opt.top_conns]]


def _incident(role: str, rows: np.ndarray, c: _Columns, times: HostTimes, opt: IncidentOptions,
              baseline_bytes: dict[str, tuple[float, float]] | None) -> Incident:
    host_col, peer_col = (c.orig, c.resp) if role == "orig" else (c.resp, c.orig)
    host = str(host_col[rows[0]])
    first, last = float(c.ts[rows[0]]), float(c.ts[rows[-1]])
    peers = Counter(str(p) for p in peer_col[rows] if p)
    ports = Counter(c.port_label(i) for i in rows)
    services = Counter(s for i in rows for s in str(c.service[i]).split(",") if s)
    dets = Counter(str(m) for m in c.model[rows] if m)
    max_score = float(np.max(c.score[rows]))
    top = _top_rows(rows, c, opt)
    top_conns = []
    for i in top:
        conn = {"uid": str(c.uid[i]), "ts": float(c.ts[i]), "id.orig_h": str(c.orig[i]),
                "id.resp_h": str(c.resp[i]),
                "id.resp_p": int(c.port[i]) if np.isfinite(c.port[i]) else None,
                "proto": str(c.proto[i]), "score": float(c.score[i]), "model": str(c.model[i])}
        for name, col in (("verdict_id", c.verdict_id), ("community_id", c.community_id),
                          ("explanation", c.explanation),
                          ("detector_explanation", c.detector_explanation)):
            if col[i]:
                conn[name] = str(col[i])
        if c.suricata is not None and c.suricata[i]:
            conn["suricata_alerts"] = c.suricata[i]
        top_conns.append(conn)
    suricata = [a for i in rows for a in (c.suricata[i] or ())] if c.suricata is not None else []
    inc = Incident(
        incident_id=incident_id(role, host, first, str(c.uid[rows[0]])),
        host=host, role=role, first_ts=first, last_ts=last,
        conns=max(times.count(host, first, last), len(rows)), alerts=int(len(rows)),
        peak_alerts=_peak(c.ts[rows], opt.gap), score=incident_score(max_score, _peak(c.ts[rows], opt.gap)),
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
    keys = Counter((str(c.resp[i]), c.port_label(i)) for i in rows)
    (peer, port), count = keys.most_common(1)[0]
    if count < 5:
        return None
    sel = np.sort(np.array([c.ts[i] for i in rows if str(c.resp[i]) == peer and c.port_label(i) == port]))
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
    by_peer: Counter = Counter()
    for i, v in zip(rows, b):
        by_peer[str(c.resp[i])] += float(v)
    peer, peer_bytes = by_peer.most_common(1)[0]
    verb, prep = ("sent", "to") if sent else ("received", "from")
    where = f"{prep} {peer}" if peer_bytes >= 0.5 * total else f"{prep} {len(by_peer)} hosts"
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
    bad = int(np.isin(c.note[rows], sorted(KNOWN_BAD_NOTES)).sum())
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


def host_baseline_bytes(baseline: pa.Table) -> dict[str, tuple[float, float]]:
    """Median ``orig_bytes`` and ``resp_bytes`` per conn of each originator in a baseline conn
    table (NaN where unset); key ``""`` holds the medians over all conns (the reference for hosts
    absent from the baseline)."""
    if baseline.num_rows == 0:
        return {}
    hosts = _col(baseline, "id.orig_h", "")
    sent, recv = _col(baseline, "orig_bytes", np.nan), _col(baseline, "resp_bytes", np.nan)

    def med(x: np.ndarray) -> float:
        x = x[np.isfinite(x)]
        return float(np.median(x)) if len(x) else float("nan")

    out: dict[str, tuple[float, float]] = {"": (med(sent), med(recv))}
    order = np.argsort(hosts, kind="stable")
    hs = hosts[order]
    cut = np.flatnonzero(hs[1:] != hs[:-1]) + 1
    for idx in np.split(order, cut):
        h = hosts[idx[0]]
        if h:
            out[str(h)] = (med(sent[idx]), med(recv[idx]))
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
    rows = np.flatnonzero(alert)
    models = batch.models()
    n = t.num_rows
    why: list[str | None] = [None] * n
    subs = getattr(batch, "sub", None) or {}
    for r in rows.tolist():
        why[r] = subs.get(r) or None
    if profile is None and len(rows) and baseline is not None and baseline.num_rows:
        profile = BaselineProfile().fit(baseline)

    def evidence(named: np.ndarray) -> dict[str, list]:
        # made for the conns the incidents show (a few per incident), not every alert: an
        # infected archive scored with a classifier alerts on most of its conns
        uid, ts = batch.column("uid"), batch.column("ts")
        ev = alert_evidence(t, named, profile)
        return {"verdict_id": [verdict_id(models[r], uid[r], ts[r]) for r in named.tolist()],
                "community_id": ev["community_id"], "explanation": ev["explanation"]}

    table = pa.table({
        "ts": t.column("ts"), "uid": t.column("uid"), "id.orig_h": t.column("id.orig_h"),
        "id.resp_h": t.column("id.resp_h"), "id.resp_p": pc.cast(t.column("id.resp_p"), pa.int64()),
        "proto": t.column("proto"), "score": pa.array(np.asarray(batch.score, np.float64)),
        "alert": pa.array(alert), "model": pa.array(models, pa.string()),
        "service": t.column("service"), "orig_bytes": pc.cast(t.column("orig_bytes"), pa.float64()),
        "resp_bytes": pc.cast(t.column("resp_bytes"), pa.float64()),
        "detector_explanation": _strings(why),
        "note": pa.array(batch.top_notes(), pa.string()),
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
