"""A connection of the built-in flow meter: its running state and its conn.log record, Zeek's
connection-level rules (expiry timers, ``conn_state``, confirmed services, local addresses)."""
from __future__ import annotations

import random
import socket

from zeekml.sources.flowmeter.tcp import (CLOSED, ESTABLISHED, INACTIVE, PARTIAL, RESET, SYN_ACK_SENT,
                                          SYN_SENT, TCP_CONNECTION_LINGER, TCP_SESSION_TIMER,
                                          TCP_SYN_TIMEOUT, TcpEndpoint)

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
# Zeek's timing constants (init-bare.zeek defaults); TCP's are in tcp.py.
UDP_INACTIVITY = 60.0
ICMP_INACTIVITY = 60.0
DNS_SESSION_TIMEOUT = 10.0
TUNNEL_MAX_CHANGES_PER_CONNECTION = 5

# The UDP ports Zeek's DNS scripts register its DNS analyzer for (DNS, NetBIOS names, mDNS, LLMNR).
DNS_PORTS_UDP = frozenset({53, 137, 5353, 5355})

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


def addr_str(addr: bytes) -> str:
    """Raw 4- or 16-byte address as Zeek prints it."""
    return socket.inet_ntop(socket.AF_INET if len(addr) == 4 else socket.AF_INET6, addr)


class UidGenerator:
    """Zeek-style connection uids: ``C`` + 17 base62 digits (~101 random bits), deterministic per seed."""

    def __init__(self, seed: int = 0, prefix: str = "C"):
        self._choices = random.Random(seed).choices
        self.prefix = prefix

    def __call__(self) -> str:
        return self.prefix + "".join(self._choices(_B62, k=17))


class Conn:
    """One connection's running state and its conn.log record."""

    __slots__ = ("key", "uid", "proto", "ip_proto", "orig_h", "orig_p", "resp_h", "resp_p", "start",
                 "last", "orig_pkts", "resp_pkts", "orig_ipb", "resp_ipb", "hist", "hist_seen",
                 "orig_size", "resp_size", "orig_active", "resp_active", "tunnel_parents",
                 "service", "missed", "orig_ep", "resp_ep", "inactivity", "attempt_at",
                 "remove_at", "close_tick", "sniff_left", "f_dirs", "f_lens", "f_iats", "f_flags",
                 "f_last", "flipped", "dns_tick", "syn_seen", "resp_data", "expected_svc",
                 "teredo_dirs", "sniff_long", "is_partial", "first_seen", "udp_chk",
                 "ssh_wait", "encap", "tunnel_changes")

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
        self.dns_tick: float | None = None  # when Zeek's DNS analyzer timer fires next
        self.syn_seen = self.resp_data = self.expected_svc = False
        self.teredo_dirs = 0
        self.sniff_long = 0
        self.is_partial = False  # TCP: Zeek's TCPSessionAdapter::is_partial
        self.first_seen = 0  # TCP: 1 = originator's first packet seen, 2 = responder's
        self.encap: str | None = None  # the tunnel (its uid) the latest packet came through
        self.tunnel_changes = 0
        self.ssh_wait = False  # SSH banner seen, key exchange (NEWKEYS) not yet
        self.udp_chk: list[int] | None = None  # UDP bad checksums: [orig n, next, resp n, next]

    # -- history ----------------------------------------------------------------------------
    def check_history(self, mask: int, code: str) -> bool:
        """Zeek's Connection::CheckHistory: add ``code`` the first time; True if seen before."""
        if self.hist_seen & mask:
            return True
        self.hist_seen |= mask
        self.hist.append(code)
        return False

    def udp_bad_checksum(self, is_orig: bool) -> None:
        """Zeek's ``UDPSessionAdapter::HandleBadChecksum``: history ``C``/``c`` at the 1st, 10th,
        100th, ... bad datagram of a direction."""
        chk = self.udp_chk
        if chk is None:
            chk = self.udp_chk = [0, 1, 0, 1]
        i = 0 if is_orig else 2
        chk[i] += 1
        if chk[i] == chk[i + 1]:
            self.hist.append("C" if is_orig else "c")
            chk[i + 1] *= 10

    def start_dns_timer(self) -> None:
        """Zeek's DNS analyzer is attached: its timer is first due 10 s after the start."""
        if self.dns_tick is None:
            self.dns_tick = self.start + DNS_SESSION_TIMEOUT

    # -- expiry -----------------------------------------------------------------------------
    def expired(self, t: float) -> bool:
        """Whether Zeek would have removed this connection before a packet at time ``t``."""
        if t >= self.last + self.inactivity:
            return True
        if self.remove_at is not None and t >= self.remove_at:
            return True
        tick = self.dns_tick
        if tick is not None and t >= tick:
            # Zeek's DNS analyzer timer (DNS_Analyzer::ExpireTimer), due dns_session_timeout
            # (10 s) after the start. Zeek runs a due timer at the next packet's time t, removes
            # the connection if it has been idle for 9 s by then, else re-arms it at t + 10 s.
            if t - self.last >= DNS_SESSION_TIMEOUT - 1.0:
                return True
            self.dns_tick = t + DNS_SESSION_TIMEOUT
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
        if self.dns_tick is not None:
            when = min(when, self.dns_tick)
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
