"""A built-in flow meter whose conn.log follows Zeek's connection semantics.

Used by ``zeekml replay`` when Zeek is not installed. It groups packets into connections the way
Zeek's session manager does and fills conn.log's columns as Zeek's analyzers do:

- 5-tuple connections for TCP, UDP and ICMP (ICMP type as ``orig_p``; the counterpart type, or the
  code for one-way messages, as ``resp_p``, so an echo request and its reply are one connection),
  ``unknown_transport`` connections (ports 0) for other IP protocols;
- originator chosen from the first packet, flipped like Zeek for SYN-ACKs/mid-stream packets from
  a likely server port (history ``^``);
- TCP: Zeek's endpoint state machine (INACTIVE, SYN_SENT, SYN_ACK_SENT, PARTIAL, ESTABLISHED,
  CLOSED, RESET), payload sizes from sequence and acknowledgement numbers (``Size()``: the larger
  of last sequence and peer's ack, minus the SYN and FIN octets), history letters (``ShADadFfRr``,
  ``TtWwGgIiQq`` with Zeek's 1/10/100 scaling), ``missed_bytes`` from acknowledged-but-unseen data;
- ``conn_state`` from Zeek's ``Conn::conn_state`` rules; ``duration`` and the byte columns only when
  the duration is positive (as Zeek's ``set_conn``);
- lifetimes: inactivity (TCP 5 min once past the handshake, 1 min before it; UDP and ICMP 1 min),
  SYN attempts expire after 5 s unanswered, closed/reset connections 5 s after the close, and a new
  SYN on a closed connection starts a new one (``IsReuse``);
- tunnels: IP-in-IP, GRE (incl. ERSPAN I/II/III, PPTP), VXLAN, Teredo, AYIYA and GTP-U are
  decapsulated; the inner connection's ``tunnel_parents`` names the outer connection's uid (or the
  IP tunnel's uid for GRE/IP-in-IP, which has no conn.log row, as in Zeek);
- IPv4 fragments and IPv6 fragment headers are reassembled.

The meter never raises on packet content: a frame it cannot decode is counted in ``stats`` and
skipped.
"""
from __future__ import annotations

import heapq
import logging
import math
import random
import socket
import struct
from dataclasses import dataclass, field
from typing import Callable, Iterator

from zeekml.sources import flowmeter_decode as dec
from zeekml.sources.flowmeter_sniff import (STARTTLS_SERVICES, ftp_expectations,
                                             irc_dcc_expectations, looks_tls, sniff_tcp, sniff_udp)

log = logging.getLogger(__name__)

CONN_FIELDS: list[tuple[str, str]] = [
    ("ts", "time"), ("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"),
    ("id.resp_h", "addr"), ("id.resp_p", "port"), ("proto", "enum"), ("service", "string"),
    ("duration", "interval"), ("orig_bytes", "count"), ("resp_bytes", "count"),
    ("conn_state", "string"), ("local_orig", "bool"), ("local_resp", "bool"),
    ("missed_bytes", "count"), ("history", "string"), ("orig_pkts", "count"),
    ("orig_ip_bytes", "count"), ("resp_pkts", "count"), ("resp_ip_bytes", "count"),
    ("tunnel_parents", "set[string]"), ("ip_proto", "count"),
]
"""conn.log columns and Zeek types, as Zeek 9 writes them."""

# Zeek's timing constants (init-bare.zeek defaults).
TCP_INACTIVITY = 300.0
UDP_INACTIVITY = 60.0
ICMP_INACTIVITY = 60.0
TCP_ATTEMPT_DELAY = 5.0
TCP_CLOSE_DELAY = 5.0
TCP_SYN_TIMEOUT = 5.0
TCP_SESSION_TIMER = 6.0
TCP_CONNECTION_LINGER = 5.0
DNS_SESSION_TIMEOUT = 10.0
TCP_MAX_ABOVE_HOLE_WITHOUT_ANY_ACKS = 16384
TCP_EXCESSIVE_DATA_WITHOUT_FURTHER_ACKS = 10 * 1024 * 1024
TOO_LARGE_SEQ_DELTA = 1048576

# TCP endpoint states (Zeek's TCP_ENDPOINT_*).
INACTIVE, SYN_SENT, SYN_ACK_SENT, PARTIAL, ESTABLISHED, CLOSED, RESET = range(7)
_HANDSHAKE = (INACTIVE, SYN_SENT, SYN_ACK_SENT)

# History masks (Zeek's HIST_*); responder masks are shifted by 16.
H_SYN, H_FIN, H_RST, H_FIN_RST, H_DATA, H_ACK, H_MULTI = 1, 2, 4, 8, 16, 32, 64

FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20

# Ports Zeek's default scripts register analyzers for (its ``likely_server_ports``).
LIKELY_SERVER_PORTS_TCP = frozenset({
    21, 22, 23, 25, 53, 80, 81, 88, 102, 110, 111, 135, 139, 143, 194, 389, 443, 445, 502, 512, 513,
    514, 563, 585, 587, 614, 631, 636, 989, 990, 992, 993, 994, 995, 1080, 1723, 1883, 2049, 2811,
    3128, 3268, 3306, 3389, 5060, 5222, 5269, 5432, 5900, 5901, 6379, 6666, 6667, 6668, 6669, 8000,
    8080, 8888, 20000, 1433, 1521, 2404, 47808, 9200, 11211, 27017,
})
LIKELY_SERVER_PORTS_UDP = frozenset({
    53, 67, 69, 88, 111, 123, 137, 138, 161, 162, 500, 514, 546, 547, 1812, 1813, 2049, 2123,
    2152, 3544, 4500, 4789, 5060, 5072, 5353, 5355, 6081, 20000, 47808,
})

# ICMP counterparts (Zeek's ICMP4_counterpart / ICMP6_counterpart).
_ICMP4_PAIRS = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 9: 10, 17: 18, 18: 17}
_ICMP6_PAIRS = {128: 129, 129: 128, 133: 134, 134: 133, 135: 136, 136: 135, 130: 131, 131: 130,
                139: 140, 140: 139, 144: 145, 145: 144}

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_TCPHDR = struct.Struct("!HHIIBBH")
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _net(spec: str) -> tuple[int, int, int]:
    addr, plen = spec.split("/")
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    raw = socket.inet_pton(fam, addr)
    bits = len(raw) * 8
    value = int.from_bytes(raw, "big")
    mask = ((1 << int(plen)) - 1) << (bits - int(plen)) if int(plen) else 0
    return len(raw), value & mask, mask


# Zeek's Site::private_address_space (Zeek >= 6 treats it as local by default).
PRIVATE_NETS = [_net(s) for s in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/24", "239.0.0.0/8", "240.0.0.0/4", "255.255.255.255/32",
    "2002::/24", "2002:a00::/24", "2002:6440::/26", "2002:7f00::/24", "2002:a9fe::/32",
    "2002:ac10::/28", "2002:c000::/40", "2002:c000:200::/40", "2002:c0a8::/32", "2002:c612::/31",
    "2002:c633:6400::/40", "2002:cb00:7100::/40", "2002:e000::/40", "2002:ef00::/24",
    "2002:f000::/20", "2002:ffff:ffff::/48", "::/128", "::1/128", "64:ff9b:1::/48", "100::/64",
    "2001::/23", "2001:2::/48", "2001:db8::/32", "fc00::/7", "fe80::/10", "fec0::/10",
)]


