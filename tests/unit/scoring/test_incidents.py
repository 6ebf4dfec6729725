"""Incidents from hand-built alerts: grouping, counts, ids, ranking and the descriptions."""
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from zeekml.scoring.incidents import (IncidentOptions, build_incidents, fmt_duration,
                                      host_baseline_bytes, incident_id, verdict_table)

T0 = 1_600_000_000.0


def rec(ts, orig, resp, port, proto="tcp", score=0.0, alert=False, model="iforest", uid=None, **kw):
    return {"ts": T0 + ts, "uid": uid or f"C{orig}-{resp}-{port}-{ts}", "id.orig_h": orig,
            "id.resp_h": resp, "id.resp_p": port, "proto": proto, "score": score, "alert": alert,
            "model": model, **kw}


def scan():      # 10.0.0.1 hits 18 hosts on 445/tcp over 40 s
    return [rec(40 * k / 17, "10.0.0.1", f"10.0.1.{k}", 445, score=1.5 + k / 100, alert=True)
            for k in range(18)]


def beacon():    # 10.0.0.2 -> 1.2.3.4:443 every 60 s (+-1 s jitter) for 3 h
    jitter = [0, 1, -1, 0, 1, -1]
    return [rec(10_000 + 60 * k + jitter[k % 6], "10.0.0.2", "1.2.3.4", 443, score=1.2, alert=True,
                model="gnn") for k in range(181)]


def flood():     # 12 hosts -> 10.0.0.9:80, each 2 conns, within 30 s
    return [rec(50_000 + k, f"172.16.0.{k % 12}", "10.0.0.9", 80, score=1.1, alert=True)
            for k in range(24)]


def test_scan_beacon_flood_single():
    rows = scan() + beacon() + flood() + [
        rec(90_000, "10.0.0.7", "9.9.9.9", 53, proto="udp", score=3.5, alert=True, model="mae"),
        rec(90_001, "10.0.0.7", "9.9.9.9", 53, proto="udp"),          # context only
        rec(20, "10.0.0.1", "10.0.1.99", 80),                          # inside the scan: a conn
    ]
    incs = build_incidents(verdict_table(rows))
    by_host = {i.host: i for i in incs}
    assert set(by_host) == {"10.0.0.1", "10.0.0.2", "10.0.0.9", "10.0.0.7"}

    s = by_host["10.0.0.1"]
    assert (s.role, s.alerts, s.conns, s.n_peers, s.resp_ports) == ("orig", 18, 19, 18, ["445/tcp"])
    assert s.description == "scanned 18 hosts on 445/tcp in 40 s"
    assert s.max_score == pytest.approx(1.67)
    assert s.score == pytest.approx(1.67 * (1 + np.log10(18))) and s.peak_alerts == 18
    assert [c["score"] for c in s.top_conns] == pytest.approx([1.67, 1.66, 1.65, 1.64, 1.63])
    assert (s.first_ts, s.last_ts) == (T0, T0 + 40)

    b = by_host["10.0.0.2"]
    assert (b.role, b.alerts, b.peers, b.detectors) == ("orig", 181, ["1.2.3.4"], ["gnn"])
    assert b.description == "periodic conns every 60 s +- 1 s to 1.2.3.4:443 for 3 h"

    f = by_host["10.0.0.9"]
    assert (f.role, f.alerts, f.n_peers) == ("resp", 24, 12)
    assert f.description == "received 24 anomalous conns from 12 hosts on 80/tcp in 23 s"

    one = by_host["10.0.0.7"]
    assert (one.alerts, one.conns, one.detector_alerts) == (1, 1, {"mae": 1})
    assert one.description == "1 anomalous conn to 9.9.9.9 on 53/udp (score 3.50, mae)"

    # ranked by score: the beacon (181 alerts at 1.2: 3.91) and the scan (3.77) outrank the lone 3.5
    assert [i.host for i in incs] == ["10.0.0.2", "10.0.0.1", "10.0.0.7", "10.0.0.9"]
    assert incs[0].incident_id == incident_id("orig", "10.0.0.2", T0 + 10_000,
                                              "C10.0.0.2-1.2.3.4-443-10000")


