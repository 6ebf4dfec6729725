"""Capture replay: ``zeek -r`` when Zeek is installed, else the built-in flow meter.

Captures are read with dpkt (pcap and pcapng). dpkt is a small, pure-Python, long-maintained
library whose header classes parse both formats; we drive its block/record parsers from our own
loop so that each packet keeps its interface's link type (pcapng files may mix interfaces) and a
truncated or corrupt file is reported with the number of the packet where it broke, after every
packet before it has been processed.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import dpkt

from zeekml._core.errors import InputNotFound, OutputError, UnreadableInput, ZeekmlError
from zeekml.sinks.zeek_log import ZeekLogWriter
from zeekml.sources.flowmeter import CONN_FIELDS, Conn, FlowMeter

log = logging.getLogger(__name__)

try:  # the flow-log schema is owned by zeekml.flows; fall back to the agreed contract
    from zeekml.flows.flow_log_schema import FLOW_FEATURES_FIELDS, FLOW_LOG_PATH
except ImportError:  # pragma: no cover - only before that module existed
    FLOW_LOG_PATH = "zeekml_flow"
    FLOW_FEATURES_FIELDS = [
        ("ts", "time"), ("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"),
        ("id.resp_h", "addr"), ("id.resp_p", "port"), ("proto", "enum"), ("n_pkts", "count"),
        ("dirs", "vector[count]"), ("ip_lens", "vector[count]"), ("iats", "vector[interval]"),
        ("tcp_flags", "vector[count]"),
    ]

ENGINES = ("auto", "zeek", "builtin")


class CaptureError(UnreadableInput):
    """A capture file is truncated or corrupt; ``packet`` is the 1-based packet where it broke."""

    def __init__(self, message: str, path: str, packet: int | None = None):
        self.packet = packet
        where = f"packet {packet}: " if packet is not None else ""
        super().__init__(where + message, path)


class EngineUnavailable(ZeekmlError):
    """``--engine zeek`` was asked for but no ``zeek`` binary is on PATH (or it failed)."""

    exit_code = 7


_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": (True, 1e6), b"\xa1\xb2\xc3\xd4": (False, 1e6),
    b"\x4d\x3c\xb2\xa1": (True, 1e9), b"\xa1\xb2\x3c\x4d": (False, 1e9),
}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"


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
    import struct as _struct
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
        btype = _struct.unpack("<I", head[:4])[0]
        if btype == png.PCAPNG_BT_SHB:
            bom = read(4)
            if len(bom) < 4:
                raise CaptureError("truncated section header", path, n + 1)
            le = bom == b"\x4d\x3c\x2b\x1a"
            if not le and bom != b"\x1a\x2b\x3c\x4d":
                raise CaptureError("bad byte-order magic", path, n + 1)
            blen = _struct.unpack("<I" if le else ">I", head[4:8])[0]
            if blen < 28 or blen > 0x1000000:
                raise CaptureError(f"bogus section length {blen}", path, n + 1)
            body = read(blen - 12)
            if len(body) < blen - 12:
                raise CaptureError("truncated section header", path, n + 1)
            ifaces = []
            continue
        fmt = "<II" if le else ">II"
        btype, blen = _struct.unpack(fmt, head)
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
                        tsoff = _struct.unpack("<q" if le else ">q", opt.data[:8])[0]
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
        except (dpkt.UnpackError, _struct.error, ValueError, IndexError) as e:
            raise CaptureError(f"corrupt block: {e}", path, n or None) from e


# -- output ----------------------------------------------------------------------------------

class JsonLogWriter:
    """Zeek's JSON writer layout: one object per line, dotted keys, unset fields omitted."""

    def __init__(self, path: str, fields: Sequence[tuple[str, str]]):
        self.path = path
        self.names = [n for n, _ in fields]
        self.types = dict(fields)
        self.count = 0
        try:
            self._f = open(path, "w", encoding="utf-8")
        except OSError as e:
            raise OutputError(f"cannot write: {e.strerror}", path) from e

    def write(self, rec: dict) -> None:
        obj = {}
        for n in self.names:
            v = rec.get(n)
            if v is None:
                continue
            t = self.types[n]
            if t in ("time", "interval"):
                v = round(v, 6)  # Zeek's JSON writer: microsecond precision
            elif t == "vector[interval]":
                v = [round(x, 6) for x in v]
            obj[n] = v
        self._f.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self.count += 1

    def close(self) -> None:
        self._f.close()


@dataclass
class ReplayResult:
    """What a replay wrote and saw."""

    engine: str
    out_dir: str
    conn_log: str
    flow_log: str | None
    packets: int = 0
    connections: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    error: CaptureError | None = None


