"""Link-layer, IP and tunnel decoding for the built-in flow meter.

Pure functions over ``bytes``/``memoryview`` with ``struct``: no per-packet objects, so the meter
stays fast. Every function returns ``None`` (or a short tuple) for anything it cannot decode; none of
them raise on hostile input (callers still wrap them, belt and braces).

Link layers follow the pcap LINKTYPE_* numbers: Ethernet (802.1Q/QinQ, MPLS, PPPoE, Cisco
FabricPath), NULL/loopback, raw IP, PPP, Linux SLL/SLL2, radiotap and 802.11 data frames.
"""
from __future__ import annotations

import struct

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_LE16 = struct.Struct("<H")
_LE32 = struct.Struct("<I")

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_VLAN = (0x8100, 0x88A8, 0x9100, 0x9200)
ETH_MPLS = (0x8847, 0x8848)
ETH_PPPOE_SESSION = 0x8864
ETH_FABRICPATH = 0x8903

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_PPP = 9
LINKTYPE_RAW = 101
LINKTYPE_RAW_ALT = (12, 14)
LINKTYPE_PPP_HDLC = 50
LINKTYPE_PPP_ETHER = 51
LINKTYPE_IEEE802_11 = 105
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_RADIOTAP = 127
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

SUPPORTED_LINKTYPES = frozenset({0, 1, 9, 12, 14, 50, 51, 101, 105, 108, 113, 127, 228, 229, 276})


def _ip_version(buf: bytes, off: int) -> int | None:
    """Offset ``off`` starts an IP header: return 4/6 from the version nibble, else None."""
    if off >= len(buf):
        return None
    v = buf[off] >> 4
    return v if v in (4, 6) else None


def ppp_proto_to_ip(proto: int) -> int | None:
    if proto == 0x0021:
        return 4
    if proto == 0x0057:
        return 6
    return None


def ethernet(buf: bytes, off: int = 0, depth: int = 0) -> tuple[int, int] | None:
    """Ethernet frame at ``off``: return ``(ip_offset, ip_version)`` or None."""
    n = len(buf)
    if off + 14 > n or depth > 4:
        return None
    etype = _U16.unpack_from(buf, off + 12)[0]
    off += 14
    while True:
        if etype == ETH_IPV4:
            return off, 4
        if etype == ETH_IPV6:
            return off, 6
        if etype in ETH_VLAN:
            if off + 4 > n:
                return None
            etype = _U16.unpack_from(buf, off + 2)[0]
            off += 4
            continue
        if etype in ETH_MPLS:
            return mpls(buf, off)
        if etype == ETH_PPPOE_SESSION:
            # PPPoE header (6 bytes) then the 2-byte PPP protocol.
            if off + 8 > n:
                return None
            v = ppp_proto_to_ip(_U16.unpack_from(buf, off + 6)[0])
            return (off + 8, v) if v else None
        if etype == ETH_FABRICPATH:
            # Cisco FabricPath: 2 more tag bytes, then a whole inner Ethernet frame.
            return ethernet(buf, off + 2, depth + 1)
        if etype <= 1500:
            # 802.3 length field: LLC/SNAP with an ethertype, else not IP.
            if off + 8 <= n and buf[off] == 0xAA and buf[off + 1] == 0xAA and buf[off + 2] == 0x03:
                etype = _U16.unpack_from(buf, off + 6)[0]
                off += 8
                continue
            return None
        return None


def mpls(buf: bytes, off: int) -> tuple[int, int] | None:
    n = len(buf)
    for _ in range(16):
        if off + 4 > n:
            return None
        bos = buf[off + 2] & 0x01
        off += 4
        if bos:
            v = _ip_version(buf, off)
            if v:
                return off, v
            # Pseudowire with control word + Ethernet is not IP here; try Ethernet.
            return None
    return None


def ieee80211(buf: bytes, off: int) -> tuple[int, int] | None:
    """An 802.11 frame at ``off``; data frames with LLC/SNAP carry IP."""
    n = len(buf)
    if off + 24 > n:
        return None
    fc0 = buf[off]
    fc1 = buf[off + 1]
    ftype = (fc0 >> 2) & 0x3
    subtype = (fc0 >> 4) & 0xF
    if ftype != 2:
        return None
    if subtype & 0x4:  # null-function and friends: no payload
        return None
    if fc1 & 0x40:  # protected frame: we cannot read it
        return None
    hlen = 24
    if (fc1 & 0x03) == 0x03:
        hlen += 6
    if subtype & 0x8:  # QoS data
        hlen += 2
        if fc1 & 0x80:  # +HTC (order bit on QoS frames)
            hlen += 4
    off += hlen
    if off + 8 > n:
        return None
    if buf[off] != 0xAA or buf[off + 1] != 0xAA or buf[off + 2] != 0x03:
        return None
    etype = _U16.unpack_from(buf, off + 6)[0]
    off += 8
    if etype == ETH_IPV4:
        return off, 4
    if etype == ETH_IPV6:
        return off, 6
    return None