def test_gap_splits_bursts_and_merges_sporadic_alerts():
    burst1 = [rec(k, "10.0.0.5", "1.1.1.1", 22, score=2, alert=True) for k in range(5)]
    burst2 = [rec(1004 + 901 + k, "10.0.0.5", "1.1.1.1", 22, score=3, alert=True) for k in range(4)]
    incs = build_incidents(verdict_table(burst1 + burst2))
    assert [(i.first_ts - T0, i.alerts, i.peak_alerts) for i in incs] == [(1905, 4, 4), (0, 5, 5)]
    again = build_incidents(verdict_table(list(reversed(burst1 + burst2))))
    assert [i.incident_id for i in again] == [i.incident_id for i in incs]
    assert len(build_incidents(verdict_table(burst1 + burst2), IncidentOptions(gap=2000))) == 1
    # single alerts two hours apart: one incident (within slow_gap), scored as bursts of one
    sporadic = [rec(7200 * k, "10.0.0.6", f"2.2.2.{k}", 443, score=2, alert=True) for k in range(3)]
    [inc] = build_incidents(verdict_table(sporadic))
    assert (inc.alerts, inc.peak_alerts, inc.score) == (3, 1, 2.0)
    assert inc.description == "3 anomalous conns to 3 hosts on 443/tcp in 4 h"
    assert len(build_incidents(verdict_table(sporadic), IncidentOptions(small_alerts=0))) == 3


def test_slow_fanin_to_one_responder():
    probes = [rec(3000 * k, f"198.51.100.{k}", "10.0.0.9", 23 + k, score=1.5, alert=True)
              for k in range(6)]
    [inc] = build_incidents(verdict_table(probes))
    assert (inc.role, inc.host, inc.alerts, inc.n_peers) == ("resp", "10.0.0.9", 6, 6)
    assert inc.description == ("received 6 anomalous conns from 6 hosts on 23/tcp, 24/tcp, "
                               "25/tcp and 3 more in 4.2 h")
    assert len(build_incidents(verdict_table(probes[:4]))) == 4     # under slow_fanin_min


def test_volume_against_host_baseline_and_icmp_sweep():
    base = pa.table({"id.orig_h": ["10.0.0.3"] * 3 + ["10.0.0.4"],
                     "orig_bytes": [1000.0, 1200.0, 1400.0, 50.0],
                     "resp_bytes": [0.0, 0.0, None, 7.0]})
    ref = host_baseline_bytes(base)
    assert ref == {"": (1100.0, 0.0), "10.0.0.3": (1200.0, 0.0), "10.0.0.4": (50.0, 7.0)}
    exfil = [rec(k, "10.0.0.3", "5.6.7.8", 443, score=2.0, alert=True, orig_bytes=48_000.0)
             for k in range(12)]
    sweep = [rec(500 + k, "10.0.0.8", f"192.168.1.{k}", 0, proto="icmp", score=1.3, alert=True)
             for k in range(15)]
    incs = build_incidents(verdict_table(exfil + sweep), baseline_bytes=ref)
    d = {i.host: i.description for i in incs}
    assert d["10.0.0.3"] == "sent 40x its baseline bytes per conn to 5.6.7.8 (576.0 kB in 12 conns)"
    download = [rec(900 + k, "10.0.0.4", "6.6.6.6", 80, score=2.0, alert=True, orig_bytes=60.0,
                    resp_bytes=70_000.0) for k in range(2)]
    [inc] = build_incidents(verdict_table(download), baseline_bytes=ref)
    assert inc.description == "received 10,000x its baseline bytes per conn from 6.6.6.6 (140.0 kB in 2 conns)"
    ref["10.0.0.4"] = (50.0, 0.0)
    [inc] = build_incidents(verdict_table(download), baseline_bytes=ref)
    assert inc.description == ("received 140.0 kB in 2 conns from 6.6.6.6, where its baseline "
                               "conns receive a median of 0 bytes")
    assert d["10.0.0.8"] == "scanned 15 hosts with icmp in 14 s"
    # without a baseline no volume claim is made
    assert "sent" not in build_incidents(verdict_table(exfil))[0].description


