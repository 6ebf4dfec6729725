"""Incidents in ``zeekml watch``: grown from each window's alerts, closed by log time.

The alerts of the incidents still open are kept (in memory and in the checkpoint's ``stats``,
committed with the outputs, so a restart neither loses nor repeats them), each with what ``zeekml
score`` knows of an alerting conn (``scoring.incidents.alert_evidence``: service, bytes, Community
ID, the explanation against the baseline of its kind) and the detector's own reason (the verdict's
``sub``). After each window the open alerts are grouped and described as ``score`` does
(``scoring.incidents.build_incidents`` with the baseline's per-host bytes, so volume statements and
periodicity read the same); the baseline is the live calibration's (``set_baseline``). An incident
is closed once the log time has passed its last alert by the time that could still extend it
(``horizon``), less ``lateness`` for conns Zeek writes late, or once it holds ``max_alerts``
alerts: a host that alerts without pause (a scan, a flood, an infected host under a known-bad
classifier) would otherwise keep one incident open for as long as it runs, its every alert held,
grouped again after each window and written to each checkpoint; its later alerts start a new
incident. A commit's closed incidents are appended to ``incidents.jsonl`` once, ranked highest
first, and their alerts dropped; ``incidents-open.jsonl`` is rewritten whole after each window with
the open ones as they grow. ``--once`` closes every open incident at its end.

What still differs from ``score``: only alerting conns are kept, so an incident's ``conns`` counts
its alerts' conns; an incident ends at ``max_alerts`` alerts; and ``incidents.jsonl`` is ranked
within each commit (a later commit's incident may outrank an earlier one: ``zeekml report`` ranks
them all).
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pyarrow as pa

from zeekml.scoring.explain import BaselineProfile
from zeekml.scoring.incidents import (Incident, IncidentOptions, alert_evidence, build_incidents,
                                      host_baseline_bytes, verdict_table)
from zeekml.scoring.verdict import Verdict

OPEN_INCIDENTS = "incidents-open.jsonl"
STATE_KEY = "incidents"
# what each kept alert carries besides its verdict (scoring.incidents.alert_evidence)
EVIDENCE = ("service", "orig_bytes", "resp_bytes", "community_id", "explanation")


def _record(v: Verdict) -> dict:
    rec = {"ts": v.ts, "uid": v.uid, "id.orig_h": v.orig_h, "id.resp_h": v.resp_h,
           "id.resp_p": v.resp_p, "proto": v.proto, "score": v.score, "alert": True,
           "model": v.model, "note": v.note, "verdict_id": v.verdict_id}
    if v.suricata_alerts:       # the incident counts them (scoring.evidence)
        rec["suricata_alerts"] = v.suricata_alerts
    if v.sub:                   # the detector's reason, as score's incidents carry it
        rec["detector_explanation"] = v.sub
    return rec


class LiveIncidents:
    """The open incidents of a watch: their alerts, and the log time seen.

    Args:
        options: grouping (default ``IncidentOptions()``, as ``score``).
        lateness: seconds behind the newest ``ts`` a conn may still arrive (default 300).
        state: what ``state()`` returned, from the last checkpoint (default: none open).
        max_alerts: an open incident with this many alerts is closed (default 10,000: the
            open alerts are held and checkpointed, ~0.3 kB each).
    """

    def __init__(self, options: IncidentOptions | None = None, lateness: float = 300.0,
                 state: dict | None = None, max_alerts: int = 10_000):
        if max_alerts < 1:
            raise ValueError("max_alerts must be at least 1")
        self.max_alerts = max_alerts
        self.options = options or IncidentOptions()
        self.profile: BaselineProfile | None = None
        self.baseline_bytes: dict[str, tuple[float, float]] | None = None
        self.lateness = lateness
        state = state or {}
        self.alerts: list[dict] = list(state.get("open", []))
        t = state.get("log_time")
        self.log_time = float(t) if isinstance(t, (int, float)) else -math.inf
        self.closed = int(state.get("closed", 0))
        # the incidents of ``alerts`` as last built: they depend on the alerts alone (and the
        # options and baseline, fixed by then), so windows that add none reuse them instead of
        # grouping and describing every open alert again (1.2 of the watcher's ~8 CPU s on
        # bench/watch.py's dense probe, a few alerts open for an hour of log time)
        self._built: list[Incident] | None = None
        # the rate the watch's alerts are raised at (``calibrate.fpr_text``), set once it is
        # calibrated: each incident's notice states it
        self.alert_rate = ""

    def state(self) -> dict:
        """The JSON-ready state kept in the checkpoint."""
        return {"open": list(self.alerts), "closed": self.closed,
                "log_time": self.log_time if math.isfinite(self.log_time) else None}

    def set_baseline(self, baseline: pa.Table) -> None:
        """Describe against ``baseline`` (the calibration's conns), as ``score`` does against
        its baseline: explanations by kind of conn and volume statements per host. Computed
        again at each start from the same baseline, so nothing of it is checkpointed."""
        if baseline.num_rows == 0:
            return
        self.profile = BaselineProfile().fit(baseline)
        self.baseline_bytes = host_baseline_bytes(baseline)
        self._built = None

    def add(self, alerts: Iterable[Verdict], log_time: float | None,
            conns: pa.Table | None = None, rows: Iterable[int] | None = None) -> None:
        """Take a window's (new, not suppressed) alerts and the newest ``ts`` it read; with the
        scored ``conns`` and each alert's row in it (``rows``), the alerts carry the evidence
        ``score`` gives its incidents (``alert_evidence``)."""
        recs = [_record(v) for v in alerts]
        if conns is not None and rows is not None and recs:
            ev = alert_evidence(conns, np.fromiter(rows, dtype=np.int64, count=len(recs)),
                                self.profile)
            for k, rec in enumerate(recs):
                for name in EVIDENCE:
                    if ev[name][k] is not None:
                        rec[name] = ev[name][k]
        if recs:
            self.alerts.extend(recs)
            self._built = None
        if log_time is not None and math.isfinite(log_time):
            self.log_time = max(self.log_time, log_time)

    def horizon(self, inc: Incident) -> float:
        """How long after its last alert an incident may still grow: ``gap``, or ``slow_gap``
        while it is small enough to be merged with later sporadic alerts or a slow fan-in."""
        if inc.alerts <= self.options.small_alerts:
            return max(self.options.gap, self.options.slow_gap)
        return self.options.gap

    def update(self, flush: bool = False) -> tuple[list[Incident], list[Incident]]:
        """Close what the log time has passed and what holds ``max_alerts`` alerts (everything
        with ``flush``): returns
        ``(closed, still_open)``, both ranked highest first, and drops the closed incidents'
        alerts. Without new alerts since the last call, its incidents (the same objects) are
        returned again."""
        if not self.alerts:
            return [], []
        if self._built is None:
            self._built = build_incidents(verdict_table(self.alerts), self.options,
                                          baseline_bytes=self.baseline_bytes)
            for inc in self._built:
                inc.alert_rate = self.alert_rate
        incs = self._built
        now = self.log_time - self.lateness
        shut = [flush or i.last_ts + self.horizon(i) < now or i.alerts >= self.max_alerts
                for i in incs]
        # ranked highest first, as score ranks (build_incidents' order, made explicit here
        # because incidents.jsonl is written in this order)
        closed = sorted((i for i, c in zip(incs, shut) if c),
                        key=lambda i: (-i.score, i.first_ts, i.incident_id))
        still = [i for i, c in zip(incs, shut) if not c]
        if closed:
            ts = np.array([a["ts"] if a["ts"] is not None else math.nan for a in self.alerts])
            drop = np.zeros(len(self.alerts), dtype=bool)
            for inc in closed:
                side = "id.orig_h" if inc.role == "orig" else "id.resp_h"
                host = np.array([a[side] == inc.host for a in self.alerts])
                drop |= host & (ts >= inc.first_ts) & (ts <= inc.last_ts)
            self.alerts = [a for a, d in zip(self.alerts, drop) if not d]
            self.closed += len(closed)
            self._built = None
        if flush:
            # everything closes: alerts no incident holds (neither address set) go too
            self.alerts = []
            self._built = None
        return closed, still
