"""Unit tests of the built-in flow meter on hand-built packets (exact values, Zeek semantics)."""
from __future__ import annotations

import random
import socket
import struct

import pytest

from zeekml.sources.flowmeter import FlowMeter, is_private
from zeekml.sources.flowmeter.decode import link_to_ip

A, B = "10.0.0.1", "192.0.2.7"
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def checksum16(data: bytes) -> int:
    """RFC 1071 Internet checksum (written out word by word, independent of the meter's)."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


_CSUM_AT = {6: 16, 17: 6, 1: 2, 58: 2}  # where each transport keeps its checksum


def with_checksum(src: bytes, dst: bytes, proto: int, seg: bytes) -> bytes:
    """``seg`` with its transport checksum filled in (pseudo-header except for ICMPv4), as a
    sender without checksum offloading writes it."""
    at = _CSUM_AT.get(proto)
    if at is None or len(seg) < at + 2:
        return seg
    seg = seg[:at] + b"\0\0" + seg[at + 2:]
    if proto == 1:
        pseudo = b""
    elif len(src) == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, proto, len(seg))
    else:
        pseudo = src + dst + struct.pack("!I3xB", len(seg), proto)
    c = checksum16(pseudo + seg)
    if proto == 17 and c == 0:
        c = 0xFFFF  # UDP: 0 means "no checksum"
    return seg[:at] + struct.pack("!H", c) + seg[at + 2:]


def ip4(src, dst, proto, payload, ident=1, frag=0):
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    if frag == 0:  # a fragment's transport checksum covers the whole datagram: see the caller
        payload = with_checksum(s, d, proto, payload)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, frag, 64, proto, 0, s, d)
    hdr = hdr[:10] + struct.pack("!H", checksum16(hdr)) + hdr[12:]
    return hdr + payload


def ip6(src, dst, nh, payload):
    s, d = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
    payload = with_checksum(s, d, nh, payload)
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nh, 64, s, d) + payload


def tcp(sport, dport, seq, ack, flags, data=b"", win=1000):
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, win, 0, 0) + data


def udp(sport, dport, data=b""):
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def icmp(t, code, data=b"abcd"):
    return struct.pack("!BBHI", t, code, 0, 0) + data


def eth(ip, etype=0x0800):
    return b"\x00\x11\x22\x33\x44\x55" + b"\x66\x77\x88\x99\xaa\xbb" + struct.pack("!H", etype) + ip


def run(packets, linktype=1, **kw):
    m = FlowMeter(seed=3, **kw)
    for ts, frame in packets:
        m.packet(ts, frame, linktype)
    m.flush()
    return [c.record() for c in m.finished], m


def handshake_session(t0=100.0, sport=40000, dport=80):
    c, s = 1000, 5000
    return [
        (t0, eth(ip4(A, B, 6, tcp(sport, dport, c, 0, SYN)))),
        (t0 + 0.1, eth(ip4(B, A, 6, tcp(dport, sport, s, c + 1, SYN | ACK)))),
        (t0 + 0.2, eth(ip4(A, B, 6, tcp(sport, dport, c + 1, s + 1, ACK)))),
        (t0 + 0.3, eth(ip4(A, B, 6, tcp(sport, dport, c + 1, s + 1, PSH | ACK, b"GET / HTTP/1.1\r\n\r\n")))),
        (t0 + 0.4, eth(ip4(B, A, 6, tcp(dport, sport, s + 1, c + 19, PSH | ACK, b"HTTP/1.1 200 OK\r\n\r\nhello")))),
        (t0 + 0.5, eth(ip4(A, B, 6, tcp(sport, dport, c + 19, s + 25, FIN | ACK)))),
        (t0 + 0.6, eth(ip4(B, A, 6, tcp(dport, sport, s + 25, c + 20, FIN | ACK)))),
        (t0 + 0.7, eth(ip4(A, B, 6, tcp(sport, dport, c + 20, s + 26, ACK)))),
    ]


def test_full_tcp_session():
    (r,), _ = run(handshake_session())
    assert r["conn_state"] == "SF"
    assert r["history"] == "ShADdFf"  # the responder never sent a pure ACK
    assert (r["orig_bytes"], r["resp_bytes"]) == (18, 24)
    assert (r["orig_pkts"], r["resp_pkts"]) == (5, 3)
    assert r["orig_ip_bytes"] == 5 * 40 + 18
    assert r["duration"] == pytest.approx(0.6)  # the final ACK after both FINs does not extend it
    assert r["service"] == "http"
    assert (r["local_orig"], r["local_resp"]) == (True, True)
    assert r["ip_proto"] == 6 and r["missed_bytes"] == 0


def test_syn_only_is_s0_and_rejected_syn_is_rej():
    (r,), _ = run([(1.0, eth(ip4(A, B, 6, tcp(1234, 22, 7, 0, SYN))))])
    assert (r["conn_state"], r["history"], r["duration"], r["orig_bytes"]) == ("S0", "S", None, None)
    (r,), _ = run([(1.0, eth(ip4(A, B, 6, tcp(1234, 22, 7, 0, SYN)))),
                   (1.1, eth(ip4(B, A, 6, tcp(22, 1234, 0, 8, RST | ACK))))])
    assert (r["conn_state"], r["history"]) == ("REJ", "Sr")


def test_syn_ack_from_server_port_is_flipped():
    (r,), _ = run([(1.0, eth(ip4(B, A, 6, tcp(80, 40001, 9, 5, SYN | ACK))))])
    assert (r["id.orig_h"], r["id.orig_p"], r["id.resp_p"]) == (A, 40001, 80)
    assert r["history"] == "^h"


def test_unanswered_syns_expire_after_the_attempt_delay():
    pk = [(1.0, eth(ip4(A, B, 6, tcp(1234, 22, 7, 0, SYN)))),
          (4.0, eth(ip4(A, B, 6, tcp(1234, 22, 7, 0, SYN)))),  # retransmission: same conn
          (10.0, eth(ip4(A, B, 6, tcp(1234, 22, 7, 0, SYN))))]  # > 5 s after the first: new conn
    recs, _ = run(pk)
    assert [(r["orig_pkts"], r["history"]) for r in recs] == [(2, "S"), (1, "S")]


def test_icmp_echo_pair_is_one_connection_with_type_and_counterpart_ports():
    recs, _ = run([(1.0, eth(ip4(A, B, 1, icmp(8, 0)))), (1.5, eth(ip4(B, A, 1, icmp(0, 0))))])
    assert len(recs) == 1
    r = recs[0]
    assert (r["proto"], r["id.orig_p"], r["id.resp_p"], r["conn_state"]) == ("icmp", 8, 0, "OTH")
    assert (r["orig_bytes"], r["resp_bytes"], r["ip_proto"]) == (4, 4, 1)
    (r,), _ = run([(1.0, eth(ip4(A, B, 1, icmp(3, 3))))])  # one-way: resp_p is the code
    assert (r["id.orig_p"], r["id.resp_p"]) == (3, 3)


def test_udp_inactivity_timeout_splits_connections():
    recs, _ = run([(1.0, eth(ip4(A, B, 17, udp(5000, 6000, b"x")))),
                   (2.0, eth(ip4(B, A, 17, udp(6000, 5000, b"yy")))),
                   (70.0, eth(ip4(A, B, 17, udp(5000, 6000, b"z"))))])
    assert [(r["conn_state"], r["history"], r["orig_bytes"]) for r in recs] == [
        ("SF", "Dd", 1), ("S0", "D", None)]


def test_unknown_transport_and_ipv6():
    (r,), _ = run([(1.0, eth(ip4(A, B, 132, b"\x00" * 12))), (1.5, eth(ip4(A, B, 132, b"\x00" * 12)))])
    assert (r["proto"], r["id.orig_p"], r["id.resp_p"], r["ip_proto"], r["orig_bytes"]) == (
        "unknown_transport", 0, 0, 132, 0)
    (r,), _ = run([(1.0, eth(ip6("2001:db8::1", "2001:db8::2", 17, udp(1, 2, b"abc")), 0x86DD))])
    assert (r["id.orig_h"], r["orig_ip_bytes"], r["local_orig"]) == ("2001:db8::1", 51, True)


@pytest.mark.parametrize("linktype,wrap", [
    (1, lambda ip: eth(ip)),
    (1, lambda ip: eth(b"\x00\x05\x08\x00" + ip, 0x8100)),  # 802.1Q
    (1, lambda ip: eth(b"\x00\x05\x81\x00\x00\x06\x08\x00" + ip, 0x88A8)),  # QinQ
    (1, lambda ip: eth(struct.pack("!I", (16 << 12) | 0x100 | 64) + ip, 0x8847)),  # MPLS
    (1, lambda ip: eth(struct.pack("!BBHH", 0x11, 0, 1, len(ip) + 2) + b"\x00\x21" + ip, 0x8864)),
    (0, lambda ip: struct.pack("<I", 2) + ip),  # NULL
    (108, lambda ip: struct.pack("!I", 2) + ip),  # LOOP
    (101, lambda ip: ip),  # raw
    (228, lambda ip: ip),
    (9, lambda ip: b"\xff\x03\x00\x21" + ip),  # PPP
    (113, lambda ip: b"\x00" * 14 + b"\x08\x00" + ip),  # Linux SLL
    (127, lambda ip: struct.pack("<BBHI", 0, 0, 8, 0) + bytes([0x08, 0x01]) + b"\x00" * 22
     + b"\xaa\xaa\x03\x00\x00\x00\x08\x00" + ip),  # radiotap + 802.11 data
    (105, lambda ip: bytes([0x88, 0x01]) + b"\x00" * 24 + b"\xaa\xaa\x03\x00\x00\x00\x08\x00" + ip),
])
def test_link_layers(linktype, wrap):
    frame = wrap(ip4(A, B, 17, udp(1111, 2222, b"hello")))
    off, ver = link_to_ip(linktype, frame)
    assert ver == 4 and frame[off] == 0x45
    (r,), _ = run([(1.0, frame)], linktype=linktype)
    assert (r["id.orig_p"], r["id.resp_p"], r["orig_ip_bytes"]) == (1111, 2222, 33)


def test_gre_and_vxlan_tunnels_set_tunnel_parents():
    inner = ip4("172.16.0.1", "172.16.0.2", 17, udp(1, 2, b"x"))
    gre = struct.pack("!HH", 0, 0x0800) + inner
    recs, m = run([(1.0, eth(ip4(A, B, 47, gre)))])
    (r,) = recs  # GRE itself is not a conn.log row
    assert r["tunnel_parents"] and r["id.orig_h"] == "172.16.0.1"
    vx = struct.pack("!BBBBI", 0x08, 0, 0, 0, 0x100) + eth(inner)
    recs, _ = run([(1.0, eth(ip4(A, B, 17, udp(40000, 4789, vx))))])
    outer = next(r for r in recs if r["id.resp_p"] == 4789)
    inner_r = next(r for r in recs if r["id.resp_p"] == 2)
    assert outer["service"] == "vxlan" and inner_r["tunnel_parents"] == [outer["uid"]]


def test_ipv4_fragments_are_reassembled():
    payload = with_checksum(socket.inet_aton(A), socket.inet_aton(B), 17,
                            udp(53000, 9999, b"A" * 100))
    f1 = ip4(A, B, 17, payload[:48], ident=7, frag=0x2000)
    f2 = ip4(A, B, 17, payload[48:], ident=7, frag=48 // 8)
    (r,), m = run([(1.0, eth(f2)), (1.0, eth(f1))])
    assert (r["id.orig_p"], r["id.resp_p"], r["orig_pkts"], r["orig_ip_bytes"]) == (53000, 9999, 1, 128)
    assert m.stats.fragments == 2


def test_hostile_frames_never_crash():
    rng = random.Random(1234)
    base = [f for _, f in handshake_session()]
    frames = []
    for f in base:
        for cut in range(0, len(f), 3):
            frames.append(f[:cut])  # truncated at every length
    for _ in range(3000):
        f = bytearray(rng.choice(base))
        for _ in range(rng.randint(1, 6)):
            f[rng.randrange(len(f))] = rng.randrange(256)  # bogus lengths, flags, versions
        frames.append(bytes(f))
    for _ in range(500):
        frames.append(bytes(rng.randrange(256) for _ in range(rng.randint(0, 120))))
    # Bogus IP lengths, header lengths and fragment floods.
    frames.append(eth(b"\x4f" + b"\x00" * 40))
    frames.append(eth(struct.pack("!BBH", 0x45, 0, 65535) + b"\x00" * 30))
    frames += [eth(ip4(A, B, 17, b"\x00" * 8, ident=i, frag=0x2000 | i)) for i in range(200)]
    frames.append(eth(ip4(A, B, 6, tcp(1, 2, 0, 0, 0xFF)[:-2] + b"\xf0")))
    for lt in (0, 1, 9, 101, 105, 108, 113, 127, 276, 999):
        m = FlowMeter()
        for i, f in enumerate(frames):
            m.packet(float(i), f, lt)
        m.flush()
        for c in m.finished:
            c.record()
            c.flow_record()


def test_private_address_space():
    assert is_private(socket.inet_aton("100.64.1.1"))
    assert is_private(socket.inet_aton("224.0.0.251"))
    assert not is_private(socket.inet_aton("8.8.8.8"))
    assert not is_private(socket.inet_pton(socket.AF_INET6, "ff02::fb"))
    assert is_private(socket.inet_pton(socket.AF_INET6, "fe80::1"))


def test_flow_record_first_packets():
    (c,), _ = (lambda recs_m: ([recs_m[1].finished[0]], None))(run(handshake_session()))
    f = c.flow_record()
    assert f["n_pkts"] == 8 and f["dirs"] == [0, 1, 0, 0, 1, 0, 1, 0]
    assert f["ip_lens"][:3] == [40, 40, 40] and f["ip_lens"][3] == 58
    assert f["iats"][0] == 0.0 and f["iats"][1] == pytest.approx(0.1)
    assert f["tcp_flags"][:2] == [SYN, SYN | ACK]
    _, m = run(handshake_session(), flow_packets=3)
    assert m.finished[0].flow_record()["n_pkts"] == 3


def test_content_gap_counts_missed_bytes_and_history_g():
    c, s = 1000, 5000
    pk = handshake_session()[:3] + [
        (100.3, eth(ip4(A, B, 6, tcp(40000, 80, c + 1, s + 1, ACK, b"x" * 100)))),
        (100.4, eth(ip4(A, B, 6, tcp(40000, 80, c + 201, s + 1, ACK, b"y" * 100)))),  # 100 unseen
        (100.5, eth(ip4(B, A, 6, tcp(80, 40000, s + 1, c + 301, ACK)))),
    ]
    (r,), _ = run(pk)
    assert r["missed_bytes"] == 100
    assert r["history"] == "ShADaG"
    assert r["orig_bytes"] == 300  # sizes come from sequence numbers, gap included


def test_no_gap_reported_for_partial_connections():
    pk = [(1.0, eth(ip4(A, B, 6, tcp(40000, 8080, 500, 900, ACK, b"x" * 10)))),
          (1.1, eth(ip4(B, A, 6, tcp(8080, 40000, 900, 1510, ACK))))]
    (r,), _ = run(pk)
    assert r["missed_bytes"] == 0 and "g" not in r["history"].lower()


def test_idle_connections_are_finished_as_time_passes():
    m = FlowMeter()
    for i in range(500):
        m.packet(i * 30.0, eth(ip4(A, B, 17, udp(1000 + i, 53, b"q"))), 1)
        assert len(m.conns) <= 3  # UDP: 1 min inactivity
    assert len(m.finished) >= 497
    m.flush()
    assert len(m.finished) == 500
    assert [c.start for c in m.finished] == sorted(c.start for c in m.finished)


# -- checksums: Zeek validates them by default (zeek -C / ignore_checksums skips it) ----------

def corrupt(frame: bytes, at: int) -> bytes:
    """``frame`` with one byte flipped at ``at`` (counted from the frame's start)."""
    return frame[:at] + bytes([frame[at] ^ 0xFF]) + frame[at + 1:]


ETH, IPH = 14, 20


def test_bad_ip_header_checksum_drops_the_packet_unless_ignored():
    bad = corrupt(eth(ip4(A, B, 17, udp(1000, 53, b"q"))), ETH + 10)  # the checksum itself
    recs, m = run([(1.0, bad)], ignore_checksums=False)
    assert recs == [] and m.stats.bad_checksums == 1  # Zeek: weird bad_IP_checksum, no conn
    recs, m = run([(1.0, bad)], ignore_checksums=True)
    assert len(recs) == 1 and m.stats.bad_checksums == 0


def test_bad_udp_checksum_is_seen_but_not_counted():
    # As Zeek 8.2.2 on suricata-verify eve-dns (a query with an offloaded checksum, a good
    # reply): history "Cd", SHR, orig_pkts 0, orig_bytes 0, duration from the bad query, and
    # zeekml_flow.log (Zeek's new_packet) has both packets.
    q = corrupt(eth(ip4(A, B, 17, udp(53679, 53, b"q" * 31))), ETH + IPH + 6)
    r = eth(ip4(B, A, 17, udp(53, 53679, b"r" * 47)))
    (rec,), m = run([(1.0, q), (1.372361, r)])
    assert (rec["history"], rec["conn_state"]) == ("Cd", "SHR")
    assert (rec["orig_pkts"], rec["orig_ip_bytes"], rec["resp_pkts"], rec["resp_ip_bytes"]) == (0, 0, 1, 75)
    assert (rec["orig_bytes"], rec["resp_bytes"]) == (0, 47)
    assert rec["duration"] == pytest.approx(0.372361)
    flow = m.finished[0].flow_record()
    assert flow["dirs"] == [0, 1] and flow["ip_lens"] == [59, 75]
    (rec,), _ = run([(1.0, q), (1.372361, r)], ignore_checksums=True)
    assert (rec["history"], rec["conn_state"], rec["orig_pkts"]) == ("Dd", "SF", 1)


def test_bad_checksum_history_is_scaled():
    q = corrupt(eth(ip4(A, B, 17, udp(5353, 5353, b"m"))), ETH + IPH + 6)
    (rec,), _ = run([(1.0 + i, q) for i in range(10)])
    assert rec["history"] == "CC" and rec["orig_pkts"] == 0  # the 1st and the 10th


def test_zero_udp_checksum_means_none_on_ipv4_only():
    v4 = eth(ip4(A, B, 17, udp(1000, 53, b"q")))
    v4 = v4[:ETH + IPH + 6] + b"\0\0" + v4[ETH + IPH + 8:]
    (rec,), _ = run([(1.0, v4)])
    assert rec["history"] == "D" and rec["orig_pkts"] == 1
    v6 = eth(ip6("2001:db8::1", "2001:db8::2", 17, udp(1000, 53, b"q")), 0x86DD)
    v6 = v6[:ETH + 40 + 6] + b"\0\0" + v6[ETH + 40 + 8:]
    (rec,), _ = run([(1.0, v6)])
    assert rec["history"] == "C" and rec["orig_pkts"] == 0  # IPv6 requires it


def test_bad_tcp_syn_then_good_syn_ack_is_two_conns():
    # As Zeek 8.2.2 on the slips test-cc capture (the capturing host's own packets offloaded):
    # the bad SYN makes a conn whose state never moves (history "C", OTH, no packets counted);
    # the SYN-ACK is then a reuse of the 5-tuple and starts a flipped conn.
    syn = corrupt(eth(ip4(A, B, 6, tcp(53110, 443, 1000, 0, SYN))), ETH + IPH + 16)
    synack = eth(ip4(B, A, 6, tcp(443, 53110, 5000, 1001, SYN | ACK)))
    recs, m = run([(1.0, syn), (1.0008, synack)])
    first, second = recs
    assert (first["history"], first["conn_state"], first["orig_pkts"], first["duration"]) == ("C", "OTH", 0, None)
    assert (second["id.orig_p"], second["history"], second["resp_pkts"]) == (53110, "^h", 1)
    assert m.stats.bad_checksums == 1
    (only,), _ = run([(1.0, syn), (1.0008, synack)], ignore_checksums=True)
    assert only["history"] == "Sh"


def test_bad_icmp_checksum_is_not_counted_and_has_no_history_letter():
    bad = corrupt(eth(ip4(A, B, 1, icmp(8, 0))), ETH + IPH + 2)
    (rec,), m = run([(1.0, bad)])
    assert (rec["orig_pkts"], rec["history"], rec["conn_state"]) == (0, None, "OTH")
    assert m.stats.bad_checksums == 1


def test_truncated_segment_is_not_validated():
    # Zeek checks a transport checksum only when the whole segment was captured (snaplen).
    frame = corrupt(eth(ip4(A, B, 17, udp(1000, 53, b"q" * 40))), ETH + IPH + 6)
    (rec,), _ = run([(1.0, frame[:-10])])
    assert rec["history"] == "D" and rec["orig_pkts"] == 1


# -- sequence arithmetic ------------------------------------------------------------------------

def test_seq_delta_and_relative_seq_across_the_32_bit_wrap():
    from zeekml.sources.flowmeter.tcp import relative_seq, seq_delta
    assert seq_delta(0, 0xFFFFFFFF) == 1 and seq_delta(0xFFFFFFFF, 0) == -1
    assert seq_delta(5, 5) == 0 and seq_delta(0x80000000, 0) == -0x80000000
    start = 0xFFFFFF00
    # no wrap yet: plain difference; before the start it is an underflow
    assert relative_seq(0xFFFFFF10, 0xFFFFFF08, 0, start) == (0x10, False)
    assert relative_seq(0xFFFFFEF0, 0xFFFFFF08, 0, start) == (-0x10, True)
    # the sequence number wrapped past 2**32: one wrap counted, relative keeps growing
    assert relative_seq(0x00000010, 0xFFFFFFF0, 0, start) == (0x110, False)
    # an old segment from before the wrap, seen after it: back to wrap 0
    assert relative_seq(0xFFFFFFF0, 0x00000010, 1, start) == (0xF0, False)


# -- service confirmation and the DNS timer, as Zeek 8.2.2 decides them ---------------------------

def _tcp_session(client_data, server_data, sport=45000, dport=22):
    """Handshake, then one payload packet per item (orig first), then a clean close."""
    c, s, t = 1000, 5000, 1.0
    pk = [(t, eth(ip4(A, B, 6, tcp(sport, dport, c, 0, SYN)))),
          (t + 0.01, eth(ip4(B, A, 6, tcp(dport, sport, s, c + 1, SYN | ACK)))),
          (t + 0.02, eth(ip4(A, B, 6, tcp(sport, dport, c + 1, s + 1, ACK))))]
    c += 1
    s += 1
    t += 0.03
    for cd, sd in zip(client_data, server_data):
        if sd:
            pk.append((t, eth(ip4(B, A, 6, tcp(dport, sport, s, c, PSH | ACK, sd)))))
            s += len(sd)
            t += 0.01
        if cd:
            pk.append((t, eth(ip4(A, B, 6, tcp(sport, dport, c, s, PSH | ACK, cd)))))
            c += len(cd)
            t += 0.01
    pk += [(t, eth(ip4(A, B, 6, tcp(sport, dport, c, s, FIN | ACK)))),
           (t + 0.01, eth(ip4(B, A, 6, tcp(dport, sport, s, c + 1, FIN | ACK)))),
           (t + 0.02, eth(ip4(A, B, 6, tcp(sport, dport, c + 1, s + 1, ACK))))]
    return pk


NEWKEYS = b"\x00\x00\x00\x0c\x0a\x15" + bytes(10)


def test_ssh_is_named_only_once_the_key_exchange_completes():
    # nmap ssh-brute against a busy server (slips test19): banners, no key exchange -> no service
    (r,), _ = run(_tcp_session([b"SSH-2.0-libssh2_1.11.0\r\n"], [b"Exceeded MaxStartups\r\n"]))
    assert r["service"] is None
    (r,), _ = run(_tcp_session([b"SSH-2.0-libssh2_1.11.0\r\n"], [b"SSH-2.0-OpenSSH_9.6\r\n"]))
    assert r["service"] is None
    # NEWKEYS from the server (possibly behind its key-exchange reply in the same segment)
    kex_reply = b"\x00\x00\x01\x04\x0a\x1f" + bytes(254)
    (r,), _ = run(_tcp_session([b"SSH-2.0-libssh2_1.11.0\r\n", b""],
                               [b"SSH-2.0-OpenSSH_9.6\r\n", kex_reply + NEWKEYS]))
    assert r["service"] == "ssh"
    # SSH1: the client's SSH_CMSG_SESSION_KEY (type 3) completes it
    body = b"\x03" + bytes(271)  # type, data, CRC: 272 bytes, so 8 bytes of padding
    session_key = struct.pack("!I", len(body)) + bytes(8 - len(body) % 8) + body
    (r,), _ = run(_tcp_session([b"SSH-1.5-OpenSSH_6.2\n", session_key],
                               [b"SSH-1.99-OpenSSH_6.6.1\r\n", b""]))
    assert r["service"] == "ssh"


def test_dns_timer_by_port_fires_at_the_next_packet():
    # slips test7's mDNS: packets at +0, +1, +4, +10.1, +11.1, +14.1 then +23.1. Zeek's DNS timer
    # (due at +10, re-armed at dispatch time + 10) runs at +10.1 (idle 6.1 s: re-arm to +20.1)
    # and at +23.1 (idle 9 s >= 9: removed), so the last packet starts a second conn. The payload
    # is not DNS: port 5353 alone attaches the analyzer.
    gaps = [0, 1, 4, 10.1, 11.1, 14.1, 23.1]
    pk = [(1000.0 + g, eth(ip4("192.168.2.1", "224.0.0.251", 17, udp(5353, 5353, b"x" * 20))))
          for g in gaps]
    recs, _ = run(pk)
    assert [r["orig_pkts"] for r in recs] == [6, 1]
    assert recs[0]["duration"] == pytest.approx(14.1)
    # on a port without Zeek's DNS analyzer only UDP inactivity (60 s) applies
    pk = [(1000.0 + g, eth(ip4("192.168.2.1", "10.0.0.9", 17, udp(4000, 4001, b"x" * 20))))
          for g in gaps]
    recs, _ = run(pk)
    assert [r["orig_pkts"] for r in recs] == [7]
