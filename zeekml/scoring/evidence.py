"""Evidence beside a score: Suricata alerts joined onto the conns they fired on.

The eve.json parser turns ``alert`` events into their own table (``suricata_alert``, see
``zeekml.parse.suricata_eve``). ``SuricataAlerts`` collects those batches while the input is read
and joins them onto scored conns:

1. by Suricata's ``flow_id``: a conn from an eve ``flow`` event has ``flow_uid(flow_id)`` as its
   uid, so an alert with the same ``flow_id`` is that conn's, whatever its time;
2. else by Community ID v1 (the one the alert carries, or computed from its 5-tuple), which joins
   Suricata's alerts onto Zeek's conns of the same traffic. A Community ID names a 5-tuple, not a
   flow (a reused source port, every ping between two hosts), so the alert goes to the conn of
   that id that started last at most ``clock_skew`` seconds after the alert, and only while that
   conn lasted (its ``duration``, plus ``linger`` seconds for conns Zeek ends late or logs with no
   duration).

An alert joins one conn at most. A joined alert is evidence shown beside the verdict: it never
changes a zeekml score or alert.
"""
from __future__ import annotations

import logging
from bisect import bisect_right
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from zeekml.flows.community_id import community_id_column
from zeekml.parse.batch import LogBatch
from zeekml.parse.suricata_eve import flow_uid

if TYPE_CHECKING:
    from zeekml.scoring.verdict import VerdictBatch

log = logging.getLogger(__name__)

ALERT_PATH = "suricata_alert"
# what a joined alert says, in this order (verdicts.jsonl's suricata_alerts, docs/triage.md)
ALERT_KEYS = ("signature_id", "signature", "severity", "category")


def _text(col: pa.ChunkedArray) -> list[str | None]:
    """A binary column of the parser as text (invalid UTF-8 replaced, as the conn table does)."""
    return [None if v is None else v.decode("utf-8", "replace") for v in col.to_pylist()]


