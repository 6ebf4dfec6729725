"""TCP for the built-in flow meter: Zeek's endpoint state machine, history letters and the
reassembler's bookkeeping (without the payload), as far as conn.log needs them.

Functions here take the connection (``zeekml.sources.flowmeter.conn.Conn``) and change its TCP
state in place; they never create or finish connections (the meter does).
"""
from __future__ import annotations

from typing import Protocol

# Zeek's TCP timing constants (init-bare.zeek defaults).
TCP_INACTIVITY = 300.0
TCP_ATTEMPT_DELAY = 5.0
TCP_CLOSE_DELAY = 5.0
TCP_SYN_TIMEOUT = 5.0
TCP_SESSION_TIMER = 6.0
TCP_CONNECTION_LINGER = 5.0
TCP_MAX_ABOVE_HOLE_WITHOUT_ANY_ACKS = 16384
TCP_EXCESSIVE_DATA_WITHOUT_FURTHER_ACKS = 10 * 1024 * 1024
TOO_LARGE_SEQ_DELTA = 1048576

# TCP endpoint states (Zeek's TCP_ENDPOINT_*).
INACTIVE, SYN_SENT, SYN_ACK_SENT, PARTIAL, ESTABLISHED, CLOSED, RESET = range(7)
_HANDSHAKE = (INACTIVE, SYN_SENT, SYN_ACK_SENT)

# History masks (Zeek's HIST_*); responder masks are shifted by 16.
H_SYN, H_FIN, H_RST, H_FIN_RST, H_DATA, H_ACK, H_MULTI = 1, 2, 4, 8, 16, 32, 64

FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


def seq_delta(a: int, b: int) -> int:
    """Zeek's ``seq_delta``: ``a - b`` for 32-bit sequence numbers, as a signed 32-bit value."""
    return ((a - b + 0x80000000) & 0xFFFFFFFF) - 0x80000000


def relative_seq(seq: int, last: int, wraps: int, start: int) -> tuple[int, bool]:
    """Zeek's ``get_relative_seq``: ``seq`` relative to ``start``, counting 32-bit wraps.

    ``last`` and ``wraps`` are the endpoint's latest absolute value of the same kind (last
    sequence number, or last ack) and how often it wrapped. Returns ``(relative, underflow)``;
    ``underflow`` is True when, without any wrap, ``seq`` lies before ``start``.
    """
    delta = seq_delta(seq, last)
    if delta < 0:
        if wraps and seq > last:
            wraps -= 1
    elif delta > 0:
        if seq < last:
            wraps += 1
    if wraps == 0:
        rel = seq_delta(seq, start)
        return rel, rel < 0
    return ((wraps << 32) | seq) - start, False


class TcpEndpoint:
    """One side of a TCP connection (Zeek's TCP_Endpoint, the parts conn.log needs)."""

    __slots__ = ("is_orig", "peer", "state", "prev_state", "start_seq", "last_seq", "ack_seq",
                 "seq_wraps", "ack_wraps", "fin_cnt", "rst_cnt", "fin_seq", "hist_last_syn",
                 "hist_last_fin", "hist_last_rst", "did_close", "rnext", "blocks", "trim",
                 "skip", "gap_cnt", "gap_thresh", "rxmt_cnt", "rxmt_thresh", "win0_cnt",
                 "win0_thresh", "chk_cnt", "chk_thresh")

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
        self.rnext = self.trim = 1  # Zeek's last_reassem_seq, trim_seq
        self.blocks: list[list[int]] | None = None
        self.skip = False  # Zeek's skip_deliveries
        self.gap_cnt = self.rxmt_cnt = self.win0_cnt = self.chk_cnt = 0
        self.gap_thresh = self.rxmt_thresh = self.win0_thresh = self.chk_thresh = 1

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


class Conn(Protocol):
    """What TCP processing reads and changes on a connection (``conn.Conn`` has it all; a
    Protocol rather than an import, because conn.py imports this module's states)."""

    orig_h: bytes
    resp_h: bytes
    orig_p: int
    resp_p: int
    orig_ep: TcpEndpoint
    resp_ep: TcpEndpoint
    orig_pkts: int
    resp_pkts: int
    orig_ipb: int
    resp_ipb: int
    hist: list[str]
    hist_seen: int
    first_seen: int
    f_dirs: list[int]
    is_partial: bool
    inactivity: float
    last: float
    attempt_at: float | None
    remove_at: float | None
    close_tick: float | None
    missed: int

    def check_history(self, mask: int, code: str) -> bool: ...


