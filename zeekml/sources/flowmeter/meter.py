"""The built-in flow meter: packets in, Zeek-style connections out (Zeek's session manager).

``FlowMeter.packet`` decodes a frame (``decode.py``), reassembles IP fragments, finds or creates the
connection of its 5-tuple, counts it and hands TCP segments to ``tcp.py``; finished connections go
to ``on_conn`` (``conn.py`` renders their conn.log and zeekml_flow.log records). The package
docstring (``zeekml/sources/flowmeter/__init__.py``) lists the Zeek semantics it follows.
"""
from __future__ import annotations

import heapq
import logging
import struct
from dataclasses import dataclass, field
from typing import Callable, Iterator

from zeekml.sources.flowmeter import decode as dec
from zeekml.sources.flowmeter import tcp
from zeekml.sources.flowmeter.conn import (DNS_PORTS_UDP, ICMP_INACTIVITY, LIKELY_SERVER_PORTS_TCP,
                                           LIKELY_SERVER_PORTS_UDP,
                                           TUNNEL_MAX_CHANGES_PER_CONNECTION, UDP_INACTIVITY,
                                           Conn, UidGenerator)
from zeekml.sources.flowmeter.sniff import (STARTTLS_SERVICES, ftp_expectations,
                                            irc_dcc_expectations, looks_tls, sniff_tcp, sniff_udp,
                                            ssh_newkeys)
from zeekml.sources.flowmeter.tcp import (ACK, H_DATA, SYN, TCP_ATTEMPT_DELAY,
                                          TCP_EXCESSIVE_DATA_WITHOUT_FURTHER_ACKS, TcpEndpoint)

log = logging.getLogger(__name__)

# ICMP counterparts (Zeek's ICMP4_counterpart / ICMP6_counterpart).
_ICMP4_PAIRS = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 9: 10, 17: 18, 18: 17}
_ICMP6_PAIRS = {128: 129, 129: 128, 133: 134, 134: 133, 135: 136, 136: 135, 130: 131, 131: 130,
                139: 140, 140: 139, 144: 145, 145: 144}

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_TCPHDR = struct.Struct("!HHIIBBH")


