"""Port-independent service sniffing for the built-in flow meter.

Looks at the first payload bytes of each direction and names the protocol the way Zeek's conn.log
``service`` column does (``dns``, ``http``, ``ssl``, ``ssh``, ``dhcp``, ``ntp``, ``ftp``, ...). It
never guesses from a port number alone: a payload has to look like the protocol.
"""
from __future__ import annotations

import re
import struct

_U16 = struct.Struct("!H")
_HTTP_REQ = re.compile(rb"^(GET|POST|HEAD|PUT|DELETE|OPTIONS|CONNECT|TRACE|PATCH|PROPFIND) \S+ HTTP/1\.[01]\r?\n")
_HTTP_REQ_START = re.compile(rb"^(GET|POST|HEAD|PUT|DELETE|OPTIONS|CONNECT|TRACE|PATCH|PROPFIND) [/h*]")


def _dns_name_ok(p: bytes, off: int, end: int) -> int:
    """Walk one DNS name; return the offset after it, or -1."""
    for _ in range(128):
        if off >= end:
            return -1
        n = p[off]
        if n == 0:
            return off + 1
        if n & 0xC0 == 0xC0:
            return off + 2 if off + 2 <= end else -1
        if n & 0xC0:
            return -1
        off += 1 + n
    return -1


def looks_dns(p: bytes, tcp: bool = False) -> bool:
    if tcp:
        if len(p) < 14:
            return False
        if _U16.unpack_from(p, 0)[0] + 2 < len(p):
            return False
        p = p[2:]
    if len(p) < 12:
        return False
    flags = _U16.unpack_from(p, 2)[0]
    opcode = (flags >> 11) & 0xF
    if opcode not in (0, 1, 2, 4, 5):
        return False
    if flags & 0x0040:  # Z bit must be zero
        return False
    qd, an, ns, ar = struct.unpack_from("!HHHH", p, 4)
    if qd > 16 or an > 256 or ns > 256 or ar > 256 or (qd + an + ns + ar) == 0:
        return False
    off = 12
    if qd:
        off = _dns_name_ok(p, off, len(p))
        if off < 0 or off + 4 > len(p):
            return False
        qclass = _U16.unpack_from(p, off + 2)[0] & 0x7FFF
        if qclass not in (1, 3, 4, 254, 255):
            return False
    return True


def looks_dhcp(p: bytes) -> bool:
    return len(p) >= 240 and p[0] in (1, 2) and p[1] == 1 and p[236:240] == b"\x63\x82\x53\x63"


def looks_ntp(p: bytes) -> bool:
    if len(p) < 48:
        return False
    version = (p[0] >> 3) & 0x7
    mode = p[0] & 0x7
    return 1 <= version <= 4 and 1 <= mode <= 5 and len(p) in (48, 52, 60, 68, 72, 120)


def looks_tls(p: bytes) -> bool:
    return (len(p) >= 6 and p[0] == 0x16 and p[1] == 0x03 and p[2] <= 0x04 and p[5] in (1, 2)) or (
        len(p) >= 3 and p[0] & 0x80 and p[2] == 0x01 and len(p) > 10)  # SSLv2 client hello


def sniff_tcp(payload: bytes, is_orig: bool) -> str | None:
    """Name the service of a TCP connection from one direction's first payload, or None."""
    if not payload:
        return None
    if payload[:4] == b"SSH-":
        return "ssh"
    if is_orig:
        if _HTTP_REQ.match(payload) or _HTTP_REQ_START.match(payload):
            return "http"
    elif payload[:7] == b"HTTP/1.":
        return "http"
    if payload[0] == 0x16 and looks_tls(payload):
        return "ssl"
    if not is_orig and re.match(rb"^220[ -].*\r\n", payload) and b"FTP" in payload[:200].upper():
        return "ftp"
    if looks_dns(payload, tcp=True):
        return "dns"
    return None


def sniff_udp(payload: bytes) -> str | None:
    """Name the service of a UDP connection from a datagram's payload, or None."""
    if looks_dhcp(payload):
        return "dhcp"
    if looks_dns(payload):
        return "dns"
    if looks_ntp(payload):
        return "ntp"
    return None
