"""What score and watch both say about an incident's alerting conns (``alert_evidence``), and
watch's incidents: described like score's (volume statements), ranked within each commit,
restored from the checkpoint state with their evidence."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from zeekml.pipeline.live.incidents import LiveIncidents
from zeekml.scoring.explain import BaselineProfile
from zeekml.scoring.incidents import alert_evidence, build_incidents, host_baseline_bytes, verdict_table
from zeekml.scoring.verdict import Verdict


def _conns(n: int, t0: float, orig: str, resp: str, port: int, resp_bytes: float,
           service: str | None = "http") -> dict:
    return {"ts": [t0 + 10.0 * i for i in range(n)], "uid": [f"C{orig[-1]}{int(t0)}{i}" for i in range(n)],
            "id.orig_h": [orig] * n, "id.orig_p": [40000 + i for i in range(n)],
            "id.resp_h": [resp] * n, "id.resp_p": [port] * n, "proto": ["tcp"] * n,
            "service": [service] * n, "duration": [1.0] * n, "orig_bytes": [300.0] * n,
            "resp_bytes": [resp_bytes] * n, "orig_pkts": [5] * n, "resp_pkts": [5] * n,
            "orig_ip_bytes": [500] * n, "resp_ip_bytes": [resp_bytes + 200] * n,
            "conn_state": ["SF"] * n}


def _table(*parts: dict) -> pa.Table:
    cols = {k: sum((p[k] for p in parts), []) for k in parts[0]}
    return pa.table(cols)


BASE = _table(_conns(40, 0.0, "10.0.0.5", "1.2.3.4", 80, 1000.0),
              _conns(40, 0.0, "10.0.0.6", "1.2.3.9", 80, 800.0))
# later: 10.0.0.5 pulls 200 kB per conn from one server (12 conns), 10.0.0.6 one odd conn
LIVE = _table(_conns(12, 10_000.0, "10.0.0.5", "5.6.7.8", 443, 200_000.0, "ssl"),
              _conns(1, 10_050.0, "10.0.0.6", "9.9.9.9", 8080, 50.0, None))


def _verdicts(table: pa.Table, scores: list[float]) -> list[Verdict]:
    d = table.to_pydict()
    return [Verdict(ts=d["ts"][i], uid=d["uid"][i], orig_h=d["id.orig_h"][i],
                    orig_p=d["id.orig_p"][i], resp_h=d["id.resp_h"][i], resp_p=d["id.resp_p"][i],
                    proto=d["proto"][i], score=s, alert=True, model="iforest",
                    sub=f"why {i}") for i, s in enumerate(scores)]


def test_alert_evidence_per_row():
    prof = BaselineProfile().fit(BASE)
    rows = np.array([0, 12])
    ev = alert_evidence(LIVE, rows, prof)
    assert ev["service"] == ["ssl", None]
    assert ev["resp_bytes"] == [200_000.0, 50.0]
    assert all(c and c.startswith("1:") for c in ev["community_id"])
    assert ev["explanation"] == prof.explain(LIVE, rows)
    assert alert_evidence(LIVE, rows)["explanation"] == [None, None]


def test_live_incidents_describe_like_score_and_rank_each_commit():
    scores = [1.5] * 12 + [3.0]
    live = LiveIncidents(lateness=0.0)
    live.set_baseline(BASE)
    live.add(_verdicts(LIVE, scores), log_time=10_200.0, conns=LIVE, rows=range(13))
    closed, still = live.update(flush=True)
    assert still == [] and live.alerts == []
    # the same alerts as score hands them to build_incidents (all rows alert, with evidence)
    prof = BaselineProfile().fit(BASE)
    ev = alert_evidence(LIVE, np.arange(13), prof)
    recs = [dict(r, score=s, alert=True, model="iforest", detector_explanation=f"why {i}",
                 **{k: ev[k][i] for k in ev})
            for i, (r, s) in enumerate(zip(LIVE.select(["ts", "uid", "id.orig_h", "id.resp_h",
                                                        "id.resp_p", "proto"]).to_pylist(),
                                           scores))]
    want = build_incidents(verdict_table(recs), baseline_bytes=host_baseline_bytes(BASE))
    assert [i.description for i in closed] == [i.description for i in want]
    exfil = next(i for i in closed if i.host == "10.0.0.5")
    assert exfil.description.startswith("received 200x its baseline bytes per conn from 5.6.7.8")
    assert exfil.top_conns[0]["explanation"] and exfil.top_conns[0]["detector_explanation"]
    # ranked highest first: a burst of twelve at 1.5 (3.1) over one conn at 3.0
    assert [i.score for i in closed] == sorted((i.score for i in closed), reverse=True)
    assert closed[0].host == "10.0.0.5"


def test_live_incident_evidence_survives_the_checkpoint():
    live = LiveIncidents(lateness=0.0)
    live.set_baseline(BASE)
    live.add(_verdicts(LIVE, [1.5] * 13), log_time=10_130.0, conns=LIVE, rows=range(13))
    _, still = live.update()
    assert still
    state = json.loads(json.dumps(live.state()))        # as the checkpoint keeps it
    again = LiveIncidents(lateness=0.0, state=state)
    again.set_baseline(BASE)
    closed, _ = again.update(flush=True)
    first, _ = live.update(flush=True)
    assert [i.to_dict() for i in closed] == [i.to_dict() for i in first]


def test_score_makes_evidence_for_the_conns_its_incidents_show_only():
    """``incidents_from_batch`` asks for explanations, Community IDs and verdict ids of the
    incidents' top conns alone (an infected archive alerts on most conns, and each explanation
    is Python per conn); the incidents are those made with the evidence of every alert."""
    from zeekml.scoring import incidents as inc_mod
    from zeekml.scoring.incidents import IncidentOptions, incidents_from_batch
    from zeekml.scoring.verdict import VerdictBatch, verdict_id

    n = LIVE.num_rows
    score = np.linspace(1.0, 3.0, n)[::-1].copy()          # the earliest of 10.0.0.5's score highest
    batch = VerdictBatch(LIVE, ["iforest"], ["ZeekML::Anomaly"], {"iforest": score}, score,
                         np.zeros(n, dtype=np.int64), np.ones(n, dtype=bool),
                         sub={i: f"why {i}" for i in range(n)})
    prof = BaselineProfile().fit(BASE)
    asked = []
    inner = inc_mod.alert_evidence

    def spy(table, rows, profile=None):
        asked.append(np.asarray(rows).tolist())
        return inner(table, rows, profile)

    opt = IncidentOptions(top_conns=3)
    inc_mod.alert_evidence = spy
    try:
        got = [i.to_dict() for i in incidents_from_batch(batch, BASE, opt, profile=prof)]
    finally:
        inc_mod.alert_evidence = inner
    assert asked == [[0, 1, 2, 12]]           # 10.0.0.5's top 3 of 12, 10.0.0.6's one conn
    # the incidents with every alert's evidence in the table, as they were made before
    rows = np.arange(n)
    ev = alert_evidence(LIVE, rows, prof)
    full = LIVE.select(["ts", "uid", "id.orig_h", "id.resp_h", "id.resp_p", "proto", "service",
                        "orig_bytes", "resp_bytes"]).append_column("score", pa.array(score))
    full = full.append_column("alert", pa.array([True] * n)).append_column("model", pa.array(["iforest"] * n))
    for name, values in (("verdict_id", [verdict_id("iforest", u, t) for u, t in
                                         zip(LIVE.column("uid").to_pylist(), LIVE.column("ts").to_pylist())]),
                         ("community_id", ev["community_id"]), ("explanation", ev["explanation"]),
                         ("detector_explanation", [f"why {i}" for i in range(n)])):
        full = full.append_column(name, pa.array(values, pa.string()))
    want = [i.to_dict() for i in build_incidents(full, opt, baseline_bytes=host_baseline_bytes(BASE))]
    assert got == want
    assert [len(i["top_conns"]) for i in got] == [3, 1]
    assert all(c["explanation"] and c["community_id"] and c["verdict_id"]
               for i in got for c in i["top_conns"])