class SuricataAlerts:
    """The Suricata alerts of an input, to join onto its conns.

    Args:
        clock_skew: seconds an alert may carry a time before its conn's start (two sensors'
            clocks; Suricata stamps an alert with its packet's time) (default 1.0).
        linger: seconds after a conn's ``ts + duration`` an alert still joins it by Community
            ID (default 60.0).
        state: what ``state()`` returned (``zeekml watch`` keeps the alerts not joined yet in
            its checkpoint); default none.
    """

    def __init__(self, clock_skew: float = 1.0, linger: float = 60.0,
                 state: list[dict[str, Any]] | None = None):
        self.clock_skew = clock_skew
        self.linger = linger
        self._batches: list[pa.RecordBatch] = []
        self._rows: list[dict[str, Any]] = [dict(r) for r in state or ()]
        self.expired = 0

    def add(self, batch: LogBatch) -> bool:
        """Keep ``batch`` if it holds Suricata alerts; whether it did."""
        if batch.log_path != ALERT_PATH:
            return False
        self._batches.append(batch.batch)
        return True

    def extend(self, batches: Iterable[pa.RecordBatch]) -> None:
        """Keep record batches of the parser's ``suricata_alert`` table (``--dask``: each
        task's, gathered)."""
        self._batches.extend(batches)

    def __len__(self) -> int:
        return len(self._rows) + sum(b.num_rows for b in self._batches)

    def rows(self) -> list[dict[str, Any]]:
        """Every alert: ``ALERT_KEYS`` plus ``ts``, ``uid`` (``flow_uid`` of its flow_id) and
        ``community_id`` (logged, else computed), ordered by ts (input order among equals)."""
        if not self._batches:
            return self._rows
        t = pa.Table.from_batches(self._batches)
        self._batches = []
        logged = _text(t.column("community_id"))
        computed = community_id_column(t).to_pylist()
        flow_ids = t.column("flow_id").to_pylist()
        sig, cat = _text(t.column("signature")), _text(t.column("category"))
        rows = self._rows
        for i, (ts, sid, sev) in enumerate(zip(t.column("ts").to_pylist(),
                                               t.column("signature_id").to_pylist(),
                                               t.column("severity").to_pylist())):
            rows.append({
                "ts": ts, "uid": flow_uid(flow_ids[i]) if flow_ids[i] is not None else None,
                "community_id": logged[i] or computed[i],
                "signature_id": sid, "signature": sig[i], "severity": sev, "category": cat[i]})
        rows.sort(key=lambda r: r["ts"] if r["ts"] is not None else float("inf"))
        return rows

    def state(self) -> list[dict[str, Any]]:
        """The alerts kept, JSON-ready (``state=`` of a new one restores them)."""
        return [dict(r) for r in self.rows()]

    def expire(self, before: float, limit: int | None = None) -> int:
        """Drop the alerts stamped before ``before`` (log time): their flows are not coming
        any more; and the oldest beyond ``limit`` alerts, so memory stays bounded. Returns how
        many; ``expired`` counts them all."""
        rows = self.rows()
        keep = [r for r in rows if r["ts"] is not None and r["ts"] >= before]
        if limit is not None and len(keep) > limit:
            keep = keep[len(keep) - limit:]
        gone = len(rows) - len(keep)
        self._rows = keep
        self.expired += gone
        return gone

    def join(self, conns: pa.Table, community_ids: Iterable[str | None] | None = None,
             consume: bool = False) -> dict[int, list[dict[str, Any]]]:
        """The alerts of each conn of ``conns`` (a conn table: ``uid``, ``ts``, ``duration``
        and the 5-tuple): row -> alerts (``ALERT_KEYS``, in time order); rows without alerts
        are absent.

        Args:
            conns: the scored conns.
            community_ids: the conns' Community IDs when the caller has them already
                (``VerdictBatch.column("community_id")``); computed otherwise.
            consume: forget the alerts joined (``zeekml watch``: each conn is scored once, and
                an alert waits for its flow, which Suricata logs when the flow ends).
        """
        alerts = self.rows()
        if not alerts or conns.num_rows == 0:
            return {}
        uids = conns.column("uid").to_pylist()
        ts = pc.fill_null(pc.cast(conns.column("ts"), pa.float64()), np.nan) \
            .to_numpy(zero_copy_only=False)
        dur = (pc.fill_null(pc.cast(conns.column("duration"), pa.float64()), 0.0)
               .to_numpy(zero_copy_only=False) if "duration" in conns.column_names
               else np.zeros(conns.num_rows))
        by_uid: dict[str, list[int]] = {}
        for r, u in enumerate(uids):
            if u and u.startswith("S"):          # flow_uid's form; Zeek's uids start with C
                by_uid.setdefault(u, []).append(r)
        cids = list(community_ids) if community_ids is not None else \
            community_id_column(conns).to_pylist()
        by_cid: dict[str, list[int]] = {}
        for r in np.argsort(ts, kind="stable").tolist():
            if cids[r] is not None and ts[r] == ts[r]:
                by_cid.setdefault(cids[r], []).append(r)
        starts = {k: [float(ts[r]) for r in rows] for k, rows in by_cid.items()}
        out: dict[int, list[dict[str, Any]]] = {}
        left = []
        for a in alerts:
            row = self._by_flow(a, by_uid, ts)
            if row is None:
                row = self._by_community_id(a, by_cid, starts, ts, dur)
            if row is None:
                left.append(a)
                continue
            out.setdefault(row, []).append({k: a[k] for k in ALERT_KEYS})
        if consume:
            self._rows = left
        log.debug("suricata alerts: %d of %d joined onto %d of %d conns",
                  len(alerts) - len(left), len(alerts), len(out), conns.num_rows)
        return out

    def _by_flow(self, a: dict, by_uid: dict[str, list[int]], ts: np.ndarray) -> int | None:
        rows = by_uid.get(a["uid"]) if a["uid"] else None
        if not rows:
            return None
        if len(rows) == 1 or a["ts"] is None:
            return rows[0]
        # the same flow_id twice (a Suricata restart reuses ids): the flow started last before it
        before = [r for r in rows if ts[r] <= a["ts"] + self.clock_skew]
        return max(before, key=lambda r: ts[r]) if before else rows[0]

    def _by_community_id(self, a: dict, by_cid: dict[str, list[int]],
                         starts: dict[str, list[float]], ts: np.ndarray,
                         dur: np.ndarray) -> int | None:
        cid, at = a["community_id"], a["ts"]
        if cid is None or at is None or cid not in by_cid:
            return None
        i = bisect_right(starts[cid], at + self.clock_skew) - 1
        if i < 0:
            return None
        r = by_cid[cid][i]
        return r if at <= ts[r] + dur[r] + self.linger else None