def _multi_or_broadcast(addr: bytes) -> bool:
    """Zeek never makes a broadcast or multicast address the originator by flipping."""
    if len(addr) == 4:
        return addr == b"\xff\xff\xff\xff" or 224 <= addr[0] <= 239
    return addr[0] == 0xFF


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
    bad_checksums: int = 0  # packets Zeek would not analyse (IP, TCP, UDP or ICMP checksum)
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
        ignore_checksums: skip checksum validation, as ``zeek -C`` (default False: like Zeek, a
            packet with a bad IPv4 header checksum is dropped before any connection sees it; a
            TCP, UDP or ICMP packet with a bad checksum is seen by its connection, which it
            creates if needed, and by ``zeekml_flow.log``, but is neither counted nor analysed,
            and TCP and UDP add history ``C``/``c``, scaled 1, 10, 100, ...).
    """

    def __init__(self, on_conn: Callable[[Conn], None] | None = None, seed: int = 0,
                 flow_packets: int = 32, sniff: bool = True,
                 likely_server_ports: tuple[frozenset, frozenset] | None = None,
                 tcp_excessive_data_without_further_acks: int = TCP_EXCESSIVE_DATA_WITHOUT_FURTHER_ACKS,
                 ignore_checksums: bool = False):
        self.conns: dict = {}
        self.ignore_checksums = ignore_checksums
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
            if not self.ignore_checksums and not dec.ip4_header_checksum_ok(buf, off, ihl):
                self.stats.bad_checksums += 1  # Zeek: weird bad_IP_checksum, packet dropped
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
        c.encap = parent
        self.conns[key] = c
        self._n += 1
        heapq.heappush(self._due, (t + min(inactivity, TCP_ATTEMPT_DELAY), self._n, key, c))
        return c

    def _count(self, c: Conn, is_orig: bool, ip_len: int) -> None:
        """Zeek's ConnSize analyzer: only packets the transport analyzer accepted."""
        if is_orig:
            c.orig_pkts += 1
            c.orig_ipb += ip_len
        else:
            c.resp_pkts += 1
            c.resp_ipb += ip_len

    def _seen(self, c: Conn, is_orig: bool, t: float, ip_len: int, flags: int, parent) -> None:
        """Every packet of the connection, good checksum or not: its tunnel and, as Zeek's
        ``new_packet`` event, its zeekml_flow.log features."""
        if parent != c.encap:
            # Zeek's Connection::CheckEncapsulation: past tunnel_max_changes_per_connection (5)
            # changes of tunnel, weird tunnel_max_changes_per_connection_exceeded and history X
            c.encap = parent
            c.tunnel_changes += 1
            if c.tunnel_changes == TUNNEL_MAX_CHANGES_PER_CONNECTION + 1:
                c.hist.append("X")
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
        self._seen(c, is_orig, t, ip_len, 0, parent)
        self._count(c, is_orig, ip_len)
        c.last = t

    def _checksum_bad(self, buf, poff: int, plen: int, end: int, src: bytes, dst: bytes,
                      proto: int) -> bool:
        """Zeek validates a transport checksum only when the whole segment was captured."""
        if self.ignore_checksums or end < poff + plen:
            return False
        if dec.transport_checksum_ok(buf, poff, plen, src, dst, proto):
            return False
        self.stats.bad_checksums += 1
        return True

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
        self._seen(c, is_orig, t, ip_len, 0, parent)
        if self._checksum_bad(buf, poff, plen, end, src, dst, proto):
            return  # Zeek: weird bad_ICMP_checksum; no history letter for ICMP
        self._count(c, is_orig, ip_len)
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
            if c.resp_p in DNS_PORTS_UDP:
                # Zeek attaches its DNS analyzer by responder port, and with it the DNS session
                # timer, whatever the payload
                c.start_dns_timer()
        is_orig = src == c.orig_h and sport == c.orig_p
        self._seen(c, is_orig, t, ip_len, 0, parent)
        if self._udp_checksum_bad(buf, poff, plen, end, src, dst, dport):
            c.udp_bad_checksum(is_orig)
            return
        self._count(c, is_orig, ip_len)
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
                    c.start_dns_timer()
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

    def _udp_checksum_bad(self, buf, poff: int, plen: int, end: int, src: bytes, dst: bytes,
                          dport: int) -> bool:
        csum = _U16.unpack_from(buf, poff + 6)[0]
        if csum == 0:
            if len(src) == 4:
                return False  # IPv4: no checksum was computed
            # IPv6 requires one, except VXLAN to its port (Zeek's vxlan_ports, flag I set)
            if (dport == 4789 and plen > 8 + 8 + 14 and poff + 8 < end
                    and buf[poff + 8] & 0x08):
                return False
        return self._checksum_bad(buf, poff, plen, end, src, dst, 17)

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
        if c is not None and flags & SYN and tcp.is_reuse(c, flags, seq):
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
        self._seen(c, is_orig, t, ip_len, flags, parent)
        if self._checksum_bad(buf, poff, plen, end, src, dst, 6):
            tcp.bad_checksum(c, is_orig)
            return
        if is_orig and flags & SYN and not flags & ACK:
            c.syn_seen = True
        self._count(c, is_orig, ip_len)
        tcp.process(c, is_orig, t, flags, seq, ack, win, dlen, self.excessive)
        if dlen > 0:
            if not is_orig:
                c.resp_data = True
            if self.sniff and (c.sniff_left > 0 or c.sniff_long > 0):
                doff = poff + thl
                if doff < end:
                    # an SSH key exchange reply can be longer than the usual sniffing window
                    lim = end if c.ssh_wait else min(end, doff + 2048)
                    self._sniff_tcp(c, bytes(buf[doff:lim]), is_orig, t)

    def _sniff_tcp(self, c: Conn, payload: bytes, is_orig: bool, t: float) -> None:
        if c.sniff_left > 0:
            c.sniff_left -= 1
            svc = sniff_tcp(payload, is_orig)
            if svc == "ssh":
                if not c.service and not c.ssh_wait:
                    # named once the key exchange completes, as Zeek's analyzer confirms
                    c.ssh_wait = True
                    c.sniff_long = 1000
            elif svc and not c.service and not (svc == "modbus" and is_orig and not c.resp_data):
                c.service.append(svc)
                if svc in STARTTLS_SERVICES:
                    c.sniff_long = 1000
        if c.ssh_wait:
            c.sniff_long -= 1
            if ssh_newkeys(payload, is_orig):
                c.service.append("ssh")
                c.ssh_wait = False
                c.sniff_long = 0
            elif c.sniff_long <= 0:
                c.ssh_wait = False
            return
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