def is_reuse(c: Conn, flags: int, seq: int) -> bool:
    """Zeek's ``TCPSessionAdapter::IsReuse``: does a SYN start a new connection on this 5-tuple?"""
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


def _set_state(c: Conn, ep: TcpEndpoint, new: int) -> None:
    if new != ep.state:
        if new not in _HANDSHAKE and ep.state in _HANDSHAKE and ep.peer.state in _HANDSHAKE:
            c.inactivity = TCP_INACTIVITY
        ep.prev_state = ep.state
        ep.state = new


def _scaled(c: Conn, ep: TcpEndpoint, code: str, which: str) -> None:
    cnt = getattr(ep, which + "_cnt") + 1
    setattr(ep, which + "_cnt", cnt)
    thresh = getattr(ep, which + "_thresh")
    if cnt == thresh:
        c.hist.append(code if ep.is_orig else code.lower())
        setattr(ep, which + "_thresh", thresh * 10)


def bad_checksum(c: Conn, is_orig: bool) -> None:
    """A segment with a bad checksum (Zeek's ``TCP_Endpoint::ChecksumError``): history ``C``/``c``
    (scaled), and nothing else; the endpoint's state never sees the segment."""
    _scaled(c, c.orig_ep if is_orig else c.resp_ep, "C", "chk")


def process(c: Conn, is_orig: bool, t: float, flags: int, base_seq: int, ack_seq: int, win: int,
            dlen: int, excessive: int) -> None:
    """One TCP segment of ``c`` (Zeek's ``TCPSessionAdapter::DeliverPacket``, the conn.log parts).

    ``excessive`` is Zeek's ``tcp_excessive_data_without_further_acks`` (0 disables it).
    """
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

    rel_seq, seq_underflow = relative_seq(base_seq, ep.last_seq, ep.seq_wraps, ep.start_seq)

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
        _scaled(c, ep, "W", "win0")

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
            rel_ack, underflow = relative_seq(ack_seq, peer.ack_seq, peer.ack_wraps, peer.start_seq)
            if underflow:
                rel_ack = 0
            elif not rst:
                dack = seq_delta(ack_seq, peer.ack_seq)
                if ack_seq == 0 and dack > TOO_LARGE_SEQ_DELTA:
                    pass
                elif dack > 0:
                    peer.update_ack_seq(ack_seq)

    # update_last_seq
    delta_last = seq_delta(seq_one_past, ep.last_seq)
    if (syn or rst) and (delta_last > TOO_LARGE_SEQ_DELTA or delta_last < -TOO_LARGE_SEQ_DELTA):
        pass
    elif fin and ep.last_seq == ((ep.start_seq + 1) & 0xFFFFFFFF):
        ep.update_last_seq(seq_one_past)
    elif ep.state == RESET:
        pass
    elif delta_last > 0:
        ep.update_last_seq(seq_one_past)
    elif dlen > 0:
        _scaled(c, ep, "T", "rxmt")

    do_close = _state_machine(c, ep, peer, t, is_orig, flags, base_seq, dlen)

    if ackf:
        _ack_received(c, peer, rel_ack)

    c.first_seen |= 1 if is_orig else 2  # CheckPIA_FirstPacket
    if dlen > 0 and not rst and not seq_underflow:
        _data_sent(ep, rel_seq + 1 if syn else rel_seq, dlen, excessive)

    if do_close:
        _connection_closed(c, ep, peer)


