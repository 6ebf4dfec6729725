"""The verdict: one scored conn, as every sink (notice log, Zeek feedback file, JSON lines) sees it."""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zeekml.flows.community_id import community_id_column, community_id_v1

# Every `note` zeekml writes; zeek-scripts/scripts/main.zeek declares the same names in
# `redef enum Notice::Type`, and a test keeps the two lists equal.
NOTE_TYPES: tuple[str, ...] = (
    "ZeekML::Anomalous_Flow",   # an unsupervised detector's calibrated score is over threshold
    "ZeekML::Intrusion",        # a supervised head says malicious
    "ZeekML::Botnet_Activity",  # a botnet-family head names a family
    "ZeekML::Suspicious_Host",  # an incident: a host's alerts grouped (zeekml_incident.log)
)
# The notes of known-bad detectors (supervised heads): their alerts mean "like the malware a
# head was taught", not "unlike the baseline" (``ZeekML::Anomalous_Flow``).
KNOWN_BAD_NOTES = frozenset({"ZeekML::Intrusion", "ZeekML::Botnet_Activity"})


def verdict_ids(models: Iterable[str], uids: Iterable[str], ts: Iterable[float]) -> list[str]:
    """Stable id of each model's verdict on each conn, so sinks and Zeek can drop duplicates:
    ``V`` and 16 hex digits of the sha1 of ``model|uid|ts`` (ts to the microsecond)."""
    sha1 = hashlib.sha1
    return ["V" + sha1(f"{m}|{u}|{t:.6f}".encode()).hexdigest()[:16]
            for m, u, t in zip(models, uids, ts)]


_CONN_VALUES = ("ts", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service",
                "duration", "orig_bytes", "resp_bytes", "conn_state", "local_orig", "local_resp",
                "missed_bytes", "history", "orig_pkts", "orig_ip_bytes", "resp_pkts",
                "resp_ip_bytes", "ip_proto")


