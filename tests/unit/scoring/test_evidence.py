"""``scoring.evidence``: Suricata alerts joined onto conns by flow_id and by Community ID, on
Slips' real eve.json (flows and ET alerts of one day) and on hand-built conns; incidents count
their signatures."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from zeekml.flows.community_id import community_id_v1
from zeekml.flows.table import CONN_SCHEMA, conn_table, is_conn_batch
from zeekml.parse import Quarantine, read_log
from zeekml.parse.batch import LogBatch
from zeekml.parse.suricata_eve import ALERT_FIELDS, _schema, flow_uid
from zeekml.scoring.evidence import (ALERT_KEYS, SuricataAlerts, attach_suricata_alerts,
                                     incident_signatures)
from zeekml.scoring.incidents import incidents_from_batch, verdict_table, build_incidents
from zeekml.scoring.verdict import VerdictBatch
from zeekml.sinks.verdicts import render_verdicts

EVE = os.path.join(os.path.dirname(__file__), "..", "..", "data", "real", "slips-dataset",
                   "dataset", "test6-malicious.suricata.json.gz")


@pytest.fixture(scope="module")
def slips():
    q = Quarantine()
    alerts, conns = SuricataAlerts(), []
    for b in read_log(EVE, q):
        if is_conn_batch(b):
            conns.append(b)
        else:
            alerts.add(b)
    assert q.count == 0
    return conn_table(conns), alerts


def test_flow_id_join_on_real_eve(slips):
    conns, alerts = slips
    assert conns.num_rows == 3512 and len(alerts) == 745
    joined = alerts.join(conns)
    uids = conns.column("uid").to_pylist()
    flows = set(uids)
    # every alert whose flow is in the file joins that flow, and only those (the other 322
    # alerts' flows ended after the capture Slips kept)
    with_flow = [a for a in alerts.rows() if a["uid"] in flows]
    assert len(with_flow) == 423
    assert sum(map(len, joined.values())) == 423 and len(joined) == 366
    want: dict[str, list] = {}
    for a in with_flow:
        want.setdefault(a["uid"], []).append({k: a[k] for k in ALERT_KEYS})
    assert {uids[r]: v for r, v in joined.items()} == want
    first = joined[min(joined)][0]
    assert list(first) == list(ALERT_KEYS) and first["signature"].startswith("ET ")


def test_community_id_join_agrees_with_flow_id_on_real_eve(slips):
    """Without Suricata's uids (Zeek conns of the same traffic have their own), the alerts
    join by Community ID: onto the same flows wherever they join, and only 10 of 423 do not
    (alerts Suricata stamped hours before their flow started, which the time check refuses)."""
    conns, alerts = slips
    by_flow = alerts.join(conns)
    zeekish = conns.set_column(conns.column_names.index("uid"), "uid",
                               pa.array([f"C{i}" for i in range(conns.num_rows)], pa.string()))
    by_cid = alerts.join(zeekish)
    assert sum(map(len, by_cid.values())) == 413
    assert all(by_flow[r] == v for r, v in by_cid.items())


def _alerts(rows: list[dict]) -> SuricataAlerts:
    schema = _schema(ALERT_FIELDS)
    full = [{f.name: r.get(f.name) for f in schema} for r in rows]
    s = SuricataAlerts()
    assert s.add(LogBatch("suricata_alert", pa.RecordBatch.from_pylist(full, schema=schema),
                          dict(ALERT_FIELDS), "eve.json", 1, 0))
    assert not s.add(LogBatch("conn", pa.RecordBatch.from_pylist([]), {}, "x", 1, 0))
    return s


def _alert(ts, src, sp, dst, dp, proto="tcp", sid=1, **kw) -> dict:
    return {"ts": ts, "id.orig_h": src, "id.orig_p": sp, "id.resp_h": dst, "id.resp_p": dp,
            "proto": proto, "signature_id": sid, "signature": f"sig {sid}".encode(),
            "category": b"Misc", "severity": 2, **kw}


def _conns(rows: list[tuple]) -> pa.Table:
    names = ("ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "duration")
    cols = list(zip(*rows))
    return pa.table({f.name: pa.array(list(cols[names.index(f.name)]) if f.name in names
                                      else [None] * len(rows), f.type) for f in CONN_SCHEMA})


def test_community_id_join_on_zeek_conns_by_time():
    conns = _conns([
        (100.0, "Ca", "10.0.0.1", 5000, "10.0.0.2", 80, "tcp", 10.0),
        (500.0, "Cb", "10.0.0.1", 5000, "10.0.0.2", 80, "tcp", None),     # the port reused
        (100.0, "Cp1", "10.0.0.1", 8, "10.0.0.3", 0, "icmp", 1.0),        # two pings, one id
        (200.0, "Cp2", "10.0.0.1", 8, "10.0.0.3", 0, "icmp", 1.0),
    ])
    s = _alerts([
        _alert(105.0, "10.0.0.2", 80, "10.0.0.1", 5000, sid=1),   # the reply way: still Ca
        _alert(99.5, "10.0.0.1", 5000, "10.0.0.2", 80, sid=2),    # within the clock skew
        _alert(300.0, "10.0.0.1", 5000, "10.0.0.2", 80, sid=3),   # after Ca ended + linger
        _alert(530.0, "10.0.0.1", 5000, "10.0.0.2", 80, sid=4),   # Cb (no duration: linger)
        _alert(201.0, "10.0.0.3", 0, "10.0.0.1", 0, proto="icmp", sid=5),   # echo reply of Cp2
        _alert(50.0, "10.0.0.1", 5000, "10.0.0.2", 80, sid=6),    # before any conn
        _alert(101.0, "10.0.0.9", 1, "10.0.0.1", 2, sid=7,        # logged id wins over 5-tuple
               community_id=community_id_v1("10.0.0.1", "10.0.0.2", "tcp", 5000, 80).encode()),
    ])
    got = {r: [a["signature_id"] for a in v] for r, v in s.join(conns).items()}
    assert got == {0: [2, 7, 1], 1: [4], 3: [5]}


def test_flow_id_join_ignores_time_and_picks_the_latest_start_for_a_reused_id():
    fid = 1374195536821504
    conns = _conns([(100.0, flow_uid(fid), "1.1.1.1", 1, "2.2.2.2", 2, "tcp", 1.0),
                    (900.0, flow_uid(fid), "1.1.1.1", 1, "2.2.2.2", 2, "tcp", 1.0),
                    (100.0, flow_uid(7), "3.3.3.3", 1, "4.4.4.4", 2, "udp", 1.0)])
    s = _alerts([_alert(5000.0, "1.1.1.1", 1, "2.2.2.2", 2, flow_id=fid, sid=1),
                 _alert(150.0, "1.1.1.1", 1, "2.2.2.2", 2, flow_id=fid, sid=2),
                 _alert(10.0, "9.9.9.9", 1, "8.8.8.8", 2, proto="udp", flow_id=7, sid=3)])
    got = {r: [a["signature_id"] for a in v] for r, v in s.join(conns).items()}
    assert got == {0: [2], 1: [1], 2: [3]}


def test_signatures_most_alerts_first():
    a = [{"signature_id": 2, "signature": "b", "severity": 1, "category": "x"}] * 3 + \
        [{"signature_id": 1, "signature": "a", "severity": 2, "category": "y"}] * 3 + \
        [{"signature_id": 9, "signature": "z", "severity": 3, "category": "y"}]
    assert incident_signatures(a) == [
        {"signature_id": 1, "signature": "a", "severity": 2, "category": "y", "alerts": 3},
        {"signature_id": 2, "signature": "b", "severity": 1, "category": "x", "alerts": 3},
        {"signature_id": 9, "signature": "z", "severity": 3, "category": "y", "alerts": 1}]
    assert incident_signatures(a, limit=1)[0]["signature_id"] == 1


def test_attached_alerts_reach_verdicts_and_incidents_and_leave_scores_alone():
    conns = _conns([(100.0 + i, f"C{i}", "10.0.0.1", 4000 + i, f"10.0.1.{i}", 445, "tcp", 1.0)
                    for i in range(12)])
    n = conns.num_rows
    score = np.linspace(1.5, 3.0, n)
    batch = VerdictBatch(conns, ["iforest"], ["ZeekML::Anomalous_Flow"], {"iforest": score},
                         score.copy(), np.zeros(n, int), score >= 1.0)
    s = _alerts([_alert(100.5 + i, f"10.0.1.{i}", 445, "10.0.0.1", 4000 + i, sid=2010935)
                 for i in range(3)] + [_alert(105.2, "10.0.0.1", 4005, "10.0.1.5", 445, sid=7)])
    assert attach_suricata_alerts(batch, s) == 4
    assert attach_suricata_alerts(batch, None) == 0 and len(batch.suricata_alerts) == 4
    assert np.array_equal(batch.score, score) and batch.alert.all()
    lines = render_verdicts(batch).lines
    assert lines[0].endswith(b',"model":"iforest","suricata_alerts":[{"signature_id":2010935,'
                             b'"signature":"sig 2010935","severity":2,"category":"Misc"}]}\n')
    assert b"suricata_alerts" not in lines[3]
    (inc,) = incidents_from_batch(batch)
    assert inc.suricata_alerts == 4
    assert inc.suricata_signatures == [
        {"signature_id": 2010935, "signature": "sig 2010935", "severity": 2, "category": "Misc",
         "alerts": 3},
        {"signature_id": 7, "signature": "sig 7", "severity": 2, "category": "Misc", "alerts": 1}]
    assert inc.to_dict()["suricata_alerts"] == 4
    # zeekml report rebuilds incidents from verdicts.jsonl: the same evidence from the lines
    import json
    (again,) = build_incidents(verdict_table(json.loads(x) for x in lines))
    assert (again.suricata_alerts, again.suricata_signatures) == (4, inc.suricata_signatures)
    # without Suricata alerts the incident has no such keys (and verdicts no such key)
    batch.suricata_alerts = {}
    (plain,) = incidents_from_batch(batch)
    assert "suricata_alerts" not in plain.to_dict() and "suricata_signatures" not in plain.to_dict()