_PRIVATE_CACHE: dict[bytes, bool] = {}


def is_private(addr: bytes) -> bool:
    """True when ``addr`` (4 or 16 raw bytes) is in Zeek's ``Site::private_address_space``."""
    hit = _PRIVATE_CACHE.get(addr)
    if hit is not None:
        return hit
    n = len(addr)
    v = int.from_bytes(addr, "big")
    res = False
    for ln, net, mask in PRIVATE_NETS:
        if ln == n and (v & mask) == net:
            res = True
            break
    if len(_PRIVATE_CACHE) > 100000:
        _PRIVATE_CACHE.clear()
    _PRIVATE_CACHE[bytes(addr)] = res
    return res


def _multi_or_broadcast(addr: bytes) -> bool:
    """Zeek never makes a broadcast or multicast address the originator by flipping."""
    if len(addr) == 4:
        return addr == b"\xff\xff\xff\xff" or 224 <= addr[0] <= 239
    return addr[0] == 0xFF


def addr_str(addr: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(addr) == 4 else socket.AF_INET6, addr)


class UidGenerator:
    """Zeek-style connection uids: ``C`` + 17 base62 digits (~101 random bits), deterministic per seed."""

    def __init__(self, seed: int = 0, prefix: str = "C"):
        self._choices = random.Random(seed).choices
        self.prefix = prefix

    def __call__(self) -> str:
        return self.prefix + "".join(self._choices(_B62, k=17))


def _seq_delta(a: int, b: int) -> int:
    return ((a - b + 0x80000000) & 0xFFFFFFFF) - 0x80000000


class TcpEndpoint:
    """One side of a TCP connection (Zeek's TCP_Endpoint, the parts conn.log needs)."""

    __slots__ = ("is_orig", "peer", "state", "prev_state", "start_seq", "last_seq", "ack_seq",
                 "seq_wraps", "ack_wraps", "fin_cnt", "rst_cnt", "fin_seq", "hist_last_syn",
                 "hist_last_fin", "hist_last_rst", "did_close", "rnext", "blocks", "trim", "high",
                 "skip", "gap_cnt",
                 "gap_thresh", "rxmt_cnt", "rxmt_thresh", "win0_cnt", "win0_thresh")

    def __init__(self, is_orig: bool):
        self.is_orig = is_orig
        self.peer: TcpEndpoint | None = None
        self.state = self.prev_state = INACTIVE
        self.start_seq = self.last_seq = self.ack_seq = 0
        self.seq_wraps = self.ack_wraps = 0
        self.fin_cnt = self.rst_cnt = 0
        self.fin_seq = 0
        self.hist_last_syn = self.hist_last_fin = self.hist_last_rst = 0
        self.did_close = False
        self.rnext = self.trim = self.high = 1  # Zeek's last_reassem_seq, trim_seq; highest end
        self.blocks: list[list[int]] | None = None
        self.skip = False  # Zeek's skip_deliveries
        self.gap_cnt = self.rxmt_cnt = self.win0_cnt = 0
        self.gap_thresh = self.rxmt_thresh = self.win0_thresh = 1

    def update_last_seq(self, seq: int) -> None:
        if seq < self.last_seq:
            self.seq_wraps += 1
        self.last_seq = seq

    def update_ack_seq(self, seq: int) -> None:
        if seq < self.ack_seq:
            self.ack_wraps += 1
        self.ack_seq = seq

    def init_seqs(self, start: int, last: int) -> None:
        self.start_seq = start & 0xFFFFFFFF
        self.ack_seq = start & 0xFFFFFFFF
        self.last_seq = last & 0xFFFFFFFF

    def rel(self, seq: int, wraps: int) -> int:
        return ((wraps << 32) | seq) - self.start_seq

    def no_data_acked(self) -> bool:
        return self.ack_wraps == 0 and self.ack_seq in (self.start_seq, (self.start_seq + 1) & 0xFFFFFFFF)

    def size(self) -> int:
        peer = self.peer
        if (self.prev_state == SYN_SENT and self.state == RESET and peer.state == INACTIVE
                and not self.no_data_acked()):
            return 0
        last64 = (self.seq_wraps << 32) | self.last_seq
        ack64 = (self.ack_wraps << 32) | self.ack_seq
        size = (last64 if last64 > ack64 else ack64) - self.start_seq
        if size < 0:
            size &= 0xFFFFFFFFFFFFFFFF
        if size != 0:
            size -= 1
        if self.fin_cnt > 0 and size != 0:
            size -= 1
        return size