def zeek_available() -> str | None:
    return shutil.which("zeek")


def replay(paths: Sequence[str], out_dir: str, engine: str = "auto", json_logs: bool = False,
           flow_packets: int = 32, seed: int = 0) -> ReplayResult:
    """Replay captures into ``out_dir``: conn.log and zeekml_flow.log.

    ``engine``: ``auto`` (zeek when on PATH, else builtin), ``zeek`` or ``builtin``. A damaged
    capture does not raise: the packets before the damage are logged and ``result.error`` says
    where it broke (the CLI turns it into a message and a non-zero exit code).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}")
    for p in paths:
        if not os.path.exists(p):
            raise InputNotFound("no such capture file", p)
    os.makedirs(out_dir, exist_ok=True)
    zeek = zeek_available()
    if engine == "zeek" and not zeek:
        raise EngineUnavailable("--engine zeek: no `zeek` on PATH (use --engine builtin)")
    if engine == "zeek" or (engine == "auto" and zeek):
        return replay_zeek(zeek, paths, out_dir, json_logs, flow_packets)
    return replay_builtin(paths, out_dir, json_logs, flow_packets, seed)


def replay_builtin(paths: Sequence[str], out_dir: str, json_logs: bool = False,
                   flow_packets: int = 32, seed: int = 0) -> ReplayResult:
    """Run the built-in flow meter over ``paths`` (in order) and write the logs."""
    # Same file names as Zeek, whose JSON logs (LogAscii::use_json=T) also end in .log.
    conn_path = os.path.join(out_dir, "conn.log")
    flow_path = os.path.join(out_dir, FLOW_LOG_PATH + ".log")
    if json_logs:
        cw = JsonLogWriter(conn_path, CONN_FIELDS)
        fw = JsonLogWriter(flow_path, FLOW_FEATURES_FIELDS)
    else:
        cw = ZeekLogWriter(conn_path, "conn", CONN_FIELDS)
        fw = ZeekLogWriter(flow_path, FLOW_LOG_PATH, FLOW_FEATURES_FIELDS)

    def on_conn(c: Conn) -> None:
        cw.write(c.record())
        fw.write(c.flow_record())

    meter = FlowMeter(on_conn=on_conn, seed=seed, flow_packets=flow_packets)
    result = ReplayResult("builtin", out_dir, conn_path, flow_path)
    try:
        for path in paths:
            try:
                for ts, buf, lt in iter_capture(path):
                    meter.packet(ts, buf, lt)
            except CaptureError as e:
                log.warning("%s", e)
                result.error = e
                break
        meter.flush()
    finally:
        cw.close()
        fw.close()
    result.packets = meter.stats.packets
    result.connections = meter.stats.connections
    result.skipped = meter.stats.non_ip + meter.stats.bad_ip + meter.stats.bad_transport
    result.errors = list(meter.stats.errors)
    return result


def zeek_scripts_dir() -> str | None:
    """The repository's zeek-scripts package (``scripts/__load__.zeek``), if present."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cand = os.path.join(here, "zeek-scripts", "scripts")
    return cand if os.path.isdir(cand) else None


def replay_zeek(zeek: str | None, paths: Sequence[str], out_dir: str, json_logs: bool = False,
                flow_packets: int = 32) -> ReplayResult:
    """Run ``zeek -C -r PCAP [our scripts]`` in a temporary directory; copy its logs to out_dir."""
    if not zeek:
        raise EngineUnavailable("no `zeek` on PATH (use --engine builtin)")
    cmd = [zeek, "-C"]
    for p in paths:
        cmd += ["-r", os.path.abspath(p)]
    scripts = zeek_scripts_dir()
    if scripts:
        cmd.append(scripts)
        cmd.append(f"ZeekML::flow_packets={int(flow_packets)}")
    if json_logs:
        cmd.append("LogAscii::use_json=T")
    ext = ".log"
    with tempfile.TemporaryDirectory(prefix="zeekml-replay-") as tmp:
        try:
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=24 * 3600)
        except OSError as e:
            raise EngineUnavailable(f"cannot run zeek: {e}") from e
        if proc.returncode != 0:
            raise EngineUnavailable(f"zeek exited with {proc.returncode}: {proc.stderr.strip()[-500:]}")
        for name in os.listdir(tmp):
            if name.endswith(ext):
                shutil.copy2(os.path.join(tmp, name), os.path.join(out_dir, name))
    conn_path = os.path.join(out_dir, "conn.log")
    flow_path = os.path.join(out_dir, FLOW_LOG_PATH + ".log")
    return ReplayResult("zeek", out_dir, conn_path, flow_path if os.path.exists(flow_path) else None)
