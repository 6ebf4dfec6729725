"""The Zeek package's btest expectations and verdict mapping against a real Zeek 8.2.2's own output.

Data: ``tests/data/zeek-8.2.2/runs`` (see tests/data/README.md), logs Zeek 8.2.2 wrote with the
package loaded (``zeek -r CAPTURE zeek-scripts/scripts``, all base scripts).
"""
from __future__ import annotations

import ipaddress
import os
import re

import pytest

from zeekml.parse import read_table

TESTS = os.path.dirname(os.path.dirname(__file__))
REPO = os.path.dirname(TESTS)
RUNS = os.path.join(TESTS, "data", "zeek-8.2.2", "runs")
TESTING = os.path.join(REPO, "zeek-scripts", "testing")
CUT = ["ts", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "n_pkts", "dirs",
       "ip_lens", "iats", "tcp_flags"]


def _field(v) -> str:
    """A value as zeek-cut prints it (TSV: vectors joined by ',', times to 6 decimals)."""
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, float):
        return f"{v:.6f}"
    if isinstance(v, list):
        return ",".join(_field(x) for x in v)
    return str(v)


def zeek_cut(path: str, columns: list[str]) -> list[str]:
    return sorted("\t".join(_field(r[c]) for c in columns) for r in read_table([path]).to_pylist())


def baseline(test: str, name: str) -> list[str]:
    with open(os.path.join(TESTING, "Baseline", test, name)) as f:
        return [ln.rstrip("\n") for ln in f if not ln.startswith("###")]


@pytest.mark.parametrize("test,capture", [
    # Issue 18, defect 3: under `zeek -b` the DHCP scripts must be loaded (the btest now does);
    # a full Zeek 8.2.2 run, which loads them, writes exactly the baseline.
    ("tests.flow-features-dhcp", "zeek-btest__Traces__dhcp__dhcp.pcap"),
    ("tests.flow-features-http", "zeek-btest__Traces__http__concurrent-range-requests.pcap"),
])
def test_flow_btest_baselines_equal_real_zeek_822(test, capture):
    got = zeek_cut(os.path.join(RUNS, capture, "zeekml_flow.log.gz"), CUT)
    assert got == baseline(test, "flows.txt")


def verdict_ip_proto_arms() -> dict[str, str]:
    with open(os.path.join(REPO, "zeek-scripts", "scripts", "verdicts.zeek")) as f:
        src = f.read()
    body = src[src.index("function verdict_ip_proto("):]
    body = body[:body.index("\n\t}\n")]
    return dict(re.findall(r"case (\w+):\s*return ([^;]+);", body))


def verdict_ip_proto(arms: dict[str, str], proto: str, orig_h: str) -> int | None:
    """verdicts.zeek's mapping, evaluated: the arm's number, or the v6/v4 choice for icmp."""
    expr = arms.get(proto)
    if expr is None:
        return None
    m = re.fullmatch(r"is_v6_addr\(v\$id\$orig_h\) \? (\d+) : (\d+)", expr)
    if m:
        return int(m.group(1) if ipaddress.ip_address(orig_h).version == 6 else m.group(2))
    return int(expr)


def test_verdict_ip_proto_mapping_agrees_with_zeek_822_conn_ids():
    # Issue 18, defect 1: verdicts.zeek must give conn_id$proto the IP protocol Zeek keyed the
    # connection by. Zeek 8.2.2's conn.log ip_proto is that number: every tcp/udp/icmp conn of
    # every capture must map to it from (proto, address family) alone.
    arms = verdict_ip_proto_arms()
    seen: dict[tuple[str, int], int] = {}
    for capture in sorted(os.listdir(RUNS)):
        path = os.path.join(RUNS, capture, "C", "conn.log.gz")
        for r in read_table([path]).to_pylist():
            if r["proto"] == "unknown_transport":
                continue
            want = r["ip_proto"]
            assert verdict_ip_proto(arms, r["proto"], r["id.orig_h"]) == want, (capture, r["uid"])
            fam = ipaddress.ip_address(r["id.orig_h"]).version
            seen[(r["proto"], fam)] = seen.get((r["proto"], fam), 0) + 1
    # the data covers every arm, ICMP over both families included
    assert {("tcp", 4), ("udp", 4), ("udp", 6), ("icmp", 4), ("icmp", 6)} <= set(seen)
