"""Tunnel and link-layer decoders of the flow meter on hand-built headers."""
from __future__ import annotations

import socket
import struct

from zeekml.sources.flowmeter import decode as dec
from zeekml.sources.flowmeter import FlowMeter


def ip4(src="10.1.1.1", dst="10.2.2.2", proto=17, payload=b"\x00\x01\x00\x02\x00\x09\x00\x00x"):
    # A valid header checksum; UDP payloads here carry checksum 0 (IPv4: none computed).
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    s = sum(struct.unpack("!10H", hdr))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return hdr[:10] + struct.pack("!H", ~s & 0xFFFF) + hdr[12:] + payload


def ip6(payload=b"", nh=59):
    return struct.pack("!IHBB", 6 << 28, len(payload), nh, 64) + b"\x20\x01" + bytes(14) \
        + b"\x20\x01" + bytes(13) + b"\x01" + payload


def udp(sport, dport, data):
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def eth(payload, etype=0x0800):
    return bytes(12) + struct.pack("!H", etype) + payload


def test_gtpu_with_and_without_optional_fields():
    inner = ip4()
    plain = struct.pack("!BBHI", 0x30, 0xFF, len(inner), 7) + inner
    assert dec.gtpu(plain, 0, len(plain)) == (8, 4)
    ext = struct.pack("!BBHI", 0x34, 0xFF, len(inner) + 8, 7) + b"\x00\x00\x00\x85" \
        + b"\x01\x00\x01\x00" + inner  # one extension header (length 1 = 4 bytes), next = 0
    assert dec.gtpu(ext, 0, len(ext)) == (16, 4)
    assert dec.gtpu(b"\x30\x01" + plain[2:], 0, len(plain)) is None  # not a G-PDU


def test_ayiya_and_teredo():
    inner = ip6(b"", 59)
    hdr = bytes([0x41, 0x52, 0x11, 41]) + b"\x00" * 4 + b"I" * 16 + b"S" * 20
    pkt = hdr + inner
    assert dec.ayiya(pkt, 0, len(pkt)) == (len(hdr), 6)
    assert dec.teredo(inner, 0, len(inner)) == 0
    origin = b"\x00\x00" + b"\x12\x34" + b"\x01\x02\x03\x04"
    assert dec.teredo(origin + inner, 0, len(origin) + len(inner)) == 8
    assert dec.teredo(b"\x45" + inner[1:], 0, len(inner)) is None
    udp_payload = ip6(udp(1, 2, b"abc"), 17)
    assert dec.teredo(udp_payload + b"x", 0, len(udp_payload) + 1) is None  # length must match


def test_gre_variants():
    inner = ip4()
    assert dec.gre(struct.pack("!HH", 0, 0x0800) + inner, 0, 4 + len(inner)) == ("ip", 4, 4)
    keyed = struct.pack("!HHI", 0x2000, 0x86DD, 5) + ip6()
    assert dec.gre(keyed, 0, len(keyed)) == ("ip", 8, 6)
    erspan2 = struct.pack("!HHI", 0x1000, 0x88BE, 1) + bytes(8) + eth(inner)
    assert dec.gre(erspan2, 0, len(erspan2)) == ("eth", 16, 0)
    erspan1 = struct.pack("!HH", 0, 0x88BE) + eth(inner)
    assert dec.gre(erspan1, 0, len(erspan1)) == ("eth", 4, 0)
    erspan3 = struct.pack("!HHI", 0x1000, 0x22EB, 1) + bytes(12) + eth(inner)
    assert dec.gre(erspan3, 0, len(erspan3)) == ("eth", 20, 0)
    pptp = struct.pack("!HHHHI", 0x3001, 0x880B, len(inner) + 4, 9, 1) + b"\xff\x03\x00\x21" + inner
    assert dec.gre(pptp, 0, len(pptp)) == ("ip", 16, 4)


def test_meter_follows_gtpu_and_ipip():
    inner = ip4("10.9.9.9", "10.8.8.8", 17, udp(1234, 5678, b"hi"))
    gtp = struct.pack("!BBHI", 0x30, 0xFF, len(inner), 7) + inner
    m = FlowMeter()
    m.packet(1.0, eth(ip4("192.0.2.1", "192.0.2.2", 17, udp(2152, 2152, gtp))))
    m.packet(2.0, eth(ip4("192.0.2.1", "192.0.2.2", 4, inner)))
    m.flush()
    recs = {(r["id.orig_p"], r["id.resp_p"]): r for r in (c.record() for c in m.finished)}
    assert recs[(2152, 2152)]["service"] == "gtpv1"
    inner_r = recs[(1234, 5678)]
    assert inner_r["orig_pkts"] == 2 and len(inner_r["tunnel_parents"]) == 2


def test_fabricpath_and_sll2():
    inner = ip4()
    fp = bytes(12) + b"\x89\x03" + b"\x00\x00" + eth(inner)
    assert dec.link_to_ip(1, fp) == (30, 4)
    sll2 = b"\x08\x00" + bytes(18) + inner
    assert dec.link_to_ip(276, sll2) == (20, 4)
    vlan_sll = bytes(14) + b"\x81\x00" + b"\x00\x05\x08\x00" + inner
    assert dec.link_to_ip(113, vlan_sll) == (20, 4)
