"""Outputs of triage: ``incidents.jsonl``, ``zeekml_incident.log`` (one notice per incident),
``baseline.json`` (what the run took as normal) and the mark an allowlist rule leaves on the
verdict lines it suppressed.

Incident notices go to their own log, in the columns of ``zeekml_notice.log``: the conn notice
log keeps exactly its lines (one per alerting conn), whatever incidents are made of them.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable

from zeekml._core.atomic import atomic_write
from zeekml._core.errors import OutputError
from zeekml._core.zeek_format import format_header, format_record
from zeekml.scoring.incidents import Incident
from zeekml.sinks.zeek_log import ZeekLogWriter
from zeekml.sinks.zeek_notice import NOTICE_FIELDS

INCIDENTS_FILE = "incidents.jsonl"
INCIDENT_NOTICE_FILE = "zeekml_incident.log"
BASELINE_FILE = "baseline.json"
INCIDENT_NOTE = "ZeekML::Suspicious_Host"
INCIDENT_LOG_PATH = "zeekml_incident"


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


def incident_line(inc: Incident | dict) -> bytes:
    """One ``incidents.jsonl`` line (compact JSON, non-finite floats as null)."""
    d = inc.to_dict() if isinstance(inc, Incident) else inc
    return (json.dumps(_finite(d), separators=(",", ":")) + "\n").encode()


def write_incidents(path: str | os.PathLike, incidents: Iterable[Incident | dict]) -> str:
    """Write ``incidents.jsonl`` (ranked, as given) whole and atomically; returns its path."""
    path = os.fspath(path)
    try:
        atomic_write(path, b"".join(incident_line(i) for i in incidents))
    except OSError as e:
        raise OutputError(f"cannot write: {e.strerror}", path) from None
    return path


def write_baseline_info(path: str | os.PathLike, info: dict) -> str:
    """``baseline.json``: the run's inputs, the baseline's inputs, period and size, and its
    per-kind profile (``scoring.explain.BaselineProfile.to_dict``), for reports and reruns."""
    path = os.fspath(path)
    try:
        atomic_write(path, (json.dumps(_finite(info), indent=1) + "\n").encode())
    except OSError as e:
        raise OutputError(f"cannot write: {e.strerror}", path) from None
    return path


def mark_suppressed(lines: list[bytes], labels: dict[int, str]) -> None:
    """Add ``"suppressed_by": "<rule label>"`` as the last key of the verdict lines of the
    suppressed rows, in place; every other line stays byte for byte what it was."""
    enc = json.encoder.encode_basestring_ascii
    for row, label in labels.items():
        line = lines[row]
        if not line.endswith(b"}\n"):
            raise ValueError(f"verdict line {row} is not a JSON object line")
        lines[row] = line[:-2] + b',"suppressed_by":' + enc(label).encode() + b"}\n"


def incident_notice(inc: Incident):
    """One ``ZeekML::Suspicious_Host`` notice for an incident, as a ``Verdict`` the notice
    writer takes: the host in its role (``src`` for originators, ``dst`` for responders) with its
    top conn's ids, the description as ``msg``, the incident id and counts as ``sub``."""
    from zeekml.scoring.verdict import Verdict

    top = inc.top_conns[0] if inc.top_conns else {}
    orig = top.get("id.orig_h") if inc.role == "resp" else inc.host
    resp = inc.host if inc.role == "resp" else top.get("id.resp_h")
    return Verdict(
        ts=inc.first_ts, uid=str(top.get("uid", "")), orig_h=orig, orig_p=None, resp_h=resp,
        resp_p=top.get("id.resp_p"), proto=top.get("proto"), score=inc.score, alert=True,
        model=",".join(inc.detectors), note=INCIDENT_NOTE, msg=inc.description,
        sub=incident_sub(inc), verdict_id=inc.incident_id,
        # the top conn's flow: the notice's ports are not that conn's, so no id is computed
        community_id=top.get("community_id") or "")


def incident_sub(inc: Incident | dict) -> str:
    """The ``sub`` of an incident's notice (``zeekml_incident.log`` and, through the incident
    file, Zeek's notice.log): its id, counts, role and end, and the rate its alerts are raised
    at where known, e.g. ``I3f...: 69 alerts, 80 conns, 12 peers as orig until
    1545402015.123456; alerts at fpr 0.001``. Takes an ``Incident`` or its ``to_dict()``."""
    get = inc.get if isinstance(inc, dict) else lambda k: getattr(inc, k, None)
    rate = get("alert_rate")

    def n(key: str, noun: str) -> str:
        count = get(key)
        return f"{count} {noun}" + ("" if count == 1 else "s")

    return (f"{get('incident_id')}: {n('alerts', 'alert')}, {n('conns', 'conn')}, "
            f"{n('n_peers', 'peer')} as {get('role')} until {float(get('last_ts')):.6f}"
            + (f"; alerts at {rate}" if rate else ""))


def incident_notice_record(inc: Incident) -> dict:
    """The ``zeekml_incident.log`` record of an incident (``incident_notice``): ``n`` = its
    alerts and ``suppress_for`` = its span."""
    v = incident_notice(inc)
    return {
        "ts": v.ts, "uid": v.uid, "id.orig_h": v.orig_h, "id.orig_p": v.orig_p,
        "id.resp_h": v.resp_h, "id.resp_p": v.resp_p, "proto": v.proto, "note": v.note,
        "msg": v.msg, "sub": v.sub, "src": v.orig_h, "dst": v.resp_h, "p": v.resp_p,
        "n": inc.alerts, "peer_descr": "zeekml", "actions": ["Notice::ACTION_LOG"],
        "suppress_for": max(inc.last_ts - inc.first_ts, 0.0), "score": v.score,
        "model": v.model, "community_id": v.community_id or None,
    }


def write_incident_notices(path: str | os.PathLike, incidents: Iterable[Incident]) -> int:
    """``zeekml_incident.log`` (``#path zeekml_incident``): one ``ZeekML::Suspicious_Host``
    notice per incident, in ``zeekml_notice.log``'s columns; ``n`` = its alerts and
    ``suppress_for`` = its span. Returns how many were written."""
    with ZeekLogWriter(path, INCIDENT_LOG_PATH, NOTICE_FIELDS) as log:
        for inc in incidents:
            log.write(incident_notice_record(inc))
        return log.count


def incident_notice_header() -> bytes:
    """The header lines a new live ``zeekml_incident.log`` starts with (``#open``: now)."""
    return format_header(INCIDENT_LOG_PATH, [n for n, _ in NOTICE_FIELDS],
                         [t for _, t in NOTICE_FIELDS])


def incident_notice_lines(incidents: Iterable[Incident]) -> bytes:
    """The ``zeekml_incident.log`` lines of ``incidents`` (no header), for an appended log."""
    names, types = [n for n, _ in NOTICE_FIELDS], [t for _, t in NOTICE_FIELDS]
    out = []
    for inc in incidents:
        rec = incident_notice_record(inc)
        out.append(format_record((rec.get(n) for n in names), types))
    return b"".join(out)