class Conn:
    """One connection's running state and its conn.log record."""

    __slots__ = ("key", "uid", "proto", "ip_proto", "orig_h", "orig_p", "resp_h", "resp_p", "start",
                 "last", "orig_pkts", "resp_pkts", "orig_ipb", "resp_ipb", "hist", "hist_seen",
                 "orig_size", "resp_size", "orig_active", "resp_active", "tunnel_parents",
                 "service", "missed", "orig_ep", "resp_ep", "inactivity", "attempt_at",
                 "remove_at", "close_tick", "sniff_left", "f_dirs", "f_lens", "f_iats", "f_flags",
                 "f_last", "flipped", "dns_start", "syn_seen", "resp_data", "expected_svc",
                 "teredo_dirs", "sniff_long", "is_partial", "first_seen")

    def __init__(self, key, uid: str, proto: str, ip_proto: int, orig_h: bytes, orig_p: int,
                 resp_h: bytes, resp_p: int, t: float, inactivity: float):
        self.key = key
        self.uid = uid
        self.proto = proto
        self.ip_proto = ip_proto
        self.orig_h, self.orig_p, self.resp_h, self.resp_p = orig_h, orig_p, resp_h, resp_p
        self.start = self.last = t
        self.orig_pkts = self.resp_pkts = self.orig_ipb = self.resp_ipb = 0
        self.hist: list[str] = []
        self.hist_seen = 0
        self.orig_size = self.resp_size = 0
        self.orig_active = self.resp_active = False
        self.tunnel_parents: list[str] | None = None
        self.service: list[str] = []
        self.missed = 0
        self.orig_ep: TcpEndpoint | None = None
        self.resp_ep: TcpEndpoint | None = None
        self.inactivity = inactivity
        self.attempt_at: float | None = None
        self.remove_at: float | None = None
        self.close_tick: float | None = None
        self.sniff_left = 4
        self.f_dirs: list[int] = []
        self.f_lens: list[int] = []
        self.f_iats: list[float] = []
        self.f_flags: list[int] = []
        self.f_last = t
        self.flipped = False
        self.dns_start: float | None = None
        self.syn_seen = self.resp_data = self.expected_svc = False
        self.teredo_dirs = 0
        self.sniff_long = 0
        self.is_partial = False  # TCP: Zeek's TCPSessionAdapter::is_partial
        self.first_seen = 0  # TCP: 1 = originator's first packet seen, 2 = responder's

    # -- history ----------------------------------------------------------------------------
    def check_history(self, mask: int, code: str) -> bool:
        """Zeek's Connection::CheckHistory: add ``code`` the first time; True if seen before."""
        if self.hist_seen & mask:
            return True
        self.hist_seen |= mask
        self.hist.append(code)
        return False

    # -- expiry -----------------------------------------------------------------------------
    def expired(self, t: float) -> bool:
        """Whether Zeek would have removed this connection before a packet at time ``t``."""
        if t >= self.last + self.inactivity:
            return True
        if self.remove_at is not None and t >= self.remove_at:
            return True
        if self.dns_start is not None:
            # Zeek's DNS analyzer timer: fires every dns_session_timeout (10 s) from the start and
            # removes the connection once it has been idle for 9 s at a firing.
            k = math.ceil((self.last + DNS_SESSION_TIMEOUT - 1.0 - self.dns_start) / DNS_SESSION_TIMEOUT)
            if t >= self.dns_start + max(k, 1) * DNS_SESSION_TIMEOUT:
                return True
        o = self.orig_ep
        if o is None:
            return False
        r = self.resp_ep
        if (self.attempt_at is not None and t >= self.attempt_at
                and o.state in (SYN_SENT, SYN_ACK_SENT) and r.state == INACTIVE):
            return True
        if (o.did_close or r.did_close) and (
                (o.did_close and r.did_close) or o.state == RESET or r.state == RESET
                or o.state == INACTIVE or r.state == INACTIVE):
            # ExpireTimer: fires at start+5, then every 6 s (or 6 s after a half close);
            # removes once the connection has lingered 5 s without activity.
            due = self.last + TCP_CONNECTION_LINGER
            base = self.start + TCP_SYN_TIMEOUT
            if due < base:
                tick = base
            else:
                k = int((due - base) // TCP_SESSION_TIMER) + 1
                tick = base + k * TCP_SESSION_TIMER
            if self.close_tick is not None and self.close_tick > due:
                tick = min(tick, self.close_tick)
            if t >= tick:
                return True
        return False

    def next_check(self) -> float:
        """A time at or before which ``expired`` may first turn true, given no further packets."""
        when = self.last + self.inactivity
        if self.remove_at is not None:
            when = min(when, self.remove_at)
        if self.dns_start is not None:
            k = math.ceil((self.last + DNS_SESSION_TIMEOUT - 1.0 - self.dns_start) / DNS_SESSION_TIMEOUT)
            when = min(when, self.dns_start + max(k, 1) * DNS_SESSION_TIMEOUT)
        o = self.orig_ep
        if o is not None:
            r = self.resp_ep
            if self.attempt_at is not None and o.state in (SYN_SENT, SYN_ACK_SENT) and r.state == INACTIVE:
                when = min(when, self.attempt_at)
            if (o.did_close or r.did_close) and (
                    (o.did_close and r.did_close) or o.state == RESET or r.state == RESET
                    or o.state == INACTIVE or r.state == INACTIVE):
                when = min(when, self.last + TCP_CONNECTION_LINGER)
        return when

    # -- output -----------------------------------------------------------------------------
    def conn_state(self) -> str:
        if self.proto == "tcp":
            os_, rs = self.orig_ep.state, self.resp_ep.state
            o_inactive = os_ in (INACTIVE, PARTIAL)
            r_inactive = rs in (INACTIVE, PARTIAL)
            if rs == RESET:
                if os_ in (SYN_SENT, SYN_ACK_SENT) or (
                        os_ == RESET and self.orig_ep.size() == 0 and self.resp_ep.size() == 0):
                    return "REJ"
                return "RSTRH" if o_inactive else "RSTR"
            if os_ == RESET:
                if r_inactive:
                    return "RSTOS0" if _rstos0(self.history()) else "OTH"
                return "RSTO"
            if rs == CLOSED and os_ == CLOSED:
                return "SF"
            if os_ == CLOSED:
                return "SH" if r_inactive else "S2"
            if rs == CLOSED:
                return "SHR" if o_inactive else "S3"
            if os_ == SYN_SENT and rs == INACTIVE:
                return "S0"
            if os_ == ESTABLISHED and rs == ESTABLISHED:
                return "S1"
            return "OTH"
        if self.proto == "udp":
            if self.orig_active:
                return "SF" if self.resp_active else "S0"
            return "SHR" if self.resp_active else "OTH"
        return "OTH"

    def history(self) -> str:
        return "".join(self.hist)

    def service_str(self) -> str | None:
        """Services Zeek would have confirmed: TCP analyzers only see connections that started
        with a SYN and confirm once the responder has spoken (expected connections such as
        ftp-data are named at creation); Teredo is confirmed only in both directions."""
        svc = self.service
        if not svc:
            return None
        if self.proto == "tcp" and not self.expected_svc and not (self.syn_seen and self.resp_data):
            return None
        if self.proto == "udp" and "teredo" in svc and self.teredo_dirs != 3:
            svc = [x for x in svc if x != "teredo"]
        return ",".join(svc) if svc else None

    def record(self) -> dict:
        duration = self.last - self.start
        if self.proto == "tcp":
            ob, rb = self.orig_ep.size(), self.resp_ep.size()
        else:
            ob, rb = self.orig_size, self.resp_size
        rec = {
            "ts": self.start, "uid": self.uid, "id.orig_h": addr_str(self.orig_h),
            "id.orig_p": self.orig_p, "id.resp_h": addr_str(self.resp_h), "id.resp_p": self.resp_p,
            "proto": self.proto, "service": self.service_str(),
            "duration": duration if duration > 0 else None,
            "orig_bytes": ob if duration > 0 else None, "resp_bytes": rb if duration > 0 else None,
            "conn_state": self.conn_state(), "local_orig": is_private(self.orig_h),
            "local_resp": is_private(self.resp_h), "missed_bytes": self.missed,
            "history": self.history() or None, "orig_pkts": self.orig_pkts,
            "orig_ip_bytes": self.orig_ipb, "resp_pkts": self.resp_pkts,
            "resp_ip_bytes": self.resp_ipb,
            "tunnel_parents": list(self.tunnel_parents) if self.tunnel_parents else None,
            "ip_proto": self.ip_proto,
        }
        return rec

    def flow_record(self) -> dict:
        return {
            "ts": self.start, "uid": self.uid, "id.orig_h": addr_str(self.orig_h),
            "id.orig_p": self.orig_p, "id.resp_h": addr_str(self.resp_h), "id.resp_p": self.resp_p,
            "proto": self.proto, "n_pkts": len(self.f_dirs), "dirs": self.f_dirs,
            "ip_lens": self.f_lens, "iats": self.f_iats, "tcp_flags": self.f_flags,
        }


def _rstos0(history: str) -> bool:
    # /\^?S[^HAFGIQ]*R.*/ anchored, as Zeek's pattern equality is a full match.
    h = history[1:] if history.startswith("^") else history
    if not h.startswith("S"):
        return False
    for ch in h[1:]:
        if ch == "R":
            return True
        if ch in "HAFGIQ":
            return False
    return False


@dataclass
class MeterStats:
    """Counters of what the meter saw and skipped."""

    packets: int = 0
    non_ip: int = 0
    bad_ip: int = 0
    bad_transport: int = 0
    fragments: int = 0
    tunnelled: int = 0
    connections: int = 0
    errors: list[str] = field(default_factory=list)


class FlowMeter:
    """Turns packets into Zeek-style connection records.

    Args:
        on_conn: called with each finished ``Conn`` (default: kept in ``self.finished``).
        seed: seeds the uid generator (same seed, same pcap -> same uids).
        flow_packets: packets kept per connection for ``zeekml_flow.log`` (default 32).
        sniff: run the port-independent service sniffer (default True).
        likely_server_ports: ``(tcp_ports, udp_ports)`` Zeek's ``likely_server_ports`` (default:
            the ports Zeek's default scripts add; a bare ``zeek -b`` run loading only
            base/protocols/conn has none).
        tcp_excessive_data_without_further_acks: Zeek's option of that name (default 10 MiB; 0
            disables): past this much unacknowledged data, gaps are no longer reported.
    """


    def __init__(self, on_conn: Callable[[Conn], None] | None = None, seed: int = 0,
                 flow_packets: int = 32, sniff: bool = True,
                 likely_server_ports: tuple[frozenset, frozenset] | None = None,
                 tcp_excessive_data_without_further_acks: int = TCP_EXCESSIVE_DATA_WITHOUT_FURTHER_ACKS):
        self.conns: dict = {}
        self.excessive = tcp_excessive_data_without_further_acks
        if likely_server_ports is None:
            likely_server_ports = (LIKELY_SERVER_PORTS_TCP, LIKELY_SERVER_PORTS_UDP)
        self.likely_tcp, self.likely_udp = (frozenset(x) for x in likely_server_ports)
        self.finished: list[Conn] = []
        self.on_conn = on_conn or self.finished.append
        self.uids = UidGenerator(seed)
        self.flow_packets = flow_packets
        self.sniff = sniff
        self.stats = MeterStats()
        self.ip_tunnels: dict = {}
        self.frags: dict = {}
        self.expected: dict = {}  # (resp addr, port) -> (service, expires at)
        # Min-heap of (time to look again, n, key, conn): finishes idle connections in time order
        # without scanning the whole table (a connection's own next packet re-checks it anyway).
        self._due: list = []
        self._n = 0
        self.now = 0.0

    # -- public API ---------------------------------------------------------------------------
    def packet(self, ts: float, buf: bytes, linktype: int = 1, wirelen: int | None = None) -> None:
        """Process one captured frame (``buf``) of the given pcap link type."""
        self.stats.packets += 1
        self.now = ts
        if self._due and self._due[0][0] <= ts:
            self.sweep(ts)
        try:
            r = dec.link_to_ip(linktype, buf)
            if r is None:
                self.stats.non_ip += 1
                return
            self._ip(ts, buf, r[0], r[1], None, 0)
        except (IndexError, struct.error, ValueError) as e:  # hostile input: never crash
            self.stats.bad_ip += 1
            if len(self.stats.errors) < 20:
                self.stats.errors.append(f"packet {self.stats.packets}: {e!r}")

    def sweep(self, t: float) -> None:
        """Finish the connections Zeek would have expired by time ``t``."""
        due = self._due
        while due and due[0][0] <= t:
            _, _, key, c = heapq.heappop(due)
            if self.conns.get(key) is not c:
                continue  # already finished (or replaced by a newer connection)
            if c.expired(t):
                del self.conns[key]
                self._finish(c)
            else:
                self._schedule(key, c, t)

    def _schedule(self, key, c: Conn, t: float) -> None:
        when = c.next_check()
        if when <= t:
            when = t + 1.0
        self._n += 1
        heapq.heappush(self._due, (when, self._n, key, c))

    def flush(self) -> None:
        """End of input: finish every remaining connection (Zeek's shutdown flush)."""
        for c in sorted(self.conns.values(), key=lambda c: c.start):
            self._finish(c)
        self.conns.clear()

    def __iter__(self) -> Iterator[Conn]:
        return iter(self.finished)

    # -- internals ----------------------------------------------------------------------------
    def _finish(self, c: Conn) -> None:
        self.stats.connections += 1
        self.on_conn(c)

    def _ip(self, ts: float, buf: bytes, off: int, ver: int, parent: str | None, depth: int) -> None:
        n = len(buf)
        if ver == 4:
            if off + 20 > n:
                self.stats.bad_ip += 1
                return
            b0 = buf[off]
            if b0 >> 4 != 4:
                self.stats.bad_ip += 1
                return
            ihl = (b0 & 0x0F) * 4
            total = _U16.unpack_from(buf, off + 2)[0]
            if ihl < 20 or total < ihl or off + ihl > n:
                self.stats.bad_ip += 1
                return
            frag = _U16.unpack_from(buf, off + 6)[0]
            proto = buf[off + 9]
            src = buf[off + 12:off + 16]
            dst = buf[off + 16:off + 20]
            if frag & 0x3FFF:
                self.stats.fragments += 1
                whole = self._reassemble4(ts, buf, off, ihl, total, frag, src, dst, proto)
                if whole is None:
                    return
                buf, off, total = whole, 0, len(whole)
                n = len(buf)
            ip_len = total
            poff = off + ihl
            plen = total - ihl
        elif ver == 6:
            if off + 40 > n or buf[off] >> 4 != 6:
                self.stats.bad_ip += 1
                return
            plen = _U16.unpack_from(buf, off + 4)[0]
            proto = buf[off + 6]
            src = buf[off + 8:off + 24]
            dst = buf[off + 24:off + 40]
            ip_len = plen + 40
            poff = off + 40
            # Walk extension headers.
            for _ in range(8):
                if proto in (0, 43, 60, 135):
                    if poff + 2 > n:
                        self.stats.bad_ip += 1
                        return
                    hl = (buf[poff + 1] + 1) * 8
                    proto = buf[poff]
                    poff += hl
                    plen -= hl
                elif proto == 51:  # AH
                    if poff + 2 > n:
                        self.stats.bad_ip += 1
                        return
                    hl = (buf[poff + 1] + 2) * 4
                    proto = buf[poff]
                    poff += hl
                    plen -= hl
                elif proto == 44:
                    if poff + 8 > n:
                        self.stats.bad_ip += 1
                        return
                    self.stats.fragments += 1
                    fo = _U16.unpack_from(buf, poff + 2)[0]
                    ident = _U32.unpack_from(buf, poff + 4)[0]
                    nh = buf[poff]
                    if fo & 0xFFF9 == 0:  # atomic fragment
                        proto = nh
                        poff += 8
                        plen -= 8
                        continue
                    whole = self._reassemble6(ts, buf, off, poff, plen, fo, ident, src, dst, nh)
                    if whole is None:
                        return
                    buf, poff, plen, proto = whole
                    n = len(buf)
                    ip_len = plen + 40
                    break
                else:
                    break
            if plen < 0:
                self.stats.bad_ip += 1
                return
        else:
            self.stats.bad_ip += 1
            return

        end = poff + plen
        if end > n:
            end = n  # snaplen-truncated: lengths come from the headers, payload bytes stop here
        if proto == 6:
            self._tcp(ts, buf, poff, plen, end, src, dst, ip_len, parent)
        elif proto == 17:
            self._udp(ts, buf, poff, plen, end, src, dst, ip_len, parent, depth)
        elif proto == 1 or proto == 58:
            self._icmp(ts, buf, poff, plen, end, src, dst, ip_len, proto, parent)
        elif proto == 4 or proto == 41:
            if depth >= 3:
                return
            v = 4 if proto == 4 else 6
            self.stats.tunnelled += 1
            self._ip(ts, buf, poff, v, self._ip_tunnel_uid(src, dst), depth + 1)
        elif proto == 47:
            if depth >= 3:
                return
            g = dec.gre(buf, poff, end)
            if g is None:
                self._other(ts, src, dst, ip_len, proto, parent)
                return
            kind, ioff, iver = g
            self.stats.tunnelled += 1
            uid = self._ip_tunnel_uid(src, dst)
            if kind == "ip":
                self._ip(ts, buf, ioff, iver, uid, depth + 1)
            else:
                r = dec.ethernet(buf, ioff)
                if r is not None:
                    self._ip(ts, buf, r[0], r[1], uid, depth + 1)
        elif proto == 59:  # IPv6 "no next header" (e.g. Teredo bubbles): nothing to track
            return
        else:
            self._other(ts, src, dst, ip_len, proto, parent)

    def _ip_tunnel_uid(self, src: bytes, dst: bytes) -> str:
        k = (src, dst) if src <= dst else (dst, src)
        uid = self.ip_tunnels.get(k)
        if uid is None:
            uid = self.ip_tunnels[k] = self.uids()
        return uid

    # -- fragments ----------------------------------------------------------------------------
    def _reassemble4(self, ts, buf, off, ihl, total, frag, src, dst, proto):
        ident = _U16.unpack_from(buf, off + 4)[0]
        key = (4, src, dst, ident, proto)
        fo = (frag & 0x1FFF) * 8
        more = bool(frag & 0x2000)
        data = bytes(buf[off + ihl:off + total])
        hdr = bytes(buf[off:off + ihl])
        return self._frag_add(key, ts, fo, more, data, hdr, 4)

    def _reassemble6(self, ts, buf, off, foff, plen, fo_field, ident, src, dst, nh):
        key = (6, src, dst, ident)
        fo = fo_field & 0xFFF8
        more = bool(fo_field & 0x1)
        data = bytes(buf[foff + 8:foff + 8 + plen - 8])
        r = self._frag_add(key, ts, fo, more, data, None, 6)
        if r is None:
            return None
        return r, 0, len(r), nh

    def _frag_add(self, key, ts, fo, more, data, hdr, ver):
        st = self.frags.get(key)
        if st is None:
            if len(self.frags) > 10000:  # bound memory under a fragment flood
                self.frags.clear()
            st = self.frags[key] = {"parts": {}, "end": None, "hdr": None, "ts": ts}
        if fo + len(data) > 65535:
            self.frags.pop(key, None)
            return None
        st["parts"][fo] = data
        if fo == 0 and hdr is not None:
            st["hdr"] = hdr
        if not more:
            st["end"] = fo + len(data)
        if st["end"] is None:
            return None
        pos = 0
        chunks = []
        for o in sorted(st["parts"]):
            d = st["parts"][o]
            if o > pos:
                return None  # hole
            if o + len(d) > pos:
                chunks.append(d[pos - o:])
                pos = o + len(d)
        if pos < st["end"]:
            return None
        del self.frags[key]
        payload = b"".join(chunks)[:st["end"]]
        if ver == 6:
            return payload
        h = st["hdr"]
        if h is None:
            return None
        h = bytearray(h)
        h[2:4] = _U16.pack((len(h) + len(payload)) & 0xFFFF)
        h[6:8] = b"\x00\x00"
        return bytes(h) + payload

    # -- connection lookup --------------------------------------------------------------------
    def _lookup(self, key, t: float):
        c = self.conns.get(key)
        if c is not None and c.expired(t):
            del self.conns[key]
            self._finish(c)
            return None
        return c

    def _new(self, key, proto: str, ip_proto: int, oh, op, rh, rp, t: float, inactivity: float,
             parent: str | None) -> Conn:
        c = Conn(key, self.uids(), proto, ip_proto, oh, op, rh, rp, t, inactivity)
        self.conns[key] = c
        self._n += 1
        heapq.heappush(self._due, (t + min(inactivity, TCP_ATTEMPT_DELAY), self._n, key, c))
        return c

    def _count(self, c: Conn, is_orig: bool, t: float, ip_len: int, flags: int, parent) -> None:
        if is_orig:
            c.orig_pkts += 1
            c.orig_ipb += ip_len
        else:
            c.resp_pkts += 1
            c.resp_ipb += ip_len
        if parent is not None:
            tp = c.tunnel_parents
            if tp is None:
                c.tunnel_parents = [parent]
            elif parent not in tp:
                tp.append(parent)
        if len(c.f_dirs) < self.flow_packets:
            c.f_dirs.append(0 if is_orig else 1)
            c.f_lens.append(ip_len)
            c.f_iats.append(t - c.f_last if c.f_dirs[1:] else 0.0)
            c.f_flags.append(flags)
            c.f_last = t

    # -- transports ---------------------------------------------------------------------------
    def _other(self, t, src, dst, ip_len, proto, parent) -> None:
        key = (proto, src, dst) if src <= dst else (proto, dst, src)
        c = self._lookup(key, t)
        if c is None:
            c = self._new(key, "unknown_transport", proto, src, 0, dst, 0, t, UDP_INACTIVITY, parent)
        is_orig = src == c.orig_h
        self._count(c, is_orig, t, ip_len, 0, parent)
        c.last = t

    def _icmp(self, t, buf, poff, plen, end, src, dst, ip_len, proto, parent) -> None:
        if poff + 4 > end or plen < 4:
            self.stats.bad_transport += 1
            return
        itype = buf[poff]
        code = buf[poff + 1]
        pairs = _ICMP4_PAIRS if proto == 1 else _ICMP6_PAIRS
        counter = pairs.get(itype)
        if counter is None:
            # One-way message: the key is not normalised.
            key = (proto, src, itype, dst, code, 1)
            rp = code
        else:
            a, b = (src, itype), (dst, counter)
            key = (proto,) + (a + b if a <= b else b + a)
            rp = counter
        c = self._lookup(key, t)
        if c is None:
            c = self._new(key, "icmp", proto, src, itype, dst, rp, t, ICMP_INACTIVITY, parent)
        is_orig = src == c.orig_h and itype == c.orig_p
        self._count(c, is_orig, t, ip_len, 0, parent)
        size = plen - 8 if plen > 8 else 0
        if is_orig:
            c.orig_size += size
            c.orig_active = True
        else:
            c.resp_size += size
            c.resp_active = True
        c.last = t

    def _udp(self, t, buf, poff, plen, end, src, dst, ip_len, parent, depth) -> None:
        if poff + 8 > end or plen < 8:
            self.stats.bad_transport += 1
            return
        sport, dport, ulen = struct.unpack_from("!HHH", buf, poff)
        a, b = (src, sport), (dst, dport)
        key = (17,) + (a + b if a <= b else b + a)
        c = self._lookup(key, t)
        if c is None:
            if (sport in self.likely_udp and dport not in self.likely_udp
                    and not _multi_or_broadcast(dst)):
                c = self._new(key, "udp", 17, dst, dport, src, sport, t, UDP_INACTIVITY, parent)
                c.hist.append("^")
                c.flipped = True
            else:
                c = self._new(key, "udp", 17, src, sport, dst, dport, t, UDP_INACTIVITY, parent)
        is_orig = src == c.orig_h and sport == c.orig_p
        self._count(c, is_orig, t, ip_len, 0, parent)
        ulen = (ulen if 8 <= ulen <= plen else plen) - 8
        if is_orig:
            c.check_history(H_DATA, "D")
            c.orig_size += ulen
            c.orig_active = True
        else:
            c.check_history(H_DATA << 16, "d")
            c.resp_size += ulen
            c.resp_active = True
        c.last = t
        pay_off = poff + 8
        pay_end = min(end, pay_off + ulen)
        if self.sniff and c.sniff_left > 0 and pay_end > pay_off:
            c.sniff_left -= 1
            svc = sniff_udp(bytes(buf[pay_off:min(pay_end, pay_off + 512)]))
            if svc and svc not in c.service:
                c.service.append(svc)
                if svc == "dns":
                    c.dns_start = c.start
        # Tunnels carried in UDP: the inner packet belongs to a connection whose parent is this one.
        if depth >= 3 or pay_end <= pay_off:
            return
        if dport == 4789 or sport == 4789:
            ioff = dec.vxlan(buf, pay_off, pay_end)
            if ioff is not None:
                self._tunnel(c, "vxlan")
                r = dec.ethernet(buf, ioff)
                if r is not None:
                    self._ip(t, buf, r[0], r[1], c.uid, depth + 1)
            return
        if dport == 5072 or sport == 5072:
            r = dec.ayiya(buf, pay_off, pay_end)
            if r is not None:
                self._tunnel(c, "ayiya")
                self._ip(t, buf, r[0], r[1], c.uid, depth + 1)
            return
        if dport == 2152 or sport == 2152:
            r = dec.gtpu(buf, pay_off, pay_end)
            if r is not None:
                self._tunnel(c, "gtpv1")
                self._ip(t, buf, r[0], r[1], c.uid, depth + 1)
            return
        if buf[pay_off] in (0, 0x60) or (buf[pay_off] >> 4) == 6:
            ioff = dec.teredo(buf, pay_off, pay_end)
            if ioff is not None:
                self._tunnel(c, "teredo")
                c.teredo_dirs |= 1 if is_orig else 2
                self._ip(t, buf, ioff, 6, c.uid, depth + 1)

    def _tunnel(self, c: Conn, svc: str) -> None:
        self.stats.tunnelled += 1
        if svc not in c.service:
            c.service = [s for s in c.service if s not in ("dns", "ntp")] + [svc]
            c.sniff_left = 0

    def _tcp(self, t, buf, poff, plen, end, src, dst, ip_len, parent) -> None:
        if poff + 20 > end:
            self.stats.bad_transport += 1
            return
        sport, dport, seq, ack, offx, flags, win = _TCPHDR.unpack_from(buf, poff)
        thl = (offx >> 4) * 4
        if thl < 20 or thl > plen:
            self.stats.bad_transport += 1
            return
        dlen = plen - thl
        a, b = (src, sport), (dst, dport)
        key = (6,) + (a + b if a <= b else b + a)
        c = self._lookup(key, t)
        if c is not None and flags & SYN and self._is_reuse(c, flags, seq):
            del self.conns[key]
            self._finish(c)
            c = None
        if c is None:
            flip = False
            if not (flags & SYN) or (flags & ACK):
                if sport in self.likely_tcp:
                    if dport in self.likely_tcp:
                        flip = not (flags & SYN) and sport < dport
                    else:
                        flip = True
            if flip:
                c = self._new(key, "tcp", 6, dst, dport, src, sport, t, UDP_INACTIVITY, parent)
                c.hist.append("^")
                c.flipped = True
            else:
                c = self._new(key, "tcp", 6, src, sport, dst, dport, t, UDP_INACTIVITY, parent)
            o = c.orig_ep = TcpEndpoint(True)
            r = c.resp_ep = TcpEndpoint(False)
            o.peer = r
            r.peer = o
            if self.expected:
                exp = self.expected.pop((c.resp_h, c.resp_p), None)
                if exp is not None and t <= exp[1]:
                    c.service.append(exp[0])
                    c.expected_svc = True
                    c.sniff_left = 0
        is_orig = src == c.orig_h and sport == c.orig_p
        if is_orig and flags & SYN and not flags & ACK:
            c.syn_seen = True
        self._count(c, is_orig, t, ip_len, flags, parent)
        self._tcp_process(c, is_orig, t, flags, seq, ack, win, dlen)
        if dlen > 0:
            if not is_orig:
                c.resp_data = True
            if self.sniff and (c.sniff_left > 0 or c.sniff_long > 0):
                doff = poff + thl
                if doff < end:
                    self._sniff_tcp(c, bytes(buf[doff:min(end, doff + 2048)]), is_orig, t)

    def _sniff_tcp(self, c: Conn, payload: bytes, is_orig: bool, t: float) -> None:
        if c.sniff_left > 0:
            c.sniff_left -= 1
            svc = sniff_tcp(payload, is_orig)
            if svc and not c.service and not (svc == "modbus" and is_orig and not c.resp_data):
                c.service.append(svc)
                if svc in STARTTLS_SERVICES:
                    c.sniff_long = 1000
        if c.sniff_long > 0:
            # Control protocols: follow them for STARTTLS and announced data connections.
            c.sniff_long -= 1
            if "ssl" not in c.service and payload[:1] == b"\x16" and looks_tls(payload):
                c.service.append("ssl")
            if "ftp" in c.service:
                for h, port in ftp_expectations(payload, is_orig):
                    if h is None:
                        h = c.resp_h
                    self._expect(h, port, "ftp-data", t)
            if "irc" in c.service:
                for h, port in irc_dcc_expectations(payload):
                    self._expect(h, port, "irc-dcc-data", t)

    def _expect(self, h: bytes, port: int, svc: str, t: float) -> None:
        if len(self.expected) > 10000:
            self.expected.clear()
        self.expected[(h, port)] = (svc, t + 300.0)

    @staticmethod
    def _is_reuse(c: Conn, flags: int, seq: int) -> bool:
        o, r = c.orig_ep, c.resp_ep
        conn_orig = o
        if flags & ACK:
            if o.state != INACTIVE:
                return False
            conn_orig = r
        if not (o.did_close or r.did_close):
            if seq == conn_orig.start_seq:
                return False
            if (not (flags & ACK) and conn_orig.state == SYN_ACK_SENT and r.state == INACTIVE
                    and seq == r.start_seq):
                return False
        return True

    def _set_state(self, c: Conn, ep: TcpEndpoint, new: int) -> None:
        if new != ep.state:
            if new not in _HANDSHAKE and ep.state in _HANDSHAKE and ep.peer.state in _HANDSHAKE:
                c.inactivity = TCP_INACTIVITY
            ep.prev_state = ep.state
            ep.state = new

    def _scaled(self, c: Conn, ep: TcpEndpoint, code: str, which: str) -> None:
        cnt = getattr(ep, which + "_cnt") + 1
        setattr(ep, which + "_cnt", cnt)
        thresh = getattr(ep, which + "_thresh")
        if cnt == thresh:
            c.hist.append(code if ep.is_orig else code.lower())
            setattr(ep, which + "_thresh", thresh * 10)

    def _tcp_process(self, c: Conn, is_orig: bool, t: float, flags: int, base_seq: int,
                     ack_seq: int, win: int, dlen: int) -> None:
        ep = c.orig_ep if is_orig else c.resp_ep
        peer = ep.peer
        syn = flags & SYN
        fin = flags & FIN
        rst = flags & RST
        ackf = flags & ACK
        # SetPartialStatus
        if is_orig:
            if not c.first_seen & 1:
                c.is_partial = not syn or bool(ackf)
        elif not c.first_seen & 2 and not c.is_partial:
            c.is_partial = not syn
        seg_len = dlen + (1 if syn else 0) + (1 if fin else 0) - (dlen if rst else 0)
        seq_one_past = (base_seq + seg_len) & 0xFFFFFFFF

        # Sequence differences below are Zeek's seq_delta (signed 32-bit), inlined for speed.
        # init_endpoint
        st = ep.state
        if st == INACTIVE:
            if syn:
                ep.start_seq = ep.ack_seq = base_seq
                ep.last_seq = seq_one_past
            else:
                ep.start_seq = ep.ack_seq = (base_seq - 1) & 0xFFFFFFFF
                ep.last_seq = base_seq
        elif st in (SYN_SENT, SYN_ACK_SENT):
            if syn and base_seq != ep.start_seq:
                ep.init_seqs(base_seq, seq_one_past)
        elif st in (ESTABLISHED, PARTIAL):
            if syn:
                ep.init_seqs(base_seq, seq_one_past)
        elif st == RESET:
            if syn and ep.prev_state == INACTIVE:
                ep.init_seqs(base_seq, seq_one_past)

        # relative sequence number
        seq_underflow = False
        last = ep.last_seq
        wraps = ep.seq_wraps
        delta = (((base_seq - last + 0x80000000) & 0xFFFFFFFF) - 0x80000000)
        if delta < 0:
            if wraps and base_seq > last:
                wraps -= 1
        elif delta > 0:
            if base_seq < last:
                wraps += 1
        if wraps == 0:
            rel_seq = (((base_seq - ep.start_seq + 0x80000000) & 0xFFFFFFFF) - 0x80000000)
            if rel_seq < 0:
                seq_underflow = True
        else:
            rel_seq = ep.rel(base_seq, wraps)

        # update_history
        mshift = 0 if is_orig else 16
        bits = (1 if syn else 0) + (1 if fin else 0) + (1 if rst else 0)
        if bits > 1:
            if fin and rst:
                c.check_history(H_FIN_RST << mshift, "I" if is_orig else "i")
            else:
                c.check_history(H_MULTI << mshift, "Q" if is_orig else "q")
        elif bits == 1:
            if syn:
                code = "H" if ackf else "S"
                if not is_orig:
                    code = code.lower()
                if c.check_history(H_SYN << mshift, code) and rel_seq != ep.hist_last_syn:
                    c.hist.append(code)
                ep.hist_last_syn = rel_seq
            if fin:
                code = "F" if is_orig else "f"
                if c.check_history(H_FIN << mshift, code) and rel_seq + dlen != ep.hist_last_fin:
                    c.hist.append(code)
                ep.hist_last_fin = rel_seq + dlen
            if rst:
                code = "R" if is_orig else "r"
                if c.check_history(H_RST << mshift, code) and rel_seq != ep.hist_last_rst:
                    c.hist.append(code)
                ep.hist_last_rst = rel_seq
        else:
            if dlen:
                c.check_history(H_DATA << mshift, "D" if is_orig else "d")
            elif ackf:
                c.check_history(H_ACK << mshift, "A" if is_orig else "a")

        # update_window: zero windows
        if win == 0 and not rst and peer.state != CLOSED and ep.state != RESET:
            self._scaled(c, ep, "W", "win0")

        if not (c.orig_ep.did_close and c.resp_ep.did_close):
            c.last = t

        if fin:
            ep.fin_cnt += 1
            ep.fin_seq = rel_seq + seg_len
        if rst:
            ep.rst_cnt += 1

        rel_ack = 0
        if ackf:
            if peer.state == INACTIVE:
                rel_ack = 1
                a1 = (ack_seq - 1) & 0xFFFFFFFF
                peer.start_seq = peer.ack_seq = peer.last_seq = a1
            else:
                alast = peer.ack_seq
                awraps = peer.ack_wraps
                d = (((ack_seq - alast + 0x80000000) & 0xFFFFFFFF) - 0x80000000)
                if d < 0:
                    if awraps and ack_seq > alast:
                        awraps -= 1
                elif d > 0:
                    if ack_seq < alast:
                        awraps += 1
                if awraps == 0:
                    rel_ack = (((ack_seq - peer.start_seq + 0x80000000) & 0xFFFFFFFF) - 0x80000000)
                    underflow = rel_ack < 0
                else:
                    rel_ack = peer.rel(ack_seq, awraps)
                    underflow = False
                if underflow:
                    rel_ack = 0
                elif not rst:
                    dack = (((ack_seq - peer.ack_seq + 0x80000000) & 0xFFFFFFFF) - 0x80000000)
                    if ack_seq == 0 and dack > TOO_LARGE_SEQ_DELTA:
                        pass
                    elif dack > 0:
                        peer.update_ack_seq(ack_seq)

        # update_last_seq
        delta_last = (((seq_one_past - ep.last_seq + 0x80000000) & 0xFFFFFFFF) - 0x80000000)
        if (syn or rst) and (delta_last > TOO_LARGE_SEQ_DELTA or delta_last < -TOO_LARGE_SEQ_DELTA):
            pass
        elif fin and ep.last_seq == ((ep.start_seq + 1) & 0xFFFFFFFF):
            ep.update_last_seq(seq_one_past)
        elif ep.state == RESET:
            pass
        elif delta_last > 0:
            ep.update_last_seq(seq_one_past)
        elif dlen > 0:
            self._scaled(c, ep, "T", "rxmt")

        do_close, gen_event = self._state_machine(c, ep, peer, t, is_orig, flags, base_seq, ack_seq,
                                                  dlen, delta_last)

        if ackf:
            self._ack_received(c, peer, rel_ack)

        c.first_seen |= 1 if is_orig else 2  # CheckPIA_FirstPacket
        if dlen > 0 and not rst and not seq_underflow:
            self._data_sent(ep, rel_seq + 1 if syn else rel_seq, dlen)

        if do_close:
            self._connection_closed(c, ep, peer, t)

    def _state_machine(self, c, ep, peer, t, is_orig, flags, base_seq, ack_seq, dlen, delta_last):
        do_close = gen_event = False
        syn = flags & SYN
        fin = flags & FIN
        rst = flags & RST
        ackf = flags & ACK
        st = ep.state
        if st == INACTIVE:
            if syn:
                if is_orig:
                    self._set_state(c, ep, SYN_ACK_SENT if ackf else SYN_SENT)
                    if c.attempt_at is None:
                        c.attempt_at = t + TCP_ATTEMPT_DELAY
                else:
                    if not ackf and peer.state == SYN_ACK_SENT and base_seq == ep.start_seq:
                        # SYN/SYN-ACK reversal: flip roles and establish.
                        c.is_partial = False
                        self._flip(c)
                        self._set_state(c, peer, ESTABLISHED)
                        c.first_seen |= 1
                    if peer.state == SYN_SENT:
                        self._set_state(c, peer, ESTABLISHED)
                    self._set_state(c, ep, ESTABLISHED)
            if fin:
                self._set_state(c, ep, CLOSED)
                do_close = gen_event = True
            if rst:
                self._set_state(c, ep, RESET)
                do_close = True
            if ep.state == INACTIVE:
                if not is_orig and dlen == 0 and c.orig_ep.state == SYN_SENT:
                    pass
                elif ackf and peer.state == ESTABLISHED:
                    self._set_state(c, ep, ESTABLISHED)
                    c.is_partial = False
                    c.first_seen |= 1 if is_orig else 2
                else:
                    self._set_state(c, ep, PARTIAL)
        elif st in (SYN_SENT, SYN_ACK_SENT):
            if fin:
                self._set_state(c, ep, CLOSED)
                do_close = gen_event = True
            if rst:
                self._set_state(c, ep, RESET)
                do_close = True
        elif st in (ESTABLISHED, PARTIAL):
            if syn and st == PARTIAL and peer.state == INACTIVE and not ackf:
                self._set_state(c, ep, SYN_SENT)
            if fin and not rst:
                self._set_state(c, ep, CLOSED)
                if peer.state == RESET and peer.prev_state == CLOSED:
                    self._set_state(c, peer, CLOSED)
                do_close = gen_event = True
            if rst:
                self._set_state(c, ep, RESET)
                do_close = True
        elif st == CLOSED:
            if rst and peer.state != CLOSED:
                self._set_state(c, ep, RESET)
                if not ep.did_close:
                    do_close = True
        return do_close, gen_event

    def _flip(self, c: Conn) -> None:
        c.orig_h, c.resp_h = c.resp_h, c.orig_h
        c.orig_p, c.resp_p = c.resp_p, c.orig_p
        c.orig_ep, c.resp_ep = c.resp_ep, c.orig_ep
        c.orig_ep.is_orig = True
        c.resp_ep.is_orig = False
        c.orig_pkts, c.resp_pkts = c.resp_pkts, c.orig_pkts
        c.orig_ipb, c.resp_ipb = c.resp_ipb, c.orig_ipb
        c.hist.append("^")
        c.hist_seen = ((c.hist_seen & 0xFFFF) << 16) | (c.hist_seen >> 16)
        c.first_seen = ((c.first_seen & 1) << 1) | ((c.first_seen & 2) >> 1)
        c.f_dirs = [1 - d for d in c.f_dirs]

    def _connection_closed(self, c: Conn, ep: TcpEndpoint, peer: TcpEndpoint, t: float) -> None:
        if ep.did_close:
            return
        ep.did_close = True
        if ep.state == RESET or peer.did_close or peer.state == INACTIVE:
            if c.remove_at is None:
                c.remove_at = c.last + TCP_CLOSE_DELAY
        elif ep.prev_state != INACTIVE:
            c.close_tick = c.last + TCP_SESSION_TIMER

    # -- reassembly bookkeeping (Zeek's TCP_Reassembler, without the payload) ----------------
    def _data_sent(self, ep: TcpEndpoint, seq: int, dlen: int) -> None:
        """``dlen`` payload bytes at relative ``seq``: advance the in-order point past them."""
        if ep.skip:
            return
        ack = ep.rel(ep.ack_seq, ep.ack_wraps)
        if seq < ack:
            if seq + dlen <= ack:
                return  # already acknowledged: nothing to insert
            dlen -= ack - seq
            seq = ack
        end = seq + dlen
        if end <= ep.rnext:
            return
        if seq <= ep.rnext:
            ep.rnext = end
            if ep.blocks:
                self._absorb(ep)
        else:
            if ep.blocks is None:
                ep.blocks = []
            ep.blocks.append([seq, end])
            ep.blocks.sort()
        ep.high = max(ep.high, end)
        unacked = ep.high - ep.trim
        if ep.no_data_acked() and self._undelivered(ep) > TCP_MAX_ABOVE_HOLE_WITHOUT_ANY_ACKS:
            ep.blocks = None
            ep.skip = True
        elif self.excessive and unacked > self.excessive:
            ep.blocks = None
            ep.skip = True

    @staticmethod
    def _undelivered(ep: TcpEndpoint) -> int:
        return sum(e - max(s, ep.rnext) for s, e in ep.blocks if e > ep.rnext) if ep.blocks else 0

    @staticmethod
    def _absorb(ep: TcpEndpoint) -> None:
        keep = []
        for blk in ep.blocks:
            s, e = blk
            if s <= ep.rnext:
                if e > ep.rnext:
                    ep.rnext = e
            else:
                keep.append(blk)
        ep.blocks = keep or None

    def _ack_received(self, c: Conn, ep: TcpEndpoint, rel_ack: int) -> None:
        """The peer acknowledged ``ep``'s data up to ``rel_ack``: acked-but-unseen bytes are gaps
        (history G/g, ``missed_bytes``) when both sides are established or cleanly closing."""
        seq = rel_ack
        if ep.fin_cnt > 0 and seq >= ep.fin_seq:
            seq = ep.fin_seq - 1
        if seq <= ep.trim:
            return
        if seq > ep.rnext:
            if seq <= 2 and c.is_partial:
                pass  # Zeek's faked initial sequence numbers of a partial connection
            else:
                if not ep.skip:
                    clean = _is_clean(ep) and _is_clean(ep.peer)
                    if ep.blocks:
                        for s, e in ep.blocks:
                            if s >= seq:
                                break
                            if s > ep.rnext:
                                if clean:
                                    self._gap(c, ep, s - ep.rnext)
                                ep.rnext = s
                            if e > ep.rnext:
                                ep.rnext = e
                    if seq > ep.rnext and clean:
                        self._gap(c, ep, seq - ep.rnext)
                if seq > ep.rnext:
                    ep.rnext = seq
                if ep.blocks:
                    self._absorb(ep)
        ep.trim = seq
        if ep.blocks:
            ep.blocks = [b for b in ep.blocks if b[1] > seq] or None

    def _gap(self, c: Conn, ep: TcpEndpoint, n: int) -> None:
        c.missed += n
        self._scaled(c, ep, "G", "gap")


def _is_clean(ep: TcpEndpoint) -> bool:
    return ep.state == ESTABLISHED or (ep.state == CLOSED and ep.prev_state == ESTABLISHED)
