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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
        ValueError: unparseable address, mixed families, unknown protocol name, missing ports
            or a port outside 0-65535.
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
        if not (0 <= sp <= 0xFFFF and 0 <= dp <= 0xFFFF):
            # a port Zeek cannot log (a hand-made or corrupt record): no flow to name
            raise ValueError(f"community_id: port {sp if not 0 <= sp <= 0xFFFF else dp} "
                             "out of range 0-65535")
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


def _lookup(pairs: dict[int, int]) -> np.ndarray:
    """ICMP type -> counterpart type as an array over every 16-bit value; -1 = one-way."""
    out = np.full(1 << 16, -1, dtype=np.int64)
    for k, v in pairs.items():
        out[k] = v
    return out


_ICMP4_LUT = _lookup(_ICMP4_PAIRS)
_ICMP6_LUT = _lookup(_ICMP6_PAIRS)


def _packed(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Per row of an address column: IP version (0 = unset or unparseable) and the packed
    address in 16 bytes (an IPv4 address in the first 4, zeros after: byte order compares the
    same as on the 4 bytes, which is what the spec orders by)."""
    enc = pc.dictionary_encode(col).combine_chunks() if isinstance(col, pa.ChunkedArray) \
        else pc.dictionary_encode(col)
    words = enc.dictionary.to_pylist()
    version = np.zeros(len(words) + 1, dtype=np.int8)     # last entry: the null row
    addr = np.zeros((len(words) + 1, 16), dtype=np.uint8)
    for i, w in enumerate(words):
        try:
            a = ipaddress.ip_address(w)
        except ValueError:
            continue
        version[i] = a.version
        p = a.packed
        addr[i, :len(p)] = np.frombuffer(p, dtype=np.uint8)
    idx = pc.fill_null(enc.indices, len(words)).to_numpy(zero_copy_only=False).astype(np.int64)
    return version[idx], addr[idx]


def _ints(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    col = table.column(name)
    valid = col.is_valid().to_numpy(zero_copy_only=False).astype(bool)
    vals = pc.fill_null(pc.cast(col, pa.int64()), 0).to_numpy(zero_copy_only=False)
    return vals.astype(np.int64), valid


def _less(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise ``a < b`` and ``a == b`` of two (n, 16) byte matrices, as the bytes compare."""
    a64, b64 = a.view(">u8"), b.view(">u8")       # (n, 2): big-endian halves compare as bytes
    lt = (a64[:, 0] < b64[:, 0]) | ((a64[:, 0] == b64[:, 0]) & (a64[:, 1] < b64[:, 1]))
    eq = (a64[:, 0] == b64[:, 0]) & (a64[:, 1] == b64[:, 1])
    return lt, eq


def community_id_column(table: pa.Table, seed: int = 0) -> pa.Array:
    """Community ID v1 of every conn of a table with Zeek's ``id.orig_h``, ``id.orig_p``,
    ``id.resp_h``, ``id.resp_p`` and ``proto`` columns, column by column: the same strings as
    ``community_id_v1`` row by row (a test keeps them equal), null where that raises (an unset
    or unparseable address, mixed IP versions, a protocol name it does not know, a port
    missing). Only the sha1 is per row; verdicts of a busy sensor are rendered with it.

    Returns:
        a ``string`` array of ``table.num_rows`` values.
    """
    n = table.num_rows
    if n == 0:
        return pa.array([], pa.string())
    v_s, a_s = _packed(table.column("id.orig_h"))
    v_d, a_d = _packed(table.column("id.resp_h"))
    proto = pc.utf8_lower(pc.cast(table.column("proto"), pa.string()))
    penc = pc.dictionary_encode(proto).combine_chunks()
    names = penc.dictionary.to_pylist()
    nums = np.array([PROTO_NUMBERS.get(x, -1) for x in names] + [-1], dtype=np.int64)
    num = nums[pc.fill_null(penc.indices, len(names)).to_numpy(zero_copy_only=False)
               .astype(np.int64)]
    num = np.where((num == 1) & (v_s == 6), 58, num)        # Zeek logs ICMPv6 as "icmp"
    sp, sp_ok = _ints(table, "id.orig_p")
    dp, dp_ok = _ints(table, "id.resp_p")
    ports = np.isin(num, list(_WITH_PORTS))
    in_range = (sp >= 0) & (sp <= 0xFFFF) & (dp >= 0) & (dp <= 0xFFFF)
    ok = (v_s != 0) & (v_s == v_d) & (num >= 0) & (~ports | (sp_ok & dp_ok & in_range))
    # ICMP: the type's counterpart stands in for the code, so request and reply match
    icmp4, icmp6 = num == 1, num == 58
    mate = np.where(icmp4, _ICMP4_LUT[sp & 0xFFFF], np.where(icmp6, _ICMP6_LUT[sp & 0xFFFF], -1))
    one_way = (icmp4 | icmp6) & (mate < 0)
    dp = np.where(mate >= 0, mate, dp)
    lt, eq = _less(a_s, a_d)
    swap = np.where(ports, ~one_way & ~(lt | (eq & (sp < dp))), ~(lt | eq))
    lo_a = np.where(swap[:, None], a_d, a_s)
    hi_a = np.where(swap[:, None], a_s, a_d)
    lo_p = np.where(swap, dp, sp)
    hi_p = np.where(swap, sp, dp)
    out = np.full(n, None, dtype=object)
    sha1 = hashlib.sha1
    for version in (4, 6):
        alen = 4 if version == 4 else 16
        for with_ports in (True, False):
            rows = np.flatnonzero(ok & (v_s == version) & (ports == with_ports))
            if not len(rows):
                continue
            width = 2 + 2 * alen + 2 + (4 if with_ports else 0)
            m = np.zeros((len(rows), width), dtype=np.uint8)
            m[:, 0], m[:, 1] = (seed >> 8) & 0xFF, seed & 0xFF
            m[:, 2:2 + alen] = lo_a[rows, :alen]
            m[:, 2 + alen:2 + 2 * alen] = hi_a[rows, :alen]
            m[:, 2 + 2 * alen] = num[rows]
            if with_ports:
                at = 4 + 2 * alen
                m[:, at:at + 2] = lo_p[rows].astype(">u2").view(np.uint8).reshape(-1, 2)
                m[:, at + 2:at + 4] = hi_p[rows].astype(">u2").view(np.uint8).reshape(-1, 2)
            buf = m.tobytes()
            # each 20-byte digest plus a zero byte is 21 bytes = 28 base64 characters, the
            # same as the digest's own encoding with its final "=" read as "A": one
            # b64encode for all rows instead of one each
            digests = b"\0".join(sha1(buf[i:i + width]).digest()
                                 for i in range(0, len(buf), width)) + b"\0"
            text = np.frombuffer(base64.b64encode(digests), dtype="S28").copy()
            chars = text.view("S1").reshape(-1, 28)
            chars[:, 27] = b"="
            out[rows] = ["1:" + t.decode("ascii") for t in text.tolist()]
    return pa.array(out.tolist(), pa.string())
