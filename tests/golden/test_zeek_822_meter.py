"""The built-in flow meter against a real Zeek 8.2.2 with zeekml's Zeek package, on every capture.

Data: ``tests/data/zeek-8.2.2`` (see tests/data/README.md): for each of the 39 captures of the
team's shared data set, the ``conn.log`` and ``zeekml_flow.log`` that Zeek 8.2.2 wrote with
``zeek -C -r CAPTURE zeek-scripts/scripts`` (``runs/<capture>/C/``, checksums ignored) and with
Zeek's default checksum validation (``runs/<capture>/``). The meter is run the same two ways
(``ignore_checksums=True`` / default).

Rows are joined on proto, 4-tuple and ``ts`` (microseconds, as Zeek prints it). Every compared
column must be identical (durations and iats to 1e-6). Each remaining difference is listed in
``KNOWN`` with why (docs/results/flowmeter.md explains them); an expected difference that
disappears fails the test too, so the list stays honest.
"""
from __future__ import annotations

import gzip
import math
import os
import shutil
from collections import Counter

import pytest

from zeekml.parse import read_table
from zeekml.sources.flowmeter import FlowMeter
from zeekml.sources.pcap import iter_capture

TESTS = os.path.dirname(os.path.dirname(__file__))
DATA = os.path.join(TESTS, "data", "zeek-8.2.2")
BTEST_TRACES = os.path.join(TESTS, "data", "zeek-btest", "Traces")

# Every capture Zeek 8.2.2 ran on: its directory name under runs/ (the shared data set's path
# with "/" written "__").
CAPTURES = sorted(os.listdir(os.path.join(DATA, "runs")))

CONN_COLUMNS = ["service", "duration", "orig_bytes", "resp_bytes", "conn_state", "local_orig",
                "local_resp", "missed_bytes", "history", "orig_pkts", "orig_ip_bytes",
                "resp_pkts", "resp_ip_bytes", "ip_proto", "n_tunnel_parents"]
FLOW_COLUMNS = ["n_pkts", "dirs", "ip_lens", "iats", "tcp_flags"]

# Why a conn may differ; docs/results/flowmeter.md has the evidence for each.
ZERO_TS_IATS = ("the whole trace lies in its first second (timestamps 0.0 to 0.78 s): there Zeek's "
                "network_time() does not follow the packets inside new_packet (it stays at one "
                "value), so the script's iats are all 0.0; the meter writes the real gaps")

PPPOE_TRUNCATED = ("one PPPoE frame's length field (42) is shorter than its IP packet (46 bytes): "
                   "Zeek cuts the packet at the PPPoE length (weirds pppoe_extra_data_after_payload, "
                   "truncated_tcp_payload) and its new_packet pkt_hdr then has no tcp header, so the "
                   "script records flags 0; the meter reads the flags (16, an ACK) from the frame")

_BOTH = ("C", "default")

# (capture, checksums "C" or "default", log "conn"/"flow", column) -> (conns that differ, why)
KNOWN: dict[tuple[str, str, str, str], tuple[int, str]] = {}


def _known(capture: str, runs: tuple[str, ...], log: str, column: str, n: int, why: str) -> None:
    for run in runs:
        KNOWN[(capture, run, log, column)] = (n, why)


_known("zeek-btest__Traces__ppp__quic-interop-retry.pcap", _BOTH, "flow", "iats", 3, ZERO_TS_IATS)
_known("zeek-btest__Traces__pppoe-over-qinq.pcap", _BOTH, "flow", "tcp_flags", 1, PPPOE_TRUNCATED)


def open_capture(name: str, tmp: str) -> str:
    """The capture's path: a copy in zeek-btest/Traces, or a gzipped one here (decompressed)."""
    if name.startswith("zeek-btest__Traces__"):
        p = os.path.join(BTEST_TRACES, *name[len("zeek-btest__Traces__"):].split("__"))
        if os.path.exists(p):
            return p
    gz = os.path.join(DATA, "captures", name + ".gz")
    out = os.path.join(tmp, name)
    with gzip.open(gz, "rb") as f, open(out, "wb") as g:
        shutil.copyfileobj(f, g)
    return out


def zeek_rows(capture: str, run: str, log: str) -> list[dict]:
    path = os.path.join(DATA, "runs", capture, "C" if run == "C" else "",
                        ("conn" if log == "conn" else "zeekml_flow") + ".log.gz")
    if not os.path.exists(path):  # Zeek writes no log when it made no connection
        return []
    return [_norm(r) for r in read_table([path]).to_pylist()]


def meter_rows(path: str, run: str) -> tuple[list[dict], list[dict]]:
    m = FlowMeter(seed=1, ignore_checksums=(run == "C"))
    for ts, buf, lt in iter_capture(path):
        m.packet(ts, buf, lt)
    m.flush()
    return ([_norm(c.record()) for c in m.finished], [_norm(c.flow_record()) for c in m.finished])


def _norm(r: dict) -> dict:
    out = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in r.items()}
    if "tunnel_parents" in out:  # uids differ between runs; their number does not
        out["n_tunnel_parents"] = len(out["tunnel_parents"] or [])
    return out


