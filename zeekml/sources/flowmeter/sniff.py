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
    # Zeek's dns_max_queries (25): more questions than that is not DNS to Zeek (mDNS queries
    # often ask 19 or 20)
    if qd > 25 or an > 256 or ns > 256 or ar > 256 or (qd + an + ns + ar) == 0:
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


def looks_modbus(p: bytes) -> bool:
    """Modbus/TCP MBAP header: protocol id 0, length covering the rest, a valid function code."""
    if len(p) < 8:
        return False
    proto, length = struct.unpack_from("!HH", p, 2)
    fc = p[7] & 0x7F
    return proto == 0 and length == len(p) - 6 and 1 <= fc <= 0x2B


def looks_dce_rpc_bind(p: bytes) -> bool:
    """A DCE/RPC connection-oriented bind (or alter context) PDU filling the payload."""
    if len(p) < 16 or p[0] != 5 or p[1] not in (0, 1) or p[2] not in (11, 14):
        return False
    order = "<" if p[4] & 0x10 else ">"
    return struct.unpack_from(order + "H", p, 8)[0] == len(p)


STARTTLS_SERVICES = ("imap", "xmpp", "smtp", "pop3", "ftp", "irc")


def ssh_newkeys(payload: bytes, is_orig: bool) -> bool:
    """Whether ``payload`` completes an SSH key exchange: an SSH2 ``SSH_MSG_NEWKEYS`` (type 21)
    packet from either side, or the SSH1 client's ``SSH_CMSG_SESSION_KEY`` (type 3).

    Zeek's SSH analyzer confirms the protocol (and conn.log names ``ssh``) only then
    (``proc_newkeys``), not on the version banners: a server that answers ``Exceeded
    MaxStartups`` or a client that gives up early is no ``ssh``. NEWKEYS is the last unencrypted
    SSH2 packet: ``uint32 packet_length``, ``byte padding_length``, ``byte 21``, the padding, so
    ``packet_length == padding_length + 2``. An SSH1 packet is ``uint32 length``, ``8 - length %
    8`` bytes of padding, the type, the data and a CRC (``length`` counts type, data and CRC).
    """
    if is_orig and len(payload) >= 12:
        n = int.from_bytes(payload[:4], "big")
        pad = 8 - n % 8
        if 4 + pad + n == len(payload) and payload[4 + pad] == 3:
            return True
    i = payload.find(b"\x15", 5)
    while i != -1:
        if (payload[i - 5:i - 3] == b"\0\0" and payload[i - 1] >= 4
                and int.from_bytes(payload[i - 5:i - 1], "big") == payload[i - 1] + 2):
            return True
        i = payload.find(b"\x15", i + 1)
    return False


def sniff_tcp(payload: bytes, is_orig: bool) -> str | None:
    """Name the service of a TCP connection from one payload packet, or None."""
    if not payload:
        return None
    if payload[:4] == b"SSH-":
        return "ssh"
    if is_orig:
        if _HTTP_REQ.match(payload) or _HTTP_REQ_START.match(payload):
            return "http"
        if payload[:5] in (b"NICK ", b"USER ", b"PASS ") or payload[:7] == b"CAP LS ":
            return "irc"
        if payload[:5] == b"<?xml" or payload[:14] == b"<stream:stream":
            return "xmpp"
        if looks_dce_rpc_bind(payload):
            return "dce_rpc"
    else:
        if payload[:7] == b"HTTP/1.":
            return "http"
        if payload[:5] == b"* OK " and b"IMAP" in payload[:300].upper():
            return "imap"
        if payload[:4] == b"+OK ":
            return "pop3"
        if re.match(rb"^220[ -]", payload):
            head = payload[:300].upper()
            if b"FTP" in head:
                return "ftp"
            if b"SMTP" in head:
                return "smtp"
    if payload[0] == 0x16 and looks_tls(payload):
        return "ssl"
    if looks_modbus(payload):
        return "modbus"
    if looks_dns(payload, tcp=True):
        return "dns"
    return None


_PASV = re.compile(rb"227 [^(\r\n]*\(?(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)")
_EPSV = re.compile(rb"229 [^(\r\n]*\(([!-~])\1\1(\d+)\1\)")
_PORT = re.compile(rb"PORT (\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", re.I)
_EPRT = re.compile(rb"EPRT ([!-~])([12])\1([0-9A-Fa-f:.]+)\1(\d+)\1", re.I)
_DCC = re.compile(rb"\x01DCC SEND (?:\"[^\"]*\"|\S+) (\d+) (\d+)")


def ftp_expectations(payload: bytes, is_orig: bool) -> list[tuple[bytes | None, int]]:
    """Data connections an FTP control payload announces: ``(responder address or None, port)``.

    ``None`` means "the control connection's server" (EPSV). PORT/EPRT name the client side,
    PASV names the server side, as Zeek's FTP analyzer schedules ``ftp-data``.
    """
    import socket
    out = []
    if is_orig:
        for m in _PORT.finditer(payload):
            h = bytes(int(x) & 0xFF for x in m.groups()[:4])
            out.append((h, int(m.group(5)) * 256 + int(m.group(6))))
        for m in _EPRT.finditer(payload):
            fam = socket.AF_INET if m.group(2) == b"1" else socket.AF_INET6
            try:
                out.append((socket.inet_pton(fam, m.group(3).decode()), int(m.group(4))))
            except (OSError, ValueError):
                pass
    else:
        for m in _PASV.finditer(payload):
            h = bytes(int(x) & 0xFF for x in m.groups()[:4])
            out.append((h, int(m.group(5)) * 256 + int(m.group(6))))
        for m in _EPSV.finditer(payload):
            out.append((None, int(m.group(2))))
    return [(h, p) for h, p in out if 0 < p < 65536]


def irc_dcc_expectations(payload: bytes) -> list[tuple[bytes, int]]:
    """``DCC SEND`` offers in an IRC payload: ``(address, port)`` the peer will connect to."""
    out = []
    for m in _DCC.finditer(payload):
        ip, port = int(m.group(1)), int(m.group(2))
        if 0 < port < 65536 and ip < 2 ** 32:
            out.append((ip.to_bytes(4, "big"), port))
    return out


def sniff_udp(payload: bytes) -> str | None:
    """Name the service of a UDP connection from a datagram's payload, or None."""
    if looks_dhcp(payload):
        return "dhcp"
    if looks_dns(payload):
        return "dns"
    if looks_ntp(payload):
        return "ntp"
    return None