def incident_signatures(alerts: Iterable[dict[str, Any]], limit: int = 20) -> list[dict[str, Any]]:
    """The signatures of a group of joined alerts: ``ALERT_KEYS`` and ``alerts`` (how many),
    most alerts first (then by signature id), at most ``limit``."""
    counts: dict[tuple, int] = {}
    for a in alerts:
        key = tuple(a.get(k) for k in ALERT_KEYS)
        counts[key] = counts.get(key, 0) + 1
    order = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0][0] if kv[0][0] is not None
                                                   else -1, str(kv[0][1])))
    return [{**dict(zip(ALERT_KEYS, k)), "alerts": n} for k, n in order[:limit]]


SURICATA_KEY = "suricata_pending"    # watch's checkpoint stats: alerts waiting for their flow
# How long (log time: the newest conn ts read) an alert waits in watch for its flow: a day, longer
# than Suricata's flow timeouts and than most conns Zeek logs (a flow's log time moves on with
# the other flows' while it lasts; Slips' eve.json has alerts a day before their flow event).
LIVE_HOLD = 86400.0
# Alerts waiting at most, the oldest dropped first: they are kept in every window's checkpoint.
LIVE_LIMIT = 20_000


def live_suricata_join(alerts: SuricataAlerts, conns: pa.Table | None, log_time: float | None,
                       hold: float = LIVE_HOLD, limit: int = LIVE_LIMIT
                       ) -> tuple[dict[int, list[dict[str, Any]]], list[dict[str, Any]]]:
    """``zeekml watch``'s join, once per window: the alerts waiting are joined onto the
    window's scored ``conns`` and forgotten; those stamped ``hold`` seconds before
    ``log_time`` (the newest ts read) are dropped, as are the oldest beyond ``limit``. Returns
    row -> alerts and the alerts still waiting (``SuricataAlerts.state``), which the window's
    checkpoint keeps so that a restart neither loses nor repeats one.

    Suricata writes a flow's ``flow`` event when the flow ends, after its alerts, so an alert
    waits for its flow across windows; an alert onto a Zeek conn by Community ID waits for Zeek
    to log the conn, also when it ends.
    """
    joined: dict[int, list[dict[str, Any]]] = {}
    if len(alerts) and conns is not None and conns.num_rows:
        joined = alerts.join(conns, consume=True)
    if len(alerts) and log_time is not None:
        gone = alerts.expire(log_time - hold, limit)
        if gone:
            log.info("%d Suricata alerts dropped: no flow of theirs within %.0f s of log time "
                     "(%d waiting)", gone, hold, len(alerts))
    return joined, alerts.state() if len(alerts) else []


def attach_suricata_alerts(batch: "VerdictBatch", alerts: SuricataAlerts | None) -> int:
    """Join ``alerts`` onto the conns of a scored ``batch`` (its ``suricata_alerts``, rendered
    into verdicts.jsonl and grouped into incidents); the number of conns with alerts. The
    scores and alerts of ``batch`` stay as they are."""
    if alerts is None or not len(alerts):
        return 0
    batch.suricata_alerts = alerts.join(batch.table, batch.column("community_id"))
    return len(batch.suricata_alerts)