def uid_stand_ins(table: pa.Table, uids: list[str | None]) -> list[str | None]:
    """Per row, ``None`` where ``uids`` has a uid, else a stand-in uid for a conn without one:
    ``nouid-`` and 16 hex digits of the sha1 of the row's conn values.

    It depends on the conn alone, never on its place in a table, so a conn gets the same
    stand-in (hence the same verdict id) from ``score`` on the whole log and from ``watch`` in
    any window, after any restart. (A row number, the stand-in before, repeated in every window
    of ``watch``: distinct conns with equal ``ts`` collided and were dropped as duplicates.) Two
    conns equal in every value are one conn to it.
    """
    rows = [i for i, u in enumerate(uids) if not u]
    out: list[str | None] = [None] * len(uids)
    if not rows:
        return out
    sha1 = hashlib.sha1
    # the conn's own values only (never columns a scoring path may add); repr keeps types apart
    # ("1" vs 1, None vs "None")
    cols = [c for c in _CONN_VALUES if c in table.column_names]
    picked = table.select(cols).take(pa.array(rows, pa.int64())).to_pylist()
    for i, rec in zip(rows, picked):
        key = repr([rec[c] for c in cols])
        out[i] = "nouid-" + sha1(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return out


def conn_community_ids(table: pa.Table) -> pa.Array:
    """Per conn, its Community ID v1: the one Zeek or Suricata logged where the table has a
    ``community_id`` column holding one, else computed from the 5-tuple
    (``flows.community_id.community_id_column``: they agree wherever both exist); null where
    neither exists (no address, no ports for TCP/UDP/ICMP, a protocol Zeek did not know)."""
    computed = community_id_column(table)
    if "community_id" not in table.column_names:
        return computed
    logged = pc.cast(table.column("community_id"), pa.string()).combine_chunks()
    return pc.coalesce(pc.if_else(pc.equal(logged, ""), pa.scalar(None, pa.string()), logged),
                       computed)


def verdict_id(model: str, uid: str, ts: float) -> str:
    """``verdict_ids`` of one verdict."""
    return verdict_ids((model,), (uid,), (ts,))[0]


@dataclass
class Verdict:
    """A scored conn.

    ``score`` is the combined calibrated score (1.0 = at the alert threshold), ``scores`` the raw
    per-detector scores, ``sub`` the top contributing features as ``name=value`` text,
    ``community_id`` the conn's Community ID v1 (None when its 5-tuple has none),
    ``suricata_alerts`` the Suricata alerts on the conn (``scoring.evidence``; evidence beside
    the score, never part of it).
    """

    ts: float
    uid: str
    orig_h: str | None
    orig_p: int | None
    resp_h: str | None
    resp_p: int | None
    proto: str | None
    score: float
    alert: bool
    model: str
    note: str = "ZeekML::Anomalous_Flow"
    msg: str = ""
    sub: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    verdict_id: str = ""
    community_id: str | None = None
    suricata_alerts: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.verdict_id:
            self.verdict_id = verdict_id(self.model, self.uid, self.ts)
        if self.community_id is None and self.orig_h and self.resp_h and self.proto:
            # a verdict made by hand names its conn's flow as one from a VerdictBatch does
            try:
                self.community_id = community_id_v1(self.orig_h, self.resp_h, self.proto,
                                                    self.orig_p, self.resp_p)
            except ValueError:
                pass

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VerdictBatch:
    """The verdicts of one scored table, column by column: row ``i`` is ``verdict(i)``.

    Scoring makes this instead of one ``Verdict`` per conn, so that sinks can render thousands of
    verdicts without building an object each (``zeekml.sinks.verdicts.render_verdicts``); the
    few alerting rows are turned into ``Verdict``s for the notice log and the Zeek feedback file.

    Args:
        table: the scored conns (``ts``, ``uid``, ``id.*``, ``proto`` are read).
        names: detector names, in the ensemble's order.
        notes: each detector's ``note``, in the same order.
        scores: detector name -> calibrated scores (1.0 = that detector's threshold).
        score: the combined score per conn.
        top: per conn, the index into ``names`` of the detector with the top score.
        alert: per conn, whether ``score >= 1.0``.
        msg: alerting row -> the notice's ``msg``.
        sub: alerting row -> the top contributing features (``name=value`` text).
        suricata_alerts: row -> the Suricata alerts joined onto that conn
            (``zeekml.scoring.evidence.SuricataAlerts.join``); rows without any are absent.
    """

    table: pa.Table
    names: list[str]
    notes: list[str]
    scores: dict[str, np.ndarray]
    score: np.ndarray
    top: np.ndarray
    alert: np.ndarray
    msg: dict[int, str] = field(default_factory=dict)
    sub: dict[int, str] = field(default_factory=dict)
    suricata_alerts: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    _cols: dict[str, list] | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return self.table.num_rows

    def column(self, name: str) -> list:
        """One of the conn columns a verdict carries as Python values, with ``Verdict``'s
        stand-ins: an unset ``ts`` is 0.0, an unset or empty ``uid`` is ``uid_stand_ins``'s;
        ``community_id`` is ``conn_community_ids``'s."""
        if self._cols is None:
            self._cols = {}
        got = self._cols.get(name)
        if got is None:
            if name == "community_id":
                got = conn_community_ids(self.table).to_pylist()
            else:
                got = self.table.column(name).to_pylist()
            if name == "ts":
                got = [0.0 if t is None else t for t in got]
            elif name == "uid" and not all(got):
                got = [u or s for u, s in zip(got, uid_stand_ins(self.table, got))]
            self._cols[name] = got
        return got

    def models(self) -> list[str]:
        """Per conn, the name of its top detector (the verdict's ``model``)."""
        names = self.names
        return [names[t] for t in self.top.tolist()]

    def alert_notes(self) -> Counter:
        """The alerting conns per note (their top detector's), in order of the detectors."""
        alert = np.asarray(self.alert, dtype=bool)
        per = np.bincount(np.asarray(self.top)[alert], minlength=len(self.notes))
        out: Counter = Counter()
        for note, k in zip(self.notes, per.tolist()):
            if k:
                out[note] += k
        return out

    def ids(self) -> list[str]:
        """Per conn, its ``verdict_id``."""
        return verdict_ids(self.models(), self.column("uid"), self.column("ts"))

    def verdict(self, i: int) -> Verdict:
        """Row ``i`` as a ``Verdict``."""
        d = int(self.top[i])
        return Verdict(
            ts=self.column("ts")[i], uid=self.column("uid")[i],
            orig_h=self.column("id.orig_h")[i], orig_p=self.column("id.orig_p")[i],
            resp_h=self.column("id.resp_h")[i], resp_p=self.column("id.resp_p")[i],
            proto=self.column("proto")[i], score=float(self.score[i]), alert=bool(self.alert[i]),
            model=self.names[d], note=self.notes[d], msg=self.msg.get(i, ""),
            sub=self.sub.get(i, ""), scores={n: float(self.scores[n][i]) for n in self.names},
            community_id=self.column("community_id")[i],
            suricata_alerts=list(self.suricata_alerts.get(i, ())))

    def verdicts(self) -> list[Verdict]:
        """Every row as a ``Verdict``, in order."""
        return [self.verdict(i) for i in range(len(self))]

    def alerts(self) -> list[tuple[int, Verdict]]:
        """The alerting rows: ``(row, Verdict)`` in order."""
        return [(i, self.verdict(i)) for i in np.flatnonzero(self.alert).tolist()]
