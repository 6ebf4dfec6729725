"""Suricata eve.json: ``flow`` events become conn-like records, ``alert`` events their own table.

Conn-like records use Zeek's conn.log field names so every featuriser and detector takes them
as they are. What does not carry over: Suricata counts bytes per packet including the IP header,
so its ``bytes_toserver`` maps to ``orig_ip_bytes`` and ``orig_bytes`` stays unset; ``history``
does not exist; ``conn_state`` is derived from ``flow.state`` and the TCP flags seen each way
(documented in ``suricata_conn_state``). ``flow_id`` and ``community_id`` join alerts to flows.
Other event types (dns, http, tls, stats ...) are not parsed: each becomes a row of just its
``event_type`` in a batch of path ``suricata_<event_type>`` (``other_event_path``), so that the
pipeline counts them as it counts a Zeek dns.log's records (never silently dropped); they are
tallied by type in ``other_events`` too. An object without ``event_type`` is quarantined.
"""
from __future__ import annotations

import collections
import re
from typing import Any

import pyarrow as pa

from zeekml.parse.batch import LogBatch
from zeekml.parse.zeek_json import LineBlockParser, iso_to_epoch, loads_line

CONN_FIELDS: list[tuple[str, str]] = [
    ("ts", "time"), ("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"),
    ("id.resp_h", "addr"), ("id.resp_p", "port"), ("proto", "enum"), ("service", "string"),
    ("duration", "interval"), ("orig_bytes", "count"), ("resp_bytes", "count"),
    ("conn_state", "string"), ("missed_bytes", "count"), ("history", "string"),
    ("orig_pkts", "count"), ("orig_ip_bytes", "count"), ("resp_pkts", "count"),
    ("resp_ip_bytes", "count"), ("flow_id", "count"), ("community_id", "string"),
]
ALERT_FIELDS: list[tuple[str, str]] = [
    ("ts", "time"), ("flow_id", "count"), ("community_id", "string"), ("id.orig_h", "addr"),
    ("id.orig_p", "port"), ("id.resp_h", "addr"), ("id.resp_p", "port"), ("proto", "enum"),
    ("signature_id", "count"), ("signature", "string"), ("category", "string"),
    ("severity", "count"), ("action", "string"),
]
_ARROW = {"time": pa.float64(), "interval": pa.float64(), "count": pa.uint64(), "port": pa.uint16(),
          "addr": pa.string(), "enum": pa.string(), "string": pa.binary()}
_PROTO = {"TCP": "tcp", "UDP": "udp", "ICMP": "icmp", "IPV6-ICMP": "icmp", "ICMPV6": "icmp"}
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

OTHER_EVENT_PREFIX = "suricata_"
"""``log_path`` prefix of the batches of eve events that are neither flows nor alerts."""
OTHER_EVENT_FIELDS: list[tuple[str, str]] = [("event_type", "string")]
_NOT_PATH_CHARS = re.compile(r"[^0-9A-Za-z_]")


def other_event_path(event_type: str) -> str:
    """``log_path`` of the batch holding eve events of ``event_type`` (``suricata_dns``); a
    type from the input is cut to 64 characters, anything but letters, digits and ``_``
    replaced, so it reads safely in a warning."""
    return OTHER_EVENT_PREFIX + _NOT_PATH_CHARS.sub("_", event_type[:64])


def is_other_event_batch(batch: LogBatch) -> bool:
    """A batch of eve events that are neither flows nor alerts (``other_event_path``)."""
    return batch.log_path.startswith(OTHER_EVENT_PREFIX) and batch.log_path != "suricata_alert" \
        and list(batch.batch.schema.names) == [n for n, _ in OTHER_EVENT_FIELDS]


def _schema(fields: list[tuple[str, str]]) -> pa.Schema:
    return pa.schema([(n, _ARROW[t]) for n, t in fields])


def flow_uid(flow_id: int) -> str:
    """A Zeek-style uid derived from Suricata's flow_id (``S`` + base62), stable across runs.

    Raises ``ValueError`` for a flow_id that is not a uint64 (Suricata's type).
    """
    n, out = _uint(flow_id, "flow_id", 64), ""
    while True:
        n, r = divmod(n, 62)
        out = _B62[r] + out
        if not n:
            return "S" + out


