"""Capture files: the packets of a pcap or pcapng file, with each packet's link type.

Replay (the built-in flow meter or ``zeek -r``, and the logs they write) is orchestrated by
``zeekml.pipeline.replay``; this module only reads captures, with dpkt (pcap and pcapng). dpkt is a
small, pure-Python, long-maintained library whose header classes parse both formats; we drive its block/record
parsers from our own
loop so that each packet keeps its interface's link type (pcapng files may mix interfaces) and a
truncated or corrupt file is reported with the number of the packet where it broke, after every
packet before it has been processed.
"""
from __future__ import annotations

import os
import struct
from typing import Iterator

import dpkt

from zeekml._core.errors import InputNotFound, UnreadableInput


class CaptureError(UnreadableInput):
    """A capture file is truncated or corrupt; ``packet`` is the 1-based packet where it broke."""

    def __init__(self, message: str, path: str, packet: int | None = None):
        self.packet = packet
        where = f"packet {packet}: " if packet is not None else ""
        super().__init__(where + message, path)


_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": (True, 1e6), b"\xa1\xb2\xc3\xd4": (False, 1e6),
    b"\x4d\x3c\xb2\xa1": (True, 1e9), b"\xa1\xb2\x3c\x4d": (False, 1e9),
}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"


def is_capture(path: str) -> bool:
    """Whether ``path`` starts with a pcap (either byte order, micro- or nanosecond) or pcapng
    magic number, the ones ``iter_capture`` reads; False when it cannot be read."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError:
        return False
    return magic in _PCAP_MAGICS or magic == _PCAPNG_MAGIC


def iter_capture(path: str) -> Iterator[tuple[float, bytes, int]]:
    """Yield ``(ts, frame, linktype)`` for each packet of a pcap or pcapng file.

    Raises ``CaptureError`` (after yielding every packet before the damage) when the file is
    truncated or corrupt; ``InputNotFound`` when it does not exist.
    """
    if not os.path.exists(path):
        raise InputNotFound("no such capture file", path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UnreadableInput(f"cannot open: {e.strerror}", path) from e
    with f:
        magic = f.read(4)
        if magic in _PCAP_MAGICS:
            yield from _iter_pcap(f, path, magic)
        elif magic == _PCAPNG_MAGIC:
            yield from _iter_pcapng(f, path)
        else:
            raise CaptureError("not a pcap or pcapng file (unknown magic)", path)


def _iter_pcap(f, path: str, magic: bytes) -> Iterator[tuple[float, bytes, int]]:
    le, divisor = _PCAP_MAGICS[magic]
    rest = f.read(20)
    if len(rest) < 20:
        raise CaptureError("truncated pcap file header", path)
    fh = (dpkt.pcap.LEFileHdr if le else dpkt.pcap.FileHdr)(magic + rest)
    linktype = fh.linktype & 0x0FFFFFFF
    # Record headers: dpkt's PktHdr layout, unpacked with one precompiled struct (a dpkt object
    # per packet would cost more than the flow meter itself).
    rec = struct.Struct("<IIII" if le else ">IIII")
    hlen = rec.size
    unpack = rec.unpack
    snap = max(fh.snaplen, 262144) if fh.snaplen else 262144
    n = 0
    read = f.read
    while True:
        hb = read(hlen)
        if not hb:
            return
        n += 1
        if len(hb) < hlen:
            raise CaptureError(f"truncated record header ({len(hb)} of {hlen} bytes)", path, n)
        sec, frac, caplen, _wirelen = unpack(hb)
        if caplen > snap or caplen > 0x4000000:
            raise CaptureError(f"bogus captured length {caplen}", path, n)
        buf = read(caplen)
        if len(buf) < caplen:
            raise CaptureError(f"truncated packet ({len(buf)} of {caplen} bytes)", path, n)
        yield sec + frac / divisor, buf, linktype


def _iter_pcapng(f, path: str) -> Iterator[tuple[float, bytes, int]]:
    png = dpkt.pcapng
    n = 0
    le = True
    ifaces: list[tuple[int, float, int]] = []  # (linktype, divisor, tsoffset)
    read = f.read
    first = True
    while True:
        if first:
            head = _PCAPNG_MAGIC + read(4)
            first = False
        else:
            head = read(8)
        if not head:
            return
        if len(head) < 8:
            raise CaptureError("truncated block header", path, n + 1)
        btype = struct.unpack("<I", head[:4])[0]
        if btype == png.PCAPNG_BT_SHB:
            bom = read(4)
            if len(bom) < 4:
                raise CaptureError("truncated section header", path, n + 1)
            le = bom == b"\x4d\x3c\x2b\x1a"
            if not le and bom != b"\x1a\x2b\x3c\x4d":
                raise CaptureError("bad byte-order magic", path, n + 1)
            blen = struct.unpack("<I" if le else ">I", head[4:8])[0]
            if blen < 28 or blen > 0x1000000:
                raise CaptureError(f"bogus section length {blen}", path, n + 1)
            body = read(blen - 12)
            if len(body) < blen - 12:
                raise CaptureError("truncated section header", path, n + 1)
            ifaces = []
            continue
        fmt = "<II" if le else ">II"
        btype, blen = struct.unpack(fmt, head)
        if blen < 12 or blen % 4 or blen > 0x4000000:
            raise CaptureError(f"bogus block length {blen}", path, n + 1)
        body = read(blen - 8)
        if len(body) < blen - 8:
            raise CaptureError("truncated block", path, n + 1)
        buf = head + body
        try:
            if btype == png.PCAPNG_BT_IDB:
                idb = (png.InterfaceDescriptionBlockLE if le else png.InterfaceDescriptionBlock)(buf)
                divisor, tsoff = 1e6, 0
                for opt in idb.opts:
                    if opt.code == png.PCAPNG_OPT_IF_TSRESOL and opt.data:
                        v = opt.data[0]
                        divisor = float((2 if v & 0x80 else 10) ** (v & 0x7F))
                    elif opt.code == png.PCAPNG_OPT_IF_TSOFFSET and len(opt.data) >= 8:
                        tsoff = struct.unpack("<q" if le else ">q", opt.data[:8])[0]
                ifaces.append((idb.linktype, divisor, tsoff))
            elif btype == png.PCAPNG_BT_EPB:
                n += 1
                epb = (png.EnhancedPacketBlockLE if le else png.EnhancedPacketBlock)(buf)
                if epb.iface_id >= len(ifaces):
                    raise CaptureError(f"packet names unknown interface {epb.iface_id}", path, n)
                lt, div, off = ifaces[epb.iface_id]
                yield off + ((epb.ts_high << 32) | epb.ts_low) / div, bytes(epb.pkt_data), lt
            elif btype == png.PCAPNG_BT_PB:
                n += 1
                pb = (png.PacketBlockLE if le else png.PacketBlock)(buf)
                lt, div, off = ifaces[pb.iface_id] if pb.iface_id < len(ifaces) else (1, 1e6, 0)
                yield off + ((pb.ts_high << 32) | pb.ts_low) / div, bytes(pb.pkt_data), lt
            elif btype == 3:  # simple packet block: no timestamp
                n += 1
                if ifaces and len(buf) >= 16:
                    yield 0.0, bytes(buf[12:blen - 4]), ifaces[0][0]
        except (dpkt.UnpackError, struct.error, ValueError, IndexError) as e:
            raise CaptureError(f"corrupt block: {e}", path, n or None) from e