def link_to_ip(linktype: int, buf: bytes) -> tuple[int, int] | None:
    """Decode the link layer: ``(ip_offset, ip_version)`` or None when the frame carries no IP."""
    if linktype == LINKTYPE_ETHERNET:
        return ethernet(buf, 0)
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6) or linktype in LINKTYPE_RAW_ALT:
        v = _ip_version(buf, 0)
        return (0, v) if v else None
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if len(buf) < 4:
            return None
        fam = (_U32 if linktype == LINKTYPE_LOOP else _LE32).unpack_from(buf, 0)[0]
        if linktype == LINKTYPE_NULL and fam > 0xFFFF:
            fam = _U32.unpack_from(buf, 0)[0]  # written on a big-endian host
        if fam == 2:
            return 4, 4
        if fam in (10, 23, 24, 28, 30):
            return 4, 6
        return None
    if linktype in (LINKTYPE_PPP, LINKTYPE_PPP_HDLC):
        off = 0
        if len(buf) >= 2 and buf[0] == 0xFF and buf[1] == 0x03:
            off = 2
        if off + 2 > len(buf):
            return None
        if buf[off] & 0x01:  # compressed 1-byte protocol field
            v = ppp_proto_to_ip(buf[off])
            return (off + 1, v) if v else None
        v = ppp_proto_to_ip(_U16.unpack_from(buf, off)[0])
        return (off + 2, v) if v else None
    if linktype == LINKTYPE_PPP_ETHER:
        if len(buf) < 8:
            return None
        v = ppp_proto_to_ip(_U16.unpack_from(buf, 6)[0])
        return (8, v) if v else None
    if linktype == LINKTYPE_LINUX_SLL:
        if len(buf) < 16:
            return None
        return _etype_at(buf, _U16.unpack_from(buf, 14)[0], 16)
    if linktype == LINKTYPE_LINUX_SLL2:
        if len(buf) < 20:
            return None
        return _etype_at(buf, _U16.unpack_from(buf, 0)[0], 20)
    if linktype == LINKTYPE_RADIOTAP:
        if len(buf) < 4:
            return None
        return ieee80211(buf, _LE16.unpack_from(buf, 2)[0])
    if linktype == LINKTYPE_IEEE802_11:
        return ieee80211(buf, 0)
    return None


def _etype_at(buf: bytes, etype: int, off: int) -> tuple[int, int] | None:
    if etype == ETH_IPV4:
        return off, 4
    if etype == ETH_IPV6:
        return off, 6
    if etype in ETH_VLAN or etype in ETH_MPLS or etype == ETH_PPPOE_SESSION:
        # Re-enter the Ethernet decoder with a fake 14-byte header ending in this ethertype.
        fake = bytes(12) + _U16.pack(etype) + bytes(buf[off:])
        r = ethernet(fake, 0)
        return (r[0] - 14 + off, r[1]) if r else None
    return None


# --- tunnels -------------------------------------------------------------------------------

def gre(buf: bytes, off: int, end: int) -> tuple[str, int, int] | None:
    """GRE payload at ``off``: return ``(kind, inner_offset, inner_version_or_0)``.

    ``kind`` is "ip" (inner IP, version given) or "eth" (inner Ethernet frame: transparent
    Ethernet bridging or ERSPAN). Version 1 (PPTP enhanced GRE) carries PPP.
    """
    if off + 4 > end:
        return None
    flags = _U16.unpack_from(buf, off)[0]
    proto = _U16.unpack_from(buf, off + 2)[0]
    version = flags & 0x7
    p = off + 4
    if version == 0:
        if flags & 0x8000:
            p += 4  # checksum + reserved
        if flags & 0x2000:
            p += 4  # key
        if flags & 0x1000:
            p += 4  # sequence number
        if flags & 0x4000:  # routing present (RFC 1701): not supported
            return None
    elif version == 1:
        if proto != 0x880B:
            return None
        p += 4  # key (payload length + call id), always present
        if flags & 0x1000:
            p += 4
        if flags & 0x0080:
            p += 4  # acknowledgment
        if p >= end:
            return None  # a bare ack carries no payload
        if p + 2 <= end and buf[p] == 0xFF and buf[p + 1] == 0x03:
            p += 2
        if p + 2 > end:
            return None
        v = ppp_proto_to_ip(_U16.unpack_from(buf, p)[0])
        return ("ip", p + 2, v) if v else None
    else:
        return None
    if p > end:
        return None
    if proto == ETH_IPV4:
        return "ip", p, 4
    if proto == ETH_IPV6:
        return "ip", p, 6
    if proto == 0x6558:
        return "eth", p, 0
    if proto == 0x88BE:  # ERSPAN type II (sequence bit set) or type I (no header)
        if flags & 0x1000:
            return "eth", p + 8, 0
        return "eth", p, 0
    if proto == 0x22EB:  # ERSPAN type III: 12-byte header, +8 with the platform sub-header
        if p + 12 > end:
            return None
        o_bit = buf[p + 11] & 0x01
        return "eth", p + 12 + (8 if o_bit else 0), 0
    return None