def suricata_conn_state(proto: str, state: str | None, pkts_toclient: int, tcp: dict) -> str:
    """Zeek ``conn_state`` closest to a Suricata flow record.

    No reply: ``S0`` (TCP with a SYN, or any UDP/ICMP) else ``OTH``; a RST: ``RSTO``/``RSTR`` by
    who sent it; FIN both ways: ``SF``; established: ``S1``; UDP/ICMP with replies: ``SF``.
    """
    if proto != "tcp":
        return "SF" if pkts_toclient else "S0"
    ts_flags = int(tcp.get("tcp_flags_ts") or "0", 16)
    tc_flags = int(tcp.get("tcp_flags_tc") or "0", 16)
    if not pkts_toclient:
        return "S0" if tcp.get("syn") else "OTH"
    if ts_flags & 0x04:
        return "RSTO"
    if tc_flags & 0x04:
        return "RSTR"
    if tcp.get("rst"):
        return "RSTO"
    if ts_flags & 0x01 and tc_flags & 0x01:
        return "SF"
    if state in ("established", "closed") and tcp.get("syn") and tcp.get("ack"):
        return "S1"
    return "OTH"


def _uint(value: Any, name: str, bits: int = 64) -> int:
    """``value`` as an unsigned integer of ``bits`` bits (the Arrow column's range), else ``ValueError``.

    Integral floats and digit strings are taken as before (``int()``); anything outside the
    range would otherwise fail later, in Arrow, for the whole block.
    """
    if isinstance(value, bool):
        raise ValueError(f"{name}: not an integer: {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{name}: not an integer: {value!r}")
    n = int(value)
    if not 0 <= n < 1 << bits:
        raise ValueError(f"{name}: {n} outside 0..2**{bits}-1")
    return n


def _opt_uint(value: Any, name: str, bits: int = 64) -> int | None:
    return None if value is None else _uint(value, name, bits)


def _text(value: Any) -> str:
    """A str field; lone surrogates are refused by ``loads_line`` before this."""
    return value if isinstance(value, str) else str(value)


_OTHER_SCHEMA = pa.schema([("event_type", pa.string())])