def test_host_baseline_bytes_are_each_hosts_np_median():
    """The per-host medians, all hosts in one sort, are ``np.median`` of each host's set bytes,
    bit for bit: groups of odd and even size, unset and non-finite bytes, a host whose bytes
    are all unset (NaN), and unset or empty originators (only in the all-conns medians)."""
    rng = np.random.default_rng(5)
    n = 3000
    hosts = [None if r < 0.02 else "" if r < 0.04 else f"10.0.{int(r * 1000) % 37}.{int(r * 1e6) % 5}"
             for r in rng.random(n)]
    sent = rng.lognormal(6, 3, n).round(0)
    sent[rng.random(n) < 0.1] = np.nan
    recv = rng.integers(0, 5, n).astype(float)                  # ties within a host
    recv[rng.random(n) < 0.1] = np.inf
    hosts[:3] = ["10.9.9.9"] * 3
    sent[:3] = np.nan
    base = pa.table({"id.orig_h": pa.array(hosts, pa.string()),
                     "orig_bytes": pa.array(sent), "resp_bytes": pa.array([None if np.isnan(x) else x
                                                                          for x in recv], pa.float64())})
    ref = host_baseline_bytes(base)

    def med(x):
        x = x[np.isfinite(x)]
        return float(np.median(x)) if len(x) else float("nan")

    want = {"": (med(sent), med(recv))}
    for h in sorted({h for h in hosts if h}):
        rows = np.array([x == h for x in hosts])
        want[h] = (med(sent[rows]), med(recv[rows]))
    assert ref.keys() == want.keys()
    for h, pair in want.items():
        assert np.array(ref[h]).tobytes() == np.array(pair).tobytes(), h
    assert np.isnan(ref["10.9.9.9"][0])
    only = host_baseline_bytes(pa.table({"orig_bytes": [1.0, 3.0]}))     # no originators, no resp_bytes
    assert list(only) == [""] and only[""][0] == 2.0 and np.isnan(only[""][1])


def test_no_alerts_and_missing_columns():
    assert build_incidents(verdict_table([rec(0, "a", "b", 1)])) == []
    with pytest.raises(ValueError, match="lacks column"):
        build_incidents(pa.table({"ts": [1.0]}))


@pytest.mark.parametrize("s,text", [(40, "40 s"), (300, "5 min"), (3 * 3600, "3 h"),
                                    (5400, "1.5 h"), (2.5 * 86400, "2.5 d")])
def test_fmt_duration(s, text):
    assert fmt_duration(s) == text


def test_incidents_from_a_scored_batch_with_baseline():
    from zeekml.flows.community_id import community_id_v1
    from zeekml.flows.table import CONN_SCHEMA
    from zeekml.scoring.incidents import incidents_from_batch
    from zeekml.scoring.verdict import VerdictBatch, verdict_id

    def conns(rows):
        return pa.table({f.name: pa.array([r.get(f.name) for r in rows], f.type) for f in CONN_SCHEMA})

    base = conns([{"ts": float(k), "uid": f"B{k}", "id.orig_h": "10.0.0.3", "id.resp_h": "5.6.7.8",
                   "id.orig_p": 40000 + k, "id.resp_p": 443, "proto": "tcp", "service": "ssl",
                   "orig_bytes": 1200, "resp_bytes": 5000, "duration": 1.0, "conn_state": "SF"}
                  for k in range(30)])
    t = conns([{"ts": 1000.0 + k, "uid": f"C{k}", "id.orig_h": "10.0.0.3", "id.resp_h": "5.6.7.8",
                "id.orig_p": 50000 + k, "id.resp_p": 443, "proto": "tcp", "service": "ssl",
                "orig_bytes": 48_000 if k < 12 else 1200, "resp_bytes": 5000, "duration": 1.0,
                "conn_state": "SF"} for k in range(14)])
    score = np.array([2.0] * 12 + [0.3, 0.2])
    batch = VerdictBatch(t, ["iforest"], ["ZeekML::Anomalous_Flow"], {"iforest": score}, score,
                         np.zeros(14, dtype=np.int64), score >= 1.0)
    [inc] = incidents_from_batch(batch, base)
    # conns counts the host's conns between its first and last alert: the 2 later ones are out
    assert (inc.host, inc.alerts, inc.conns, inc.services) == ("10.0.0.3", 12, 12, ["ssl"])
    assert inc.description == "sent 40x its baseline bytes per conn to 5.6.7.8 (576.0 kB in 12 conns)"
    top = inc.top_conns[0]
    assert top["uid"] == "C0" and top["verdict_id"] == verdict_id("iforest", "C0", 1000.0)
    assert top["community_id"] == community_id_v1("10.0.0.3", "5.6.7.8", "tcp", 50000, 443)
    assert top["explanation"].startswith("orig_bytes 48,000, 40x the baseline median 1,200 for ssl")