def key(r: dict) -> tuple:
    return (r["proto"], r["id.orig_h"], r["id.orig_p"], r["id.resp_h"], r["id.resp_p"],
            f"{r['ts']:.6f}")


def same(col: str, a, b) -> bool:
    if col in ("duration",):
        if a is None or b is None:
            return a is None and b is None
        return abs(a - b) < 1e-6
    if col == "iats":
        return len(a) == len(b) and all(math.isclose(x, y, abs_tol=1e-6) for x, y in zip(a, b))
    return a == b


def compare(zeek: list[dict], ours: list[dict], columns: list[str]) -> dict:
    """Join on key(); returns counts and, per column, the keys whose value differs."""
    zk = {key(r): r for r in zeek}
    ok = {key(r): r for r in ours}
    diffs: dict[str, list] = {}
    identical = 0
    for k in zk.keys() & ok.keys():
        bad = [c for c in columns if not same(c, zk[k].get(c), ok[k].get(c))]
        for c in bad:
            diffs.setdefault(c, []).append((k, zk[k].get(c), ok[k].get(c)))
        identical += not bad
    return {"zeek": len(zk), "ours": len(ok), "joined": len(zk.keys() & ok.keys()),
            "identical": identical, "only_zeek": sorted(zk.keys() - ok.keys()),
            "only_ours": sorted(ok.keys() - zk.keys()), "diffs": diffs}


_cache: dict[tuple[str, str], dict] = {}


def result(capture: str, run: str, tmp_path_factory) -> dict:
    if (capture, run) not in _cache:
        path = open_capture(capture, str(tmp_path_factory.mktemp("cap")))
        conns, flows = meter_rows(path, run)
        _cache[(capture, run)] = {
            "conn": compare(zeek_rows(capture, run, "conn"), conns, CONN_COLUMNS),
            "flow": compare(zeek_rows(capture, run, "flow"), flows, FLOW_COLUMNS),
        }
    return _cache[(capture, run)]


def unexplained(capture: str, run: str, log: str, res: dict) -> list[str]:
    """Differences not in KNOWN, and KNOWN entries that no longer happen (or grew)."""
    problems = []
    columns = dict(res["diffs"])
    if res["only_zeek"] or res["only_ours"]:
        columns["rows"] = res["only_zeek"] + res["only_ours"]
    for col, rows in columns.items():
        allowed = KNOWN.get((capture, run, log, col))
        if allowed is None:
            problems.append(f"{log} {col}: {len(rows)} conns differ, e.g. {rows[:2]}")
        elif len(rows) > allowed[0]:
            problems.append(f"{log} {col}: {len(rows)} conns differ, {allowed[0]} expected")
    for (cap, r, lg, col), (n, _) in KNOWN.items():
        if (cap, r, lg) == (capture, run, log) and len(columns.get(col, [])) < n:
            problems.append(f"{log} {col}: expected {n} differing conns, now "
                            f"{len(columns.get(col, []))} (update KNOWN)")
    return problems


@pytest.mark.parametrize("run", ["C", "default"])
@pytest.mark.parametrize("capture", CAPTURES)
def test_meter_equals_zeek_822(capture, run, tmp_path_factory):
    res = result(capture, run, tmp_path_factory)
    problems = (unexplained(capture, run, "conn", res["conn"])
                + unexplained(capture, run, "flow", res["flow"]))
    assert not problems, "\n".join(problems)


def test_every_capture_has_both_runs():
    assert len(CAPTURES) == 39
    for c in CAPTURES:
        assert os.path.exists(os.path.join(DATA, "runs", c, "C", "conn.log.gz")), c


def test_known_differences_name_real_captures_and_reasons():
    for (capture, run, log, col), (n, why) in KNOWN.items():
        assert capture in CAPTURES and run in _BOTH and log in ("conn", "flow")
        assert col in CONN_COLUMNS + FLOW_COLUMNS + ["rows"] and n > 0 and len(why) > 40


@pytest.mark.parametrize("run,conns,flows_identical", [("C", 1223, 1219), ("default", 1229, 1225)])
def test_totals_reported_in_docs(run, conns, flows_identical, tmp_path_factory):
    """The figures of docs/results/flowmeter.md: every conn identical, 4 flow rows known."""
    t: Counter = Counter()
    for capture in CAPTURES:
        res = result(capture, run, tmp_path_factory)
        for log in ("conn", "flow"):
            t[log + "_zeek"] += res[log]["zeek"]
            t[log + "_ours"] += res[log]["ours"]
            t[log + "_identical"] += res[log]["identical"]
    assert (t["conn_zeek"], t["conn_ours"], t["conn_identical"]) == (conns, conns, conns)
    assert (t["flow_zeek"], t["flow_identical"]) == (conns, flows_identical)
    known_flow_rows = sum(n for (_, r, log, _), (n, _) in KNOWN.items() if r == run and log == "flow")
    assert conns - flows_identical == known_flow_rows
