"""``community_id_column``: the columnar Community ID equals ``community_id_v1`` row by row, on
real Zeek conn logs (IPv4, IPv6, ICMP and ICMPv6, unknown_transport), on Suricata flows, and on
any 5-tuple hypothesis draws (unset, unparseable and mixed-family addresses included)."""
from __future__ import annotations

import glob
import os

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from zeekml.flows.community_id import community_id_column, community_id_v1, community_ids
from zeekml.flows.table import CONN_SCHEMA, conn_table, is_conn_batch
from zeekml.parse import Quarantine, read_log

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "data", "real")


def _conns(paths: list[str]) -> pa.Table:
    q = Quarantine()
    return conn_table([b for p in paths for b in read_log(p, q) if is_conn_batch(b)])


def test_equals_the_row_by_row_ids_on_real_logs():
    zeek = sorted(glob.glob(os.path.join(DATA, "zeek-btest", "Baseline*", "*", "conn.log")))
    eve = os.path.join(DATA, "slips-dataset", "dataset", "test6-malicious.suricata.json.gz")
    t = _conns(zeek + [eve])
    got = community_id_column(t).to_pylist()
    assert got == community_ids(t)
    protos = set(t.column("proto").to_pylist())
    assert {"tcp", "udp", "icmp", "unknown_transport"} <= protos
    v6 = [":" in (h or "") for h in t.column("id.orig_h").to_pylist()]
    # the check covers what matters: IPv6 (ICMPv6 logged as "icmp" too) and the unset rows
    assert any(v6) and any(g is None for g in got) and sum(g is not None for g in got) > 3000


def test_icmp_request_and_reply_and_a_known_vector():
    t = pa.table({f.name: pa.array(v, f.type) for f, v in zip(
        [CONN_SCHEMA.field(n) for n in ("id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p",
                                         "proto")],
        [["1.2.3.4", "5.6.7.8", "1.2.3.4"], [8, 0, 1122], ["5.6.7.8", "1.2.3.4", "5.6.7.8"],
         [0, 0, 3344], ["icmp", "icmp", "TCP"]])})
    assert community_id_column(t).to_pylist() == [
        "1:crodRHL2FEsHjbv3UkRrfbs4bZ0=", "1:crodRHL2FEsHjbv3UkRrfbs4bZ0=",
        "1:wCb3OG7yAFWelaUydu0D+125CLM="]
    assert community_id_column(t, seed=1).to_pylist()[0] == "1:9pr4ZGTICiuZoIh90RRYE2RyXpU="
    assert community_id_column(t.slice(0, 0)).to_pylist() == []


_ADDR = st.one_of(st.none(), st.sampled_from(["1.2.3.4", "5.6.7.8", "0.0.0.0", "255.255.255.255",
                                               "::1", "fe80::1", "2001:db8::2", "ff02::1",
                                               "not-an-ip", ""]),
                  st.ip_addresses().map(str))
_PORT = st.one_of(st.none(), st.sampled_from([0, 3, 8, 128, 129, 135, 136]),
                  st.integers(0, 65535))
_ROW = st.tuples(_ADDR, _PORT, _ADDR, _PORT,
                 st.one_of(st.none(), st.sampled_from(["tcp", "udp", "icmp", "ICMP", "icmp6",
                                                       "sctp", "unknown_transport", ""])))


@settings(max_examples=200, deadline=None)
@given(st.lists(_ROW, min_size=1, max_size=30), st.integers(0, 65535))
def test_equals_community_id_v1_on_any_rows(rows, seed):
    cols = list(zip(*rows))
    names = ("id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto")
    t = pa.table({n: pa.array(list(c), CONN_SCHEMA.field(n).type) for n, c in zip(names, cols)})
    want = []
    for sa, sp, da, dp, proto in rows:
        try:
            want.append(community_id_v1(sa, da, proto, sp, dp, seed) if sa and da and proto
                        else None)
        except ValueError:
            want.append(None)
    assert community_id_column(t, seed).to_pylist() == want


def _plugin_flows() -> list[tuple[str, str, int, int, int, int, str]]:
    """(saddr, daddr, proto, sport, dport, seed, id) of each flow the Zeek plugin logged."""
    import ipaddress

    out = []
    for path in sorted(glob.glob(os.path.join(DATA, "..", "community-id", "*.pcap.out"))):
        with open(path) as f:
            for line in f:
                if line.startswith("#"):
                    continue
                fields, cid = line.rstrip("\n").split(" -> ")
                seed, sa, da, proto, _pad, sp, dp = fields.split(" (")[0].split()
                ip = [str(ipaddress.ip_address(bytes.fromhex(a.replace(":", "")))) for a in (sa, da)]
                n = [int(x.replace(":", ""), 16) for x in (proto, sp, dp, seed)]
                out.append((ip[0], ip[1], n[0], n[1], n[2], n[3], cid))
    return out


def test_equals_zeeks_community_id_plugin_on_real_captures():
    """The plugin logged each flow in hashing order (endpoints ordered, an ICMP type's
    counterpart in the port field): given that way, as a conn, each gets the plugin's id."""
    flows = _plugin_flows()
    assert len(flows) == 18 and {f[2] for f in flows} == {1, 6, 17, 58}
    names = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp"}    # Zeek logs ICMPv6 as "icmp"
    t = pa.table({"id.orig_h": pa.array([f[0] for f in flows], pa.string()),
                  "id.resp_h": pa.array([f[1] for f in flows], pa.string()),
                  "id.orig_p": pa.array([f[3] for f in flows], pa.uint16()),
                  "id.resp_p": pa.array([f[4] for f in flows], pa.uint16()),
                  "proto": pa.array([names[f[2]] for f in flows], pa.string())})
    assert {f[5] for f in flows} == {0}
    assert community_id_column(t).to_pylist() == [f[6] for f in flows]


def test_a_port_outside_16_bits_names_no_flow():
    """A hand-made verdict's port cannot be packed into the spec's 16 bits: a ValueError (as
    for any 5-tuple without a Community ID), not ``struct.error``; the conn table's ports are
    uint16, so the column never sees one."""
    import pytest

    from zeekml.scoring.verdict import Verdict

    for sp, dp in ((70000, 80), (1234, -1)):
        with pytest.raises(ValueError, match="out of range"):
            community_id_v1("1.2.3.4", "5.6.7.8", "tcp", sp, dp)
    v = Verdict(uid="C1", ts=1.0, orig_h="1.2.3.4", orig_p=1234, resp_h="5.6.7.8", resp_p=70000,
                proto="tcp", model="iforest", score=0.0, alert=False)
    assert v.community_id is None