def test_a_known_bad_detectors_alerts_are_not_called_anomalous():
    """A classifier's alert means "like the malware it was taught", not "unlike the baseline":
    an incident whose every alert a known-bad detector raised says "known-bad conns", a mix
    "alerting conns", and the anomaly detectors' alone (or verdicts without a note) "anomalous"."""
    def recs(notes):
        return [{"ts": 100.0 + k, "uid": f"C{k}", "id.orig_h": "10.0.0.1", "id.resp_h": "10.9.9.9",
                 "id.resp_p": 6667, "proto": "tcp", "score": 2.0, "alert": True, "model": "m",
                 **({"note": n} if n else {})} for k, n in enumerate(notes)]
    [bad] = build_incidents(verdict_table(recs(["ZeekML::Intrusion"] * 3)))
    assert bad.description == "3 known-bad conns to 1 host on 6667/tcp in 2 s"
    [one] = build_incidents(verdict_table(recs(["ZeekML::Botnet_Activity"])))
    assert one.description.startswith("1 known-bad conn to 10.9.9.9 on 6667/tcp (score 2.00, m)")
    [mix] = build_incidents(verdict_table(recs(["ZeekML::Intrusion", "ZeekML::Anomalous_Flow"])))
    assert mix.description.startswith("2 alerting conns to 1 host")
    [plain] = build_incidents(verdict_table(recs(["ZeekML::Anomalous_Flow"] * 2)))
    [old] = build_incidents(verdict_table(recs([None, None])))
    assert plain.description.startswith("2 anomalous conns") and old.description.startswith("2 anomalous conns")


def _label(r) -> str:
    proto = r["proto"] or "?"
    if proto == "icmp":
        return "icmp"
    return f"{r['id.resp_p']}/{proto}" if r["id.resp_p"] is not None else proto


@pytest.mark.parametrize("alerts", [12, 400])
def test_an_incidents_counts_equal_counting_its_conns_one_by_one(alerts):
    """Peers, ports, services and detectors are counted on coded columns (an infected archive
    alerts on most of its conns): the counts, and the order of ties (first occurrence, as
    ``Counter`` gives), equal counting the conns one by one, for a few alerts and for many."""
    rng = np.random.default_rng(7)
    peers = ["10.9.0.9", "10.1.0.1", "10.5.0.5", "", "10.0.0.200", "10.3.0.3"]
    services = ["http", "dns,http", None, "ssl,dns", ""]
    kinds = [("tcp", 445), ("tcp", 80), ("udp", None), ("icmp", 8), ("icmp", 0), (None, 53)]
    rows = []
    for k in range(alerts):
        proto, port = kinds[int(rng.integers(len(kinds)))]
        rows.append(rec(k, "10.0.0.5", peers[int(rng.integers(len(peers)))], port, proto=proto,
                        score=1.0 + k % 7 / 10, alert=True,
                        model=["gnn", "mae", "clf-malicious-committee"][k % 3],
                        service=services[int(rng.integers(len(services)))]))
    [inc] = build_incidents(verdict_table(rows))
    want_peers = Counter(r["id.resp_h"] for r in rows if r["id.resp_h"])
    want_ports = Counter(_label(r) for r in rows)
    want_services = Counter(s for r in rows for s in (r["service"] or "").split(",") if s)
    want_dets = Counter(r["model"] for r in rows)
    assert inc.peers == [p for p, _ in want_peers.most_common(20)] and inc.n_peers == len(want_peers)
    assert inc.resp_ports == [p for p, _ in want_ports.most_common(20)]
    assert inc.services == [s for s, _ in want_services.most_common(20)]
    assert inc.detector_alerts == dict(want_dets.most_common())
    assert inc.detectors == [d for d, _ in want_dets.most_common()]
    assert inc.top_conns[0]["uid"] == max(rows, key=lambda r: r["score"])["uid"]


def test_a_flood_of_many_originators_is_counted_as_one_by_one():
    """The responder's side: many originators (ties among them) to one host."""
    rows = [rec(k, f"172.16.{k % 9}.{k % 23}", "10.0.0.9", 80, score=1.5, alert=True)
            for k in range(300)]
    [inc] = build_incidents(verdict_table(rows))
    want = Counter(r["id.orig_h"] for r in rows)
    assert inc.role == "resp" and inc.n_peers == len(want)
    assert inc.peers == [p for p, _ in want.most_common(20)]