class SuricataEveParser(LineBlockParser):
    """Incremental eve.json parser."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.other_events: collections.Counter[str] = collections.Counter()

    def parse_block(self, block: bytes, first_line: int, start: int) -> list[LogBatch]:
        flows: list[dict[str, Any]] = []
        alerts: list[dict[str, Any]] = []
        # (line, offset, raw) of each kept row, so a row Arrow refuses is quarantined by line
        flow_at: list[tuple[int, int, bytes]] = []
        alert_at: list[tuple[int, int, bytes]] = []
        others: dict[str, list[dict[str, Any]]] = {}     # path -> rows, in order of first event
        for ln, off, line in self.iter_lines(block, first_line, start):
            try:
                ev = loads_line(line)
            except ValueError as e:
                self.quarantine.reject(self.source, ln, off, f"invalid JSON: {e}", line)
                continue
            try:
                if not isinstance(ev, dict):
                    raise ValueError("JSON value is not an object")
                kind = ev.get("event_type")
                if kind == "flow":
                    flows.append(self._flow(ev))
                    flow_at.append((ln, off, line))
                elif kind == "alert":
                    alerts.append(self._alert(ev))
                    alert_at.append((ln, off, line))
                elif kind is None:
                    raise ValueError("no event_type")
                else:
                    kind = _text(kind)
                    self.other_events[kind[:64]] += 1
                    others.setdefault(other_event_path(kind), []).append({"event_type": kind})
            except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as e:
                self.quarantine.reject(self.source, ln, off,
                                       f"bad eve event: {type(e).__name__}: {e}", line)
        out = []
        end = start + len(block)
        for rows, at, fields, path in ((flows, flow_at, CONN_FIELDS, "conn"),
                                       (alerts, alert_at, ALERT_FIELDS, "suricata_alert")):
            if rows:
                batch = self._to_batch(rows, at, _schema(fields))
                if batch.num_rows:
                    out.append(LogBatch(path, batch, dict(fields), self.source, first_line, end))
        for path, rows in others.items():
            # counted by the pipeline as other (not conn) records, as a Zeek dns.log's are
            batch = pa.RecordBatch.from_pylist(rows, schema=_OTHER_SCHEMA)
            out.append(LogBatch(path, batch, dict(OTHER_EVENT_FIELDS), self.source, first_line, end))
        return out

    def _to_batch(self, rows: list[dict[str, Any]], at: list[tuple[int, int, bytes]],
                  schema: pa.Schema) -> pa.RecordBatch:
        """Rows checked one by one only when the whole block does not convert."""
        try:
            return pa.RecordBatch.from_pylist(rows, schema=schema)
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            pass
        good = []
        for row, (ln, off, line) in zip(rows, at):
            try:
                pa.RecordBatch.from_pylist([row], schema=schema)
            except (pa.ArrowException, OverflowError, TypeError, ValueError) as e:
                self.quarantine.reject(self.source, ln, off,
                                       f"bad eve event: {type(e).__name__}: {e}", line)
                continue
            good.append(row)
        return pa.RecordBatch.from_pylist(good, schema=schema)

    @staticmethod
    def _endpoints(ev: dict) -> dict[str, Any]:
        proto = _PROTO.get(str(ev.get("proto", "")).upper(), str(ev.get("proto", "")).lower())
        if proto == "icmp":
            op, rp = ev.get("icmp_type"), ev.get("icmp_code")
        else:
            op, rp = ev.get("src_port"), ev.get("dest_port")
        for p in (op, rp):
            if p is not None and not (isinstance(p, int) and 0 <= p < 65536):
                raise ValueError(f"bad port {p!r}")
        return {"id.orig_h": _text(ev["src_ip"]), "id.orig_p": op,
                "id.resp_h": _text(ev["dest_ip"]), "id.resp_p": rp, "proto": proto}

    def _flow(self, ev: dict) -> dict[str, Any]:
        flow = ev["flow"]
        rec = self._endpoints(ev)
        start = iso_to_epoch(flow["start"])
        end = iso_to_epoch(flow["end"]) if flow.get("end") else None
        to_client = _uint(flow.get("pkts_toclient", 0), "pkts_toclient")
        fid = _opt_uint(ev.get("flow_id"), "flow_id")
        app = ev.get("app_proto")
        rec.update({
            "ts": start,
            "uid": flow_uid(fid) if fid is not None else None,
            "service": None if app in (None, "failed", "unknown") else str(app).encode(),
            "duration": None if end is None else round(end - start, 6),
            "orig_bytes": None, "resp_bytes": None,
            "conn_state": suricata_conn_state(rec["proto"], flow.get("state"), to_client,
                                              ev.get("tcp") or {}).encode(),
            "missed_bytes": None, "history": None,
            "orig_pkts": _uint(flow.get("pkts_toserver", 0), "pkts_toserver"),
            "resp_pkts": to_client,
            "orig_ip_bytes": _uint(flow.get("bytes_toserver", 0), "bytes_toserver"),
            "resp_ip_bytes": _uint(flow.get("bytes_toclient", 0), "bytes_toclient"),
            "flow_id": fid,
            "community_id": ev["community_id"].encode() if ev.get("community_id") else None,
        })
        return rec

    def _alert(self, ev: dict) -> dict[str, Any]:
        a = ev["alert"]
        rec = self._endpoints(ev)
        rec.update({
            "ts": iso_to_epoch(ev["timestamp"]),
            "flow_id": _opt_uint(ev.get("flow_id"), "flow_id"),
            "community_id": ev["community_id"].encode() if ev.get("community_id") else None,
            "signature_id": _opt_uint(a.get("signature_id"), "signature_id"),
            "signature": str(a.get("signature", "")).encode(),
            "category": str(a.get("category", "")).encode(),
            "severity": _opt_uint(a.get("severity"), "severity"),
            "action": str(a.get("action", "")).encode(),
        })
        return rec