def _state_machine(c: Conn, ep: TcpEndpoint, peer: TcpEndpoint, t: float, is_orig: bool,
                   flags: int, base_seq: int, dlen: int) -> bool:
    """Zeek's endpoint state transitions; True when the segment closes ``ep``."""
    do_close = False
    syn = flags & SYN
    fin = flags & FIN
    rst = flags & RST
    ackf = flags & ACK
    st = ep.state
    if st == INACTIVE:
        if syn:
            if is_orig:
                _set_state(c, ep, SYN_ACK_SENT if ackf else SYN_SENT)
                if c.attempt_at is None:
                    c.attempt_at = t + TCP_ATTEMPT_DELAY
            else:
                if not ackf and peer.state == SYN_ACK_SENT and base_seq == ep.start_seq:
                    # SYN/SYN-ACK reversal: flip roles and establish.
                    c.is_partial = False
                    flip(c)
                    _set_state(c, peer, ESTABLISHED)
                    c.first_seen |= 1
                if peer.state == SYN_SENT:
                    _set_state(c, peer, ESTABLISHED)
                _set_state(c, ep, ESTABLISHED)
        if fin:
            _set_state(c, ep, CLOSED)
            do_close = True
        if rst:
            _set_state(c, ep, RESET)
            do_close = True
        if ep.state == INACTIVE:
            if not is_orig and dlen == 0 and c.orig_ep.state == SYN_SENT:
                pass
            elif ackf and peer.state == ESTABLISHED:
                _set_state(c, ep, ESTABLISHED)
                c.is_partial = False
                c.first_seen |= 1 if is_orig else 2
            else:
                _set_state(c, ep, PARTIAL)
    elif st in (SYN_SENT, SYN_ACK_SENT):
        if fin:
            _set_state(c, ep, CLOSED)
            do_close = True
        if rst:
            _set_state(c, ep, RESET)
            do_close = True
    elif st in (ESTABLISHED, PARTIAL):
        if syn and st == PARTIAL and peer.state == INACTIVE and not ackf:
            _set_state(c, ep, SYN_SENT)
        if fin and not rst:
            _set_state(c, ep, CLOSED)
            if peer.state == RESET and peer.prev_state == CLOSED:
                _set_state(c, peer, CLOSED)
            do_close = True
        if rst:
            _set_state(c, ep, RESET)
            do_close = True
    elif st == CLOSED:
        if rst and peer.state != CLOSED:
            _set_state(c, ep, RESET)
            if not ep.did_close:
                do_close = True
    return do_close


def flip(c: Conn) -> None:
    """Swap originator and responder (Zeek's ``Connection::FlipRoles``), history ``^``."""
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


def _connection_closed(c: Conn, ep: TcpEndpoint, peer: TcpEndpoint) -> None:
    if ep.did_close:
        return
    ep.did_close = True
    if ep.state == RESET or peer.did_close or peer.state == INACTIVE:
        if c.remove_at is None:
            c.remove_at = c.last + TCP_CLOSE_DELAY
    elif ep.prev_state != INACTIVE:
        c.close_tick = c.last + TCP_SESSION_TIMER


# -- reassembly bookkeeping (Zeek's TCP_Reassembler, without the payload) -------------------
def _data_sent(ep: TcpEndpoint, seq: int, dlen: int, excessive: int) -> None:
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
            _absorb(ep)
    else:
        if ep.blocks is None:
            ep.blocks = []
        ep.blocks.append([seq, end])
        ep.blocks.sort()
    if ep.no_data_acked() and _undelivered(ep) > TCP_MAX_ABOVE_HOLE_WITHOUT_ANY_ACKS:
        ep.blocks = None
        ep.skip = True
    elif excessive and _buffered(ep) > excessive:
        ep.blocks = None
        ep.skip = True


def _buffered(ep: TcpEndpoint) -> int:
    """Zeek's ``block_list.DataSize()``: payload bytes held above the last ack, delivered or
    not. Gaps in the sequence space count nothing (a capture with holes holds little)."""
    held = ep.rnext - ep.trim  # delivered and contiguous up to rnext, not yet acknowledged
    if ep.blocks:
        pos = ep.rnext
        for s, e in ep.blocks:  # sorted; may overlap each other
            if e > pos:
                held += e - max(s, pos)
                pos = e
    return held


def _undelivered(ep: TcpEndpoint) -> int:
    return sum(e - max(s, ep.rnext) for s, e in ep.blocks if e > ep.rnext) if ep.blocks else 0


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


def _ack_received(c: Conn, ep: TcpEndpoint, rel_ack: int) -> None:
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
                                _gap(c, ep, s - ep.rnext)
                            ep.rnext = s
                        if e > ep.rnext:
                            ep.rnext = e
                if seq > ep.rnext and clean:
                    _gap(c, ep, seq - ep.rnext)
            if seq > ep.rnext:
                ep.rnext = seq
            if ep.blocks:
                _absorb(ep)
    ep.trim = seq
    if ep.blocks:
        ep.blocks = [b for b in ep.blocks if b[1] > seq] or None


def _gap(c: Conn, ep: TcpEndpoint, n: int) -> None:
    c.missed += n
    _scaled(c, ep, "G", "gap")


def _is_clean(ep: TcpEndpoint) -> bool:
    return ep.state == ESTABLISHED or (ep.state == CLOSED and ep.prev_state == ESTABLISHED)