def vxlan(buf: bytes, off: int, end: int) -> int | None:
    """VXLAN header at ``off`` (UDP 4789): offset of the inner Ethernet frame."""
    if off + 8 > end or not (buf[off] & 0x08):
        return None
    return off + 8


def ayiya(buf: bytes, off: int, end: int) -> tuple[int, int] | None:
    """AYIYA header at ``off`` (UDP 5072): ``(inner_offset, version)``."""
    if off + 8 > end:
        return None
    id_len = 1 << (buf[off] >> 4)
    sig_len = (buf[off + 1] >> 4) * 4
    opcode = buf[off + 2] & 0x0F
    nh = buf[off + 3]
    p = off + 8 + id_len + sig_len
    if opcode != 1 or p > end:
        return None
    if nh == 41:
        return p, 6
    if nh == 4:
        return p, 4
    return None


def gtpu(buf: bytes, off: int, end: int) -> tuple[int, int] | None:
    """GTPv1-U header at ``off`` (UDP 2152) carrying a G-PDU: ``(inner_offset, version)``."""
    if off + 8 > end:
        return None
    flags = buf[off]
    if (flags >> 5) != 1 or not (flags & 0x10) or buf[off + 1] != 0xFF:
        return None
    p = off + 8
    if flags & 0x07:
        if p + 4 > end:
            return None
        next_ext = buf[p + 3]
        p += 4
        while flags & 0x04 and next_ext:
            if p >= end:
                return None
            ext_len = buf[p] * 4
            if ext_len == 0 or p + ext_len > end:
                return None
            next_ext = buf[p + ext_len - 1]
            p += ext_len
    v = _ip_version(buf, p)
    if v is None or p >= end:
        return None
    return p, v


def teredo(buf: bytes, off: int, end: int) -> int | None:
    """Teredo (any UDP port, as Zeek's detection): offset of an inner IPv6 packet or None.

    Accepts the optional authentication and origin-indication headers, then requires an IPv6
    header whose payload length exactly fills the UDP payload.
    """
    p = off
    if p + 2 <= end and buf[p] == 0x00 and buf[p + 1] == 0x01:  # authentication
        if p + 4 > end:
            return None
        p += 4 + buf[p + 2] + buf[p + 3] + 8 + 1
    if p + 2 <= end and buf[p] == 0x00 and buf[p + 1] == 0x00:  # origin indication
        p += 8
    if p + 40 > end or (buf[p] >> 4) != 6:
        return None
    plen = _U16.unpack_from(buf, p + 4)[0]
    nh = buf[p + 6]
    if p + 40 + plen != end and not (nh == 59 and p + 40 + plen <= end):
        return None  # (a bubble, "no next header", may carry trailing bytes)
    if nh not in (0, 6, 17, 43, 44, 58, 59, 60):
        return None
    return p


# -- checksums (Zeek validates them unless run with -C / ignore_checksums) -----------------------
# The ones'-complement sum of 16-bit words is the big-endian integer of the bytes modulo 0xFFFF
# (2**16 = 1 mod 0xFFFF), so one int.from_bytes per packet does it in C. A correct checksum makes
# the sum 0xFFFF, i.e. 0 modulo 0xFFFF (the sum of a real header is never all zero).

def _words(data: bytes | memoryview) -> int:
    v = int.from_bytes(data, "big")
    return v << 8 if len(data) & 1 else v  # an odd length is padded with a zero byte


def ip4_header_checksum_ok(buf: bytes, off: int, ihl: int) -> bool:
    """Whether the IPv4 header at ``off`` (``ihl`` bytes) has a valid checksum."""
    return _words(buf[off:off + ihl]) % 0xFFFF == 0


def transport_checksum_ok(buf: bytes, poff: int, plen: int, src: bytes, dst: bytes,
                          proto: int) -> bool:
    """Whether the TCP, UDP or ICMPv6 segment at ``poff`` (``plen`` bytes, all captured) has a
    valid checksum over the IPv4/IPv6 pseudo-header; ICMPv4 (``proto`` 1) has none."""
    total = _words(buf[poff:poff + plen])
    if proto != 1:
        total += int.from_bytes(src, "big") + int.from_bytes(dst, "big") + proto + plen
    return total % 0xFFFF == 0
