"""``zeekml replay``: captures to conn.log and zeekml_flow.log, with ``zeek -r`` or the built-in meter.

The sources only read packets (``zeekml.sources.pcap``) and turn them into connections
(``zeekml.sources.flowmeter``); this module runs them and writes the logs (Zeek TSV through
``zeekml.sinks.zeek_log``, or Zeek's JSON layout), or runs a real Zeek with zeekml's Zeek package
in a temporary directory and collects its logs. Scoring the written conn.log is the CLI's next step.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Sequence

from zeekml._core.errors import InputNotFound, OutputError, UnreadableInput, ZeekmlError
from zeekml._core.outfile import OutputFile
from zeekml._core.resources import zeek_scripts_dir
from zeekml.flows.flow_log_schema import FLOW_FEATURES_FIELDS, FLOW_LOG_PATH
from zeekml.sinks.zeek_log import JsonLogWriter, ZeekLogWriter
from zeekml.sources.flowmeter import CONN_FIELDS, Conn, FlowMeter
from zeekml.sources.pcap import CaptureError, is_capture, iter_capture

log = logging.getLogger(__name__)

ENGINES = ("auto", "zeek", "builtin")
"""``auto``: zeek when it is on PATH, else builtin."""


class EngineUnavailable(ZeekmlError):
    """``--engine zeek`` was asked for but no ``zeek`` binary is on PATH (or it failed)."""

    exit_code = 7


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
    bad_checksums: int = 0
    errors: list[str] = field(default_factory=list)
    error: CaptureError | None = None


def zeek_available() -> str | None:
    """The ``zeek`` binary on PATH, or None."""
    return shutil.which("zeek")


def replay(paths: Sequence[str], out_dir: str, engine: str = "auto", json_logs: bool = False,
           flow_packets: int = 32, seed: int = 0, ignore_checksums: bool = False) -> ReplayResult:
    """Replay captures into ``out_dir``: conn.log and zeekml_flow.log.

    Args:
        paths: pcap/pcapng files, replayed in order as one stream.
        out_dir: created if missing.
        engine: ``auto`` (zeek when on PATH, else builtin), ``zeek`` or ``builtin`` (default auto).
        json_logs: write Zeek's JSON layout instead of TSV (default False).
        flow_packets: packets per connection in zeekml_flow.log (default 32).
        seed: seeds the built-in meter's uids (default 0).
        ignore_checksums: do not validate checksums, as ``zeek -C`` (default False: like Zeek,
            packets with bad checksums are not analysed).

    A damaged capture does not raise: the packets before the damage are logged and
    ``result.error`` says where it broke (the CLI turns it into a message and exit code 4).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}")
    for p in paths:
        check_capture(p)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create output directory: {e.strerror}", out_dir) from e
    zeek = zeek_available()
    if engine == "zeek" and not zeek:
        raise EngineUnavailable("--engine zeek: no `zeek` on PATH (use --engine builtin)")
    if engine == "zeek" or (engine == "auto" and zeek):
        return replay_zeek(zeek, paths, out_dir, json_logs, flow_packets, ignore_checksums)
    return replay_builtin(paths, out_dir, json_logs, flow_packets, seed, ignore_checksums)


def check_capture(path: str) -> None:
    """Refuse, before anything is written or scored, a path that is not a readable pcap or
    pcapng file: ``InputNotFound`` (exit 2), ``UnreadableInput`` (4) or, for another kind of
    file (a conn.log given by mistake), the ``CaptureError`` the reader would raise on its first
    bytes (4). Found later, such a file would leave an empty conn.log scored before the error."""
    if not os.path.exists(path):
        raise InputNotFound("no such capture file", path)
    if os.path.isdir(path):
        raise UnreadableInput("is a directory, not a capture file", path)
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise UnreadableInput(f"cannot open: {e.strerror}", path) from e
    if not is_capture(path):
        raise CaptureError("not a pcap or pcapng file (unknown magic)", path)


def replay_builtin(paths: Sequence[str], out_dir: str, json_logs: bool = False,
                   flow_packets: int = 32, seed: int = 0,
                   ignore_checksums: bool = False) -> ReplayResult:
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

    meter = FlowMeter(on_conn=on_conn, seed=seed, flow_packets=flow_packets,
                      ignore_checksums=ignore_checksums)
    result = ReplayResult("builtin", out_dir, conn_path, flow_path)
    try:
        for path in paths:
            try:
                for ts, buf, lt in iter_capture(path):
                    meter.packet(ts, buf, lt)
            except CaptureError as e:
                # info, not warning: the caller reports result.error (the CLI: one error line
                # and exit 4); a warning too would print the same message twice
                log.info("%s", e)
                result.error = e
                break
        meter.flush()
    finally:
        cw.close()
        fw.close()
    stats = meter.stats
    result.packets = stats.packets
    result.connections = stats.connections
    result.skipped = stats.non_ip + stats.bad_ip + stats.bad_transport
    result.bad_checksums = stats.bad_checksums
    result.errors = list(stats.errors)
    return result


def replay_zeek(zeek: str | None, paths: Sequence[str], out_dir: str, json_logs: bool = False,
                flow_packets: int = 32, ignore_checksums: bool = False) -> ReplayResult:
    """Run ``zeek [-C] -r PCAP <zeekml's scripts>`` in a temporary directory; copy its logs to
    ``out_dir``. Raises ``ZeekScriptsNotFound`` when zeekml's Zeek scripts are not installed."""
    if not zeek:
        raise EngineUnavailable("no `zeek` on PATH (use --engine builtin)")
    cmd = [zeek]
    if ignore_checksums:
        cmd.append("-C")
    for p in paths:
        cmd += ["-r", os.path.abspath(p)]
    cmd += [zeek_scripts_dir(), f"ZeekML::flow_packets={int(flow_packets)}"]
    if json_logs:
        cmd.append("LogAscii::use_json=T")
    with tempfile.TemporaryDirectory(prefix="zeekml-replay-") as tmp:
        try:
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=24 * 3600)
        except OSError as e:
            raise EngineUnavailable(f"cannot run zeek: {e}") from e
        if proc.returncode != 0:
            raise EngineUnavailable(f"zeek exited with {proc.returncode}: {proc.stderr.strip()[-500:]}")
        for name in os.listdir(tmp):
            if name.endswith(".log"):
                # through the output opener, not shutil.copy: a link planted in --out is refused
                with open(os.path.join(tmp, name), "rb") as src, \
                        OutputFile(os.path.join(out_dir, name)) as dst:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        dst.write(block)
    conn_path = os.path.join(out_dir, "conn.log")
    flow_path = os.path.join(out_dir, FLOW_LOG_PATH + ".log")
    return ReplayResult("zeek", out_dir, conn_path, flow_path if os.path.exists(flow_path) else None)
