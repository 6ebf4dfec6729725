"""Community ID v1 (corelight/community-id-spec): one flow hash that Zeek, Suricata and SIEMs share.

``1:`` + base64(sha1(seed, saddr, daddr, proto, 0, sport, dport)) with the endpoints ordered so
both directions of a flow get the same id. For ICMP the type/code pair is mapped to "port
equivalents" (echo request 8 pairs with echo reply 0, ...) so request and reply match; types
without a counterpart are one-way and keep their order.
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
import struct

import pyarrow as pa

PROTO_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17, "icmp6": 58, "ipv6-icmp": 58, "sctp": 132}
_WITH_PORTS = {1, 6, 17, 58, 132}

# type -> counterpart type, from the spec's reference implementation.
_ICMP4_PAIRS = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 9: 10, 17: 18, 18: 17}
_ICMP6_PAIRS = {128: 129, 129: 128, 130: 131, 131: 130, 133: 134, 134: 133, 135: 136,
                136: 135, 139: 140, 140: 139, 144: 145, 145: 144}


def community_id_v1(saddr: str, daddr: str, proto: int | str, sport: int | None = None,
                    dport: int | None = None, seed: int = 0) -> str:
    """The Community ID v1 string of one flow, e.g. ``1:wCb3OG7yAFWelaUydu0D+125CLM=``.

    Args:
        saddr: IPv4 or IPv6 address of the originator.
        daddr: address of the responder (same family as ``saddr``).
        proto: IP protocol number or a name (``tcp``, ``udp``, ``icmp``; Zeek's ``icmp`` on an
            IPv6 address is ICMPv6).
        sport: originator port; for ICMP the type (Zeek's ``id.orig_p``). Required for TCP,
            UDP, SCTP and ICMP; ignored for other protocols.
        dport: responder port; for ICMP the code (Zeek's ``id.resp_p``), required as ``sport``.
        seed: the spec's 16-bit seed (default 0).

    Raises:
        ValueError: unparseable address, mixed families, unknown protocol name or missing ports.
    """
    a = ipaddress.ip_address(saddr)
    b = ipaddress.ip_address(daddr)
    if a.version != b.version:
        raise ValueError(f"community_id: {saddr} and {daddr} are not the same IP version")
    if isinstance(proto, str):
        name = proto.lower()
        if name not in PROTO_NUMBERS:
            raise ValueError(f"community_id: unknown protocol {proto!r}")
        num = PROTO_NUMBERS[name]
    else:
        num = int(proto)
    if num == 1 and a.version == 6:
        num = 58   # Zeek logs ICMPv6 as proto "icmp"
    sa, da = a.packed, b.packed
    if num in _WITH_PORTS:
        if sport is None or dport is None:
            raise ValueError(f"community_id: protocol {num} needs both ports")
        sp, dp = int(sport), int(dport)
        one_way = False
        if num in (1, 58):
            pairs = _ICMP4_PAIRS if num == 1 else _ICMP6_PAIRS
            if sp in pairs:
                dp = pairs[sp]
            else:
                one_way = True
        if not (one_way or sa < da or (sa == da and sp < dp)):
            sa, da, sp, dp = da, sa, dp, sp
        data = struct.pack("!H", seed) + sa + da + struct.pack("!BBHH", num, 0, sp, dp)
    else:
        if not (sa <= da):
            sa, da = da, sa
        data = struct.pack("!H", seed) + sa + da + struct.pack("!BB", num, 0)
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode("ascii")


def community_ids(table: pa.Table, seed: int = 0) -> list[str | None]:
    """Community ID of every conn of a ``CONN_SCHEMA`` table; None where the conn lacks an
    address, a known protocol or its ports (Zeek's ``unknown_transport``)."""
    cols = [table.column(n).to_pylist() for n in ("id.orig_h", "id.resp_h", "proto", "id.orig_p",
                                                   "id.resp_p")]
    out: list[str | None] = []
    for sa, da, proto, sp, dp in zip(*cols):
        try:
            out.append(community_id_v1(sa, da, proto, sp, dp, seed) if sa and da and proto else None)
        except ValueError:
            out.append(None)
    return out
